"""The run directory: the contract between training and everything downstream.

A run directory holds ``config.yaml`` (resolved), ``metrics.csv`` (per epoch), ``model.pt``
(selected weights), ``predictions.csv``, ``checkpoint.pt`` (latest epoch, for resuming) and
``log.txt``. This module owns it: training writes it with :func:`write_config` and the files of
:data:`RUN_FILES`; everything downstream (inference, metrics, comparisons, clinical statistics,
saliency, the CLI and the book) reads it only through :func:`read_config`, :func:`read_history`,
:func:`read_predictions`, :func:`load_model` and :func:`is_finished_run`. The rules:

* **One writer at a time**: :func:`lock_run` takes an exclusive lock (``filelock``) for the life
  of a training; a second process gets :class:`RunLockedError` naming the holder.
* **The run's config is the truth**: :func:`config_differences` lists the fields in which a
  requested config differs from the stored one, so a resume with other settings is refused
  before anything is written.
* **Nothing loaded runs code**: :func:`load_torch_file` reads checkpoints and weights with
  ``torch.load(weights_only=True)`` and turns a truncated or foreign file into a clear error.
* **Paths survive a move**: the manifest and cache paths are stored absolute (resolved when the
  config is written), so ``brainage predict --run R`` finds the training manifest from any folder.
* **Ownership**: every file a run writes is recorded (:mod:`brainage_core.ownership`), so a run
  directory can be replaced only when it holds nothing but the project's files.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import filelock
import pandas as pd
import yaml

from brainage_core.config import RunConfig, config_to_dict, load_config
from brainage_core.fileio import atomic_path

if TYPE_CHECKING:
    from brainage_core.models import BrainAgeModel

__all__ = [
    "LOCK_FILES",
    "NUMERIC_COLUMNS",
    "PREDICTION_COLUMNS",
    "RUN_FILES",
    "CorruptFileError",
    "RunLockedError",
    "absolute_paths",
    "config_differences",
    "is_finished_run",
    "load_model",
    "load_torch_file",
    "lock_run",
    "read_config",
    "read_history",
    "read_predictions",
    "selected_epoch",
    "stored_config_differences",
    "write_config",
]

RUN_FILES = ("config.yaml", "metrics.csv", "predictions.csv", "model.pt", "log.txt")
LOCK_FILES = (".lock", ".lock-holder.json")
# predictions.csv: these columns always, then whichever manifest columns the run carried.
PREDICTION_COLUMNS: tuple[str, ...] = ("subject_id", "split", "group", "sex", "age", "predicted_age")
NUMERIC_COLUMNS: tuple[str, ...] = ("age", "predicted_age", "true_gap", "mmse", "cdr", "updrs3", "hoehn_yahr")
TEXT_COLUMNS: tuple[str, ...] = ("subject_id", "split", "group", "sex", "site", "image", "preparation")


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


def _run_file(run_dir: str | os.PathLike[str], name: str) -> Path:
    path = Path(run_dir) / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a finished run directory (brainage train)?")
    return path


def absolute_paths(config: RunConfig) -> RunConfig:
    """A copy of ``config`` whose manifest and cache paths are absolute (as stored in a run)."""
    resolved = copy.deepcopy(config)
    if str(resolved.data.manifest).strip():
        resolved.data.manifest = str(Path(resolved.data.manifest).expanduser().resolve())
    if resolved.data.cache_dir:
        resolved.data.cache_dir = str(Path(resolved.data.cache_dir).expanduser().resolve())
    return resolved


def write_config(run_dir: str | os.PathLike[str], config: RunConfig) -> None:
    """Write ``run_dir/config.yaml``: the resolved config with absolute paths."""
    with atomic_path(Path(run_dir) / "config.yaml") as temp:
        temp.write_text(yaml.safe_dump(config_to_dict(absolute_paths(config)), sort_keys=False))


def read_config(run_dir: str | os.PathLike[str], overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """The run's config (validated), with optional ``section.key=value`` overrides on top.

    A manifest path stored relative (by brainage before 0.2) is resolved against the run
    directory's parent, the folder the book's notebooks trained from.
    """
    path = _run_file(run_dir, "config.yaml")
    config = load_config(path, overrides)
    manifest = Path(config.data.manifest)
    if str(config.data.manifest).strip() and not manifest.is_absolute():
        config.data.manifest = str((Path(run_dir).resolve().parent / manifest).resolve())
    return config


def stored_config_differences(run_dir: str | os.PathLike[str], config: RunConfig) -> list[str]:
    """The fields in which ``config`` differs from the run's stored config (empty: the same run).

    Paths are compared resolved, so a relative and an absolute path to one manifest are equal.
    """
    stored = config_to_dict(absolute_paths(read_config(run_dir)))
    return config_differences(stored, config_to_dict(absolute_paths(config)))


def read_history(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """``metrics.csv``: one row per epoch (epoch, train_loss, val_mae, ...)."""
    return pd.read_csv(_run_file(run_dir, "metrics.csv"))


def selected_epoch(history: pd.DataFrame) -> int:
    """The epoch training kept: the first with the lowest validation MAE (as the engine selects)."""
    return int(history.loc[history["val_mae"].idxmin(), "epoch"])


def read_predictions(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """``predictions.csv`` with typed columns; checks that ages and predictions are present.

    Raises:
        FileNotFoundError: not a finished run.
        ValueError: a required column is missing, or an age or prediction is not a number
            (the message names the file and the subjects).
    """
    path = _run_file(run_dir, "predictions.csv")
    frame = pd.read_csv(path, dtype=dict.fromkeys(TEXT_COLUMNS, str))
    missing = [column for column in PREDICTION_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; present: {list(frame.columns)}")
    for column in (c for c in NUMERIC_COLUMNS if c in frame.columns):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    for column in ("age", "predicted_age"):
        bad = frame.loc[frame[column].isna(), "subject_id"].tolist()
        if bad:
            raise ValueError(
                f"{path}: column '{column}' is missing or not a number for {len(bad)} row(s), e.g. {bad[:5]}"
            )
    return frame


def load_model(run_dir: str | os.PathLike[str], device: str = "cpu") -> tuple[BrainAgeModel, RunConfig]:
    """A finished run's selected model (``model.pt``, weights only) in eval mode, and its config.

    Raises:
        FileNotFoundError: ``config.yaml`` or ``model.pt`` is missing.
        CorruptFileError: ``model.pt`` is truncated or does not match the config's architecture.
    """
    from brainage_core.models import build_model

    config = read_config(run_dir)
    path = _run_file(run_dir, "model.pt")
    model = build_model(config.model)
    state = load_torch_file(path, map_location=device)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as error:
        raise CorruptFileError(
            f"{path} does not hold the weights of the model its config.yaml describes "
            f"({str(error).splitlines()[0]}); retrain the run"
        ) from None
    return model.to(device).eval(), config
