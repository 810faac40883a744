"""Brain age of new scans with a trained run: prepared or raw scans in, ages, gaps and intervals out.

:func:`predict_scans` is what ``brainage predict`` runs. It adds three things to the network's output
(:func:`brainage_core.inference.predict_ages`):

* **The same preparation as in training.** Every manifest row may name its ``preparation``
  (``brainage prepare`` and ``brainage import-ixi`` write ``brainage-prepare-v<N>``, the phantom
  writes ``synthetic-phantom``); a run records its training rows' preparation in
  ``predictions.csv``. Scans prepared otherwise are refused. Raw scans (no ``preparation``
  column) given to a run trained on prepared scans are prepared first, with
  :func:`brainage_core.prepare.prepare_scans` into a cache folder, so a rerun does no work.
* **The bias-corrected gap.** The run's age-bias correction (:data:`~brainage_core.analysis.metrics.BIAS_CORRECTION`),
  fitted on its healthy validation rows exactly as :func:`~brainage_core.analysis.evaluation.evaluate_run`
  does, applied to the new scans.
* **An interval.** A split-conformal interval (Vovk et al. 2005; Lei et al. 2018) for the
  chronological age: ``predicted_age +- q``, where ``q`` is the ``ceil((n + 1) * level)``-th
  smallest absolute error on the run's ``n`` healthy validation rows. For a new scan from the
  population of those controls the age lies inside with probability at least ``level``; its
  coverage on the run's healthy test rows is reported (:class:`ConformalInterval`).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from brainage_core.analysis.metrics import BIAS_CORRECTION, HEALTHY_GROUP, corrected_predictions
from brainage_core.data import open_manifest_volumes
from brainage_core.imaging import default_cache_dir
from brainage_core.inference import predict_ages, resolve_device
from brainage_core.manifest import PREPARATION_COLUMN, read_manifest, read_manifest_table
from brainage_core.rundir import load_model, read_predictions

__all__ = [
    "INTERVAL_LEVEL",
    "ConformalInterval",
    "PreparationMismatchError",
    "conformal_interval",
    "predict_scans",
    "run_preparations",
]

INTERVAL_LEVEL = 0.9  # nominal coverage of the per-scan age interval
CARRIED_COLUMNS = ("subject_id", "session", "split", "group", "sex", "site", "age")  # copied when present
PREPARE_TOKEN = re.compile(r"^brainage-prepare-v\d+$")  # what brainage prepare / import-ixi write


class PreparationMismatchError(ValueError):
    """The scans were not prepared as the run's training scans were; the message says what to do."""


@dataclass(frozen=True)
class ConformalInterval:
    """A split-conformal interval ``predicted +- half_width`` fitted on a run's validation controls.

    Attributes:
        level: nominal coverage.
        half_width: ``q`` in years (``inf`` when there are too few validation rows for ``level``).
        n_calibration: healthy validation rows it was fitted on.
        test_coverage: fraction of the run's healthy test rows inside their interval (NaN without).
        n_test: those test rows.
    """

    level: float
    half_width: float
    n_calibration: int
    test_coverage: float
    n_test: int

    def describe(self) -> str:
        """One sentence for the terminal and the book."""
        if self.n_calibration == 0:
            return f"no interval: the run has no {HEALTHY_GROUP} validation rows to calibrate it on"
        coverage = (
            f"covers {self.test_coverage:.0%} of the run's {self.n_test} healthy test scans"
            if self.n_test
            else "no healthy test scans to check its coverage"
        )
        return (
            f"{self.level:.0%} interval: predicted age +- {self.half_width:.1f} y "
            f"(split-conformal on {self.n_calibration} validation controls; {coverage})"
        )


def conformal_interval(run_predictions: pd.DataFrame, level: float = INTERVAL_LEVEL) -> ConformalInterval:
    """The split-conformal interval of a run, from its ``predictions.csv`` (see the module docstring).

    A run without healthy validation rows gets a NaN half-width (``n_calibration`` 0).

    Raises:
        ValueError: ``level`` outside (0, 1).
    """
    if not 0 < level < 1:
        raise ValueError(f"interval level must be between 0 and 1; got {level}")
    healthy = run_predictions[run_predictions["group"] == HEALTHY_GROUP]
    errors = lambda rows: (rows["predicted_age"] - rows["age"]).abs().to_numpy()  # noqa: E731
    calibration = np.sort(errors(healthy[healthy["split"] == "val"]))
    rank = math.ceil((calibration.size + 1) * level)
    half_width = (
        math.nan if calibration.size == 0 else float(calibration[rank - 1]) if rank <= calibration.size else math.inf
    )
    test = errors(healthy[healthy["split"] == "test"])
    coverage = float(np.mean(test <= half_width)) if test.size else math.nan
    return ConformalInterval(level, half_width, int(calibration.size), coverage, int(test.size))


def run_preparations(run_predictions: pd.DataFrame) -> set[str]:
    """The preparations of a run's training rows (empty when its manifest did not record one)."""
    if PREPARATION_COLUMN not in run_predictions.columns:
        return set()
    return {str(value) for value in run_predictions[PREPARATION_COLUMN].dropna() if str(value).strip()}


def _prepared_dir(cache: str | os.PathLike[str] | None, key: str) -> Path:
    """The cache folder of one set of raw scans (``<brainage cache>/prepared/<key digest>``)."""
    root = Path(cache) if cache is not None else default_cache_dir() / "prepared"
    return root / hashlib.sha256(key.encode()).hexdigest()[:16]


def _read_prepared(prepared: Path) -> pd.DataFrame:
    """The manifest ``brainage prepare`` wrote, with absolute paths (ages may be blank for single scans)."""
    frame = pd.read_csv(prepared / "manifest.csv", dtype={"subject_id": str, "session": str})
    for column in ("image", "mask"):
        frame[column] = [str((prepared / value).resolve()) for value in frame[column]]
    frame["age"] = pd.to_numeric(frame["age"], errors="coerce")
    return frame


def _prepare_raw(rows: Sequence[dict[str, object]] | Path, prepared: Path, progress: bool) -> pd.DataFrame:
    """Prepare raw scans into ``prepared`` (cached per scan); every failure is an error naming its file."""
    from brainage_core.prepare import prepare_scans  # SimpleITK and deepbet only when raw scans come in

    report = prepare_scans(rows, prepared, progress=progress, include_failed_qc=True)
    problems = report.input_problems + report.failed
    if problems:
        raise ValueError("; ".join(problems) + f" (QC report: {prepared / 'qc.html'})")
    return _read_prepared(prepared)


def _check_preparation(frame: pd.DataFrame, trained_on: set[str], source: str) -> None:
    """Refuse rows prepared otherwise than the run's training scans."""
    recorded = frame[PREPARATION_COLUMN].fillna("").astype(str) if PREPARATION_COLUMN in frame else None
    if not trained_on or recorded is None:
        return
    wrong = frame.loc[~recorded.isin(trained_on), "subject_id"].astype(str).tolist()
    if wrong:
        shown = sorted(set(recorded[~recorded.isin(trained_on)]))
        raise PreparationMismatchError(
            f"{source}: {len(wrong)} scan(s) (e.g. {wrong[:3]}) were prepared as {shown}, but the run was trained "
            f"on scans prepared as {sorted(trained_on)}; give the raw scans (a manifest without a "
            f"'{PREPARATION_COLUMN}' column) so they are prepared the same way, or use a run trained on such scans"
        )


def _scans_to_predict(
    manifest: str | os.PathLike[str] | None,
    scans: Sequence[str | os.PathLike[str]],
    ages: Sequence[float | None],
    trained_on: set[str],
    prepared_cache: str | os.PathLike[str] | None,
    progress: bool,
) -> pd.DataFrame:
    """The rows to predict, prepared as the run's training scans (raw scans are prepared first)."""
    prepares_raw = bool(trained_on) and all(PREPARE_TOKEN.match(token) for token in trained_on)
    if manifest is not None:
        table = read_manifest_table(Path(manifest))
        is_raw = PREPARATION_COLUMN not in table.columns or not table[PREPARATION_COLUMN].astype(str).str.strip().any()
        if is_raw and trained_on and not prepares_raw:
            raise PreparationMismatchError(
                f"{manifest}: the scans have no '{PREPARATION_COLUMN}' column, but the run was trained on "
                f"{sorted(trained_on)} images; predict with a run trained on prepared scans"
            )
        if is_raw and prepares_raw:
            path = Path(manifest).resolve()
            return _prepare_raw(path, _prepared_dir(prepared_cache, str(path)), progress)
        frame = read_manifest(manifest)
        _check_preparation(frame, trained_on, str(manifest))
        return frame
    if not prepares_raw:
        raise PreparationMismatchError(
            "single scans are prepared with brainage prepare first, but this run was trained on "
            f"{sorted(trained_on) or 'scans of unrecorded preparation'}; give a --manifest of scans prepared like them"
        )
    rows: list[dict[str, object]] = []
    for scan, age in zip(scans, ages):
        path = Path(scan).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"scan not found: {scan}")
        name = re.sub(r"\.nii(\.gz)?$", "", path.name)
        rows.append({"subject_id": name, "image": str(path), "age": "" if age is None else age, "sex": "", "group": ""})
    digest = hashlib.sha256("\n".join(str(row["image"]) for row in rows).encode()).hexdigest()
    return _prepare_raw(rows, _prepared_dir(prepared_cache, digest), progress)


def predict_scans(
    run_dir: str | os.PathLike[str],
    manifest: str | os.PathLike[str] | None = None,
    scans: Sequence[str | os.PathLike[str]] = (),
    ages: Sequence[float | None] = (),
    device: str = "auto",
    progress: bool = True,
    prepared_cache: str | os.PathLike[str] | None = None,
    level: float = INTERVAL_LEVEL,
) -> tuple[pd.DataFrame, ConformalInterval]:
    """Brain age of a manifest's scans or of single scan files, with gaps and intervals.

    Args:
        run_dir: a finished run directory.
        manifest: scans to predict: prepared like the run's training scans, or raw (no
            ``preparation`` column), which are prepared first when the run was trained on
            prepared scans. Exactly one of ``manifest`` and ``scans``.
        scans: raw T1 files (any orientation, with skull), prepared first.
        ages: chronological ages of ``scans`` (``None`` where unknown), for the gaps.
        device: ``auto``, ``cpu`` or ``cuda``.
        progress: progress bars.
        prepared_cache: where raw scans are prepared (default ``<brainage cache>/prepared``).
        level: nominal coverage of the interval.

    Returns:
        The predictions (the carried manifest columns, ``predicted_age``, ``interval_low``,
        ``interval_high``, ``brain_age_gap`` and ``brain_age_gap_corrected``; gaps are NaN
        without an age, the corrected gap also when the run's correction cannot be fitted, the
        interval when the run has no healthy validation rows; ``attrs["notes"]`` says which) and
        the interval.

    Raises:
        PreparationMismatchError: the scans were prepared otherwise than the run's.
        ValueError, FileNotFoundError, ManifestError: unusable inputs (the message names them).
    """
    if (manifest is None) == (not scans):
        raise ValueError("give either a manifest or scan files, not both and not neither")
    if ages and len(ages) != len(scans):
        raise ValueError(f"{len(ages)} age(s) for {len(scans)} scan(s); give one age per scan or none")
    run_predictions = read_predictions(run_dir)
    interval = conformal_interval(run_predictions, level)
    trained_on = run_preparations(run_predictions)
    frame = _scans_to_predict(manifest, scans, list(ages) or [None] * len(scans), trained_on, prepared_cache, progress)

    torch_device = resolve_device(device)
    model, config = load_model(run_dir, str(torch_device))
    volumes = open_manifest_volumes(frame, config.data, progress=progress)
    result = frame[[c for c in CARRIED_COLUMNS if c in frame.columns]].copy()
    result["predicted_age"] = predict_ages(model, volumes, torch_device).numpy().astype(float)
    result["interval_low"] = result["predicted_age"] - interval.half_width
    result["interval_high"] = result["predicted_age"] + interval.half_width
    age = pd.to_numeric(result["age"], errors="coerce")
    result["brain_age_gap"] = result["predicted_age"] - age
    result.attrs["notes"] = []
    try:
        correction = corrected_predictions(run_predictions, method=BIAS_CORRECTION).attrs["bias_correction"]
    except ValueError as error:  # e.g. an untrained model whose predictions do not rise with age
        result["brain_age_gap_corrected"] = math.nan
        result.attrs["notes"].append(f"no bias-corrected gap: the run's age-bias correction cannot be fitted ({error})")
    else:
        result["brain_age_gap_corrected"] = correction.apply(age, result["predicted_age"]) - age
        result.attrs["bias_correction"] = correction
    return result, interval
