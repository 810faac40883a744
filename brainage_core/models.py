"""Networks: a MONAI 3D ResNet encoder with a regression head and a projection head.

The encoder is MONAI's ResNet with ``feed_forward=False`` (global-average-pooled features),
one input channel, and a width set by ``widen_factor`` (0.25 gives 16-32-64-128 channels, a
net that trains on a laptop CPU at 3 mm; 1.0 is the full 64-512 width for GPUs).

:class:`BrainAgeModel` predicts age in years: its linear regressor works on standardised age
(``age_mean`` / ``age_std`` buffers, set from the training set), so MSE/L1 training is well
conditioned and a checkpoint carries everything needed to predict.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from monai.networks.nets import resnet10, resnet18, resnet34
from torch import nn

__all__ = ["ENCODERS", "BrainAgeModel", "ModelConfig", "build_model"]

ENCODERS = {"resnet10": resnet10, "resnet18": resnet18, "resnet34": resnet34}


@dataclass
class ModelConfig:
    """Architecture settings.

    Attributes:
        arch: ``resnet10``, ``resnet18`` or ``resnet34`` (MONAI factories).
        width: MONAI ``widen_factor``; channels are ``[64, 128, 256, 512] * width``.
        projection_dim: output size of the projection head used by contrastive losses; 0 applies
            the loss to the encoder features themselves, as the RNC authors' reference code does.
        conv1_stride: stride of the first convolution (2 keeps CPU runs fast).
    """

    arch: str = "resnet10"
    width: float = 0.25
    projection_dim: int = 128
    conv1_stride: int = 2

    def __post_init__(self) -> None:
        if self.arch not in ENCODERS:
            raise ValueError(f"unknown model.arch {self.arch!r}; use one of {sorted(ENCODERS)}")
        if not self.width > 0:
            raise ValueError(f"model.width must be > 0, got {self.width}")
        if self.projection_dim < 0:
            raise ValueError(f"model.projection_dim must be >= 0 (0: no projection head), got {self.projection_dim}")


class BrainAgeModel(nn.Module):
    """Encoder + linear age regressor + MLP projection head.

    Args:
        config: architecture settings.

    Shapes:
        input ``x``: ``[B, 1, X, Y, Z]``; ``features(x)``: ``[B, D]``; ``project(x)``:
        ``[B, P]``; ``forward(x)``: predicted age in years ``[B]``.
    """

    age_mean: torch.Tensor  # registered buffer, scalar: mean training age in years
    age_std: torch.Tensor  # registered buffer, scalar: standard deviation of training ages (>= 1)

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.encoder = ENCODERS[config.arch](
            spatial_dims=3,
            n_input_channels=1,
            feed_forward=False,
            widen_factor=config.width,
            conv1_t_stride=config.conv1_stride,
        )
        self.feature_dim = int(512 * config.width)
        self.regressor = nn.Linear(self.feature_dim, 1)
        self.projector = (
            nn.Sequential(
                nn.Linear(self.feature_dim, self.feature_dim),
                nn.ReLU(inplace=True),
                nn.Linear(self.feature_dim, config.projection_dim),
            )
            if config.projection_dim
            else nn.Identity()
        )
        self.register_buffer("age_mean", torch.tensor(0.0))
        self.register_buffer("age_std", torch.tensor(1.0))

    def set_age_scale(self, ages: torch.Tensor) -> None:
        """Set the standardisation of the regressor's target from training ages ``[N]``."""
        self.age_mean.fill_(float(ages.float().mean()))
        self.age_std.fill_(float(ages.float().std().clamp(min=1.0)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled encoder features ``[B, D]`` of volumes ``[B, 1, X, Y, Z]``."""
        return self.encoder(x)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Projection-head output ``[B, P]`` used by contrastive losses."""
        return self.projector(self.features(x))

    def regress(self, features: torch.Tensor) -> torch.Tensor:
        """Predicted age in years ``[B]`` from features ``[B, D]``."""
        return self.regressor(features).squeeze(-1) * self.age_std + self.age_mean

    def forward(self, x: torch.Tensor, project: bool = False) -> torch.Tensor:
        """Predicted age in years ``[B]`` of volumes ``[B, 1, X, Y, Z]``, or with
        ``project=True`` the projection ``[B, P]`` (one entry point, so DistributedDataParallel
        synchronises the gradients of either use)."""
        return self.project(x) if project else self.regress(self.features(x))


def build_model(config: ModelConfig) -> BrainAgeModel:
    """Build a :class:`BrainAgeModel` (randomly initialised; no pretrained weights are fetched)."""
    return BrainAgeModel(config)
