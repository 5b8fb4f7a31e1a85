"""Tests for nnunetv2_ext.architectures.ssl_heads: the rotation / contrastive heads and the U-Net wrapper of the Swin
UNETR proxy tasks (tiny U-Nets: features [4, 8, 16])."""
from __future__ import annotations

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn

from nnunetv2_ext.architectures.multi_encoder import MultiEncoderUNet
from nnunetv2_ext.architectures.ssl_heads import SSLHeads, SSLOutput, SSLWrapper, with_ssl_heads
from nnunetv2_ext.pretext.swin_proxies import swin_proxy_losses, two_views

# dim -> (conv_op, norm_op, input spatial size)
CASES = {2: (nn.Conv2d, nn.InstanceNorm2d, (16, 16)), 3: (nn.Conv3d, nn.InstanceNorm3d, (8, 12, 12))}


def _tiny_unet(dim: int = 3, in_channels: int = 2) -> PlainConvUNet:
    conv_op, norm_op, _ = CASES[dim]
    return PlainConvUNet(in_channels, 3, [4, 8, 16], conv_op, 3, [1, 2, 2], 1, in_channels, 1, conv_bias=True,
                         norm_op=norm_op, norm_op_kwargs={"affine": True}, nonlin=nn.LeakyReLU)


def _input(dim: int, batch: int = 2, channels: int = 2) -> torch.Tensor:
    return torch.randn(batch, channels, *CASES[dim][2], generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("grid", [1, 2])
def test_heads_read_the_bottleneck_on_a_grid(dim, grid):
    heads = SSLHeads(16, spatial_dims=dim, grid=grid, n_rotations=4, projection_dim=32)
    assert heads.rotation.in_features == 16 * grid ** dim
    rotation, projection = heads(torch.randn(3, 16, *([4] * dim)))
    assert rotation.shape == (3, 4) and projection.shape == (3, 32)


def test_grid_cells_see_where_things_are():
    """A bottleneck and its mirror image: the same heads' output with one global average (grid 1), not with 2^D
    cells, which is what lets the rotation head tell rotations apart."""
    x = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    for grid, same in ((1, True), (2, False)):
        torch.manual_seed(0)
        heads = SSLHeads(16, spatial_dims=2, grid=grid)
        (rotation, _), (rotation_flipped, _) = heads(x), heads(x.flip(-1))
        assert torch.allclose(rotation, rotation_flipped, atol=1e-6) == same, grid


@pytest.mark.parametrize("kwargs", [dict(spatial_dims=1), dict(spatial_dims=4), dict(grid=0)])
def test_heads_refuse_ill_arguments(kwargs):
    with pytest.raises(ValueError, match="spatial_dims 2 or 3 and grid >= 1"):
        SSLHeads(16, **kwargs)


@pytest.mark.parametrize("dim", [2, 3])
def test_with_ssl_heads_sizes_the_heads_from_the_encoder(dim):
    model = with_ssl_heads(_tiny_unet(dim), grid=2, projection_dim=64)
    assert isinstance(model, SSLWrapper) and model.backbone_class == "PlainConvUNet"
    assert model.ssl_heads.spatial_dims == dim and model.ssl_heads.rotation.in_features == 16 * 2 ** dim
    out = model(_input(dim))
    assert isinstance(out, SSLOutput)
    assert out.reconstruction.shape == (2, 2, *CASES[dim][2])
    assert out.rotation_logits.shape == (2, 4) and out.projection.shape == (2, 64)


def test_wrapper_copies_what_the_transfer_reads_from_a_multi_encoder():
    net = MultiEncoderUNet(2, n_stages=3, features_per_stage=[4, 8, 16], conv_op=nn.Conv2d, kernel_sizes=3,
                           strides=[1, 2, 2], num_classes=2, n_conv_per_stage=1, n_conv_per_stage_decoder=1,
                           conv_bias=True, norm_op=nn.InstanceNorm2d, norm_op_kwargs={"affine": True},
                           nonlin=nn.LeakyReLU, modality_names=["T1", "FLAIR"])
    model = with_ssl_heads(net)
    assert model.modality_names == net.modality_names and model.encoder_groups == net.encoder_groups
    assert model(_input(2)).reconstruction.shape == (2, 2, 16, 16)


@pytest.mark.parametrize("network", [nn.Conv3d(2, 2, 3), nn.Sequential()])
def test_networks_without_a_unet_interface_are_refused(network):
    with pytest.raises(ValueError, match="encoder"):
        with_ssl_heads(network)
    with pytest.raises(ValueError, match="`encoder` returning its skips"):
        SSLWrapper(network, SSLHeads(16))


def test_ssl_wrapper_keeps_backbone_keys_and_trains_every_used_parameter():
    net = _tiny_unet()
    backbone_keys = set(net.state_dict())
    model = SSLWrapper(net, SSLHeads(16, spatial_dims=3, grid=2))
    keys = set(model.state_dict())
    assert {k for k in keys if not k.startswith("ssl_heads.")} == backbone_keys
    assert {k.split(".")[0] for k in keys} == {"encoder", "decoder", "ssl_heads"}

    x = torch.randn(2, 2, 8, 12, 12, generator=torch.Generator().manual_seed(0))
    v = two_views(x, torch.Generator().manual_seed(1))
    out = model(torch.cat([v["view1"], v["view2"]]))
    assert out.reconstruction.shape == (4, 2, 8, 12, 12)
    assert out.rotation_logits.shape == (4, 4) and out.projection.shape == (4, 512)
    total, _ = swin_proxy_losses(*out, torch.cat([v["target1"], v["target2"]]), torch.cat([v["rot1"], v["rot2"]]))
    total.backward()
    # without deep supervision the decoder only runs its last segmentation layer (as in nnU-Net)
    unused = {n for n, _ in model.named_parameters()
              if ".seg_layers." in n and not n.startswith("decoder.seg_layers.1")}
    missing = [n for n, p in model.named_parameters() if n not in unused and (p.grad is None or not p.grad.abs().sum())]
    assert not missing
