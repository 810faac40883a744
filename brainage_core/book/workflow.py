"""Glue between the book's notebooks and the package: data and runs on demand.

Every chapter can run on its own (a reader opening it, nbmake in smoke mode) or inside a batch
run of the book, where upstream runs already produced the cohort and the trained models. The
helpers here make both work without logic in the notebooks: they reuse what exists and is
complete, and create what is missing, with the same package functions the CLI uses.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from brainage_core.config import RunConfig, config_to_dict, load_config
from brainage_core.manifest import read_manifest
from brainage_core.ownership import clear_owned_folder
from brainage_core.rundir import is_finished_run

__all__ = [
    "SMOKE",
    "ensure_cohort",
    "ensure_run",
    "is_finished_run",
    "make_config",
    "resolve_manifest",
    "smoke_mode",
    "smoke_paths",
]

# Settings that shrink a chapter to a few seconds (nbmake tests, the `smoke` profile).
SMOKE: dict[str, Any] = {
    "n_subjects": 40,
    "cohort_spacing": 3.0,
    "spacing": 4.0,
    "shape": [40, 48, 40],
    "epochs": 1,
    "width": 0.125,
    "batch_size": 8,
}


def smoke_mode(parameter: bool) -> bool:
    """Smoke mode is on when the notebook parameter says so or ``BRAINAGE_SMOKE=1``.

    nbmake does not inject papermill parameters, so the tests set the environment variable.
    """
    return bool(parameter) or os.environ.get("BRAINAGE_SMOKE") == "1"


STANDALONE = "/_book_runs/standalone/"
STANDALONE_SMOKE = "/_book_runs/standalone-smoke/"


def smoke_paths(*paths: str) -> list[str]:
    """Move a notebook's default (standalone) folders aside in smoke mode.

    A chapter run alone keeps its outputs under ``_book_runs/standalone/`` and reuses what it
    finds there; smoke runs go to ``_book_runs/standalone-smoke/`` so that their tiny models are
    never mistaken for real ones. Paths given by a batch run of the book are left unchanged.
    """
    return [path.replace(STANDALONE, STANDALONE_SMOKE) if STANDALONE in path else path for path in paths]


def ensure_cohort(
    cohort_dir: str | os.PathLike[str], n_subjects: int, seed: int, spacing: float, progress: bool = True
) -> Path:
    """Return the manifest of a synthetic cohort in ``cohort_dir``, generating it if needed.

    An existing cohort is reused only if its ``cohort.json`` records the same size, seed and
    spacing and its manifest is complete; otherwise the folder is regenerated, which replaces only
    the cohort's own files and refuses a folder holding anything else (see
    :func:`~brainage_core.cohorts.synthetic.generate_cohort`).
    """
    from brainage_core.cohorts.synthetic import generate_cohort

    cohort_dir = Path(cohort_dir)
    manifest = cohort_dir / "manifest.csv"
    record = cohort_dir / "cohort.json"
    if manifest.is_file() and record.is_file():
        recorded = json.loads(record.read_text())
        if (recorded.get("n_subjects"), recorded.get("seed"), float(recorded.get("spacing", -1))) == (
            n_subjects,
            seed,
            float(spacing),
        ):
            return manifest
    return generate_cohort(cohort_dir, n_subjects=n_subjects, seed=seed, spacing=spacing, progress=progress)


def resolve_manifest(
    manifest: str, cohort_dir: str, n_subjects: int, cohort_seed: int, cohort_spacing: float, progress: bool = False
) -> Path:
    """The user's manifest when one is given (validated), else the synthetic cohort's.

    ``progress`` is off by default: progress bars clutter executed notebooks.
    """
    if manifest:
        path = Path(manifest).expanduser().resolve()
        read_manifest(path)  # raises ManifestError listing every problem
        return path
    return ensure_cohort(cohort_dir, n_subjects, cohort_seed, cohort_spacing, progress=progress)


def make_config(
    manifest: str | os.PathLike[str],
    loss: str = "rnc",
    seed: int = 0,
    spacing: float = 3.0,
    shape: list[int] | tuple[int, ...] = (64, 72, 64),
    arch: str = "resnet10",
    width: float = 0.25,
    epochs: int = 15,
    batch_size: int = 16,
    lr: float = 1e-3,
    device: str = "auto",
    num_workers: int = 0,
    loss_params: dict[str, Any] | None = None,
    extra: list[str] | None = None,
) -> RunConfig:
    """Map a notebook's flat parameters onto a :class:`~brainage_core.config.RunConfig`.

    Args:
        manifest: the manifest to train on.
        loss, seed, spacing, shape, arch, width, epochs, batch_size, lr, device, num_workers:
            the fields of the same meaning in the config sections.
        loss_params: keyword arguments of the loss (e.g. ``{"temperature": 2.0}``).
        extra: further ``section.key=value`` overrides.
    """
    overrides = [
        f"data.manifest={manifest}",
        f"data.spacing={spacing}",
        f"data.shape={list(shape)}",
        f"loss.name={loss}",
        f"seed={seed}",
        f"model.arch={arch}",
        f"model.width={width}",
        f"train.epochs={epochs}",
        f"train.batch_size={batch_size}",
        f"train.lr={lr}",
        f"device={device}",
        f"num_workers={num_workers}",
        *(extra or []),
    ]
    config = load_config(None, overrides)
    if loss_params:
        config.loss.params = dict(loss_params)
    return config


def ensure_run(config: RunConfig, run_dir: str | os.PathLike[str], progress: bool = True) -> Path:
    """Train ``config`` into ``run_dir`` unless that exact run is already there.

    A finished run with the same resolved config is reused; an interrupted one is resumed
    from its checkpoint; a run made with a different config is replaced, but only when the
    folder holds nothing but files brainage wrote (otherwise a FileExistsError names them).
    """
    from brainage_core.train import train

    run_dir = Path(run_dir)
    wanted = config_to_dict(config)
    existing = run_dir / "config.yaml"
    if existing.is_file() and config_to_dict(load_config(existing)) == wanted:
        if is_finished_run(run_dir):
            return run_dir
        if (run_dir / "checkpoint.pt").is_file():
            return train(config, run_dir, resume=True, progress=progress)
    clear_owned_folder(run_dir, "a run with another configuration")
    return train(config, run_dir, progress=progress)
