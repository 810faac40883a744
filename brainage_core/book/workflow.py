"""Glue between the book's notebooks and the package: settings, data and runs on demand.

Every chapter can run on its own (a reader opening it, nbmake in smoke mode) or inside a batch
run of the book, where upstream runs already produced the cohort and the trained models. The
helpers here make both work without logic in the notebooks: a chapter turns its ``overrides``
parameter into a validated :class:`~brainage_core.config.RunConfig` with
:func:`chapter_config` (the cohort is generated or reused on the way), and gets its models with
:func:`ensure_runs`, which trains only what is missing or was made with other settings.

The real-data chapter imports an IXI folder with :func:`import_ixi_folder`, which finds the
demographics and the DLMUSE label folder, and picks its QC examples with :func:`qc_example_figures`.

Settings have one source: the defaults of :mod:`brainage_core.config`, overridden by dotted
``section.key=value`` strings: a profile's ``overrides`` in ``book/runs.yml`` (the ``smoke``
profile's are what smoke mode applies), then the notebook's own ``overrides`` parameter.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import yaml

from brainage_core.config import (
    CohortConfig,
    ConfigError,
    RunConfig,
    load_cohort_config,
    load_config,
    split_overrides,
)
from brainage_core.manifest import read_manifest

if TYPE_CHECKING:
    from brainage_core.cohorts.ixi import ImportReport

__all__ = [
    "RUNS_FILE",
    "IxiImport",
    "chapter_config",
    "ensure_cohort",
    "ensure_runs",
    "import_ixi_folder",
    "ixi_demographics",
    "learning_curve",
    "left_out_summary",
    "profile_overrides",
    "qc_example_figures",
    "qc_table",
    "run_folder",
    "smoke_mode",
    "smoke_paths",
    "stopping_rule",
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

    An existing cohort is reused only if its ``cohort.json`` records the same format version (the
    generator's), size, seed and spacing and its manifest is complete; otherwise the folder is
    regenerated, which replaces only the cohort's own files and refuses a folder holding anything
    else (see :func:`~brainage_core.cohorts.synthetic.generate_cohort`).
    """
    from brainage_core.cohorts.synthetic import FORMAT_VERSION, generate_cohort

    cohort_dir = Path(cohort_dir)
    manifest = cohort_dir / "manifest.csv"
    record = cohort_dir / "cohort.json"
    if manifest.is_file() and record.is_file():
        recorded = json.loads(record.read_text())
        wanted = (FORMAT_VERSION, cohort.n_subjects, cohort.seed, float(cohort.spacing))
        keys = ("format_version", "n_subjects", "seed")
        if (*(recorded.get(key) for key in keys), float(recorded.get("spacing", -1))) == wanted:
            return manifest
    return generate_cohort(
        cohort_dir, n_subjects=cohort.n_subjects, seed=cohort.seed, spacing=cohort.spacing, progress=progress
    )


def stopping_rule(config: RunConfig) -> str:
    """The early-stopping rule of ``config`` in words, for the chapters' text."""
    optim = config.train
    if optim.patience is None:
        return f"runs all {optim.epochs} epochs (no early stopping, `train.patience`)"
    return (
        f"stops once {optim.patience} epochs bring no better validation MAE (`train.patience`), not before "
        f"epoch {optim.min_epochs} (`train.min_epochs`: an end-to-end regressor can sit at the mean age for "
        f"its first epochs) and at most at epoch {optim.epochs} (`train.epochs`)"
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
    problems: list[str] = []
    try:
        cohort = load_cohort_config(cohort_overrides)
    except ConfigError as error:
        problems += error.problems
    try:
        config = load_config(None, run_overrides)
    except ConfigError as error:
        problems += error.problems
    if problems:
        raise ConfigError(problems, "the chapter's settings")
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
    tuned: str | os.PathLike[str] | None = None,
) -> dict[tuple[str, int], Path]:
    """One finished run per (loss, seed) in :func:`run_folder`, trained only where missing or changed.

    Each run is ``config`` with the loss and seed, and the loss's tuned settings from ``tuned``
    (:func:`~brainage_core.tuned.apply_tuned`). Its stored config is compared with the requested
    one (:func:`~brainage_core.train.ensure_run`), so changed settings never reuse old runs.
    """
    from brainage_core.train import ensure_run
    from brainage_core.tuned import apply_tuned

    return {
        (loss, int(seed)): ensure_run(
            apply_tuned(with_loss(config, loss, seed), tuned), run_folder(runs_root, loss, seed), progress
        )
        for loss in losses
        for seed in seeds
    }


def learning_curve(
    config: RunConfig,
    work_dir: str | os.PathLike[str],
    methods: Sequence[str],
    sizes: Sequence[int],
    seed: int = 0,
    tuned: str | os.PathLike[str] | None = None,
    n_boot: int | None = None,
    runs_root: str | os.PathLike[str] | None = None,
    full_methods: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, dict[tuple[str, int], Path]]:
    """Test MAE against the number of training subjects, for deep methods and ridge.

    Each deep method of ``methods`` is trained (one run per size, ``data.train_subjects``, into
    ``work_dir/n<size>``) and selected on the full validation set; ``methods`` may be empty
    (ridge alone at the smaller sizes). The schedule is step-matched:
    an epoch of a smaller set cycles its subjects up to the size of the full training set
    (``train.epoch_size``), so every point gets the same optimiser steps, augmented views, epochs
    and early-stopping clock as the full run, and a small set is not stopped short of its plateau
    for want of steps. Ridge on tissue fractions is
    fitted on the same training subjects (:func:`~brainage_core.analysis.baseline.split_baseline_errors`).
    The point with every training scan is always added, for ``full_methods`` (default:
    ``methods``); its runs are those of ``runs_root`` (:func:`ensure_runs`: reused when they
    exist), or trained into ``work_dir/all``.

    Returns:
        The curve, one row per (method, size): ``method``, ``n_train``, ``mae``, ``mae_low``,
        ``mae_high`` (95 % bootstrap over test controls); and the deep runs' folders by
        (method, size), for their validation curves
        (:func:`~brainage_core.analysis.compare.validation_curves`).
    """
    from brainage_core.analysis.baseline import split_baseline_errors
    from brainage_core.analysis.compare import collect_runs
    from brainage_core.analysis.metrics import N_BOOT, bootstrap_ci
    from brainage_core.data import assign_splits

    frame = read_manifest(config.data.manifest, check_images="none")
    split = assign_splits(frame, config.data.test_fold)
    n_available = int(((split == "train") & frame["group"].isin(list(config.data.train_groups))).sum())
    rows = []
    run_dirs: dict[tuple[str, int], Path] = {}
    for size in sorted({min(int(size), n_available) for size in sizes} | {n_available}):
        sized = copy.deepcopy(config)
        sized.data.train_subjects = size if size < n_available else None
        sized.train.epoch_size = n_available if size < n_available else None
        root = Path(work_dir) / f"n{size}" if size < n_available else Path(runs_root or Path(work_dir) / "all")
        deep = methods if size < n_available or full_methods is None else full_methods
        sized_runs = ensure_runs(sized, root, deep, [seed], tuned=tuned)
        run_dirs.update({(method, size): run_dir for (method, _), run_dir in sized_runs.items()})
        deep_errors = [collect_runs(sized_runs)[1]] if sized_runs else []
        ridge = split_baseline_errors(
            config.data.manifest,
            groups=config.data.train_groups,
            fit_splits=("train",),
            train_subjects=sized.data.train_subjects,
            test_fold=config.data.test_fold,
        )
        for method, group in pd.concat([*deep_errors, ridge[ridge["method"] == "ridge"]]).groupby("method"):
            low, high = bootstrap_ci(group["age"], group["predicted_age"], "mae", n_boot=n_boot or N_BOOT)
            rows.append(
                {
                    "method": method,
                    "n_train": size,
                    "mae": float(group["abs_error"].mean()),
                    "mae_low": low,
                    "mae_high": high,
                }
            )
    return pd.DataFrame(rows), run_dirs


@dataclass
class IxiImport:
    """An imported IXI folder (see :func:`import_ixi_folder`).

    Attributes:
        report: what the import did and every scan it left out.
        manifest: the manifest written (a path as the report gives it).
        frame: the manifest, read (absolute paths, typed columns).
        qc: ``qc.csv``: one row of QC numbers per processed scan, passed or not.
        import_dir: the import folder; QC figures are ``qc/<subject_id>.png`` in it.
    """

    report: ImportReport
    manifest: Path
    frame: pd.DataFrame
    qc: pd.DataFrame
    import_dir: Path


def ixi_demographics(ixi_dir: str | os.PathLike[str]) -> Path:
    """The demographics table of an IXI folder: ``participants.csv`` if present, else ``IXI.xls``."""
    participants = Path(ixi_dir) / "participants.csv"
    return participants if participants.is_file() else Path(ixi_dir) / "IXI.xls"


def import_ixi_folder(
    ixi_dir: str | os.PathLike[str],
    import_dir: str | os.PathLike[str],
    max_subjects: int | None = None,
    progress: bool = False,
) -> IxiImport:
    """Import an IXI folder (``t1/``, optional ``seg/``, demographics) into ``import_dir``.

    Runs :func:`~brainage_core.cohorts.ixi.import_ixi` on ``ixi_dir/t1`` with the demographics of
    :func:`ixi_demographics` and, when ``ixi_dir/seg`` exists, its DLMUSE label images as brain
    masks. Finished subjects are reused.

    Args:
        ixi_dir: the IXI folder.
        import_dir: the import's output folder (a cache, reused).
        max_subjects: import only the first N subjects; ``None``: all.
        progress: show a progress bar.

    Raises:
        FileNotFoundError: ``ixi_dir`` has no ``t1/`` folder (the message names the folder).
    """
    from brainage_core.cohorts.ixi import import_ixi

    ixi = Path(ixi_dir)
    if not (ixi / "t1").is_dir():
        raise FileNotFoundError(
            f"IXI scans not found in {ixi.resolve()}: set the ixi_dir parameter to a folder with t1/, seg/ and "
            "participants.csv"
        )
    mask_dir = ixi / "seg" if (ixi / "seg").is_dir() else None
    report = import_ixi(
        ixi / "t1", ixi_demographics(ixi), import_dir, mask_dir=mask_dir, progress=progress, max_subjects=max_subjects
    )
    manifest = Path(report.manifest)
    return IxiImport(
        report=report,
        manifest=manifest,
        frame=read_manifest(manifest, check_images="none"),
        qc=pd.read_csv(Path(import_dir) / "qc.csv"),
        import_dir=Path(import_dir),
    )


def left_out_summary(report: ImportReport) -> str:
    """How many scans the import left out and why, e.g. ``"2 missing age, 1 qc failed"``; ``"none"``."""
    counts = [f"{len(entries)} {name.replace('_', ' ')}" for name, entries in report.problems().items()]
    return ", ".join(counts) or "none"


def qc_table(qc: pd.DataFrame) -> pd.DataFrame:
    """Count, mean, minimum and maximum of the QC correlation, Dice and brain volume (3 decimals)."""
    return qc.describe().loc[["count", "mean", "min", "max"], ["correlation", "dice", "brain_volume_ml"]].round(3)


def qc_example_figures(imported: IxiImport) -> list[Path]:
    """The QC figures of the youngest and the oldest imported subject and of the lowest Dice."""
    frame, qc = imported.frame, imported.qc
    picks = [
        frame.loc[frame["age"].idxmin(), "subject_id"],
        frame.loc[frame["age"].idxmax(), "subject_id"],
        qc.loc[qc["dice"].idxmin(), "subject_id"],
    ]
    return [imported.import_dir / "qc" / f"{subject}.png" for subject in picks]
