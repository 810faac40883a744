"""Where batches of work run: on this machine alone, or on a Dask cluster.

``brainage book run --jobs N`` and ``brainage prepare --jobs N`` hand their units of work (a
notebook run, a scan) to a :class:`concurrent.futures.Executor`. With ``--jobs 1`` the work runs
as before, on this machine without Dask; with ``--jobs N`` (N > 1) on a local Dask cluster of N
single-threaded worker processes (a local process or thread pool when Dask is not installed); with ``--scheduler ADDRESS`` on an existing Dask cluster, for
example one that ``dask-jobqueue`` starts on an HPC system::

    from dask_jobqueue import SLURMCluster
    cluster = SLURMCluster(cores=4, memory="16GB", walltime="04:00:00")
    cluster.scale(jobs=8)
    print(cluster.scheduler_address)  # pass this as --scheduler

Dask reruns the task of a worker that dies (up to ``distributed.scheduler.allowed-failures``
times, 3 by default) and then reports it as failed (``KilledWorker``): the callers turn that into
the failure of that run or scan, never a silent loss. Dask is the optional extra ``cluster``
(``pip install brainage[cluster]``).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from typing import Any, TypeVar

__all__ = ["dask_executor", "run_initialised", "uses_dask"]

Result = TypeVar("Result")


def uses_dask(jobs: int | None, scheduler: str | None) -> bool:
    """Whether work runs on Dask: with a scheduler address, or more than one job and Dask installed.

    Without Dask, more than one job runs on a local process pool, as before Dask was supported.
    """
    if scheduler is not None:
        return True
    return jobs is not None and jobs > 1 and importlib.util.find_spec("distributed") is not None


@contextmanager
def dask_executor(jobs: int | None, scheduler: str | None = None, connect_timeout_s: float = 30) -> Iterator[Executor]:
    """An executor whose tasks run on Dask workers; the local cluster it starts is closed after.

    Args:
        jobs: worker processes of the local cluster (one thread each); ignored with ``scheduler``.
        scheduler: address of a running Dask scheduler (``tcp://host:8786``); ``None``: start a
            local cluster of ``jobs`` workers on this machine.
        connect_timeout_s: how long to try reaching ``scheduler``.

    Raises:
        ValueError: Dask is not installed (the message says how to install it).
        OSError: the scheduler cannot be reached (the message names the address).
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ValueError(
            "running on a Dask cluster (--jobs N > 1 or --scheduler) needs Dask: pip install 'brainage[cluster]' "
            "(or pip install 'dask[distributed]')"
        ) from None
    cluster: Any = None
    try:
        if scheduler is None:
            cluster = LocalCluster(
                n_workers=max(1, jobs or 1),
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",  # any free port: a chapter's cluster may run inside a book run's
                silence_logs=logging.ERROR,  # keep Dask's info and warnings out of notebook outputs
            )
            client = Client(cluster)
        else:
            client = Client(scheduler, timeout=f"{connect_timeout_s}s")
    except OSError as error:
        if cluster is not None:
            cluster.close()
        raise OSError(f"cannot reach the Dask scheduler at {scheduler}: {error}") from None
    try:
        yield client.get_executor(pure=False)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def run_initialised(initializer: Callable[[], None], run: Callable[..., Result], *args: Any) -> Result:
    """``initializer()`` then ``run(*args)``: a process pool's per-worker set-up, for a Dask task.

    The initializers used here (one thread per worker) are idempotent, so running one before
    every task costs nothing after the first in a worker.
    """
    initializer()
    return run(*args)
