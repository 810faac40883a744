"""Training runs: :func:`train` writes a run directory, :func:`ensure_run` reuses or resumes one.

The recipes (end-to-end regression, two-stage contrastive with a linear probe) and the
per-epoch steps live in :mod:`brainage_core.engine`; this module drives them: it checks and
locks the run directory, selects the epoch with the best validation MAE (validation subjects of
the training groups; never the test set), checkpoints, logs and writes the outputs.

A run directory holds: ``config.yaml`` (resolved), ``metrics.csv`` (per epoch), ``model.pt``
(the selected weights, a state dict), ``predictions.csv`` (every manifest row: subject_id,
split, group, age, predicted_age), ``checkpoint.pt`` (latest epoch, for ``--resume``) and
``log.txt``. Each epoch's randomness is derived from (seed, epoch), and checkpoints are written
atomically, so a run resumed after a kill ends with the same weights as an uninterrupted one.

Multi-GPU / multi-node: launch with ``torchrun``; each rank takes a slice of every global
batch (contrastive negatives span the global batch, see :mod:`brainage_core.engine`) and
only rank 0 writes files.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist
from tqdm import tqdm

from brainage_core import distributed
from brainage_core.config import ConfigError, RunConfig, config_problems
from brainage_core.engine import Trainer, fit_linear_probe, torch_threads
from brainage_core.fileio import atomic_path
from brainage_core.inference import resolve_device
from brainage_core.ownership import claim, clear_owned_folder, remove_owned, remove_stale_temp_files
from brainage_core.rundir import (
    LOCK_FILES,
    RUN_FILES,
    is_finished_run,
    load_torch_file,
    lock_run,
    stored_config_differences,
    write_config,
)

__all__ = ["ensure_run", "fit_linear_probe", "train"]  # fit_linear_probe: re-exported from engine

LOGGER = logging.getLogger("brainage.train")


def _setup_logging(run_dir: Path, rank: int) -> logging.Handler | None:
    if rank != 0:
        return None
    handler = logging.FileHandler(run_dir / "log.txt")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.INFO)
    return handler


def _init_distributed(config: RunConfig) -> bool:
    """Initialise torch.distributed when launched by torchrun; return whether this call did."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if resolve_device(config.device).type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        return True
    return False


def _check_run_dir(config: RunConfig, run_dir: Path, resume: bool) -> None:
    """Refuse, before anything is written, a run directory that does not fit the request.

    A new run needs a folder without a run in it; a resume needs a checkpoint and the same
    resolved config as the one stored (every differing field is listed).
    """
    checkpoint_path = run_dir / "checkpoint.pt"
    if run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(f"{run_dir} exists and is not a folder; choose another --run-dir")
    if not resume:
        if checkpoint_path.exists() or (run_dir / "model.pt").exists() or (run_dir / "config.yaml").exists():
            raise FileExistsError(
                f"{run_dir} already holds a run; resume it with: brainage train --run-dir {run_dir} --resume, or choose a new folder"
            )
        return
    if not checkpoint_path.is_file():
        finished = " (it holds a finished run)" if is_finished_run(run_dir) else ""
        raise FileNotFoundError(f"cannot resume: {checkpoint_path} does not exist{finished}")
    differences = stored_config_differences(run_dir, config)
    if differences:
        raise ValueError(
            f"cannot resume {run_dir} with another config; {len(differences)} field(s) differ (stored -> requested):\n"
            + "\n".join(f"  - {line}" for line in differences)
            + f"\nResume with the run's own config (brainage train --run-dir {run_dir} --resume), or train into a new --run-dir"
        )


def train(config: RunConfig, run_dir: str | os.PathLike[str], resume: bool = False, progress: bool = True) -> Path:
    """Train one model and write its run directory.

    The run directory is locked for the whole training (:func:`~brainage_core.rundir.lock_run`).
    A failure before the first epoch's checkpoint leaves no run behind (the folder is removed if
    this call created it); a later failure is written to ``log.txt`` and the run can be resumed.

    Args:
        config: the run configuration (see :mod:`brainage_core.config`).
        run_dir: output folder; created if missing.
        resume: continue from ``run_dir/checkpoint.pt`` (written after every epoch); ``config``
            must equal the stored ``config.yaml``.
        progress: show tqdm progress bars.

    Returns:
        The run directory.

    Raises:
        FileExistsError: ``run_dir`` already holds a run and ``resume`` is false.
        RunLockedError: another process is training into ``run_dir``.
        ValueError: invalid configuration or data, or a resume with a changed config.
    """
    problems = config_problems(config)
    if problems:
        raise ConfigError(problems)
    run_dir = Path(run_dir)
    if distributed.rank() == 0 and int(os.environ.get("RANK", "0")) == 0:
        _check_run_dir(config, run_dir, resume)
    if not str(config.data.manifest).strip():
        raise ValueError(
            "data.manifest is not set: pass --set data.manifest=path/to/manifest.csv (or a --config file setting it)"
        )
    started_distributed = _init_distributed(config)
    try:
        # The caller's thread count is restored after: a notebook's later cells keep theirs.
        with torch_threads(config.num_threads):
            if distributed.rank() != 0:  # only rank 0 writes (and locks) the run directory
                return _train_locked(config, run_dir, resume, progress, created=False)
            created = not run_dir.exists()
            with lock_run(run_dir, command="train"):
                _check_run_dir(config, run_dir, resume)  # again, now that no other process can write
                return _train_locked(config, run_dir, resume, progress, created)
    finally:
        if started_distributed:
            dist.destroy_process_group()


def _train_locked(config: RunConfig, run_dir: Path, resume: bool, progress: bool, created: bool) -> Path:
    """The body of :func:`train`, run while holding the run directory's lock (rank 0)."""
    checkpoint_path = run_dir / "checkpoint.pt"
    is_main = distributed.rank() == 0
    if is_main:
        claim(run_dir, [*RUN_FILES, "checkpoint.pt"])
        for stale in remove_stale_temp_files(run_dir):
            LOGGER.info("removed %s, left by an interrupted write", stale.name)
    handler = _setup_logging(run_dir, distributed.rank())
    finished = False
    try:
        trainer = Trainer(config, progress)
        if resume:
            trainer.restore(load_torch_file(checkpoint_path, map_location=trainer.device))
            LOGGER.info("resumed at epoch %d", trainer.start_epoch + 1)
        elif is_main:
            write_config(run_dir, config)
        LOGGER.info(
            "loss=%s device=%s train=%d val=%d epochs=%d",
            config.loss.name,
            trainer.device,
            len(trainer.train_idx),
            len(trainer.val_idx),
            config.train.epochs,
        )
        for epoch in range(trainer.start_epoch, config.train.epochs):
            if _run_epoch(trainer, epoch, checkpoint_path, progress, is_main):
                break
        if is_main:
            _write_outputs(trainer, run_dir)
        finished = True
    except BaseException as error:
        if checkpoint_path.is_file():
            LOGGER.error(
                "stopped: %s: %s; resume with: brainage train --run-dir %s --resume",
                type(error).__name__,
                error,
                run_dir,
            )
        raise
    finally:
        if handler is not None:
            LOGGER.removeHandler(handler)
            handler.close()
        if not finished and is_main and not resume and not checkpoint_path.is_file():
            _remove_untrained_run(run_dir, created)
    return run_dir


def _run_epoch(trainer: Trainer, epoch: int, checkpoint_path: Path, progress: bool, is_main: bool) -> bool:
    """Train and evaluate one epoch, log and checkpoint it; return whether early stopping ends the run."""
    row, stop = trainer.fit_epoch(epoch)
    improved = trainer.epochs_without_improvement == 0
    LOGGER.info(
        "epoch %d: loss %.4f train MAE %.2f val MAE %.2f%s",
        epoch + 1,
        row["train_loss"],
        row["train_mae"],
        row["val_mae"],
        " *" if improved else "",
    )
    if progress and is_main:
        tqdm.write(
            f"epoch {epoch + 1}: loss {row['train_loss']:.4f}  train MAE {row['train_mae']:.2f}  "
            f"val MAE {row['val_mae']:.2f}{'  *' if improved else ''}"
        )
    if is_main:
        with atomic_path(checkpoint_path, suffix=".pt") as temp:
            torch.save(trainer.state(epoch), temp)
    if stop:
        LOGGER.info("early stop: no better validation MAE for %d epochs", trainer.config.train.patience)
    return stop


def _remove_untrained_run(run_dir: Path, created: bool) -> None:
    """Remove what a failed training wrote before its first checkpoint (only the project's files)."""
    if created:
        clear_owned_folder(run_dir, "a failed run")
        return
    remove_owned(run_dir, [*RUN_FILES, "checkpoint.pt", *LOCK_FILES])


def _write_outputs(trainer: Trainer, run_dir: Path) -> None:
    if trainer.best_state is None:  # resumed after the last epoch was checkpointed
        trainer.best_state = {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}
    trainer.model.load_state_dict(trainer.best_state)
    predicted, probe = trainer.predict_every_row()  # first: a held-out scan that fails leaves no output
    with atomic_path(run_dir / "model.pt", suffix=".pt") as temp:
        torch.save(trainer.model.state_dict(), temp)
    with atomic_path(run_dir / "metrics.csv", suffix=".csv") as temp:
        pd.DataFrame(trainer.history).to_csv(temp, index=False)
    columns = [
        c
        for c in (
            "subject_id",
            "split",
            "group",
            "sex",
            "site",
            "age",
            "true_gap",
            "mmse",
            "cdr",
            "updrs3",
            "hoehn_yahr",
            "preparation",  # how the training images were made: brainage predict checks new scans against it
        )
        if c in trainer.frame.columns
    ]
    predictions = trainer.frame[columns].copy()
    predictions["predicted_age"] = predicted
    predictions["predicted_age_probe"] = probe  # a linear probe on the frozen features, for every method
    predictions["image"] = trainer.frame["image"]
    with atomic_path(run_dir / "predictions.csv", suffix=".csv") as temp:
        predictions.to_csv(temp, index=False)
    LOGGER.info("best validation MAE %.2f years; wrote %s", trainer.best_mae, ", ".join(RUN_FILES))


def ensure_run(config: RunConfig, run_dir: str | os.PathLike[str], progress: bool = True) -> Path:
    """Train ``config`` into ``run_dir`` unless that exact run is already there.

    The stored config is always compared with ``config`` (every field, paths resolved): a
    finished run with the same config is reused, an interrupted one is resumed from its
    checkpoint, and a run made with any other setting is replaced, but only when the folder
    holds nothing but files brainage wrote (otherwise a FileExistsError names them).

    Returns:
        The run directory.
    """
    run_dir = Path(run_dir)
    if (run_dir / "config.yaml").is_file():
        try:
            unchanged = not stored_config_differences(run_dir, config)
        except ValueError:  # a config written by another version, no longer valid
            unchanged = False
        if unchanged and is_finished_run(run_dir):
            return run_dir
        if unchanged and (run_dir / "checkpoint.pt").is_file():
            return train(config, run_dir, resume=True, progress=progress)
    clear_owned_folder(run_dir, "a run with another configuration")
    return train(config, run_dir, progress=progress)
