"""Repository-wide pytest setup: ``make test-notebooks`` (``pytest --nbmake book``) runs each notebook alone.

nbmake executes each notebook in ``book/`` as a test but does not inject papermill
parameters; the notebooks read ``BRAINAGE_SMOKE`` instead (``brainage_core.book.workflow.smoke_mode``),
which shrinks cohorts, models and epochs to a few seconds.
"""

import os

import pytest

os.environ.setdefault("BRAINAGE_SMOKE", "1")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every notebook (an nbmake item) is marked ``slow``: ``make test-fast`` skips them all."""
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.slow)
