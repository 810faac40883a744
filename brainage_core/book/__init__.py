"""The glue between the package and the book: runs.yml, the papermill runner, chapter workflow helpers, glue values, benchmark tables and figures."""
