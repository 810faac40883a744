"""Training losses: Rank-N-Contrast, contrastive baselines and regression losses.

Every contrastive loss shares one call signature, ``loss(features, labels)``, with

* ``features``: ``[B, V, D]`` -- ``B`` subjects, ``V >= 2`` augmented views each,
  ``D``-dimensional embeddings;
* ``labels``: ``[B]`` or ``[B, 1]`` -- one (float) age per subject.

All ``n = V * B`` view-samples are pooled (view-major order, every view carries
its subject's age) and each sample serves as an anchor against the other
``n - 1``.

Rank-N-Contrast (Zha et al., NeurIPS 2023) for anchor ``i`` and other sample
``j != i`` contrasts ``j`` against every ``k != i`` whose label is at least as far
from ``y_i`` as ``y_j`` is (ties and ``j`` itself included)::

    l_ij = -log( exp(s_ij) / sum_{k != i, d_ik >= d_ij} exp(s_ik) )
    L    = mean over the n (n - 1) ordered pairs (i, j) of l_ij

:class:`RnCLoss` evaluates this without any loop over samples in ``O(n^2 + U^2
log U)`` time and ``O(n^2)`` memory (``U <= B`` distinct ages);
:func:`rnc_loss_loop` is the per-column loop of the authors' reference code and
serves as the ground truth for tests and benchmarks.

The InfoNCE baselines (:class:`NTXentLoss`, :class:`SupConLoss`,
:class:`YAwareLoss`) share :class:`InfoNCELoss` and differ only in which other
samples count as an anchor's positives, and how much
(:meth:`InfoNCELoss.positive_weights`).
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = [
    "CONTRASTIVE_LOSSES",
    "FEATURE_SIMILARITIES",
    "LABEL_DIFFERENCES",
    "REGRESSION_LOSSES",
    "InfoNCELoss",
    "NTXentLoss",
    "RegressionLoss",
    "RnCLoss",
    "SupConLoss",
    "YAwareLoss",
    "build_loss",
    "loss_parameters",
    "rnc_loss_loop",
]

CONTRASTIVE_LOSSES: tuple[str, ...] = ("rnc", "ntxent", "supcon", "yaware")
REGRESSION_LOSSES: tuple[str, ...] = ("mse", "l1")
LABEL_DIFFERENCES: tuple[str, ...] = ("l1", "l2")
FEATURE_SIMILARITIES: tuple[str, ...] = ("l2", "cosine")


# --------------------------------------------------------------------------- #
# Shared helpers
# --------------------------------------------------------------------------- #
def _check_positive(name: str, value: float) -> float:
    """Return ``value`` as a float after checking it is a finite positive number.

    Raises:
        ValueError: If ``value`` is not finite and strictly positive.
    """
    value = float(value)
    if not (value > 0.0 and value != float("inf")):
        raise ValueError(f"{name} must be a finite positive number, got {value}; pass e.g. {name}=1.0")
    return value


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    """Return ``value`` after checking it is one of ``choices``.

    Raises:
        ValueError: If ``value`` is not in ``choices``.
    """
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {choices}")
    return value


def _pool_views(features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Validate contrastive-loss inputs and pool the views into one sample axis.

    Args:
        features: Embeddings, shape ``[B, V, D]`` with ``B >= 2`` and ``V >= 2``.
        labels: Ages, shape ``[B]`` or ``[B, 1]``, all finite.

    Returns:
        ``(z, y, subject)``: pooled embeddings ``[V*B, D]``, the matching ages
        ``[V*B]`` (in ``features``' dtype and device) and subject indices
        ``[V*B]``; sample ``v * B + b`` is view ``v`` of subject ``b``.

    Raises:
        ValueError: If a shape is wrong, the batch holds fewer than two subjects
            or a label is NaN/infinite.
    """
    if features.dim() != 3:
        raise ValueError(
            f"features must have shape [B, V, D] (subjects, views, embedding dim), got shape "
            f"{tuple(features.shape)}; stack the augmented views along dim 1"
        )
    batch, views, dim = features.shape
    if views < 2:
        raise ValueError(
            f"contrastive losses need at least two views per subject (features.shape[1] >= 2), got "
            f"V={views}; produce two or more augmentations of every volume"
        )
    if batch < 2:
        raise ValueError(
            f"contrastive losses need at least two subjects per batch, got a batch of {batch}; increase "
            f"the batch size or use drop_last=True in the DataLoader so no batch of one is produced"
        )
    if not (labels.dim() == 1 or (labels.dim() == 2 and labels.shape[1] == 1)) or labels.numel() != batch:
        raise ValueError(
            f"features hold B={batch} subjects but labels have shape {tuple(labels.shape)} "
            f"({labels.numel()} values); pass one age per subject with shape [{batch}] or [{batch}, 1]"
        )
    finite = torch.isfinite(labels)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ValueError(
            f"labels contain {bad} NaN or infinite value(s) out of {batch}; drop subjects with a "
            f"missing age before building the batch"
        )
    ages = labels.reshape(batch).to(device=features.device, dtype=features.dtype)  # ages: [B]
    z = features.transpose(0, 1).reshape(views * batch, dim)  # z: [V*B, D], view-major
    y = ages.repeat(views)  # y: [V*B]
    subject = torch.arange(batch, device=features.device).repeat(views)  # subject: [V*B]
    return z, y, subject


def _off_diagonal(matrix: Tensor) -> Tensor:
    """Drop the diagonal of a square matrix without masking.

    Args:
        matrix: Square matrix, shape ``[n, n]``.

    Returns:
        The off-diagonal entries, shape ``[n, n - 1]``; row ``i`` holds
        ``matrix[i, j]`` for ``j != i`` in increasing ``j``.
    """
    n = matrix.shape[0]
    # rows of length n+1 start right after a diagonal entry and end on the next one
    shifted = matrix.flatten()[1:].view(n - 1, n + 1)  # shifted: [n-1, n+1]
    return shifted[:, :-1].reshape(n, n - 1)  # off-diagonal: [n, n-1]


def _pairwise_similarity(z: Tensor, kind: str) -> Tensor:
    """Pairwise feature similarity.

    Args:
        z: Embeddings, shape ``[n, D]``.
        kind: ``"l2"`` for negative Euclidean distance, ``"cosine"`` for cosine
            similarity.

    Returns:
        Similarity matrix, shape ``[n, n]``. The ``"l2"`` branch uses the matrix-
        product form ``|a|^2 + |b|^2 - 2ab`` (BLAS speed, ``O(n^2)`` memory) on
        batch-centred features: distances are translation invariant and centring
        keeps the cancellation error at about ``sqrt(eps)`` times the batch
        spread instead of the feature norm. Zero distances get a finite (zero)
        gradient.
    """
    if kind == "l2":
        centred = z - z.mean(dim=0, keepdim=True)  # centred: [n, D]
        return -torch.cdist(centred, centred, p=2.0, compute_mode="use_mm_for_euclid_dist")  # [n, n]
    unit = F.normalize(z, dim=1)  # unit: [n, D]
    return unit @ unit.T  # [n, n]


def _pairwise_label_difference(y: Tensor, kind: str) -> Tensor:
    """Pairwise label difference, ``|y_i - y_k|`` (``"l1"``) or ``(y_i - y_k)^2`` (``"l2"``).

    Args:
        y: Labels, shape ``[n]``.
        kind: ``"l1"`` or ``"l2"``.

    Returns:
        Difference matrix, shape ``[n, n]``.
    """
    delta = y[:, None] - y[None, :]  # delta: [n, n]
    return delta.abs() if kind == "l1" else delta.square()


def _uniform_over_matches(groups: Tensor, dtype: torch.dtype) -> Tensor:
    """Uniform target weights over the other samples of the same group.

    Args:
        groups: Integer group id per pooled sample, shape ``[n]``; every sample
            must share its group with at least one other sample.
        dtype: Floating dtype of the returned weights.

    Returns:
        Off-diagonal weights, shape ``[n, n - 1]``, each row summing to one.
    """
    same = _off_diagonal(groups[:, None] == groups[None, :])  # same: [n, n-1]
    same = same.to(dtype)
    return same / same.sum(dim=1, keepdim=True)  # [n, n-1]


# --------------------------------------------------------------------------- #
# Rank-N-Contrast
# --------------------------------------------------------------------------- #
def _segment_logsumexp(logits: Tensor, groups: Tensor, num_groups: int) -> Tensor:
    """Row-wise logsumexp of ``logits`` within groups, stabilised per (row, group).

    Args:
        logits: Values, shape ``[n, m]``.
        groups: Group index in ``[0, num_groups)`` of every entry, shape ``[n, m]``;
            every row must hold every group at least once.
        num_groups: Number of groups ``U``.

    Returns:
        ``out[i, g] = log sum_{c: groups[i, c] = g} exp(logits[i, c])``, shape ``[n, U]``.
        Each group sum is shifted by its own maximum, so it lies in ``[1, m]``:
        no overflow, no underflow to ``log(0)``.
    """
    n = logits.shape[0]
    shift = logits.new_full((n, num_groups), float("-inf"))  # shift: [n, U]
    shift = shift.scatter_reduce(1, groups, logits.detach(), reduce="amax")  # shift: [n, U]
    scaled = torch.exp(logits - torch.gather(shift, 1, groups))  # scaled: [n, m], in (0, 1]
    sums = torch.zeros_like(shift).scatter_add(1, groups, scaled)  # sums: [n, U], >= 1
    return shift + sums.log()


def _rank_label_groups(ages: Tensor, group_size: Tensor, label_diff: str) -> tuple[Tensor, Tensor]:
    """Order the label groups by decreasing label difference from every anchor group.

    Args:
        ages: Distinct ages in increasing order, shape ``[U]``.
        group_size: Number of pooled samples with each age, shape ``[U]``.
        label_diff: ``"l1"`` or ``"l2"``.

    Returns:
        ``(order, pairs_ending_at)``, both ``[U, U]``. Row ``p`` of ``order`` lists the
        groups by decreasing difference from age ``ages[p]`` (the anchor's own group,
        at difference 0, comes last). ``pairs_ending_at[p, t]`` counts the pairs
        ``(i, j)``, ``i`` of group ``p`` fixed and ``j != i``, whose RNC denominator
        spans sorted positions ``0..t``: pairs with ``j`` in a group of a tie
        (equal difference) are counted at the tie's last position.
    """
    diffs = _pairwise_label_difference(ages, label_diff)  # diffs: [U, U]
    sorted_diffs, order = torch.sort(diffs, dim=1, descending=True)  # both: [U, U]
    ascending = -sorted_diffs  # ascending: [U, U]
    tie_end = torch.searchsorted(ascending, ascending, right=True) - 1  # tie_end: [U, U]
    num_groups = ages.shape[0]
    own = torch.eye(num_groups, dtype=ages.dtype, device=ages.device)  # own: [U, U]
    pair_counts = group_size.to(ages.dtype).expand(num_groups, num_groups) - own  # [U, U], j != i
    sorted_counts = torch.gather(pair_counts, 1, order)  # sorted_counts: [U, U]
    pairs_ending_at = torch.zeros_like(sorted_counts).scatter_add_(1, tie_end, sorted_counts)  # [U, U]
    return order, pairs_ending_at


class _WeightedLogCumSumExp(torch.autograd.Function):
    """``sum(weight * logcumsumexp(logits, dim=1))`` for non-negative, constant weights.

    PyTorch's generic ``logcumsumexp`` backward runs two reverse scans (for the
    positive and the negative part of the incoming gradient). Here the incoming
    gradient is a non-negative count, so one stable reverse scan suffices::

        d/dl_s sum_t w_t C_t = sum_{t >= s} w_t exp(l_s - C_t)
                             = exp(l_s + logsumexp_{t >= s}(log w_t - C_t))

    with ``C = logcumsumexp(l)``; every exponent ``l_s - C_t`` is ``<= 0``, so
    nothing overflows. Zero weights give ``log w = -inf`` terms, which the scan
    handles exactly; ``logits`` must be finite.
    """

    @staticmethod
    def forward(ctx: Any, logits: Tensor, weight: Tensor) -> Tensor:
        """Forward pass.

        Args:
            ctx: Autograd context.
            logits: Row-wise logits, shape ``[n, m]``.
            weight: Non-negative weights (no gradient), shape ``[n, m]``.

        Returns:
            Scalar ``sum(weight * logcumsumexp(logits, dim=1))``.
        """
        log_cumsum = torch.logcumsumexp(logits, dim=1)  # log_cumsum: [n, m]
        ctx.save_for_backward(logits, log_cumsum, weight)
        return (weight * log_cumsum).sum()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        """Backward pass: gradient w.r.t. ``logits`` (shape ``[n, m]``), none for ``weight``."""
        logits, log_cumsum, weight = ctx.saved_tensors
        reversed_terms = (weight.log() - log_cumsum).flip(1)  # reversed_terms: [n, m]
        tail = torch.logcumsumexp(reversed_terms, dim=1).flip(1)  # tail: [n, m]
        return grad_output * torch.exp(logits + tail), None


class RnCLoss(nn.Module):
    """Rank-N-Contrast loss (Zha et al., NeurIPS 2023) without any loop over samples.

    The denominator of pair ``(i, j)`` only depends on the anchor ``i`` and on the
    *age* of ``j``, and it is a union of whole age groups. With ``U`` distinct
    ages (``U <= B``: the ``V`` views of a subject share its age):

    1. ``G[i, g]``: logsumexp of ``s_ik`` over the samples ``k != i`` of age group
       ``g`` (segment logsumexp, shifted per cell, the diagonal dropped exactly).
    2. Per anchor age, the ``U`` groups are sorted once by decreasing label
       difference (a ``[U, U]`` table); ``logcumsumexp`` of ``G[i]`` in that order
       gives at position ``t`` the log-sum over the ``t + 1`` farthest groups.
    3. The denominator of ``(i, j)`` is that value at the *end* of the tie of
       ``j``'s group (``searchsorted``), so tied differences are all included;
       since the loss is a mean over pairs, each position is weighted by the
       number of pairs whose denominator ends there instead of gathering back::

           L = (sum_{i, t} count_it * C_it - sum_{i != j} s_ij) / (n (n - 1))

    Cost: ``O(n^2 + U^2 log U)`` time (at most ``O(n^2 log n)``) and ``O(n^2)``
    memory for ``n = V * B``; no Python loop over samples and no ``-inf`` masking.
    Equal to :func:`rnc_loss_loop` up to rounding; the ``"l2"`` distances use the
    matrix-product form on batch-centred features (see ``_pairwise_similarity``).

    Args:
        temperature: Temperature ``T`` dividing the similarities.
        label_diff: ``"l1"`` (``|y_i - y_k|``) or ``"l2"`` (squared difference).
        feature_sim: ``"l2"`` (``-||v_i - v_k||_2``) or ``"cosine"``.

    Raises:
        ValueError: If ``temperature`` is not positive or a distance name is unknown.
    """

    def __init__(self, temperature: float = 2.0, label_diff: str = "l1", feature_sim: str = "l2") -> None:
        super().__init__()
        self.temperature = _check_positive("temperature", temperature)
        self.label_diff = _check_choice("label_diff", label_diff, LABEL_DIFFERENCES)
        self.feature_sim = _check_choice("feature_sim", feature_sim, FEATURE_SIMILARITIES)

    def extra_repr(self) -> str:
        """Hyper-parameters shown by ``repr``."""
        return f"temperature={self.temperature}, label_diff={self.label_diff!r}, feature_sim={self.feature_sim!r}"

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        """Compute the loss.

        Args:
            features: Embeddings, shape ``[B, V, D]``.
            labels: Ages, shape ``[B]`` or ``[B, 1]``.

        Returns:
            Scalar loss (mean over the ``n (n - 1)`` ordered pairs).
        """
        z, y, _ = _pool_views(features, labels)
        n = z.shape[0]
        logits = _off_diagonal(_pairwise_similarity(z, self.feature_sim)) / self.temperature  # [n, n-1]
        ages, group, group_size = torch.unique(y, return_inverse=True, return_counts=True)  # [U], [n], [U]
        column_group = _off_diagonal(group.expand(n, n))  # column_group: [n, n-1], age group of sample j
        group_logits = _segment_logsumexp(logits, column_group, ages.shape[0])  # group_logits: [n, U]
        order, pairs_ending_at = _rank_label_groups(ages, group_size, self.label_diff)  # both: [U, U]
        sorted_group_logits = torch.gather(group_logits, 1, order[group])  # sorted_group_logits: [n, U]
        sum_log_denominators = _WeightedLogCumSumExp.apply(sorted_group_logits, pairs_ending_at[group])
        return (sum_log_denominators - logits.sum()) / logits.numel()


def rnc_loss_loop(
    features: Tensor,
    labels: Tensor,
    temperature: float = 2.0,
    label_diff: str = "l1",
    feature_sim: str = "l2",
) -> Tensor:
    """Rank-N-Contrast in the per-column loop formulation of the authors' code.

    Reference implementation, used by the tests and by
    :func:`brainage_core.bench.bench_rnc_loss`. It ports ``loss.py`` of
    github.com/kaiwenzha/Rank-N-Contrast as literally as possible -- explicit
    ``[n, n, D]`` feature differences, row-max-shifted ``exp``, diagonal removed
    with ``masked_select``, then a loop over the ``n - 1`` columns that builds each
    column's negative mask and accumulates -- generalised from two to ``V`` views
    and to the ``"cosine"`` / ``"l2"`` options. It shares no code with
    :class:`RnCLoss` beyond input validation. ``O(n^3)`` time and ``O(n^2 D)``
    memory: use :class:`RnCLoss` for training.

    Args:
        features: Embeddings, shape ``[B, V, D]``.
        labels: Ages, shape ``[B]`` or ``[B, 1]``.
        temperature: Temperature ``T`` dividing the similarities.
        label_diff: ``"l1"`` or ``"l2"``.
        feature_sim: ``"l2"`` or ``"cosine"``.

    Returns:
        Scalar loss, equal to ``RnCLoss(temperature, label_diff, feature_sim)(features, labels)``.

    Raises:
        ValueError: On invalid inputs or unknown distance names.
    """
    temperature = _check_positive("temperature", temperature)
    _check_choice("label_diff", label_diff, LABEL_DIFFERENCES)
    _check_choice("feature_sim", feature_sim, FEATURE_SIMILARITIES)
    z, y, _ = _pool_views(features, labels)
    n = z.shape[0]

    delta = y[:, None] - y[None, :]  # delta: [n, n]
    label_diffs = delta.abs() if label_diff == "l1" else delta.square()
    if feature_sim == "l2":
        logits = -(z[:, None, :] - z[None, :, :]).norm(2, dim=-1)  # logits: [n, n]
    else:
        logits = F.cosine_similarity(z[:, None, :], z[None, :, :], dim=-1)  # logits: [n, n]
    logits = logits / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()  # logits: [n, n]
    exp_logits = logits.exp()  # exp_logits: [n, n]

    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=z.device)  # off_diagonal: [n, n]
    logits = logits.masked_select(off_diagonal).view(n, n - 1)  # logits: [n, n-1]
    exp_logits = exp_logits.masked_select(off_diagonal).view(n, n - 1)  # exp_logits: [n, n-1]
    label_diffs = label_diffs.masked_select(off_diagonal).view(n, n - 1)  # label_diffs: [n, n-1]

    loss = logits.new_zeros(())
    for column in range(n - 1):
        pos_logits = logits[:, column]  # pos_logits: [n]
        pos_label_diffs = label_diffs[:, column]  # pos_label_diffs: [n]
        neg_mask = (label_diffs >= pos_label_diffs.view(-1, 1)).to(exp_logits.dtype)  # neg_mask: [n, n-1]
        pos_log_probs = pos_logits - torch.log((neg_mask * exp_logits).sum(dim=-1))  # pos_log_probs: [n]
        loss = loss - (pos_log_probs / (n * (n - 1))).sum()
    return loss


# --------------------------------------------------------------------------- #
# Contrastive baselines
# --------------------------------------------------------------------------- #
class InfoNCELoss(nn.Module, ABC):
    """InfoNCE on cosine similarity with per-anchor positive weights: the shared core of the baselines.

    The ``n = V * B`` view-samples are pooled; for anchor ``i`` every other sample
    ``j != i`` is scored by a softmax over the ``n - 1`` others, and the loss is the
    weighted negative log-probability of the anchor's positives::

        loss = mean_i  -sum_{j != i} w_ij * log( exp(s_ij) / sum_{k != i} exp(s_ik) ),  s = cos / T

    The self-pair ``i = j`` is dropped from every row (not masked), so each row has
    ``n - 1`` entries. Subclasses define the positives by overriding
    :meth:`positive_weights`; each weight row sums to one.

    Args:
        temperature: Softmax temperature ``T``. The default, 0.2, was chosen among 0.1, 0.2
            and 0.5 for the three InfoNCE baselines on validation MAE (mean over 3 seeds) at
            the book's default budget (batches of 16 subjects); the papers used 0.1 to 0.5
            with batches of hundreds.

    Raises:
        ValueError: If ``temperature`` is not a finite positive number.
    """

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        self.temperature = _check_positive("temperature", temperature)

    def extra_repr(self) -> str:
        """Hyper-parameters shown by ``repr``."""
        return f"temperature={self.temperature}"

    @abstractmethod
    def positive_weights(self, ages: Tensor, subjects: Tensor) -> Tensor:
        """Target weights of every (anchor, other sample) pair.

        Args:
            ages: Age of each pooled sample, shape ``[n]`` (in the features' dtype).
            subjects: Subject index of each pooled sample, shape ``[n]``.

        Returns:
            Off-diagonal weights, shape ``[n, n - 1]`` (row ``i`` covers ``j != i`` in
            increasing ``j``, as :func:`_off_diagonal`); each row sums to one.
        """

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        """Compute the loss.

        Args:
            features: Embeddings, shape ``[B, V, D]``.
            labels: Ages, shape ``[B]`` or ``[B, 1]``.

        Returns:
            Scalar loss (mean over the ``V * B`` anchors).
        """
        z, y, subject = _pool_views(features, labels)
        weights = self.positive_weights(y, subject)  # weights: [n, n-1]
        unit = F.normalize(z, dim=1)  # unit: [n, D]
        logits = _off_diagonal(unit @ unit.T) / self.temperature  # logits: [n, n-1]
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)  # log_prob: [n, n-1]
        return -(weights * log_prob).sum(dim=1).mean()


class NTXentLoss(InfoNCELoss):
    """SimCLR NT-Xent (Chen et al., 2020) on L2-normalised features.

    All ``V * B`` view-samples are pooled; the positives of an anchor are the
    other ``V - 1`` views of its subject, the denominator runs over every other
    sample. The loss is the mean over all ``V * B * (V - 1)`` (anchor, positive)
    pairs. Labels are validated but otherwise ignored, so that every contrastive
    loss shares one call signature.

    Args:
        temperature: Softmax temperature (0.2: see :class:`InfoNCELoss`).
    """

    def positive_weights(self, ages: Tensor, subjects: Tensor) -> Tensor:
        """Uniform weights over the anchor's other views, shape ``[n, n - 1]`` (``ages``: ``[n]``, unused)."""
        return _uniform_over_matches(subjects, ages.dtype)


class SupConLoss(InfoNCELoss):
    """Supervised contrastive loss, ``L_out`` variant (Khosla et al., NeurIPS 2020).

    The class of a subject is its age bin ``floor(age / bin_width)``; the
    positives of an anchor are all other pooled samples in the same bin (always
    including the anchor's other views). Per anchor the log-probabilities of its
    positives are averaged, then the loss is averaged over anchors. The
    ``T / base_temperature`` rescaling of the authors' code is not applied.

    Args:
        temperature: Softmax temperature (0.2: see :class:`InfoNCELoss`).
        bin_width: Width of the age bins, in the labels' unit (years).

    Raises:
        ValueError: If ``temperature`` or ``bin_width`` is not a finite positive number.
    """

    def __init__(self, temperature: float = 0.2, bin_width: float = 5.0) -> None:
        super().__init__(temperature)
        self.bin_width = _check_positive("bin_width", bin_width)

    def extra_repr(self) -> str:
        """Hyper-parameters shown by ``repr``."""
        return f"{super().extra_repr()}, bin_width={self.bin_width}"

    def positive_weights(self, ages: Tensor, subjects: Tensor) -> Tensor:
        """Uniform weights over the other samples of the anchor's age bin, shape ``[n, n - 1]``."""
        bins = torch.floor(ages / self.bin_width).long()  # bins: [n]
        return _uniform_over_matches(bins, ages.dtype)


class YAwareLoss(InfoNCELoss):
    """y-Aware InfoNCE (Dufumier et al., MICCAI 2021) on cosine similarity.

    With the RBF kernel ``w_ij = exp(-(y_i - y_j)^2 / (2 sigma^2))``::

        loss_i = -sum_{j != i} (w_ij / sum_{k != i} w_ik) * log( exp(s_ij) / sum_{k != i} exp(s_ik) )

    averaged over the ``V * B`` pooled anchors, ``s = cos / T``. The normalised
    weights are computed as a softmax of the kernel's exponent, which is exact
    and stays finite for tiny ``sigma``. ``sigma -> 0`` recovers NT-Xent (for
    distinct ages), ``sigma -> inf`` SupCon with a single bin.

    Args:
        temperature: Softmax temperature (0.2: see :class:`InfoNCELoss`).
        sigma: Kernel bandwidth, in the labels' unit (years).

    Raises:
        ValueError: If ``temperature`` or ``sigma`` is not a finite positive number.
    """

    def __init__(self, temperature: float = 0.2, sigma: float = 5.0) -> None:
        super().__init__(temperature)
        self.sigma = _check_positive("sigma", sigma)

    def extra_repr(self) -> str:
        """Hyper-parameters shown by ``repr``."""
        return f"{super().extra_repr()}, sigma={self.sigma}"

    def positive_weights(self, ages: Tensor, subjects: Tensor) -> Tensor:
        """Normalised RBF kernel of the age difference, shape ``[n, n - 1]`` (``subjects`` unused)."""
        exponent = _off_diagonal(-_pairwise_label_difference(ages, "l2") / (2.0 * self.sigma**2))  # [n, n-1]
        return torch.softmax(exponent, dim=1)


# --------------------------------------------------------------------------- #
# Regression
# --------------------------------------------------------------------------- #
class RegressionLoss(nn.Module):
    """Mean squared (``"mse"``) or mean absolute (``"l1"``) error on predicted ages.

    Args:
        kind: ``"mse"`` or ``"l1"``.

    Raises:
        ValueError: If ``kind`` is unknown.
    """

    def __init__(self, kind: str = "mse") -> None:
        super().__init__()
        self.kind = _check_choice("regression loss kind", kind, REGRESSION_LOSSES)

    def extra_repr(self) -> str:
        """Hyper-parameters shown by ``repr``."""
        return f"kind={self.kind!r}"

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """Compute the loss.

        Args:
            pred: Predicted ages, shape ``[B]`` or ``[B, 1]``.
            target: True ages, shape ``[B]`` or ``[B, 1]``, all finite.

        Returns:
            Scalar loss (mean over the batch).

        Raises:
            ValueError: If a shape is wrong, the sizes differ or a target is NaN/infinite.
        """
        for name, tensor in (("pred", pred), ("target", target)):
            if not (tensor.dim() == 1 or (tensor.dim() == 2 and tensor.shape[1] == 1)):
                raise ValueError(f"{name} must have shape [B] or [B, 1], got {tuple(tensor.shape)}")
        if pred.shape[0] != target.shape[0]:
            raise ValueError(
                f"pred holds {pred.shape[0]} values but target holds {target.shape[0]}; "
                f"pass one prediction per target age"
            )
        if not bool(torch.isfinite(target).all()):
            raise ValueError("target contains NaN or infinite ages; drop subjects with a missing age first")
        flat_pred = pred.reshape(-1)  # flat_pred: [B]
        flat_target = target.reshape(-1).to(device=pred.device, dtype=pred.dtype)  # flat_target: [B]
        if self.kind == "mse":
            return F.mse_loss(flat_pred, flat_target)
        return F.l1_loss(flat_pred, flat_target)


# --------------------------------------------------------------------------- #
# Factory
# --------------------------------------------------------------------------- #
_CONTRASTIVE_CLASSES: dict[str, type[nn.Module]] = {
    "rnc": RnCLoss,
    "ntxent": NTXentLoss,
    "supcon": SupConLoss,
    "yaware": YAwareLoss,
}


def loss_parameters(name: str) -> tuple[str, ...]:
    """The keyword arguments loss ``name`` accepts in ``loss.params`` (empty for regression).

    Raises:
        ValueError: If ``name`` is unknown.
    """
    if name in _CONTRASTIVE_CLASSES:
        return tuple(p for p in inspect.signature(_CONTRASTIVE_CLASSES[name]).parameters if p != "self")
    if name in REGRESSION_LOSSES:
        return ()
    raise ValueError(f"unknown loss {name!r}; valid names are {CONTRASTIVE_LOSSES + REGRESSION_LOSSES}")


def build_loss(name: str, **kwargs: Any) -> nn.Module:
    """Build a loss by name.

    Args:
        name: One of :data:`CONTRASTIVE_LOSSES` (``"rnc"``, ``"ntxent"``,
            ``"supcon"``, ``"yaware"``) or :data:`REGRESSION_LOSSES`
            (``"mse"``, ``"l1"``).
        **kwargs: Constructor arguments of the chosen loss (e.g. ``temperature``).

    Returns:
        The loss module.

    Raises:
        ValueError: If ``name`` is unknown or a keyword is not one of its parameters.
    """
    unknown = sorted(set(kwargs) - set(loss_parameters(name)))
    if unknown:
        raise ValueError(f"loss {name!r} has no parameter(s) {unknown}; its parameters: {list(loss_parameters(name))}")
    if name in _CONTRASTIVE_CLASSES:
        return _CONTRASTIVE_CLASSES[name](**kwargs)
    return RegressionLoss(kind=name)
