"""The IXI import: IXI file names and demographics in front of ``brainage prepare``.

:func:`import_ixi` pairs every ``IXI<ID>-<SITE>-<N>_T1.nii.gz`` in a folder with its row of
the demographics table (:mod:`.demographics`) and its optional DLMUSE parcellation, and hands
the usable scans to :func:`brainage_core.prepare.prepare_scans`, the one preparation of raw
scans (a given DLMUSE parcellation is the brain mask, ``seg > 0``, and its labels are carried
to the template grid; without one deepbet strips the skull). It adds age-stratified folds
(:func:`assign_folds`) to the manifest and writes ``import_report.json``. Every scan left out
is named in the :class:`ImportReport` with the reason and what to do.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from brainage_core.cohorts.ixi.demographics import Demographics, IxiScan, parse_ixi_name, read_demographics
from brainage_core.cohorts.ixi.registration import SEED
from brainage_core.fileio import write_json
from brainage_core.ownership import claim

__all__ = ["N_FOLDS", "ImportReport", "assign_folds", "import_ixi"]

N_FOLDS = 5


def assign_folds(
    ages: Iterable[float], subject_ids: Iterable[str], n_folds: int = N_FOLDS, seed: int = SEED
) -> np.ndarray:
    """Age-stratified fold per subject, deterministic.

    Subjects are sorted by age (ties by id) and cut into consecutive bins of ``n_folds``;
    within each bin the fold labels ``0..n_folds-1`` are shuffled with a seeded generator.
    Every fold gets a near-equal share of every age range; fold sizes differ by at most one.

    Returns:
        ``[n_subjects]`` integer folds, in the input order.
    """
    ages, subject_ids = np.asarray(list(ages), dtype=float), np.asarray(list(subject_ids), dtype=str)
    order = np.lexsort((subject_ids, ages))
    rng = np.random.default_rng(seed)
    folds = np.empty(len(ages), dtype=int)
    for start in range(0, len(order), n_folds):
        block = order[start : start + n_folds]
        folds[block] = rng.permutation(n_folds)[: len(block)]
    return folds


@dataclass
class ImportReport:
    """What :func:`import_ixi` did and every scan it left out, with the reason.

    Problem lists name scans on disk, except ``not_on_disk`` (table rows without an image)
    and ``unrecognised_files``. Each entry says what is wrong and what to do.
    """

    out_dir: str
    manifest: str
    n_images: int = 0
    n_processed: int = 0
    n_cached: int = 0
    n_imported: int = 0
    seconds: float = 0.0
    include_failed_qc: bool = False
    unrecognised_files: list[str] = field(default_factory=list)
    duplicate_subjects: list[str] = field(default_factory=list)
    not_on_disk: list[str] = field(default_factory=list)
    no_demographics: list[str] = field(default_factory=list)
    missing_age: list[str] = field(default_factory=list)
    invalid_demographics: list[str] = field(default_factory=list)
    conflicting: list[str] = field(default_factory=list)
    missing_mask: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    qc_failed: list[str] = field(default_factory=list)

    def problems(self) -> dict[str, list[str]]:
        """The non-empty problem lists by name."""
        return {name: value for name, value in asdict(self).items() if isinstance(value, list) and value}

    def summary(self) -> str:
        """A few lines for the terminal."""
        lines = [
            f"{self.n_images} T1 file(s); {self.n_processed} processed, {self.n_cached} from cache, "
            f"{self.n_imported} in {self.manifest} ({self.seconds:.0f} s)"
        ]
        for name, entries in self.problems().items():
            shown = "; ".join(entries[:5]) + (f"; ... (+{len(entries) - 5})" if len(entries) > 5 else "")
            lines.append(f"  {name} ({len(entries)}): {shown}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- the import


def _scan_folder(t1_dir: Path, report: ImportReport) -> tuple[dict[str, IxiScan], set[str]]:
    """IXI T1 files in ``t1_dir`` by subject, and the subjects with several files (left out).

    Odd file names and subjects with several T1 files go to the report.
    """
    by_subject: dict[str, list[IxiScan]] = {}
    for path in sorted(t1_dir.iterdir()):
        if not path.name.endswith((".nii", ".nii.gz")):
            continue
        try:
            scan = parse_ixi_name(path)
        except ValueError as error:
            report.unrecognised_files.append(f"{error}; rename it or move it out of {t1_dir}")
            continue
        by_subject.setdefault(scan.subject_id, []).append(scan)
    report.n_images = sum(len(scans) for scans in by_subject.values())
    repeated = {subject_id for subject_id, found in by_subject.items() if len(found) > 1}
    for subject_id in sorted(repeated):
        names = ", ".join(scan.path.name for scan in by_subject[subject_id])
        report.duplicate_subjects.append(f"{subject_id}: several T1 files ({names}); left out - keep one")
    return {subject_id: found[0] for subject_id, found in by_subject.items() if subject_id not in repeated}, repeated


def _rows(
    scans: dict[str, IxiScan], table: Demographics, mask_dir: Path | None, report: ImportReport
) -> list[dict[str, object]]:
    """Rows for :func:`~brainage_core.prepare.prepare_scans`: scans with usable demographics (and mask).

    Every other scan goes to the report with the reason.
    """
    source = Path(table.source).name
    rows: list[dict[str, object]] = []
    for subject_id, scan in sorted(scans.items()):
        mask_path = None if mask_dir is None else mask_dir / f"{scan.mrid}_T1_DLMUSE.nii.gz"
        if subject_id in table.conflicting:
            report.conflicting.append(table.conflicting[subject_id])
        elif subject_id in table.invalid:
            report.invalid_demographics.append(table.invalid[subject_id])
        elif subject_id not in table.table.index:
            report.no_demographics.append(f"{scan.mrid}: no row in {source}; left out - add its age and sex")
        elif math.isnan(table.table.at[subject_id, "age"]):
            report.missing_age.append(f"{scan.mrid}: no age in {source}; left out - add its age")
        elif mask_path is not None and not mask_path.is_file():
            report.missing_mask.append(f"{scan.mrid}: no mask {mask_path}; left out - add it or drop the mask folder")
        else:
            row: dict[str, object] = {
                "subject_id": subject_id,
                "image": str(scan.path.resolve()),
                "age": table.table.at[subject_id, "age"],
                "sex": table.table.at[subject_id, "sex"],
                "group": "CN",  # IXI recruited healthy volunteers
                "site": scan.site,
            }
            if mask_path is not None:  # the parcellation is the brain mask (labels > 0) and its labels
                row.update(mask=str(mask_path.resolve()), labels=str(mask_path.resolve()))
            rows.append(row)
    return rows


def _with_folds(manifest: pd.DataFrame) -> pd.DataFrame:
    """The prepared manifest with its age-stratified ``fold`` column."""
    return manifest.assign(fold=assign_folds(manifest["age"], manifest["subject_id"]))


def import_ixi(
    t1_dir: str | os.PathLike[str],
    demographics: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    mask_dir: str | os.PathLike[str] | None = None,
    spacing: float = 2.0,
    workers: int | None = None,
    progress: bool = True,
    include_failed_qc: bool = False,
    max_subjects: int | None = None,
) -> ImportReport:
    """Preprocess the IXI T1 scans into MNI space and write a validated manifest.

    ``max_subjects`` keeps only the first subjects (by IXI ID) of the folder, for quick runs
    such as the book's smoke tests; ``None`` imports all of them.

    The scans are prepared by :func:`~brainage_core.prepare.prepare_scans` (the same steps,
    QC, cache and outputs as ``brainage prepare``). Brain masks come from
    ``mask_dir/<MRID>_T1_DLMUSE.nii.gz`` (``seg > 0``), whose labels are also carried to the
    template grid (nearest neighbour); without ``mask_dir``, deepbet strips the skull.

    QC (``qc.csv``, one row per scan): ``correlation`` with the template T1 and ``dice`` with
    the template brain mask (:func:`.qc_metrics`), ``mattes_mi`` (final registration metric,
    negative mutual information), ``brain_volume_ml`` (native mask), ``affine_scale`` (cube
    root of the affine's determinant: scan size relative to the template), ``reference_dice``
    (the brain mask against ``labels > 0``: 1 when the labels are the mask) and ``status``. A scan
    passes when correlation >= :data:`.QC_MIN_CORRELATION`, Dice >= :data:`.QC_MIN_DICE` and the
    brain volume lies in :data:`.QC_BRAIN_VOLUME_ML` (:func:`.passes_qc`; the thresholds are
    applied on every run, to cached metrics too). Failing scans are left out of the manifest
    unless ``include_failed_qc``.

    Scans are processed in ``workers`` processes with one SimpleITK thread each (so outputs
    do not depend on ``workers``). A rerun skips a scan whose outputs exist and whose sidecar
    records the same input hashes and parameters.

    Args:
        t1_dir: folder of ``IXI<ID>-<SITE>-<N>_T1.nii.gz`` files.
        demographics: ``IXI.xls`` or ``participants.csv`` (``MRID,Age,Sex``).
        out_dir: output folder (created).
        mask_dir: folder of DLMUSE parcellations on the T1 grids, or ``None``.
        spacing: voxel size of the template grid in mm.
        workers: processes; ``None`` uses every CPU core.
        progress: show a tqdm bar.
        include_failed_qc: keep scans that fail QC in the manifest.

    Returns:
        The report, also written to ``out_dir/import_report.json``.
    """
    start = time.perf_counter()
    t1_dir, out_dir = Path(t1_dir), Path(out_dir)
    mask_dir = None if mask_dir is None else Path(mask_dir)
    if not t1_dir.is_dir():
        raise FileNotFoundError(f"T1 folder not found: {t1_dir}")
    if mask_dir is not None and not mask_dir.is_dir():
        raise FileNotFoundError(f"mask folder not found: {mask_dir} (leave it out to skull strip with deepbet)")
    table = read_demographics(demographics)
    report = ImportReport(
        out_dir=str(out_dir), manifest=str(out_dir / "manifest.csv"), include_failed_qc=include_failed_qc
    )
    scans, repeated = _scan_folder(t1_dir, report)
    in_table = set(table.table.index) | set(table.conflicting) | set(table.invalid)
    report.not_on_disk = sorted(in_table - set(scans) - repeated)
    if max_subjects is not None:
        if max_subjects < 1:
            raise ValueError(f"max_subjects must be >= 1 or None, got {max_subjects}")
        scans = dict(sorted(scans.items())[:max_subjects])

    from brainage_core.prepare import prepare_scans  # deepbet and SimpleITK only when scans are imported

    rows = _rows(scans, table, mask_dir, report)
    prepared = prepare_scans(
        rows,
        out_dir,
        workers=workers,
        progress=progress,
        spacing=spacing,
        include_failed_qc=include_failed_qc,
        finish_manifest=_with_folds,
    )
    report.n_processed, report.n_cached, report.n_imported = (
        prepared.n_processed,
        prepared.n_cached,
        prepared.n_prepared,
    )
    report.corrupt, report.failed, report.qc_failed = prepared.corrupt, prepared.failed, prepared.qc_failed
    report.seconds = round(time.perf_counter() - start, 1)
    claim(out_dir, ["import_report.json"])
    write_json(out_dir / "import_report.json", asdict(report))
    return report
