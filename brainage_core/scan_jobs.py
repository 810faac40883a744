"""Per-scan work with a cache and a process pool: the driver the IXI import and ``prepare`` share.

Each job is looked up in its cache first; the others run in worker processes, with a progress bar,
and whatever one of them returns (a result or a problem) comes back as data, so one failing scan
never stops the batch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing.context import BaseContext
from typing import TypeVar

from tqdm import tqdm

__all__ = ["CACHED", "run_scan_jobs"]

CACHED = "cached"  # the status of a job answered by its cache
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
) -> list[tuple[str, str, object]]:
    """Every job's ``(key, status, payload)``: cache hits first, then the others as workers finish.

    Args:
        jobs: the units of work.
        key: a job's identifier (the first element of what ``run`` returns).
        cached: a job's cached result, or ``None`` when it must run.
        run: runs one job in a worker (picklable); returns ``(key, status, payload)``.
        initializer: run once in every worker process.
        workers: worker processes (default: all cores), never more than the jobs to run.
        progress: show a progress bar.
        desc: the progress bar's label.
        mp_context: how workers start (e.g. ``spawn``); ``None``: the platform default.

    Returns:
        ``(key, CACHED, cached result)`` for cache hits, then what ``run`` returned for the others.
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
    with (
        tqdm(total=len(to_run), desc=desc, unit="scan", disable=not progress) as bar,
        ProcessPoolExecutor(workers, mp_context=mp_context, initializer=initializer) as pool,
    ):
        for future in as_completed([pool.submit(run, job) for job in to_run]):
            outcomes.append(future.result())
            bar.update()
    return outcomes
