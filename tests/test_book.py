"""The book: clean source notebooks, the batch runner's cache, and a full smoke build."""

from __future__ import annotations

import ast
import io
import os
import re
from pathlib import Path

import nbformat
import pytest
import yaml

from brainage_core.book.runner import build_book, declared_parameters, load_runs, run_book
from brainage_core.book.runspec import RunSpec, book_output_dir
from brainage_core.book.workflow import STANDALONE
from brainage_core.config import load_config

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))


def toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc["parts"]:
        files += [chapter["file"] for chapter in part["chapters"]]
    return files


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_source_notebook_is_clean_and_follows_the_lesson_skeleton(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code), "commit notebooks without outputs"
    tagged = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    assert notebook.cells[tagged[0] + 1].cell_type == "code", "derived settings follow the parameters cell"
    text = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "markdown")
    for heading in ("## Overview", "## Prerequisites", "Time to run", "## Summary"):
        assert heading in text, f"missing {heading!r}"
    assert notebook.cells[0].source.startswith("# "), "a title first"
    assert "smoke" in declared_parameters(path), "papermill reads every parameter"


def test_a_parameter_papermill_cannot_read_is_refused(tmp_path: Path) -> None:
    """papermill drops `x = 1  # a=b` silently; the runner names it instead."""
    cell = nbformat.v4.new_code_cell("x = 1  # help with a=b in it\ny = 2  # fine")
    cell.metadata["tags"] = ["parameters"]
    kernel = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    nbformat.write(nbformat.v4.new_notebook(cells=[cell], metadata=kernel), tmp_path / "n.ipynb")
    with pytest.raises(ValueError, match=r"\['x'\]"):
        declared_parameters(tmp_path / "n.ipynb")


def test_every_toc_chapter_exists_and_every_notebook_has_a_chapter_run() -> None:
    for entry in toc_files():
        assert (ROOT / f"{entry}.md").is_file() or (ROOT / f"{entry}.ipynb").is_file(), entry
    notebooks_in_toc = {f"{entry}.ipynb" for entry in toc_files() if (ROOT / f"{entry}.ipynb").is_file()}
    for profile in ("smoke", "default", "full"):
        chapters = [run.notebook for run in load_runs(ROOT / "book" / "runs.yml", profile, ROOT) if run.chapter]
        assert sorted(chapters) == sorted(notebooks_in_toc), f"profile {profile}: one chapter run per notebook"


STANDALONE_DEFAULTS_THAT_DIFFER = {
    # a chapter run alone reads the run times of the last `make book`, not of its own folder
    ("performance", "keys_dir"): "../_book_runs/default/keys",
}


@pytest.mark.parametrize(
    "run", [r for r in load_runs(ROOT / "book" / "runs.yml", "smoke", ROOT) if r.chapter], ids=lambda r: r.name
)
def test_a_chapter_run_alone_lays_out_its_folders_as_the_batch_run_does(run: RunSpec) -> None:
    """A notebook opened in Jupyter (no injected parameters) reads and writes ``_book_runs/standalone/``
    exactly where the batch runner's ``_book_runs/PROFILE/`` has the same things, so a chapter run
    alone finds the cohort, the runs and the models that its predecessors left there.

    The smoke book test executes every notebook with the injected paths; this checks the defaults
    those paths replace (``make test-notebooks`` executes each notebook alone)."""
    import papermill

    profile_root = book_output_dir(ROOT, "smoke")
    defaults = {name: info["default"] for name, info in papermill.inspect_notebook(str(ROOT / run.notebook)).items()}
    chapter = Path(run.notebook).stem
    checked = 0
    for name, value in run.parameters.items():
        if name not in defaults or not isinstance(value, str) or not Path(value).is_absolute():
            continue
        relative = Path(os.path.normpath(value)).relative_to(profile_root).as_posix()
        if name == "work_dir":  # the run's folder; alone, an expanded run (train_rnc_s0) uses the chapter's name
            relative = f"work/{chapter}"
        expected = STANDALONE_DEFAULTS_THAT_DIFFER.get((chapter, name), f"..{STANDALONE}{relative}")
        assert ast.literal_eval(defaults[name]) == expected, f"{run.notebook}: default of {name}"
        checked += 1
    assert checked == sum(
        name in defaults for name in ("work_dir", "cohort_dir", "runs_root", "keys_dir", "run_dir", "release_dir")
    ), f"{run.notebook}: a path parameter was not compared"


def write_toy_book(root: Path) -> None:
    """Three tiny notebooks: a -> b (b reads a's output), and c that fails when told to."""
    (root / "book").mkdir(parents=True)

    def notebook(name: str, parameters: str, body: str) -> None:
        cells = [nbformat.v4.new_code_cell(parameters), nbformat.v4.new_code_cell(body)]
        cells[0].metadata["tags"] = ["parameters"]
        nbformat.write(
            nbformat.v4.new_notebook(
                cells=cells,
                metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
            ),
            root / "book" / f"{name}.ipynb",
        )

    notebook(
        "a",
        "value = 1\nwork_dir = ''",
        "from pathlib import Path\nPath(work_dir).mkdir(parents=True, exist_ok=True)\n(Path(work_dir) / 'out.txt').write_text(str(value))",
    )
    notebook("b", "source = ''", "from pathlib import Path\nprint(Path(source).read_text())")
    notebook("c", "fail = False", "assert not fail, 'told to fail'")
    runs = {
        "profiles": {"p": {"parameters": {"fail": False}, "matrix": {"value": [1]}}},
        "runs": [
            {"name": "a", "notebook": "book/a.ipynb", "parameters": {"value": 1}},
            {"name": "b", "notebook": "book/b.ipynb", "parameters": {"source": "{work:a}/out.txt"}},
            {"name": "c", "notebook": "book/c.ipynb"},
        ],
    }
    (root / "book" / "runs.yml").write_text(yaml.safe_dump(runs))


def set_parameter(root: Path, run: str, key: str, value: object) -> None:
    runs = yaml.safe_load((root / "book" / "runs.yml").read_text())
    entry = next(r for r in runs["runs"] if r["name"] == run)
    entry.setdefault("parameters", {})[key] = value
    (root / "book" / "runs.yml").write_text(yaml.safe_dump(runs))


def statuses(outcomes) -> dict[str, str]:
    return {outcome.name: outcome.status for outcome in outcomes}


def test_runner_skips_unchanged_runs_and_reruns_only_affected_ones(tmp_path: Path) -> None:
    write_toy_book(tmp_path)
    assert statuses(run_book(tmp_path, "p", log=io.StringIO())) == {"a": "executed", "b": "executed", "c": "executed"}
    log = io.StringIO()
    assert statuses(run_book(tmp_path, "p", log=log)) == {"a": "cached", "b": "cached", "c": "cached"}
    assert "nothing changed: no notebook was executed" in log.getvalue()
    set_parameter(tmp_path, "a", "value", 2)  # a changes, b depends on a, c does not
    assert statuses(run_book(tmp_path, "p", log=io.StringIO())) == {"a": "executed", "b": "executed", "c": "cached"}
    executed_b = nbformat.read(tmp_path / "_book_runs" / "p" / "notebooks" / "b.ipynb", as_version=4)
    assert "2" in executed_b.cells[-1].outputs[0]["text"], "b read the new output of a"
    assert statuses(run_book(tmp_path, "p", only=["c"], force=True, log=io.StringIO())) == {"c": "executed"}


def test_runner_continues_past_a_failure_and_reports_it(tmp_path: Path) -> None:
    write_toy_book(tmp_path)
    set_parameter(tmp_path, "c", "fail", True)
    log = io.StringIO()
    outcomes = statuses(run_book(tmp_path, "p", jobs=2, log=log))
    assert outcomes == {"a": "executed", "b": "executed", "c": "failed"}
    assert "failure in c" in log.getvalue() and "told to fail" in log.getvalue()
    assert not (tmp_path / "_book_runs" / "p" / "notebooks" / "c.ipynb").exists(), "no partial executed notebook"
    set_parameter(tmp_path, "c", "fail", False)
    assert statuses(run_book(tmp_path, "p", log=io.StringIO()))["c"] == "executed"


def test_a_misspelt_run_parameter_fails_that_run(tmp_path: Path) -> None:
    write_toy_book(tmp_path)
    set_parameter(tmp_path, "c", "fial", True)
    log = io.StringIO()
    assert statuses(run_book(tmp_path, "p", log=log))["c"] == "failed"
    assert "does not declare parameter(s) ['fial']" in log.getvalue()


def test_a_failed_dependency_skips_its_dependents(tmp_path: Path) -> None:
    write_toy_book(tmp_path)
    (tmp_path / "book" / "a.ipynb").write_text(
        (tmp_path / "book" / "a.ipynb").read_text().replace("str(value)", "str(1 / 0)")
    )
    assert statuses(run_book(tmp_path, "p", log=io.StringIO())) == {"a": "failed", "b": "skipped", "c": "executed"}


@pytest.mark.slow  # minutes: every chapter is executed and the book rendered
def test_the_book_builds_from_smoke_runs() -> None:
    """The whole book, every chapter executed in smoke mode by the batch runner on a local 2-worker Dask
    cluster, rendered with warnings as errors."""
    outcomes = run_book(ROOT, "smoke", jobs=2, log=io.StringIO())
    failed = [o for o in outcomes if o.status in ("failed", "skipped")]
    assert not failed, "\n\n".join(f"{o.name}: {o.message}" for o in failed)
    index = build_book(ROOT, profile="smoke")
    html = index.parent
    for entry in toc_files():
        page = html / f"{entry}.html"
        assert page.is_file(), page
        content = page.read_text()
        assert "Traceback (most recent call last)" not in content and 'class="output traceback' not in content, page
    for notebook in NOTEBOOKS:
        page = (html / "book" / notebook.with_suffix(".html").name).read_text()
        assert "<img" in page, f"{notebook.name}: no figure rendered"
        assert str(ROOT) not in page, f"{notebook.name}: shows an absolute path of the build machine"
    for executed in (ROOT / "_book_runs" / "smoke" / "notebooks").glob("*.ipynb"):
        assert str(ROOT) not in executed.read_text(), f"{executed.name}: the downloadable notebook shows {ROOT}"
        injected = [
            c
            for c in nbformat.read(executed, as_version=4).cells
            if "injected-parameters" in c.metadata.get("tags", [])
        ]
        assert injected and "hide-input" in injected[0].metadata["tags"], f"{executed.name}: injected cell not folded"
    remote = sorted(
        {
            f"{page.name}: {src}"
            for page in html.rglob("*.html")
            for src in re.findall(r'<script[^>]*\bsrc="((?:https?:)?//[^"]+)"', page.read_text())
        }
    )
    assert remote == [], "the book must render offline; remote scripts: " + ", ".join(remote[:5])
    assert (html / "_static" / "mathjax" / "tex-chtml.js").is_file(), "MathJax is bundled with the book"
    assert 'src="../_static/mathjax/tex-chtml.js' in (html / "book" / "rnc_loss.html").read_text(), (
        "formula pages load the bundled MathJax"
    )


def test_a_failed_rerun_removes_the_stale_chapter_and_says_so(tmp_path: Path) -> None:
    write_toy_book(tmp_path)
    executed = tmp_path / "_book_runs" / "p" / "notebooks" / "c.ipynb"
    assert statuses(run_book(tmp_path, "p", only=["c"], log=io.StringIO())) == {"c": "executed"} and executed.is_file()
    set_parameter(tmp_path, "c", "fail", True)
    log = io.StringIO()
    assert statuses(run_book(tmp_path, "p", only=["c"], log=log)) == {"c": "failed"}
    assert not executed.exists(), "the previous executed copy would render as if it were current"
    assert "c: removed its previous executed notebook" in log.getvalue()


def test_a_cell_running_past_its_timeout_fails_the_run(tmp_path: Path) -> None:
    write_toy_book(tmp_path)
    (tmp_path / "book" / "c.ipynb").write_text(
        (tmp_path / "book" / "c.ipynb")
        .read_text()
        .replace("assert not fail, 'told to fail'", "import time\\ntime.sleep(60)")
    )
    runs = yaml.safe_load((tmp_path / "book" / "runs.yml").read_text())
    next(r for r in runs["runs"] if r["name"] == "c")["cell_timeout"] = 3
    (tmp_path / "book" / "runs.yml").write_text(yaml.safe_dump(runs))
    assert load_runs(tmp_path / "book" / "runs.yml", "p", tmp_path)[-1].cell_timeout == 3
    log = io.StringIO()
    assert statuses(run_book(tmp_path, "p", only=["c"], log=log)) == {"c": "failed"}
    assert "timed out" in log.getvalue().lower() or "timeout" in log.getvalue().lower(), log.getvalue()


def test_profile_overrides_of_a_run_apply_in_that_profile_only() -> None:
    """The default book trains the synthetic chapters at the cohort's 3 mm for the whole schedule
    and the real-data chapter at the package's 4 mm with early stopping (its run's
    profile_overrides); the full profile's 2 mm and patience reach both."""

    def run_config(profile: str, name: str) -> tuple[float, tuple[int, ...], int | None, int]:
        run = next(r for r in load_runs(ROOT / "book" / "runs.yml", profile, ROOT) if r.name == name)
        run_settings = [item for item in run.parameters["overrides"] if not item.startswith("cohort.")]
        config = load_config(None, run_settings)
        return config.data.spacing, tuple(config.data.shape), config.train.patience, config.train.min_epochs

    assert run_config("default", "train_rnc_s0") == (3.0, (52, 62, 64), None, 10)
    assert run_config("default", "real_data") == (4.0, (48, 56, 48), 4, 15)
    assert run_config("full", "train_rnc_s0") == run_config("full", "real_data") == (2.0, (96, 112, 96), 6, 10)


def test_profile_overrides_naming_an_unknown_profile_is_refused(tmp_path: Path) -> None:
    write_toy_book(tmp_path)
    runs = yaml.safe_load((tmp_path / "book" / "runs.yml").read_text())
    runs["runs"][0]["profile_overrides"] = {"defualt": ["train.epochs=1"]}
    (tmp_path / "book" / "runs.yml").write_text(yaml.safe_dump(runs))
    with pytest.raises(ValueError, match=r"profile_overrides names unknown profile\(s\) \['defualt'\]"):
        load_runs(tmp_path / "book" / "runs.yml", "p", tmp_path)
