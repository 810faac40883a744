"""Run configuration: nested dataclasses with defaults in one place, YAML in and out.

A training run is described by :class:`RunConfig`. The CLI (``--config X.yaml --set
train.epochs=5``) and the notebooks' ``parameters`` cells map onto the same dotted field names.
Unknown keys are errors, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from brainage_core.data import DataConfig
from brainage_core.imaging import AugmentConfig
from brainage_core.models import ModelConfig

__all__ = ["LossConfig", "OptimConfig", "ProbeConfig", "RunConfig", "load_config", "apply_overrides", "config_to_dict"]


@dataclass
class LossConfig:
    """Training objective.

    Attributes:
        name: ``rnc``, ``ntxent``, ``supcon``, ``yaware`` (two-stage: contrastive encoder, then a
            linear L1 regressor on frozen features) or ``mse``, ``l1`` (end-to-end regression).
        params: keyword arguments of the loss (e.g. ``{temperature: 2.0}`` for RNC).
        n_views: augmented views per subject for contrastive losses.
    """

    name: str = "rnc"
    params: dict[str, Any] = field(default_factory=dict)
    n_views: int = 2


@dataclass
class OptimConfig:
    """Optimisation of the network (same budget for every loss in a comparison).

    Attributes:
        epochs: passes over the training set.
        batch_size: subjects per step (contrastive losses see ``batch_size * n_views`` views).
        optimizer: ``adamw`` or ``sgd``.
        lr: peak learning rate, reached after ``warmup_epochs`` of linear warm-up, then cosine decay.
        weight_decay: decoupled (AdamW) or L2 (SGD) weight decay.
        momentum: SGD momentum.
        warmup_epochs: epochs of linear warm-up.
        patience: stop after this many epochs without a better validation MAE (``None``: never).
    """

    epochs: int = 20
    batch_size: int = 16
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    warmup_epochs: int = 1
    patience: int | None = None


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
        channels_last: channels-last-3d memory format on CUDA.
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


def _coerce(value: Any, annotation: Any, name: str) -> Any:
    """Convert a YAML value to the field's declared type, with a clear error."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType")):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _coerce(value, non_none[0], name)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ValueError(f"config section {name!r} must be a mapping, got {value!r}")
        return _from_dict(annotation, value, name)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config field {name!r} must be a list, got {value!r}")
        item_type = args[0] if args else Any
        return tuple(_coerce(v, item_type, name) for v in value)
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ValueError(f"config field {name!r} must be a mapping, got {value!r}")
        return dict(value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ValueError(f"config field {name!r} must be true or false, got {value!r}")
        return value
    if annotation in (int, float, str):
        try:
            converted = annotation(value)
        except (TypeError, ValueError) as error:
            raise ValueError(f"config field {name!r} must be {annotation.__name__}, got {value!r}") from error
        if annotation is int and isinstance(value, float) and value != converted:
            raise ValueError(f"config field {name!r} must be an integer, got {value!r}")
        return converted
    return value


def _from_dict(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        where = f"section {prefix!r}" if prefix else "the config"
        raise ValueError(f"unknown key(s) {unknown} in {where}; valid keys: {sorted(names)}")
    kwargs = {key: _coerce(value, hints[key], f"{prefix}.{key}".lstrip(".")) for key, value in values.items()}
    return cls(**kwargs)


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
    """Apply ``section.key=value`` overrides (values parsed as YAML) to a nested dict."""
    result = yaml.safe_load(yaml.safe_dump(values)) or {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value (e.g. train.epochs=5)")
        dotted, raw = item.split("=", 1)
        keys = dotted.strip().split(".")
        target = result
        for key in keys[:-1]:
            target = target.setdefault(key, {})
            if not isinstance(target, dict):
                raise ValueError(f"override {item!r}: {key!r} is not a section")
        target[keys[-1]] = yaml.safe_load(raw)
    return result


def load_config(path: str | os.PathLike[str] | None = None, overrides: Iterable[str] = ()) -> RunConfig:
    """Read a YAML run config (or the defaults), apply overrides, validate types and names.

    Args:
        path: YAML file with any subset of the :class:`RunConfig` fields, or ``None``.
        overrides: ``section.key=value`` strings applied on top.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unknown keys or values of the wrong type (the message names the field).
    """
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: a run config must be a YAML mapping")
    return _from_dict(RunConfig, apply_overrides(values, overrides))
