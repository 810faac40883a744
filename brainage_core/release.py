"""A release model: the fold models of a cross-validation as one ensemble, calibrated out of fold.

Cross-validation leaves ``K`` models, each trained without one fold, and one out-of-fold
prediction per subject (:func:`brainage_core.analysis.crossval.out_of_fold_predictions`). The
release model keeps all ``K`` models and predicts a new scan with their mean. Everything it adds
to the bare prediction is fitted on the out-of-fold predictions, so no subject informs a number
about itself:

* **Bias correction**: the age-bias correction (:data:`~brainage_core.analysis.metrics.BIAS_CORRECTION`)
  fitted on the out-of-fold predictions of the controls.
* **Interval**: a conformal interval ``predicted_age +- q`` where ``q`` is the
  ``ceil((n + 1) * level)``-th smallest absolute out-of-fold error of the ``n`` controls (the
  cross-conformal / CV+ family: Vovk 2015, Barber et al. 2021). Its coverage is checked on the
  folds themselves: for each fold, ``q`` is fitted on the other folds' errors and the share of
  the fold's controls inside is counted (:func:`cross_fold_coverage`). The errors are those of
  single fold models; the ensemble is usually at least as accurate, so the interval errs wide.

The release folder holds ``members/fold<k>/`` (each fold run's ``config.yaml``, ``model.pt`` and
``predictions.csv``), ``oof_predictions.csv`` and ``release.json``, written last: a folder
without it is not a release. :func:`brainage_core.prediction.predict_scans` (``brainage
predict --run``) accepts a release folder wherever it accepts a run directory.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainage_core.analysis.metrics import (
    BIAS_CORRECTION,
    HEALTHY_GROUP,
    BiasCorrection,
    fit_bias_correction,
    healthy_test_rows,
)
from brainage_core.fileio import atomic_path, write_json
from brainage_core.ownership import claim, clear_owned_folder
from brainage_core.rundir import read_config, read_predictions

__all__ = [
    "INTERVAL_LEVEL",
    "RELEASE_FILE",
    "ConformalInterval",
    "Release",
    "build_release",
    "conformal_half_width",
    "cross_fold_coverage",
    "is_release",
    "read_release",
]

INTERVAL_LEVEL = 0.9  # nominal coverage of the per-scan age interval
RELEASE_FILE = "release.json"
MEMBER_FILES = ("config.yaml", "model.pt", "predictions.csv")


@dataclass(frozen=True)
class ConformalInterval:
    """A conformal interval ``predicted +- half_width`` and its measured coverage.

    Attributes:
        level: nominal coverage.
        half_width: ``q`` in years (``inf`` when there are too few calibration rows for ``level``;
            NaN without any).
        n_calibration: healthy rows it was fitted on.
        test_coverage: fraction of healthy held-out rows inside their interval (NaN without).
        n_test: those held-out rows.
        source: ``"validation"`` (one run: fitted on its validation controls, checked on its test
            controls) or ``"out-of-fold"`` (a release: fitted on every fold's controls, checked
            fold by fold with ``q`` fitted on the other folds).
    """

    level: float
    half_width: float
    n_calibration: int
    test_coverage: float
    n_test: int
    source: str = "validation"

    def describe(self) -> str:
        """One sentence for the terminal and the book."""
        if self.n_calibration == 0:
            return f"no interval: no {HEALTHY_GROUP} {self.source} rows to calibrate it on"
        if self.source == "out-of-fold":
            return (
                f"{self.level:.0%} interval: predicted age +- {self.half_width:.1f} y (conformal on the out-of-fold "
                f"errors of {self.n_calibration} controls; each fold calibrated on the others covers "
                f"{self.test_coverage:.1%} of its controls, {self.n_test} in all)"
            )
        coverage = (
            f"covers {self.test_coverage:.0%} of the run's {self.n_test} healthy test scans"
            if self.n_test
            else "no healthy test scans to check its coverage"
        )
        return (
            f"{self.level:.0%} interval: predicted age +- {self.half_width:.1f} y "
            f"(split-conformal on {self.n_calibration} validation controls; {coverage})"
        )


def conformal_half_width(errors: np.ndarray, level: float = INTERVAL_LEVEL) -> float:
    """The ``ceil((n + 1) * level)``-th smallest of ``n`` absolute errors (``inf`` if that exceeds ``n``; NaN if ``n`` is 0).

    Raises:
        ValueError: ``level`` outside (0, 1).
    """
    if not 0 < level < 1:
        raise ValueError(f"interval level must be between 0 and 1; got {level}")
    ordered = np.sort(np.abs(np.asarray(errors, dtype=float)))
    rank = math.ceil((ordered.size + 1) * level)
    return math.nan if ordered.size == 0 else float(ordered[rank - 1]) if rank <= ordered.size else math.inf


def cross_fold_coverage(oof: pd.DataFrame, level: float = INTERVAL_LEVEL) -> pd.DataFrame:
    """Coverage of the out-of-fold interval checked on each fold with ``q`` fitted on the other folds.

    Args:
        oof: out-of-fold predictions of controls: columns ``fold``, ``age``, ``predicted_age``.
        level: nominal coverage.

    Returns:
        One row per fold: ``fold``, ``n``, ``half_width`` (from the other folds) and ``coverage``.
    """
    errors = (oof["predicted_age"] - oof["age"]).abs()
    rows = []
    for fold in sorted(oof["fold"].unique()):
        held_out = (oof["fold"] == fold).to_numpy()
        half_width = conformal_half_width(errors[~held_out].to_numpy(), level)
        rows.append(
            {
                "fold": int(fold),
                "n": int(held_out.sum()),
                "half_width": half_width,
                "coverage": float(np.mean(errors[held_out].to_numpy() <= half_width)),
            }
        )
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Release:
    """A release model as read from its folder.

    Attributes:
        path: the release folder.
        members: the fold models' run directories (``members/fold<k>``), by fold.
        interval: the out-of-fold conformal interval, with its cross-fold coverage.
        correction: the age-bias correction fitted on the out-of-fold controls; ``None`` when it
            cannot be fitted (``note`` says why).
        coverage: :func:`cross_fold_coverage` per fold.
        mae: out-of-fold MAE of the controls in years (single fold models).
    """

    path: Path
    members: dict[int, Path]
    interval: ConformalInterval
    correction: BiasCorrection | None
    coverage: pd.DataFrame
    mae: float
    note: str = ""


def is_release(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a finished release folder (it has ``release.json``)."""
    return (Path(path) / RELEASE_FILE).is_file()


def _out_of_fold_controls(runs: Mapping[int, Path]) -> pd.DataFrame:
    """The healthy test-split rows of each fold run, stacked (one row per subject)."""
    parts = []
    for fold, run_dir in sorted(runs.items()):
        test = healthy_test_rows(read_predictions(run_dir))
        parts.append(test.assign(fold=fold)[["fold", "subject_id", "age", "predicted_age"]])
    table = pd.concat(parts, ignore_index=True)
    repeated = table.loc[table.duplicated("subject_id"), "subject_id"].tolist()
    if repeated:
        raise ValueError(f"subjects in the test split of more than one fold run: {repeated[:10]}; the folds overlap")
    return table


def build_release(
    runs: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str], level: float = INTERVAL_LEVEL
) -> Release:
    """Write a release model from the fold runs of one method's cross-validation.

    Args:
        runs: finished run directories, one per fold, each with its fold as the test split
            (``data.test_fold`` in its config). Their recipes may differ (e.g. chosen per fold by
            :func:`~brainage_core.analysis.recipes.choose_recipes`); each reads scans its own way.
        out_dir: the release folder; an earlier release there is replaced (only files brainage
            wrote; anything else stops it before a file is touched).
        level: nominal coverage of the interval.

    Returns:
        The release, as :func:`read_release` reads it back.

    Raises:
        ValueError: fewer than two runs, a run without a test fold, two runs of one fold, or
            overlapping test splits.
    """
    if len(runs) < 2:
        raise ValueError(f"a release ensembles the runs of two or more folds; got {len(runs)}")
    paths: dict[int, Path] = {}
    for run_dir in map(Path, runs):
        fold = read_config(run_dir).data.test_fold
        if fold is None:
            raise ValueError(f"{run_dir}: not a cross-validation run (its config has no data.test_fold)")
        if fold in paths:
            raise ValueError(f"{paths[fold]} and {run_dir} both hold out fold {fold}; give one run per fold")
        paths[fold] = run_dir
    oof = _out_of_fold_controls(paths)
    try:
        correction: BiasCorrection | None = fit_bias_correction(oof["age"], oof["predicted_age"], BIAS_CORRECTION)
        note = ""
    except ValueError as error:  # e.g. models whose predictions do not rise with age
        correction, note = (
            None,
            f"no bias-corrected gap: the age-bias correction cannot be fitted out of fold ({error})",
        )
    coverage = cross_fold_coverage(oof, level)
    out = Path(out_dir)
    clear_owned_folder(out, "a release model")
    members = {fold: Path("members") / f"fold{fold}" for fold in paths}
    claim(
        out, [RELEASE_FILE, "oof_predictions.csv"] + [str(m / name) for m in members.values() for name in MEMBER_FILES]
    )
    for fold, member in members.items():
        for name in MEMBER_FILES:
            with atomic_path(out / member / name, suffix=Path(name).suffix) as temp:
                shutil.copyfile(paths[fold] / name, temp)
    with atomic_path(out / "oof_predictions.csv", suffix=".csv") as temp:
        oof.to_csv(temp, index=False)
    errors = (oof["predicted_age"] - oof["age"]).to_numpy()
    covered = float((coverage["coverage"] * coverage["n"]).sum() / coverage["n"].sum())
    record: dict[str, Any] = {
        "kind": "fold-ensemble",
        "members": {str(fold): member.as_posix() for fold, member in members.items()},
        "interval": {
            "level": level,
            "half_width": conformal_half_width(errors, level),
            "n_calibration": len(oof),
            "cross_fold_coverage": covered,
        },
        "coverage_by_fold": coverage.to_dict("records"),
        "bias_correction": None if correction is None else dataclasses.asdict(correction),
        "note": note,
        "out_of_fold_mae": float(np.mean(np.abs(errors))),
    }
    write_json(out / RELEASE_FILE, record)
    return read_release(out)


def read_release(path: str | os.PathLike[str]) -> Release:
    """Read a release folder written by :func:`build_release`.

    Raises:
        FileNotFoundError: no ``release.json`` (not a release, or an interrupted build) or a
            member's files are missing.
        ValueError: ``release.json`` is not a release record.
    """
    folder = Path(path)
    if not is_release(folder):
        raise FileNotFoundError(
            f"{folder}: no {RELEASE_FILE}; build the release with brainage_core.release.build_release"
        )
    try:
        record = json.loads((folder / RELEASE_FILE).read_text())
        members = {int(fold): folder / member for fold, member in record["members"].items()}
    except (json.JSONDecodeError, KeyError, AttributeError, TypeError, ValueError) as error:
        raise ValueError(
            f"{folder / RELEASE_FILE} is not a readable release record ({error}); rebuild the release"
        ) from None
    for member in members.values():
        missing = [name for name in MEMBER_FILES if not (member / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{member}: missing {missing}; rebuild the release")
    interval = record["interval"]
    return Release(
        path=folder,
        members=members,
        interval=ConformalInterval(
            level=interval["level"],
            half_width=interval["half_width"],
            n_calibration=interval["n_calibration"],
            test_coverage=interval["cross_fold_coverage"],
            n_test=interval["n_calibration"],
            source="out-of-fold",
        ),
        correction=None if record["bias_correction"] is None else BiasCorrection(**record["bias_correction"]),
        coverage=pd.DataFrame(record["coverage_by_fold"], columns=["fold", "n", "half_width", "coverage"]),
        mae=record["out_of_fold_mae"],
        note=record["note"],
    )
