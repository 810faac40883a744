"""``prepare_scans``: raw T1 scans (a manifest or a BIDS dataset) to skull-stripped MNI images and a manifest.

:func:`prepare_scans` reads the scans to prepare (:func:`manifest_rows` for a manifest,
:func:`~brainage_core.prepare.bids.read_bids` for a BIDS dataset), plans a
:class:`~brainage_core.prepare.jobs.PrepareJob` per scan, takes cached results or runs the
jobs in worker processes, and writes::

    out_dir/images/<scan_id>_T1w_mni.nii.gz     (manifest input; BIDS input: sub-*/[ses-*/]anat/
    out_dir/masks/<scan_id>_mask_mni.nii.gz      *_space-MNI152NLin2009aSym_desc-brain_{T1w,mask}.nii.gz)
    out_dir/qc/<scan_id>.png                    QC figure
    out_dir/cache/<scan_id>.json                input hashes + parameters + QC (the cache)
    out_dir/qc.csv, out_dir/qc.html             QC of every scan, worst first in the HTML
    out_dir/prepare_report.json                 counts and every problem
    out_dir/manifest.csv                        written last; `brainage validate` accepts it

Every row or scan that cannot be prepared is named in the :class:`PrepareReport` with its
file and reason; the other scans go on.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from brainage_core.fileio import atomic_path, sha256_file, write_json
from brainage_core.manifest import (
    ManifestError,
    manifest_folder,
    read_manifest_table,
    validate_frame,
    write_manifest,
)
from brainage_core.ownership import claim, owned_files, remove_owned
from brainage_core.prepare.bids import BidsInput, derivative_paths, write_dataset_description
from brainage_core.prepare.jobs import PREPARATION, STEPS, PrepareJob, cached_qc, init_worker, run_job
from brainage_core.prepare.report import ScanResult, qc_status, write_qc_html
from brainage_core.scan_jobs import CACHED, run_scan_jobs

__all__ = ["PrepareReport", "manifest_rows", "prepare_scans"]

QC_TABLE_COLUMNS = (
    "scan_id", "subject_id", "image", "mask_source", "status", "correlation", "dice",
    "mattes_mi", "brain_volume_ml", "affine_scale", "reference_dice", "message",
    *(f"seconds_{step}" for step in STEPS),
)  # fmt: skip
DROPPED_COLUMNS = ("effect_map", "bids_prefix")  # a native-grid file, or internal to the BIDS reader


@dataclass
class PrepareReport:
    """What :func:`prepare_scans` did, and every row or scan it left out with the reason."""

    source: str
    out_dir: str
    manifest: str = ""
    n_scans: int = 0
    n_processed: int = 0
    n_cached: int = 0
    n_prepared: int = 0
    seconds: float = 0.0
    input_problems: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    qc_failed: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        """Every problem, input problems first."""
        return self.input_problems + self.corrupt + self.failed + self.qc_failed

    def summary(self) -> str:
        """One line for the terminal."""
        where = self.manifest or "no manifest written"
        return (
            f"{self.n_scans} scan(s): {self.n_processed} prepared, {self.n_cached} from cache, "
            f"{self.n_prepared} in {where}, {len(self.problems())} problem(s) ({self.seconds:.0f} s)"
        )


def _safe(name: str) -> str:
    """A file-name-safe version of an id."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "scan"


def manifest_rows(path: str | os.PathLike[str]) -> tuple[list[dict[str, object]], list[str]]:
    """Rows of a manifest of raw scans, and the rows left out (each problem names its row and column).

    Files are checked for existence only; unreadable scans are found when they are prepared.
    Each row gets a ``scan_id`` (subject, session, and the row number when still ambiguous)
    and absolute ``image`` / ``mask`` paths.

    Raises:
        FileNotFoundError: the manifest does not exist.
        ManifestError: the manifest as a whole is unusable (not a CSV, required columns missing).
    """
    path = Path(path)
    frame = read_manifest_table(path)
    problems = validate_frame(frame, manifest_folder(path), check_images="exists")
    general = [problem for problem in problems if problem.row is None]
    if general:
        raise ManifestError(path, general)
    bad_rows = {problem.row for problem in problems}
    messages = [f"{path} {problem}" for problem in problems]
    base = manifest_folder(path)
    rows = []
    for number, record in enumerate(frame.to_dict("records"), start=1):
        if number in bad_rows:
            continue
        row: dict[str, object] = {key: value for key, value in record.items() if value != ""}
        for column in ("image", "mask", "labels"):
            if column in row:
                row[column] = str((base / str(row[column])).resolve())
        row["_row"] = number
        rows.append(row)
    return _with_scan_ids(rows), messages


def _with_scan_ids(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """Give every row without one a ``scan_id``: subject, session, and the row number when still ambiguous.

    The row number is ``_row`` (a manifest's row, removed here) or the position in ``rows``.
    """
    for row in rows:
        if not row.get("scan_id"):
            session = f"_ses-{_safe(str(row['session']))}" if row.get("session") else ""
            row["scan_id"] = _safe(str(row["subject_id"])) + session
    repeated = Counter(row["scan_id"] for row in rows)
    for position, row in enumerate(rows, start=1):
        number = row.pop("_row", position)
        if repeated[row["scan_id"]] > 1:
            row["scan_id"] = f"{row['scan_id']}_row{number}"
    return rows


def _plan(rows: list[dict[str, object]], out_dir: Path, spacing: float) -> list[PrepareJob]:
    """One job per row, with BIDS-derivatives names when the row has a ``bids_prefix``."""
    jobs = []
    for row in rows:
        scan_id = str(row["scan_id"])
        if "bids_prefix" in row:
            outputs = derivative_paths(out_dir, str(row["bids_prefix"]))
        else:
            outputs = {
                "image": out_dir / "images" / f"{scan_id}_T1w_mni.nii.gz",
                "mask": out_dir / "masks" / f"{scan_id}_mask_mni.nii.gz",
            }
        outputs["qc_figure"] = out_dir / "qc" / f"{scan_id}.png"
        image = Path(str(row["image"]))
        mask, labels = (Path(str(row[c])) if row.get(c) else None for c in ("mask", "labels"))
        if labels is not None:
            outputs["labels"] = out_dir / "labels" / f"{scan_id}_labels_mni.nii.gz"
        inputs = {
            name: sha256_file(path) if path is not None and path.is_file() else ""
            for name, path in (("t1", image), ("mask", mask), ("labels", labels))
        }
        jobs.append(
            PrepareJob(
                scan_id=scan_id,
                subject_id=str(row["subject_id"]),
                image=image,
                mask=mask,
                labels=labels,
                outputs=outputs,
                sidecar=out_dir / "cache" / f"{scan_id}.json",
                spacing=spacing,
                inputs=inputs,
            )
        )
    return jobs


def _claim_outputs(out_dir: Path, paths: Sequence[Path]) -> None:
    """Record the files about to be written; refuse to overwrite a file brainage did not write."""
    owned = owned_files(out_dir) if out_dir.is_dir() else set()
    foreign = [
        p for p in paths if p.exists() and Path(os.path.relpath(p.resolve(), out_dir.resolve())).as_posix() not in owned
    ]
    if foreign:
        shown = ", ".join(str(p) for p in foreign[:5]) + (f" (+{len(foreign) - 5})" if len(foreign) > 5 else "")
        raise FileExistsError(
            f"{out_dir}: would overwrite files brainage did not write ({shown}); choose another --out"
        )
    claim(out_dir, paths)


def _run(
    jobs: list[PrepareJob], workers: int | None, scheduler: str | None, progress: bool, report: PrepareReport
) -> dict[str, tuple[str, object]]:
    """Results by scan id: ``(status, QC record or problem message)``; status as :func:`.run_job`, or cached."""
    outcomes = run_scan_jobs(
        jobs,
        key=lambda job: job.scan_id,
        cached=cached_qc,
        run=run_job,
        initializer=init_worker,
        workers=workers,
        progress=progress,
        desc="prepare",
        mp_context=multiprocessing.get_context("spawn"),  # no fork of a process that may hold torch threads
        scheduler=scheduler,
    )
    report.n_cached = sum(status == CACHED for _, status, _ in outcomes)
    report.n_processed = sum(status != CACHED and isinstance(payload, dict) for _, status, payload in outcomes)
    return {scan_id: (status, payload) for scan_id, status, payload in outcomes}


def _outcomes(
    jobs: list[PrepareJob], results: dict[str, tuple[str, object]], report: PrepareReport
) -> list[ScanResult]:
    """The report entry of every scan; unreadable inputs, failures and QC failures go to ``report``."""
    outcomes = []
    for job in jobs:
        status, payload = results[job.scan_id]
        if not isinstance(payload, dict):
            (report.corrupt if status == "corrupt" else report.failed).append(str(payload))
            outcomes.append(ScanResult(job.scan_id, str(job.image), "error", message=str(payload)))
            continue
        qc = {**payload, "mask_source": job.mask_source}
        status = qc_status(qc)
        if status == "qc_failed":
            report.qc_failed.append(
                f"{job.image}: failed QC (Dice {qc['dice']}, correlation {qc['correlation']}, brain "
                f"{qc['brain_volume_ml']} ml); look at {job.outputs['qc_figure']} in qc.html"
            )
        outcomes.append(ScanResult(job.scan_id, str(job.image), status, qc=qc, figure=job.outputs["qc_figure"]))
    return outcomes


def _write_tables(
    rows: list[dict[str, object]], jobs: list[PrepareJob], outcomes: list[ScanResult], out_dir: Path, keep_failed: bool
) -> pd.DataFrame:
    """Write ``qc.csv``; return the output manifest (prepared scans that pass QC, or all with ``keep_failed``)."""
    qc_rows, manifest = [], []
    for row, job, outcome in zip(rows, jobs, outcomes):
        qc = dict(outcome.qc or {})
        qc_rows.append(
            {**qc, "scan_id": job.scan_id, "subject_id": job.subject_id, "image": str(job.image),
             "mask_source": job.mask_source, "status": outcome.status, "message": outcome.message}
        )  # fmt: skip
        if outcome.status == "error" or (outcome.status == "qc_failed" and not keep_failed):
            continue
        kept = {key: value for key, value in row.items() if key not in DROPPED_COLUMNS}
        kept.update(
            image=str(job.outputs["image"]),
            mask=str(job.outputs["mask"]),
            mask_source=job.mask_source,
            preparation=PREPARATION,
        )
        if "labels" in job.outputs:
            kept["labels"] = str(job.outputs["labels"])
        manifest.append(kept)
    table = pd.DataFrame(qc_rows, columns=list(QC_TABLE_COLUMNS))
    with atomic_path(out_dir / "qc.csv", suffix=".csv") as temp:
        table.to_csv(temp, index=False)
    first = ["subject_id", "image", "age", "sex", "group", "session", "run", "mask", "mask_source", "preparation"]
    frame = pd.DataFrame(manifest)
    return frame[[c for c in first if c in frame] + [c for c in frame if c not in first]] if manifest else frame


def prepare_scans(
    manifest_or_rows: str | os.PathLike[str] | BidsInput | Sequence[dict[str, object]],
    out_dir: str | os.PathLike[str],
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: bool = True,
    spacing: float = 2.0,
    include_failed_qc: bool = False,
    finish_manifest: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
) -> PrepareReport:
    """Skull-strip, bias-correct and register raw T1 scans to the MNI template; write a manifest of them.

    Args:
        manifest_or_rows: a manifest CSV of raw scans (paths relative to it; an optional ``mask``
            column holds the user's brain masks, used instead of deepbet, and ``labels`` a
            parcellation carried to the template grid), the result of
            :func:`~brainage_core.prepare.bids.read_bids`, or rows as from :func:`manifest_rows`
            (absolute paths; a ``scan_id`` is made from subject and session when missing).
        out_dir: output folder (created); a rerun into it reuses every unchanged scan.
        workers: scans prepared at the same time; ``None`` uses every CPU core. More than one
            run on a local Dask cluster when Dask is installed (:mod:`brainage_core.cluster`).
        scheduler: address of a Dask scheduler to prepare the scans on instead.
        progress: show a tqdm bar.
        spacing: voxel size of the template grid in mm.
        include_failed_qc: keep scans that fail QC in the manifest (they are reported either way).
        finish_manifest: applied to the output manifest before it is written (e.g. the IXI
            import adds its folds).

    Returns:
        The report, also written to ``out_dir/prepare_report.json``.

    Raises:
        FileNotFoundError, ManifestError: the manifest cannot be read at all.
        FileExistsError: an output would overwrite a file brainage did not write.
        ValueError: ``out_dir`` is the BIDS dataset itself (use its ``derivatives/`` folder).
    """
    start = time.perf_counter()
    out_dir = Path(out_dir).resolve()  # the manifest stores paths relative to itself: resolve them first
    bids = manifest_or_rows if isinstance(manifest_or_rows, BidsInput) else None
    if bids is not None and out_dir.resolve() == bids.root.resolve():
        raise ValueError(
            f"--out {out_dir} is the BIDS dataset itself; write to e.g. {bids.root / 'derivatives' / 'brainage'}"
        )
    if isinstance(manifest_or_rows, BidsInput):
        rows, problems, source = (
            list(manifest_or_rows.rows),
            list(manifest_or_rows.problems),
            str(manifest_or_rows.root),
        )
    elif isinstance(manifest_or_rows, (str, os.PathLike)):
        (rows, problems), source = manifest_rows(manifest_or_rows), str(manifest_or_rows)
    else:
        rows, problems, source = _with_scan_ids([dict(row) for row in manifest_or_rows]), [], "rows"
    report = PrepareReport(source=source, out_dir=str(out_dir), n_scans=len(rows), input_problems=problems)
    jobs = _plan(rows, out_dir, float(spacing))
    names = ["qc.csv", "qc.html", "prepare_report.json", "manifest.csv"] + (
        ["dataset_description.json"] if bids else []
    )
    _claim_outputs(
        out_dir, [out_dir / name for name in names] + [p for j in jobs for p in (*j.outputs.values(), j.sidecar)]
    )
    if bids is not None:
        write_dataset_description(out_dir, bids.root)

    outcomes = _outcomes(jobs, _run(jobs, workers, scheduler, progress, report), report)
    manifest = _write_tables(rows, jobs, outcomes, out_dir, include_failed_qc)
    write_qc_html(outcomes, out_dir / "qc.html", f"brainage prepare: {Path(source).name}")
    if finish_manifest is not None and len(manifest):
        manifest = finish_manifest(manifest)
    report.n_prepared = len(manifest)
    report.manifest = str(out_dir / "manifest.csv") if len(manifest) else ""
    report.seconds = round(time.perf_counter() - start, 1)
    write_json(out_dir / "prepare_report.json", asdict(report))
    if len(manifest):
        write_manifest(manifest, out_dir / "manifest.csv")  # last: its presence means the rest is written
    elif (out_dir / "manifest.csv").exists():
        remove_owned(out_dir, ["manifest.csv"])  # an earlier run's manifest no longer describes this folder
    return report
