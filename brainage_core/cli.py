"""The ``brainage`` command line: thin wrappers around the package's modules.

Each subcommand parses its arguments and delegates; heavy imports happen inside the handlers
so ``brainage --help`` stays fast. Exit codes: 0 success, 1 a run failed, 2 invalid input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "build_parser"]

EXIT_INVALID_INPUT = 2


def _cmd_validate(args: argparse.Namespace) -> int:
    from brainage_core.manifest import validate_manifest

    problems = validate_manifest(args.manifest, check_images=args.check_images)
    if problems:
        print(f"{args.manifest}: {len(problems)} problem(s):", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        print("See data_manifests/schema.md for the columns and their rules.", file=sys.stderr)
        return EXIT_INVALID_INPUT
    import pandas as pd

    n_rows = len(pd.read_csv(args.manifest, dtype=str))
    print(f"{args.manifest}: valid ({n_rows} scans)")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from brainage_core.synth import SynthConfig, generate_cohort

    config = SynthConfig.from_yaml(args.config) if args.config else SynthConfig()
    manifest = generate_cohort(
        args.out,
        n_subjects=args.n_subjects,
        seed=args.seed,
        spacing=args.spacing,
        config=config,
        progress=not args.quiet,
        workers=args.workers,
    )
    print(f"wrote {manifest}")
    return 0


def _cmd_book_build(args: argparse.Namespace) -> int:
    from brainage_core.runner import build_book

    index = build_book(Path(args.root), builder=args.builder)
    print(f"book: {index}")
    return 0


def _add_synth(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="generate the synthetic aging cohort (NIfTI + manifest + ground truth)",
        description="Generate a synthetic aging cohort from the MNI ICBM152 2009a template shipped with "
        "nilearn: T1 volumes, brain masks, ground-truth effect maps, manifest.csv and ground_truth.csv. "
        "Same seed and config give byte-identical files.",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--n-subjects", type=int, default=300, help="number of subjects (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--spacing", type=float, default=2.0, help="voxel size in mm, e.g. 2 or 3 (default 2)")
    parser.add_argument("--config", type=Path, help="YAML file overriding the effect sizes (see data_manifests/synthetic_cohort.md)")
    parser.add_argument("--workers", type=int, default=None, help="parallel processes (default: all cores)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_cmd_synth)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``brainage`` command and all its subcommands."""
    parser = argparse.ArgumentParser(
        prog="brainage",
        description="Brain age from T1-weighted MRI with Rank-N-Contrast: data, training, evaluation, the book.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = subparsers.add_parser(
        "validate",
        help="check a manifest CSV and list every problem",
        description="Check a manifest (data_manifests/schema.md) and print every problem with its row "
        "number and column. Exit 0 when valid, 2 otherwise.",
    )
    validate.add_argument("manifest", type=Path, help="the manifest CSV")
    validate.add_argument(
        "--check-images",
        choices=("header", "exists", "none"),
        default="header",
        help="how to check image files: open the NIfTI header (default), only check they exist, or skip",
    )
    validate.set_defaults(handler=_cmd_validate)

    _add_synth(subparsers)

    book = subparsers.add_parser("book", help="run and render the book", description="Run and render the book.")
    book_commands = book.add_subparsers(dest="book_command", required=True, metavar="BOOK_COMMAND")
    build = book_commands.add_parser(
        "build",
        help="render the book with Jupyter Book (warnings are errors)",
        description="Render the book with Jupyter Book 1.x into _build/html; Sphinx warnings are errors.",
    )
    build.add_argument("--root", default=".", help="folder holding _config.yml and _toc.yml (default: .)")
    build.add_argument("--builder", default="html", help="Jupyter Book builder (default: html)")
    build.set_defaults(handler=_cmd_book_build)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``brainage`` command; return its exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, OSError) as error:
        print(f"brainage {args.command}: error: {error}", file=sys.stderr)
        return EXIT_INVALID_INPUT


if __name__ == "__main__":
    sys.exit(main())
