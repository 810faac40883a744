"""Packaging: pyproject and environment.yml list the same pins; every subcommand has --help."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from brainage_core.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def _normalise(requirement: str) -> str:
    return requirement.replace(" ", "").lower().replace("_", "-")


def test_environment_yml_lists_the_same_pinned_dependencies_as_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    from_pyproject = {_normalise(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_lists = [item["pip"] for item in environment["dependencies"] if isinstance(item, dict)]
    from_conda = {_normalise(r) for r in pip_lists[0]}
    assert from_pyproject == from_conda, (
        f"only in pyproject.toml: {sorted(from_pyproject - from_conda)}; "
        f"only in environment.yml: {sorted(from_conda - from_pyproject)}"
    )
    assert all("==" in r for r in from_pyproject), "every dependency is pinned exactly"


def test_constraints_pin_the_same_versions_as_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = (ROOT / "requirements" / "constraints.txt").read_text().splitlines()
    constraints = {_normalise(line) for line in lines if line and not line.startswith("#")}
    for requirement in project["dependencies"] + project["optional-dependencies"]["dev"]:
        assert _normalise(requirement) in constraints, f"{requirement} differs from requirements/constraints.txt"


def _subcommand_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths.append((*prefix, name))
                paths.extend(_subcommand_paths(sub, (*prefix, name)))
    return paths


@pytest.mark.parametrize("path", _subcommand_paths(build_parser()), ids=" ".join)
def test_every_subcommand_has_help(path: tuple[str, ...]) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "brainage_core.cli", *path, "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert completed.returncode == 0, completed.stderr
    assert f"usage: brainage {' '.join(path)}" in completed.stdout
