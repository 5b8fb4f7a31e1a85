"""Tests for masked image modelling (Chen et al. 2023 after MAE, He et al. 2022, and SimMIM, Xie et al. 2022)."""
import pytest
import torch

from nnunetv2_ext.pretext.masked_image import (
    MaskedImageConfig,
    identity_masked_l1,
    mask_patches,
    masked_l1,
    patch_grid_shape,
    random_patch_mask,
    trivial_baseline,
    visible_mean_masked_l1,
)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _images(b=3, c=2, spatial=(16, 32, 32), seed=123):
    return torch.randn((b, c, *spatial), generator=_gen(seed))


def test_config_defaults():
    cfg = MaskedImageConfig()
    assert (cfg.mask_ratio, cfg.patch_size, cfg.fill) == (0.75, (16, 16, 16), "zero")


@pytest.mark.parametrize("kwargs, rule", [
    ({"mask_ratio": 1.0}, "strictly between 0 and 1"),
    ({"mask_ratio": 0}, "strictly between 0 and 1"),
    ({"patch_size": (16, 0, 16)}, "3 ints >= 1"),
    ({"patch_size": 16}, "3 ints >= 1"),
    ({"fill": "token"}, "one of"),
])
def test_bad_config_raises_with_the_rule(kwargs, rule):
    with pytest.raises(ValueError, match=rule):
        MaskedImageConfig(**kwargs)


@pytest.mark.parametrize("spatial, patch, ratio", [((16, 32, 32), (4, 8, 8), 0.75), ((32, 48), (4, 4, 4), 0.6)])
def test_masking_ratio_is_exact_on_divisible_sizes(spatial, patch, ratio):
    cfg = MaskedImageConfig(mask_ratio=ratio, patch_size=patch)
    mask = random_patch_mask(5, spatial, cfg, _gen(1))
    assert mask.shape == (5, 1, *spatial) and mask.dtype == torch.bool
    n = 1
    for g in patch_grid_shape(spatial, cfg):
        n *= g
    expected = round(ratio * n) / n
    assert torch.allclose(mask.float().mean(dim=tuple(range(1, mask.dim()))), torch.full((5,), expected))
    # masking is by whole patches: constant over each patch
    p = patch[-len(spatial):]
    blocks = mask[:, 0].reshape(5, *[v for s, q in zip(spatial, p) for v in (s // q, q)])
    inner = tuple(range(2, blocks.dim(), 2))
    assert torch.equal(blocks.all(inner), blocks.any(inner))


def test_non_divisible_sizes_are_handled_with_border_patches():
    cfg = MaskedImageConfig(mask_ratio=0.75, patch_size=(16, 16, 16))
    assert patch_grid_shape((20, 33, 40), cfg) == (2, 3, 3)
    mask = random_patch_mask(50, (20, 33, 40), cfg, _gen(2))
    assert mask.shape == (50, 1, 20, 33, 40)
    assert abs(float(mask.float().mean()) - 0.75) < 0.05
    with pytest.raises(ValueError, match="one patch"):
        patch_grid_shape((8, 8), cfg)


def test_masked_voxels_are_filled_and_unmasked_untouched_in_every_channel():
    x = _images()
    for fill in ("zero", "mean", "noise"):
        cfg = MaskedImageConfig(patch_size=(4, 8, 8), fill=fill)
        inputs, targets, mask = mask_patches(x, cfg, _gen(3))
        m = mask.expand_as(x)
        assert torch.equal(inputs[~m], x[~m]) and torch.equal(targets, x)
        assert bool((inputs[m] != x[m]).all())
        if fill == "zero":
            assert bool((inputs[m] == 0).all())
        if fill == "mean":  # one constant per sample and channel
            assert torch.allclose(inputs[0, 1][mask[0, 0]], inputs[0, 1][mask[0, 0]][0].expand(int(mask[0].sum())))


@pytest.mark.parametrize("spatial, patch", [((16, 32, 32), (4, 8, 8)), ((32, 32), (4, 4, 4))])
def test_mask_patches_shapes_dtype_and_determinism(spatial, patch):
    x = _images(spatial=spatial).to(torch.float64)
    cfg = MaskedImageConfig(patch_size=patch)
    a, t, m = mask_patches(x, cfg, _gen(4))
    assert a.shape == x.shape and a.dtype == x.dtype and m.shape == (3, 1, *spatial)
    b, _, m2 = mask_patches(x, cfg, _gen(4))
    c, _, m3 = mask_patches(x, cfg, _gen(5))
    assert torch.equal(a, b) and torch.equal(m, m2) and not torch.equal(m, m3)
    assert not torch.equal(m[0], m[1])  # each sample its own mask


def test_metric_perfect_beats_the_stronger_baseline_and_identity_equals_it():
    x = _images()
    inputs, targets, mask = mask_patches(x, MaskedImageConfig(patch_size=(4, 8, 8)), _gen(6))
    baseline, name = trivial_baseline(inputs, targets, mask)
    identity, mean = identity_masked_l1(inputs, targets, mask), visible_mean_masked_l1(inputs, targets, mask)
    assert float(baseline) == pytest.approx(min(float(identity), float(mean))) and name in ("identity", "visible mean")
    assert float(masked_l1(targets, targets, mask)) == 0.0 < float(baseline)
    assert float(masked_l1(inputs, targets, mask)) == float(identity)
    # with a zero fill the identity predicts 0 everywhere masked, the mean of z-scored data: the two are close
    assert float(identity) == pytest.approx(float(mean), rel=0.1)


def test_mean_baseline_is_the_stronger_one_on_shifted_images():
    x = _images() + 3.0  # not z-scored: filling with zero is far off, the visible mean is not
    inputs, targets, mask = mask_patches(x, MaskedImageConfig(patch_size=(4, 8, 8)), _gen(7))
    baseline, name = trivial_baseline(inputs, targets, mask)
    assert name == "visible mean" and float(baseline) < 0.5 * float(identity_masked_l1(inputs, targets, mask))


def test_mask_patches_rejects_bad_input():
    with pytest.raises(ValueError, match="2 or 3 spatial"):
        mask_patches(torch.zeros(2, 1, 8))
    with pytest.raises(TypeError, match="floating"):
        mask_patches(torch.zeros(2, 1, 32, 32, dtype=torch.int64))
