"""Book-side helpers of the chapters: the IXI import step of real_data, the performance tables."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import brainage_core.cohorts.ixi as ixi
from brainage_core.book import performance, workflow
from brainage_core.cohorts.ixi import ImportReport

# ---------------------------------------------------------------------------- real_data: IXI import


def test_a_missing_ixi_folder_is_named_in_the_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=r"IXI scans not found in .*nowhere.*ixi_dir parameter"):
        workflow.import_ixi_folder(missing, tmp_path / "import")


def test_participants_csv_is_preferred_over_the_spreadsheet(tmp_path: Path) -> None:
    (tmp_path / "IXI.xls").write_bytes(b"")
    assert workflow.ixi_demographics(tmp_path) == tmp_path / "IXI.xls"
    (tmp_path / "participants.csv").write_text("MRID,Age,Sex\n")
    assert workflow.ixi_demographics(tmp_path) == tmp_path / "participants.csv"


def fake_import(calls: list[dict[str, Any]]):
    """A stand-in for import_ixi: records its arguments, writes a two-subject manifest and qc.csv."""

    def run(t1_dir, demographics, out_dir, mask_dir=None, progress=True, max_subjects=None, **_: Any) -> ImportReport:
        calls.append({"t1_dir": t1_dir, "demographics": demographics, "mask_dir": mask_dir, "max": max_subjects})
        out = Path(out_dir)
        (out / "images").mkdir(parents=True)
        rows = []
        for subject, age in (("IXI002", 35.8), ("IXI012", 38.8)):
            (out / "images" / f"{subject}.nii.gz").write_bytes(b"")
            rows.append(
                {"subject_id": subject, "image": f"images/{subject}.nii.gz", "age": age, "sex": "F", "group": "CN"}
            )
        pd.DataFrame(rows).to_csv(out / "manifest.csv", index=False)
        qc = pd.DataFrame({"subject_id": ["IXI002", "IXI012", "IXI013"], "dice": [0.97, 0.95, 0.80]})
        qc.assign(correlation=[0.9, 0.8, 0.3], brain_volume_ml=[1200.0, 1300.0, 900.0]).to_csv(
            out / "qc.csv", index=False
        )
        return ImportReport(out_dir=str(out), manifest=str(out / "manifest.csv"), n_images=3, n_imported=2)

    return run


def test_import_uses_the_seg_folder_when_present_and_reads_what_it_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(ixi, "import_ixi", fake_import(calls))
    folder = tmp_path / "ixi"
    (folder / "t1").mkdir(parents=True)
    (folder / "participants.csv").write_text("MRID,Age,Sex\n")

    without_seg = workflow.import_ixi_folder(folder, tmp_path / "a", max_subjects=5)
    assert calls[-1] == {
        "t1_dir": folder / "t1",
        "demographics": folder / "participants.csv",
        "mask_dir": None,
        "max": 5,
    }
    (folder / "seg").mkdir()
    workflow.import_ixi_folder(folder, tmp_path / "b")
    assert calls[-1]["mask_dir"] == folder / "seg" and calls[-1]["max"] is None

    assert list(without_seg.frame["subject_id"]) == ["IXI002", "IXI012"]
    assert Path(without_seg.frame.loc[0, "image"]).is_absolute()
    assert without_seg.qc["dice"].min() == 0.80
    youngest, oldest, worst = workflow.qc_example_figures(without_seg)
    assert (youngest.name, oldest.name, worst.name) == ("IXI002.png", "IXI012.png", "IXI013.png")
    assert worst.parent == tmp_path / "a" / "qc"
    table = workflow.qc_table(without_seg.qc)
    assert list(table.index) == ["count", "mean", "min", "max"]
    assert list(table.columns) == ["correlation", "dice", "brain_volume_ml"]
    assert table.loc["min", "dice"] == 0.8 and table.loc["count", "dice"] == 3


def test_left_out_summary_counts_each_reason() -> None:
    report = ImportReport(out_dir="o", manifest="o/manifest.csv", missing_age=["a", "b"], qc_failed=["c"])
    assert workflow.left_out_summary(report) == "2 missing age, 1 qc failed"
    assert workflow.left_out_summary(ImportReport(out_dir="o", manifest="o/manifest.csv")) == "none"


# ---------------------------------------------------------------------------- performance


def bench_results() -> dict[str, Any]:
    """A results document shaped like run_benchmarks' output."""
    return {
        "machine": {"cpu": "x86_64", "cpu_count": 2, "torch_threads": 2},
        "rnc_loss": [
            {"batch_size": 32, "fast_s": 0.001, "loop_s": 0.01, "speedup": 10.0},
            {"batch_size": 64, "fast_s": 0.002, "loop_s": 0.04, "speedup": 20.0},
            {"batch_size": 128, "fast_s": 0.004, "loop_s": None, "speedup": None},
        ],
        "rnc_loss_speedup_at_largest_loop_batch": 20.0,
        "training_throughput": [
            {"loss": "rnc", "n_views": 2, "pipeline_samples_per_s": 5.0, "model_only_samples_per_s": 10.0},
            {"loss": "mse", "n_views": 1, "pipeline_samples_per_s": 9.0, "model_only_samples_per_s": 12.0},
        ],
        "augmentation_ms_per_view": [
            {"transform": "RandAffine", "ms_per_view": 30.0},
            {"transform": "total", "ms_per_view": 40.0},
        ],
        "peak_rss_mb": 500.0,
    }


def test_stored_bench_results_are_read_not_measured(tmp_path: Path) -> None:
    stored = tmp_path / "bench.json"
    stored.write_text(json.dumps(bench_results()))
    config = performance.bench_config(["cohort.n_subjects=40", "train.batch_size=8", "device=cpu"])
    assert config.train.batch_size == 8 and config.device == "cpu"
    assert config.data.shape == performance.bench_config().data.shape  # the rest are the defaults
    results = performance.benchmark_results(stored, tmp_path / "new.json", config)
    assert results == bench_results() and not (tmp_path / "new.json").exists()


def test_bench_tables_and_the_augmentation_budget() -> None:
    results = bench_results()
    assert performance.machine_summary(results["machine"]) == "x86_64 (2 cores, 2 torch threads), no GPU"
    with_gpu = {**results["machine"], "gpu": "H100"}
    assert performance.machine_summary(with_gpu).endswith("threads), H100")
    timings = performance.loss_timings(results)
    assert performance.largest_loop_batch(timings) == 64 and math.isnan(timings.loc[2, "loop_s"])
    costs = performance.pipeline_costs(results)
    assert costs["model_ms"] == pytest.approx(50.0)  # 1000 / (10 subjects/s * 2 views)
    assert costs["aug_budget_ms"] == pytest.approx(50.0 / 9)  # a / (a + m) = 10 %
    assert (costs["aug_ms"], costs["affine_ms"]) == (40.0, 30.0)
    results["augmentation_ms_per_view"] = [{"transform": "total", "ms_per_view": 1.0}]
    assert math.isnan(performance.pipeline_costs(results)["affine_ms"])
    assert list(performance.throughput_table(results)["loss"]) == ["rnc", "mse"]


def test_run_times_longest_first_with_their_total(tmp_path: Path) -> None:
    for name, seconds in (("data", 60.0), ("train_rnc_s0", 300.0), ("ablation", 30.0)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"seconds": seconds}))
    times, total = performance.run_times(tmp_path)
    assert list(times["run"]) == ["train_rnc_s0", "data", "ablation"]
    assert total == pytest.approx(6.5) and list(times.index) == [0, 1, 2]
    for empty in (tmp_path / "missing", ""):
        times, total = performance.run_times(empty)
        assert times.empty and math.isnan(total)
