"""The book's batch runs as data: ``book/runs.yml`` read into ordered :class:`RunSpec` s.

``book/runs.yml`` names every run: a notebook plus parameters, in profiles ``smoke``,
``default`` and ``full``::

    profiles:
      full:
        overrides: [train.epochs=60, cohort.n_subjects=1000]  # dotted settings, as brainage train --set
        parameters: {n_boot: 5000}                     # given to every notebook that declares them
        matrix: {loss: [rnc, mse], seed: [0, 1, 2]}    # values that runs expand over
    runs:
      - name: data
        notebook: book/data.ipynb
        chapter: true                                  # its executed copy is the book's chapter
                                                       # ({loss: rnc, seed: 0}: only that expansion)
      - name: "train_{loss}_s{seed}"
        notebook: book/training.ipynb
        expand: [loss, seed]                           # one run per combination
        parameters: {cohort_dir: "{work:data}/cohort", overrides: ["loss.name={loss}", "seed={seed}"]}

A notebook's ``overrides`` parameter receives the profile's ``overrides``, then the run's
``profile_overrides`` for that profile (e.g. ``profile_overrides: {default: [data.spacing=4.0]}``:
a run that departs from its profile's settings in that profile only), then the run's own
(later ones win); settings not overridden are the defaults of :mod:`brainage_core.config`.

``{work:NAME}`` is run NAME's output folder and makes this run depend on NAME; ``{work_root}``
is the folder of all work folders; ``{all_AXIS}`` is the profile's list for a matrix axis (e.g.
``{all_seed}``). ``needs`` entries may use matrix placeholders: ``train_{loss}_s{seed}`` depends on
every combination. Every notebook also receives ``work_dir`` (its own folder) and ``profile``.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "DEFAULT_CELL_TIMEOUT_S",
    "OUTPUT_DIR",
    "PROFILES",
    "RunSpec",
    "book_output_dir",
    "in_dependency_order",
    "load_runs",
]

PROFILES = ("smoke", "default", "full")
OUTPUT_DIR = "_book_runs"
DEFAULT_CELL_TIMEOUT_S = 3600.0
WORK_PATTERN = re.compile(r"\{work:([A-Za-z0-9_.-]+)\}")


@dataclass
class RunSpec:
    """One papermill run of a notebook.

    Attributes:
        name: unique run name (also its output file and work-folder name).
        notebook: source notebook, relative to the repository root.
        parameters: resolved parameters handed to papermill.
        needs: names of runs that must finish first.
        chapter: whether the executed notebook is the book's chapter for ``notebook``.
        own: names of the parameters the run sets itself (not from the profile); the notebook
            must declare each of them, so a misspelt name fails instead of being ignored.
        cell_timeout: seconds any one cell may run before the run fails (papermill's
            ``execution_timeout``): ``cell_timeout`` of the run, else of the profile, else
            :data:`DEFAULT_CELL_TIMEOUT_S`.
    """

    name: str
    notebook: str
    parameters: dict[str, Any]
    needs: list[str] = field(default_factory=list)
    chapter: bool = False
    own: list[str] = field(default_factory=list)
    cell_timeout: float = 0.0


def book_output_dir(root: Path, profile: str) -> Path:
    """Where a profile's executed notebooks, work folders and cache keys live."""
    return Path(root).resolve() / OUTPUT_DIR / profile


def _substitute(value: Any, variables: dict[str, Any]) -> Any:
    """Replace ``{name}`` placeholders from ``variables``; a value that is one placeholder keeps its type."""
    if isinstance(value, str):
        whole = re.fullmatch(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", value)
        if whole and whole.group(1) in variables:
            return variables[whole.group(1)]
        return re.sub(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: str(variables.get(m.group(1), m.group(0))), value)
    if isinstance(value, list):
        return [_substitute(v, variables) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, variables) for k, v in value.items()}
    return value


def _resolve_work(value: Any, output: Path, needs: set[str]) -> Any:
    if isinstance(value, str):
        for name in WORK_PATTERN.findall(value):
            needs.add(name)
        return WORK_PATTERN.sub(lambda m: str(output / "work" / m.group(1)), value)
    if isinstance(value, list):
        return [_resolve_work(v, output, needs) for v in value]
    if isinstance(value, dict):
        return {k: _resolve_work(v, output, needs) for k, v in value.items()}
    return value


def _expand_needs(need: str, matrix: dict[str, list[Any]], variables: dict[str, Any]) -> list[str]:
    """A ``needs`` entry with bound placeholders substituted and matrix placeholders expanded."""
    need = _substitute(need, variables)
    axes = [axis for axis in re.findall(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", need) if axis in matrix]
    expanded = []
    for values in itertools.product(*(matrix[axis] for axis in axes)):
        expanded.append(_substitute(need, dict(zip(axes, values))))
    return expanded


def load_runs(runs_file: Path, profile: str, root: Path | None = None) -> list[RunSpec]:
    """Expand ``runs.yml`` for one profile into runs in dependency order.

    Raises:
        ValueError: unknown profile (also in a run's ``profile_overrides``), duplicate or unknown
            run names, a matrix key the profile lacks, a dependency cycle.
    """
    runs_file = Path(runs_file)
    root = Path(root) if root is not None else runs_file.resolve().parent.parent
    spec = yaml.safe_load(runs_file.read_text())
    profiles = spec.get("profiles", {})
    if profile not in profiles:
        raise ValueError(f"{runs_file}: unknown profile {profile!r}; profiles: {sorted(profiles)}")
    settings = profiles[profile] or {}
    shared = settings.get("parameters", {}) or {}
    profile_overrides = [str(item) for item in settings.get("overrides", []) or []]
    matrix = settings.get("matrix", {}) or {}
    output = book_output_dir(root, profile)
    runs: list[RunSpec] = []
    for entry in spec.get("runs", []):
        run_profile_overrides = entry.get("profile_overrides") or {}  # profile -> overrides of this run
        unknown_profiles = sorted(set(run_profile_overrides) - set(profiles))
        if unknown_profiles:
            raise ValueError(
                f"{runs_file}: run {entry['name']!r}: profile_overrides names unknown profile(s) {unknown_profiles}; "
                f"profiles: {sorted(profiles)}"
            )
        if entry.get("profiles") and profile not in entry["profiles"]:
            continue
        axes = entry.get("expand", [])
        missing = [axis for axis in axes if axis not in matrix]
        if missing:
            raise ValueError(
                f"{runs_file}: run {entry['name']!r} expands over {missing}, which profile {profile!r} has no matrix for"
            )
        for values in itertools.product(*(matrix[axis] for axis in axes)):
            variables = {
                **shared,
                **{f"all_{axis}": list(axis_values) for axis, axis_values in matrix.items()},
                "work_root": str(output / "work"),
                **dict(zip(axes, values)),
            }
            needs: set[str] = {n for need in entry.get("needs", []) for n in _expand_needs(need, matrix, variables)}
            own_parameters = _substitute(entry.get("parameters", {}) or {}, variables)
            parameters = {**shared, **own_parameters}
            # Overrides accumulate: the profile's, the run's for this profile, the run's own (later ones win).
            parameters["overrides"] = [
                *profile_overrides,
                *[str(item) for item in run_profile_overrides.get(profile) or []],
                *own_parameters.get("overrides", []),
            ]
            parameters = _resolve_work(parameters, output, needs)
            name = _substitute(entry["name"], variables)
            needs.discard(name)  # a run may name its own work folder
            parameters.update({"work_dir": str(output / "work" / name), "profile": profile})
            chapter = entry.get("chapter", False)
            if isinstance(chapter, dict):  # the chapter is the expansion with these matrix values
                chapter = all(variables.get(axis) == value for axis, value in chapter.items())
            own = sorted(entry.get("parameters", {}) or {})
            timeout = float(entry.get("cell_timeout", settings.get("cell_timeout", DEFAULT_CELL_TIMEOUT_S)))
            if not timeout > 0:
                raise ValueError(
                    f"{runs_file}: run {entry['name']!r}: cell_timeout must be > 0 seconds, got {timeout:g}"
                )
            runs.append(RunSpec(name, entry["notebook"], parameters, sorted(needs), bool(chapter), own, timeout))
    names = [run.name for run in runs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{runs_file}: duplicate run names {duplicates}")
    for run in runs:
        unknown = [n for n in run.needs if n not in names]
        if unknown:
            raise ValueError(f"{runs_file}: run {run.name!r} needs unknown run(s) {unknown} in profile {profile!r}")
    return in_dependency_order(runs, runs_file)


def in_dependency_order(runs: list[RunSpec], runs_file: Path) -> list[RunSpec]:
    """``runs`` ordered so that every run comes after the runs it needs; a cycle is an error naming it."""
    by_name = {run.name: run for run in runs}
    ordered: list[RunSpec] = []
    state: dict[str, str] = {}

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            raise ValueError(f"{runs_file}: dependency cycle {' -> '.join((*chain, name))}")
        state[name] = "visiting"
        for need in by_name[name].needs:
            visit(need, (*chain, name))
        state[name] = "done"
        ordered.append(by_name[name])

    for run in runs:
        visit(run.name, ())
    return ordered
