"""The NIfTI pipeline: orientation, scaling, masking, resampling, cache, errors, augmentation."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from brainage_core import imaging
from brainage_core.imaging import (
    AugmentConfig,
    ImageReadError,
    MultiViewTransform,
    PreprocessConfig,
    VolumeCache,
    build_augmentation,
    load_volume,
    preprocess,
)
from tests.conftest import brain_phantom, write_nifti

# An LPS-oriented affine with 1.5 mm voxels: x runs right-to-left, y anterior-to-posterior.
LPS_AFFINE = np.diag([-1.5, -1.5, 1.5, 1.0])


def test_load_reorients_any_orientation_to_ras(tmp_path: Path) -> None:
    data = brain_phantom()
    path = write_nifti(tmp_path / "lps.nii.gz", data, LPS_AFFINE)
    volume = load_volume(path)
    assert nib.aff2axcodes(volume.affine.numpy()) == ("R", "A", "S")
    expected = nib.as_closest_canonical(nib.load(path)).get_fdata()
    np.testing.assert_allclose(volume[0].numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(volume[0].numpy(), data[::-1, ::-1, :], rtol=1e-6)


def test_uint8_scale_slope_is_applied(tmp_path: Path) -> None:
    raw = np.arange(8 * 8 * 8, dtype=np.uint8).reshape(8, 8, 8) % 200
    path = write_nifti(tmp_path / "u8.nii", raw, slope=2.5)
    assert nib.load(path).get_data_dtype() == np.uint8
    np.testing.assert_allclose(load_volume(path)[0].numpy(), raw.astype(np.float32) * 2.5)


def test_preprocess_resamples_masks_normalises_and_pads(tmp_path: Path) -> None:
    data = brain_phantom((40, 48, 40))
    image = write_nifti(tmp_path / "img.nii.gz", data, np.diag([1.0, 1.0, 1.0, 1.0]))
    mask_data = (data > 0).astype(np.uint8)
    mask_data[:20] = 0  # keep only the right half of the brain
    mask = write_nifti(tmp_path / "mask.nii.gz", mask_data)
    config = PreprocessConfig(spacing=2.0, shape=(24, 32, 24))
    out = preprocess(image, config, mask)
    assert tuple(out.shape) == (1, 24, 32, 24)
    np.testing.assert_allclose(out.pixdim.numpy(), [2.0, 2.0, 2.0])
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0
    # World coordinates of nonzero voxels: all on the kept (right, x >= 20 mm) side of the mask.
    nonzero = np.argwhere(out[0].numpy() > 0)
    world_x = nib.affines.apply_affine(out.affine.numpy(), nonzero)[:, 0]
    assert world_x.min() >= 19.0


def test_truncated_and_non_nifti_files_raise_naming_the_file(tmp_path: Path) -> None:
    good = write_nifti(tmp_path / "good.nii.gz", brain_phantom())
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.nii"
    text.write_text("this is not an image")
    cache = VolumeCache(tmp_path / "cache")
    for bad in (truncated, text):
        with pytest.raises(ImageReadError, match=str(bad.name)):
            cache.load(bad, PreprocessConfig(spacing=2.0, shape=(16, 16, 16)))
    assert not list((tmp_path / "cache").rglob("*")) or not list((tmp_path / "cache").rglob("*.npz")), (
        "partial cache entry"
    )


def test_cache_hits_on_second_read_and_stores_float16(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = write_nifti(tmp_path / "img.nii.gz", brain_phantom())
    config = PreprocessConfig(spacing=2.0, shape=(24, 24, 24))
    cache = VolumeCache(tmp_path / "cache")
    first = cache.load(image, config)
    assert (cache.hits, cache.misses) == (0, 1)
    entries = list((tmp_path / "cache").rglob("*.npz"))
    assert len(entries) == 1 and np.load(entries[0])["volume"].dtype == np.float16

    def no_nifti(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cache must not re-read the NIfTI")

    monkeypatch.setattr(imaging, "preprocess", no_nifti)
    second = VolumeCache(tmp_path / "cache").load(image, config)  # a new run, same cache folder
    torch.testing.assert_close(second.as_tensor(), first.as_tensor())
    torch.testing.assert_close(second.affine, first.affine)


def test_cache_key_depends_on_content_and_parameters(tmp_path: Path) -> None:
    image = write_nifti(tmp_path / "img.nii.gz", brain_phantom())
    cache = VolumeCache(tmp_path / "cache")
    base = cache.key(image, PreprocessConfig(spacing=2.0))
    assert cache.key(image, PreprocessConfig(spacing=3.0)) != base
    write_nifti(image, brain_phantom(seed=1))
    assert VolumeCache(tmp_path / "cache").key(image, PreprocessConfig(spacing=2.0)) != base


def test_two_view_augmentation_is_random_reproducible_and_unflipped() -> None:
    volume = torch.from_numpy(brain_phantom((32, 32, 32)) / 140.0)[None]
    augmentation = build_augmentation(AugmentConfig())
    augmentation.set_random_state(seed=3)
    views = MultiViewTransform(augmentation, n_views=2)(volume)
    assert views.shape == (2, 1, 32, 32, 32)
    assert (views[0] - views[1]).abs().mean() > 1e-3, "the two views must differ"
    augmentation.set_random_state(seed=3)
    torch.testing.assert_close(MultiViewTransform(augmentation, n_views=2)(volume), views)
    # No left-right flip by default: a brain present only on the right stays on the right.
    right_only = volume.clone()
    right_only[:, :16] = 0
    augmentation.set_random_state(seed=4)
    for view in MultiViewTransform(augmentation, n_views=8)(right_only):
        x_profile = (view[0] > 0.2).float().sum(dim=(1, 2))  # x_profile: [X], brain voxels per slice
        centre_of_mass = float((x_profile * torch.arange(32)).sum() / x_profile.sum())
        assert centre_of_mass > 15.5, "flipped: the centre of mass crossed the midline (a flip puts it near 10.5)"


def test_real_ixi_scans_preprocess_to_ras(ixi_dir: Path, tmp_path: Path) -> None:
    """Native P-S-R IXI scans -> RAS, skull removed by the DLMUSE mask, 2 mm grid, finite."""
    config = PreprocessConfig(spacing=2.0, shape=(96, 112, 96), crop_foreground=True)
    cache = VolumeCache(tmp_path / "cache")
    for t1 in sorted((ixi_dir / "t1").glob("*_T1.nii.gz"))[:3]:
        assert nib.aff2axcodes(nib.load(t1).affine) == ("P", "S", "R")
        mask = ixi_dir / "seg" / t1.name.replace("_T1.nii.gz", "_T1_DLMUSE.nii.gz")
        out = cache.load(t1, config, mask)
        assert tuple(out.shape) == (1, 96, 112, 96)
        assert nib.aff2axcodes(out.affine.numpy()) == ("R", "A", "S")
        np.testing.assert_allclose(out.pixdim.numpy(), [2.0, 2.0, 2.0])
        assert torch.isfinite(out).all() and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        # The mask was applied: the brain fills a plausible fraction of the grid, not the whole head.
        brain_fraction = float((out > 0).float().mean())
        assert 0.10 < brain_fraction < 0.45, brain_fraction
        # Same mask, reoriented by nibabel independently: zero outside it.
        canonical_mask = nib.as_closest_canonical(nib.load(mask)).get_fdata() > 0
        assert canonical_mask.sum() * 8.0 / 1000 == pytest.approx(float((out > 0).sum()) * 8.0 / 1000, rel=0.1)
    assert cache.misses == 3
