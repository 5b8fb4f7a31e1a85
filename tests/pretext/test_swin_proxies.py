"""Tests for the Swin UNETR proxy tasks (Tang et al. 2022; Cox et al. 2024 (BrainSegFounder) sec. 2.3;
MONAI Pretrain utils/ops.py, losses)."""
import math

import pytest
import torch

from nnunetv2_ext.pretext.swin_proxies import (
    LOSS_WEIGHTS,
    MAX_BOX_FRACTION,
    MAX_MASK_FRACTION,
    MIN_BOX_FRACTION,
    N_ROTATIONS,
    boxes_to_mask,
    center_square,
    nt_xent,
    random_box_mask,
    random_rotation,
    rotate,
    sample_mask_boxes,
    swin_proxy_losses,
    two_views,
)

SHAPE3D = (12, 20, 20)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _images(b=3, c=2, spatial=SHAPE3D, seed=123):
    return torch.randn((b, c, *spatial), generator=_gen(seed))


# ------------------------------------------------------------------------------------------------------- rotation
@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_rotate_by_k_is_torch_rot90_over_last_two_axes(k):
    x = _images()
    out = rotate(x, torch.full((3,), k))
    assert torch.equal(out, torch.rot90(x, k, dims=(3, 4)))


def test_rotate_by_4_is_identity_and_per_sample():
    x = _images()
    assert torch.equal(rotate(x, torch.full((3,), 4)), x)
    out = rotate(x, torch.tensor([1, 0, 3]))
    assert torch.equal(out[0], torch.rot90(x[0], 1, dims=(2, 3)))
    assert torch.equal(out[1], x[1])
    assert torch.equal(out[2], torch.rot90(x[2], 3, dims=(2, 3)))


def test_random_rotation_labels_match_and_are_balanced():
    x = _images(b=8)
    rotated, k = random_rotation(x, _gen(1))
    assert k.dtype == torch.int64 and k.shape == (8,)
    assert torch.equal(rotated, rotate(x, k))
    draws = torch.cat([random_rotation(x[:, :1, :2], g)[1] for g in [_gen(2)] for _ in range(250)])
    counts = torch.bincount(draws, minlength=N_ROTATIONS)
    assert int(draws.min()) >= 0 and int(draws.max()) <= 3
    # 2000 draws: each class expected 500, +-5 sigma (sigma ~ 19)
    assert ((counts - 500).abs() < 100).all(), counts


def test_odd_rotation_of_non_square_plane_is_refused_and_center_square_fixes_it():
    x = _images(spatial=(8, 20, 16))
    with pytest.raises(ValueError, match="equal size"):
        rotate(x, torch.ones(3, dtype=torch.long))
    sq = center_square(x)
    assert sq.shape[-2:] == (16, 16) and torch.equal(sq, x[..., 2:18, :])
    assert torch.equal(rotate(x, torch.full((3,), 2)), torch.rot90(x, 2, dims=(3, 4)))  # k = 2 keeps the shape


# ------------------------------------------------------------------------------------------------------- masking
def test_mask_boxes_within_bounds_and_extents():
    spatial = (20, 40, 40)
    lower, upper, active = sample_mask_boxes(4, spatial, _gen(3))
    assert lower.shape == upper.shape and lower.shape[:2] == active.shape and lower.shape[-1] == 3
    size = torch.tensor(spatial)
    assert (lower >= 0).all() and (upper <= size).all() and (upper > lower).all()
    extent = upper - lower
    hi = (MAX_BOX_FRACTION * size).floor().long()
    lo = (MIN_BOX_FRACTION * size).floor().long().clamp(min=1)
    assert (extent <= hi).all()
    # boxes are only shortened by the border: a box shorter than the minimum extent touches the upper border
    assert ((extent >= lo) | (upper == size)).all()
    # boxes are added in order: the active ones are a prefix
    assert (active.long().diff(dim=1) <= 0).all()


def test_masked_fraction_at_most_30_percent_plus_one_box():
    spatial = (16, 40, 40)
    x = torch.zeros((6, 1, *spatial))
    fractions = torch.cat([random_box_mask(x, _gen(s))[1].float().mean((1, 2, 3, 4)) for s in range(10)])
    max_box = math.prod(int(MAX_BOX_FRACTION * s) for s in spatial) / math.prod(spatial)
    assert fractions.max() <= MAX_MASK_FRACTION + max_box + 1e-6
    assert fractions.max() > 0.15 and fractions.mean() > 0.05  # the target is U(0, 0.3) per sample


def test_noise_minmax_in_masked_voxels_and_untouched_outside():
    x = _images(b=4, c=3, spatial=(16, 24, 24)) * 10 + 50  # far outside [0, 1]
    masked, mask = random_box_mask(x, _gen(4))
    assert mask.dtype == torch.bool and mask.shape == (4, 1, 16, 24, 24)
    m = mask.expand_as(x)
    assert torch.equal(masked[~m], x[~m])
    inside = masked[m]
    assert inside.numel() > 0 and inside.min() >= 0 and inside.max() <= 1
    # the same mask for every channel; noise differs between channels
    assert torch.equal((masked[:, 0] != x[:, 0]), (masked[:, 1] != x[:, 1]))
    assert not torch.equal(masked[:, 0][mask[:, 0]], masked[:, 1][mask[:, 0]])
    # min-max normalised per sample over its masked voxels: both ends occur in every masked sample
    for n in range(4):
        if mask[n].any():
            values = masked[n][m[n]]
            assert values.min() == 0 and values.max() == 1


@pytest.mark.parametrize("spatial", [(10, 14, 12), (14, 12)])
def test_boxes_to_mask_is_the_union_of_the_active_boxes(spatial):
    lower, upper, active = sample_mask_boxes(3, spatial, _gen(5), max_fraction=0.6)
    active[:, 1] = False  # an inactive box in the middle is not painted
    expected = torch.zeros((3, *spatial), dtype=torch.bool)
    for n in range(3):
        for j in range(lower.shape[1]):
            if active[n, j]:
                expected[(n,) + tuple(slice(int(lo), int(up)) for lo, up in zip(lower[n, j], upper[n, j]))] = True
    assert torch.equal(boxes_to_mask(lower, upper, active, spatial), expected.unsqueeze(1))


def test_same_seed_same_views_other_seed_other_views():
    x = _images()
    a, b, c = two_views(x, _gen(7)), two_views(x, _gen(7)), two_views(x, _gen(8))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["view1"], c["view1"])


def test_two_views_targets_are_rotated_unmasked_views():
    x = _images(b=4)
    v = two_views(x, _gen(9))
    assert set(v) == {"view1", "view2", "rot1", "rot2", "mask1", "mask2", "target1", "target2"}
    for i in ("1", "2"):
        assert torch.equal(v["target" + i], rotate(x, v["rot" + i]))
        keep = ~v["mask" + i].expand_as(x)
        assert torch.equal(v["view" + i][keep], v["target" + i][keep])


def test_bad_arguments():
    with pytest.raises(ValueError):
        random_box_mask(torch.zeros(2, 8, 8))
    with pytest.raises(TypeError):
        random_rotation(torch.zeros(2, 1, 4, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError):
        sample_mask_boxes(2, (8, 8, 8), max_fraction=1.5)
    with pytest.raises(ValueError):
        rotate(_images(), torch.zeros(2, dtype=torch.long))


# ------------------------------------------------------------------------------------------------------- NT-Xent
def test_nt_xent_identical_orthonormal_embeddings():
    # z1 = z2 = [e1, e2]: per anchor, positive similarity 1, two negatives with similarity 0:
    # l = -log(e^(1/t) / (e^(1/t) + 2)), t = 0.5 -> log(1 + 2 e^-2)
    z = torch.eye(2, 4)
    assert nt_xent(z, z.clone(), 0.5).item() == pytest.approx(math.log(1 + 2 * math.exp(-2)), abs=1e-6)


def test_nt_xent_orthogonal_views():
    # every similarity is 0: l = log(2N - 1) = log(3) for N = 2, whatever the temperature
    z1, z2 = torch.eye(4)[:2], torch.eye(4)[2:]
    assert nt_xent(z1, z2).item() == pytest.approx(math.log(3), abs=1e-6)
    assert nt_xent(z1, z2, 0.1).item() == pytest.approx(math.log(3), abs=1e-6)


def test_nt_xent_scale_invariant_and_gradient():
    z1 = torch.randn(4, 8, generator=_gen(1), requires_grad=True)
    z2 = torch.randn(4, 8, generator=_gen(2))
    loss = nt_xent(z1, z2)
    assert nt_xent(3 * z1, z2).item() == pytest.approx(loss.item(), rel=1e-5)
    loss.backward()
    assert z1.grad is not None and z1.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        nt_xent(torch.zeros(3, 4), torch.zeros(2, 4))


def test_swin_proxy_losses_sum_with_unit_weights():
    n, c = 2, 2
    rec = torch.zeros(2 * n, c, 4, 4, 4)
    target = torch.ones_like(rec)
    logits = torch.zeros(2 * n, 4)
    rot = torch.tensor([0, 1, 2, 3])
    proj = torch.eye(2 * n, 8)
    total, parts = swin_proxy_losses(rec, logits, proj, target, rot)
    assert set(parts) == set(LOSS_WEIGHTS) and all(w == 1.0 for w in LOSS_WEIGHTS.values())
    assert parts["reconstruction"].item() == pytest.approx(1.0)
    assert parts["rotation"].item() == pytest.approx(math.log(4), abs=1e-6)
    assert parts["contrastive"].item() == pytest.approx(math.log(3), abs=1e-6)
    assert total.item() == pytest.approx(1 + math.log(4) + math.log(3), abs=1e-5)


# ------------------------------------------------------------------------------------------------- learnability
def test_rotation_accuracy_known_answer_and_chance():
    from nnunetv2_ext.pretext.swin_proxies import ROTATION_CHANCE, rotation_accuracy

    logits = torch.tensor([[5.0, 0, 0, 0], [0, 5.0, 0, 0], [0, 0, 5.0, 0], [0, 0, 0, 5.0]])
    assert float(rotation_accuracy(logits, torch.tensor([0, 1, 3, 3]))) == pytest.approx(0.75)
    assert ROTATION_CHANCE == 1 / N_ROTATIONS == 0.25
    with pytest.raises(ValueError, match="N targets"):
        rotation_accuracy(logits, torch.tensor([0, 1]))


def test_identity_l1_is_the_noise_error_inside_the_mask():
    from nnunetv2_ext.pretext.swin_proxies import identity_l1, reconstruction_l1

    x = torch.rand(2, 2, 16, 16, generator=_gen(4))
    masked, mask = random_box_mask(x, _gen(5))
    inside = mask.expand_as(x)
    expected = float((masked - x).abs()[inside].sum() / x.numel())
    assert float(identity_l1(masked, x)) == pytest.approx(expected, rel=1e-5)
    assert float(reconstruction_l1(x, x)) == 0.0  # the perfect inpainting beats the identity
    assert float(identity_l1(x, x)) == 0.0  # nothing masked: nothing to learn
    with pytest.raises(ValueError, match="same shape"):
        identity_l1(masked, x[:1])


def test_masked_l1_counts_only_the_boxes():
    from nnunetv2_ext.pretext.swin_proxies import masked_l1

    target = torch.zeros(2, 2, 4, 4)
    reconstruction = torch.ones(2, 2, 4, 4)
    mask = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    mask[0, 0, :2, :2] = True
    reconstruction[:, :, 2:, 2:] = 7.0  # errors outside the boxes do not count
    assert float(masked_l1(reconstruction, target, mask)) == pytest.approx(1.0)
    assert float(masked_l1(reconstruction, target, torch.zeros_like(mask))) == 0.0
    with pytest.raises(ValueError, match="must agree"):
        masked_l1(reconstruction, target, mask[:1])
