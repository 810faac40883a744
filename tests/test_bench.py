"""Benchmarks: the augmentation breakdown names every transform; prepare timings name every step."""

from __future__ import annotations

import pytest

from brainage_core.bench import bench_augmentation, bench_prepare
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
