"""Tests for context restoration by patch swapping (Chen et al. 2019; MIS-FM's PyMIC PatchSwaping numbers)."""
import pytest
import torch

from nnunetv2_ext.pretext.patch_swapping import (
    PatchSwappingConfig,
    identity_mse,
    restoration_mse,
    swap_count_scale,
    swap_patch_extent,
    swap_patches,
)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _images(b=3, c=2, spatial=(32, 64, 64), seed=123):
    return torch.randn((b, c, *spatial), generator=_gen(seed))


def test_config_defaults_and_scaling():
    cfg = PatchSwappingConfig()
    assert (cfg.min_swaps, cfg.max_swaps, cfg.ref_shape, cfg.patch_extent) == (10, 20, (64, 128, 128), (8, 16, 16))
    assert swap_patch_extent(cfg, (64, 128, 128)) == (8, 16, 16)
    assert swap_patch_extent(cfg, (32, 64, 64)) == (4, 8, 8)
    assert swap_patch_extent(cfg, (32, 32)) == (4, 4)  # 2D: the last two axes
    assert swap_count_scale(cfg, (128, 128, 128)) == 1.0 and swap_count_scale(cfg, (32, 32)) == 1 / 8


@pytest.mark.parametrize("kwargs, rule", [
    ({"min_swaps": 0}, "1 <= min_swaps <= max_swaps"),
    ({"min_swaps": 5, "max_swaps": 4}, "1 <= min_swaps <= max_swaps"),
    ({"patch_extent": (8, 0, 16)}, "> 0 on every axis"),
    ({"patch_extent": (8, 16)}, "3 positive ints"),
    ({"patch_extent": (8, 200, 16)}, "patch_extent <= ref_shape"),
])
def test_bad_config_raises_with_the_rule(kwargs, rule):
    with pytest.raises(ValueError, match=rule):
        PatchSwappingConfig(**kwargs)


@pytest.mark.parametrize("spatial", [(32, 64, 64), (48, 40)])
def test_swapping_permutes_each_sample_and_channel_and_leaves_the_rest(spatial):
    x = _images(spatial=spatial)
    inputs, targets, mask = swap_patches(x, generator=_gen(1))
    assert inputs.shape == x.shape and inputs.dtype == x.dtype and mask.shape == (3, 1, *spatial)
    assert torch.equal(targets, x)
    for b in range(3):
        for c in range(2):  # the multiset of intensities of every sample and channel is preserved
            assert torch.equal(inputs[b, c].flatten().sort().values, x[b, c].flatten().sort().values)
    outside = ~mask.expand_as(x)
    assert torch.equal(inputs[outside], x[outside])
    assert bool((inputs != x).any(1, keepdim=True)[mask].all())  # every swapped voxel changed (random data)
    assert torch.equal((inputs != x)[:, 0], (inputs != x)[:, 1])  # the same patches in every channel


def test_swapped_patches_are_whole_isolated_patches_and_t_in_range():
    x = _images(b=8)  # (32, 64, 64): patches 4 x 8 x 8, scale 1 -> T in 10 .. 20
    _, _, mask = swap_patches(x, generator=_gen(2))
    voxels = mask.sum((1, 2, 3, 4))
    patch = 4 * 8 * 8
    assert bool((voxels % patch == 0).all())
    swapped_patches = voxels // patch
    assert bool(((swapped_patches % 2) == 0).all())
    assert bool(((swapped_patches >= 20) & (swapped_patches <= 40)).all())


def test_swapping_is_deterministic_given_the_seed():
    x = _images()
    a, _, ma = swap_patches(x, generator=_gen(3))
    b, _, mb = swap_patches(x, generator=_gen(3))
    c, _, mc = swap_patches(x, generator=_gen(4))
    assert torch.equal(a, b) and torch.equal(ma, mb) and not torch.equal(ma, mc)


def test_a_2d_image_swaps_the_reference_fraction():
    x = _images(b=64, spatial=(32, 32))
    _, _, mask = swap_patches(x, generator=_gen(5))
    pairs = mask.sum((1, 2, 3)) // 16 // 2  # 4 x 4 patches
    assert int(pairs.min()) >= 1 and int(pairs.max()) <= 3  # T = 10 .. 20, scaled by 1/8


def test_too_small_an_image_raises():
    with pytest.raises(ValueError, match="at least 2 patches"):
        swap_patches(torch.zeros(1, 1, 8, 8), PatchSwappingConfig(ref_shape=(8, 8, 8), patch_extent=(8, 8, 8)))


def test_metric_perfect_beats_identity_baseline():
    x = _images()
    inputs, targets, _ = swap_patches(x, generator=_gen(6))
    baseline = identity_mse(inputs, targets)
    assert float(restoration_mse(targets, targets)) == 0.0 < float(baseline)
    assert float(restoration_mse(inputs, targets)) == float(baseline)
