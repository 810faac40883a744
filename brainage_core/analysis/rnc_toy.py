"""The Rank-N-Contrast chapter's small experiments, beside its lesson code.

:func:`linear_readout_r2` measures how much of age a linear read-out finds in learned features
(the second stage of the book's two-stage recipe); :func:`fast_vs_loop_agreement` checks that
:class:`~brainage_core.losses.RnCLoss` equals the loop formulation
:func:`~brainage_core.losses.rnc_loss_loop` in value and gradient. Timing the two is
:func:`brainage_core.bench.bench_rnc_loss`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from brainage_core.losses import RnCLoss, rnc_loss_loop

__all__ = ["fast_vs_loop_agreement", "linear_readout_r2"]


def linear_readout_r2(features: np.ndarray, ages: np.ndarray) -> float:
    """R² of the least-squares linear fit (with intercept) of ``ages`` on ``features``, in-sample.

    Args:
        features: ``[N, D]`` feature vectors.
        ages: ``[N]`` targets.

    Returns:
        ``1 - var(residual) / var(ages)``: 1 when age is a linear function of the features, 0
        when the features carry none of it linearly.

    Raises:
        ValueError: the shapes do not match.
    """
    features, ages = np.asarray(features), np.asarray(ages)
    if features.ndim != 2 or ages.shape != (len(features),):
        raise ValueError(f"features must be [N, D] and ages [N], got {features.shape} and {ages.shape}")
    design = np.c_[features, np.ones(len(features))]  # design: [N, D + 1]
    coefficients, *_ = np.linalg.lstsq(design, ages, rcond=None)
    residual = ages - design @ coefficients
    return float(1 - residual.var() / ages.var())


def fast_vs_loop_agreement(
    views: Sequence[int] = (2, 3),
    batch_size: int = 32,
    dim: int = 16,
    ages: tuple[int, int] = (20, 30),
    temperature: float = 2.0,
    generator: torch.Generator | None = None,
) -> pd.DataFrame:
    """Values and gradients of :class:`RnCLoss` against :func:`rnc_loss_loop`, in float64.

    For each number of views, draws standard-normal features ``[batch_size, V, dim]`` and then
    integer ages in ``[ages[0], ages[1])`` (a narrow range gives many ties), from ``generator``
    (default: torch's global generator), and evaluates both losses and their gradients.

    Args:
        views: numbers of views ``V`` to check (each ``>= 2``).
        batch_size: subjects ``B``.
        dim: feature dimension ``D``.
        ages: integer age range, upper end excluded.
        temperature: the loss temperature.
        generator: random generator for features and ages.

    Returns:
        One row per ``V``: ``views``, ``fast``, ``loop`` (loss values), ``value rel. diff``
        (relative difference of the values) and ``max grad diff`` (largest absolute difference of
        the gradients).

    Raises:
        ValueError: fewer than two views or subjects.
    """
    if min(views, default=0) < 2 or batch_size < 2:
        raise ValueError(f"needs at least 2 views and 2 subjects, got views={tuple(views)}, batch_size={batch_size}")
    rows = []
    for n_views in views:
        features = torch.randn(
            batch_size, n_views, dim, dtype=torch.float64, requires_grad=True, generator=generator
        )  # features: [B, V, D]
        labels = torch.randint(ages[0], ages[1], (batch_size,), generator=generator).double()  # labels: [B]
        fast = RnCLoss(temperature=temperature)(features, labels)
        (fast_grad,) = torch.autograd.grad(fast, features)
        loop = rnc_loss_loop(features, labels, temperature=temperature)
        (loop_grad,) = torch.autograd.grad(loop, features)
        fast, loop = fast.detach(), loop.detach()
        rows.append(
            {
                "views": n_views,
                "fast": float(fast),
                "loop": float(loop),
                "value rel. diff": abs(float(fast - loop)) / abs(float(loop)),
                "max grad diff": float((fast_grad - loop_grad).abs().max()),
            }
        )
    return pd.DataFrame(rows)
