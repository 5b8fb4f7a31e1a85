"""adapt_input_kernel: a target input channel takes its pretrained slice, or a new one (kept, redrawn or the mean)."""
from __future__ import annotations

import math

import pytest
import torch

from nnunetv2_ext.transfer.input_kernel import (
    HE_NEG_SLOPE,
    adapt_input_kernel,
    mean_input_kernel,
    new_channel_note,
    same_beyond_input_channels,
)


def kernels(c_src: int = 2, c_tgt: int = 4):
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, c_src, 3, 3, 3, generator=g), torch.randn(6, c_tgt, 3, 3, 3, generator=g)


def test_slices_copied_and_new_channels_kept():
    src, tgt = kernels()
    before = tgt.clone()
    out, action = adapt_input_kernel(tgt, [src[:, 0], None, None, src[:, 1]])
    assert action == "adapted"
    assert torch.equal(out[:, 0], src[:, 0]) and torch.equal(out[:, 3], src[:, 1])
    assert torch.equal(out[:, 1:3], before[:, 1:3])  # 'kaiming' without a generator: the target's own init
    assert torch.equal(tgt, before) and out is not tgt  # the target is not modified


def test_mean_fills_new_channels_with_the_mean_of_the_pretrained_channels():
    src, tgt = kernels()
    mean = mean_input_kernel([src])
    torch.testing.assert_close(mean, (src[:, 0] + src[:, 1]) / 2)
    out, action = adapt_input_kernel(tgt, [None, src[:, 1], None, None], "mean", mean)
    assert action == "adapted" and torch.equal(out[:, 1], src[:, 1])
    for p in (0, 2, 3):
        assert torch.equal(out[:, p], mean)
    other = torch.randn(6, 3, 3, 3, 3)
    torch.testing.assert_close(mean_input_kernel([src, other]), (src.mean(1) + other.mean(1)) / 2)


def test_generator_redraws_he_normal_reproducibly():
    src, tgt = kernels(c_src=1, c_tgt=64)
    slices = [src[:, 0]] + [None] * 63
    a, action = adapt_input_kernel(tgt, slices, generator=torch.Generator().manual_seed(3))
    b, _ = adapt_input_kernel(tgt, slices, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a[:, 1:], tgt[:, 1:]) and action == "adapted"
    std = math.sqrt(2.0 / (1 + HE_NEG_SLOPE ** 2)) / math.sqrt(64 * 27)
    assert abs(a[:, 1:].std().item() / std - 1) < 0.1  # He normal over the kernel's fan-in


def test_no_pretrained_channel_is_new_and_dtype_follows_the_target():
    src, tgt = kernels()
    out, action = adapt_input_kernel(tgt.double(), [None] * 4)
    assert action == "new" and torch.equal(out, tgt.double())
    out, _ = adapt_input_kernel(tgt.half(), [src[:, 0], None, None, None])
    assert out.dtype == torch.float16 and torch.equal(out[:, 0], src[:, 0].half())


def test_bad_arguments():
    src, tgt = kernels()
    with pytest.raises(ValueError, match="one slice"):
        adapt_input_kernel(tgt, [src[:, 0]])
    with pytest.raises(ValueError, match="new_channel_init"):
        adapt_input_kernel(tgt, [None] * 4, "zeros")
    with pytest.raises(ValueError, match="mean kernel"):
        adapt_input_kernel(tgt, [None] * 4, "mean")
    with pytest.raises(ValueError, match="at least one"):
        mean_input_kernel([])


def test_kernels_compatible_beyond_input_channels_only():
    src, tgt = kernels()
    assert same_beyond_input_channels(src, tgt)
    assert not same_beyond_input_channels(src, torch.zeros(5, 4, 3, 3, 3))  # output channels
    assert not same_beyond_input_channels(src, torch.zeros(6, 4, 1, 3, 3))  # spatial kernel
    assert not same_beyond_input_channels(src, torch.zeros(6, 4, 3, 3))  # 2D vs 3D


def test_new_channel_note():
    assert new_channel_note(["T1Gd", "T2"]) == ("new T1Gd, T2 (target's He (Kaiming) init kept, BrainSegFounder "
                                                "(Cox et al. 2024) sec. 2.4.1)")
    assert "mean of the pretrained" in new_channel_note(["T2"], "mean")
    assert "redrawn" in new_channel_note(["T2"], "kaiming", torch.Generator())
