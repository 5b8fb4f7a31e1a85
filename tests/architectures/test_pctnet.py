"""Tests for nnunetv2_ext.architectures.pctnet (tiny widths: features [4, 8, 16, 16, 32], input 32x48x32)."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from nnunetv2_ext.architectures.pctnet import PCTBlock, PCTNet

NUM_CLASSES = 3
SIZE = (32, 48, 32)  # divisible by the default total stride (8, 16, 16); level 2 (16x12x8) holds 4^3 windows
TINY = dict(features_per_stage=[4, 8, 16, 16, 32], num_heads=[2, 2, 4], window_size=4)
ISOTROPIC = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]]




def tiny_net(deep_supervision=True, **overrides) -> PCTNet:
    torch.manual_seed(0)
    return PCTNet(4, NUM_CLASSES, deep_supervision, **{**TINY, **overrides})


def tiny_input(size=SIZE) -> torch.Tensor:
    return torch.randn(1, 4, *size, generator=torch.Generator().manual_seed(1))


def nnunet_ds_scales(strides):
    """What nnUNetTrainer._get_deep_supervision_scales computes from the plans' strides."""
    return [list(s) for s in 1 / np.cumprod(np.vstack(strides), axis=0)][:-1]


def expected_shapes(strides, size=SIZE):
    return [(1, NUM_CLASSES, *(int(round(s * f)) for s, f in zip(size, scale)))
            for scale in nnunet_ds_scales(strides)]


@pytest.mark.parametrize("strides, size", [(None, SIZE), (ISOTROPIC, (32, 32, 32))], ids=["paper", "isotropic"])
def test_deep_supervision_outputs_follow_the_strides_full_resolution_first(strides, size):
    net = tiny_net(strides=strides)
    out = net(tiny_input(size))
    used = PCTNet.default_strides if strides is None else strides
    assert isinstance(out, list) and len(out) == len(used) - 1 == 4
    assert [tuple(o.shape) for o in out] == expected_shapes(used, size)
    assert np.allclose(net.ds_scales(), nnunet_ds_scales(used))


def test_without_deep_supervision_one_full_resolution_tensor_and_switchable():
    net = tiny_net(deep_supervision=False).eval()
    x = tiny_input()
    with torch.no_grad():
        single = net(x)
        assert isinstance(single, torch.Tensor) and single.shape == (1, NUM_CLASSES, *SIZE)
        net.decoder.deep_supervision = True  # what nnUNetTrainer.set_deep_supervision_enabled does
        multi = net(x)
    assert isinstance(multi, list) and len(multi) == 4
    assert torch.allclose(multi[0], single)  # the same full-resolution head either way


def test_every_parameter_gets_a_gradient():
    net = tiny_net()
    loss = sum(o.float().square().mean() for o in net(tiny_input()))
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"parameters without gradient: {missing}"


def test_paper_structure_2d_then_3d_embedding_and_shifted_windows():
    net = tiny_net()
    # sec. 3.1.4: 2D projection and conv block at full resolution, 2D downsampling, 3D block at the second level
    assert net.embedding.proj.kernel_size == (1, 3, 3)
    assert net.embedding.block0.layers[2].kernel_size == (1, 3, 3)
    assert net.embedding.down1[0].kernel_size == (1, 2, 2)
    assert net.embedding.block1.layers[2].kernel_size == (3, 3, 3)
    assert net.decoder.blocks[1].layers[2].kernel_size == (1, 3, 3)  # head symmetric to the embedding
    # isotropic strides: a fully 3D network
    assert tiny_net(strides=ISOTROPIC).embedding.proj.kernel_size == (3, 3, 3)
    # five PCT blocks, each: P-MSA block then SP-MSA block shifted by half the window
    blocks = [m for m in net.modules() if isinstance(m, PCTBlock)]
    assert len(blocks) == 5
    for block in blocks:
        swin = block.attention.blocks
        assert len(swin) == 2
        assert tuple(swin[0].shift_size) == (0, 0, 0) and tuple(swin[1].shift_size) == (2, 2, 2)


def test_pct_block_adds_its_convolution_and_attention_branches():
    torch.manual_seed(0)
    block = PCTBlock(8, num_heads=2, window_size=(4, 4, 4), dropout=0.2, swin_dropout=0.0).eval()
    x = torch.randn(1, 8, 8, 8, 8)
    with torch.no_grad():
        assert torch.allclose(block(x), block.conv(x) + block.attention(x))


def test_default_channels_are_the_papers():
    net = PCTNet(1, 2)
    assert net.features_per_stage == [24, 48, 128, 256, 512]
    widths = [net.embedding.block0, net.embedding.block1] + list(net.pyramid.encoder_blocks)
    assert [b.conv.layers[2].out_channels if isinstance(b, PCTBlock) else b.layers[2].out_channels
            for b in widths] == [24, 48, 128, 256, 512]


def test_built_by_nnunet_get_network_from_plans():
    arch_kwargs = json.loads(json.dumps({**TINY, "strides": [list(s) for s in PCTNet.default_strides],
                                         "patch_size": list(SIZE)}))  # a plans file holds JSON
    torch.manual_seed(0)
    net = get_network_from_plans("nnunetv2_ext.architectures.pctnet.PCTNet", arch_kwargs, [], input_channels=4,
                                 output_channels=3, deep_supervision=True)
    assert isinstance(net, PCTNet) and net.decoder.deep_supervision
    out = net(tiny_input())
    assert [tuple(o.shape) for o in out] == expected_shapes(PCTNet.default_strides)


@pytest.mark.parametrize("strides, planned, rounded, rule", [
    (None, [17, 40, 33], [24, 48, 48], "multiples of [8, 16, 16]"),
    (ISOTROPIC, [17, 40, 33], [32, 48, 48], "multiples of [16, 16, 16]"),
])
def test_valid_patch_size_rounds_up_to_a_patch_the_network_takes(strides, planned, rounded, rule):
    """The rule the planning code applies (planning.backbones rounds the plans' patch with it)."""
    assert PCTNet.valid_patch_size(planned, strides=strides) == rounded
    assert PCTNet.patch_rule(strides=strides) == rule
    net = tiny_net(patch_size=rounded, strides=strides, deep_supervision=False)
    assert net(tiny_input(rounded)).shape == (1, NUM_CLASSES, *rounded)


@pytest.mark.parametrize("kwargs, message", [
    (dict(patch_size=[30, 48, 32]), r"patch size must be divisible by \[8, 16, 16\]"),
    (dict(patch_size=[32, 48]), "3D-only"),
    (dict(strides=[[1, 1], [2, 2], [2, 2], [2, 2], [2, 2]]), "3D-only"),
    (dict(strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]]), "5 resolution levels"),
    (dict(strides=[[2, 2, 2]] * 5), r"strides\[0\] must be \[1, 1, 1\]"),
    (dict(features_per_stage=[4, 8, 16]), "features_per_stage needs 5"),
    (dict(num_heads=[3, 2, 4]), "divisible by its number of heads"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
])
def test_bad_arguments_raise_value_error_naming_the_rule(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_net(**kwargs)


def test_bad_input_raises_value_error():
    net = tiny_net()
    with pytest.raises(ValueError, match="divisible"):
        net(torch.randn(1, 4, 32, 40, 32))
    with pytest.raises(ValueError, match="3D-only"):
        net(torch.randn(1, 4, 32, 32))


def test_importing_the_module_does_not_import_monai():
    code = ("import sys, nnunetv2_ext.architectures.pctnet; "
            "sys.exit(1 if any(m == 'monai' or m.startswith('monai.') for m in sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0, "importing pctnet imported monai"
