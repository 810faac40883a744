"""A run's accuracy report: raw and age-bias-corrected metrics on the CN test set, with CIs.

:func:`evaluate_run` reads a run's predictions through :mod:`brainage_core.rundir`, fits the
age-bias correction of :mod:`brainage_core.analysis.metrics` on healthy validation subjects (or
the controls of another manifest), reports accuracy with percentile-bootstrap intervals, and
writes ``metrics.json`` and ``predictions_corrected.csv`` into the run folder.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from brainage_core.analysis.metrics import (
    BIAS_CORRECTION,
    HEALTHY_GROUP,
    N_BOOT,
    BiasCorrection,
    controls_from_manifest,
    corrected_predictions,
    mae_by_age_band,
    metrics_with_ci,
)
from brainage_core.fileio import atomic_path, write_json
from brainage_core.ownership import claim
from brainage_core.rundir import read_predictions

__all__ = ["evaluate_run"]


def _json_safe(value: Any) -> Any:
    """Floats that are not finite become ``None`` (valid JSON); numpy scalars become Python ones."""
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def evaluate_run(
    run_dir: str | os.PathLike[str],
    controls_manifest: str | os.PathLike[str] | None = None,
    method: str = BIAS_CORRECTION,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Accuracy of a run on the CN test set, before and after age-bias correction.

    The correction is fitted on the CN ``val`` rows of ``predictions.csv`` or, with
    ``controls_manifest``, on the rows of ``predictions.csv`` whose subject is a CN row of that
    manifest (see :func:`controls_from_manifest`); either way never on patients or test rows.
    Intervals are percentile bootstraps over the CN test scans with the correction held fixed
    (it is fitted on other subjects).

    Writes ``RUN_DIR/metrics.json`` (the returned dict) and ``RUN_DIR/predictions_corrected.csv``
    (``predictions.csv`` plus the columns of :func:`corrected_predictions`).

    Returns:
        ``raw`` and ``corrected`` (metric -> value, ci_low, ci_high), ``age_bands`` (raw and
        corrected, one record per band), ``bias_correction`` (coefficients and the rows fitted
        on), ``test_set`` (n scans and subjects), the settings, and ``notes``.

    Raises:
        ValueError: no CN test rows, or the correction cannot be fitted (see
            :func:`corrected_predictions`).
    """
    run_dir = Path(run_dir)
    predictions = read_predictions(run_dir)
    fit_mask = None if controls_manifest is None else controls_from_manifest(predictions, controls_manifest)
    corrected = corrected_predictions(predictions, method=method, fit_mask=fit_mask)
    correction: BiasCorrection = corrected.attrs["bias_correction"]
    test = corrected[(corrected["group"] == HEALTHY_GROUP) & (corrected["split"] == "test")]
    if len(test) < 2:
        raise ValueError(
            f"{run_dir / 'predictions.csv'}: need at least 2 {HEALTHY_GROUP} rows in the 'test' split; "
            f"found {len(test)}"
        )
    fitted = corrected[corrected["used_for_correction"]]
    n_subjects = int(test["subject_id"].nunique())
    notes = ["intervals hold the bias correction fixed: it is fitted on subjects outside the test set"]
    if n_subjects < len(test):
        notes.append(
            f"{len(test) - n_subjects} test scans repeat a subject: the bootstrap resamples scans, "
            "so intervals are too narrow"
        )
    age, raw, adjusted = (test[column].to_numpy() for column in ("age", "predicted_age", "predicted_age_corrected"))
    report = {
        "run_dir": str(run_dir),
        "method": method,
        "n_boot": n_boot,
        "seed": seed,
        "ci_level": level,
        "test_set": {"group": HEALTHY_GROUP, "split": "test", "n_scans": len(test), "n_subjects": n_subjects},
        "bias_correction": {
            **asdict(correction),
            "fitted_on": {
                "source": "CN val rows of predictions.csv" if controls_manifest is None else str(controls_manifest),
                "groups": fitted["group"].value_counts().to_dict(),
                "splits": fitted["split"].value_counts().to_dict(),
            },
        },
        "raw": metrics_with_ci(age, raw, n_boot=n_boot, seed=seed, level=level),
        "corrected": metrics_with_ci(age, adjusted, n_boot=n_boot, seed=seed, level=level),
        "age_bands": {
            "raw": mae_by_age_band(age, raw).to_dict("records"),
            "corrected": mae_by_age_band(age, adjusted).to_dict("records"),
        },
        "notes": notes,
    }
    report = _json_safe(report)
    claim(run_dir, ["predictions_corrected.csv", "metrics.json"])
    with atomic_path(run_dir / "predictions_corrected.csv", suffix=".csv") as temp:
        corrected.to_csv(temp, index=False)
    write_json(run_dir / "metrics.json", report)
    return report
