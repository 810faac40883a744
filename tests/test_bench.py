"""Benchmarks: the augmentation breakdown names every transform of the pipeline."""

from __future__ import annotations

from brainage_core.bench import bench_augmentation
from brainage_core.imaging import AugmentConfig, build_augmentation


def test_augmentation_breakdown_times_each_transform_and_the_chain() -> None:
    config = AugmentConfig(flip_lr=True)
    rows = bench_augmentation(config, (12, 14, 12), repeats=2)
    expected = [type(t).__name__ for t in build_augmentation(config).transforms] + ["total"]
    assert [row["transform"] for row in rows] == expected
    assert all(row["ms_per_view"] > 0 for row in rows)
