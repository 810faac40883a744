"""Glue between the book's notebooks and the package: settings, data and runs on demand.

Every chapter can run on its own (a reader opening it, nbmake in smoke mode) or inside a batch
run of the book, where upstream runs already produced the cohort and the trained models. The
helpers here make both work without logic in the notebooks: a chapter turns its ``overrides``
parameter into a validated :class:`~brainage_core.config.RunConfig` with
:func:`chapter_config` (the cohort is generated or reused on the way), and gets its models with
:func:`ensure_runs`, which trains only what is missing or was made with other settings.

Settings have one source: the defaults of :mod:`brainage_core.config`, overridden by dotted
``section.key=value`` strings: a profile's ``overrides`` in ``book/runs.yml`` (the ``smoke``
profile's are what smoke mode applies), then the notebook's own ``overrides`` parameter.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import yaml

from brainage_core.config import (
    CohortConfig,
    RunConfig,
    load_cohort_config,
    load_config,
    split_overrides,
)
from brainage_core.manifest import read_manifest

__all__ = [
    "RUNS_FILE",
    "chapter_config",
    "ensure_cohort",
    "ensure_runs",
    "profile_overrides",
    "run_folder",
    "smoke_mode",
    "smoke_paths",
    "with_loss",
]

RUNS_FILE = Path(__file__).resolve().parents[2] / "book" / "runs.yml"
SMOKE_PROFILE = "smoke"
STANDALONE = "/_book_runs/standalone/"
STANDALONE_SMOKE = "/_book_runs/standalone-smoke/"


def smoke_mode(parameter: bool) -> bool:
    """Smoke mode is on when the notebook parameter says so or ``BRAINAGE_SMOKE=1``.

    nbmake does not inject papermill parameters, so the tests set the environment variable.
    """
    return bool(parameter) or os.environ.get("BRAINAGE_SMOKE") == "1"


def smoke_paths(smoke: bool, *paths: str) -> list[str]:
    """Move a notebook's default (standalone) folders aside in smoke mode.

    A chapter run alone keeps its outputs under ``_book_runs/standalone/`` and reuses what it
    finds there; smoke runs go to ``_book_runs/standalone-smoke/`` so that their tiny models are
    never mistaken for real ones. Outside smoke mode, and for paths given by a batch run of the
    book, the paths are returned unchanged.

    Args:
        smoke: the notebook's smoke parameter (see :func:`smoke_mode`).
        *paths: folders, as the notebook's parameters give them.
    """
    if not smoke_mode(smoke):
        return list(paths)
    return [path.replace(STANDALONE, STANDALONE_SMOKE) if STANDALONE in path else path for path in paths]


def profile_overrides(profile: str, runs_file: str | os.PathLike[str] = RUNS_FILE) -> list[str]:
    """The ``overrides`` of a profile of ``book/runs.yml`` (e.g. what smoke mode shrinks)."""
    spec = yaml.safe_load(Path(runs_file).read_text()) or {}
    profiles = spec.get("profiles", {})
    if profile not in profiles:
        raise ValueError(f"{runs_file}: unknown profile {profile!r}; profiles: {sorted(profiles)}")
    return [str(item) for item in (profiles[profile] or {}).get("overrides", []) or []]


def ensure_cohort(cohort_dir: str | os.PathLike[str], cohort: CohortConfig, progress: bool = False) -> Path:
    """Return the manifest of a synthetic cohort in ``cohort_dir``, generating it if needed.

    An existing cohort is reused only if its ``cohort.json`` records the same size, seed and
    spacing and its manifest is complete; otherwise the folder is regenerated, which replaces only
    the cohort's own files and refuses a folder holding anything else (see
    :func:`~brainage_core.cohorts.synthetic.generate_cohort`).
    """
    from brainage_core.cohorts.synthetic import generate_cohort

    cohort_dir = Path(cohort_dir)
    manifest = cohort_dir / "manifest.csv"
    record = cohort_dir / "cohort.json"
    if manifest.is_file() and record.is_file():
        recorded = json.loads(record.read_text())
        wanted = (cohort.n_subjects, cohort.seed, float(cohort.spacing))
        if (recorded.get("n_subjects"), recorded.get("seed"), float(recorded.get("spacing", -1))) == wanted:
            return manifest
    return generate_cohort(
        cohort_dir, n_subjects=cohort.n_subjects, seed=cohort.seed, spacing=cohort.spacing, progress=progress
    )


def chapter_config(
    overrides: Iterable[str] = (),
    smoke: bool = False,
    manifest: str = "",
    cohort_dir: str | os.PathLike[str] = "",
    progress: bool = False,
) -> RunConfig:
    """A chapter's run config: the defaults, the smoke profile (in smoke mode), then ``overrides``.

    ``cohort.``-prefixed overrides set the synthetic cohort, the others the run (the same
    strings as ``brainage train --set``). Every problem of either is reported at once.

    Args:
        overrides: dotted ``section.key=value`` strings.
        smoke: the notebook's smoke parameter (see :func:`smoke_mode`).
        manifest: a manifest of the user's own (validated); empty: the synthetic cohort.
        cohort_dir: where the synthetic cohort is generated or reused.
        progress: progress bars (off by default: they clutter executed notebooks).

    Returns:
        The validated config, ``data.manifest`` pointing at the manifest to train on.
    """
    everything = [*(profile_overrides(SMOKE_PROFILE) if smoke_mode(smoke) else []), *overrides]
    cohort_overrides, run_overrides = split_overrides(everything)
    cohort = load_cohort_config(cohort_overrides)
    config = load_config(None, run_overrides)
    if manifest:
        path = Path(manifest).expanduser().resolve()
        read_manifest(path)  # raises ManifestError listing every problem
    else:
        if not str(cohort_dir):
            raise ValueError("chapter_config: give a manifest or a cohort_dir for the synthetic cohort")
        path = ensure_cohort(cohort_dir, cohort, progress=progress)
    config.data.manifest = str(path)
    return config


def with_loss(config: RunConfig, loss: str, seed: int | None = None) -> RunConfig:
    """A copy of ``config`` training with ``loss`` (and ``seed``); another loss drops the old one's params."""
    changed = copy.deepcopy(config)
    if loss != changed.loss.name:
        changed.loss.name, changed.loss.params = loss, {}
    if seed is not None:
        changed.seed = int(seed)
    return changed


def run_folder(runs_root: str | os.PathLike[str], loss: str, seed: int) -> Path:
    """Where the book keeps the run of ``loss`` and ``seed``: ``runs_root/train_<loss>_s<seed>/run``."""
    return Path(runs_root) / f"train_{loss}_s{seed}" / "run"


def ensure_runs(
    config: RunConfig,
    runs_root: str | os.PathLike[str],
    losses: Sequence[str],
    seeds: Sequence[int],
    progress: bool = False,
) -> dict[tuple[str, int], Path]:
    """One finished run per (loss, seed) in :func:`run_folder`, trained only where missing or changed.

    Each run's stored config is compared with the requested one
    (:func:`~brainage_core.train.ensure_run`), so changed settings never reuse old runs.
    """
    from brainage_core.train import ensure_run

    return {
        (loss, int(seed)): ensure_run(with_loss(config, loss, seed), run_folder(runs_root, loss, seed), progress)
        for loss in losses
        for seed in seeds
    }
