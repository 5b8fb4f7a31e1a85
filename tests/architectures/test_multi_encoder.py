"""Tests for nnunetv2_ext.architectures.multi_encoder (tiny networks: features [4, 8, 16], inputs 16^3 / 32^2)."""
import copy
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from dynamic_network_architectures.building_blocks.residual import BasicBlockD
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from torch import nn

from nnunetv2_ext.architectures.multi_encoder import MultiEncoderUNet, validate_encoder_groups
from nnunetv2_ext.planning.multi_encoder_plans import MULTI_ENCODER_CLASS, write_multi_encoder_plans
from nnunetv2_ext.training.multi_encoder import build_multi_encoder
from tests.conftest import write_tiny_preprocessed

FIXTURES = Path(__file__).resolve().parents[1] / "planning" / "fixtures"
NAMES = ["T1", "T1Gd", "T2", "FLAIR"]
NUM_CLASSES = 3

# dim -> (conv_op, norm_op, strides, input spatial size); 3D anisotropic in the last axis to check the strides
CASES = {
    2: (nn.Conv2d, nn.InstanceNorm2d, [[1, 1], [2, 2], [2, 2]], (32, 32)),
    3: (nn.Conv3d, nn.InstanceNorm3d, [[1, 1, 1], [2, 2, 1], [2, 2, 2]], (16, 16, 8)),
}




def tiny_kwargs(dim=3, **overrides):
    conv_op, norm_op, strides, _ = CASES[dim]
    kwargs = dict(input_channels=4, n_stages=3, features_per_stage=[4, 8, 16], conv_op=conv_op, kernel_sizes=3,
                  strides=strides, n_conv_per_stage=2, num_classes=NUM_CLASSES, n_conv_per_stage_decoder=1,
                  conv_bias=False, norm_op=norm_op, norm_op_kwargs={"eps": 1e-5, "affine": True},
                  nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=True)
    kwargs.update(overrides)
    return kwargs


def tiny_net(dim=3, **overrides):
    torch.manual_seed(0)
    return MultiEncoderUNet(**tiny_kwargs(dim, **overrides))


def tiny_input(dim=3, channels=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, channels, *CASES[dim][3], generator=g)


def cumulative_strides(strides):
    out, acc = [], np.ones(len(strides[0]), dtype=int)
    for s in strides:
        acc = acc * np.array(s)
        out.append(acc.copy())
    return out


def load_fixture(name):
    return json.loads((FIXTURES / name).read_text())


# ---------------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("deep_supervision", [True, False])
@pytest.mark.parametrize("fusion", ["concat", "sum", "mean"])
@pytest.mark.parametrize("encoder", ["plain", "residual"])
@pytest.mark.parametrize("dim", [2, 3])
def test_output_shapes(dim, encoder, fusion, deep_supervision):
    net = tiny_net(dim, encoder=encoder, fusion=fusion, deep_supervision=deep_supervision)
    x = tiny_input(dim)
    with torch.no_grad():
        out = net(x)
    spatial = np.array(x.shape[2:])
    if deep_supervision:
        strides = CASES[dim][2]
        assert isinstance(out, (list, tuple)) and len(out) == len(strides) - 1
        for o, cum in zip(out, cumulative_strides(strides)):
            assert tuple(o.shape) == (2, NUM_CLASSES, *(spatial // cum))
    else:
        assert isinstance(out, torch.Tensor)
        assert tuple(out.shape) == (2, NUM_CLASSES, *spatial)


@pytest.mark.parametrize("encoder", ["plain", "residual"])
@pytest.mark.parametrize("fusion", ["concat", "sum", "mean"])
def test_encoder_interface_and_skips(encoder, fusion):
    """The fused encoder returns one skip per level with the decoder widths, like a return_skips encoder."""
    net = tiny_net(encoder=encoder, fusion=fusion)
    assert len(net.encoder.encoders) == 4
    assert net.encoder.output_channels == [4, 8, 16]
    assert net.encoder.conv_op is nn.Conv3d and net.encoder.norm_op is nn.InstanceNorm3d
    assert [list(s) for s in net.encoder.strides] == CASES[3][2]
    x = tiny_input()
    with torch.no_grad():
        skips = net.encoder(x)
    assert [tuple(s.shape) for s in skips] == [(2, 4, 16, 16, 8), (2, 8, 8, 8, 8), (2, 16, 4, 4, 4)]


# ------------------------------------------------------------------------------------------------ gradients


@pytest.mark.parametrize("fusion", ["concat", "sum", "mean"])
@pytest.mark.parametrize("encoder", ["plain", "residual"])
def test_every_parameter_gets_a_gradient(encoder, fusion):
    net = tiny_net(encoder=encoder, fusion=fusion, deep_supervision=True)
    out = net(tiny_input())
    g = torch.Generator().manual_seed(2)
    # random weights: a plain sum would give zero gradients through instance norm
    loss = sum((o * torch.randn(o.shape, generator=g)).sum() for o in out)
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, f"parameters without gradient: {missing}"


# ------------------------------------------------------------------------------------- modality independence


@pytest.mark.parametrize("encoder", ["plain", "residual"])
@pytest.mark.parametrize("k", range(4))
def test_modality_k_reaches_only_encoder_k(encoder, k):
    net = tiny_net(encoder=encoder).eval()
    x = tiny_input()
    x2 = x.clone()
    x2[:, k] += torch.randn(x2[:, k].shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        before, after = net.encoder.forward_per_encoder(x), net.encoder.forward_per_encoder(x2)
    for e in range(4):
        for level, (a, b) in enumerate(zip(before[e], after[e])):
            if e == k:
                assert not torch.equal(a, b), f"encoder {e} level {level} ignores its modality {k}"
            else:
                assert torch.equal(a, b), f"encoder {e} level {level} changed when only modality {k} changed"


@pytest.mark.parametrize("groups, channel, expected", [
    ([[0, 1], [2, 3]], 0, 0), ([[0, 1], [2, 3]], 1, 0), ([[0, 1], [2, 3]], 2, 1), ([[0, 1], [2, 3]], 3, 1),
    ([[0, 2], [1, 3]], 0, 0), ([[0, 2], [1, 3]], 2, 0), ([[0, 2], [1, 3]], 1, 1), ([[0, 2], [1, 3]], 3, 1),
    ([[3], [0, 2], [1]], 3, 0), ([[3], [0, 2], [1]], 2, 1), ([[3], [0, 2], [1]], 1, 2),
])
def test_groups_route_channels_to_their_encoder(groups, channel, expected):
    net = tiny_net(encoder_groups=groups).eval()
    x = tiny_input()
    x2 = x.clone()
    x2[:, channel] += 1.0 + torch.rand(x2[:, channel].shape, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        before, after = net.encoder.forward_per_encoder(x), net.encoder.forward_per_encoder(x2)
    assert len(before) == len(groups)
    changed = [e for e in range(len(groups)) if any(not torch.equal(a, b) for a, b in zip(before[e], after[e]))]
    assert changed == [expected]


@pytest.mark.parametrize("groups", [[[0, 1], [2, 3]], [[0, 2], [1, 3]], [[2, 0], [3, 1]], [[3], [0, 1, 2]]])
def test_select_gives_the_group_channels_in_order(groups):
    net = tiny_net(encoder_groups=groups)
    x = tiny_input()
    for i, g in enumerate(groups):
        assert torch.equal(net.encoder.select(x, i), x[:, g])
        assert net.encoder.encoders[i].stages[0][0].convs[0].conv.in_channels == len(g)


def test_index_buffers_are_not_in_the_state_dict():
    net = tiny_net(encoder_groups=[[0, 2], [1, 3]])
    assert not [k for k in net.state_dict() if "_index" in k]


# ------------------------------------------------------------------------------------ seg layers / checkpoints


@pytest.mark.parametrize("encoder", ["plain", "residual"])
def test_seg_layers_and_state_dict_keys_independent_of_deep_supervision(encoder):
    with_ds, without_ds = tiny_net(encoder=encoder, deep_supervision=True), tiny_net(encoder=encoder,
                                                                                      deep_supervision=False)
    for net in (with_ds, without_ds):
        assert len(net.decoder.seg_layers) == 2
    shapes_ds = {k: tuple(v.shape) for k, v in with_ds.state_dict().items()}
    shapes_no = {k: tuple(v.shape) for k, v in without_ds.state_dict().items()}
    assert list(shapes_ds) == list(shapes_no)
    assert shapes_ds == shapes_no
    without_ds.load_state_dict(with_ds.state_dict(), strict=True)


# -------------------------------------------------------------------------------------------- encoder width


@pytest.mark.parametrize("encoder", ["plain", "residual"])
def test_half_width_encoders_keep_decoder_width(encoder):
    net = tiny_net(encoder=encoder, encoder_width=0.5)
    for enc in net.encoder.encoders:
        assert list(enc.output_channels) == [2, 4, 8]
    assert net.encoder.output_channels == [4, 8, 16]
    assert [f.in_channels for f in net.encoder.fusions] == [[2] * 4, [4] * 4, [8] * 4]
    with torch.no_grad():
        skips = net.encoder(tiny_input())
        out = net(tiny_input())
    assert [s.shape[1] for s in skips] == [4, 8, 16]
    assert tuple(out[0].shape) == (2, NUM_CLASSES, 16, 16, 8)
    full = tiny_net(encoder=encoder)
    n_params = lambda m: sum(p.numel() for p in m.encoder.encoders.parameters())  # noqa: E731
    assert n_params(net) < n_params(full) / 2


@pytest.mark.parametrize("fusion", ["sum", "mean"])
def test_half_width_with_elementwise_fusion_raises(fusion):
    with pytest.raises(ValueError, match="fusion='concat'"):
        tiny_net(fusion=fusion, encoder_width=0.5)


# ------------------------------------------------------------------------------------------- ill arguments


@pytest.mark.parametrize("overrides, message", [
    (dict(input_channels=1, encoder_groups=None), "at least 2 modalities"),
    (dict(encoder_groups=[[0, 1], [2]], modality_names=NAMES), "['3 (FLAIR)'] are in no group"),
    (dict(encoder_groups=[[0, 1], [2]]), "['3'] are in no group"),
    (dict(encoder_groups=[[0, 1], [1, 2, 3]], modality_names=NAMES), "['1 (T1Gd)'] appear in more than one group"),
    (dict(encoder_groups=[[0, 1], [2, 3, 4]]), "channels [4] do not exist"),
    (dict(encoder_groups=[[0, 1], [2, 3, -1]]), "channels [-1] do not exist"),
    (dict(encoder_groups=[[0, 1, 2, 3]]), "at least 2 encoders"),
    (dict(encoder_groups=[[0, 1, 2, 3], []]), "empty group"),
    (dict(fusion="max"), "fusion must be one of"),
    (dict(encoder="transformer"), "encoder must be one of"),
    (dict(modality_names=["T1", "T2", "FLAIR"]), "modality_names has 3 entries"),
    (dict(encoder_width=0.0), "encoder_width must be > 0"),
    (dict(n_conv_per_stage=None), "needs n_conv_per_stage"),
    (dict(num_classes=None), "needs num_classes"),
    (dict(features_per_stage=[4, 8]), "features_per_stage and n_conv_per_stage need 3 entries"),
])
def test_ill_arguments_raise(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        tiny_net(**overrides)


def test_validate_encoder_groups_default_is_one_encoder_per_channel():
    assert validate_encoder_groups(None, 3) == [[0], [1], [2]]
    assert validate_encoder_groups(((1, 0), (2,)), 3) == [[1, 0], [2]]


def test_n_blocks_per_stage_is_accepted_for_residual():
    net = tiny_net(encoder="residual", n_conv_per_stage=None, n_blocks_per_stage=[1, 2, 2])
    assert [len(stage.blocks) for stage in net.encoder.encoders[0].stages] == [1, 2, 2]


# ------------------------------------------------------------------------------------ memory estimate, init


@pytest.mark.parametrize("fusion", ["concat", "sum"])
def test_compute_conv_feature_map_size_exceeds_single_encoder_unet(fusion):
    kwargs = tiny_kwargs()
    plain = PlainConvUNet(**kwargs)
    net = MultiEncoderUNet(**kwargs, fusion=fusion)
    size = (16, 16, 8)
    estimate = net.compute_conv_feature_map_size(size)
    assert isinstance(estimate, (int, np.integer)) and estimate > 0
    assert estimate > plain.compute_conv_feature_map_size(size)
    # four encoders as large as the single one, plus fusion, plus the same decoder
    assert net.encoder.compute_conv_feature_map_size(size) > 4 * plain.encoder.compute_conv_feature_map_size(size)
    assert estimate - net.encoder.compute_conv_feature_map_size(size) == \
        plain.decoder.compute_conv_feature_map_size(size)
    with pytest.raises(ValueError, match="spatial size"):
        net.compute_conv_feature_map_size((2, 4, 16, 16, 8))


def _plans_arch_kwargs(encoder="plain"):
    kwargs = tiny_kwargs(encoder=encoder, features_per_stage=[8, 16, 32], conv_bias=True)
    for key in ("input_channels", "num_classes", "deep_supervision"):
        kwargs.pop(key)
    kwargs.update(conv_op="torch.nn.modules.conv.Conv3d", norm_op="torch.nn.modules.instancenorm.InstanceNorm3d",
                  nonlin="torch.nn.LeakyReLU", dropout_op=None, modality_names=NAMES)
    return kwargs


@pytest.mark.parametrize("encoder", ["plain", "residual"])
def test_get_network_from_plans_applies_he_initialisation(encoder):
    torch.manual_seed(0)
    net = get_network_from_plans(MULTI_ENCODER_CLASS, _plans_arch_kwargs(encoder),
                                 ["conv_op", "norm_op", "dropout_op", "nonlin"], 4, NUM_CLASSES, allow_init=True,
                                 deep_supervision=True)
    assert isinstance(net, MultiEncoderUNet)
    normalised, biases = [], []
    for m in net.modules():
        if isinstance(m, nn.Conv3d):
            fan_in = m.weight[0].numel()
            he_std = math.sqrt(2 / ((1 + 0.01 ** 2) * fan_in))
            normalised.append(m.weight.detach().flatten() / he_std)
            if m.bias is not None:
                biases.append(m.bias.detach())
    ratio = torch.cat(normalised).std().item()
    # PyTorch's default init gives a ratio of about 1/sqrt(6) = 0.41
    assert abs(ratio - 1) < 0.2, f"conv weight std / He std = {ratio:.3f}"
    assert biases and all(torch.equal(b, torch.zeros_like(b)) for b in biases)
    blocks = [m for m in net.modules() if isinstance(m, BasicBlockD)]
    assert bool(blocks) == (encoder == "residual")
    for b in blocks:  # ResEnc's zeroed last norm before the residual addition
        assert torch.count_nonzero(b.conv2.norm.weight) == 0


# --------------------------------------------------------------------------------------- plans round trip


@pytest.fixture()
def preprocessed(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    return write_tiny_preprocessed(tmp_path / "Dataset992_Tiny")


def _shapes(net):
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


@pytest.mark.parametrize("configuration", ["3d_fullres", "2d"])
def test_network_from_written_plans_matches_build_multi_encoder(preprocessed, configuration):
    path = write_multi_encoder_plans(992)
    assert Path(path) == preprocessed / "nnUNetPlans_MultiEncoder.json"
    cm = PlansManager(path).get_configuration(configuration)
    assert cm.network_arch_class_name == MULTI_ENCODER_CLASS
    from_plans = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                        cm.network_arch_init_kwargs_req_import, 4, NUM_CLASSES, allow_init=True,
                                        deep_supervision=True)
    assert isinstance(from_plans, MultiEncoderUNet)
    assert from_plans.modality_names == NAMES
    built = build_multi_encoder(cm, 4, NUM_CLASSES, True)
    # derived on the fly from nnU-Net's own PlainConvUNet configuration
    derived = build_multi_encoder(PlansManager(str(preprocessed / "nnUNetPlans.json")).get_configuration(
        configuration), 4, NUM_CLASSES, True)
    assert list(_shapes(from_plans)) == list(_shapes(built)) == list(_shapes(derived))
    assert _shapes(from_plans) == _shapes(built) == _shapes(derived)


@pytest.mark.parametrize("configuration, dim", [("3d_fullres", 3), ("2d", 2)])
def test_build_multi_encoder_from_plain_plans(configuration, dim):
    plans = load_fixture("nnUNetPlans_tiny.json")
    cm = PlansManager(copy.deepcopy(plans)).get_configuration(configuration)
    source = plans["configurations"][configuration]["architecture"]["arch_kwargs"]
    assert plans["configurations"][configuration]["architecture"]["network_class_name"].endswith("PlainConvUNet")
    net = build_multi_encoder(cm, 4, NUM_CLASSES, enable_deep_supervision=False)
    assert isinstance(net, MultiEncoderUNet)
    assert len(net.encoder.encoders) == 4 and net.encoder_groups == [[0], [1], [2], [3]]
    assert net.encoder_type == "plain" and net.fusion == "concat"
    assert net.encoder.output_channels == source["features_per_stage"]
    for enc in net.encoder.encoders:
        assert list(enc.output_channels) == source["features_per_stage"]
        assert len(enc.stages) == source["n_stages"]
    assert [list(s) for s in net.encoder.strides] == source["strides"]
    assert len(net.decoder.stages) == source["n_stages"] - 1 and not net.decoder.deep_supervision
    x = torch.randn(1, 4, *([16] * dim))
    with torch.no_grad():
        assert tuple(net(x).shape) == (1, NUM_CLASSES, *([16] * dim))
    # the plans dict is left as it was
    assert plans == load_fixture("nnUNetPlans_tiny.json")


# ------------------------------------------------------------------------------------------------ describe


def test_describe_names_modalities():
    net = tiny_net(encoder_groups=[[0, 1], [2, 3]], modality_names=NAMES)
    text = net.describe()
    assert "2 plain encoders" in text
    assert "[T1+T1Gd, T2+FLAIR]" in text
    assert "concat fusion to [4, 8, 16]" in text
    assert f"{sum(p.numel() for p in net.parameters()) / 1e6:.2f}M" in text


def test_describe_without_names_uses_channel_indices():
    text = tiny_net(encoder="residual", fusion="sum").describe()
    assert "4 residual encoders [0, 1, 2, 3]" in text and "sum fusion" in text
