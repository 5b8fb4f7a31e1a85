"""Tests for Models Genesis (Zhou et al. 2021, "Models Genesis"; the authors' pytorch/config.py and utils.py)."""
import math

import pytest
import torch

from nnunetv2_ext.pretext.model_genesis import (
    ModelsGenesisConfig,
    apply_curves,
    bezier_curves,
    identity_mse,
    local_pixel_shuffle,
    models_genesis,
    nonlinear_transform,
    painting_boxes,
    restoration_mse,
)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _images(b=3, c=2, spatial=(12, 20, 20), seed=123):
    return torch.randn((b, c, *spatial), generator=_gen(seed))


NEVER = dict(local_rate=0.0, nonlinear_rate=0.0, paint_rate=0.0)


def test_config_defaults_are_the_authors():
    cfg = ModelsGenesisConfig()
    assert (cfg.local_rate, cfg.nonlinear_rate, cfg.paint_rate, cfg.inpaint_rate) == (0.5, 0.9, 0.9, pytest.approx(0.2))
    assert (cfg.inpaint_boxes, cfg.outpaint_boxes, cfg.box_continue, cfg.border) == (5, 5, 0.95, 3)
    # the grid coverage reproduces the expected coverage of 10000 windows on a 64 x 64 x 32 cube
    assert cfg.shuffle_coverage == pytest.approx(1 - math.exp(-10000 * 3.5 * 3.5 * 2 / (64 * 64 * 32)), abs=0.01)


@pytest.mark.parametrize("kwargs, rule", [
    ({"local_rate": 1.5}, "probability"),
    ({"inpaint_rate": -0.1}, "probability"),
    ({"shuffle_max_fraction": 0.0}, r"\(0, 1\]"),
    ({"inpaint_boxes": 0}, ">= 1"),
    ({"border": -1}, ">= 0"),
    ({"inpaint_extent": (0.5, 0.2)}, "low <= high"),
    ({"outpaint_cut": (0.4,)}, "pair"),
])
def test_bad_config_raises_with_the_rule(kwargs, rule):
    with pytest.raises(ValueError, match=rule):
        ModelsGenesisConfig(**kwargs)


# ------------------------------------------------------------------------------------------------ Bezier transform
def test_bezier_curves_are_monotone_maps_of_the_unit_interval():
    xs, ys = bezier_curves(64, _gen(1))
    assert torch.all(xs.diff(dim=1) >= 0) and torch.allclose(xs[:, 0], torch.zeros(64)) and \
        torch.allclose(xs[:, -1], torch.ones(64))
    grid = torch.linspace(0, 1, 257).expand(64, 257)
    y = apply_curves(grid, xs, ys)
    step = y.diff(dim=1)
    increasing, decreasing = (step >= -1e-6).all(1), (step <= 1e-6).all(1)
    assert bool((increasing | decreasing).all())
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    # endpoints: increasing curves fix 0 and 1, decreasing ones swap them (the authors' "flip")
    assert torch.allclose(y[increasing, 0], torch.zeros(int(increasing.sum())), atol=1e-6)
    assert torch.allclose(y[decreasing, 0], torch.ones(int(decreasing.sum())), atol=1e-6)
    assert 10 < int(decreasing.sum()) < 54  # about half flipped


def test_bezier_curve_is_the_cubic_through_its_control_points():
    # with P1 = (1/3, 1/3), P2 = (2/3, 2/3) the cubic Bezier curve is the identity line
    xs = ys = torch.linspace(0, 1, 50)[None]
    values = torch.rand((1, 100), generator=_gen(2))
    assert torch.allclose(apply_curves(values, xs, ys), values, atol=1e-6)
    assert torch.allclose(apply_curves(values, xs, ys.flip(1)), 1 - values, atol=1e-6)


def test_nonlinear_transform_only_where_applied():
    x = torch.rand((2, 3, 8, 8), generator=_gen(3))
    out = nonlinear_transform(x, _gen(4), torch.tensor([True, False]))
    assert torch.equal(out[1], x[1]) and not torch.equal(out[0], x[0])


# ------------------------------------------------------------------------------------------------ local shuffling
@pytest.mark.parametrize("spatial", [(12, 30, 40), (40, 50)])
def test_local_shuffling_only_permutes_within_windows(spatial):
    x = _images(spatial=spatial)
    x[:, 1] = 2 * x[:, 0] + 1  # channel 1 a function of channel 0: a shared permutation keeps the relation
    out, window, shuffled = local_pixel_shuffle(x, _gen(5), coverage=0.7)
    assert out.shape == x.shape and window.shape == (3, *spatial)
    for b in range(3):
        ids = window[b]
        for w in ids.unique():
            inside = ids == w
            for c in range(2):  # every window holds the same values as before, in any order
                assert torch.equal(out[b, c][inside].sort().values, x[b, c][inside].sort().values)
    # the same permutation in every channel: a voxel takes its values from one source voxel for all channels
    assert torch.equal(out[:, 1], 2 * out[:, 0] + 1)
    # windows that were not shuffled are untouched; a real share of the image moved
    assert torch.equal(out[~shuffled.expand_as(x)], x[~shuffled.expand_as(x)])
    assert float((out != x).float().mean()) > 0.3


def test_local_shuffling_window_extents_follow_the_tenth_of_the_size():
    x = _images(b=4, spatial=(20, 50, 50))
    _, window, _ = local_pixel_shuffle(x, _gen(6))
    for b in range(4):
        for w in window[b].unique()[:30]:
            idx = (window[b] == w).nonzero()
            extent = idx.max(0).values - idx.min(0).values + 1
            assert torch.all(extent <= torch.tensor([2, 5, 5]))  # 1 .. size // 10


def test_local_shuffling_is_skipped_where_not_applied():
    x = _images()
    out, _, shuffled = local_pixel_shuffle(x, _gen(7), apply=torch.tensor([False, True, False]))
    assert torch.equal(out[0], x[0]) and torch.equal(out[2], x[2]) and not torch.equal(out[1], x[1])
    assert not shuffled[0].any() and not shuffled[2].any()


# ------------------------------------------------------------------------------------------------ painting
def test_inpainting_boxes_sizes_and_margin():
    mask = painting_boxes(200, (60, 60), 1 / 6, 1 / 3, 5, 0.95, False, 3, False, _gen(8))
    assert mask.shape == (200, 1, 60, 60)
    assert not mask[..., :3, :].any() and not mask[..., -3:, :].any() and not mask[..., :, :3].any()
    # a single box covers at least 10 x 10 (60 // 6) and at most 20 x 20 (60 // 3) voxels; 5 boxes at most
    covered = mask.float().mean((1, 2, 3))
    assert float(covered.max()) <= 5 * 400 / 3600 + 1e-6
    # P(no box) = 0.05: some samples are empty, most are not
    empty = int((covered == 0).sum())
    assert 1 <= empty <= 30


def test_outpainting_keeps_at_least_one_central_box():
    mask = painting_boxes(50, (14, 28, 28), 3 / 7, 4 / 7, 5, 0.95, True, 3, True, _gen(9))
    kept = mask.float().mean((1, 2, 3, 4))
    assert bool((kept > 0).all())
    # a kept box is size - (3 size // 7 .. 4 size // 7): at least 3/7 of each axis
    assert float(kept.min()) >= (6 / 14) * (12 / 28) ** 2 - 1e-6


# ------------------------------------------------------------------------------------------------ the pretext
@pytest.mark.parametrize("spatial", [(16, 24, 24), (32, 32)])
def test_models_genesis_shapes_dtype_device_and_target(spatial):
    x = _images(spatial=spatial)
    inputs, targets, mask = models_genesis(x, generator=_gen(10))
    assert inputs.shape == x.shape and inputs.dtype == x.dtype and inputs.device == x.device and mask is None
    assert torch.equal(targets, x) and targets.data_ptr() != x.data_ptr()
    # intensities stay in each channel's own range (every transformation runs in [0, 1] per sample and channel)
    dims = tuple(range(2, x.dim()))
    assert torch.all(inputs.amin(dims) >= x.amin(dims) - 1e-5) and torch.all(inputs.amax(dims) <= x.amax(dims) + 1e-5)


def test_models_genesis_is_deterministic_given_the_seed():
    x = _images()
    a = models_genesis(x, generator=_gen(11))[0]
    b = models_genesis(x, generator=_gen(11))[0]
    c = models_genesis(x, generator=_gen(12))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_models_genesis_without_any_transform_is_the_autoencoder():
    x = _images()
    inputs, targets, _ = models_genesis(x, ModelsGenesisConfig(**NEVER), _gen(13))
    assert torch.equal(inputs, x)


def test_models_genesis_inpainting_changes_only_its_boxes_and_shares_them_over_channels():
    x = _images(spatial=(24, 36, 36))
    cfg = ModelsGenesisConfig(local_rate=0.0, nonlinear_rate=0.0, paint_rate=1.0, inpaint_rate=1.0)
    inputs, _, _ = models_genesis(x, cfg, _gen(14))
    changed = ~torch.isclose(inputs, x, atol=1e-5)
    assert torch.equal(changed[:, 0], changed[:, 1])  # one set of boxes for both channels
    assert 0 < float(changed.float().mean()) < 0.5


def test_models_genesis_outpainting_keeps_only_its_boxes():
    x = _images(spatial=(24, 36, 36))
    cfg = ModelsGenesisConfig(local_rate=0.0, nonlinear_rate=0.0, paint_rate=1.0, inpaint_rate=0.0)
    inputs, _, _ = models_genesis(x, cfg, _gen(15))
    kept = torch.isclose(inputs, x, atol=1e-5)
    assert 0.05 < float(kept.float().mean()) < 0.8  # (3/7 .. 4/7)^3 per box, up to 5 boxes


def test_multi_channel_bezier_curves_differ_per_channel():
    x = torch.linspace(-2, 2, 4096).view(1, 1, 64, 64).repeat(1, 3, 1, 1)
    cfg = ModelsGenesisConfig(local_rate=0.0, nonlinear_rate=1.0, paint_rate=0.0)
    inputs, _, _ = models_genesis(x, cfg, _gen(16))
    assert not torch.allclose(inputs[0, 0], inputs[0, 1]) and not torch.allclose(inputs[0, 1], inputs[0, 2])


def test_metric_perfect_beats_identity_baseline():
    x = _images()
    inputs, targets, _ = models_genesis(x, generator=_gen(17))
    baseline = identity_mse(inputs, targets)
    assert float(restoration_mse(targets, targets)) == 0.0 < float(baseline)
    assert float(restoration_mse(inputs, targets)) == float(baseline)
    with pytest.raises(ValueError, match="same shape"):
        restoration_mse(inputs[:1], targets)


def test_models_genesis_rejects_bad_input():
    with pytest.raises(ValueError, match="2 or 3 spatial"):
        models_genesis(torch.zeros(2, 1, 8))
    with pytest.raises(TypeError, match="floating"):
        models_genesis(torch.zeros(2, 1, 8, 8, dtype=torch.int64))
