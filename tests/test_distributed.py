"""Tests for brainage_core.distributed: two gloo processes must reproduce the single-process loss and gradients."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

import brainage_core.distributed as bd
from brainage_core.losses import build_loss

WORLD_SIZE = 2
JOB_TIMEOUT_S = 180
GLOBAL_BATCH, VIEWS, IN_DIM, OUT_DIM = 8, 2, 6, 4
LOSSES = ("rnc", "ntxent")


def _global_batch() -> tuple[Tensor, Tensor]:
    """Deterministic inputs ``[B, V, IN_DIM]`` and integer ages ``[B]`` with ties."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(GLOBAL_BATCH, VIEWS, IN_DIM, generator=generator, dtype=torch.float64)  # [B, V, IN]
    ages = torch.tensor([30.0, 45.0, 30.0, 60.0, 45.0, 71.0, 30.0, 52.0], dtype=torch.float64)  # [B]
    return inputs, ages


def _make_encoder() -> nn.Linear:
    """The same linear "encoder" in every process."""
    torch.manual_seed(1)
    return nn.Linear(IN_DIM, OUT_DIM, dtype=torch.float64)


def _rank_results(rank: int) -> dict[str, object]:
    """One DDP rank: local half-batch, gather, loss on the global batch, backward.

    Returns plain tensors only, so that the DDP wrapper is freed before the
    process group is destroyed (a live reducer can hang at interpreter exit).
    """
    inputs, ages = _global_batch()
    encoder = _make_encoder()
    model = DistributedDataParallel(encoder)
    per_rank = GLOBAL_BATCH // WORLD_SIZE
    local = slice(rank * per_rank, (rank + 1) * per_rank)
    results: dict[str, object] = {
        "rank": bd.rank(),
        "world_size": bd.world_size(),
        "is_distributed": bd.is_distributed(),
    }
    for name in LOSSES:
        model.zero_grad(set_to_none=True)
        features, labels = bd.gather_for_loss(model(inputs[local]), ages[local])  # [B, V, D], [B]
        loss = build_loss(name)(features, labels)
        loss.backward()  # DDP averages the parameter gradients over ranks
        results[name] = {
            "loss": loss.detach(),
            "labels": labels,
            "grads": [param.grad.clone() for param in encoder.parameters()],
        }

    # Backward of the all-gather: each rank's chunk receives the sum over ranks.
    chunk = torch.full((2, 3), float(rank + 1), dtype=torch.float64, requires_grad=True)  # [2, 3]
    weights = torch.arange(12, dtype=torch.float64).view(4, 3)  # [world * 2, 3]
    (bd.gather_with_grad(chunk) * weights).sum().backward()
    results["gather_grad"] = chunk.grad

    # Unequal local batch sizes must fail with a clear error on every rank.
    with pytest.raises(ValueError) as error:
        bd.gather_with_grad(torch.zeros(rank + 1, 3))
    results["shape_error"] = str(error.value)
    return results


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    """Entry point of a spawned rank: run it and write its results to ``out_dir``."""
    torch.set_num_threads(1)
    # A collective that waits longer than the timeout raises instead of hanging the test run.
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE, timeout=timedelta(seconds=60)
    )
    try:
        results = _rank_results(rank)
    finally:
        dist.destroy_process_group()
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")


def test_helpers_are_no_ops_without_process_group() -> None:
    assert not bd.is_distributed()
    assert (bd.rank(), bd.world_size()) == (0, 1)
    features, labels = torch.randn(3, 2, 4), torch.zeros(3)
    assert bd.gather_with_grad(features) is features
    gathered_features, gathered_labels = bd.gather_for_loss(features, labels)
    assert gathered_features is features and gathered_labels is labels


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, object]]:
    """Run the two-process job once and load what every rank wrote."""
    out_dir = tmp_path_factory.mktemp("ddp")
    context = mp.start_processes(
        _worker, args=(str(out_dir / "init"), str(out_dir)), nprocs=WORLD_SIZE, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not context.join(timeout=5):  # raises if a rank failed
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the two-process gloo job did not finish within {JOB_TIMEOUT_S} s")
    return [torch.load(out_dir / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]


def test_ranks_report_their_identity(two_rank_results: list[dict[str, object]]) -> None:
    for rank, results in enumerate(two_rank_results):
        assert (results["rank"], results["world_size"], results["is_distributed"]) == (rank, WORLD_SIZE, True)


@pytest.mark.parametrize("name", LOSSES)
def test_ddp_loss_and_gradients_equal_single_process(name: str, two_rank_results: list[dict[str, object]]) -> None:
    inputs, ages = _global_batch()
    encoder = _make_encoder()
    loss = build_loss(name)(encoder(inputs), ages)
    loss.backward()
    expected_grads = [param.grad for param in encoder.parameters()]
    for results in two_rank_results:
        got = results[name]
        torch.testing.assert_close(got["labels"], ages, rtol=0.0, atol=0.0)
        torch.testing.assert_close(got["loss"], loss.detach(), rtol=1e-6, atol=1e-6)
        for grad, expected in zip(got["grads"], expected_grads, strict=True):
            torch.testing.assert_close(grad, expected, rtol=1e-6, atol=1e-6)


def test_all_gather_backward_sums_over_ranks(two_rank_results: list[dict[str, object]]) -> None:
    weights = torch.arange(12, dtype=torch.float64).view(4, 3)  # [world * 2, 3]
    for rank, results in enumerate(two_rank_results):
        expected = WORLD_SIZE * weights[2 * rank : 2 * rank + 2]  # [2, 3]: both ranks' identical gradients summed
        torch.testing.assert_close(results["gather_grad"], expected, rtol=0.0, atol=0.0)


def test_unequal_local_shapes_raise_on_every_rank(two_rank_results: list[dict[str, object]]) -> None:
    for results in two_rank_results:
        assert "same shape on every rank" in results["shape_error"]
        assert "[(1, 3), (2, 3)]" in results["shape_error"]
