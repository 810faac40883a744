"""Benchmarks: the augmentation breakdown names every transform; prepare timings name every step;
the scaling benchmark measures both data paths and its verdict follows the goals."""

from __future__ import annotations

from pathlib import Path

import pytest

from brainage_core.bench import bench_augmentation, bench_prepare
from brainage_core.bench_scaling import bench_scaling
from brainage_core.book.performance import scaling_sentence, scaling_table
from brainage_core.config import load_config
from brainage_core.imaging import AugmentConfig, build_augmentation
from brainage_core.prepare.jobs import STEPS
from tests.conftest import IXI_DIR


def test_augmentation_breakdown_times_each_transform_and_the_chain() -> None:
    config = AugmentConfig(flip_lr=True)
    rows = bench_augmentation(config, (12, 14, 12), repeats=2)
    expected = [type(t).__name__ for t in build_augmentation(config).transforms] + ["total"]
    assert [row["transform"] for row in rows] == expected
    assert all(row["ms_per_view"] > 0 for row in rows)


@pytest.mark.slow
def test_prepare_timings_name_every_step_and_add_up_to_the_total() -> None:
    scan = IXI_DIR / "t1" / "IXI012-HH-1211_T1.nii.gz"
    if not scan.is_file():
        pytest.skip(f"real IXI data not found at {IXI_DIR} (set BRAINAGE_IXI_DIR to the ixi_t1_2mm folder)")
    result = bench_prepare([scan])
    assert result["n_scans"] == 1
    steps = {step: seconds for step, seconds in result["median_s"].items() if step != "total"}
    assert list(steps) == list(STEPS) and all(seconds >= 0 for seconds in steps.values())
    assert steps["mask"] > 0.5  # deepbet ran: the mask was not given
    assert result["median_s"]["total"] == pytest.approx(sum(steps.values()), abs=0.02)


@pytest.mark.slow
def test_scaling_benchmark_measures_both_data_paths_at_each_size(tmp_path: Path) -> None:
    config = load_config(None, ["model.width=0.125", "train.batch_size=4", "num_threads=1"])
    overrides = ["model.width=0.125", "train.batch_size=4", "num_threads=1"]
    results = bench_scaling(
        tmp_path, config, sizes=(10, 20), shape=(16, 16, 16), overrides=overrides, steps_per_epoch=2, timed_epochs=1
    )
    table = scaling_table(results)
    assert sorted(zip(table["mode"], table["n_scans"])) == [
        ("in_memory", 10),
        ("in_memory", 20),
        ("streamed", 10),
        ("streamed", 20),
    ]
    assert (table["peak_rss_mb"] > 0).all() and (table["samples_per_s"] > 0).all()
    assert set(results["rss_growth"]) == {"streamed", "in_memory"}
    assert "From 10 to 20 scans" in scaling_sentence(results)
    assert (results["steps_per_epoch"], results["timed_epochs"]) == (2, 1)


def test_scaling_sentence_says_whether_each_goal_is_met() -> None:
    rows = [
        {"n_scans": n, "mode": mode, "peak_rss_mb": rss, "samples_per_s": speed}
        for n, mode, rss, speed in [
            (300, "streamed", 600, 40),
            (3000, "streamed", 900, 30),
            (300, "in_memory", 600, 40),
            (3000, "in_memory", 1000, 40),
        ]
    ]
    results = {
        "rows": rows,
        "rss_growth": {"streamed": 1.5, "in_memory": 1000 / 600},
        "streamed_over_in_memory_throughput": {"300": 1.0, "3000": 0.75},
    }
    sentence = scaling_sentence(results)
    assert "600 to 900 MiB (+50.0 %; goal within 20 %: not met)" in sentence
    assert "75-100 % of the in-memory throughput (goal at least 90 %: not met)" in sentence
