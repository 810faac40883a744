"""Per-scan work with a cache and worker processes: the driver the IXI import and ``prepare`` share.

Each job is looked up in its cache first; the others run in worker processes (a local process
pool, or a Dask cluster: :mod:`brainage_core.cluster`), with a progress bar, and whatever one of
them returns (a result or a problem) comes back as data, so one failing scan never stops the
batch; a scan whose worker died is reported as failed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from multiprocessing.context import BaseContext
from typing import TypeVar

from tqdm import tqdm

from brainage_core.cluster import dask_executor, run_initialised, uses_dask

__all__ = ["CACHED", "WORKER_DIED", "run_scan_jobs"]

CACHED = "cached"  # the status of a job answered by its cache
WORKER_DIED = "failed"  # the status of a job whose worker process died (after Dask's retries)
Job = TypeVar("Job")


def run_scan_jobs(
    jobs: Sequence[Job],
    *,
    key: Callable[[Job], str],
    cached: Callable[[Job], dict[str, object] | None],
    run: Callable[[Job], tuple[str, str, object]],
    initializer: Callable[[], None],
    workers: int | None,
    progress: bool,
    desc: str,
    mp_context: BaseContext | None = None,
    scheduler: str | None = None,
) -> list[tuple[str, str, object]]:
    """Every job's ``(key, status, payload)``: cache hits first, then the others as workers finish.

    Args:
        jobs: the units of work.
        key: a job's identifier (the first element of what ``run`` returns).
        cached: a job's cached result, or ``None`` when it must run.
        run: runs one job in a worker (picklable); returns ``(key, status, payload)``.
        initializer: run once in every worker process.
        workers: worker processes (default: all cores), never more than the jobs to run; more
            than one runs them on a local Dask cluster when Dask is installed.
        progress: show a progress bar.
        desc: the progress bar's label.
        mp_context: how the local process pool's workers start (e.g. ``spawn``); ``None``: the
            platform default.
        scheduler: address of a Dask scheduler to run the jobs on instead.

    Returns:
        ``(key, CACHED, cached result)`` for cache hits, then what ``run`` returned for the others
        (``(key, WORKER_DIED, message)`` for a job whose worker process died).
    """
    outcomes: list[tuple[str, str, object]] = []
    to_run = []
    for job in jobs:
        hit = cached(job)
        if hit is None:
            to_run.append(job)
        else:
            outcomes.append((key(job), CACHED, hit))
    if not to_run:
        return outcomes
    workers = max(1, min(workers or os.cpu_count() or 1, len(to_run)))
    on_dask = uses_dask(workers, scheduler)
    pool: Executor
    with (
        tqdm(total=len(to_run), desc=desc, unit="scan", disable=not progress) as bar,
        dask_executor(workers, scheduler)
        if on_dask
        else ProcessPoolExecutor(workers, mp_context=mp_context, initializer=initializer) as pool,
    ):
        submitted: dict[Future, Job] = {
            (pool.submit(run_initialised, initializer, run, job) if on_dask else pool.submit(run, job)): job
            for job in to_run
        }
        for future in as_completed(submitted):
            try:
                outcomes.append(future.result())
            except Exception as error:  # the worker died: Dask's KilledWorker, or a broken process pool
                message = f"the worker process running it died ({type(error).__name__}: {error}); rerun to retry it"
                outcomes.append((key(submitted[future]), WORKER_DIED, message))
            bar.update()
    return outcomes
