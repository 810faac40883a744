"""Grad-RAM saliency: hand-computed equality, localisation, sanity checks, NIfTI output, explain_run."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from brainage_core.analysis.interpret import (
    GradRAM,
    age_band_labels,
    explain_run,
    group_average_maps,
    load_on_grid,
    map_similarity,
    plot_map_on_template,
    randomization_check,
    randomized_copy,
    region_summary,
    saliency_in_ground_truth,
    saliency_maps,
    save_map_nifti,
)
from brainage_core.config import config_to_dict, load_config
from brainage_core.data import load_volumes
from brainage_core.imaging import PreprocessConfig, VolumeCache
from brainage_core.models import BrainAgeModel, ModelConfig, build_model
from tests.conftest import write_nifti

SIZE = 32  # volumes [B, 1, 32, 32, 32]; with conv1_stride=1 encoder.layer4 is 2x2x2, layer3 4x4x4


@pytest.fixture(scope="module", autouse=True)
def _two_threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture
def age_model() -> BrainAgeModel:
    """A tiny BrainAgeModel with non-trivial weights, BatchNorm statistics and age scale."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(width=0.125, conv1_stride=1))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm3d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    model.age_mean.fill_(50.0)
    model.age_std.fill_(15.0)
    return model.eval()


def hand_gradram(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-RAM with plain autograd: (map [B, 1, x, y, z] at the layer's resolution, ages [B])."""
    store: dict[str, torch.Tensor] = {}
    handle = layer.register_forward_hook(lambda _m, _i, output: store.__setitem__("a", output))
    try:
        ages = model(x.clone().requires_grad_(True))
    finally:
        handle.remove()
    (gradient,) = torch.autograd.grad(ages.sum(), store["a"])
    weights = gradient.mean(dim=(2, 3, 4), keepdim=True)  # weights: [B, C, 1, 1, 1]
    return (weights * store["a"]).sum(1, keepdim=True).detach(), ages.detach()


@pytest.mark.parametrize("layer_name", ["encoder.layer4", "encoder.layer3"])
def test_gradram_equals_hand_computation(age_model: BrainAgeModel, layer_name: str) -> None:
    x = torch.randn(2, 1, SIZE, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    hand, ages = hand_gradram(age_model, age_model.get_submodule(layer_name), x)
    assert (hand < 0).any() and (hand > 0).any(), "precondition: the hand map has both signs"

    signed = GradRAM(age_model, layer_name, signed=True)
    relu = GradRAM(age_model, layer_name, signed=False)
    torch.testing.assert_close(signed.compute_map(x), hand, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(relu.compute_map(x), F.relu(hand), rtol=1e-5, atol=1e-6)
    if layer_name == "encoder.layer4":  # avgpool + linear head: the raw map adds up to the prediction
        intercept = age_model.age_mean + age_model.age_std * age_model.regressor.bias.detach()
        torch.testing.assert_close(hand.flatten(1).sum(1), ages - intercept, rtol=1e-4, atol=1e-4)

    upsampled = F.interpolate(hand, size=x.shape[2:], mode="trilinear", align_corners=False)  # [B, 1, X, Y, Z]
    expected = upsampled / upsampled.abs().flatten(1).amax(1).reshape(-1, 1, 1, 1, 1)
    out = signed(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert (out < 0).any(), "the signed map keeps the evidence that lowers the predicted age"
    for index in range(len(x)):  # no inversion: the largest positive raw value stays the maximum
        assert out[index].argmax() == upsampled[index].argmax()
    relu_out = relu(x)
    assert relu_out.min() >= 0 and torch.allclose(relu_out.flatten(1).amax(1), torch.ones(2))


def test_gradram_hooks_a_private_copy(age_model: BrainAgeModel) -> None:
    GradRAM(age_model)(torch.randn(1, 1, SIZE, SIZE, SIZE))
    layer = age_model.encoder.layer4
    assert not layer._forward_hooks and not layer._backward_hooks, "the caller's model must not keep MONAI's hooks"
    assert all(p.requires_grad for p in age_model.parameters()) and all(p.grad is None for p in age_model.parameters())
    with pytest.raises(ValueError, match="not a submodule"):
        GradRAM(age_model, "encoder.layer9")


def test_batched_equals_one_at_a_time(age_model: BrainAgeModel) -> None:
    volumes = torch.rand(4, 1, SIZE, SIZE, SIZE, generator=torch.Generator().manual_seed(2)).half()
    for signed in (True, False):
        batched = saliency_maps(age_model, volumes, signed=signed, batch_size=3)  # batches of 3 and 1
        single = torch.cat([saliency_maps(age_model, volumes[i : i + 1], signed=signed) for i in range(4)])
        assert batched.shape == (4, 1, SIZE, SIZE, SIZE) and batched.dtype == torch.float32
        torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)


class OneRegionNet(nn.Module):
    """Hand-built: predicted age depends only on bright voxels, which exist only in octant 0.

    Channel 0 of the convolution is a local-mean detector of intensities above 0.55; only it
    feeds the age output. The other channels (a dark detector and default-initialised ones)
    have zero weight in the head.
    """

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.features = nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8, 1)
        with torch.no_grad():
            conv = self.features[0]
            conv.weight[0].fill_(1 / 27)
            conv.bias[0] = -0.55
            conv.weight[1].fill_(-1 / 27)
            conv.bias[1] = 0.45
            self.head.weight.zero_()
            self.head.weight[0, 0] = 60 / (0.5 * 1000 / SIZE**3)
            self.head.bias.fill_(20.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3, 4))).squeeze(1)  # [B]


def one_region_cohort(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Volumes [n, 1, 32, 32, 32]: a bright cube in octant 0 whose contrast is the age signal,
    dark cubes of random contrast in the other octants; and the true effect (the bright cube)."""
    generator = torch.Generator().manual_seed(seed)
    volumes = 0.5 + 0.02 * torch.randn(n, 1, SIZE, SIZE, SIZE, generator=generator)
    levels = 0.2 + 0.8 * torch.rand(n, 8, generator=generator)
    effect = torch.zeros(n, 1, SIZE, SIZE, SIZE)
    for octant in range(8):
        corner = [16 * ((octant >> bit) & 1) for bit in (2, 1, 0)]
        cube = (slice(None), 0, *[slice(c + 3, c + 13) for c in corner])
        volumes[cube] += (0.5 if octant == 0 else -0.5) * levels[:, octant].reshape(-1, 1, 1, 1)
        if octant == 0:
            effect[cube] = 1.0
    return volumes, effect


def test_known_effect_concentrates_in_the_region_and_beats_random_weights() -> None:
    model = OneRegionNet().eval()
    volumes, effect = one_region_cohort(4, seed=4)
    random_maps = [saliency_maps(randomized_copy(model, seed), volumes, "features") for seed in range(3)]
    random_overlaps = [saliency_in_ground_truth(maps, effect, top_fraction=0.03)["overlap"] for maps in random_maps]
    for signed in (True, False):
        maps = saliency_maps(model, volumes, "features", signed=signed)
        mass = maps.abs()[:, :, :16, :16, :16].flatten(1).sum(1) / maps.abs().flatten(1).sum(1)  # [N]
        assert mass.min() > 0.95, f"saliency mass in the age octant {mass.tolist()}"
        score = saliency_in_ground_truth(maps, effect, top_fraction=0.03)
        assert score["chance"] == pytest.approx(1000 / SIZE**3)
        assert score["overlap"] > 0.9 and score["lift"] > 20
        assert score["overlap"] > max(random_overlaps) + 0.5, (score["overlap"], random_overlaps)


def test_saliency_in_ground_truth_on_known_maps() -> None:
    effect = torch.zeros(2, 1, 10, 10, 10)
    effect[:, :, :5] = torch.linspace(1, 5, 5).reshape(1, 1, 5, 1, 1)  # effect grows along x, zero for x >= 5
    mask = torch.ones_like(effect)
    mask[:, :, :, :, 0] = 0  # 900 brain voxels
    perfect = saliency_in_ground_truth(effect, effect, mask, top_fraction=0.1)
    assert perfect["chance"] == pytest.approx(0.1) and perfect["overlap"] == 1.0
    assert perfect["lift"] == pytest.approx(10.0) and perfect["spearman"] == pytest.approx(1.0)
    inverted = saliency_in_ground_truth(-effect, effect, mask, top_fraction=0.1)  # |saliency| is scored: same
    assert inverted["overlap"] == 1.0
    opposite = saliency_in_ground_truth(6.0 - effect, effect, mask, top_fraction=0.1)
    assert opposite["overlap"] == 0.0 and opposite["spearman"] < 0
    outside = effect.clone()
    outside[:, :, :, :, 0] = 100.0  # outside the mask: must be ignored
    assert saliency_in_ground_truth(outside, effect, mask, top_fraction=0.1)["overlap"] == 1.0
    sparse = torch.zeros_like(effect)
    sparse[:, :, 0, :5] = 1.0  # 45 affected brain voxels < k = 90: unaffected voxels never count as truth
    small = saliency_in_ground_truth(sparse, sparse, mask, top_fraction=0.1)
    assert small["chance"] == pytest.approx(0.05) and small["overlap"] == pytest.approx(0.5)
    assert small["lift"] == pytest.approx(10.0)
    with pytest.raises(ValueError, match="same shape"):
        saliency_in_ground_truth(effect[:, :, :5], effect)
    with pytest.raises(ValueError, match="zero over the brain"):
        saliency_in_ground_truth(effect, torch.zeros_like(effect))


def test_randomization_check_separates_trained_from_random() -> None:
    model = OneRegionNet().eval()
    volumes, _ = one_region_cohort(3, seed=5)
    maps = saliency_maps(model, volumes, "features")
    result = randomization_check(model, volumes, seed=0, layer="features")
    itself = map_similarity(maps[0].abs(), maps[0].abs())
    assert itself == pytest.approx({"spearman": 1.0, "pearson": 1.0, "ssim": 1.0})
    assert result["n_subjects"] == 3 and len(result["per_subject"]["ssim"]) == 3
    for key in ("spearman", "pearson", "ssim"):
        assert result[key] < 0.5 < itself[key], (key, result[key])
    with_maps = randomization_check(model, volumes, seed=0, layer="features", maps=maps)
    assert with_maps["ssim"] == pytest.approx(result["ssim"])


def test_randomized_copy_reinitialises_every_weight(age_model: BrainAgeModel) -> None:
    original = {k: v.clone() for k, v in age_model.state_dict().items()}
    first, second = randomized_copy(age_model, seed=7), randomized_copy(age_model, seed=7)
    other = randomized_copy(age_model, seed=8)
    for name, parameter in age_model.named_parameters():
        assert not torch.equal(first.get_parameter(name), parameter), f"{name} was not re-initialised"
    batchnorm = first.encoder.bn1
    assert torch.equal(batchnorm.running_mean, torch.zeros_like(batchnorm.running_mean))
    conv = "encoder.conv1.weight"
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert not torch.equal(first.get_parameter(conv), other.get_parameter(conv))
    assert float(first.age_mean) == 50.0 and float(first.age_std) == 15.0
    assert all(torch.equal(original[k], v) for k, v in age_model.state_dict().items()), "the model itself is untouched"


def test_nifti_maps_reopen_and_resample_to_the_template(tmp_path: Path) -> None:
    from nilearn import datasets, image

    affine = np.array([[4.0, 0, 0, -60], [0, 4.0, 0, -90], [0, 0, 4.0, -50], [0, 0, 0, 1]])
    data = torch.randn(1, 30, 34, 28, generator=torch.Generator().manual_seed(6))
    path = save_map_nifti(data, torch.from_numpy(affine), tmp_path / "maps" / "sub-1_gradram.nii.gz")
    reopened = nib.load(path)
    assert reopened.shape == (30, 34, 28) and np.allclose(reopened.affine, affine)
    np.testing.assert_allclose(reopened.get_fdata(), data[0].numpy(), rtol=1e-6)
    assert not list((tmp_path / "maps").glob(".tmp-*")), "the write is atomic"
    template = datasets.load_mni152_template(resolution=2)
    resampled = image.resample_to_img(
        reopened, template, interpolation="continuous", force_resample=True, copy_header=True
    )
    assert resampled.shape == template.shape and np.allclose(resampled.affine, template.affine)
    display = plot_map_on_template(path, "test map")
    try:
        display.savefig(str(tmp_path / "map.png"))
    finally:
        display.close()
    assert (tmp_path / "map.png").stat().st_size > 0
    with pytest.raises(ValueError, match="nii"):
        save_map_nifti(data, affine, tmp_path / "map.png")


def test_region_summary_on_a_coarser_label_grid() -> None:
    labels = torch.zeros(2, 1, 4, 4, 4)
    labels[:, :, :2] = 3
    labels[:, :, 2:, :2] = 7  # label 0 elsewhere (background)
    saliency = torch.zeros(2, 1, 8, 8, 8)
    saliency[:, :, :4] = -0.5  # region of label 3 on the 2x finer map grid
    saliency[:, :, 4:, :4] = torch.tensor([0.2, 0.4]).reshape(2, 1, 1, 1, 1)  # label 7 differs per scan
    summary = region_summary(saliency, labels, label_names={3: "ventricles"})
    assert summary["label"].tolist() == [3, 7], "sorted by mean |saliency|; background excluded"
    first = summary.iloc[0]
    assert first["name"] == "ventricles" and first["mean_abs_saliency"] == pytest.approx(0.5)
    assert first["mean_saliency"] == pytest.approx(-0.5) and first["mean_voxels"] == 256
    second = summary.iloc[1]
    assert second["mean_abs_saliency"] == pytest.approx(0.3) and second["n_subjects"] == 2
    assert second["sd_abs_saliency"] == pytest.approx(np.std([0.2, 0.4], ddof=1))


def test_group_averages_and_age_bands() -> None:
    maps = torch.arange(4, dtype=torch.float32).reshape(4, 1, 1, 1, 1).expand(4, 1, 2, 2, 2)
    assert age_band_labels([19.9, 20.0, 64.5, 70]) == ["10-20", "20-30", "60-70", "70-80"]
    averages = group_average_maps(maps, ["CN", "AD", "CN", "AD"])
    assert list(averages) == ["AD", "CN"] and averages["AD"].shape == (1, 2, 2, 2)
    assert float(averages["AD"].mean()) == 2.0 and float(averages["CN"].mean()) == 1.0


def write_cohort_with_effects(folder: Path, n_subjects: int = 10) -> Path:
    """32^3 phantoms at 4 mm (MNI-like affine) with a per-subject effect map and a manifest."""
    affine = np.array([[4.0, 0, 0, -62], [0, 4.0, 0, -90], [0, 0, 4.0, -48], [0, 0, 0, 1]])
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, SIZE)] * 3, indexing="ij"))
    radius = np.sqrt((grid**2).sum(axis=0))
    rng = np.random.default_rng(0)
    rows = []
    for index in range(n_subjects):
        age = 25.0 + 5 * index
        effect = np.clip(1 - np.sqrt(((grid - 0.3) ** 2).sum(axis=0)) / 0.4, 0, None) * age / 80  # a blob in one corner
        brain = radius < 0.85
        data = (100 * brain * (1 - 0.5 * effect) + rng.normal(0, 2, radius.shape) * brain).astype(np.float32)
        image = write_nifti(folder / "img" / f"sub-{index:02d}.nii.gz", data, affine)
        effect_path = write_nifti(folder / "effect" / f"sub-{index:02d}.nii.gz", effect.astype(np.float32), affine)
        rows.append(
            {
                "subject_id": f"sub-{index:02d}",
                "image": str(image.relative_to(folder)),
                "age": age,
                "sex": "MF"[index % 2],
                "group": "AD" if index % 3 == 0 else "CN",
                "split": "test" if index % 2 else "train",
                "effect_map": str(effect_path.relative_to(folder)),
            }
        )
    path = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_load_on_grid_aligns_a_native_file_with_the_preprocessed_scan(tmp_path: Path) -> None:
    manifest = write_cohort_with_effects(tmp_path, n_subjects=1)
    image = tmp_path / "img" / "sub-00.nii.gz"
    config = PreprocessConfig(spacing=3.0, shape=(40, 44, 36), use_mask=False)  # resample + pad: a new grid
    volumes, affines = load_volumes([str(image)], [None], config, VolumeCache(tmp_path / "cache"), progress=False)
    on_grid = load_on_grid(image, affines[0], config.shape, order=1)
    assert on_grid.shape == config.shape
    correlation = np.corrcoef(on_grid.ravel(), volumes[0, 0].float().numpy().ravel())[0, 1]
    assert correlation > 0.95, f"the resampled file must overlay the preprocessed scan (r={correlation:.3f})"
    assert pd.read_csv(manifest)["effect_map"].notna().all()


def test_explain_run_writes_maps_averages_figures_and_scores(tmp_path: Path) -> None:
    manifest = write_cohort_with_effects(tmp_path / "cohort")
    config = load_config(
        None,
        [
            f"data.manifest={manifest}",
            "data.spacing=4",
            f"data.shape=[{SIZE},{SIZE},{SIZE}]",
            f"data.cache_dir={tmp_path / 'cache'}",
            "model.width=0.125",
            "model.conv1_stride=1",
        ],
    )
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    torch.manual_seed(0)
    torch.save(build_model(config.model).state_dict(), run / "model.pt")

    summary = explain_run(run, tmp_path / "maps", split="test", max_subjects=4, progress=False)
    out = tmp_path / "maps"
    assert summary["n_subjects"] == 4
    subjects = pd.read_csv(out / "subjects.csv")
    assert subjects["subject_id"].tolist() == ["sub-01", "sub-03", "sub-05", "sub-07"]
    first = nib.load(out / subjects["gradram_path"][0])
    _, affines = load_volumes(
        [str(manifest.parent / "img" / "sub-01.nii.gz")],
        [None],
        config.data.preprocess_config(),
        VolumeCache(tmp_path / "cache"),
        progress=False,
    )
    assert first.shape == (SIZE,) * 3 and np.allclose(first.affine, affines[0].numpy())
    assert np.abs(first.get_fdata()).max() == pytest.approx(1.0, abs=1e-6)
    assert nib.load(out / subjects["gradram_relu_path"][0]).get_fdata().min() >= 0
    bands = sorted(set(subjects["age_band"]))
    expected = {"all", "group-AD", "group-CN", *[f"age-{band}" for band in bands]}
    for kind in ("gradram", "gradram_relu"):
        assert {p.name.removesuffix(f"_{kind}.nii.gz") for p in (out / "average").glob(f"*_{kind}.nii.gz")} == expected
        assert {p.name.removesuffix(f"_{kind}.png") for p in (out / "figures").glob(f"*_{kind}.png")} == expected
    assert summary["files"] == {"nifti": 8 + 2 * len(expected), "png": 2 * len(expected)}
    scores = json.loads((out / "saliency_scores.json").read_text())
    assert scores["common_grid"] is True and scores["randomization"]["n_subjects"] == 4
    assert set(scores["ground_truth"]) == {"n_subjects", "gradram", "gradram_relu", "random_model"}
    assert 0 < scores["ground_truth"]["gradram"]["chance"] <= 0.11
