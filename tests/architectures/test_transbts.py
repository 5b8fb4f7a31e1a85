"""Tests for nnunetv2_ext.architectures.transbts (tiny widths: features [4, 8, 8, 16], d = 32, input 32x48x32)."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from nnunetv2_ext.architectures.transbts import TransBTS

NUM_CLASSES = 3
SIZE = (32, 48, 32)
TINY = dict(features_per_stage=[4, 8, 8, 16], embedding_dim=32, num_layers=2, num_heads=4, mlp_dim=64)
ANISOTROPIC = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]




def tiny_net(deep_supervision=True, patch_size=SIZE, **overrides) -> TransBTS:
    torch.manual_seed(0)
    return TransBTS(4, NUM_CLASSES, deep_supervision, patch_size=patch_size, **{**TINY, **overrides})


def tiny_input(size=SIZE) -> torch.Tensor:
    return torch.randn(1, 4, *size, generator=torch.Generator().manual_seed(1))


def nnunet_ds_scales(strides):
    """What nnUNetTrainer._get_deep_supervision_scales computes from the plans' strides."""
    return [list(s) for s in 1 / np.cumprod(np.vstack(strides), axis=0)][:-1]


def expected_shapes(strides, size=SIZE):
    return [(1, NUM_CLASSES, *(int(round(s * f)) for s, f in zip(size, scale)))
            for scale in nnunet_ds_scales(strides)]


@pytest.mark.parametrize("strides, size", [(None, SIZE), (ANISOTROPIC, (16, 32, 32))], ids=["paper", "anisotropic"])
def test_deep_supervision_outputs_follow_the_strides_full_resolution_first(strides, size):
    net = tiny_net(patch_size=size, strides=strides)
    out = net(tiny_input(size))
    used = TransBTS.default_strides if strides is None else strides
    assert isinstance(out, list) and len(out) == len(used) - 1 == 3
    assert [tuple(o.shape) for o in out] == expected_shapes(used, size)
    assert np.allclose(net.ds_scales(), nnunet_ds_scales(used))
    # one learned position embedding per bottleneck voxel (input / 8 per axis with the paper's strides)
    total = np.prod(np.array(used), axis=0)
    assert net.bottleneck.position_embedding.shape == (1, int(np.prod(np.array(size) // total)), 32)


def test_without_deep_supervision_one_full_resolution_tensor_and_switchable():
    net = tiny_net(deep_supervision=False).eval()
    x = tiny_input()
    with torch.no_grad():
        single = net(x)
        assert isinstance(single, torch.Tensor) and single.shape == (1, NUM_CLASSES, *SIZE)
        net.decoder.deep_supervision = True  # what nnUNetTrainer.set_deep_supervision_enabled does
        multi = net(x)
    assert isinstance(multi, list) and len(multi) == 3
    assert torch.allclose(multi[0], single)


def test_every_parameter_gets_a_gradient():
    net = tiny_net()
    loss = sum(o.float().square().mean() for o in net(tiny_input()))
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"parameters without gradient: {missing}"


def test_structure_follows_the_paper():
    net = tiny_net()
    layers = net.bottleneck.transformer.layers
    assert len(layers) == 2 and all(layer.norm_first for layer in layers)
    assert net.bottleneck.transformer.norm is not None
    assert [len(stage) for stage in net.encoder.stages] == list(TransBTS.blocks_per_stage)


def test_parameter_count_at_the_paper_defaults():
    """The paper reports 32.99M parameters. The authors' release also counts an unused 512 -> 512 linear layer
    (262,656 parameters); without it and without the deep-supervision heads TransBTS has this many."""
    net = TransBTS(4, 4)  # 128^3 patch, base width 16, d = 512, L = 4, 8 heads
    total = sum(p.numel() for p in net.parameters())
    ds_heads = sum(p.numel() for p in net.decoder.seg_layers[1:].parameters())
    assert total - ds_heads + 262_656 == pytest.approx(32.99e6, abs=0.005e6)


def test_built_by_nnunet_get_network_from_plans():
    arch_kwargs = json.loads(json.dumps({**TINY, "strides": [list(s) for s in TransBTS.default_strides],
                                         "patch_size": list(SIZE)}))  # a plans file holds JSON
    torch.manual_seed(0)
    net = get_network_from_plans("nnunetv2_ext.architectures.transbts.TransBTS", arch_kwargs, [], input_channels=4,
                                 output_channels=3, deep_supervision=True)
    assert isinstance(net, TransBTS) and net.decoder.deep_supervision
    out = net(tiny_input())
    assert [tuple(o.shape) for o in out] == expected_shapes(TransBTS.default_strides)


@pytest.mark.parametrize("strides, planned, rounded, rule", [
    (None, [30, 40, 33], [32, 40, 40], "multiples of [8, 8, 8]"),
    (ANISOTROPIC, [30, 40, 33], [32, 40, 40], "multiples of [4, 8, 8]"),
    (ANISOTROPIC, [10, 41, 16], [12, 48, 16], "multiples of [4, 8, 8]"),
])
def test_valid_patch_size_rounds_up_to_a_patch_the_network_takes(strides, planned, rounded, rule):
    """The rule the planning code applies (planning.backbones rounds the plans' patch with it)."""
    assert TransBTS.valid_patch_size(planned, strides=strides) == rounded
    assert TransBTS.patch_rule(strides=strides) == rule
    net = tiny_net(patch_size=rounded, strides=strides, deep_supervision=False)
    assert net(tiny_input(rounded)).shape == (1, NUM_CLASSES, *rounded)


@pytest.mark.parametrize("kwargs, message", [
    (dict(patch_size=[36, 48, 32]), "patch size must be divisible by 8"),
    (dict(patch_size=[32, 48, 32], strides=ANISOTROPIC[:3] + [[2, 4, 2]]), "1 or 2"),
    (dict(patch_size=[10, 48, 32], strides=ANISOTROPIC), r"divisible by \[4, 8, 8\] per axis"),
    (dict(patch_size=[32, 48]), "3D-only"),
    (dict(strides=[[1, 1], [2, 2], [2, 2], [2, 2]]), "3D-only"),
    (dict(strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]]), "4 resolution levels"),
    (dict(strides=[[2, 2, 2]] * 4), r"strides\[0\] must be \[1, 1, 1\]"),
    (dict(num_heads=5), "embedding_dim must be divisible by num_heads"),
    (dict(features_per_stage=[4, 8, 16]), "features_per_stage needs 4"),
])
def test_bad_arguments_raise_value_error_naming_the_rule(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_net(**kwargs)


def test_input_of_another_size_than_patch_size_raises_value_error():
    net = tiny_net()
    with pytest.raises(ValueError, match="patch_size"):
        net(tiny_input((32, 32, 32)))


def test_importing_the_module_does_not_import_monai():
    code = ("import sys, nnunetv2_ext.architectures.transbts; "
            "sys.exit(1 if any(m == 'monai' or m.startswith('monai.') for m in sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0, "importing transbts imported monai"
