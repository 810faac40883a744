"""Shared fixtures: small NIfTI files written on the fly and the real IXI folder."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainage_core.engine import Trainer
from brainage_core.imaging import VolumeCache

IXI_DIR = Path(
    os.environ.get("BRAINAGE_IXI_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ixi_t1_2mm")
)


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None, slope: float | None = None) -> Path:
    """Write ``data`` as NIfTI at ``path`` (dtype kept; optional scale slope)."""
    image = nib.Nifti1Image(data, np.eye(4) if affine is None else affine)
    if slope is not None:
        image.header.set_slope_inter(slope, 0.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)
    return path


def brain_phantom(shape: tuple[int, int, int] = (40, 48, 40), seed: int = 0) -> np.ndarray:
    """A float32 ellipsoid 'brain' with a smooth left-right and anterior-posterior asymmetry."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    inside = (grid**2).sum(axis=0) < 0.7
    rng = np.random.default_rng(seed)
    values = 100.0 + 40.0 * grid[0] + 20.0 * grid[1] + rng.normal(0, 2, shape)
    return (values * inside).astype(np.float32)


@pytest.fixture
def ixi_dir() -> Path:
    """The real IXI subset; tests using it are skipped with the reason when it is absent."""
    if not (IXI_DIR / "t1").is_dir():
        pytest.skip(f"real IXI data not found at {IXI_DIR} (set BRAINAGE_IXI_DIR to the ixi_t1_2mm folder)")
    return IXI_DIR


def write_tiny_cohort(folder: Path, n_subjects: int = 24, seed: int = 0, size: int = 16) -> Path:
    """A manifest of small 4 mm phantoms whose 'ventricles' grow with age; returns its path.

    Ages are spread over 20-80; groups CN (with a few AD); splits 60/20/20 by subject, and 3 folds.
    """
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, size)] * 3, indexing="ij"))
    radius = np.sqrt((grid**2).sum(axis=0))
    rows = []
    for index in range(n_subjects):
        age = float(np.round(20 + 60 * index / max(1, n_subjects - 1) + rng.normal(0, 1), 1))
        ventricle = 0.15 + 0.35 * (age - 20) / 60
        data = np.where(radius < 0.85, 1.0, 0.0) * np.where(radius < ventricle, 0.2, 1.0)
        data = (100 * data + rng.normal(0, 3, data.shape) * (radius < 0.85)).astype(np.float32)
        image = write_nifti(folder / "img" / f"sub-{index:03d}.nii.gz", data, np.diag([4.0, 4.0, 4.0, 1.0]))
        split = ("train", "train", "train", "val", "test")[index % 5]
        group = "AD" if index % 7 == 6 else "CN"
        rows.append(
            {
                "subject_id": f"sub-{index:03d}",
                "image": str(image.relative_to(folder)),
                "age": age,
                "sex": "MF"[index % 2],
                "group": group,
                "split": split,
                "fold": index % 3,
            }
        )
    path = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, str]]]:
    """Every image the preprocessing reads, with the phase of the run it was read in."""
    log: list[tuple[str, str]] = []
    phase = {"now": "setup"}
    load, fit_epoch, predict = VolumeCache.load, Trainer.fit_epoch, Trainer.predict_every_row

    def spy_load(self, image, *args, **kwargs):
        log.append((str(Path(image).resolve()), phase["now"]))
        return load(self, image, *args, **kwargs)

    def spy_fit_epoch(self, epoch):
        phase["now"] = "training"
        return fit_epoch(self, epoch)

    def spy_predict(self):
        phase["now"] = "final"
        return predict(self)

    monkeypatch.setattr(VolumeCache, "load", spy_load)
    monkeypatch.setattr(Trainer, "fit_epoch", spy_fit_epoch)
    monkeypatch.setattr(Trainer, "predict_every_row", spy_predict)
    yield log
