"""Tests for the Volume Fusion pretext (Wang et al. 2023 (MIS-FM), arXiv:2306.16925, sec. 3.1 / eq. (1) /
Algorithm 1)."""

import math

import pytest
import torch

from nnunetv2_ext.pretext.volume_fusion import (
    VolumeFusionConfig,
    boxes_to_label,
    sample_boxes,
    save_volume_fusion_figure,
    scaled_extents,
    volume_fusion,
)

SHAPE3D = (16, 24, 20)
SHAPE2D = (24, 20)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _images(b=3, c=2, spatial=SHAPE3D, seed=123):
    return torch.randn((b, c, *spatial), generator=_gen(seed))


# --------------------------------------------------------------------------------------------- alpha / label
@pytest.mark.parametrize("k", [1, 3, 4])
def test_alpha_levels_and_label(k):
    cfg = VolumeFusionConfig(k=k)
    x = _images()
    fused, label, alpha = volume_fusion(x, cfg, _gen(1))
    assert label.dtype == torch.int64
    assert label.shape == (3, 1, *SHAPE3D) and alpha.shape == (3, 1, *SHAPE3D)
    assert alpha.dtype == x.dtype and fused.dtype == x.dtype and fused.shape == x.shape
    assert int(label.min()) >= 0 and int(label.max()) <= k
    allowed = torch.arange(k + 1, dtype=x.dtype) / k
    assert torch.isin(alpha, allowed).all()
    assert torch.equal(torch.round(alpha * k).long(), label)
    # with 10..40 boxes on a small volume, both background (0) and some box levels are present
    assert (label == 0).any() and (label > 0).any()


def test_fused_is_eq1_exactly():
    x = _images(b=4, c=3)
    fused, label, alpha = volume_fusion(x, VolumeFusionConfig(), _gen(2))
    fg = torch.roll(x, 1, 0)
    assert torch.equal(fused, alpha * fg + (1 - alpha) * x)


def test_foreground_and_background_from_different_samples():
    b, k = 4, 4
    x = torch.arange(b, dtype=torch.float64).view(b, 1, 1, 1, 1).expand(b, 2, *SHAPE3D).clone()
    fused, label, alpha = volume_fusion(x, VolumeFusionConfig(k=k), _gen(3))
    n = torch.arange(b, dtype=torch.float64).view(b, 1, 1, 1, 1)
    expected = alpha * ((n - 1) % b) + (1 - alpha) * n
    assert torch.allclose(fused, expected.expand_as(fused), atol=1e-12)
    # where alpha == 1 the voxel is purely the other sample, never the sample itself
    full = (label == k).expand_as(fused)
    assert full.any()
    assert torch.equal(fused[full], ((n - 1) % b).expand_as(fused)[full])


def test_same_alpha_for_all_channels():
    x = _images(b=2, c=4)
    x[:, 1] *= 10
    x[:, 2] += 5
    fused, label, alpha = volume_fusion(x, VolumeFusionConfig(), _gen(4))
    assert alpha.shape[1] == 1
    fg = torch.roll(x, 1, 0)
    for ch in range(4):
        assert torch.equal(fused[:, ch : ch + 1], alpha * fg[:, ch : ch + 1] + (1 - alpha) * x[:, ch : ch + 1])


# --------------------------------------------------------------------------------------------- boxes
@pytest.mark.parametrize("spatial", [SHAPE3D, SHAPE2D, (64, 128, 128)])
def test_box_counts_extents_and_clipping(spatial):
    cfg = VolumeFusionConfig(min_boxes=5, max_boxes=12)
    b = 64
    lower, upper, levels, active = sample_boxes(b, spatial, cfg, _gen(5))
    nd = len(spatial)
    assert lower.shape == upper.shape == (b, 12, nd)
    assert levels.shape == active.shape == (b, 12) and active.dtype == torch.bool
    counts = active.sum(1)
    assert int(counts.min()) >= 5 and int(counts.max()) <= 12
    assert len(set(counts.tolist())) > 3  # counts actually vary
    # active boxes are the first M of each sample
    assert torch.equal(active, torch.arange(12)[None, :] < counts[:, None])
    assert int(levels.min()) >= 1 and int(levels.max()) <= cfg.k
    size = torch.tensor(spatial)
    lo_e, hi_e = scaled_extents(cfg, spatial)
    assert (lower >= 0).all() and (upper <= size).all() and (upper > lower).all()
    ext = upper - lower
    assert (ext <= torch.tensor(hi_e)).all()
    # unclipped boxes (strictly inside the volume) have their full drawn extent, which is >= the minimum
    inside = ((lower > 0) & (upper < size)).all(-1)
    assert inside.any()
    assert (ext[inside] >= torch.tensor(lo_e)).all()


def test_box_count_bounds_inclusive():
    cfg = VolumeFusionConfig(min_boxes=2, max_boxes=4)
    _, _, _, active = sample_boxes(400, SHAPE2D, cfg, _gen(6))
    assert set(active.sum(1).tolist()) == {2, 3, 4}


def test_later_boxes_overwrite_earlier():
    shape = (6, 8, 8)
    lower = torch.tensor([[[0, 0, 0], [2, 3, 3], [0, 0, 0]]])
    upper = torch.tensor([[[4, 6, 6], [6, 8, 8], [6, 8, 8]]])
    levels = torch.tensor([[1, 3, 2]])
    active = torch.tensor([[True, True, False]])  # third box (covers everything) is disabled
    label = boxes_to_label(lower, upper, levels, active, shape)
    assert label.shape == (1, 1, *shape) and label.dtype == torch.int64
    lab = label[0, 0]
    expected = torch.zeros(shape, dtype=torch.int64)
    expected[0:4, 0:6, 0:6] = 1
    expected[2:6, 3:8, 3:8] = 3
    assert torch.equal(lab, expected)
    assert int(lab[3, 4, 4]) == 3  # overlap: second box's level
    assert int(lab[0, 0, 0]) == 1 and int(lab[5, 0, 0]) == 0
    # reversed order: the first box now wins in the overlap
    label_rev = boxes_to_label(lower[:, [1, 0]], upper[:, [1, 0]], levels[:, [1, 0]], active[:, :2], shape)
    assert int(label_rev[0, 0, 3, 4, 4]) == 1


def test_boxes_to_label_2d_and_batch_independent():
    lower = torch.tensor([[[1, 1]], [[0, 2]]])
    upper = torch.tensor([[[3, 4]], [[2, 5]]])
    levels = torch.tensor([[2], [4]])
    active = torch.tensor([[True], [True]])
    label = boxes_to_label(lower, upper, levels, active, (5, 6))
    expected = torch.zeros((2, 1, 5, 6), dtype=torch.int64)
    expected[0, 0, 1:3, 1:4] = 2
    expected[1, 0, 0:2, 2:5] = 4
    assert torch.equal(label, expected)


def test_volume_fusion_label_matches_sample_boxes():
    x = _images(b=2, c=1)
    cfg = VolumeFusionConfig()
    _, label, _ = volume_fusion(x, cfg, _gen(7))
    boxes = sample_boxes(2, SHAPE3D, cfg, _gen(7))
    assert torch.equal(label, boxes_to_label(*boxes, SHAPE3D))


# --------------------------------------------------------------------------------------------- determinism, 2D/3D
def test_same_seed_same_output_different_seed_different():
    x = _images()
    a = volume_fusion(x, VolumeFusionConfig(), _gen(11))
    b = volume_fusion(x, VolumeFusionConfig(), _gen(11))
    c = volume_fusion(x, VolumeFusionConfig(), _gen(12))
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    assert not torch.equal(a[1], c[1])


@pytest.mark.parametrize("spatial", [SHAPE2D, SHAPE3D])
def test_works_2d_and_3d(spatial):
    x = _images(b=2, c=2, spatial=spatial)
    fused, label, alpha = volume_fusion(x, VolumeFusionConfig(), _gen(8))
    assert fused.shape == x.shape
    assert label.shape == alpha.shape == (2, 1, *spatial)
    assert torch.equal(fused, alpha * torch.roll(x, 1, 0) + (1 - alpha) * x)


def test_float16_dtype_preserved():
    x = _images(b=2, c=1).half()
    fused, label, alpha = volume_fusion(x, VolumeFusionConfig(), _gen(9))
    assert fused.dtype == alpha.dtype == torch.float16
    assert torch.equal(torch.round(alpha.float() * 4).long(), label)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("gen_device", ["cpu", "cuda"])
def test_runs_on_input_device_with_generator_elsewhere(gen_device):
    x = _images(b=2, c=2).cuda()
    g1 = torch.Generator(device=gen_device).manual_seed(3)
    g2 = torch.Generator(device=gen_device).manual_seed(3)
    fused, label, alpha = volume_fusion(x, VolumeFusionConfig(), g1)
    assert fused.device == label.device == alpha.device == x.device
    assert torch.equal(fused, alpha * torch.roll(x, 1, 0) + (1 - alpha) * x)
    assert torch.equal(label, volume_fusion(x, VolumeFusionConfig(), g2)[1])
    if gen_device == "cpu":  # same draws as on an all-CPU run
        assert torch.equal(label.cpu(), volume_fusion(x.cpu(), VolumeFusionConfig(), _gen(3))[1])


# --------------------------------------------------------------------------------------------- extents
def test_scaled_extents_paper_and_half():
    cfg = VolumeFusionConfig()
    assert scaled_extents(cfg, (64, 128, 128)) == ((8, 8, 8), (40, 80, 80))
    assert scaled_extents(cfg, (32, 64, 64)) == ((4, 4, 4), (20, 40, 40))
    assert scaled_extents(cfg, (128, 128)) == ((8, 8), (80, 80))  # 2D: last two axes


def test_scaled_extents_bounds_tiny_patch():
    lo, hi = scaled_extents(VolumeFusionConfig(), (2, 3, 1))
    assert all(1 <= a <= b <= s for a, b, s in zip(lo, hi, (2, 3, 1)))


# --------------------------------------------------------------------------------------------- errors
def test_batch_of_one_rejected():
    with pytest.raises(ValueError, match="at least 2"):
        volume_fusion(_images(b=1), VolumeFusionConfig(), _gen())


@pytest.mark.parametrize("shape", [(2, 1, 8), (2, 1, 4, 4, 4, 4)])
def test_bad_spatial_dims_rejected(shape):
    with pytest.raises(ValueError, match="2 or 3 spatial"):
        volume_fusion(torch.zeros(shape), VolumeFusionConfig(), _gen())


def test_integer_images_rejected():
    with pytest.raises(TypeError, match="floating"):
        volume_fusion(torch.zeros((2, 1, 4, 4), dtype=torch.int64))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(k=0), "k must be"),
        (dict(min_boxes=0), "min_boxes <= max_boxes"),
        (dict(min_boxes=5, max_boxes=4), "min_boxes <= max_boxes"),
        (dict(min_extent=(0, 8, 8)), "> 0"),
        (dict(min_extent=(8, 90, 8)), "min_extent <= max_extent"),
        (dict(max_extent=(40, 80, 200)), "max_extent <= ref_shape"),
        (dict(ref_shape=(64, 128)), "3 positive ints"),
    ],
)
def test_bad_config_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VolumeFusionConfig(**kwargs)


# --------------------------------------------------------------------------------------------- figure
@pytest.mark.parametrize("spatial", [SHAPE3D, SHAPE2D])
def test_save_figure_writes_png(tmp_path, spatial):
    x = _images(b=2, c=2, spatial=spatial)
    fused, label, _ = volume_fusion(x, VolumeFusionConfig(), _gen(10))
    out = save_volume_fusion_figure(x, fused, label, tmp_path / "vf.png", channel=1)
    data = open(out, "rb").read()
    assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------- learnability metric
def test_fusion_level_confusion_known_counts():
    from nnunetv2_ext.pretext.volume_fusion import fusion_level_confusion

    target = torch.tensor([[0, 1, 1, 2], [2, 2, 0, 0]])
    pred = torch.tensor([[0, 1, 2, 2], [2, 0, 0, 1]])
    tp, fp, fn = fusion_level_confusion(pred, target, k=2)
    assert tp.tolist() == [1, 2] and fp.tolist() == [1, 1] and fn.tolist() == [1, 1]


def test_fusion_level_confusion_matches_nnunet_online_counts():
    from nnunetv2.training.loss.dice import get_tp_fp_fn_tn

    from nnunetv2_ext.pretext.volume_fusion import fusion_level_confusion

    g = _gen(3)
    target = torch.randint(0, 5, (2, 1, 6, 7), generator=g)
    logits = torch.randn(2, 5, 6, 7, generator=g)
    onehot = torch.zeros_like(logits).scatter_(1, logits.argmax(1, keepdim=True), 1)
    tp, fp, fn, _ = get_tp_fp_fn_tn(onehot, target, axes=[0, 2, 3])
    mine = fusion_level_confusion(logits.argmax(1, keepdim=True), target, k=4)
    for a, b in zip(mine, (tp[1:], fp[1:], fn[1:])):
        assert a.tolist() == b.long().tolist()


def test_mean_level_dice_known_answer_and_empty_levels():
    from nnunetv2_ext.pretext.volume_fusion import mean_level_dice

    # level 1: 2*1/(2+1+1) = 0.5; level 2: 2*2/(4+1+1) = 2/3; level 3 empty in prediction and target: left out
    assert mean_level_dice([1, 2, 0], [1, 1, 0], [1, 1, 0]) == pytest.approx((0.5 + 2 / 3) / 2)
    assert mean_level_dice([3], [0], [0]) == 1.0
    assert math.isnan(mean_level_dice([0, 0], [0, 0], [0, 0]))


def test_constant_predictor_dice_known_answer():
    from nnunetv2_ext.pretext.volume_fusion import constant_predictor_dice, fusion_level_confusion, mean_level_dice

    # N = 10 voxels: 4 background, 4 of level 1, 2 of level 2. Predicting level 1 everywhere: Dice 2*4/(4+10) on
    # level 1, 0 on level 2 -> mean 4/14; level 2 everywhere: 2*2/12 / 2 = 1/6; background: 0
    counts = [4, 4, 2]
    assert constant_predictor_dice(counts) == pytest.approx(4 / 14)
    # the same number from the confusion counts of the constant predictions themselves
    target = torch.tensor([0] * 4 + [1] * 4 + [2] * 2)
    best = max(mean_level_dice(*fusion_level_confusion(torch.full_like(target, c), target, 2)) for c in range(3))
    assert best == pytest.approx(4 / 14)
    # a level absent from the targets is left out of the mean, as for the network's own Dice
    assert constant_predictor_dice([5, 5, 0]) == pytest.approx(2 * 5 / 15)


def test_class_counts_and_bad_labels():
    from nnunetv2_ext.pretext.volume_fusion import class_counts, constant_predictor_dice

    assert class_counts(torch.tensor([[0, 2], [2, 2]]), k=3).tolist() == [1, 0, 3, 0]
    with pytest.raises(ValueError, match="0..2"):
        class_counts(torch.tensor([0, 3]), k=2)
    with pytest.raises(ValueError, match="K \\+ 1 >= 2"):
        constant_predictor_dice([7])


def test_perfect_prediction_beats_constant_predictor_on_a_fusion_sample():
    from nnunetv2_ext.pretext.volume_fusion import (
        class_counts,
        constant_predictor_dice,
        fusion_level_confusion,
        mean_level_dice,
    )

    cfg = VolumeFusionConfig()
    _, label, _ = volume_fusion(_images(spatial=SHAPE2D), cfg, _gen(5))
    assert mean_level_dice(*fusion_level_confusion(label, label, cfg.k)) == 1.0
    assert 0 < constant_predictor_dice(class_counts(label, cfg.k)) < 0.5
