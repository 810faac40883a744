"""The training engine: one run's model, optimiser, epochs and evaluation (driven by :mod:`brainage_core.train`).

* **Regression** (``loss.name`` ``mse`` or ``l1``): encoder + linear regressor trained end to
  end on standardised age, averaged over ``n_views`` augmented views per subject (two by
  default: the forward and backward passes of a contrastive step, so compute is matched).
* **Two-stage contrastive** (``rnc``, ``ntxent``, ``supcon``, ``yaware``): the encoder and
  projection head are trained with the contrastive loss on ``n_views`` augmented views; at each
  evaluation a linear regressor is fitted with L1 on the frozen (un-augmented) encoder features
  of the training set (:func:`fit_linear_probe`).

Both use the same backbone, data, augmentation, views per step and epoch budget, and the same
batch loss (:func:`compute_loss`, also timed by :mod:`brainage_core.bench`). Only the rows a
run fits on (training and validation scans of the training groups) are loaded before training;
the test split and the other groups are read once, after the epoch is selected
(:meth:`Trainer.predict_every_row`). Each epoch's randomness is
derived from (seed, epoch), so a run resumed from :meth:`Trainer.state` ends with the same
weights as an uninterrupted one. Under ``torchrun`` each rank takes a slice of every global
batch and contrastive features are gathered across ranks with gradients
(:func:`~brainage_core.distributed.gather_for_loss`), so negatives span the global batch.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from sklearn.linear_model import RidgeCV
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from brainage_core import distributed
from brainage_core.config import ProbeConfig, RunConfig
from brainage_core.data import UnaugmentedDraws, VolumeDataset, assign_splits, open_manifest_volumes, training_subset
from brainage_core.imaging import ImageReadError
from brainage_core.inference import extract_features, predict_ages, resolve_device
from brainage_core.losses import CONTRASTIVE_LOSSES, REGRESSION_LOSSES, build_loss
from brainage_core.manifest import read_manifest
from brainage_core.models import build_model

__all__ = ["Trainer", "compute_loss", "fit_linear_probe", "torch_threads"]


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads (``None``: unchanged), then restore the caller's."""
    caller = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(caller)


def _lr_lambda(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Learning-rate factor per optimiser step: linear warm-up, then cosine decay to zero."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _optimizer(config: RunConfig, parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The optimiser ``config.train.optimizer`` (``adamw`` or ``sgd``) over ``parameters``."""
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


def compute_loss(
    network: nn.Module,
    loss_fn: nn.Module,
    views: torch.Tensor,
    ages: torch.Tensor,
    *,
    contrastive: bool,
    age_mean: torch.Tensor,
    age_std: torch.Tensor,
    channels_last: bool = False,
) -> torch.Tensor:
    """The training loss of one batch: forward pass, then the contrastive or regression loss.

    Contrastive: the projections of all views are gathered across ranks (with gradients; the
    input unchanged when not distributed) and ``loss_fn(features [B, V, P], ages [B])`` is
    returned. Regression: ``loss_fn`` compares predicted and true ages, both standardised with
    ``age_mean`` / ``age_std``. Projections and predictions are cast to float32 first (they may
    come out of a bfloat16 autocast region).

    Args:
        network: :class:`~brainage_core.models.BrainAgeModel`, possibly wrapped in
            ``DistributedDataParallel``.
        loss_fn: a loss of :func:`~brainage_core.losses.build_loss`.
        views: volumes ``[B, V, 1, X, Y, Z]`` (``V`` views per subject) or ``[B, 1, X, Y, Z]``
            (one view, regression only); regression losses average over all views.
        ages: ages in years ``[B]``.
        contrastive: whether ``loss_fn`` is a contrastive loss.
        age_mean: the model's target mean, a 0-d tensor (years).
        age_std: the model's target scale, a 0-d tensor (years).
        channels_last: feed the network channels-last-3d volumes (the model's weights must be in
            that layout too).

    Returns:
        Scalar loss.
    """
    if contrastive:
        batch, n_views = views.shape[:2]
        flat = views.flatten(0, 1)  # flat: [B * V, 1, X, Y, Z]
        if channels_last:
            flat = flat.contiguous(memory_format=torch.channels_last_3d)
        projections = network(flat, project=True)  # projections: [B * V, P]
        features = projections.float().view(batch, n_views, -1)  # features: [B, V, P]
        features, ages = distributed.gather_for_loss(features, ages)
        return loss_fn(features, ages)
    if views.dim() == 6:  # [B, V, 1, X, Y, Z]: every view is a regression sample of its subject's age
        ages = ages.repeat_interleave(views.shape[1])
        views = views.flatten(0, 1)  # views: [B * V, 1, X, Y, Z]
    if channels_last:
        views = views.contiguous(memory_format=torch.channels_last_3d)
    predicted = network(views)  # predicted: [B * V] years
    return loss_fn((predicted.float() - age_mean) / age_std, (ages - age_mean) / age_std)


class Trainer:
    """State and steps of one run; :func:`~brainage_core.train.train` drives it."""

    def __init__(self, config: RunConfig, progress: bool = False):
        self.config = config
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
        in_groups = self.frame["group"].isin(config.data.train_groups).to_numpy()
        split = self.frame["split"].to_numpy()
        # The rows the run fits on; volumes, ages, train_idx and val_idx index into these.
        self.fit_rows = np.flatnonzero(in_groups & np.isin(split, ("train", "val")))
        fit_frame = self.frame.iloc[self.fit_rows]
        # Read from the preprocessing cache when a batch needs them (data.in_memory: all held here).
        self.volumes = open_manifest_volumes(fit_frame, config.data, progress=progress and self.rank == 0)
        self.ages = torch.tensor(fit_frame["age"].to_numpy(), dtype=torch.float32)
        self.train_idx = np.flatnonzero(fit_frame["split"].to_numpy() == "train")
        self.train_idx = self.train_idx[training_subset(self.ages[self.train_idx].numpy(), config.data.train_subjects)]
        self.val_idx = np.flatnonzero(fit_frame["split"].to_numpy() == "val")
        if len(self.train_idx) < 2 or len(self.val_idx) < 1:
            raise ValueError(
                f"{config.data.manifest}: need >= 2 training and >= 1 validation scans of groups "
                f"{list(config.data.train_groups)}; found {len(self.train_idx)} and {len(self.val_idx)}"
            )
        self.dataset = VolumeDataset(
            self.volumes, self.ages, config.augment, n_views=config.loss.n_views, seed=config.seed
        )

        torch.manual_seed(config.seed)
        self.model = build_model(config.model)
        self.model.set_age_scale(self.ages[self.train_idx])
        # Each recipe trains one head: contrastive losses the projector (the regressor is fitted
        # by the probe), regression the regressor. Freezing the other keeps it out of the
        # optimiser and out of DistributedDataParallel's gradient synchronisation.
        (self.model.regressor if self.contrastive else self.model.projector).requires_grad_(False)
        self.model.to(self.device)
        if config.channels_last:
            self.model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]  # not in torch's stubs
        self.network: nn.Module = self.model
        if self.world > 1:
            self.network = DistributedDataParallel(self.model, device_ids=[self.device.index] if self.cuda else None)
        self.optimizer = _optimizer(config, [p for p in self.model.parameters() if p.requires_grad])
        # Every training subject once per epoch (or train.epoch_size draws), in
        # ceil(epoch_size / batch_size) batches of nearly equal size: the passes per epoch do not
        # depend on the batch size, so methods tuned to different batch sizes get the same compute.
        self.epoch_size = config.train.epoch_size or len(self.train_idx)
        self.steps_per_epoch = math.ceil(self.epoch_size / config.train.batch_size)
        # forward + backward passes of one image each, per epoch (the compute a comparison matches)
        self.passes_per_epoch = sum(len(batch) for batch in self._batches(0)) * self.world * config.loss.n_views
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
        n_draws = math.ceil(self.epoch_size / len(self.train_idx))
        # The r-th showing of a subject is dataset index r * len(dataset) + i: a fresh augmentation.
        order = np.concatenate(
            [self.train_idx[rng.permutation(len(self.train_idx))] + draw * len(self.dataset) for draw in range(n_draws)]
        )[: self.epoch_size]
        batches = np.array_split(order, self.steps_per_epoch)  # nearly equal sizes
        # Under DDP every rank needs the same local size: a batch drops its last len % world subjects.
        return [batch[: len(batch) - len(batch) % self.world][self.rank :: self.world] for batch in batches]

    def train_epoch(self, epoch: int) -> float:
        self.model.train()
        self.dataset.set_epoch(epoch)
        batches = self._batches(epoch)
        ends = np.cumsum([len(batch) for batch in batches])
        on_device = self.config.augment.on_device
        loader = DataLoader(
            Subset(UnaugmentedDraws(self.dataset) if on_device else self.dataset, np.concatenate(batches).tolist()),
            batch_sampler=[list(range(end - len(batch), end)) for batch, end in zip(batches, ends)],
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
        for batch in bar:
            if on_device:  # batch: volumes float16 [B, 1, X, Y, Z], ages [B], draw indices [B]
                volumes, ages = (part.to(self.device, non_blocking=True) for part in batch[:2])
                views = torch.stack(
                    [self.dataset.views(volume.float(), draw) for volume, draw in zip(volumes, batch[2].tolist())]
                )  # views: [B, V, 1, X, Y, Z] or [B, 1, X, Y, Z]
            else:
                views, ages = (part.to(self.device, non_blocking=True) for part in batch)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda and self.config.amp):
                loss = compute_loss(
                    self.network,
                    self.loss_fn,
                    views,
                    ages,
                    contrastive=self.contrastive,
                    age_mean=self.model.age_mean,
                    age_std=self.model.age_std,
                    channels_last=self.config.channels_last,
                )
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss {float(loss)} at epoch {epoch + 1}; lower train.lr")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        return float(np.mean(losses))

    def fit_epoch(self, epoch: int) -> tuple[dict[str, float], bool]:
        """Train one epoch, evaluate it, keep the weights if validation MAE improved.

        Returns:
            The epoch's row of the history (``epoch``, ``train_loss``, ``train_mae``,
            ``val_mae``, ``lr``, ``passes``: forward + backward passes of one image so far,
            ``seconds``) and whether early stopping ends the run (``train.patience`` epochs
            without improvement, once ``train.min_epochs`` are done).
        """
        started = time.perf_counter()
        train_loss = self.train_epoch(epoch)
        train_mae, val_mae = self.evaluate()
        if val_mae < self.best_mae:
            self.best_mae = val_mae
            self.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in self.model.state_dict().items()})
            self.epochs_without_improvement = 0
        else:
            self.epochs_without_improvement += 1
        row = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "train_mae": train_mae,
            "val_mae": val_mae,
            "lr": float(self.scheduler.get_last_lr()[0]),
            "passes": self.passes_per_epoch * (epoch + 1),
            "seconds": time.perf_counter() - started,
        }
        self.history.append(row)
        optim = self.config.train
        stop = optim.patience is not None and self.epochs_without_improvement >= optim.patience
        return row, stop and epoch + 1 >= optim.min_epochs

    def _probe(self, train_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The linear probe's ``weight [1, D]`` and ``bias [1]`` on training features ``[N_train, D]``."""
        return fit_linear_probe(
            train_features,
            self.ages[self.train_idx],
            float(self.model.age_mean),
            float(self.model.age_std),
            self.config.probe,
        )

    def evaluate(self) -> tuple[float, float]:
        """Fit the probe (contrastive) and return (train MAE, validation MAE) in years.

        Evaluation has no augmentation to overlap with, so with ``num_threads`` set it also takes
        the cores of the ``num_workers`` DataLoader workers, which are idle meanwhile.
        """
        threads, workers = self.config.num_threads, self.config.num_workers
        with torch_threads(threads + workers if threads and workers else None):
            return self._evaluate()

    def _evaluate(self) -> tuple[float, float]:
        # One pass over the training scans: their features fit the probe and give the train MAE.
        train_features = extract_features(self.model, self.volumes[self.train_idx], self.device)  # [N_train, D]
        if self.contrastive:
            weight, bias = self._probe(train_features)
            with torch.no_grad():
                self.model.regressor.weight.copy_(weight)
                self.model.regressor.bias.copy_(bias)
        with torch.no_grad():
            train_predicted = self.model.regress(train_features.to(self.device)).cpu()  # [N_train] years
        train_mae = float((train_predicted - self.ages[self.train_idx]).abs().mean())
        val_mae = float(
            (predict_ages(self.model, self.volumes[self.val_idx], self.device) - self.ages[self.val_idx]).abs().mean()
        )
        return train_mae, val_mae

    def predict_every_row(self) -> tuple[np.ndarray, np.ndarray]:
        """Predicted ages of every manifest row, by the model's head and by a linear probe.

        The rows the run did not fit on (the test split, the other groups) are read here, for the
        first time, after the epoch is selected. The probe (:func:`fit_linear_probe` on the frozen
        features of the training rows) reads every encoder out the same way; for contrastive runs
        it is the model's head.

        Returns:
            ``head [N]`` and ``probe [N]`` predicted ages in years, in manifest row order.
        """
        other_rows = np.setdiff1d(np.arange(len(self.frame)), self.fit_rows)
        features = torch.empty((len(self.frame), self.model.feature_dim))  # features: [N, D]
        features[self.fit_rows] = extract_features(self.model, self.volumes, self.device)
        if len(other_rows):
            try:
                other = open_manifest_volumes(self.frame.iloc[other_rows], self.config.data, False)
            except ImageReadError as error:
                raise ImageReadError(
                    f"training finished, but held-out scans (test split, other groups), read only now, "
                    f"cannot be used; fix or remove them and resume the run. {error}"
                ) from None
            features[other_rows] = extract_features(self.model, other, self.device)
        with torch.no_grad():
            head = self.model.regress(features.to(self.device)).cpu().numpy()
        if self.contrastive:
            return head, head.copy()
        weight, bias = self._probe(features[self.fit_rows[self.train_idx]])
        standardised = (features @ weight.T + bias).squeeze(-1)  # standardised: [N]
        return head, (standardised * self.model.age_std.cpu() + self.model.age_mean.cpu()).numpy()
