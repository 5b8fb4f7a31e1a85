"""Tests for the restoration loss and its trivial baselines (nnunetv2_ext.pretext.restoration)."""
import pytest
import torch

from nnunetv2_ext.pretext.restoration import identity_mse, mean_intensity_mse, restoration_mse


def test_mean_intensity_mse_is_the_mean_variance_per_sample_and_channel():
    target = torch.tensor([[[0.0, 2.0, 0.0, 2.0], [1.0, 1.0, 1.0, 1.0]],
                           [[0.0, 0.0, 0.0, 4.0], [3.0, 3.0, 3.0, 3.0]]]).view(2, 2, 2, 2)
    # per (sample, channel) population variance: 1, 0, 3, 0 -> mean 1
    assert float(mean_intensity_mse(target)) == pytest.approx(1.0)
    assert float(mean_intensity_mse(target + 5.0)) == pytest.approx(1.0)  # a constant offset is free


def test_mean_intensity_mse_of_z_scored_images_is_about_one_and_beats_a_noisy_identity():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 16, 16, generator=g)
    x = (x - x.mean((2, 3), keepdim=True)) / x.std((2, 3), keepdim=True, unbiased=False)
    assert float(mean_intensity_mse(x)) == pytest.approx(1.0, abs=1e-5)
    noisy = x + 2.0 * torch.randn(x.shape, generator=g)
    assert float(mean_intensity_mse(x)) < float(identity_mse(noisy, x)) == pytest.approx(
        float(restoration_mse(noisy, x)))


def test_mean_intensity_mse_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(B, C, \*spatial\)"):
        mean_intensity_mse(torch.zeros(4, 4))
