"""Run configuration: nested dataclasses with every default in one place, YAML in and out.

A training run is described by :class:`RunConfig`; the synthetic cohort a run trains on when no
manifest is given by :class:`CohortConfig`. The defaults here ARE the book's default (2-core CPU)
settings: the CLI, the notebooks and ``book/runs.yml`` only ever override them, all in one
language, dotted ``section.key=value`` strings (``--set train.epochs=5`` on the command line, the
notebooks' ``overrides`` parameter, a profile's ``overrides`` in ``runs.yml``).

Loading validates the whole config and lists every problem at once (unknown keys, types,
ranges, names, the loss's parameters against its signature), so a typo never silently falls
back to a default and never surfaces after hours of preprocessing. Plain dataclasses with one
loader (:func:`~brainage_core.config_loader.dataclass_from_dict`, re-exported here, also used by
the synthetic phantom's ``SynthConfig``) were kept over pydantic or OmegaConf: the loader is ~150
lines, lists all problems rather than the first, and adds no dependency.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from brainage_core.config_loader import ConfigError, dataclass_from_dict
from brainage_core.data import DataConfig
from brainage_core.imaging import AugmentConfig
from brainage_core.models import ModelConfig

__all__ = [
    "CohortConfig",
    "ConfigError",
    "LossConfig",
    "OptimConfig",
    "ProbeConfig",
    "RunConfig",
    "apply_overrides",
    "config_problems",
    "config_to_dict",
    "dataclass_from_dict",
    "load_cohort_config",
    "load_config",
    "split_overrides",
    "with_overrides",
]

OPTIMIZERS = ("adamw", "sgd")
MAX_LEARNING_RATE = 10.0  # far above any sensible value; larger ones are typos (1e12)
MIN_SPACING_MM, MAX_SPACING_MM = 0.5, 16.0
MAX_GRID_SIZE = 512  # voxels per axis of the network input


@dataclass
class LossConfig:
    """Training objective.

    Attributes:
        name: ``rnc``, ``ntxent``, ``supcon``, ``yaware`` (two-stage: contrastive encoder, then a
            linear L1 regressor on frozen features) or ``mse``, ``l1`` (end-to-end regression).
        params: keyword arguments of the loss (e.g. ``{temperature: 2.0}`` for RNC).
        n_views: augmented views of each subject per step, for every loss: contrastive losses
            contrast them, regression losses average over them. Two for all methods gives every
            method the same forward and backward passes per step (matched compute).
    """

    name: str = "rnc"
    params: dict[str, Any] = field(default_factory=dict)
    n_views: int = 2


@dataclass
class OptimConfig:
    """Optimisation of the network (same budget for every loss in a comparison).

    Attributes:
        epochs: the most passes over the training set (the cosine schedule spans them); early
            stopping usually ends a run before (see ``patience``).
        batch_size: subjects per step (the network sees ``batch_size * loss.n_views`` views); an
            epoch shows every training subject once, in ``ceil(N / batch_size)`` batches of
            nearly equal size.
        epoch_size: subjects shown per epoch (``None``: the N training subjects once). Larger
            than N, the subjects are cycled (each shown ``epoch_size // N`` or one more times,
            with fresh augmentations), so a run on a subset takes as many optimiser steps per
            epoch as one on the full training set: the learning curve's step-matched schedule.
        optimizer: ``adamw`` or ``sgd``.
        lr: peak learning rate, reached after ``warmup_epochs`` of linear warm-up, then cosine decay.
        weight_decay: decoupled (AdamW) or L2 (SGD) weight decay.
        momentum: SGD momentum.
        warmup_epochs: epochs of linear warm-up.
        patience: stop after this many epochs without a better validation MAE (``None``: never).
        min_epochs: early stopping never ends a run before this epoch: an end-to-end regressor
            can sit at the mean age for its first epochs before it starts to learn.
    """

    epochs: int = 30
    batch_size: int = 16
    epoch_size: int | None = None
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    warmup_epochs: int = 1
    patience: int | None = 6
    min_epochs: int = 10


@dataclass
class ProbeConfig:
    """The linear regressor fitted with L1 on frozen encoder features (two-stage methods).

    Attributes:
        steps: full-batch Adam steps after the ridge initialisation.
        lr: Adam learning rate (on standardised features and ages).
        ridge: L2 penalty on the weights (standardised features, scikit-learn's Ridge ``alpha``);
            ``None`` chooses it by leave-one-out cross-validation on the training features.
    """

    steps: int = 300
    lr: float = 0.01
    ridge: float | None = None


@dataclass
class RunConfig:
    """Everything that defines a training run.

    Attributes:
        data, model, loss, train, augment, probe: the sections above.
        seed: seeds weights, batch order and every augmentation.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        num_threads: CPU threads for torch (``None``: torch's default).
        num_workers: DataLoader worker processes for augmentation.
        amp: bfloat16 autocast on CUDA (ignored on CPU).
        channels_last: channels-last-3d memory format for the network's weights and inputs in
            training (CUDA and CPU; on the book's 2-core CPU a 3 mm RNC epoch takes 6.7 s instead
            of 7.0 s).
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    seed: int = 0
    device: str = "auto"
    num_threads: int | None = None
    num_workers: int = 0
    amp: bool = True
    channels_last: bool = True


@dataclass
class CohortConfig:
    """The synthetic cohort (:mod:`brainage_core.cohorts.synthetic`) used when no manifest is given.

    Set with ``cohort.``-prefixed overrides (``cohort.n_subjects=1000``) beside the run's own.

    Attributes:
        n_subjects: number of subjects (healthy controls, AD and PD; see the phantom's config).
        seed: the cohort's seed (same seed, same files).
        spacing: voxel size of the generated images in mm (the network input is resampled to
            ``data.spacing``).
    """

    n_subjects: int = 300
    seed: int = 0
    spacing: float = 3.0


COHORT_PREFIX = "cohort."


def _check_range(
    problems: list[str],
    name: str,
    value: float | None,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    hint: str = "",
) -> None:
    if value is None:
        return
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and value > high
    if too_low or too_high:
        bound = f"{'>' if low_open else '>='} {low:g}" if low is not None else ""
        if high is not None:
            bound = f"{bound} and <= {high:g}" if bound else f"<= {high:g}"
        problems.append(f"{name}: must be {bound}, got {value!r}{hint}")


def config_problems(config: RunConfig) -> list[str]:
    """Every problem of a typed config: ranges, names and the loss's parameters."""
    from brainage_core.losses import CONTRASTIVE_LOSSES, REGRESSION_LOSSES, build_loss, loss_parameters
    from brainage_core.models import ENCODERS

    problems: list[str] = []
    optim = config.train
    _check_range(problems, "train.epochs", optim.epochs, 1)
    _check_range(
        problems,
        "train.batch_size",
        optim.batch_size,
        2,
        hint=" (batch normalisation and contrastive losses need >= 2 scans a step)",
    )
    _check_range(problems, "train.lr", optim.lr, 0, MAX_LEARNING_RATE, low_open=True)
    _check_range(problems, "train.weight_decay", optim.weight_decay, 0)
    _check_range(problems, "train.momentum", optim.momentum, 0, 1)
    _check_range(problems, "train.epoch_size", optim.epoch_size, 1)
    _check_range(problems, "train.warmup_epochs", optim.warmup_epochs, 0)
    _check_range(problems, "train.patience", optim.patience, 1)
    _check_range(problems, "train.min_epochs", optim.min_epochs, 1)
    if optim.optimizer not in OPTIMIZERS:
        problems.append(f"train.optimizer: unknown optimizer {optim.optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
    loss = config.loss
    if loss.name not in CONTRASTIVE_LOSSES + REGRESSION_LOSSES:
        problems.append(
            f"loss.name: unknown loss {loss.name!r}; use one of {', '.join(CONTRASTIVE_LOSSES + REGRESSION_LOSSES)}"
        )
    else:
        valid = loss_parameters(loss.name)
        for key in sorted(set(loss.params) - set(valid), key=str):
            problems.append(
                f"loss.params.{key}: not a parameter of loss {loss.name!r}; its parameters: {', '.join(valid) or 'none'}"
            )
        if set(loss.params) <= set(valid):
            try:
                build_loss(loss.name, **loss.params)
            except (ValueError, TypeError) as error:
                problems.append(f"loss.params: {error}")
    if loss.name in CONTRASTIVE_LOSSES:
        _check_range(
            problems, "loss.n_views", loss.n_views, 2, hint=f" ({loss.name} contrasts several views of each scan)"
        )
    else:
        _check_range(problems, "loss.n_views", loss.n_views, 1)
    model = config.model
    if model.arch not in ENCODERS:
        problems.append(f"model.arch: unknown architecture {model.arch!r}; use one of {', '.join(sorted(ENCODERS))}")
    _check_range(problems, "model.width", model.width, 1 / 64, 16, hint=" (the first stage has 64 * width channels)")
    _check_range(problems, "model.conv1_stride", model.conv1_stride, 1, 4)
    data = config.data
    _check_range(problems, "data.spacing", data.spacing, MIN_SPACING_MM, MAX_SPACING_MM)
    for axis, size in enumerate(data.shape):
        _check_range(problems, f"data.shape[{axis}]", size, 8, MAX_GRID_SIZE)
    if len(data.shape) != 3:
        problems.append(f"data.shape: must be three sizes [X, Y, Z], got {list(data.shape)}")
    _check_range(problems, "data.test_fold", data.test_fold, 0)
    _check_range(problems, "data.train_subjects", data.train_subjects, 2)
    if not data.train_groups:
        problems.append("data.train_groups: must name at least one group (e.g. [CN])")
    augment = config.augment
    for name in ("translate_vox", "intensity_shift", "intensity_scale", "bias_field", "noise_std"):
        _check_range(problems, f"augment.{name}", getattr(augment, name), 0)
    _check_range(problems, "augment.rotate_deg", augment.rotate_deg, 0, 180)
    _check_range(problems, "augment.scale", augment.scale, 0, 0.5)
    probe = config.probe
    _check_range(problems, "probe.steps", probe.steps, 0)
    _check_range(problems, "probe.lr", probe.lr, 0, 10, low_open=True)
    _check_range(problems, "probe.ridge", probe.ridge, 0, low_open=True)
    _check_range(problems, "seed", config.seed, 0)
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", config.device):
        problems.append(f"device: unknown device {config.device!r}; use auto, cpu, cuda or cuda:N")
    _check_range(problems, "num_threads", config.num_threads, 1)
    _check_range(problems, "num_workers", config.num_workers, 0)
    return list(dict.fromkeys(problems))


def split_overrides(overrides: Iterable[str]) -> tuple[list[str], list[str]]:
    """Split dotted overrides into the cohort's (prefix ``cohort.`` removed) and the run's."""
    cohort, run = [], []
    for item in overrides:
        if item.strip().startswith(COHORT_PREFIX):
            cohort.append(item.strip()[len(COHORT_PREFIX) :])
        else:
            run.append(item)
    return cohort, run


def load_cohort_config(overrides: Iterable[str] = ()) -> CohortConfig:
    """The cohort settings with ``key=value`` overrides (without the ``cohort.`` prefix), validated.

    Raises:
        ConfigError: every problem (unknown key, type, range), each naming its ``cohort.`` field.
    """
    problems: list[str] = []
    config = dataclass_from_dict(CohortConfig, apply_overrides({}, overrides), problems, "cohort")
    if not problems:
        _check_range(
            problems, "cohort.n_subjects", config.n_subjects, 4, hint=" (the cohort is split into train/val/test)"
        )
        _check_range(problems, "cohort.seed", config.seed, 0)
        _check_range(problems, "cohort.spacing", config.spacing, 1.0, 8.0)
    if problems:
        raise ConfigError(problems, "the cohort settings")
    return config


def config_to_dict(config: Any) -> dict[str, Any]:
    """A plain, YAML-safe dict of a (nested) dataclass config; tuples become lists."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(config)


def apply_overrides(values: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to a nested dict.

    Raises:
        ConfigError: an override is malformed or its value is not valid YAML (all are listed).
    """
    result = yaml.safe_load(yaml.safe_dump(values)) or {}
    problems = []
    for item in overrides:
        if "=" not in item:
            problems.append(f"--set {item!r}: must look like section.key=value (e.g. train.epochs=5)")
            continue
        dotted, raw = item.split("=", 1)
        keys = dotted.strip().split(".")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            problems.append(f"--set {item!r}: the value is not valid YAML ({' '.join(str(error).split())})")
            continue
        target = result
        for key in keys[:-1]:
            target = target.setdefault(key, {})
            if not isinstance(target, dict):
                problems.append(f"--set {item!r}: {key!r} is not a section")
                break
        else:
            target[keys[-1]] = value
    if problems:
        raise ConfigError(problems, "overrides")
    return result


def with_overrides(config: RunConfig, overrides: Iterable[str], source: str = "the overrides") -> RunConfig:
    """A validated copy of ``config`` with ``section.key=value`` overrides applied.

    Raises:
        ConfigError: every problem of the result, naming ``source``.
    """
    problems: list[str] = []
    result = dataclass_from_dict(RunConfig, apply_overrides(config_to_dict(config), overrides), problems)
    problems += config_problems(result)
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)), source)
    return result


def load_config(path: str | os.PathLike[str] | None = None, overrides: Iterable[str] = ()) -> RunConfig:
    """Read a YAML run config (or the defaults), apply overrides, validate types and names.

    Args:
        path: YAML file with any subset of the :class:`RunConfig` fields, or ``None``.
        overrides: ``section.key=value`` strings applied on top.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ConfigError: (a ValueError) every unknown key, wrong type and out-of-range value,
            each naming its field; broken YAML in the file or an override.
    """
    values: dict[str, Any] = {}
    source = "the run config"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError([f"not valid YAML ({' '.join(str(error).split())})"], source) from None
        except UnicodeDecodeError:
            raise ConfigError(["not a text (YAML) file"], source) from None
        if not isinstance(values, dict):
            raise ConfigError(
                ["a run config must be a YAML mapping of sections (data, model, loss, train, ...)"], source
            )
    problems: list[str] = []
    config = dataclass_from_dict(RunConfig, apply_overrides(values, overrides), problems)
    problems += config_problems(config)
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)), source + (" with the overrides" if overrides else ""))
    return config
