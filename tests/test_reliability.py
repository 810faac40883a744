"""Bad inputs and faults a user meets: each gets exit 2 and a message naming the file, row or field,
no traceback, and no file left behind; nothing a user owns is deleted; nothing loaded runs code."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from brainage_core.cli import main
from brainage_core.config import dataclass_from_dict, load_config
from brainage_core.imaging import PreprocessConfig, VolumeCache
from brainage_core.rundir import lock_run
from brainage_core.train import train
from tests.conftest import write_nifti, write_tiny_cohort

ROOT = Path(__file__).resolve().parents[1]
AFFINE = np.diag([4.0, 4.0, 4.0, 1.0])


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the hash of its content."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def overrides(manifest: Path, cache: Path, loss: str = "mse", epochs: int = 1) -> list[str]:
    return [
        f"data.manifest={manifest}",
        "data.spacing=4",
        "data.shape=[16,16,16]",
        f"data.cache_dir={cache}",
        "model.width=0.125",
        f"train.epochs={epochs}",
        "train.batch_size=4",
        f"loss.name={loss}",
        "probe.steps=20",
        "num_threads=1",
    ]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cohort(tmp_path_factory.mktemp("cohort"), n_subjects=15)


@pytest.fixture(scope="module")
def finished_run(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("finished")
    return train(load_config(None, overrides(cohort, folder / "cache")), folder / "run", progress=False)


# ---------------------------------------------------------------------------------- bad images
def _truncated(path: Path) -> None:
    write_nifti(path, np.random.default_rng(0).normal(100, 10, (16, 16, 16)).astype(np.float32), AFFINE)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _header_only(path: Path, shape: tuple[int, ...], zooms: tuple[float, ...] = (1.0, 1.0, 1.0)) -> None:
    header = nib.Nifti1Header()
    header.set_data_dtype(np.uint8)
    header.set_data_shape(shape)
    header.set_zooms(zooms[: len(shape)])
    header.set_qform(np.diag([*zooms[:3], 1.0]), code=1)
    header.set_sform(np.diag([*zooms[:3], 1.0]), code=1)
    with gzip.open(path, "wb") as stream:
        stream.write(header.binaryblock + b"\0" * 4 + b"\1" * 1000)


def _image(
    shape: tuple[int, ...], fill: float | None = None, nan: bool = False, affine: np.ndarray = AFFINE
) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        data = (
            np.random.default_rng(1).normal(100, 10, shape).astype(np.float32)
            if fill is None
            else np.full(shape, fill, np.float32)
        )
        if nan:
            data[2, 2, 2] = np.nan
        write_nifti(path, data, affine)

    return make


BAD_IMAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated": (_truncated, "truncated or corrupt"),
    "two_d": (_image((16, 16)), "2-D image"),
    "four_d_series": (_image((16, 16, 16, 3)), "4-D series of 3 volumes"),
    "zero_size": (lambda p: _header_only(p, (0, 16, 16)), "empty dimension"),
    "huge_header": (lambda p: _header_only(p, (1000, 1000, 1000)), "1,000,000,000 voxels"),
    "huge_voxels": (lambda p: _header_only(p, (16, 16, 16), (400.0, 400.0, 400.0)), "voxel size"),
    "nan": (_image((16, 16, 16), nan=True), "NaN or infinite"),
    "all_zero": (_image((16, 16, 16), fill=0.0), "constant"),
    "constant": (_image((16, 16, 16), fill=7.0), "constant"),
}


def _manifest_with(cohort: Path, folder: Path, image: str, mask: str = "") -> Path:
    frame = pd.read_csv(cohort)
    frame["image"] = [str(cohort.parent / p) for p in frame["image"]]
    frame["mask"] = ""
    frame.loc[2, "image"] = image
    frame.loc[2, "mask"] = mask
    path = folder / "manifest.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_image_is_refused_by_validate_train_and_predict_alike(
    case: str, cohort: Path, finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make, expected = BAD_IMAGES[case]
    data = tmp_path / "data"
    data.mkdir()
    bad = data / f"{case}.nii.gz"
    make(bad)
    manifest = _manifest_with(cohort, data, str(bad))
    before = snapshot(tmp_path)
    code, err = run_cli(["validate", str(manifest)], capsys)
    assert code == 2 and "row 3" in err and bad.name in err and expected in err, err
    code, err = run_cli(
        [
            "train",
            "--quiet",
            "--run-dir",
            str(tmp_path / "run"),
            "--set",
            *overrides(manifest, tmp_path.parent / f"{case}-cache"),
        ],
        capsys,
    )
    assert code == 2 and bad.name in err and expected in err, err
    code, err = run_cli(
        [
            "predict",
            "--quiet",
            "--run",
            str(finished_run),
            "--manifest",
            str(manifest),
            "--out",
            str(tmp_path / "p.csv"),
        ],
        capsys,
    )
    assert code == 2 and bad.name in err and expected in err, err
    assert snapshot(tmp_path) == before, "a refused command left files behind"


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("empty_mask", "mask is empty"),
        ("other_affine", "mask affine differs"),
        ("other_shape", "mask shape (12, 16, 16) differs"),
    ],
)
def test_bad_mask_is_named_with_what_differs(
    case: str, expected: str, cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image, mask = tmp_path / "img.nii.gz", tmp_path / f"{case}.nii.gz"
    _image((16, 16, 16))(image)
    shape = (12, 16, 16) if case == "other_shape" else (16, 16, 16)
    affine = (
        np.diag([4.0, 4.0, 4.0, 1.0]) @ np.array([[1, 0, 0, 2], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
        if case == "other_affine"
        else AFFINE
    )
    write_nifti(mask, np.zeros(shape, np.uint8) if case == "empty_mask" else np.ones(shape, np.uint8), affine)
    manifest = _manifest_with(cohort, tmp_path, str(image), str(mask))
    code, err = run_cli(["validate", str(manifest)], capsys)
    assert code == 2 and "row 3" in err and mask.name in err and expected in err, err
    code, err = run_cli(
        ["train", "--quiet", "--run-dir", str(tmp_path / "run"), "--set", *overrides(manifest, tmp_path / "cache")],
        capsys,
    )
    assert code == 2 and mask.name in err and expected in err, err
    assert not (tmp_path / "run").exists()


def test_every_bad_scan_of_a_manifest_is_reported_at_once(cohort: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(cohort)
    frame["image"] = [str(cohort.parent / p) for p in frame["image"]]
    fitted = frame.index[(frame["group"] == "CN") & frame["split"].isin(["train", "val"])]
    bad_rows = (int(fitted[1]), int(fitted[4]))
    for row, case in zip(bad_rows, ("nan", "constant")):
        path = tmp_path / f"{case}.nii.gz"
        BAD_IMAGES[case][0](path)
        frame.loc[row, "image"] = str(path)
    frame.to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(OSError) as caught:
        train(load_config(None, overrides(tmp_path / "m.csv", tmp_path / "cache")), tmp_path / "run", progress=False)
    message = str(caught.value)
    assert f"2 of {len(fitted)} scans" in message
    assert f"row {bad_rows[0] + 1}:" in message and f"row {bad_rows[1] + 1}:" in message, "manifest row numbers"
    assert "nan.nii.gz" in message and "constant.nii.gz" in message
    assert not (tmp_path / "run").exists(), "nothing is left of a run that never trained"


def test_a_bad_test_scan_is_reported_after_training_and_the_run_resumes(cohort: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(cohort)
    frame["image"] = [str(cohort.parent / p) for p in frame["image"]]
    row = int(frame.index[frame["split"] == "test"][0])
    good = frame.loc[row, "image"]
    BAD_IMAGES["nan"][0](tmp_path / "nan.nii.gz")
    frame.loc[row, "image"] = str(tmp_path / "nan.nii.gz")
    frame.to_csv(tmp_path / "m.csv", index=False)
    config = load_config(None, overrides(tmp_path / "m.csv", tmp_path / "cache"))
    with pytest.raises(OSError, match=rf"(?s)training finished, but held-out scans .* row {row + 1}: .*nan.nii.gz"):
        train(config, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "checkpoint.pt").is_file() and not (tmp_path / "run" / "model.pt").exists()
    (tmp_path / "nan.nii.gz").unlink()
    (tmp_path / "nan.nii.gz").symlink_to(good)  # the user fixes the scan, then resumes
    train(config, tmp_path / "run", resume=True, progress=False)
    assert (tmp_path / "run" / "predictions.csv").is_file()


def test_header_claiming_a_billion_voxels_is_refused_before_reading(tmp_path: Path) -> None:
    import resource

    from brainage_core.imaging import ImageReadError, preprocess

    path = tmp_path / "huge.nii.gz"
    _header_only(path, (1000, 1000, 1000))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageReadError, match="1,000,000,000 voxels"):
        preprocess(path, PreprocessConfig(spacing=4.0, shape=(16, 16, 16)))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 200_000, (
        "peak memory grew by more than 200 MB"
    )


# ------------------------------------------------------------------------------- bad manifests
def _rewrite(cohort: Path, folder: Path, edit: Callable[[str], str]) -> Path:
    text = cohort.read_text()
    path = folder / "manifest.csv"
    path.write_text(edit(text).replace("img/", str(cohort.parent / "img") + "/"))
    return path


def _set_cell(text: str, row: int, column: str, value: str) -> str:
    lines = text.splitlines()
    cells = lines[row].split(",")
    cells[lines[0].split(",").index(column)] = value
    lines[row] = ",".join(cells)
    return "\n".join(lines) + "\n"


BAD_MANIFESTS: dict[str, tuple[Callable[[str], str], str]] = {
    "semicolons": (lambda t: t.replace(",", ";"), "separated by semicolons"),
    "duplicate_header": (
        lambda t: "\n".join([t.splitlines()[0] + ",age"] + [line + ",33" for line in t.splitlines()[1:]]),
        "column 'age': column appears 2 times",
    ),
    "header_only": (lambda t: t.splitlines()[0] + "\n", "no rows"),
    "missing_column": (lambda t: t.replace("sex", "gender", 1), "column 'sex': required column is missing"),
    "bad_age": (lambda t: _set_cell(t, 2, "age", "old"), "row 2 (line 3), column 'age': 'old' is not a number"),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_bad_manifest_is_refused_with_its_row_or_column(
    case: str, cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edit, expected = BAD_MANIFESTS[case]
    manifest = _rewrite(cohort, tmp_path, edit)
    before = snapshot(tmp_path)
    code, err = run_cli(["validate", str(manifest)], capsys)
    assert code == 2 and expected in err and str(manifest) in err, err
    code, err = run_cli(
        [
            "train",
            "--quiet",
            "--run-dir",
            str(tmp_path / "run"),
            "--set",
            *overrides(manifest, tmp_path.parent / f"{case}-cache"),
        ],
        capsys,
    )
    assert code == 2 and expected in err, err
    assert snapshot(tmp_path) == before


def test_unset_manifest_says_how_to_set_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(["train", "--quiet", "--run-dir", str(tmp_path / "run")], capsys)
    assert code == 2 and "data.manifest is not set" in err and "None" not in err
    assert not (tmp_path / "run").exists()


def test_symlinked_manifest_resolves_paths_the_same_way_everywhere(
    cohort: Path, finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    link = tmp_path / "elsewhere" / "linked.csv"
    link.parent.mkdir()
    link.symlink_to(cohort)
    assert run_cli(["validate", str(link)], capsys)[0] == 0
    assert (
        run_cli(
            [
                "predict",
                "--quiet",
                "--run",
                str(finished_run),
                "--manifest",
                str(link),
                "--out",
                str(tmp_path / "p.csv"),
            ],
            capsys,
        )[0]
        == 0
    )


def test_predict_refuses_to_overwrite_its_manifest(
    cohort: Path, finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = cohort.read_bytes()
    code, err = run_cli(
        ["predict", "--quiet", "--run", str(finished_run), "--manifest", str(cohort), "--out", str(cohort)], capsys
    )
    assert code == 2 and "is the manifest itself" in err
    assert cohort.read_bytes() == before


# --------------------------------------------------------------------------------- bad configs
BAD_CONFIGS: dict[str, tuple[list[str], str]] = {
    "epochs_zero": (["train.epochs=0"], "train.epochs: must be >= 1"),
    "epochs_negative": (["train.epochs=-1"], "train.epochs: must be >= 1"),
    "batch_zero": (["train.batch_size=0"], "train.batch_size: must be >= 2"),
    "batch_negative": (["train.batch_size=-2"], "train.batch_size: must be >= 2"),
    "width_tiny": (["model.width=0.001"], "model.width: must be >= 0.015625"),
    "rnc_one_view": (["loss.name=rnc", "loss.n_views=1"], "loss.n_views: must be >= 2"),
    "unknown_loss_param": (["loss.params={temprature: 2}"], "loss.params.temprature: not a parameter"),
    "unknown_loss": (["loss.name=hinge"], "loss.name: unknown loss 'hinge'"),
    "device_tpu": (["device=tpu"], "device: unknown device 'tpu'"),
    "lr_huge": (["train.lr=1e12"], "train.lr: must be > 0 and <= 10"),
    "optimizer_typo": (["train.optimizer=adam"], "train.optimizer: unknown optimizer 'adam'"),
    "broken_yaml": (["train.epochs=[1,"], "not valid YAML"),
    "unknown_key": (["train.epoch=3"], "train.epoch: unknown key"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_is_refused_before_any_work(
    case: str, cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra, expected = BAD_CONFIGS[case]
    code, err = run_cli(
        [
            "train",
            "--quiet",
            "--run-dir",
            str(tmp_path / "run"),
            "--set",
            *overrides(cohort, tmp_path / "cache"),
            *extra,
        ],
        capsys,
    )
    assert code == 2 and expected in err, err
    assert list(tmp_path.iterdir()) == [], "nothing is written (no cache, no run dir) for a bad config"


def test_every_config_problem_is_listed_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("train: {epochs: 0, batch_size: -2, lr: 1.0e12}\nmodel: {width: 0.001}\ndevice: tpu\n")
    code, err = run_cli(["train", "--config", str(config), "--run-dir", str(tmp_path / "run")], capsys)
    assert code == 2 and "5 problem(s)" in err and str(config) in err, err
    config.write_text("train: {epochs: [1,\n")
    code, err = run_cli(["train", "--config", str(config), "--run-dir", str(tmp_path / "run")], capsys)
    assert code == 2 and "not valid YAML" in err and str(config) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


@dataclass
class _Span:
    low: float
    high: float = 1.0

    def __post_init__(self) -> None:
        if self.low > self.high:
            raise ValueError("low must be <= high")


@dataclass
class _Spans:
    main: _Span = field(default_factory=lambda: _Span(0.0))
    named: dict[str, _Span] = field(default_factory=lambda: {"a": _Span(0.5)})


def test_config_loader_names_missing_required_fields_and_never_crashes() -> None:
    """A dataclass with required fields: a missing one is named, a failed check recorded, nothing raised."""
    problems: list[str] = []
    assert dataclass_from_dict(_Span, {"high": 2.0}, problems, "span") is None
    assert problems == ["span.low: missing from section 'span'; it has no default, give a value"]
    problems = []
    assert dataclass_from_dict(_Span, {"low": 3.0, "high": 2.0}, problems, "span") is None
    assert problems == ["span: low must be <= high"]
    problems = []
    named = {"a": {"high": 0.7}, "b": {"low": 0.1}, "c": {"high": 2}}
    spans = dataclass_from_dict(_Spans, {"main": {"low": 5.0}, "named": named}, problems)
    assert spans.main == _Span(0.0), "a section that fails its check keeps its default"
    assert spans.named == {"a": _Span(0.5, 0.7), "b": _Span(0.1)}, "entries merge into their defaults"
    assert problems == [
        "main: low must be <= high",
        "named.c.low: missing from section 'named.c'; it has no default, give a value",
    ]


# ------------------------------------------------------------------------ checkpoints and models
class _Payload:
    def __reduce__(self):  # what a malicious checkpoint carries: a call run by pickle.load
        return (os.system, (f"touch {os.environ['BRAINAGE_PWNED']}",))


def test_a_checkpoint_with_a_pickled_payload_is_refused_not_run(
    cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = train(load_config(None, overrides(cohort, tmp_path / "cache", epochs=1)), tmp_path / "run", progress=False)
    marker = tmp_path / "pwned"
    monkeypatch.setenv("BRAINAGE_PWNED", str(marker))
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    checkpoint["history"] = _Payload()
    with open(run / "checkpoint.pt", "wb") as stream:
        torch.save(checkpoint, stream, pickle_module=pickle)
    code, err = run_cli(["train", "--quiet", "--resume", "--run-dir", str(run)], capsys)
    assert code == 2 and "checkpoint.pt cannot be loaded" in err, err
    assert not marker.exists(), "the checkpoint's payload ran"


def test_truncated_weights_and_checkpoint_are_named(
    cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = train(load_config(None, overrides(cohort, tmp_path / "cache", epochs=1)), tmp_path / "run", progress=False)
    for name in ("model.pt", "checkpoint.pt"):
        data = (run / name).read_bytes()
        (run / name).write_bytes(data[: len(data) // 3])
    code, err = run_cli(
        ["predict", "--quiet", "--run", str(run), "--manifest", str(cohort), "--out", str(tmp_path / "p.csv")], capsys
    )
    assert code == 2 and "model.pt cannot be loaded" in err, err
    code, err = run_cli(["train", "--quiet", "--resume", "--run-dir", str(run)], capsys)
    assert code == 2 and "checkpoint.pt cannot be loaded" in err, err


def test_corrupt_cache_entry_is_a_miss_and_is_rewritten(tmp_path: Path) -> None:
    image = tmp_path / "img.nii.gz"
    _image((16, 16, 16))(image)
    config = PreprocessConfig(spacing=4.0, shape=(16, 16, 16))
    cache = VolumeCache(tmp_path / "cache")
    first = cache.load(image, config)
    entry = cache.path_for(cache.key(image, config))
    entry.write_bytes(entry.read_bytes()[:100])
    again = VolumeCache(tmp_path / "cache")
    torch.testing.assert_close(again.load(image, config).as_tensor(), first.as_tensor())
    assert again.misses == 1 and VolumeCache(tmp_path / "cache").load(image, config) is not None
    with np.load(entry) as stored:
        assert stored["volume"].shape == (1, 16, 16, 16)


# ------------------------------------------------------------------------------------- resume
def test_resume_reads_the_run_config_and_refuses_a_changed_one(
    cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert (
        run_cli(
            ["train", "--quiet", "--run-dir", str(run), "--set", *overrides(cohort, tmp_path / "cache", epochs=1)],
            capsys,
        )[0]
        == 0
    )
    before = snapshot(run)
    code, err = run_cli(
        ["train", "--quiet", "--resume", "--run-dir", str(run), "--set", "train.lr=0.01", "seed=3"], capsys
    )
    assert code == 2 and "2 field(s) differ" in err and "train.lr: 0.001 -> 0.01" in err and "seed: 0 -> 3" in err, err
    other = tmp_path / "other.yaml"
    other.write_text("train: {epochs: 5}\n")
    code, err = run_cli(["train", "--quiet", "--resume", "--run-dir", str(run), "--config", str(other)], capsys)
    assert code == 2 and "train.epochs: 1 -> 5" in err and "data.manifest" in err, err
    assert snapshot(run) == before, "a refused resume changed the run"
    assert run_cli(["train", "--quiet", "--resume", "--run-dir", str(run)], capsys)[0] == 0, "the README form"


def test_ctrl_c_exits_130_and_says_how_to_resume(cohort: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "brainage_core.cli",
        "train",
        "--quiet",
        "--run-dir",
        str(run),
        "--set",
        *overrides(cohort, tmp_path / "cache", epochs=200),
    ]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run / "checkpoint.pt").exists():
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err and f"brainage train --run-dir {run} --resume" in err


def test_a_failure_after_training_began_is_logged_and_resumable(
    cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from brainage_core import engine

    calls = {"n": 0}
    original = engine.Trainer.evaluate

    def failing_second_epoch(self):  # the evaluation of epoch 2 fails
        calls["n"] += 1
        if calls["n"] == 2:
            raise FloatingPointError("non-finite training loss nan at epoch 2; lower train.lr")
        return original(self)

    monkeypatch.setattr(engine.Trainer, "evaluate", failing_second_epoch)
    with pytest.raises(FloatingPointError):
        train(load_config(None, overrides(cohort, tmp_path / "cache", epochs=3)), tmp_path / "run", progress=False)
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "FloatingPointError" in log and "--resume" in log
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


def test_failed_training_before_any_epoch_leaves_no_run_dir(cohort: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(cohort)
    frame["image"] = [str(cohort.parent / p) for p in frame["image"]]
    frame.loc[0, "image"] = str(tmp_path / "gone.nii.gz")
    frame.to_csv(tmp_path / "m.csv", index=False)
    config = load_config(None, overrides(tmp_path / "m.csv", tmp_path / "cache"))
    (tmp_path / "gone.nii.gz").write_bytes(b"not nifti")
    with pytest.raises(ValueError, match="gone.nii.gz"):
        train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_stale_temporary_checkpoint_is_removed_on_resume(cohort: Path, tmp_path: Path) -> None:
    config = load_config(None, overrides(cohort, tmp_path / "cache", epochs=1))
    run = train(config, tmp_path / "run", progress=False)
    stale = run / ".tmp-checkpoint.pt.abc123.pt"
    stale.write_bytes(b"half a checkpoint")
    user_file = run / ".tmp-notes.txt"
    user_file.write_text("mine")
    train(config, run, resume=True, progress=False)
    assert not stale.exists() and user_file.read_text() == "mine"


# ------------------------------------------------------------------------------------- locking
def test_a_second_training_into_a_locked_run_dir_is_refused(
    cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    with lock_run(run, command="train (test)"):
        code, err = run_cli(
            ["train", "--quiet", "--run-dir", str(run), "--set", *overrides(cohort, tmp_path / "cache")], capsys
        )
    assert code == 2 and "is in use by process" in err and str(os.getpid()) in err and "train (test)" in err, err
    assert not (run / "config.yaml").exists() and not (run / "model.pt").exists()


# ----------------------------------------------------------------------- nothing a user owns is lost
def test_synth_never_deletes_user_files_in_its_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cohort"
    args = ["synth", "--out", str(out), "--n-subjects", "2", "--spacing", "6", "--workers", "1", "--quiet"]
    assert run_cli(args, capsys)[0] == 0
    planted = out / "images" / "my_scan.nii.gz"
    planted.write_bytes(b"user data")
    code, err = run_cli([*args[:4], "3", *args[5:]], capsys)
    assert code == 2 and "images/my_scan.nii.gz" in err and "did not write" in err, err
    assert planted.read_bytes() == b"user data"
    planted.unlink()
    assert run_cli([*args[:4], "3", *args[5:]], capsys)[0] == 0, "a folder of the project's own files is regenerated"
    assert len(list((out / "images").iterdir())) == 3


def test_workflow_never_deletes_user_files(cohort: Path, tmp_path: Path) -> None:
    from brainage_core.book.workflow import ensure_cohort
    from brainage_core.config import CohortConfig
    from brainage_core.train import ensure_run

    cohort_dir = tmp_path / "cohort"
    ensure_cohort(cohort_dir, CohortConfig(n_subjects=2, seed=0, spacing=6.0))
    planted = cohort_dir / "notes.txt"
    planted.write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        ensure_cohort(cohort_dir, CohortConfig(n_subjects=3, seed=0, spacing=6.0))
    assert planted.read_text() == "mine"

    run = tmp_path / "run"
    cohort = write_tiny_cohort(tmp_path / "c30", n_subjects=30)  # enough healthy validation subjects to evaluate
    config = load_config(None, overrides(cohort, tmp_path / "cache"))
    ensure_run(config, run, progress=False)
    assert ensure_run(config, run, progress=False) == run
    metrics = run / "metrics.json"
    assert main(["evaluate", str(run), "--n-boot", "20", "--method", "beheshti"]) == 0 and metrics.is_file()
    planted = run / "my_analysis.csv"
    planted.write_text("mine")
    changed = load_config(None, [*overrides(cohort, tmp_path / "cache"), "seed=1"])
    with pytest.raises(FileExistsError, match="my_analysis.csv"):
        ensure_run(changed, run, progress=False)
    assert planted.read_text() == "mine" and (run / "model.pt").is_file()
    planted.unlink()
    ensure_run(changed, run, progress=False)  # only the project's files were there: replaced
    assert load_config(run / "config.yaml").seed == 1


def test_source_never_loads_with_weights_only_false() -> None:
    offenders = [
        str(p)
        for p in [*ROOT.joinpath("brainage_core").rglob("*.py"), *ROOT.joinpath("tests").rglob("*.py")]
        if "weights_only=" + "False" in p.read_text()
    ]
    assert offenders == []


def test_commands_keep_user_files_planted_in_their_output_folders(
    cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A user's file in each folder a command writes to survives the command, failed or not."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    bad = tmp_path / "bad.csv"
    bad.write_text(cohort.read_text().replace("img/", str(cohort.parent / "img") + "/").replace(",M,", ",X,", 1))
    assert (
        run_cli(["train", "--quiet", "--run-dir", str(run), "--set", *overrides(bad, tmp_path / "cache")], capsys)[0]
        == 2
    )
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"], "a failed training removed only its own files"
    assert (
        run_cli(["train", "--quiet", "--run-dir", str(run), "--set", *overrides(cohort, tmp_path / "cache")], capsys)[0]
        == 0
    )
    outputs = {name: tmp_path / name for name in ("predict", "clinical", "bench")}
    for folder in outputs.values():
        folder.mkdir()
        (folder / "notes.txt").write_text("mine")
    commands = [
        [
            "predict",
            "--quiet",
            "--run",
            str(run),
            "--manifest",
            str(cohort),
            "--out",
            str(outputs["predict"] / "p.csv"),
        ],
        ["evaluate", str(run), "--n-boot", "20", "--method", "beheshti"],
        ["clinical", str(run), "--out-dir", str(outputs["clinical"]), "--method", "beheshti"],
        [
            "bench",
            "--quick",
            "--out",
            str(outputs["bench"] / "b.json"),
            "--set",
            *overrides(cohort, tmp_path / "cache"),
        ],
    ]
    for command in commands:
        run_cli(command, capsys)  # succeed or fail: the user's files must stay
    for folder in [run, *outputs.values()]:
        assert (folder / "notes.txt").read_text() == "mine", folder


def test_only_the_ownership_module_deletes_files() -> None:
    """Deletion goes through brainage_core.ownership (recorded files only) or removes the writer's own temp/record files."""
    allowed = {"ownership.py", "fileio.py", "runner.py"}
    pattern = ("shutil.rmtree", ".unlink(", "os.remove(", "os.unlink(", ".rmdir(")
    offenders = [
        p.name
        for p in ROOT.joinpath("brainage_core").rglob("*.py")
        if p.name not in allowed and any(token in p.read_text() for token in pattern)
    ]
    assert offenders == []
    runner = ROOT.joinpath("brainage_core", "book", "runner.py").read_text()
    assert "shutil.rmtree" not in runner


def test_mask_grid_is_checked_when_the_manifest_has_auxiliary_columns(tmp_path: Path) -> None:
    """Effect maps are only checked for existence; that must not switch off the row's mask-grid check."""
    from brainage_core.manifest import validate_manifest

    _image((16, 16, 16))(tmp_path / "i.nii.gz")
    write_nifti(tmp_path / "m.nii.gz", np.ones((16, 16, 16), np.uint8), np.diag([2.0, 4.0, 4.0, 1.0]))
    write_nifti(tmp_path / "e.nii.gz", np.ones((16, 16, 16), np.uint8), AFFINE)
    row = {
        "subject_id": "a",
        "image": "i.nii.gz",
        "mask": "m.nii.gz",
        "effect_map": "e.nii.gz",
        "age": 50,
        "sex": "M",
        "group": "CN",
    }
    pd.DataFrame([row]).to_csv(tmp_path / "m.csv", index=False)
    assert [p.column for p in validate_manifest(tmp_path / "m.csv")] == ["mask"]
