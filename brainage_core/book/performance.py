"""The performance chapter's numbers: ``brainage bench`` results and the book's run times.

The chapter shows the results of :func:`~brainage_core.bench.run_benchmarks` (measured now or
read from a ``brainage bench --out`` file) as tables, and the wall time of every run of a batch
run of the book from the run records in its ``keys`` folder.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from brainage_core.config import RunConfig, load_config, split_overrides

__all__ = [
    "augmentation_table",
    "bench_config",
    "benchmark_results",
    "largest_loop_batch",
    "loss_timings",
    "machine_summary",
    "parallel_table",
    "pipeline_costs",
    "prepare_table",
    "raw_t1_files",
    "read_results",
    "run_times",
    "scaling_sentence",
    "scaling_table",
    "throughput_table",
]

# The streaming goals of the scaling benchmark: memory at the largest cohort within 20 % of that at
# the smallest, and throughput within 10 % of the in-memory path.
RSS_GROWTH_GOAL = 1.20
THROUGHPUT_GOAL = 0.90


def bench_config(overrides: Sequence[str] = ()) -> RunConfig:
    """The training configuration to benchmark: the defaults with ``overrides`` (dotted settings).

    ``cohort.`` settings, which a book profile passes to every chapter, do not concern the
    benchmark and are left out.
    """
    return load_config(None, split_overrides(overrides)[1])


def benchmark_results(
    bench_json: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: RunConfig,
    quick: bool = False,
    loop_max_batch: int = 512,
    raw_scans: Sequence[Path] = (),
) -> dict[str, Any]:
    """The results of ``brainage bench``: read from ``bench_json``, or (empty) measured now into ``out``.

    Args:
        bench_json: a results file of ``brainage bench --out FILE``; empty: run the benchmarks.
        out: where new measurements are written.
        config: the training configuration to measure (see :func:`bench_config`).
        quick: smaller sizes and fewer repeats.
        loop_max_batch: largest batch at which the loop formulation of RNC is timed.
        raw_scans: raw T1 files to time ``brainage prepare`` on (see :func:`raw_t1_files`).
    """
    if str(bench_json):
        return json.loads(Path(bench_json).read_text())
    from brainage_core.bench import run_benchmarks

    return run_benchmarks(Path(out), config=config, quick=quick, loop_max_batch=loop_max_batch, raw_scans=raw_scans)


def raw_t1_files(folder: str | os.PathLike[str], n: int) -> list[Path]:
    """The first ``n`` NIfTI files of ``folder`` by name (none when the folder is absent or ``n`` is 0)."""
    path = Path(folder)
    return sorted(path.glob("*.nii*"))[:n] if path.is_dir() and n > 0 else []


def prepare_table(results: dict[str, Any]) -> pd.Series | None:
    """Median seconds per scan of each step of ``brainage prepare`` and ``total``; ``None`` if not measured."""
    prepare = results.get("prepare")
    return None if not prepare else pd.Series(prepare["median_s"]).rename_axis("step")


def machine_summary(machine: dict[str, Any]) -> str:
    """One line naming the CPU, its cores and torch threads, and the GPU (or "no GPU")."""
    gpu = f", {machine['gpu']}" if "gpu" in machine else ", no GPU"
    return f"{machine['cpu']} ({machine['cpu_count']} cores, {machine['torch_threads']} torch threads){gpu}"


def loss_timings(results: dict[str, Any]) -> pd.DataFrame:
    """One row per batch size: ``fast_s`` and ``loop_s`` (seconds) and ``speedup`` (NaN where untimed)."""
    return pd.DataFrame(results["rnc_loss"])


def largest_loop_batch(timings: pd.DataFrame) -> int:
    """The largest batch size at which the loop formulation was timed (where the speed-up is measured)."""
    return int(timings.dropna(subset=["speedup"])["batch_size"].max())


def throughput_table(results: dict[str, Any]) -> pd.DataFrame:
    """Training throughput per loss: through the data pipeline, model only, and the pipeline's overhead."""
    return pd.DataFrame(results["training_throughput"])


def augmentation_table(results: dict[str, Any]) -> pd.Series:
    """Milliseconds per view of each augmentation transform and of the whole chain (``total``)."""
    return pd.DataFrame(results["augmentation_ms_per_view"]).set_index("transform")["ms_per_view"]


def pipeline_costs(results: dict[str, Any]) -> dict[str, float]:
    """Where a training step's time goes, per view, in milliseconds.

    Returns:
        ``model_ms`` (RNC's model-only step per view), ``aug_ms`` (the augmentation chain),
        ``affine_ms`` (its ``RandAffine``; NaN without one) and ``aug_budget_ms``: the most
        augmentation time ``a`` that keeps the pipeline's overhead ``a / (a + m)`` at or under
        10 % when augmentation and model ``m`` share the same cores, i.e. ``a <= m / 9``.
    """
    rnc = throughput_table(results).set_index("loss").loc["rnc"]
    model_ms = 1000 / (rnc["model_only_samples_per_s"] * rnc["n_views"])
    augmentation = augmentation_table(results)
    return {
        "model_ms": float(model_ms),
        "aug_ms": float(augmentation["total"]),
        "affine_ms": float(augmentation.get("RandAffine", math.nan)),
        "aug_budget_ms": float(model_ms / 9),
    }


def run_times(keys_dir: str | os.PathLike[str]) -> tuple[pd.DataFrame, float]:
    """Wall time of every run of a batch run of the book, from its run records ``keys_dir/*.json``.

    Returns:
        The runs (``run``, ``minutes``), longest first, and their total in minutes (NaN when
        ``keys_dir`` is empty or holds no records).
    """
    records = sorted(Path(keys_dir).glob("*.json")) if str(keys_dir) else []
    if not records:
        return pd.DataFrame(columns=["run", "minutes"]), math.nan
    times = pd.DataFrame([{"run": p.stem, "minutes": json.loads(p.read_text())["seconds"] / 60} for p in records])
    total = float(times["minutes"].sum())
    return times.sort_values("minutes", ascending=False).reset_index(drop=True), total


def scaling_table(scaling: dict[str, Any]) -> pd.DataFrame:
    """One row per (cohort size, data path) of ``brainage bench --scaling``: peak RSS (MiB) and samples/s."""
    columns = ["n_scans", "mode", "peak_rss_mb", "samples_per_s"]
    return pd.DataFrame(scaling["rows"])[columns].sort_values(["mode", "n_scans"]).reset_index(drop=True)


def scaling_sentence(scaling: dict[str, Any]) -> str:
    """The scaling benchmark's verdict: memory growth per data path and streamed throughput, against the goals."""
    table = scaling_table(scaling).set_index(["mode", "n_scans"])
    sizes = sorted(table.index.get_level_values("n_scans").unique())
    smallest, largest = sizes[0], sizes[-1]
    growth = scaling["rss_growth"]
    ratios = [float(value) for value in scaling["streamed_over_in_memory_throughput"].values()]
    streamed_rss = [table.loc[("streamed", n), "peak_rss_mb"] for n in (smallest, largest)]
    memory_rss = [table.loc[("in_memory", n), "peak_rss_mb"] for n in (smallest, largest)]
    memory_met = growth["streamed"] <= RSS_GROWTH_GOAL
    speed_met = min(ratios) >= THROUGHPUT_GOAL
    return (
        f"From {smallest:,} to {largest:,} scans, the peak memory of a streamed run went from "
        f"{streamed_rss[0]:.0f} to {streamed_rss[1]:.0f} MiB ({100 * (growth['streamed'] - 1):+.1f} %; goal within "
        f"{100 * (RSS_GROWTH_GOAL - 1):.0f} %: {'met' if memory_met else 'not met'}), that of an in-memory run from "
        f"{memory_rss[0]:.0f} to {memory_rss[1]:.0f} MiB ({100 * (growth['in_memory'] - 1):+.1f} %). Streamed "
        f"training ran at {100 * min(ratios):.0f}-{100 * max(ratios):.0f} % of the in-memory throughput (goal at "
        f"least {100 * THROUGHPUT_GOAL:.0f} %: {'met' if speed_met else 'not met'})."
    )


def read_results(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A benchmark's JSON results, or ``None`` when the file does not exist (not measured)."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


def parallel_table(parallel: dict[str, Any]) -> pd.DataFrame:
    """``brainage bench --parallel``: wall time per task and number of workers, and the speed-up over one worker."""
    table = pd.DataFrame(parallel["rows"])
    one_worker = table[table["workers"] == 1].set_index("task")["seconds"]
    table["speedup"] = table["task"].map(one_worker) / table["seconds"]
    return table
