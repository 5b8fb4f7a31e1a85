"""Tests for the cross-modality prediction pretext (Umesh Kalyanappa 2025 sec. 3.1 and 4.3.1: MSE, PSNR,
SSIM)."""
import math

import pytest
import torch

from nnunetv2_ext.pretext.cross_modality import psnr, resolve_channels, split_modalities, ssim3d

CHANNELS = {"0": "T1", "1": "T1Gd", "2": "T2", "3": "FLAIR"}


def _images(b=2, c=4, spatial=(12, 14, 16), seed=0):
    return torch.randn((b, c, *spatial), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------- channel names
def test_resolve_channels_by_name_in_given_order():
    assert resolve_channels(CHANNELS, ["T1", "T1Gd"]) == [0, 1]
    assert resolve_channels(CHANNELS, ("FLAIR", "T1")) == [3, 0]
    assert resolve_channels(CHANNELS, ["flair"]) == [3]  # case-insensitive fallback


def test_resolve_channels_errors_list_available():
    with pytest.raises(ValueError, match=r"'ADC'.*0: T1, 1: T1Gd, 2: T2, 3: FLAIR"):
        resolve_channels(CHANNELS, ["ADC"])
    with pytest.raises(ValueError, match="more than once"):
        resolve_channels(CHANNELS, ["T1", "t1"])
    with pytest.raises(ValueError, match="no modality names"):
        resolve_channels(CHANNELS, [])


# ------------------------------------------------------------------------------------------------- split
def test_zero_mode_zeroes_target_and_unused_channels_keeps_inputs():
    x = _images()
    inputs, target = split_modalities(x, target_channels=[3], input_channels=[0, 1])
    assert inputs.shape == x.shape and target.shape == (2, 1, 12, 14, 16)
    assert torch.equal(target, x[:, 3:4])
    assert torch.equal(inputs[:, :2], x[:, :2])
    assert (inputs[:, 2:] == 0).all()  # T2 (unused) and FLAIR (target) are hidden
    assert x[:, 3].abs().sum() > 0  # the caller's tensor is untouched


def test_select_mode_is_the_papers_slicing():
    x = _images()
    inputs, target = split_modalities(x, [3], [0, 1], mode="select")
    assert torch.equal(inputs, x[:, :2]) and torch.equal(target, x[:, 3:4])


def test_split_errors():
    x = _images()
    with pytest.raises(ValueError, match="both input and target"):
        split_modalities(x, [1], [0, 1])
    with pytest.raises(ValueError, match="do not exist"):
        split_modalities(x, [4], [0])
    with pytest.raises(ValueError, match="mode"):
        split_modalities(x, [3], [0], mode="drop")


# ------------------------------------------------------------------------------------------------- metrics
def test_psnr_identical_is_inf_and_constant_offset_known():
    y = _images(c=1)
    assert torch.isinf(psnr(y, y)).all()
    # MSE = c^2, PSNR = 20 log10(R / c): R = 2, c = 0.5 -> 20 log10(4)
    got = psnr(y + 0.5, y, data_range=2.0)
    assert torch.allclose(got, torch.full((2,), 20 * math.log10(4), dtype=torch.float64))
    # default MAX_I: the target's range per sample
    r = y.reshape(2, -1).amax(1) - y.reshape(2, -1).amin(1)
    assert torch.allclose(psnr(y + 0.5, y), (20 * torch.log10(r / 0.5)).double(), atol=1e-5)


def test_ssim_identical_is_one_and_drops_with_noise():
    y = _images(c=1, spatial=(16, 16, 16))
    assert torch.allclose(ssim3d(y, y), torch.ones(2), atol=1e-5)
    noisy = y + torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    s = ssim3d(noisy, y)
    assert (s < 0.9).all() and (s > -1).all()
    assert (ssim3d(y + 0.1 * (noisy - y), y) > s).all()


def test_ssim_window_larger_than_volume_is_refused():
    y = _images(c=1, spatial=(8, 16, 16))
    with pytest.raises(ValueError, match="win_size"):
        ssim3d(y, y)
    assert torch.allclose(ssim3d(y, y, win_size=7), torch.ones(2), atol=1e-5)


# ------------------------------------------------------------------------------------------------- learnability
def test_mean_intensity_psnr_known_answer():
    from nnunetv2_ext.pretext.cross_modality import mean_intensity_psnr

    # target values 0 and 2 in equal parts: mean 1, MSE 1, range 2 -> 20 log10(2) dB; sample 2 scaled by 3: the same
    t = torch.tensor([0.0, 2.0]).repeat(8).view(1, 1, 4, 4)
    target = torch.cat([t, 3 * t])
    assert mean_intensity_psnr(target).tolist() == pytest.approx([20 * math.log10(2)] * 2)
    assert float(mean_intensity_psnr(t, data_range=4.0)) == pytest.approx(20 * math.log10(4))


def test_mean_intensity_psnr_is_the_psnr_of_the_per_channel_mean():
    from nnunetv2_ext.pretext.cross_modality import mean_intensity_psnr

    target = _images(c=2, spatial=(6, 7, 8))
    mean = target.mean(dim=(2, 3, 4), keepdim=True).expand_as(target)
    assert torch.allclose(mean_intensity_psnr(target), psnr(mean, target))
    assert bool((psnr(target, target) > mean_intensity_psnr(target)).all())  # a perfect prediction beats it
