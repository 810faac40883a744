"""The notebooks' glue (book/workflow.py), the runner's relative paths and predict from anywhere."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from brainage_core.analysis import compare
from brainage_core.book import workflow
from brainage_core.book.runner import _relative_paths
from brainage_core.cli import main
from brainage_core.config import CohortConfig, ConfigError, load_config, split_overrides
from brainage_core.manifest import ManifestError
from brainage_core.rundir import read_config, read_history
from brainage_core.train import train
from tests.conftest import write_tiny_cohort
from tests.test_train import tiny_overrides


@pytest.fixture(autouse=True)
def no_smoke_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Smoke mode comes from each test's arguments, not from the BRAINAGE_SMOKE=1 the root conftest sets."""
    monkeypatch.delenv("BRAINAGE_SMOKE", raising=False)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cohort(tmp_path_factory.mktemp("cohort"), n_subjects=20)


def write_runs_file(path: Path) -> Path:
    path.write_text(
        "profiles:\n"
        "  tiny:\n"
        "    overrides: [train.epochs=1, 'data.shape=[16, 16, 16]', cohort.n_subjects=8]\n"
        "  bare:\n"
        "    parameters: {smoke: true}\n"
        "  empty:\n"
        "runs: []\n"
    )
    return path


# profile_overrides


def test_profile_overrides_reads_a_profile_of_the_runs_file(tmp_path: Path) -> None:
    runs_file = write_runs_file(tmp_path / "runs.yml")
    assert workflow.profile_overrides("tiny", runs_file) == [
        "train.epochs=1",
        "data.shape=[16, 16, 16]",
        "cohort.n_subjects=8",
    ]
    assert workflow.profile_overrides("bare", runs_file) == []
    assert workflow.profile_overrides("empty", runs_file) == []


def test_an_unknown_profile_is_named_with_the_known_ones(tmp_path: Path) -> None:
    runs_file = write_runs_file(tmp_path / "runs.yml")
    with pytest.raises(ValueError, match=r"unknown profile 'smokey'") as error:
        workflow.profile_overrides("smokey", runs_file)
    assert str(runs_file) in str(error.value) and "'tiny'" in str(error.value)


def test_the_book_has_a_smoke_profile_with_overrides() -> None:
    assert workflow.profile_overrides(workflow.SMOKE_PROFILE), "smoke mode would shrink nothing"


# chapter_config


def test_chapter_config_outside_smoke_mode_is_the_defaults_and_the_overrides(cohort: Path) -> None:
    config = workflow.chapter_config(["train.epochs=3"], manifest=str(cohort))
    assert config == load_config(None, [f"data.manifest={cohort.resolve()}", "train.epochs=3"])


def test_smoke_mode_applies_the_smoke_profile(cohort: Path) -> None:
    _, run_overrides = split_overrides(workflow.profile_overrides(workflow.SMOKE_PROFILE))
    expected = load_config(None, [*run_overrides, f"data.manifest={cohort.resolve()}"])
    assert workflow.chapter_config(smoke=True, manifest=str(cohort)) == expected
    assert expected != load_config(None, [f"data.manifest={cohort.resolve()}"]), "the smoke profile changes the run"


def test_the_environment_variable_also_turns_smoke_mode_on(cohort: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    smoke = workflow.chapter_config(smoke=True, manifest=str(cohort))
    monkeypatch.setenv("BRAINAGE_SMOKE", "1")
    assert workflow.chapter_config(smoke=False, manifest=str(cohort)) == smoke


def test_smoke_mode_also_shrinks_the_synthetic_cohort(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    requested: list[CohortConfig] = []

    def fake_ensure_cohort(cohort_dir: Path, cohort: CohortConfig, progress: bool = False) -> Path:
        requested.append(cohort)
        return Path(cohort_dir) / "manifest.csv"

    monkeypatch.setattr(workflow, "ensure_cohort", fake_ensure_cohort)
    config = workflow.chapter_config(smoke=True, cohort_dir=tmp_path / "cohort")
    cohort_overrides, _ = split_overrides(workflow.profile_overrides(workflow.SMOKE_PROFILE))
    assert "n_subjects=40" in cohort_overrides, "the book's smoke profile changed: update this test"
    assert requested[0].n_subjects == 40 and requested[0] != CohortConfig()
    assert config.data.manifest == str(tmp_path / "cohort" / "manifest.csv")
    workflow.chapter_config(cohort_dir=tmp_path / "cohort")
    assert requested[1] == CohortConfig(), "outside smoke mode the cohort keeps its defaults"


def test_the_notebooks_overrides_win_over_the_smoke_profile(cohort: Path) -> None:
    smoke = workflow.chapter_config(smoke=True, manifest=str(cohort))
    config = workflow.chapter_config(["train.epochs=3", "model.width=0.25"], smoke=True, manifest=str(cohort))
    assert (smoke.train.epochs, smoke.model.width) == (1, 0.125)
    assert (config.train.epochs, config.model.width) == (3, 0.25)
    assert config.data.shape == smoke.data.shape, "the other smoke settings stay"


def test_a_bad_override_lists_every_problem(cohort: Path) -> None:
    with pytest.raises(ConfigError) as error:
        workflow.chapter_config(["train.epochs=0", "model.widht=0.5"], manifest=str(cohort))
    message = str(error.value)
    assert "train.epochs" in message and "widht" in message
    assert len(error.value.problems) == 2


def test_a_bad_cohort_override_names_its_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cohort\.n_subjects") as error:
        workflow.chapter_config(["cohort.n_subjects=2", "train.epochs=0"], cohort_dir=tmp_path / "cohort")
    assert "train.epochs" in str(error.value), "cohort and run problems are reported together"
    assert not (tmp_path / "cohort").exists(), "nothing is generated from invalid settings"


def test_a_manifest_of_your_own_is_validated(tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    manifest = write_tiny_cohort(folder, n_subjects=8)
    config = workflow.chapter_config(manifest=str(manifest), cohort_dir=tmp_path / "unused")
    assert config.data.manifest == str(manifest.resolve())
    assert not (tmp_path / "unused").exists(), "a manifest of your own generates no cohort"
    frame = pd.read_csv(manifest)
    frame.loc[2, "age"] = -5
    frame.loc[3, "image"] = "img/missing.nii.gz"
    frame.to_csv(manifest, index=False)
    with pytest.raises(ManifestError) as error:
        workflow.chapter_config(manifest=str(manifest))
    assert "missing.nii.gz" in str(error.value) and "age" in str(error.value)


def test_without_a_manifest_or_a_cohort_folder_the_chapter_is_told_what_to_give() -> None:
    with pytest.raises(ValueError, match="give a manifest or a cohort_dir"):
        workflow.chapter_config()


# smoke_paths and with_loss


def test_smoke_paths_moves_only_standalone_folders_and_only_in_smoke_mode() -> None:
    standalone = "/repo/_book_runs/standalone/data/cohort"
    batch = "/repo/_book_runs/smoke/work/data/cohort"
    assert workflow.smoke_paths(False, standalone, batch) == [standalone, batch]
    assert workflow.smoke_paths(True, standalone, batch) == ["/repo/_book_runs/standalone-smoke/data/cohort", batch]
    assert workflow.smoke_paths(True) == []


def test_smoke_paths_follows_the_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRAINAGE_SMOKE", "1")
    assert workflow.smoke_paths(False, "../_book_runs/standalone/runs") == ["../_book_runs/standalone-smoke/runs"]


def test_a_cohort_of_an_older_generator_is_regenerated_not_reused(tmp_path: Path) -> None:
    import json

    from brainage_core.cohorts.synthetic import FORMAT_VERSION

    cohort = CohortConfig(n_subjects=2, seed=0, spacing=6.0)
    manifest = workflow.ensure_cohort(tmp_path / "cohort", cohort)
    record = tmp_path / "cohort" / "cohort.json"
    written = record.stat().st_mtime_ns
    assert workflow.ensure_cohort(tmp_path / "cohort", cohort) == manifest and record.stat().st_mtime_ns == written
    record.write_text(json.dumps(json.loads(record.read_text()) | {"format_version": FORMAT_VERSION - 1}))
    workflow.ensure_cohort(tmp_path / "cohort", cohort)
    assert json.loads(record.read_text())["format_version"] == FORMAT_VERSION


def test_with_loss_drops_the_params_of_another_loss_and_copies() -> None:
    config = load_config(None, ["loss.name=rnc", "loss.params={temperature: 2.0}", "seed=0"])
    same = workflow.with_loss(config, "rnc", seed=3)
    assert same.loss.params == {"temperature": 2.0} and same.seed == 3
    other = workflow.with_loss(config, "mse")
    assert other.loss.name == "mse" and other.loss.params == {} and other.seed == 0
    assert config.loss.name == "rnc" and config.loss.params == {"temperature": 2.0} and config.seed == 0
    same.loss.params["temperature"] = 5.0
    assert config.loss.params == {"temperature": 2.0}, "the copy shares nothing with the original"


# ensure_runs


def file_times(folder: Path) -> dict[str, int]:
    return {path.name: path.stat().st_mtime_ns for path in folder.iterdir() if path.is_file()}


def test_ensure_runs_reuses_a_finished_run_and_retrains_a_changed_one(cohort: Path, tmp_path: Path) -> None:
    config = load_config(None, tiny_overrides(tmp_path, cohort, epochs=1))
    runs_root = tmp_path / "runs"
    first = workflow.ensure_runs(config, runs_root, ["mse"], [0])
    run = workflow.run_folder(runs_root, "mse", 0)
    assert first == {("mse", 0): run} and (run / "model.pt").is_file()
    before = file_times(run)

    assert workflow.ensure_runs(config, runs_root, ["mse"], [0]) == first
    assert file_times(run) == before, "a finished run with the same settings is reused untouched"

    longer = load_config(None, [*tiny_overrides(tmp_path, cohort, epochs=1), "train.epochs=2"])
    workflow.ensure_runs(longer, runs_root, ["mse"], [0])
    assert read_config(run).train.epochs == 2
    assert read_history(run)["epoch"].tolist() == [1, 2]
    assert file_times(run)["model.pt"] != before["model.pt"], "a changed setting retrains"


# the runner's parameters


def test_relative_paths_turns_repository_paths_relative_to_the_notebook(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    folder = root / "book"
    folder.mkdir(parents=True)
    cohort_dir = root / "_book_runs" / "smoke" / "data" / "cohort"
    outside = tmp_path / "elsewhere" / "manifest.csv"
    assert _relative_paths(str(cohort_dir), folder, root) == "../_book_runs/smoke/data/cohort"
    assert _relative_paths(f"data.manifest={root / 'm.csv'}", folder, root) == "data.manifest=../m.csv"
    assert _relative_paths(
        [f"data.cache_dir={root / 'cache'}", "train.epochs=1", f"data.manifest={outside}"], folder, root
    ) == ["data.cache_dir=../cache", "train.epochs=1", f"data.manifest={outside}"]
    assert _relative_paths(str(outside), folder, root) == str(outside), "a path outside the repository stays"
    assert _relative_paths("relative/path", folder, root) == "relative/path"
    assert _relative_paths(3, folder, root) == 3 and _relative_paths(True, folder, root) is True


# predict from another folder


def test_predict_works_from_another_working_directory(
    cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(cohort.parent)
    overrides = [*tiny_overrides(tmp_path, cohort, epochs=1)[1:], "data.manifest=manifest.csv", "data.cache_dir=cache"]
    run = train(load_config(None, overrides), tmp_path / "run", progress=False)
    stored = read_config(run)
    assert stored.data.manifest == str(cohort.resolve()), "the run stores the manifest's absolute path"
    assert stored.data.cache_dir == str((cohort.parent / "cache").resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["predict", "--quiet", "--run", "../run", "--manifest", str(cohort), "--out", "ages.csv"]) == 0
    predicted = pd.read_csv(elsewhere / "ages.csv")
    expected = pd.read_csv(run / "predictions.csv")
    pd.testing.assert_series_equal(predicted["predicted_age"], expected["predicted_age"], atol=1e-4, check_exact=False)
    assert sorted(p.name for p in elsewhere.iterdir()) == ["ages.csv"], "nothing is written relative to the cwd"


def test_a_learning_curve_without_deep_methods_fits_ridge_alone_below_the_full_size(
    cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import brainage_core.analysis.baseline as baseline

    fitted_on: list[int | None] = []

    def fake_ridge(manifest, groups, fit_splits, train_subjects, test_fold):
        fitted_on.append(train_subjects)
        test = pd.read_csv(manifest).query("split == 'test' and group == 'CN'")
        return pd.DataFrame(
            {"method": "ridge", "age": test["age"], "predicted_age": test["age"] + 5.0, "abs_error": 5.0}
        )

    monkeypatch.setattr(baseline, "split_baseline_errors", fake_ridge)
    config = load_config(None, tiny_overrides(tmp_path, cohort, epochs=1))
    curve, runs = workflow.learning_curve(
        config, tmp_path / "curve", [], [4], n_boot=50, runs_root=tmp_path / "runs", full_methods=["mse"]
    )
    n_train = int(curve["n_train"].max())
    assert sorted(zip(curve["method"], curve["n_train"])) == [("mse", n_train), ("ridge", 4), ("ridge", n_train)]
    assert fitted_on == [4, None], "ridge refitted on 4 subjects, then on all of them"
    assert runs == {("mse", n_train): workflow.run_folder(tmp_path / "runs", "mse", 0)}
    assert not (tmp_path / "curve" / "n4").exists(), "no deep run below the full size"
    sentence = compare.learning_curve_values(curve, "mse")["lc_sentence"]
    assert "with 4 subjects RIDGE alone (5.00 y)" in sentence
