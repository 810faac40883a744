"""The training engine: end-to-end regression and two-stage contrastive training.

* **Regression** (``loss.name`` ``mse`` or ``l1``): encoder + linear regressor trained end to
  end on one augmented view per subject, on standardised age.
* **Two-stage contrastive** (``rnc``, ``ntxent``, ``supcon``, ``yaware``): the encoder and
  projection head are trained with the contrastive loss on ``n_views`` augmented views; at each
  evaluation a linear regressor is fitted with L1 on the frozen (un-augmented) encoder features
  of the training set (:func:`fit_linear_probe`).

Both use the same backbone, data, augmentation and epoch budget. The epoch with the best
validation MAE (validation subjects of the training groups; never the test set) is kept.

A run directory holds: ``config.yaml`` (resolved), ``metrics.csv`` (per epoch), ``model.pt``
(the selected weights, a state dict), ``predictions.csv`` (every manifest row: subject_id,
split, group, age, predicted_age), ``checkpoint.pt`` (latest epoch, for ``--resume``) and
``log.txt``. Each epoch's randomness is derived from (seed, epoch), and checkpoints are written
atomically, so a run resumed after a kill ends with the same weights as an uninterrupted one.

Multi-GPU / multi-node: launch with ``torchrun``; each rank takes a slice of every global
batch, contrastive features are gathered across ranks with gradients
(:func:`~brainage_core.distributed.gather_for_loss`) so negatives span the global batch, and
only rank 0 writes files.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from sklearn.linear_model import RidgeCV
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from brainage_core import distributed
from brainage_core.config import ConfigError, ProbeConfig, RunConfig, config_problems
from brainage_core.data import VolumeDataset, assign_splits, load_manifest_volumes
from brainage_core.fileio import atomic_path
from brainage_core.inference import extract_features, predict_ages, resolve_device
from brainage_core.losses import CONTRASTIVE_LOSSES, REGRESSION_LOSSES, build_loss
from brainage_core.manifest import read_manifest
from brainage_core.models import build_model
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

__all__ = ["ensure_run", "fit_linear_probe", "train"]

LOGGER = logging.getLogger("brainage.train")


def _lr_lambda(total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _optimizer(config: RunConfig, parameters) -> torch.optim.Optimizer:
    optim = config.train
    if optim.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=optim.lr, weight_decay=optim.weight_decay)
    if optim.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
    raise ValueError(f"unknown train.optimizer {optim.optimizer!r}; use adamw or sgd")


def fit_linear_probe(
    features: torch.Tensor, ages: torch.Tensor, age_mean: float, age_std: float, config: ProbeConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit a linear regressor with L1 loss on frozen features (deterministic, full batch).

    Features are standardised. scikit-learn's ``RidgeCV`` picks the ridge penalty by efficient
    leave-one-out cross-validation on the training features (unless ``config.ridge`` fixes it)
    and its solution initialises the weights; Adam then refines them on
    ``L1 + alpha / N * ||w||^2``. The penalty matters: with fewer subjects than feature
    dimensions an unpenalised probe interpolates the training ages. The standardisation is
    folded back into the weights.

    Args:
        features: ``[N, D]`` training features.
        ages: ``[N]`` training ages in years.
        age_mean, age_std: the model's target standardisation.
        config: probe settings.

    Returns:
        ``weight [1, D]`` and ``bias [1]`` for ``nn.Linear(D, 1)`` predicting standardised age.
    """
    features = features.double()
    target = (ages.double() - age_mean) / age_std  # target: [N]
    mean, std = features.mean(0), features.std(0).clamp(min=1e-6)
    z = (features - mean) / std  # z: [N, D]
    alphas = [config.ridge] if config.ridge is not None else list(np.logspace(-2, 5, 15))
    ridge = RidgeCV(alphas=alphas).fit(z.numpy(), target.numpy())
    alpha = float(ridge.alpha_)
    weight = torch.tensor(ridge.coef_, dtype=z.dtype).unsqueeze(0).requires_grad_(True)  # weight: [1, D]
    bias = torch.tensor([ridge.intercept_], dtype=z.dtype).requires_grad_(True)  # bias: [1]
    optimizer = torch.optim.Adam([weight, bias], lr=config.lr)
    for _ in range(config.steps):
        optimizer.zero_grad()
        loss = (z @ weight.T + bias - target.unsqueeze(1)).abs().mean() + alpha / len(z) * weight.pow(2).sum()
        loss.backward()
        optimizer.step()
    weight, bias = weight.detach() / std, bias.detach() - (weight.detach() / std * mean).sum()
    return weight.float(), bias.float()


class _Trainer:
    """State and steps of one run; :func:`train` drives it."""

    def __init__(self, config: RunConfig, run_dir: Path, progress: bool):
        self.config = config
        self.run_dir = run_dir
        self.progress = progress
        self.contrastive = config.loss.name in CONTRASTIVE_LOSSES
        if not self.contrastive and config.loss.name not in REGRESSION_LOSSES:
            raise ValueError(
                f"unknown loss.name {config.loss.name!r}; use one of {CONTRASTIVE_LOSSES + REGRESSION_LOSSES}"
            )
        self.loss_fn = build_loss(config.loss.name, **config.loss.params)
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.device = resolve_device(config.device)
        if self.world > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(self.device)
        self.cuda = self.device.type == "cuda"

        self.frame = read_manifest(config.data.manifest)
        self.frame["split"] = assign_splits(self.frame, config.data.test_fold).to_numpy()
        self.volumes, _ = load_manifest_volumes(self.frame, config.data, progress=progress and self.rank == 0)
        self.ages = torch.tensor(self.frame["age"].to_numpy(), dtype=torch.float32)
        in_groups = self.frame["group"].isin(config.data.train_groups).to_numpy()
        self.train_idx = np.flatnonzero(in_groups & (self.frame["split"] == "train").to_numpy())
        self.val_idx = np.flatnonzero(in_groups & (self.frame["split"] == "val").to_numpy())
        if len(self.train_idx) < 2 or len(self.val_idx) < 1:
            raise ValueError(
                f"{config.data.manifest}: need >= 2 training and >= 1 validation scans of groups "
                f"{list(config.data.train_groups)}; found {len(self.train_idx)} and {len(self.val_idx)}"
            )
        n_views = config.loss.n_views if self.contrastive else 1
        self.dataset = VolumeDataset(self.volumes, self.ages, config.augment, n_views=n_views, seed=config.seed)

        torch.manual_seed(config.seed)
        self.model = build_model(config.model)
        self.model.set_age_scale(self.ages[self.train_idx])
        # Each recipe trains one head: contrastive losses the projector (the regressor is fitted
        # by the probe), regression the regressor. Freezing the other keeps it out of the
        # optimiser and out of DistributedDataParallel's gradient synchronisation.
        (self.model.regressor if self.contrastive else self.model.projector).requires_grad_(False)
        self.model.to(self.device)
        if self.cuda and config.channels_last:
            self.model.to(memory_format=torch.channels_last_3d)
        self.network: nn.Module = self.model
        if self.world > 1:
            self.network = DistributedDataParallel(self.model, device_ids=[self.device.index] if self.cuda else None)
        self.optimizer = _optimizer(config, [p for p in self.model.parameters() if p.requires_grad])
        self.steps_per_epoch = max(1, len(self.train_idx) // config.train.batch_size)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            _lr_lambda(self.steps_per_epoch * config.train.epochs, self.steps_per_epoch * config.train.warmup_epochs),
        )
        self.start_epoch = 0
        self.best_mae = math.inf
        self.best_state: dict[str, torch.Tensor] | None = None
        self.epochs_without_improvement = 0
        self.history: list[dict[str, float]] = []

    # ----------------------------------------------------------------------------- checkpoints
    def state(self, epoch: int) -> dict:
        return {
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "best_mae": self.best_mae,
            "best_state": self.best_state,
            "epochs_without_improvement": self.epochs_without_improvement,
            "history": self.history,
        }

    def restore(self, checkpoint: dict) -> None:
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.best_mae = checkpoint["best_mae"]
        self.best_state = checkpoint["best_state"]
        self.epochs_without_improvement = checkpoint["epochs_without_improvement"]
        self.history = checkpoint["history"]
        self.start_epoch = checkpoint["epoch"] + 1

    # ----------------------------------------------------------------------------- one epoch
    def _batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's share of each global batch, in an order fixed by (seed, epoch)."""
        rng = np.random.default_rng([self.config.seed, epoch])
        order = self.train_idx[rng.permutation(len(self.train_idx))]
        size = self.config.train.batch_size
        batches = [order[i * size : (i + 1) * size] for i in range(self.steps_per_epoch)]
        return [batch[self.rank :: self.world] for batch in batches]

    def _loss(self, views: torch.Tensor, ages: torch.Tensor) -> torch.Tensor:
        if self.contrastive:
            batch, n_views = views.shape[:2]
            flat = views.flatten(0, 1)  # flat: [B * V, 1, X, Y, Z]
            if self.cuda and self.config.channels_last:
                flat = flat.contiguous(memory_format=torch.channels_last_3d)
            projections = self.network(flat, project=True)  # projections: [B * V, P]
            features = projections.float().view(batch, n_views, -1)  # features: [B, V, P]
            features, ages = distributed.gather_for_loss(features, ages)
            return self.loss_fn(features, ages)
        if self.cuda and self.config.channels_last:
            views = views.contiguous(memory_format=torch.channels_last_3d)
        predicted = self.network(views)  # predicted: [B] years
        scale = self.model.age_std
        return self.loss_fn((predicted.float() - self.model.age_mean) / scale, (ages - self.model.age_mean) / scale)

    def train_epoch(self, epoch: int) -> float:
        self.model.train()
        self.dataset.set_epoch(epoch)
        batches = self._batches(epoch)
        loader = DataLoader(
            Subset(self.dataset, np.concatenate(batches).tolist()),
            batch_size=len(batches[0]),
            shuffle=False,
            num_workers=self.config.num_workers,
            pin_memory=self.cuda,
        )
        losses = []
        bar = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{self.config.train.epochs}",
            disable=not self.progress or self.rank != 0,
            leave=False,
        )
        for views, ages in bar:
            views, ages = views.to(self.device, non_blocking=True), ages.to(self.device, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda and self.config.amp):
                loss = self._loss(views, ages)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss {float(loss)} at epoch {epoch + 1}; lower train.lr")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        return float(np.mean(losses))

    def evaluate(self) -> tuple[float, float]:
        """Fit the probe (contrastive) and return (train MAE, validation MAE) in years."""
        if self.contrastive:
            features = extract_features(self.model, self.volumes[self.train_idx], self.device)
            weight, bias = fit_linear_probe(
                features,
                self.ages[self.train_idx],
                float(self.model.age_mean),
                float(self.model.age_std),
                self.config.probe,
            )
            with torch.no_grad():
                self.model.regressor.weight.copy_(weight)
                self.model.regressor.bias.copy_(bias)
        train_mae = float(
            (predict_ages(self.model, self.volumes[self.train_idx], self.device) - self.ages[self.train_idx])
            .abs()
            .mean()
        )
        val_mae = float(
            (predict_ages(self.model, self.volumes[self.val_idx], self.device) - self.ages[self.val_idx]).abs().mean()
        )
        return train_mae, val_mae


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
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    try:
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
        trainer = _Trainer(config, run_dir, progress)
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


def _run_epoch(trainer: _Trainer, epoch: int, checkpoint_path: Path, progress: bool, is_main: bool) -> bool:
    """Train and evaluate one epoch, checkpoint it; return whether early stopping ends the run."""
    config = trainer.config
    started = time.perf_counter()
    train_loss = trainer.train_epoch(epoch)
    train_mae, val_mae = trainer.evaluate()
    improved = val_mae < trainer.best_mae
    if improved:
        trainer.best_mae = val_mae
        trainer.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in trainer.model.state_dict().items()})
        trainer.epochs_without_improvement = 0
    else:
        trainer.epochs_without_improvement += 1
    row = {
        "epoch": epoch + 1,
        "train_loss": train_loss,
        "train_mae": train_mae,
        "val_mae": val_mae,
        "lr": trainer.scheduler.get_last_lr()[0],
        "seconds": time.perf_counter() - started,
    }
    trainer.history.append(row)
    LOGGER.info(
        "epoch %d: loss %.4f train MAE %.2f val MAE %.2f%s",
        epoch + 1,
        train_loss,
        train_mae,
        val_mae,
        " *" if improved else "",
    )
    if progress and is_main:
        tqdm.write(
            f"epoch {epoch + 1}: loss {train_loss:.4f}  train MAE {train_mae:.2f}  val MAE {val_mae:.2f}{'  *' if improved else ''}"
        )
    if is_main:
        with atomic_path(checkpoint_path, suffix=".pt") as temp:
            torch.save(trainer.state(epoch), temp)
    patience = config.train.patience
    if patience is not None and trainer.epochs_without_improvement >= patience:
        LOGGER.info("early stop: no better validation MAE for %d epochs", patience)
        return True
    return False


def _remove_untrained_run(run_dir: Path, created: bool) -> None:
    """Remove what a failed training wrote before its first checkpoint (only the project's files)."""
    if created:
        clear_owned_folder(run_dir, "a failed run")
        return
    remove_owned(run_dir, [*RUN_FILES, "checkpoint.pt", *LOCK_FILES])


def _write_outputs(trainer: _Trainer, run_dir: Path) -> None:
    if trainer.best_state is None:  # resumed after the last epoch was checkpointed
        trainer.best_state = {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}
    trainer.model.load_state_dict(trainer.best_state)
    with atomic_path(run_dir / "model.pt", suffix=".pt") as temp:
        torch.save(trainer.model.state_dict(), temp)
    with atomic_path(run_dir / "metrics.csv", suffix=".csv") as temp:
        pd.DataFrame(trainer.history).to_csv(temp, index=False)
    predicted = predict_ages(trainer.model, trainer.volumes, trainer.device).numpy()
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
        )
        if c in trainer.frame.columns
    ]
    predictions = trainer.frame[columns].copy()
    predictions["predicted_age"] = predicted
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
