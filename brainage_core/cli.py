"""The ``brainage`` command line: thin wrappers around the package's modules.

Each subcommand parses its arguments and delegates; heavy imports happen inside the handlers
so ``brainage --help`` stays fast. Exit codes: 0 success, 1 a run failed, 2 invalid input (a message
naming the file, row or field; never a traceback), 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from brainage_core.cli_predict import add_predict, add_release
from brainage_core.cli_prepare import add_prepare

__all__ = ["build_parser", "main"]

EXIT_RUN_FAILED = 1
EXIT_INVALID_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C


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

    n_rows = len(pd.read_csv(args.manifest, dtype=str, encoding="utf-8-sig"))
    print(f"{args.manifest}: valid ({n_rows} scans)")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from brainage_core.cohorts.calibration import STRUCTURES
    from brainage_core.cohorts.synthetic import SynthConfig, generate_cohort
    from brainage_core.config import CohortConfig

    config = SynthConfig.from_yaml(args.config) if args.config else SynthConfig()
    defaults = CohortConfig()
    manifest = generate_cohort(
        args.out,
        n_subjects=defaults.n_subjects if args.n_subjects is None else args.n_subjects,
        seed=defaults.seed if args.seed is None else args.seed,
        spacing=defaults.spacing if args.spacing is None else args.spacing,
        config=config,
        progress=not args.quiet,
        workers=args.workers,
    )
    print(f"wrote {manifest}")
    calibration = json.loads((manifest.parent / "cohort.json").read_text()).get("calibration")
    if calibration:
        rows = calibration["structures"]
        structures = ", ".join(f"{name} {rows[name]['r2_age']:.2f}" for name in STRUCTURES if name in rows)
        overlap = calibration["mask_overlap"]
        print(
            f"realism ({calibration['n_controls']} controls, cohort.json 'calibration'): R2 of volume / total brain on age: {structures}; "
            f"brain masks vs their majority mask: Dice {overlap['mean']:.3f} (SD {overlap['sd']:.3f})"
        )
    return 0


def _cmd_import_ixi(args: argparse.Namespace) -> int:
    from brainage_core.cohorts.ixi import import_ixi

    report = import_ixi(
        args.t1_dir,
        args.demographics,
        args.out,
        mask_dir=args.mask_dir,
        spacing=args.spacing,
        workers=args.workers,
        progress=not args.quiet,
        include_failed_qc=args.include_failed_qc,
    )
    print(report.summary())
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from brainage_core.config import load_config
    from brainage_core.train import train
    from brainage_core.tuned import apply_tuned

    if args.resume and args.config is None:
        # The run's own config, with any --set on top (a changed field is then refused by train).
        stored = args.run_dir / "config.yaml"
        if not stored.is_file():
            raise FileNotFoundError(f"cannot resume: {stored} not found; is {args.run_dir} a run directory?")
        config = load_config(stored, args.set or [])
    else:
        config = apply_tuned(load_config(args.config, args.set or []), args.tuned)
    try:
        run_dir = train(config, args.run_dir, resume=args.resume, progress=not args.quiet)
    except KeyboardInterrupt:
        if (args.run_dir / "checkpoint.pt").is_file():
            print(
                f"\nbrainage train: interrupted; resume with: brainage train --run-dir {args.run_dir} --resume",
                file=sys.stderr,
            )
        else:
            print("\nbrainage train: interrupted before the first epoch finished; nothing was kept", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"run: {run_dir}")
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from brainage_core.tuned import write_tuned
    from brainage_core.tuning import tune

    results = []
    for loss in args.loss:
        result = tune(loss, args.out, args.trials, args.set or [], args.config, seed=args.seed, storage=args.storage)
        print(
            f"{loss}: best validation MAE {result.best_val_mae:.2f} y over {result.n_trials} trials: {' '.join(result.overrides)}"
        )
        results.append(result)
    note = f"brainage tune --trials {args.trials} --seed {args.seed} --set {' '.join(args.set or [])}"
    print(f"tuned settings: {write_tuned(args.out / 'tuned.yml', results, note=note)}")
    return 0


def _cmd_recipe(args: argparse.Namespace) -> int:
    from brainage_core.analysis.compare import recipe_table, recipe_values
    from brainage_core.tuning import check_recipe

    runs = check_recipe(args.loss, args.out, args.set or [], args.config, tuned=args.tuned, seeds=args.seeds)
    table = recipe_table(runs)
    print(table.round(2).to_string(index=False))
    print(recipe_values(table)["recipe_sentence"])
    print(f"runs: {args.out / f'recipe_{args.loss}.csv'}")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from brainage_core.sweep import sweep

    result = sweep(args.space, args.out, args.set or [], args.config, storage=args.storage, top=args.top)
    finished = result.trials[result.trials["state"].isin(["complete", "pruned"])]
    print(
        f"{len(finished)} finished trials ({(result.trials['state'] == 'pruned').sum()} pruned): {args.out / 'trials.csv'}"
    )
    for row, run_dir in zip(result.best.itertuples(), [*result.run_dirs, *[None] * len(result.best)]):
        where = f" -> {run_dir}" if run_dir else ""
        print(f"best {row.rank}: trial {row.trial}, validation MAE {row.val_mae:.2f} y: {row.overrides}{where}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import json

    from brainage_core.bench import run_benchmarks
    from brainage_core.config import load_config

    config = load_config(args.config, args.set or [])
    if args.scaling:
        import tempfile

        from brainage_core.bench_scaling import SCALING_SIZES, run_scaling_benchmark

        with tempfile.TemporaryDirectory(prefix="brainage_scaling_") as work_dir:
            scaling = run_scaling_benchmark(args.out, work_dir, config, args.set or [], args.sizes or SCALING_SIZES)
        print(json.dumps({key: scaling[key] for key in ("rss_growth", "streamed_over_in_memory_throughput")}, indent=2))
        print(f"wrote {args.out}")
        return 0
    if args.parallel:
        from brainage_core.bench_scaling import bench_parallel
        from brainage_core.fileio import write_json

        masks = args.masks or [None] * len(args.raw_t1 or [])
        if len(masks) != len(args.raw_t1 or []):
            raise ValueError(f"--masks gives {len(masks)} file(s) for {len(args.raw_t1 or [])} --raw-t1 scan(s)")
        parallel = bench_parallel(Path("."), list(zip(args.raw_t1 or [], masks)))
        write_json(args.out, parallel)
        print(json.dumps(parallel["rows"], indent=2))
        print(f"wrote {args.out}")
        return 0
    results = run_benchmarks(args.out, config=config, quick=args.quick, raw_scans=args.raw_t1 or ())
    summary = {
        "rnc_loss_speedup_at_largest_loop_batch": results["rnc_loss_speedup_at_largest_loop_batch"],
        "training_throughput": [
            {k: row[k] for k in ("loss", "pipeline_samples_per_s", "model_only_samples_per_s", "overhead")}
            for row in results["training_throughput"]
        ],
        "prepare_median_s_per_scan": (results["prepare"] or {}).get("median_s"),
        "peak_rss_mb": results["peak_rss_mb"],
    }
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from brainage_core.analysis.evaluation import evaluate_run
    from brainage_core.analysis.metrics import BIAS_CORRECTION, N_BOOT

    n_boot = N_BOOT if args.n_boot is None else args.n_boot
    report = evaluate_run(
        args.run_dir,
        controls_manifest=args.controls_manifest,
        method=args.method or BIAS_CORRECTION,
        n_boot=n_boot,
        seed=args.seed,
    )
    summary = {
        name: {k: report[name][k] for k in ("mae", "r2", "pearson_r") if k in report[name]}
        for name in ("raw", "corrected")
    }
    print(json.dumps(summary, indent=2))
    print(f"wrote {Path(args.run_dir) / 'metrics.json'}")
    return 0


def _cmd_clinical(args: argparse.Namespace) -> int:
    from brainage_core.analysis.clinical import clinical_report
    from brainage_core.analysis.metrics import BIAS_CORRECTION

    report = clinical_report(
        args.run_dir,
        out_dir=args.out_dir,
        method=args.method or BIAS_CORRECTION,
        controls_manifest=args.controls_manifest,
    )
    print(f"wrote {len(report['files'])} files to {report['out_dir']}")
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    import json

    from brainage_core.analysis.interpret import DEFAULT_LAYER, explain_run

    summary = explain_run(
        args.run_dir,
        args.out,
        manifest=args.manifest,
        split=None if args.split == "all" else args.split,
        max_subjects=args.max_subjects,
        device=args.device,
        layer=args.layer or DEFAULT_LAYER,
        batch_size=args.batch_size,
        background=args.background,
        progress=not args.quiet,
    )
    print(json.dumps(summary["scores"], indent=2, default=str))
    print(f"wrote maps and figures to {args.out}")
    return 0


def _cmd_book_run(args: argparse.Namespace) -> int:
    from brainage_core.book.runner import run_book

    outcomes = run_book(
        Path(args.root), args.profile, only=args.only, force=args.force, jobs=args.jobs, scheduler=args.scheduler
    )
    return 1 if any(outcome.status in ("failed", "skipped") for outcome in outcomes) else 0


def _cmd_book_build(args: argparse.Namespace) -> int:
    from brainage_core.book.runner import build_book

    index = build_book(Path(args.root), profile=args.profile, builder=args.builder)
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
    parser.add_argument("--n-subjects", type=int, help="number of subjects (default: cohort.n_subjects of the config)")
    parser.add_argument("--seed", type=int, help="random seed (default: cohort.seed)")
    parser.add_argument("--spacing", type=float, help="voxel size in mm, e.g. 2 or 3 (default: cohort.spacing)")
    parser.add_argument(
        "--config", type=Path, help="YAML file overriding the effect sizes (see data_manifests/synthetic_cohort.md)"
    )
    parser.add_argument("--workers", type=int, default=None, help="parallel processes (default: all cores)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_cmd_synth)


def _add_settings(parser: argparse.ArgumentParser, set_help: str) -> None:
    """The ``--config FILE`` and ``--set KEY=VALUE ...`` pair of every command that builds a run config."""
    parser.add_argument("--config", type=Path, help="YAML run config (default: built-in defaults)")
    parser.add_argument("--set", nargs="*", metavar="KEY=VALUE", help=set_help)


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train",
        help="train a brain-age model (regression or two-stage contrastive) into a run directory",
        description="Train one model. The config is YAML with sections data, model, loss, train, augment, probe "
        "(see brainage_core/config.py); --set overrides single fields, e.g. --set train.epochs=5 loss.name=mse. "
        "Writes config.yaml, metrics.csv, predictions.csv, model.pt, checkpoint.pt and log.txt.",
    )
    _add_settings(train, "override config fields, e.g. data.manifest=m.csv")
    train.add_argument("--run-dir", required=True, type=Path, help="output run directory")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue from the run directory's checkpoint.pt with the run's own config.yaml (a changed field is refused)",
    )
    train.add_argument(
        "--tuned",
        type=Path,
        help="tuned.yml of brainage tune: its settings for the loss, where --config/--set keep the default",
    )
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(handler=_cmd_train)

    tune = subparsers.add_parser(
        "tune",
        help="tune hyperparameters on validation data (an Optuna study per loss)",
        description="Tune each loss's learning rate, weight decay, batch size, augmentation strength and (contrastive) "
        "temperature and projection head on validation MAE: an Optuna study per loss, the same number of trials "
        "each, median pruning, stored in OUT/study.db (a rerun resumes). Test scans are never read. "
        "Writes OUT/trials_<loss>.csv and OUT/tuned.yml (use it with brainage train --tuned).",
    )
    tune.add_argument("--loss", nargs="+", required=True, help="losses to tune, e.g. rnc ntxent mse")
    tune.add_argument("--trials", type=int, default=8, help="trials per loss (default 8)")
    tune.add_argument("--out", type=Path, required=True, help="output folder of the studies")
    _add_settings(tune, "base settings of every trial, e.g. data.manifest=m.csv")
    tune.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler")
    tune.add_argument("--storage", help="SQLAlchemy URL of the study storage (default: sqlite in OUT)")
    tune.set_defaults(handler=_cmd_tune)

    recipe = subparsers.add_parser(
        "recipe",
        help="controlled checks of a loss's recipe on validation (batch size, projection head, temperature)",
        description="Start from the settings (--set, then --tuned) and change one choice at a time: batch size "
        "16/32/64, the loss on the encoder features or a 128-d projection head, temperature 1, 2 or the tuned value. "
        "Each setting is trained with every --seeds and scored by its best validation MAE; test scans are never "
        "read. Writes OUT/recipe_<loss>.csv (a rerun resumes).",
    )
    recipe.add_argument("--loss", default="rnc", help="the loss whose recipe to check (default rnc)")
    recipe.add_argument("--out", type=Path, required=True, help="output folder (e.g. beside tuned.yml)")
    recipe.add_argument("--tuned", type=Path, help="tuned.yml of brainage tune: the starting settings")
    recipe.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="run seeds per setting (default 0 1)")
    _add_settings(recipe, "base settings, e.g. data.manifest=m.csv")
    recipe.set_defaults(handler=_cmd_recipe)

    sweep = subparsers.add_parser(
        "sweep",
        help="search a YAML space on validation MAE (an Optuna study many processes can share)",
        description="Search the settings a YAML file declares (see book/sweep.yml): each trial trains with early "
        "stopping and is scored on validation MAE, with median pruning; test scans are never read. The study is "
        "stored in OUT/study.db or --storage (any SQLAlchemy URL): start the same command on several machines to "
        "share it; the study stops at the file's number of trials. Writes OUT/trials.csv, OUT/best.csv and a run "
        "directory OUT/best_<rank> for each of the --top best trials.",
    )
    sweep.add_argument("--space", type=Path, required=True, help="the search space YAML (e.g. book/sweep.yml)")
    sweep.add_argument("--out", type=Path, required=True, help="output folder")
    sweep.add_argument("--storage", help="SQLAlchemy URL of the shared study (default: sqlite in OUT)")
    sweep.add_argument("--top", type=int, default=1, help="best trials trained into run directories (default 1)")
    _add_settings(sweep, "base settings, e.g. data.manifest=m.csv")
    sweep.set_defaults(handler=_cmd_sweep)


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
        choices=("data", "header", "exists", "none"),
        default="data",
        help="how to check image files: every check the loaders run, voxel data included (default), "
        "the NIfTI headers only (faster), only that they exist, or skip",
    )
    validate.set_defaults(handler=_cmd_validate)

    _add_synth(subparsers)
    ixi = subparsers.add_parser(
        "import-ixi",
        help="import IXI T1 scans: IXI names and demographics, then 'brainage prepare', manifest with 5 folds",
        description="Import IXI-style T1 scans (IXI<ID>-<SITE>-<N>_T1.nii.gz) with their demographics (IXI.xls or "
        "participants.csv) through 'brainage prepare': reorient, skull strip (brain masks from --mask-dir, whose "
        "labels are also carried to MNI space; else deepbet), N4 bias correction, affine registration to the MNI "
        "ICBM152 2009a template (SimpleITK), QC figures, qc.csv and qc.html, and a manifest with age-stratified "
        "folds. Subjects without age, missing or corrupt files are reported, never guessed; reruns reuse finished "
        "subjects.",
    )
    ixi.add_argument("--t1-dir", required=True, type=Path, help="folder of IXI T1 NIfTI files")
    ixi.add_argument("--demographics", required=True, type=Path, help="IXI.xls or participants.csv (MRID, Age, Sex)")
    ixi.add_argument("--mask-dir", type=Path, help="brain labels/masks <MRID>_T1_DLMUSE.nii.gz (brain = label > 0)")
    ixi.add_argument("--out", required=True, type=Path, help="output folder")
    ixi.add_argument("--spacing", type=float, default=2.0, help="voxel size of the template grid in mm (default 2)")
    ixi.add_argument("--workers", type=int, default=None, help="parallel processes (default: all cores)")
    ixi.add_argument(
        "--include-failed-qc", action="store_true", help="keep subjects failing QC in the manifest (flagged)"
    )
    ixi.add_argument("--quiet", action="store_true", help="no progress bar")
    ixi.set_defaults(handler=_cmd_import_ixi)
    add_prepare(subparsers)
    add_predict(subparsers)
    add_release(subparsers)

    _add_train(subparsers)

    correction_help = "age-bias correction: cole (de Lange & Cole 2020) or beheshti (Beheshti et al. 2019); default: metrics.BIAS_CORRECTION"
    controls_help = "manifest whose CN subjects define the healthy set the age-bias correction is fitted on (default: CN of the val split)"
    evaluate = subparsers.add_parser(
        "evaluate",
        help="metrics of a run (raw and age-bias corrected, with bootstrap CIs) -> RUN_DIR/metrics.json",
        description="Compute MAE, RMSE, R2, r and the gap-age correlation on the healthy test subjects, raw and "
        "after an age-bias correction fitted on healthy validation subjects only, with bootstrap 95%% CIs and MAE "
        "per age band. Writes RUN_DIR/metrics.json and RUN_DIR/predictions_corrected.csv.",
    )
    evaluate.add_argument("run_dir", type=Path, help="a finished run directory")
    evaluate.add_argument("--controls-manifest", type=Path, help=controls_help)
    evaluate.add_argument("--method", choices=("cole", "beheshti"), help=correction_help)
    evaluate.add_argument("--n-boot", type=int, help="bootstrap resamples (default: metrics.N_BOOT)")
    evaluate.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    evaluate.set_defaults(handler=_cmd_evaluate)

    clinical = subparsers.add_parser(
        "clinical",
        help="brain-age gap by group and vs severity scores (statistics tables and figures)",
        description="Brain-age gap statistics: OLS gap ~ group + age + sex with effect sizes, partial Spearman "
        "correlations with MMSE/CDR (AD) and UPDRS-III/Hoehn & Yahr (PD) controlling age and sex, FDR-corrected; "
        "recovery of the true gap on the synthetic cohort. Writes CSV tables and PNG figures.",
    )
    clinical.add_argument("run_dir", type=Path, help="a finished run directory")
    clinical.add_argument("--out-dir", type=Path, help="output folder (default RUN_DIR/clinical)")
    clinical.add_argument("--method", choices=("cole", "beheshti"), help=correction_help)
    clinical.add_argument("--controls-manifest", type=Path, help=controls_help)
    clinical.set_defaults(handler=_cmd_clinical)

    explain = subparsers.add_parser(
        "explain",
        help="Grad-RAM saliency maps of a run: NIfTI maps, group averages, figures, scores",
        description="Compute signed and ReLU Grad-RAM maps of the predicted age for the scans of a run's split, "
        "write per-subject and group-average NIfTI maps and figures, and score them against ground-truth effect "
        "maps (synthetic cohort) and against a random-weights model (randomisation sanity check).",
    )
    explain.add_argument("run_dir", type=Path, help="a finished run directory")
    explain.add_argument("--out", required=True, type=Path, help="output folder")
    explain.add_argument("--manifest", type=Path, help="scans to explain (default: the run's manifest)")
    explain.add_argument("--split", default="test", help="split to explain, or 'all' (default test)")
    explain.add_argument("--max-subjects", type=int, help="explain at most this many scans")
    explain.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    explain.add_argument(
        "--layer",
        default=None,
        help="layer whose activations are weighted (default: brainage_core.analysis.interpret.DEFAULT_LAYER, encoder.layer3; encoder.layer4 is coarser)",
    )
    explain.add_argument("--batch-size", type=int, default=8, help="scans per batch (default 8)")
    explain.add_argument(
        "--background",
        choices=("mean", "mni152"),
        default="mean",
        help="figure background: mean scan or MNI152 template",
    )
    explain.add_argument("--quiet", action="store_true", help="no progress bar")
    explain.set_defaults(handler=_cmd_explain)

    bench = subparsers.add_parser(
        "bench",
        help="benchmark the RNC loss, training throughput, preparation of raw scans and memory; write JSON",
        description="Measure the RNC loss (fast vs loop formulation, B=32..1024), training samples/s of the "
        "configured model through the data pipeline vs a model-only step, the seconds per scan of each step of "
        "'brainage prepare' (with --raw-t1) and peak memory. Writes JSON.",
    )
    bench.add_argument(
        "--out", type=Path, default=Path("bench/results.json"), help="output JSON (default bench/results.json)"
    )
    bench.add_argument("--config", type=Path, help="YAML run config to measure (default: built-in defaults)")
    bench.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="override config fields, e.g. num_workers=2")
    bench.add_argument("--quick", action="store_true", help="small sizes, for smoke tests")
    bench.add_argument(
        "--raw-t1", nargs="+", type=Path, metavar="FILE", help="raw T1 scans (with skull) to time brainage prepare on"
    )
    bench.add_argument(
        "--scaling",
        action="store_true",
        help="instead: peak memory and training throughput at --sizes synthetic scans, streamed from the cache "
        "vs held in memory (minutes; a temporary folder holds the scans)",
    )
    bench.add_argument(
        "--sizes", nargs="+", type=int, metavar="N", help="cohort sizes for --scaling (default 300 1000 3000)"
    )
    bench.add_argument(
        "--parallel",
        action="store_true",
        help="instead: wall time of prepare (the --raw-t1 scans) and of the smoke book's runs with 1 and 2 "
        "local workers (run in the repository root; minutes)",
    )
    bench.add_argument(
        "--masks", nargs="+", type=Path, metavar="FILE", help="with --parallel: a brain mask per --raw-t1 scan"
    )
    bench.set_defaults(handler=_cmd_bench)

    book = subparsers.add_parser("book", help="run and render the book", description="Run and render the book.")
    book_commands = book.add_subparsers(dest="book_command", required=True, metavar="BOOK_COMMAND")
    run = book_commands.add_parser(
        "run",
        help="execute the book's notebooks with papermill (book/runs.yml), skipping unchanged runs",
        description="Execute the runs of a profile in book/runs.yml with papermill into _book_runs/PROFILE/. "
        "Runs whose notebook, parameters, inputs and package code are unchanged are not executed again. "
        "A failed run does not stop the others; every failure is reported at the end (exit 1).",
    )
    run.add_argument(
        "--profile", choices=("smoke", "default", "full"), default="default", help="which profile (default: default)"
    )
    run.add_argument("--only", nargs="+", metavar="NAME", help="run only these runs (and what they need)")
    run.add_argument("--force", action="store_true", help="execute even unchanged runs")
    run.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="independent runs executed at the same time (default 1); more than one: on a local Dask cluster",
    )
    run.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run on the Dask cluster of this scheduler (e.g. tcp://host:8786; dask-jobqueue for HPC) instead",
    )
    run.add_argument("--root", default=".", help="repository root (default: .)")
    run.set_defaults(handler=_cmd_book_run)

    build = book_commands.add_parser(
        "build",
        help="render the book with Jupyter Book (warnings are errors)",
        description="Render the book with Jupyter Book 1.x into _build/html from the executed notebooks of a "
        "profile (execute_notebooks: off); Sphinx warnings are errors.",
    )
    build.add_argument("--root", default=".", help="folder holding _config.yml and _toc.yml (default: .)")
    build.add_argument(
        "--profile",
        choices=("smoke", "default", "full"),
        default="default",
        help="whose executed notebooks (default: default)",
    )
    build.add_argument("--builder", default="html", help="Jupyter Book builder (default: html)")
    build.set_defaults(handler=_cmd_book_build)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``brainage`` command; return its exit code."""
    args = build_parser().parse_args(argv)
    from brainage_core.rundir import RunLockedError

    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print(f"\nbrainage {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, OSError, RunLockedError) as error:  # user input: files, manifests, configs
        print(f"brainage {args.command}: error: {error}", file=sys.stderr)
        return EXIT_INVALID_INPUT
    except FloatingPointError as error:  # training diverged
        print(f"brainage {args.command}: failed: {error}", file=sys.stderr)
        return EXIT_RUN_FAILED


if __name__ == "__main__":
    sys.exit(main())
