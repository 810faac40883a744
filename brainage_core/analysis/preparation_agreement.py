"""Does the brain mask change the brain age? One model, the same scans prepared two ways.

``brainage prepare`` strips the skull with deepbet unless a mask is given; a model trained on
scans masked one way (e.g. the IXI DLMUSE labels) must give the same ages on scans masked the
other way, or a user's own scans get ages that depend on the preparation rather than on the
brain. :func:`compare_preparations` predicts both versions of every subject with one run and
reports how far apart the ages are, and how far each is from the chronological age on the
run's held-out subjects.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.stats as st

from brainage_core.analysis.metrics import N_BOOT
from brainage_core.prediction import predict_scans
from brainage_core.rundir import read_predictions

__all__ = ["PreparationAgreement", "compare_preparations"]


def _mean_ci(values: np.ndarray, n_boot: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of per-subject values (subjects resampled)."""
    result = st.bootstrap(
        (values,), np.mean, n_resamples=n_boot, confidence_level=level, method="percentile",
        rng=np.random.default_rng(seed),
    )  # fmt: skip
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


@dataclass(frozen=True)
class PreparationAgreement:
    """Ages of the same subjects prepared two ways, by one run.

    Attributes:
        table: one row per subject: ``subject_id``, ``age``, ``split`` (in the run),
            ``predicted_reference``, ``predicted_other`` and ``difference`` (other - reference).
        summary: ``n_subjects``, ``mean_abs_difference`` (with ``ci_low``/``ci_high``),
            ``max_abs_difference``; on the run's test subjects ``n_test``, ``mae_reference``,
            ``mae_other`` and ``mae_change`` (other - reference, with its CI).
    """

    table: pd.DataFrame
    summary: dict[str, float]


def compare_preparations(
    run_dir: str | os.PathLike[str],
    reference_manifest: str | os.PathLike[str],
    other_manifest: str | os.PathLike[str],
    device: str = "auto",
    n_boot: int = N_BOOT,
    seed: int = 0,
    progress: bool = False,
) -> PreparationAgreement:
    """Predict two preparations of the same subjects with one run and compare the ages.

    Args:
        run_dir: a finished run (trained on scans prepared like ``reference_manifest``).
        reference_manifest: the subjects prepared one way (e.g. DLMUSE masks).
        other_manifest: the same subjects prepared another way (e.g. deepbet); subjects in only
            one of them are left out. Subjects match by ``subject_id``, a BIDS ``sub-`` prefix
            ignored (``sub-IXI012`` is ``IXI012``).
        device: ``auto``, ``cpu`` or ``cuda``.
        n_boot: bootstrap resamples of the intervals (subjects resampled).
        seed: bootstrap seed.
        progress: progress bars.

    Raises:
        ValueError: the two manifests share no subject.
    """
    reference, _ = predict_scans(run_dir, reference_manifest, device=device, progress=progress)
    other, _ = predict_scans(run_dir, other_manifest, device=device, progress=progress)
    run_rows = read_predictions(run_dir)
    for frame in (reference, other, run_rows):  # a BIDS participant sub-X is subject X of a plain manifest
        frame["subject_id"] = frame["subject_id"].astype(str).str.removeprefix("sub-")
    splits = run_rows.set_index("subject_id")["split"]
    table = (
        reference[["subject_id", "age", "predicted_age"]]
        .merge(other[["subject_id", "predicted_age"]], on="subject_id", suffixes=("_reference", "_other"))
        .rename(columns={"predicted_age_reference": "predicted_reference", "predicted_age_other": "predicted_other"})
    )
    if table.empty:
        raise ValueError(f"{reference_manifest} and {other_manifest} share no subject_id; nothing to compare")
    table.insert(2, "split", table["subject_id"].map(splits).fillna("not in run"))
    table["difference"] = table["predicted_other"] - table["predicted_reference"]

    absolute = table["difference"].abs().to_numpy()
    low, high = _mean_ci(absolute, n_boot, seed)
    summary: dict[str, float] = {
        "n_subjects": len(table),
        "mean_abs_difference": float(absolute.mean()),
        "ci_low": low,
        "ci_high": high,
        "max_abs_difference": float(absolute.max()),
    }
    test = table[table["split"] == "test"]
    if len(test) >= 2:
        error_reference = (test["predicted_reference"] - test["age"]).abs().to_numpy()
        error_other = (test["predicted_other"] - test["age"]).abs().to_numpy()
        change = error_other - error_reference
        change_low, change_high = _mean_ci(change, n_boot, seed)
        summary.update(
            n_test=len(test),
            mae_reference=float(error_reference.mean()),
            mae_other=float(error_other.mean()),
            mae_change=float(change.mean()),
            mae_change_ci_low=change_low,
            mae_change_ci_high=change_high,
        )
    return PreparationAgreement(table=table, summary=summary)
