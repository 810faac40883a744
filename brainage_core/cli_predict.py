"""The ``brainage predict`` and ``brainage release`` subcommands: brain age of new scans, and the
release model (a fold ensemble) they can predict with.

Kept apart from :mod:`brainage_core.cli` (which calls :func:`add_predict`) so that module stays
small; the heavy imports happen only when the command runs.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

__all__ = ["add_predict", "add_release", "describe_scan"]


def describe_scan(row: pd.Series) -> str:
    """One readable line for one scan: predicted age, interval and, with an age, the gaps."""
    line = (
        f"{row['subject_id']}: brain age {row['predicted_age']:.1f} y "
        f"(interval {row['interval_low']:.1f} to {row['interval_high']:.1f})"
    )
    if not math.isnan(row["brain_age_gap"]):
        line += f"; age {row['age']:.1f} y, gap {row['brain_age_gap']:+.1f} y"
        if not math.isnan(row["brain_age_gap_corrected"]):
            line += f", bias-corrected gap {row['brain_age_gap_corrected']:+.1f} y"
    return line


def _cmd_predict(args: argparse.Namespace) -> int:
    from brainage_core.prediction import predict_scans

    if (args.manifest is None) == (not args.scans):
        print("brainage predict: error: give --manifest M or scan files, not both", file=sys.stderr)
        return 2
    if args.manifest is not None and args.out is None:
        print("brainage predict: error: --manifest needs --out (the CSV to write)", file=sys.stderr)
        return 2
    if args.out is not None and args.manifest is not None and args.out.resolve() == args.manifest.resolve():
        print(f"brainage predict: error: --out {args.out} is the manifest itself", file=sys.stderr)
        return 2
    result, interval = predict_scans(
        args.run,
        args.manifest,
        scans=args.scans,
        ages=args.age or [],
        device=args.device,
        progress=not args.quiet,
        prepared_cache=args.prepared_dir,
    )
    if args.out is not None:
        from brainage_core.fileio import atomic_path

        with atomic_path(args.out, suffix=".csv") as temp:
            result.to_csv(temp, index=False)
        print(f"wrote {args.out} ({len(result)} scans)")
    if args.scans:
        for _, row in result.iterrows():
            print(describe_scan(row))
    print(interval.describe())
    for note in result.attrs.get("notes", []):
        print(f"note: {note}")
    return 0


def _cmd_release(args: argparse.Namespace) -> int:
    from brainage_core.release import INTERVAL_LEVEL, build_release

    release = build_release(args.runs, args.out, level=args.level or INTERVAL_LEVEL)
    print(f"wrote the release model {args.out}: {len(release.members)} fold models")
    print(f"out-of-fold MAE of the fold models: {release.mae:.2f} y")
    print(release.interval.describe())
    return 0


def add_release(subparsers: argparse._SubParsersAction) -> None:
    """Add ``brainage release`` to the command's subparsers."""
    release = subparsers.add_parser(
        "release",
        help="one model from the fold runs of a cross-validation: ensemble, bias correction and interval",
        description="Combine the fold runs of one method's cross-validation (one run per held-out fold) into a "
        "release model that 'brainage predict --run' accepts: it predicts with the mean of the fold models; its "
        "age-bias correction and conformal interval are fitted on the out-of-fold predictions, and the interval's "
        "coverage is checked fold by fold. Example: brainage release runs/rnc_fold* --out models/ixi_rnc",
    )
    release.add_argument("runs", nargs="+", type=Path, help="finished run directories, one per held-out fold")
    release.add_argument("--out", required=True, type=Path, help="the release folder (replaced if brainage wrote it)")
    release.add_argument("--level", type=float, help="nominal coverage of the interval (default 0.9)")
    release.set_defaults(handler=_cmd_release)


def add_predict(subparsers: argparse._SubParsersAction) -> None:
    """Add ``brainage predict`` to the command's subparsers."""
    predict = subparsers.add_parser(
        "predict",
        help="brain age of a manifest's scans, or of raw T1 files, with a trained run",
        description="Predict brain age with the model of a finished run: predicted age, a split-conformal interval "
        "(calibrated on the run's validation controls), the brain-age gap and the bias-corrected gap. Scans prepared "
        "otherwise than the run's training scans are refused; raw scans (single files, or a manifest without a "
        "'preparation' column) are prepared first with 'brainage prepare' (cached) when the run was trained on "
        "prepared scans. Example: brainage predict --run runs/ixi_rnc sub-01_T1w.nii.gz --age 63",
    )
    predict.add_argument("scans", nargs="*", type=Path, help="raw T1 files (with skull, any orientation)")
    predict.add_argument(
        "--run", required=True, type=Path, help="a finished run directory, or a release folder (brainage release)"
    )
    predict.add_argument("--manifest", type=Path, help="manifest of the scans to predict (instead of scan files)")
    predict.add_argument("--age", type=float, nargs="+", help="chronological age of each scan file, for the gaps")
    predict.add_argument("--out", type=Path, help="output CSV (required with --manifest)")
    predict.add_argument("--prepared-dir", type=Path, help="where raw scans are prepared (default: brainage's cache)")
    predict.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    predict.add_argument("--quiet", action="store_true", help="no progress bars")
    predict.set_defaults(handler=_cmd_predict)
