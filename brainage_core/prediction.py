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

A release model (:mod:`brainage_core.release`: the fold models of a cross-validation) goes
wherever a run directory goes: it predicts with the mean of its fold models, and its bias
correction and interval were fitted on the out-of-fold predictions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from brainage_core.analysis.metrics import BIAS_CORRECTION, HEALTHY_GROUP, BiasCorrection, corrected_predictions
from brainage_core.data import open_manifest_volumes
from brainage_core.imaging import default_cache_dir
from brainage_core.inference import predict_ages, resolve_device
from brainage_core.manifest import PREPARATION_COLUMN, read_manifest, read_manifest_table
from brainage_core.release import INTERVAL_LEVEL, ConformalInterval, conformal_half_width, is_release, read_release
from brainage_core.rundir import load_model, read_predictions

__all__ = [
    "INTERVAL_LEVEL",
    "ConformalInterval",
    "PreparationMismatchError",
    "conformal_interval",
    "predict_scans",
    "run_preparations",
]

CARRIED_COLUMNS = ("subject_id", "session", "split", "group", "sex", "site", "age")  # copied when present
PREPARE_TOKEN = re.compile(r"^brainage-prepare-v\d+$")  # what brainage prepare / import-ixi write


class PreparationMismatchError(ValueError):
    """The scans were not prepared as the run's training scans were; the message says what to do."""


@dataclass(frozen=True)
class _Predictor:
    """What predicts: the run directories whose models are averaged, the interval and the correction.

    ``correction`` is ``None`` when it cannot be fitted; ``note`` then says why.
    """

    members: list[Path]
    interval: ConformalInterval
    correction: BiasCorrection | None
    note: str
    trained_on: set[str]


def _predictor(run_dir: str | os.PathLike[str], level: float) -> _Predictor:
    """A run directory's single model, or a release folder's fold ensemble."""
    if is_release(run_dir):
        release = read_release(run_dir)
        if level != release.interval.level:
            raise ValueError(
                f"{run_dir}: the release's interval was calibrated for {release.interval.level:.0%} coverage, "
                f"not {level:.0%}; rebuild it with that level"
            )
        members = list(release.members.values())
        trained_on = set().union(*(run_preparations(read_predictions(member)) for member in members))
        return _Predictor(members, release.interval, release.correction, release.note, trained_on)
    run_predictions = read_predictions(run_dir)
    interval = conformal_interval(run_predictions, level)
    try:
        correction = corrected_predictions(run_predictions, method=BIAS_CORRECTION).attrs["bias_correction"]
        note = ""
    except ValueError as error:  # e.g. an untrained model whose predictions do not rise with age
        correction, note = None, f"no bias-corrected gap: the run's age-bias correction cannot be fitted ({error})"
    return _Predictor([Path(run_dir)], interval, correction, note, run_preparations(run_predictions))


def conformal_interval(run_predictions: pd.DataFrame, level: float = INTERVAL_LEVEL) -> ConformalInterval:
    """The split-conformal interval of a run, from its ``predictions.csv`` (see the module docstring).

    A run without healthy validation rows gets a NaN half-width (``n_calibration`` 0).

    Raises:
        ValueError: ``level`` outside (0, 1).
    """
    healthy = run_predictions[run_predictions["group"] == HEALTHY_GROUP]
    errors = lambda rows: (rows["predicted_age"] - rows["age"]).abs().to_numpy()  # noqa: E731
    calibration = errors(healthy[healthy["split"] == "val"])
    half_width = conformal_half_width(calibration, level)
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
        run_dir: a finished run directory, or a release folder (:mod:`brainage_core.release`).
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
        interval when the run has no healthy validation rows; ``attrs["notes"]`` says which; a
        release adds ``member_sd``, the spread of its fold models' predictions) and the interval.

    Raises:
        PreparationMismatchError: the scans were prepared otherwise than the run's.
        ValueError, FileNotFoundError, ManifestError: unusable inputs (the message names them).
    """
    if (manifest is None) == (not scans):
        raise ValueError("give either a manifest or scan files, not both and not neither")
    if ages and len(ages) != len(scans):
        raise ValueError(f"{len(ages)} age(s) for {len(scans)} scan(s); give one age per scan or none")
    predictor = _predictor(run_dir, level)
    frame = _scans_to_predict(
        manifest, scans, list(ages) or [None] * len(scans), predictor.trained_on, prepared_cache, progress
    )

    torch_device = resolve_device(device)
    result = frame[[c for c in CARRIED_COLUMNS if c in frame.columns]].copy()
    per_member, opened = [], {}
    for member in predictor.members:  # the members of a release may read scans differently
        model, config = load_model(member, str(torch_device))
        reading = repr(dataclasses.replace(config.data, test_fold=None))
        if reading not in opened:
            opened[reading] = open_manifest_volumes(frame, config.data, progress=progress)
        per_member.append(predict_ages(model, opened[reading], torch_device).numpy().astype(float))
    result["predicted_age"] = np.mean(per_member, axis=0)
    if len(per_member) > 1:
        result["member_sd"] = np.std(per_member, axis=0, ddof=1)
    result["interval_low"] = result["predicted_age"] - predictor.interval.half_width
    result["interval_high"] = result["predicted_age"] + predictor.interval.half_width
    age = pd.to_numeric(result["age"], errors="coerce")
    result["brain_age_gap"] = result["predicted_age"] - age
    result.attrs["notes"] = [predictor.note] if predictor.note else []
    if predictor.correction is None:
        result["brain_age_gap_corrected"] = math.nan
    else:
        result["brain_age_gap_corrected"] = predictor.correction.apply(age, result["predicted_age"]) - age
        result.attrs["bias_correction"] = predictor.correction
    return result, predictor.interval
