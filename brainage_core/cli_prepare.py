"""The ``brainage prepare`` subcommand: raw T1 scans (a manifest or a BIDS dataset) in, a manifest out.

Kept apart from :mod:`brainage_core.cli` (which calls :func:`add_prepare`) so that module stays
small; like every handler, the heavy imports happen only when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_prepare"]

EXIT_INVALID_INPUT = 2  # as brainage_core.cli


def _cmd_prepare(args: argparse.Namespace) -> int:
    from brainage_core.prepare import prepare_scans, read_bids

    source = read_bids(args.bids) if args.bids is not None else args.manifest
    report = prepare_scans(
        source,
        args.out,
        workers=args.jobs,
        scheduler=args.scheduler,
        progress=not args.quiet,
        spacing=args.spacing,
        include_failed_qc=args.include_failed_qc,
    )
    problems = report.problems()
    if problems:
        print(f"brainage prepare: {len(problems)} problem(s):", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        print(report.summary(), file=sys.stderr)
        print(f"QC report: {Path(args.out) / 'qc.html'}", file=sys.stderr)
        return EXIT_INVALID_INPUT
    print(report.summary())
    return 0


def add_prepare(subparsers: argparse._SubParsersAction) -> None:
    """Add ``brainage prepare`` to the command's subparsers."""
    prepare = subparsers.add_parser(
        "prepare",
        help="your own scans: skull strip (deepbet), N4, affine to MNI, QC report, manifest",
        description="Prepare raw T1 scans for the models: read (any orientation), skull strip with deepbet (or the "
        "manifest's 'mask' column), N4 bias correction, affine registration to the MNI ICBM152 2009a template, a QC "
        "report (qc.html, worst scans first) and a manifest that 'brainage validate' accepts. Input: a manifest "
        "(data_manifests/schema.md) or a BIDS dataset (participants.tsv + sub-*/[ses-*/]anat/*_T1w.nii.gz). "
        "Exit 2 with every problem listed when any input row or scan failed (the others are prepared). "
        "Reruns reuse finished scans.",
    )
    source = prepare.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", type=Path, help="manifest CSV of raw T1 scans")
    source.add_argument("--bids", type=Path, help="BIDS dataset folder")
    prepare.add_argument("--out", required=True, type=Path, help="output folder")
    prepare.add_argument(
        "--jobs",
        "--workers",
        dest="jobs",
        type=int,
        default=None,
        help="scans prepared at the same time (default: all cores); more than one: on a local Dask cluster",
    )
    prepare.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="prepare on the Dask cluster of this scheduler (tcp://host:8786; dask-jobqueue for HPC); "
        "the input and output folders must be shared with its workers",
    )
    prepare.add_argument("--spacing", type=float, default=2.0, help="voxel size of the template grid in mm (default 2)")
    prepare.add_argument(
        "--include-failed-qc", action="store_true", help="keep scans failing QC in the manifest (still reported)"
    )
    prepare.add_argument("--quiet", action="store_true", help="no progress bar")
    prepare.set_defaults(handler=_cmd_prepare)
