"""The glue between the package and the book: the papermill runner, notebook workflow helpers and plots."""
