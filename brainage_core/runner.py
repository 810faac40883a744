"""Running and rendering the book.

:func:`build_book` renders the book with Jupyter Book 1.x from a staging copy of the sources in
which executed notebooks (papermill outputs) replace the committed, output-free ones. The build
never executes code (``execute_notebooks: 'off'``) and treats Sphinx warnings as errors.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["build_book"]

BOOK_FILES = ("_config.yml", "_toc.yml")
BOOK_DIR = "book"


def build_book(root: Path, executed_dir: Path | None = None, builder: str = "html") -> Path:
    """Render the book; return the path of the HTML index.

    Args:
        root: repository folder holding ``_config.yml``, ``_toc.yml`` and ``book/``.
        executed_dir: folder of executed notebooks laid out like ``book/`` (papermill
            outputs); each one replaces its source notebook in the staged copy.
        builder: Jupyter Book builder name.

    Raises:
        FileNotFoundError: ``_config.yml`` or ``_toc.yml`` is missing under ``root``.
        RuntimeError: the build failed or produced warnings (the output is included).
    """
    root = Path(root).resolve()
    for name in BOOK_FILES:
        if not (root / name).is_file():
            raise FileNotFoundError(f"{root / name} not found: run from the repository root or pass --root")
    stage = root / "_build" / "source"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    for name in BOOK_FILES:
        shutil.copy2(root / name, stage / name)
    shutil.copytree(root / BOOK_DIR, stage / BOOK_DIR, ignore=shutil.ignore_patterns("_*", ".ipynb_checkpoints"))
    if executed_dir is not None:
        for notebook in Path(executed_dir).rglob("*.ipynb"):
            target = stage / BOOK_DIR / notebook.relative_to(executed_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(notebook, target)
    command = [
        str(Path(sys.executable).parent / "jupyter-book"), "build", str(stage),
        "--path-output", str(root), "--builder", builder, "--warningiserror", "--keep-going", "--all",
    ]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"jupyter-book build failed (exit {completed.returncode}):\n{completed.stdout[-6000:]}\n{completed.stderr[-6000:]}")
    return root / "_build" / builder / "index.html"
