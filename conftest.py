"""Repository-wide pytest setup: the book's notebooks run under nbmake in smoke mode.

nbmake executes each notebook in ``book/`` as a test but does not inject papermill
parameters; the notebooks read ``BRAINAGE_SMOKE`` instead (``brainage_core.workflow.smoke_mode``),
which shrinks cohorts, models and epochs to a few seconds.
"""

import os

os.environ.setdefault("BRAINAGE_SMOKE", "1")
