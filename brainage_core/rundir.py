"""The run directory: the contract between training and everything downstream.

A run directory holds ``config.yaml`` (resolved), ``metrics.csv`` (per epoch), ``model.pt``
(selected weights), ``predictions.csv``, ``checkpoint.pt`` (latest epoch, for resuming) and
``log.txt``. This module owns the rules around it:

* **One writer at a time**: :func:`lock_run` takes an exclusive lock (``filelock``) for the life
  of a training; a second process gets :class:`RunLockedError` naming the holder.
* **The run's config is the truth**: :func:`config_differences` lists the fields in which a
  requested config differs from the stored one, so a resume with other settings is refused
  before anything is written.
* **Nothing loaded runs code**: :func:`load_torch_file` reads checkpoints and weights with
  ``torch.load(weights_only=True)`` and turns a truncated or foreign file into a clear error.
* **Ownership**: every file a run writes is recorded (:mod:`brainage_core.ownership`), so a run
  directory can be replaced only when it holds nothing but the project's files.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import filelock

__all__ = [
    "LOCK_FILES",
    "RUN_FILES",
    "CorruptFileError",
    "RunLockedError",
    "config_differences",
    "is_finished_run",
    "load_torch_file",
    "lock_run",
]

RUN_FILES = ("config.yaml", "metrics.csv", "predictions.csv", "model.pt", "log.txt")
LOCK_FILES = (".lock", ".lock-holder.json")


class RunLockedError(RuntimeError):
    """Another process holds the run directory's lock; the message names it."""


class CorruptFileError(ValueError):
    """A checkpoint or weights file is truncated, corrupt or not written by brainage."""


def _holder(run_dir: Path) -> str:
    try:
        info = json.loads((run_dir / LOCK_FILES[1]).read_text())
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["started"])))
        return f"process {info['pid']} on {info['host']} since {started} ({info['command']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextmanager
def lock_run(run_dir: str | os.PathLike[str], command: str = "train") -> Iterator[None]:
    """Hold the exclusive lock of ``run_dir`` (created if missing) for the ``with`` block.

    Args:
        run_dir: the run directory.
        command: what the holder is doing, shown to a process that finds the lock taken.

    Raises:
        RunLockedError: another process holds the lock (the message names it).
    """
    from brainage_core.ownership import claim

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    claim(run_dir, LOCK_FILES)
    lock = filelock.FileLock(str(run_dir / LOCK_FILES[0]), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise RunLockedError(
            f"{run_dir} is in use by {_holder(run_dir)}: wait for it to finish, or choose another --run-dir"
        ) from None
    try:
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "command": command}
        (run_dir / LOCK_FILES[1]).write_text(json.dumps(holder) + "\n")
        yield
    finally:
        lock.release()


def _flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(values, dict):
        flat: dict[str, Any] = {}
        for key, value in values.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): values}


def config_differences(stored: dict[str, Any], requested: dict[str, Any]) -> list[str]:
    """The dotted fields whose values differ, as ``"field: stored -> requested"`` lines."""
    left, right = _flatten(stored), _flatten(requested)
    return [
        f"{key}: {left.get(key, '<unset>')!r} -> {right.get(key, '<unset>')!r}"
        for key in sorted(set(left) | set(right))
        if left.get(key) != right.get(key)
    ]


def load_torch_file(path: str | os.PathLike[str], map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: tensors, numbers, strings, lists and dicts only.

    Raises:
        FileNotFoundError: the file does not exist.
        CorruptFileError: the file is truncated, corrupt, or holds anything but plain data
            (a pickled object is never executed).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        raise CorruptFileError(
            f"{path} cannot be loaded: it is truncated, corrupt, or holds more than tensors and plain data "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). "
            "Retrain the run (or, for checkpoint.pt, delete it and train again)"
        ) from None


def is_finished_run(run_dir: str | os.PathLike[str]) -> bool:
    """Whether ``run_dir`` holds a complete run (its selected model and predictions)."""
    run_dir = Path(run_dir)
    return (run_dir / "model.pt").is_file() and (run_dir / "predictions.csv").is_file()
