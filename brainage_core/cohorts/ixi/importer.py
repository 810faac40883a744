"""The IXI import driver: find the scans, match demographics, process or reuse each scan, write the manifest.

:func:`import_ixi` pairs every ``IXI<ID>-<SITE>-<N>_T1.nii.gz`` in a folder with its row of
the demographics table (:mod:`.demographics`) and its optional DLMUSE parcellation, runs a
:class:`~brainage_core.cohorts.ixi.jobs.ScanJob` per usable scan in worker processes (or
takes its cached result), and writes ``qc.csv``, ``import_report.json`` and, last, the
manifest with age-stratified folds (:func:`assign_folds`). Every scan left out is named in the
:class:`ImportReport` with the reason and what to do.
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
from brainage_core.cohorts.ixi.jobs import ScanJob, cached_qc, init_worker, run_job
from brainage_core.cohorts.ixi.qc import passes_qc, write_qc_table
from brainage_core.cohorts.ixi.registration import SEED
from brainage_core.fileio import sha256_file, write_json
from brainage_core.manifest import write_manifest
from brainage_core.scan_jobs import CACHED, run_scan_jobs

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


def _plan(
    scans: dict[str, IxiScan],
    table: Demographics,
    mask_dir: Path | None,
    out_dir: Path,
    spacing: float,
    report: ImportReport,
) -> list[ScanJob]:
    """A job per scan with usable demographics (and mask); every other scan goes to the report."""
    source = Path(table.source).name
    jobs = []
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
            inputs = {"t1": sha256_file(scan.path), "mask": "" if mask_path is None else sha256_file(mask_path)}
            jobs.append(ScanJob(scan=scan, mask_path=mask_path, out_dir=out_dir, spacing=spacing, inputs=inputs))
    return jobs


def _run(
    jobs: list[ScanJob], workers: int | None, progress: bool, report: ImportReport
) -> dict[str, dict[str, object]]:
    """QC records of the jobs: from the cache, else by processing in ``workers`` processes."""
    outcomes = run_scan_jobs(
        jobs,
        key=lambda job: job.scan.subject_id,
        cached=cached_qc,
        run=run_job,
        initializer=init_worker,
        workers=workers,
        progress=progress,
        desc="IXI import",
    )
    records: dict[str, dict[str, object]] = {}
    for subject_id, status, payload in outcomes:
        if isinstance(payload, dict):  # cached, or status "ok": the QC record
            records[subject_id] = payload
        else:
            (report.corrupt if status == "corrupt" else report.failed).append(str(payload))
    report.n_cached = sum(status == CACHED for _, status, _ in outcomes)
    report.n_processed = len(records) - report.n_cached
    return records


def _manifest(
    jobs: list[ScanJob],
    records: dict[str, dict[str, object]],
    table: Demographics,
    include_failed_qc: bool,
    report: ImportReport,
) -> pd.DataFrame:
    """Manifest rows of the processed scans (QC failures reported, and dropped unless kept), with folds."""
    rows = []
    for job in jobs:
        qc, outputs = records.get(job.scan.subject_id), job.outputs()
        if qc is None:
            continue  # corrupt or failed: already reported
        if not passes_qc(qc):
            report.qc_failed.append(
                f"{job.scan.mrid}: failed QC (correlation {qc['correlation']}, Dice {qc['dice']}, "
                f"brain {qc['brain_volume_ml']} ml); {'kept' if include_failed_qc else 'left out'} - "
                f"look at {outputs['qc_figure']}"
            )
            if not include_failed_qc:
                continue
        row = {
            "subject_id": job.scan.subject_id,
            "image": str(outputs["image"].resolve()),
            "age": table.table.at[job.scan.subject_id, "age"],
            "sex": table.table.at[job.scan.subject_id, "sex"],
            "group": "CN",  # IXI recruited healthy volunteers
            "site": job.scan.site,
            "mask": str(outputs["mask"].resolve()),
        }
        if "labels" in outputs:  # relative to the manifest, like the paths write_manifest converts
            row["labels"] = outputs["labels"].relative_to(job.out_dir).as_posix()
        rows.append(row)
    columns = ["subject_id", "image", "age", "sex", "group", "site", "mask"]
    manifest = pd.DataFrame(rows, columns=columns + (["labels"] if jobs and jobs[0].mask_path else []))
    manifest["fold"] = assign_folds(manifest["age"], manifest["subject_id"])
    return manifest


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

    Brain masks come from ``mask_dir/<MRID>_T1_DLMUSE.nii.gz`` (``seg > 0``), whose labels are
    also carried to the template grid (nearest neighbour). Without ``mask_dir`` a cruder
    fallback is used: the template brain mask registered back into native space and dilated
    (see :func:`.fallback_brain_mask`); expect some non-brain tissue at the edges.

    QC (``qc.csv``, one row per processed scan): ``correlation`` with the template T1 and
    ``dice`` with the template brain mask (:func:`.qc_metrics`), ``mattes_mi`` (final
    registration metric, negative mutual information), ``brain_volume_ml`` (native mask),
    ``affine_scale`` (cube root of the affine's determinant: scan size relative to the
    template) and ``qc_pass``. A scan passes when correlation >= :data:`.QC_MIN_CORRELATION`,
    Dice >= :data:`.QC_MIN_DICE` and the brain volume lies in :data:`.QC_BRAIN_VOLUME_ML`
    (:func:`.passes_qc`; the thresholds are applied on every run, to cached metrics too).
    Failing scans are left out of the manifest unless ``include_failed_qc``.

    Scans are processed in ``workers`` processes with one SimpleITK thread each (so outputs
    do not depend on ``workers``).
    A rerun skips a scan whose outputs exist and whose sidecar records the same input
    hashes and parameters.

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
        raise FileNotFoundError(f"mask folder not found: {mask_dir} (leave it out to use the template fallback)")
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

    jobs = _plan(scans, table, mask_dir, out_dir, float(spacing), report)
    records = _run(jobs, workers, progress, report)
    write_qc_table(records, out_dir / "qc.csv")
    manifest = _manifest(jobs, records, table, include_failed_qc, report)
    report.n_imported = len(manifest)
    report.seconds = round(time.perf_counter() - start, 1)
    write_json(out_dir / "import_report.json", asdict(report))
    write_manifest(manifest, out_dir / "manifest.csv")
    return report
