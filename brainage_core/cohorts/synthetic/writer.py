"""Writing a synthetic cohort: :func:`generate_cohort` and the files it leaves.

Files: ``images/sub-XXXX_T1w.nii.gz`` (int16, WM about 1000), ``masks/sub-XXXX_mask.nii.gz``,
``effects/sub-XXXX_effect.nii.gz`` (uint8 with slope 1/250: |change| relative to WM intensity),
``ground_truth.csv``, ``cohort.json`` (the request, group counts and the phantom's calibration
numbers, :func:`brainage_core.cohorts.calibration.calibration_table`), and last ``manifest.csv``. A rerun into the same folder
returns the existing cohort when its ``cohort.json`` and manifest match the request, regenerates
a folder that only holds files brainage wrote otherwise (deleting its manifest first), and
refuses a folder holding anything else, anywhere below it. Every file is recorded in
``.brainage-owned.json`` before it is written (:mod:`brainage_core.ownership`); only recorded
files are ever deleted. Subjects are synthesised in worker processes, each from its own seed, so
the files do not depend on the number of workers.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import json
import multiprocessing
import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from tqdm import tqdm

from brainage_core import __version__
from brainage_core.cohorts.calibration import (
    CALIBRATION_AGE_RANGE,
    calibration_subjects,
    calibration_table,
    mask_overlap,
    phantom_structure_volumes,
    volume_ridge_mae,
)
from brainage_core.cohorts.synthetic.config import SynthConfig
from brainage_core.cohorts.synthetic.images import synthesize_subject, tissue_volumes
from brainage_core.cohorts.synthetic.model import SynthModel, prepare_model
from brainage_core.cohorts.synthetic.subjects import SubjectParams, assign_cohort_splits, sample_subjects
from brainage_core.cohorts.synthetic.tissue_template import check_spacing
from brainage_core.cohorts.template import TEMPLATE_FILES
from brainage_core.fileio import atomic_path, write_json
from brainage_core.manifest import validate_manifest, write_manifest
from brainage_core.ownership import claim, refuse_foreign_files, remove_owned, remove_stale_temp_files

__all__ = ["EFFECT_SLOPE", "FORMAT_VERSION", "cohort_subjects", "generate_cohort", "write_age_derivatives"]

FORMAT_VERSION = 3  # 3: images affinely aligned, shape sized to IXI; 2: individual anatomy (older are regenerated)
EFFECT_SLOPE = 1.0 / 250.0  # effect map stored as uint8 * slope (relative to WM intensity)
GZIP_LEVEL = 6
_SUBJECT_DIRS = {
    "image": ("images", "_T1w.nii.gz"),
    "mask": ("masks", "_mask.nii.gz"),
    "effect_map": ("effects", "_effect.nii.gz"),
}
PREPARATION = "synthetic-phantom"  # the manifest's 'preparation': models trained on it refuse real scans
_TOP_FILES = ("manifest.csv", "ground_truth.csv", "cohort.json")


def _write_nifti(volume: np.ndarray, affine: np.ndarray, path: Path, slope: float = 1.0) -> None:
    """Write a NIfTI atomically with a deterministic gzip stream (no mtime, no file name)."""
    image = nib.Nifti1Image(volume, affine)
    image.set_qform(affine, code=4)  # 4: MNI space
    image.set_sform(affine, code=4)
    image.header.set_xyzt_units("mm")
    if slope != 1.0:
        image.header.set_slope_inter(slope, 0.0)
    payload = image.to_bytes()
    with (
        atomic_path(path, suffix=".nii.gz") as temp,
        open(temp, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL, mtime=0) as stream,
    ):
        stream.write(payload)


def _subject_path(out_dir: Path, subject_id: str, kind: str) -> Path:
    folder, suffix = _SUBJECT_DIRS[kind]
    return out_dir / folder / f"{subject_id}{suffix}"


_WORKER_MODEL: SynthModel | None = None


def _init_worker(model: SynthModel) -> None:
    global _WORKER_MODEL
    _WORKER_MODEL = model


def _make_subject(task: tuple[SubjectParams, str]) -> dict[str, float]:
    """Worker job: synthesise one subject, write its three NIfTI files, return its volumes."""
    subject, out_dir = task
    if _WORKER_MODEL is None:
        raise RuntimeError("worker model not initialised; call _init_worker(model) first")
    result = synthesize_subject(_WORKER_MODEL, subject)
    affine = _WORKER_MODEL.affine
    _write_nifti(result.image, affine, _subject_path(Path(out_dir), subject.subject_id, "image"))
    _write_nifti(result.mask, affine, _subject_path(Path(out_dir), subject.subject_id, "mask"))
    effect = np.clip(np.round(result.effect / EFFECT_SLOPE), 0, 255).astype(np.uint8)
    _write_nifti(effect, affine, _subject_path(Path(out_dir), subject.subject_id, "effect_map"), slope=EFFECT_SLOPE)
    return tissue_volumes(result.tissues, _WORKER_MODEL.spacing, subject.head_scale)


def _existing_cohort(out_dir: Path, request: dict[str, Any]) -> bool:
    """True when ``out_dir`` holds a complete cohort for ``request``; otherwise clear the way.

    A folder holding only files this project wrote (its ownership record lists them) but no
    matching, valid manifest loses its ``manifest.csv`` and ``cohort.json`` first (so no
    half-regenerated folder looks complete).

    Raises:
        FileExistsError: ``out_dir`` holds files that brainage did not write (anywhere below it);
            nothing is deleted.
    """
    if not out_dir.exists():
        return False
    if not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder; choose another out_dir")
    manifest, meta = out_dir / "manifest.csv", out_dir / "cohort.json"
    if manifest.is_file() and meta.is_file():
        try:
            recorded = json.loads(meta.read_text())
        except json.JSONDecodeError:
            recorded = None
        matches = recorded is not None and {key: recorded.get(key) for key in request} == request
        if matches and not validate_manifest(manifest, check_images="exists"):
            return True
    refuse_foreign_files(out_dir, "write a synthetic cohort")
    remove_owned(out_dir, [name for name in ("manifest.csv", "cohort.json") if (out_dir / name).exists()])
    return False


def _remove_stale(out_dir: Path, keep: set[Path]) -> None:
    """Delete this project's subject files and temporary files not in the cohort just written."""
    stale = []
    for folder, _ in _SUBJECT_DIRS.values():
        for path in (out_dir / folder).iterdir():
            if path not in keep:
                stale.append(path.relative_to(out_dir).as_posix())
    remove_owned(out_dir, stale)
    remove_stale_temp_files(out_dir)


def _synthesize_all(
    model: SynthModel, tasks: list[tuple[SubjectParams, str]], workers: int, progress: bool
) -> list[dict[str, float]]:
    """Run :func:`_make_subject` on every task (in order); stop early on the first error."""
    bar = tqdm(total=len(tasks), desc="synthetic cohort", unit="subject", disable=not progress)
    volumes = []
    try:
        if workers == 1:
            _init_worker(model)
            for task in tasks:
                volumes.append(_make_subject(task))
                bar.update()
            return volumes
        context = multiprocessing.get_context("spawn")  # safe beside threads (torch, tqdm)
        pool_size = min(workers, len(tasks))
        with concurrent.futures.ProcessPoolExecutor(
            pool_size, mp_context=context, initializer=_init_worker, initargs=(model,)
        ) as pool:
            futures = [pool.submit(_make_subject, task) for task in tasks]
            try:
                for future in futures:
                    volumes.append(future.result())
                    bar.update()
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        return volumes
    finally:
        bar.close()


def generate_cohort(
    out_dir: str | os.PathLike[str],
    n_subjects: int,
    seed: int,
    spacing: float = 2.0,
    config: SynthConfig | None = None,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Generate (or reuse) a synthetic cohort; return the path of its manifest.

    Args:
        out_dir: output folder (created; see the module docstring for what a rerun does).
        n_subjects: number of subjects (>= 1).
        seed: non-negative integer; same seed and config give byte-identical files.
        spacing: voxel size in mm (>= 1; 2 or 3 are typical).
        config: cohort parameters; default :class:`SynthConfig`. Validated before anything
            is written.
        progress: show a tqdm progress bar.
        workers: processes (default ``os.cpu_count()``); 1 runs in this process.

    Returns:
        ``out_dir / "manifest.csv"``.

    Raises:
        ValueError: invalid arguments or config values (nothing is written).
        FileExistsError: ``out_dir`` holds files that are not part of a synthetic cohort.
    """
    config = config or SynthConfig()
    config.validate()
    check_spacing(spacing)
    if isinstance(n_subjects, bool) or not isinstance(n_subjects, (int, np.integer)) or n_subjects < 1:
        raise ValueError(f"n_subjects must be a positive integer, got {n_subjects!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    workers = (os.cpu_count() or 1) if workers is None else workers
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    out_dir = Path(out_dir).resolve()  # one spelling of every path: _remove_stale compares them
    request = {
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "seed": int(seed),
        "n_subjects": int(n_subjects),
        "spacing": float(spacing),
        "config": json.loads(json.dumps(config.to_dict())),
    }
    manifest_path = out_dir / "manifest.csv"
    if _existing_cohort(out_dir, request):
        return manifest_path

    subjects = sample_subjects(int(n_subjects), int(seed), config)
    splits = assign_cohort_splits(subjects, config, int(seed))
    # Record every file before writing it: an interrupted run leaves only provably own files.
    claim(
        out_dir,
        [*_TOP_FILES, *(_subject_path(out_dir, s.subject_id, kind) for s in subjects for kind in _SUBJECT_DIRS)],
    )
    tasks = [(subject, str(out_dir)) for subject in subjects]
    volumes = _synthesize_all(prepare_model(spacing, config), tasks, workers, progress)
    rows: list[dict[str, Any]] = []
    truth: list[dict[str, Any]] = []
    for subject, split, volume in zip(subjects, splits, volumes):
        paths = {kind: str(_subject_path(out_dir, subject.subject_id, kind).resolve()) for kind in _SUBJECT_DIRS}
        scores = {"mmse": subject.mmse, "cdr": subject.cdr, "updrs3": subject.updrs3, "hoehn_yahr": subject.hoehn_yahr}
        common = {
            "subject_id": subject.subject_id,
            "image": paths["image"],
            "age": subject.age,
            "sex": subject.sex,
            "group": subject.group,
            "site": subject.site,
            "split": split,
            "preparation": PREPARATION,
        }
        truth_columns = {"true_gap": subject.true_gap, "effect_map": paths["effect_map"]}
        rows.append(common | {"mask": paths["mask"]} | scores | truth_columns)
        truth.append(
            {key: value for key, value in common.items() if key not in ("image", "preparation")}
            | scores
            | {"true_gap": subject.true_gap, "biological_age": subject.biological_age, "severity": subject.severity}
            | {"head_scale": subject.head_scale}
            | {f"{name}_ml": value for name, value in volume.items()}
        )
    _remove_stale(out_dir, {Path(row[kind]) for row in rows for kind in _SUBJECT_DIRS})
    with atomic_path(out_dir / "ground_truth.csv", suffix=".csv") as temp:
        pd.DataFrame(truth).to_csv(temp, index=False, float_format="%.6g")
    counts = pd.Series([subject.group for subject in subjects]).value_counts().to_dict()
    meta = {**request, "template": sorted(TEMPLATE_FILES.values()), "groups": counts}
    masks = {row["subject_id"]: row["mask"] for row in rows}
    write_json(out_dir / "cohort.json", meta | {"calibration": _calibration_summary(pd.DataFrame(truth), masks)})
    write_manifest(pd.DataFrame(rows), manifest_path)  # last: its presence marks a complete cohort
    return manifest_path


def _calibration_summary(truth: pd.DataFrame, masks: dict[str, str]) -> dict[str, Any] | None:
    """The phantom's realism numbers for ``cohort.json`` (:mod:`brainage_core.cohorts.calibration`).

    Healthy subjects aged within ``CALIBRATION_AGE_RANGE``: per structure, the R2 of volume / total
    brain on age and its CV (%) within 15-year bands; the 5-fold MAE of ridge regression on the
    true tissue volumes; and the mean and SD of their brain masks' Dice with the majority mask
    (``mask_overlap``). ``None`` for a cohort with too few controls.
    """
    truth = truth.set_index("subject_id")
    controls = truth[calibration_subjects(truth["age"], truth["group"])]
    if len(controls) < 4:
        return None
    table = calibration_table(phantom_structure_volumes(controls), controls["age"])
    volumes = controls[[column for column in controls.columns if column.endswith("_ml")]]
    rounded = table.drop(columns="n").round(4)
    summary: dict[str, Any] = {
        "age_range": list(CALIBRATION_AGE_RANGE),
        "n_controls": len(controls),
        "structures": {
            name: {k: (None if pd.isna(v) else float(v)) for k, v in row.items()} for name, row in rounded.iterrows()
        },
    }
    if len(controls) >= 10:
        summary["ridge_true_volumes_mae"] = round(volume_ridge_mae(volumes, controls["age"]), 3)
    overlap = mask_overlap([masks[subject] for subject in controls.index])
    summary["mask_overlap"] = {"mean": round(float(overlap.mean()), 4), "sd": round(float(overlap.std(ddof=1)), 4)}
    return summary


def cohort_subjects(cohort_dir: str | os.PathLike[str]) -> tuple[SynthModel, dict[str, SubjectParams]]:
    """Rebuild a written cohort's generator and subjects from its ``cohort.json``.

    Subjects are a deterministic function of (number, seed, config), so they are drawn again;
    their ages are checked against ``ground_truth.csv``.

    Raises:
        ValueError: the folder is not a synthetic cohort of this format, or the subjects drawn
            again differ from the ones written (another package version made it): regenerate it.
    """
    cohort_dir = Path(cohort_dir)
    meta_path = cohort_dir / "cohort.json"
    if not meta_path.is_file():
        raise ValueError(f"{cohort_dir}: no cohort.json; not a synthetic cohort made by brainage synth")
    meta = json.loads(meta_path.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{meta_path}: format_version {meta.get('format_version')}, expected {FORMAT_VERSION}; regenerate the cohort"
        )
    config = SynthConfig.from_dict(meta["config"], source=str(meta_path))
    subjects = sample_subjects(int(meta["n_subjects"]), int(meta["seed"]), config)
    written = pd.read_csv(cohort_dir / "ground_truth.csv").set_index("subject_id")
    drawn = pd.Series({s.subject_id: s.biological_age for s in subjects})
    if not np.allclose(written["biological_age"].reindex(drawn.index).to_numpy(), drawn.to_numpy(), atol=0.01):
        raise ValueError(f"{cohort_dir}: the subjects drawn again differ from ground_truth.csv; regenerate the cohort")
    return prepare_model(float(meta["spacing"]), config), {s.subject_id: s for s in subjects}


def write_age_derivatives(
    cohort_dir: str | os.PathLike[str], subject_ids: list[str], out_dir: str | os.PathLike[str], step: float = 0.5
) -> dict[str, Path]:
    """Write each subject's :func:`~brainage_core.cohorts.synthetic.images.age_derivative` as NIfTI.

    Files are ``out_dir/<subject_id>_dage.nii.gz`` (float32, change of the noise-free T1 per
    year relative to WM intensity, on the cohort's grid and affine); existing ones are reused.

    Returns:
        ``{subject_id: path}``.
    """
    from brainage_core.cohorts.synthetic.images import age_derivative

    out_dir = Path(out_dir)
    paths = {subject_id: out_dir / f"{subject_id}_dage.nii.gz" for subject_id in subject_ids}
    missing = [subject_id for subject_id, path in paths.items() if not path.is_file()]
    if missing:
        model, subjects = cohort_subjects(cohort_dir)
        unknown = [subject_id for subject_id in missing if subject_id not in subjects]
        if unknown:
            raise ValueError(f"{cohort_dir}: no subjects {unknown[:5]} in this cohort")
        claim(out_dir, [paths[subject_id] for subject_id in missing])
        for subject_id in missing:
            _write_nifti(age_derivative(model, subjects[subject_id], step), model.affine, paths[subject_id])
    return paths
