"""Batch runs of the book's notebooks (papermill) and rendering (Jupyter Book 1.x).

The runs come from ``book/runs.yml`` (see :mod:`brainage_core.book.runspec` for its format).
A run's cache key hashes its notebook, resolved parameters, the keys of the runs it depends on,
any input file named in its parameters, and the ``brainage_core`` sources; a run whose key is unchanged
and whose executed notebook exists is skipped. Failed runs do not stop the others (their
dependents are skipped); all failures are reported at the end, and a failed run's previous
executed notebook is removed so the book never renders a stale chapter. Each cell may run at most
``cell_timeout`` seconds (per run or per profile in ``runs.yml``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brainage_core.book.runspec import PROFILES, RunSpec, book_output_dir, load_runs
from brainage_core.cluster import dask_executor, uses_dask
from brainage_core.fileio import atomic_path, write_json
from brainage_core.ownership import claim, clear_owned_folder

__all__ = ["PROFILES", "RunOutcome", "RunSpec", "book_output_dir", "build_book", "load_runs", "run_book"]

BOOK_FILES = ("_config.yml", "_toc.yml")
BOOK_DIR = "book"


@dataclass
class RunOutcome:
    """What happened to a run: ``executed``, ``cached``, ``failed`` or ``skipped`` (a dependency failed)."""

    name: str
    status: str
    seconds: float = 0.0
    message: str = ""


def _sources_hash() -> str:
    """Hash of every module of the package, subpackages included: a code change reruns the book."""
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _input_files(value: Any) -> list[Path]:
    """Existing files named in parameters (e.g. a user's manifest), so edits to them rerun the run."""
    if isinstance(value, str) and value and len(value) < 4096:
        path = Path(value)
        return [path] if path.is_file() else []
    if isinstance(value, list):
        return [p for v in value for p in _input_files(v)]
    if isinstance(value, dict):
        return [p for v in value.values() for p in _input_files(v)]
    return []


def _cache_key(run: RunSpec, root: Path, upstream: dict[str, str], sources: str) -> str:
    digest = hashlib.sha256()
    digest.update((root / run.notebook).read_bytes())
    digest.update(json.dumps(run.parameters, sort_keys=True, default=str).encode())
    for name in run.needs:
        digest.update(f"{name}={upstream[name]}".encode())
    for path in _input_files({k: v for k, v in run.parameters.items() if k != "work_dir"}):
        digest.update(str(path).encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    digest.update(sources.encode())
    return digest.hexdigest()


def _relative_paths(value: Any, folder: Path, root: Path) -> Any:
    """``value`` with absolute paths under ``root`` (also in ``key=path`` overrides) made relative to ``folder``."""
    if isinstance(value, list):
        return [_relative_paths(item, folder, root) for item in value]
    if not isinstance(value, str):
        return value
    key, separator, text = value.rpartition("=") if "=" in value else ("", "", value)
    path = Path(text)
    if path.is_absolute() and path.resolve().is_relative_to(root.resolve()):
        return f"{key}{separator}{os.path.relpath(path.resolve(), folder.resolve())}"
    return value


def declared_parameters(notebook: str | os.PathLike[str]) -> set[str]:
    """The names a notebook's ``parameters`` cell assigns, as papermill reads them.

    papermill skips (with only a log warning) an assignment it cannot parse, e.g. one with a
    ``=`` in its comment; a value given for it would then be injected but never documented.
    Such a cell is refused here, naming the assignments papermill missed.

    Raises:
        ValueError: the cell assigns names papermill cannot read.
    """
    import ast

    import nbformat
    import papermill

    cells = nbformat.read(str(notebook), as_version=4).cells
    tagged = [cell for cell in cells if "parameters" in cell.metadata.get("tags", [])]
    declared = set(papermill.inspect_notebook(str(notebook)))
    assigned = {
        target.id
        for cell in tagged
        for statement in ast.parse(cell.source).body
        if isinstance(statement, ast.Assign)
        for target in statement.targets
        if isinstance(target, ast.Name)
    }
    if assigned - declared:
        raise ValueError(
            f"{notebook}: papermill cannot read the parameter(s) {sorted(assigned - declared)} of the "
            "'parameters' cell; write each as `name = value  # help` with no '=' in the comment"
        )
    return declared


def _execute(run: RunSpec, root: Path, output: Path) -> None:
    import papermill

    notebook = root / run.notebook
    declared = declared_parameters(notebook)
    if not declared:
        raise ValueError(f"{run.notebook} has no cell tagged 'parameters'")
    undeclared = sorted(set(run.own) - declared)
    if undeclared:
        raise ValueError(
            f"{run.notebook} does not declare parameter(s) {undeclared} that run {run.name!r} sets in runs.yml"
        )
    # Paths inside the repository reach the notebook relative to its folder: the executed
    # chapter's injected-parameters cell then shows no absolute path of the build machine.
    parameters = {k: _relative_paths(v, notebook.parent, root) for k, v in run.parameters.items() if k in declared}
    work = Path(run.parameters["work_dir"])
    work.mkdir(parents=True, exist_ok=True)
    destination = output / "notebooks" / f"{run.name}.ipynb"
    with atomic_path(destination, suffix=".ipynb") as temp:
        papermill.execute_notebook(
            str(notebook),
            str(temp),
            parameters=parameters,
            kernel_name="python3",
            cwd=str(notebook.parent),
            progress_bar=False,
            log_output=False,
            execution_timeout=run.cell_timeout,
        )
        _tidy_executed(temp, run.notebook, destination.relative_to(root))


def _tidy_executed(executed: Path, notebook: str, destination: Path) -> None:
    """Make an executed notebook fit for the book.

    papermill's injected-parameters cell is tagged ``hide-input`` (the page shows it folded), and
    papermill's record of the input and output paths, absolute on the build machine, is replaced
    by the paths relative to the repository (the book offers the notebook for download).
    """
    import nbformat

    book_copy = nbformat.read(str(executed), as_version=4)
    for cell in book_copy.cells:
        tags = cell.metadata.setdefault("tags", [])
        if "injected-parameters" in tags and "hide-input" not in tags:
            tags.append("hide-input")
    record = book_copy.metadata.get("papermill", {})
    record.update(input_path=str(notebook), output_path=str(destination))
    nbformat.write(book_copy, str(executed))


def run_book(
    root: Path,
    profile: str,
    only: list[str] | None = None,
    force: bool = False,
    jobs: int = 1,
    log: Any = sys.stdout,
    scheduler: str | None = None,
) -> list[RunOutcome]:
    """Execute a profile's runs with papermill, skipping unchanged ones.

    Args:
        root: repository root (holding ``book/runs.yml``).
        profile: ``smoke``, ``default`` or ``full``.
        only: run just these names (their dependencies still run if their keys changed).
        force: execute even when the cache key is unchanged.
        jobs: runs executed at the same time (independent runs only); more than one run on a
            local Dask cluster of ``jobs`` workers when Dask is installed (else on threads).
        log: where progress lines go.
        scheduler: address of a Dask scheduler to execute the runs on (``jobs`` at a time); the
            folders must be shared with its workers. A run whose worker dies is retried by Dask,
            then reported as failed.

    Returns:
        One outcome per run considered, in dependency order.
    """
    root = Path(root).resolve()
    runs = load_runs(root / BOOK_DIR / "runs.yml", profile, root)
    if only:
        unknown = sorted(set(only) - {run.name for run in runs})
        if unknown:
            raise ValueError(f"unknown run name(s) {unknown}; runs of profile {profile!r}: {[r.name for r in runs]}")
        wanted = set(only)
        for run in reversed(runs):
            if run.name in wanted:
                wanted.update(run.needs)
        runs = [run for run in runs if run.name in wanted]
    output = book_output_dir(root, profile)
    sources = _sources_hash()
    keys: dict[str, str] = {}
    outcomes: dict[str, RunOutcome] = {}
    pending = {run.name: run for run in runs}
    running: dict[Future, tuple[RunSpec, float]] = {}

    def ready(run: RunSpec) -> bool:
        return all(need in outcomes for need in run.needs)

    pool: Executor
    with (
        dask_executor(jobs, scheduler) if uses_dask(jobs, scheduler) else ThreadPoolExecutor(max_workers=max(1, jobs))
    ) as pool:
        while pending or running:
            for name in list(pending):
                run = pending[name]
                if not ready(run) or len(running) >= max(1, jobs):
                    continue
                del pending[name]
                blocked = [n for n in run.needs if outcomes[n].status in ("failed", "skipped")]
                if blocked:
                    outcomes[name] = RunOutcome(name, "skipped", message=f"dependency failed: {', '.join(blocked)}")
                    print(f"[book] {name}: skipped (dependency failed: {', '.join(blocked)})", file=log, flush=True)
                    continue
                keys[name] = _cache_key(run, root, keys, sources)
                key_file = output / "keys" / f"{name}.json"
                executed_copy = output / "notebooks" / f"{name}.ipynb"
                if (
                    not force
                    and executed_copy.is_file()
                    and key_file.is_file()
                    and json.loads(key_file.read_text()).get("key") == keys[name]
                ):
                    outcomes[name] = RunOutcome(name, "cached")
                    print(f"[book] {name}: unchanged, not executed", file=log, flush=True)
                    continue
                print(f"[book] {name}: executing {run.notebook}", file=log, flush=True)
                running[pool.submit(_execute, run, root, output)] = (run, time.perf_counter())
            if not running:
                continue
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                run, started = running.pop(future)
                seconds = time.perf_counter() - started
                error = future.exception()
                if error is None:
                    write_json(
                        output / "keys" / f"{run.name}.json",
                        {"key": keys[run.name], "seconds": seconds, "parameters": run.parameters},
                    )
                    outcomes[run.name] = RunOutcome(run.name, "executed", seconds)
                    print(f"[book] {run.name}: done", file=log, flush=True)
                else:
                    (output / "keys" / f"{run.name}.json").unlink(missing_ok=True)
                    # The previous executed copy no longer matches the sources: never render it.
                    stale = output / "notebooks" / f"{run.name}.ipynb"
                    if stale.is_file():
                        stale.unlink()
                        print(
                            f"[book] {run.name}: removed its previous executed notebook (stale after this failure)",
                            file=log,
                            flush=True,
                        )
                    message = str(error).strip().splitlines()
                    outcomes[run.name] = RunOutcome(run.name, "failed", seconds, "\n".join(message[-15:]))
                    print(f"[book] {run.name}: FAILED after {seconds:.0f} s", file=log, flush=True)
    ordered = [outcomes[run.name] for run in runs]
    executed = sum(o.status == "executed" for o in ordered)
    cached = sum(o.status == "cached" for o in ordered)
    print(
        f"[book] profile {profile}: {executed} executed, {cached} unchanged (not executed), "
        f"{sum(o.status == 'failed' for o in ordered)} failed, {sum(o.status == 'skipped' for o in ordered)} skipped",
        file=log,
        flush=True,
    )
    if executed == 0 and cached == len(ordered):
        print("[book] nothing changed: no notebook was executed", file=log, flush=True)
    for outcome in ordered:
        if outcome.status == "failed":
            print(f"[book] failure in {outcome.name}:\n{outcome.message}", file=log, flush=True)
    return ordered


def build_book(root: Path, profile: str | None = None, builder: str = "html") -> Path:
    """Render the book; return the path of the HTML index.

    The build runs on a staged copy of ``_config.yml``, ``_toc.yml`` and ``book/`` in which
    each chapter notebook is replaced by its executed copy from ``profile``'s runs.

    Args:
        root: repository folder holding ``_config.yml``, ``_toc.yml`` and ``book/``.
        profile: the profile whose executed notebooks fill the chapters; ``None`` renders the
            committed (output-free) notebooks.
        builder: Jupyter Book builder name.

    Raises:
        FileNotFoundError: ``_config.yml``/``_toc.yml`` missing, or a chapter of the profile
            has not been executed (run ``brainage book run`` first).
        RuntimeError: the build failed or produced warnings (its output is included).
    """
    root = Path(root).resolve()
    for name in BOOK_FILES:
        if not (root / name).is_file():
            raise FileNotFoundError(f"{root / name} not found: run from the repository root or pass --root")
    stage = root / "_build" / "source"
    clear_owned_folder(stage, "the book's staging copy")
    stage.mkdir(parents=True)
    for name in BOOK_FILES:
        shutil.copy2(root / name, stage / name)
    shutil.copytree(root / BOOK_DIR, stage / BOOK_DIR, ignore=shutil.ignore_patterns("_*", ".ipynb_checkpoints"))
    claim(stage, [path for path in stage.rglob("*") if path.is_file()])
    if profile is not None:
        output = book_output_dir(root, profile)
        for run in load_runs(root / BOOK_DIR / "runs.yml", profile, root):
            if not run.chapter:
                continue
            executed = output / "notebooks" / f"{run.name}.ipynb"
            if not executed.is_file():
                raise FileNotFoundError(
                    f"chapter {run.notebook} has no executed copy ({executed}): its last run failed or never ran; "
                    f"fix it and run: brainage book run --profile {profile}"
                )
            shutil.copy2(executed, stage / run.notebook)
    command = [
        str(Path(sys.executable).parent / "jupyter-book"),
        "build",
        str(stage),
        "--path-output",
        str(root),
        "--builder",
        builder,
        "--warningiserror",
        "--keep-going",
        "--all",
    ]
    completed = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"jupyter-book build failed (exit {completed.returncode}):\n{completed.stdout[-6000:]}\n{completed.stderr[-6000:]}"
        )
    return root / "_build" / builder / "index.html"
