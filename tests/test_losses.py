"""Tests for brainage_core.losses: RNC against two references, baselines, input checks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from brainage_core.bench import bench_rnc_loss
from brainage_core.losses import (
    CONTRASTIVE_LOSSES,
    REGRESSION_LOSSES,
    InfoNCELoss,
    NTXentLoss,
    RegressionLoss,
    RnCLoss,
    SupConLoss,
    YAwareLoss,
    build_loss,
    rnc_loss_loop,
)

TIED_AGES = torch.tensor([30.0, 40.0, 30.0, 50.0, 40.0], dtype=torch.float64)  # [B=5], many ties


# --------------------------------------------------------------------------- #
# Independent references written out pair by pair
# --------------------------------------------------------------------------- #
def _pooled(features: Tensor, labels: Tensor) -> tuple[list[Tensor], list[float]]:
    """Split ``[B, V, D]`` features into view-samples (view-major) with their ages."""
    batch, views, _ = features.shape
    samples = [features[b, v] for v in range(views) for b in range(batch)]
    ages = [float(labels.reshape(-1)[b]) for _ in range(views) for b in range(batch)]
    return samples, ages


def _rnc_triple_loop(features: Tensor, labels: Tensor, temperature: float, label_diff: str, feature_sim: str) -> Tensor:
    """Rank-N-Contrast straight from its definition: loops over anchors i, positives j and k."""
    z, y = _pooled(features, labels)
    n = len(z)

    def similarity(i: int, k: int) -> Tensor:
        if feature_sim == "l2":
            return -torch.linalg.vector_norm(z[i] - z[k]) / temperature
        return torch.dot(z[i], z[k]) / (torch.linalg.vector_norm(z[i]) * torch.linalg.vector_norm(z[k])) / temperature

    def difference(i: int, k: int) -> float:
        return abs(y[i] - y[k]) if label_diff == "l1" else (y[i] - y[k]) ** 2

    total = features.new_zeros(())
    for i in range(n):
        for j in range(n):
            if j == i:
                continue
            denominator = sum(
                torch.exp(similarity(i, k)) for k in range(n) if k != i and difference(i, k) >= difference(i, j)
            )
            total = total - torch.log(torch.exp(similarity(i, j)) / denominator)
    return total / (n * (n - 1))


def _cosine_log_prob(z: list[Tensor], temperature: float, i: int, j: int) -> Tensor:
    """log( exp(s_ij) / sum_{k != i} exp(s_ik) ) with s = cosine / T, written out."""
    unit = [v / torch.linalg.vector_norm(v) for v in z]
    denominator = sum(torch.exp(torch.dot(unit[i], unit[k]) / temperature) for k in range(len(z)) if k != i)
    return torch.dot(unit[i], unit[j]) / temperature - torch.log(denominator)


def _ntxent_loop(features: Tensor, temperature: float) -> Tensor:
    """NT-Xent: mean over all (anchor, other view of the same subject) pairs."""
    batch = features.shape[0]
    z, _ = _pooled(features, torch.zeros(batch))
    terms = [
        -_cosine_log_prob(z, temperature, i, j)
        for i in range(len(z))
        for j in range(len(z))
        if j != i and j % batch == i % batch
    ]
    return torch.stack(terms).mean()


def _supcon_loop(features: Tensor, labels: Tensor, temperature: float, bin_width: float) -> Tensor:
    """SupCon L_out: per anchor, mean over same-bin positives; then mean over anchors."""
    z, y = _pooled(features, labels)
    bins = [math.floor(age / bin_width) for age in y]
    per_anchor = []
    for i in range(len(z)):
        positives = [j for j in range(len(z)) if j != i and bins[j] == bins[i]]
        per_anchor.append(-torch.stack([_cosine_log_prob(z, temperature, i, j) for j in positives]).mean())
    return torch.stack(per_anchor).mean()


def _yaware_loop(features: Tensor, labels: Tensor, temperature: float, sigma: float) -> Tensor:
    """y-Aware InfoNCE with RBF weights normalised over j != i."""
    z, y = _pooled(features, labels)
    per_anchor = []
    for i in range(len(z)):
        others = [j for j in range(len(z)) if j != i]
        weights = [math.exp(-((y[i] - y[j]) ** 2) / (2 * sigma**2)) for j in others]
        norm = sum(weights)
        terms = [w / norm * _cosine_log_prob(z, temperature, i, j) for w, j in zip(weights, others, strict=True)]
        per_anchor.append(-sum(terms))
    return torch.stack(per_anchor).mean()


def _value_and_grad(loss: Tensor, features: Tensor) -> tuple[Tensor, Tensor]:
    (grad,) = torch.autograd.grad(loss, features)
    return loss.detach(), grad


# --------------------------------------------------------------------------- #
# Rank-N-Contrast
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("views", [2, 3])
@pytest.mark.parametrize("feature_sim", ["l2", "cosine"])
@pytest.mark.parametrize("label_diff", ["l1", "l2"])
def test_rnc_matches_loop_and_triple_loop(views: int, feature_sim: str, label_diff: str) -> None:
    torch.manual_seed(views)
    features = torch.randn(5, views, 3, dtype=torch.float64, requires_grad=True)  # [B, V, D]
    kwargs = {"temperature": 1.5, "label_diff": label_diff, "feature_sim": feature_sim}

    fast, fast_grad = _value_and_grad(RnCLoss(**kwargs)(features, TIED_AGES), features)
    loop, loop_grad = _value_and_grad(rnc_loss_loop(features, TIED_AGES, **kwargs), features)
    naive, naive_grad = _value_and_grad(_rnc_triple_loop(features, TIED_AGES, **kwargs), features)

    for value, grad in ((loop, loop_grad), (naive, naive_grad)):
        torch.testing.assert_close(fast, value, rtol=1e-5, atol=0.0)
        torch.testing.assert_close(fast_grad, grad, rtol=1e-5, atol=1e-12)


def test_rnc_matches_loop_with_continuous_ages_and_column_labels() -> None:
    torch.manual_seed(1)
    features = torch.randn(7, 2, 4, dtype=torch.float64, requires_grad=True)  # [B, V, D]
    ages = 20.0 + 70.0 * torch.rand(7, 1, dtype=torch.float64)  # [B, 1], no ties
    fast, fast_grad = _value_and_grad(RnCLoss()(features, ages), features)
    loop, loop_grad = _value_and_grad(rnc_loss_loop(features, ages), features)
    torch.testing.assert_close(fast, loop, rtol=1e-5, atol=0.0)
    torch.testing.assert_close(fast_grad, loop_grad, rtol=1e-5, atol=1e-12)


def test_rnc_matches_loop_in_float32_on_a_larger_batch() -> None:
    torch.manual_seed(2)
    features = torch.randn(64, 2, 16, requires_grad=True)  # [B, V, D]
    ages = torch.randint(20, 91, (64,)).float()
    fast, fast_grad = _value_and_grad(RnCLoss()(features, ages), features)
    loop, loop_grad = _value_and_grad(rnc_loss_loop(features, ages), features)
    torch.testing.assert_close(fast, loop, rtol=1e-5, atol=0.0)
    torch.testing.assert_close(fast_grad, loop_grad, rtol=1e-3, atol=1e-4 * float(loop_grad.abs().max()))


def test_rnc_custom_backward_passes_gradcheck() -> None:
    torch.manual_seed(3)
    features = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)  # [B, V, D]
    ages = torch.tensor([30.0, 40.0, 30.0, 50.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f: RnCLoss(temperature=0.7)(f, ages), (features,))


def test_rnc_hand_computed_value() -> None:
    # Pooled samples (T=1, L2 similarity, L1 label difference):
    #   A0 = 0 and A1 = 1 (age 20), B0 = B1 = 3 (age 30).
    # For an anchor, the same-age sample has difference 0 (denominator: all three others);
    # the two other-age samples tie at difference 10 (denominator: both of them).
    features = torch.tensor([[[0.0], [1.0]], [[3.0], [3.0]]], dtype=torch.float64)  # [B=2, V=2, D=1]
    ages = torch.tensor([20.0, 30.0], dtype=torch.float64)
    e = math.exp
    anchor_a0 = (1 + math.log(e(-1) + 2 * e(-3))) + 2 * math.log(2)
    anchor_a1 = (1 + math.log(e(-1) + 2 * e(-2))) + 2 * math.log(2)
    anchor_b = math.log(1 + e(-3) + e(-2)) + (3 + math.log(e(-3) + e(-2))) + (2 + math.log(e(-3) + e(-2)))
    expected = (anchor_a0 + anchor_a1 + 2 * anchor_b) / 12
    assert RnCLoss(temperature=1.0)(features, ages).item() == pytest.approx(expected, rel=1e-12)


def test_rnc_hand_computed_value_with_identical_views() -> None:
    # Both views of subject 0 at 0, of subject 1 at d: per anchor, the same-age pair gives
    # log(1 + 2 exp(-d/T)) and each of the two tied other-age pairs gives log 2.
    d, temperature = 2.0, 2.0
    features = torch.tensor([[[0.0], [0.0]], [[d], [d]]], dtype=torch.float64, requires_grad=True)  # [2, 2, 1]
    ages = torch.tensor([20.0, 30.0], dtype=torch.float64)
    loss = RnCLoss(temperature=temperature)(features, ages)
    expected = (math.log(1 + 2 * math.exp(-d / temperature)) + 2 * math.log(2)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    loss.backward()
    assert torch.isfinite(features.grad).all()


def test_rnc_prefers_features_ordered_by_age() -> None:
    torch.manual_seed(4)
    ages = torch.randint(20, 91, (32,)).float()
    ordered = (ages / 10.0).view(32, 1, 1).repeat(1, 2, 1)  # [B, V=2, D=1], embedding = age on a line
    ordered = ordered + 0.01 * torch.randn_like(ordered)
    shuffled = ordered[torch.randperm(32)]  # same embeddings, assigned to the wrong subjects
    loss = RnCLoss()
    assert loss(ordered, ages) < loss(shuffled, ages)


@pytest.mark.parametrize("feature_sim", ["l2", "cosine"])
def test_rnc_is_finite_for_extreme_and_collapsed_features(feature_sim: str) -> None:
    torch.manual_seed(5)
    ages = torch.randint(20, 30, (16,)).float()
    spread = (1000.0 * torch.randn(16, 1, 8)).repeat(1, 2, 1).requires_grad_(True)  # [16, 2, 8], identical views
    collapsed = torch.ones(16, 2, 8, requires_grad=True)  # every embedding equal
    for features in (spread, collapsed):
        loss = RnCLoss(feature_sim=feature_sim)(features, ages)
        (grad,) = torch.autograd.grad(loss, features)
        assert torch.isfinite(loss)
        assert torch.isfinite(grad).all()


# --------------------------------------------------------------------------- #
# Baselines
# --------------------------------------------------------------------------- #
def _orthogonal_identical_views(batch: int, views: int) -> Tensor:
    """One-hot embedding per subject, the same for all its views: ``[B, V, B]``."""
    return torch.eye(batch, dtype=torch.float64).unsqueeze(1).repeat(1, views, 1)  # [B, V, B]


def test_ntxent_matches_loop() -> None:
    torch.manual_seed(6)
    features = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)  # [B, V, D]
    fast, fast_grad = _value_and_grad(NTXentLoss(temperature=0.5)(features, TIED_AGES[:4]), features)
    naive, naive_grad = _value_and_grad(_ntxent_loop(features, temperature=0.5), features)
    torch.testing.assert_close(fast, naive, rtol=1e-10, atol=0.0)
    torch.testing.assert_close(fast_grad, naive_grad, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("views", [2, 3])
def test_ntxent_identical_views_orthogonal_subjects(views: int) -> None:
    # Every anchor: V-1 positives at cosine 1, n-V negatives at cosine 0, so
    # loss = log((V - 1) + (n - V) exp(-1/T)).
    batch, temperature = 4, 0.5
    n = batch * views
    loss = NTXentLoss(temperature=temperature)(_orthogonal_identical_views(batch, views), torch.zeros(batch))
    expected = math.log((views - 1) + (n - views) * math.exp(-1 / temperature))
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_supcon_matches_loop() -> None:
    torch.manual_seed(7)
    features = torch.randn(5, 2, 4, dtype=torch.float64, requires_grad=True)  # [B, V, D]
    ages = torch.tensor([21.0, 24.0, 33.0, 36.0, 22.0], dtype=torch.float64)  # bins 4, 4, 6, 7, 4
    fast, fast_grad = _value_and_grad(SupConLoss(temperature=0.3, bin_width=5.0)(features, ages), features)
    naive, naive_grad = _value_and_grad(_supcon_loop(features, ages, 0.3, 5.0), features)
    torch.testing.assert_close(fast, naive, rtol=1e-10, atol=0.0)
    torch.testing.assert_close(fast_grad, naive_grad, rtol=1e-8, atol=1e-12)


def test_supcon_hand_computed_single_bin() -> None:
    # Ages 20 and 21 share bin 4: every other sample is a positive. Per anchor the positives
    # have cosine 1, 0, 0 and the denominator is exp(1/T) + 2.
    temperature = 0.5
    features = _orthogonal_identical_views(2, 2)
    loss = SupConLoss(temperature=temperature, bin_width=5.0)(features, torch.tensor([20.0, 21.0]))
    expected = math.log(math.exp(1 / temperature) + 2) - (1 / temperature) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_supcon_with_one_subject_per_bin_equals_ntxent() -> None:
    torch.manual_seed(8)
    features = torch.randn(4, 3, 6, dtype=torch.float64)  # [B, V, D]
    ages = torch.tensor([20.0, 30.0, 40.0, 50.0])
    supcon = SupConLoss(temperature=0.2, bin_width=5.0)(features, ages)
    torch.testing.assert_close(supcon, NTXentLoss(temperature=0.2)(features, ages), rtol=1e-12, atol=0.0)


def test_yaware_matches_loop() -> None:
    torch.manual_seed(9)
    features = torch.randn(5, 2, 4, dtype=torch.float64, requires_grad=True)  # [B, V, D]
    fast, fast_grad = _value_and_grad(YAwareLoss(temperature=0.3, sigma=7.0)(features, TIED_AGES), features)
    naive, naive_grad = _value_and_grad(_yaware_loop(features, TIED_AGES, 0.3, 7.0), features)
    torch.testing.assert_close(fast, naive, rtol=1e-10, atol=0.0)
    torch.testing.assert_close(fast_grad, naive_grad, rtol=1e-8, atol=1e-12)


def test_yaware_hand_computed_value() -> None:
    # Ages 20 and 30, sigma = 10: kernel 1 for the other view, exp(-0.5) for the other subject.
    temperature, sigma = 0.5, 10.0
    features = _orthogonal_identical_views(2, 2)
    loss = YAwareLoss(temperature=temperature, sigma=sigma)(features, torch.tensor([20.0, 30.0]))
    own_weight = 1 / (1 + 2 * math.exp(-0.5))
    expected = math.log(math.exp(1 / temperature) + 2) - own_weight / temperature
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_yaware_kernel_limits() -> None:
    torch.manual_seed(10)
    features = torch.randn(4, 2, 6, dtype=torch.float64)  # [B, V, D]
    ages = torch.tensor([20.0, 30.0, 40.0, 50.0])
    # sigma -> 0: only the subject's own views keep weight, i.e. NT-Xent.
    narrow = YAwareLoss(temperature=0.2, sigma=1e-3)(features, ages)
    torch.testing.assert_close(narrow, NTXentLoss(temperature=0.2)(features, ages), rtol=1e-12, atol=0.0)
    # sigma -> inf: uniform weights over all other samples, i.e. SupCon with a single bin.
    wide = YAwareLoss(temperature=0.2, sigma=1e6)(features, ages)
    single_bin = SupConLoss(temperature=0.2, bin_width=1e6)(features, ages)
    torch.testing.assert_close(wide, single_bin, rtol=1e-9, atol=0.0)


def test_an_infonce_loss_is_defined_by_its_positive_weights() -> None:
    class AllOthersPositive(InfoNCELoss):
        def positive_weights(self, ages: Tensor, subjects: Tensor) -> Tensor:
            n = ages.shape[0]
            return torch.full((n, n - 1), 1.0 / (n - 1), dtype=ages.dtype)

    torch.manual_seed(11)
    features = torch.randn(4, 2, 6, dtype=torch.float64)  # [B, V, D]
    ages = torch.tensor([20.0, 30.0, 40.0, 50.0])
    single_bin = SupConLoss(temperature=0.3, bin_width=1e6)(features, ages)
    assert torch.equal(AllOthersPositive(temperature=0.3)(features, ages), single_bin)
    with pytest.raises(TypeError):
        InfoNCELoss()  # abstract: the positives must be defined


@pytest.mark.parametrize("name", CONTRASTIVE_LOSSES)
def test_contrastive_losses_are_finite_for_collapsed_features(name: str) -> None:
    features = torch.ones(6, 2, 4, requires_grad=True)  # [B, V, D], all embeddings equal
    loss = build_loss(name)(features, torch.tensor([20.0, 25.0, 20.0, 60.0, 61.0, 90.0]))
    (grad,) = torch.autograd.grad(loss, features)
    assert torch.isfinite(loss)
    assert torch.isfinite(grad).all()


def test_regression_losses_simple_numbers() -> None:
    pred = torch.tensor([1.0, 2.0, 3.0])
    target = torch.tensor([[1.0], [1.0], [1.0]])  # [B, 1] mixes with [B]
    assert build_loss("mse")(pred, target).item() == pytest.approx(5.0 / 3.0)
    assert build_loss("l1")(pred.view(3, 1), target).item() == pytest.approx(1.0)
    assert isinstance(build_loss("mse"), RegressionLoss)


def test_build_loss_returns_configured_modules() -> None:
    assert set(CONTRASTIVE_LOSSES) == {"rnc", "ntxent", "supcon", "yaware"}
    assert set(REGRESSION_LOSSES) == {"mse", "l1"}
    rnc = build_loss("rnc", temperature=0.5, feature_sim="cosine")
    assert isinstance(rnc, RnCLoss)
    assert (rnc.temperature, rnc.feature_sim) == (0.5, "cosine")
    assert isinstance(build_loss("yaware", sigma=3.0), YAwareLoss)


# --------------------------------------------------------------------------- #
# Bad input
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("name", CONTRASTIVE_LOSSES)
@pytest.mark.parametrize("bad_age", [float("nan"), float("inf")])
def test_non_finite_labels_are_rejected(name: str, bad_age: float) -> None:
    with pytest.raises(ValueError, match=r"labels contain 1 NaN or infinite value\(s\) out of 3"):
        build_loss(name)(torch.randn(3, 2, 4), torch.tensor([20.0, bad_age, 40.0]))


@pytest.mark.parametrize("name", CONTRASTIVE_LOSSES)
def test_batch_of_one_is_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="at least two subjects per batch, got a batch of 1.*drop_last=True"):
        build_loss(name)(torch.randn(1, 2, 4), torch.tensor([20.0]))


@pytest.mark.parametrize("name", CONTRASTIVE_LOSSES)
def test_label_size_mismatch_is_rejected(name: str) -> None:
    with pytest.raises(ValueError, match=r"B=4 subjects but labels have shape \(3,\)"):
        build_loss(name)(torch.randn(4, 2, 4), torch.tensor([20.0, 30.0, 40.0]))
    with pytest.raises(ValueError, match=r"B=4 subjects but labels have shape \(4, 2\)"):
        build_loss(name)(torch.randn(4, 2, 4), torch.zeros(4, 2))


@pytest.mark.parametrize("name", CONTRASTIVE_LOSSES)
def test_feature_shape_errors(name: str) -> None:
    with pytest.raises(ValueError, match=r"features must have shape \[B, V, D\].*got shape \(4, 8\)"):
        build_loss(name)(torch.randn(4, 8), torch.zeros(4))
    with pytest.raises(ValueError, match="at least two views per subject.*got V=1"):
        build_loss(name)(torch.randn(4, 1, 8), torch.zeros(4))


def test_unknown_names_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"unknown loss 'huber'; valid names are \('rnc', 'ntxent'"):
        build_loss("huber")
    with pytest.raises(ValueError, match=r"unknown label_diff 'l3'; choose one of \('l1', 'l2'\)"):
        RnCLoss(label_diff="l3")
    with pytest.raises(ValueError, match=r"unknown feature_sim 'dot'; choose one of \('l2', 'cosine'\)"):
        RnCLoss(feature_sim="dot")
    with pytest.raises(ValueError, match="unknown feature_sim 'dot'"):
        rnc_loss_loop(torch.randn(2, 2, 3), torch.zeros(2), feature_sim="dot")
    with pytest.raises(ValueError, match="unknown regression loss kind 'huber'"):
        RegressionLoss(kind="huber")


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_non_positive_hyperparameters_are_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match="temperature must be a finite positive number"):
        RnCLoss(temperature=bad)
    with pytest.raises(ValueError, match="bin_width must be a finite positive number"):
        SupConLoss(bin_width=bad)
    with pytest.raises(ValueError, match="sigma must be a finite positive number"):
        YAwareLoss(sigma=bad)


def test_regression_input_errors() -> None:
    loss = RegressionLoss("mse")
    with pytest.raises(ValueError, match="pred holds 3 values but target holds 2"):
        loss(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="target contains NaN or infinite ages"):
        loss(torch.zeros(2), torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match=r"pred must have shape \[B\] or \[B, 1\], got \(2, 3\)"):
        loss(torch.zeros(2, 3), torch.zeros(2))


# --------------------------------------------------------------------------- #
# Benchmark helper
# --------------------------------------------------------------------------- #
def test_bench_rnc_loss_reports_rows() -> None:
    rows = bench_rnc_loss(batch_sizes=(4, 8), views=2, dim=8, repeats=1, loop_max_batch=4)
    assert [row["batch_size"] for row in rows] == [4, 8]
    assert rows[0]["speedup"] == pytest.approx(rows[0]["loop_s"] / rows[0]["fast_s"])
    assert rows[1]["loop_s"] is None and rows[1]["speedup"] is None
    assert all(row["fast_s"] > 0 and row["device"] == "cpu" for row in rows)
    with pytest.raises(ValueError, match="views must be >= 2"):
        bench_rnc_loss(batch_sizes=(4,), views=1)
