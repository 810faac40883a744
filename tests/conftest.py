"""Shared fixtures: small NIfTI files written on the fly and the real IXI folder."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

IXI_DIR = Path(os.environ.get("BRAINAGE_IXI_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ixi_t1_2mm"))


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
