"""Tests for nnunetv2_ext.architectures.fusion (known answers on constant tensors, shapes, ill arguments)."""
import pytest
import torch
from torch import nn

from nnunetv2_ext.architectures.fusion import FUSION_MODES, FeatureFusion


def _constant_maps(values, channels=3, spatial=(4, 5, 6)):
    return [torch.full((2, channels, *spatial), float(v)) for v in values]


@pytest.mark.parametrize("conv_op, norm_op, spatial", [
    (nn.Conv2d, nn.InstanceNorm2d, (8, 6)),
    (nn.Conv3d, nn.InstanceNorm3d, (4, 5, 6)),
])
@pytest.mark.parametrize("in_channels, out_channels", [([3, 3, 3, 3], 5), ([2, 4], 3)])
def test_concat_projects_to_out_channels(conv_op, norm_op, spatial, in_channels, out_channels):
    fusion = FeatureFusion("concat", in_channels, out_channels, conv_op, norm_op=norm_op,
                           norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU)
    features = [torch.randn(2, c, *spatial) for c in in_channels]
    out = fusion(features)
    assert out.shape == (2, out_channels, *spatial)
    conv = fusion.proj[0]
    assert isinstance(conv, conv_op)
    assert conv.in_channels == sum(in_channels) and conv.out_channels == out_channels
    assert conv.kernel_size == (1,) * len(spatial)
    assert [type(m) for m in fusion.proj] == [conv_op, norm_op, nn.LeakyReLU]


def test_concat_is_a_1x1_conv_of_the_concatenation():
    """Without norm and nonlin, concat fusion is exactly a 1x1x1 convolution of the channel concatenation."""
    torch.manual_seed(0)
    fusion = FeatureFusion("concat", [2, 3], 4, nn.Conv3d, conv_bias=True)
    assert len(fusion.proj) == 1
    a, b = torch.randn(1, 2, 3, 3, 3), torch.randn(1, 3, 3, 3, 3)
    w, bias = fusion.proj[0].weight[:, :, 0, 0, 0], fusion.proj[0].bias
    expected = torch.einsum("oc,bcxyz->boxyz", w, torch.cat([a, b], 1)) + bias[None, :, None, None, None]
    torch.testing.assert_close(fusion([a, b]), expected)


def test_sum_is_elementwise_sum():
    fusion = FeatureFusion("sum", [3, 3, 3], 3, nn.Conv3d)
    out = fusion(_constant_maps([1.0, 2.0, 4.5]))
    torch.testing.assert_close(out, torch.full((2, 3, 4, 5, 6), 7.5))
    assert not list(fusion.parameters())


def test_mean_is_elementwise_mean():
    fusion = FeatureFusion("mean", [3, 3, 3, 3], 3, nn.Conv3d)
    out = fusion(_constant_maps([1.0, 2.0, 3.0, 6.0]))
    torch.testing.assert_close(out, torch.full((2, 3, 4, 5, 6), 3.0))
    assert not list(fusion.parameters())


@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_elementwise_modes_on_random_maps(mode):
    torch.manual_seed(0)
    maps = [torch.randn(1, 2, 5, 7) for _ in range(3)]
    expected = maps[0] + maps[1] + maps[2]
    if mode == "mean":
        expected = expected / 3
    torch.testing.assert_close(FeatureFusion(mode, [2, 2, 2], 2, nn.Conv2d)(maps), expected)


@pytest.mark.parametrize("mode", ["max", "Concat", "", "attention"])
def test_unknown_mode_raises(mode):
    with pytest.raises(ValueError, match="fusion must be one of"):
        FeatureFusion(mode, [2, 2], 2, nn.Conv3d)


@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_elementwise_modes_need_decoder_width(mode):
    with pytest.raises(ValueError, match="decoder width 4"):
        FeatureFusion(mode, [2, 2], 4, nn.Conv3d)


@pytest.mark.parametrize("mode", FUSION_MODES)
def test_compute_conv_feature_map_size(mode):
    in_channels = [4, 4] if mode == "concat" else [6, 6]
    fusion = FeatureFusion(mode, in_channels, 6, nn.Conv3d, norm_op=nn.InstanceNorm3d)
    size = fusion.compute_conv_feature_map_size((2, 3, 4))
    expected = (8 + 2 * 6) * 24 if mode == "concat" else 6 * 24
    assert size == expected
