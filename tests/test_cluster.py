"""Work on a local 2-worker Dask cluster: scan batches (prepare), retried and reported worker deaths."""

from __future__ import annotations

import os
from pathlib import Path

import dask
import pytest

from brainage_core.cluster import dask_executor, uses_dask
from brainage_core.prepare import prepare_scans
from brainage_core.scan_jobs import WORKER_DIED, run_scan_jobs
from tests.test_prepare import write_volume

N_WORKERS = 2


def _no_setup() -> None:
    """A worker initializer with nothing to set up."""


def _run(job: tuple[str, str]) -> tuple[str, str, object]:
    """A job ``(name, behaviour)``: ``ok`` returns its worker's pid; ``die`` kills its worker;
    ``die_once:FILE`` kills its worker the first time (creating FILE), then succeeds."""
    name, behaviour = job
    if behaviour == "die":
        os._exit(1)
    if behaviour.startswith("die_once:"):
        marker = Path(behaviour.split(":", 1)[1])
        if not marker.exists():
            marker.touch()
            os._exit(1)
    return name, "ok", os.getpid()


def _scan_jobs(jobs: list[tuple[str, str]]) -> dict[str, tuple[str, object]]:
    outcomes = run_scan_jobs(
        jobs,
        key=lambda job: job[0],
        cached=lambda job: None,
        run=_run,
        initializer=_no_setup,
        workers=N_WORKERS,
        progress=False,
        desc="test",
    )
    return {name: (status, payload) for name, status, payload in outcomes}


def test_more_than_one_job_runs_on_dask_and_one_job_does_not() -> None:
    assert uses_dask(2, None) and uses_dask(1, "tcp://localhost:8786")
    assert not uses_dask(1, None) and not uses_dask(None, None)


def test_jobs_run_on_the_workers_and_a_killed_worker_is_retried(tmp_path: Path) -> None:
    jobs = [(f"scan{index}", "ok") for index in range(4)] + [("flaky", f"die_once:{tmp_path / 'died'}")]
    results = _scan_jobs(jobs)
    assert {name: status for name, (status, _) in results.items()} == {name: "ok" for name, _ in jobs}
    assert (tmp_path / "died").exists(), "the flaky job's first worker died; Dask ran it again"
    assert os.getpid() not in {payload for _, payload in results.values()}, "the jobs ran in worker processes"


def test_a_job_that_keeps_killing_its_worker_is_reported_not_lost() -> None:
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        results = _scan_jobs([("scan0", "ok"), ("poison", "die"), ("scan1", "ok")])
    assert results["scan0"][0] == results["scan1"][0] == "ok"
    status, message = results["poison"]
    assert status == WORKER_DIED and "worker process running it died" in str(message) and "rerun" in str(message)


def test_an_unreachable_scheduler_is_a_clear_error() -> None:
    with (
        pytest.raises(OSError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"),
        dask_executor(1, "tcp://127.0.0.1:9", connect_timeout_s=1),
    ):
        pass


def test_ten_scans_are_prepared_on_a_two_worker_cluster(tmp_path: Path) -> None:
    rows = []
    for index in range(10):
        image = write_volume(tmp_path / "raw" / f"s{index}.nii.gz", (24, 24, 24), seed=index)
        mask = write_volume(tmp_path / "raw" / f"s{index}_mask.nii.gz", (24, 24, 24), seed=index)
        rows.append(
            {
                "subject_id": f"s{index}",
                "image": str(image),
                "mask": str(mask),
                "age": 50.0 + index,
                "sex": "F",
                "group": "CN",
            }
        )
    report = prepare_scans(
        rows, tmp_path / "out", workers=N_WORKERS, spacing=4.0, progress=False, include_failed_qc=True
    )
    assert report.n_processed == 10 and report.corrupt == [] and report.failed == []
    assert len(list((tmp_path / "out" / "cache").glob("*.json"))) == 10, "every scan's record is written"
