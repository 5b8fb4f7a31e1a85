"""Tests for nnunetv2_ext.architectures.grouped_encoder: the grouped-convolution fast path of the multi-encoder is the
same function with the same parameters as the separate encoders (tiny networks: features [4, 8, 16], 16^3 / 32^2,
float64 so equality is tight)."""
import io
import json

import pytest
import torch
import torch.nn.functional as F
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from torch import nn

from nnunetv2_ext.architectures.grouped_encoder import grouped_encoder_problem
from nnunetv2_ext.architectures.multi_encoder import MultiEncoderUNet

CASES = {
    2: (nn.Conv2d, nn.InstanceNorm2d, [[1, 1], [2, 2], [2, 2]], (32, 32)),
    3: (nn.Conv3d, nn.InstanceNorm3d, [[1, 1, 1], [2, 2, 2], [2, 2, 2]], (16, 16, 16)),
}
ATOL = 1e-10


def kwargs(dim=3, **overrides):
    conv_op, norm_op, strides, _ = CASES[dim]
    out = dict(input_channels=4, n_stages=3, features_per_stage=[4, 8, 16], conv_op=conv_op, kernel_sizes=3,
               strides=strides, n_conv_per_stage=2, num_classes=3, n_conv_per_stage_decoder=1, conv_bias=True,
               norm_op=norm_op, norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU,
               nonlin_kwargs={"inplace": True}, deep_supervision=True)
    out.update(overrides)
    return out


def pair(dim=3, **overrides):
    """A separate-path network and a grouped-path network holding the same weights (loaded through the state_dict,
    as a checkpoint would be), both float64."""
    torch.manual_seed(0)
    separate = MultiEncoderUNet(**kwargs(dim, **overrides))
    separate.apply(separate.initialize)
    # non-trivial norm affine parameters and conv biases, so a wrongly routed one shows
    with torch.no_grad():
        for name, p in separate.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    grouped = MultiEncoderUNet(**kwargs(dim, **overrides), encoder_impl="grouped")
    grouped.load_state_dict(separate.state_dict())
    return separate.double(), grouped.double()


def tiny_input(dim=3, seed=1):
    return torch.randn(2, 4, *CASES[dim][3], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def outputs_and_grads(net, x, present=None):
    net.zero_grad(set_to_none=True)
    out = net(x, present)
    out = out if isinstance(out, (list, tuple)) else [out]
    # a loss weighting every output voxel differently, so every gradient entry is exercised
    g = torch.Generator().manual_seed(2)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in out)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in net.named_parameters()}
    return [o.detach() for o in out], grads


def assert_same_function(a, b, x, present=None):
    out_a, grads_a = outputs_and_grads(a, x, present)
    out_b, grads_b = outputs_and_grads(b, x, present)
    assert len(out_a) == len(out_b)
    for oa, ob in zip(out_a, out_b):
        assert oa.shape == ob.shape
        torch.testing.assert_close(oa, ob, atol=ATOL, rtol=0)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=ATOL, rtol=0, msg=name)


@pytest.mark.parametrize("dim, fusion, width", [(3, "concat", 1.0), (3, "concat", 0.5), (3, "sum", 1.0),
                                                (3, "mean", 1.0), (2, "concat", 1.0), (2, "concat", 0.5)])
def test_grouped_gives_same_outputs_and_gradients(dim, fusion, width):
    separate, grouped = pair(dim, fusion=fusion, encoder_width=width)
    assert (separate.encoder.encoder_impl, grouped.encoder.encoder_impl) == ("separate", "grouped")
    assert_same_function(separate, grouped, tiny_input(dim))


def test_gradients_reach_the_per_encoder_parameters():
    _, grouped = pair()
    _, grads = outputs_and_grads(grouped, tiny_input())
    for i in range(4):
        first_conv = grads[f"encoder.encoders.{i}.stages.0.0.convs.0.conv.weight"]
        assert first_conv.abs().sum() > 0, f"encoder {i} got no gradient"


@pytest.mark.parametrize("groups", [[[0, 1], [2, 3]], [[0, 2], [1, 3]], [[3], [1], [0], [2]]])
def test_multi_channel_and_reordered_groups(groups):
    separate, grouped = pair(encoder_groups=groups)
    assert_same_function(separate, grouped, tiny_input())


@pytest.mark.parametrize("overrides", [dict(nonlin_first=True),
                                       dict(dropout_op=nn.Dropout3d, dropout_op_kwargs={"p": 0.5}),
                                       dict(norm_op_kwargs={"eps": 1e-5, "affine": False}, conv_bias=False)])
def test_other_block_settings_match_in_eval(overrides):
    separate, grouped = pair(**overrides)
    separate.eval(), grouped.eval()  # dropout draws different random masks per path in training
    assert_same_function(separate, grouped, tiny_input())


@pytest.mark.parametrize("present", [torch.tensor([1.0, 0.0, 1.0, 1.0]),
                                     torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 1.0]])])
@pytest.mark.parametrize("fusion", ["concat", "mean"])
def test_present_mask_matches(present, fusion):
    separate, grouped = pair(fusion=fusion)
    assert_same_function(separate, grouped, tiny_input(), present.double())
    # a dropped encoder (absent for every sample) still gets a gradient, and it is zero on both paths
    if present.ndim == 1:
        _, grads = outputs_and_grads(grouped, tiny_input(), present.double())
        assert torch.count_nonzero(grads["encoder.encoders.1.stages.0.0.convs.0.conv.weight"]) == 0


def test_per_encoder_skips_match():
    separate, grouped = pair()
    x = tiny_input()
    with torch.no_grad():
        ref, fast = separate.encoder.forward_per_encoder(x), grouped.encoder.forward_per_encoder(x)
    assert len(fast) == 4 and all(len(skips) == 3 for skips in fast)
    for skips_a, skips_b in zip(ref, fast):
        for a, b in zip(skips_a, skips_b):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_state_dict_and_parameters_unchanged():
    separate, grouped = pair()
    sd_a, sd_b = separate.state_dict(), grouped.state_dict()
    assert list(sd_a) == list(sd_b)
    assert all(sd_a[k].shape == sd_b[k].shape for k in sd_a)
    # the grouped path registers nothing: the optimiser sees the same tensors
    assert [n for n, _ in separate.named_parameters()] == [n for n, _ in grouped.named_parameters()]
    assert [n for n, _ in separate.named_buffers()] == [n for n, _ in grouped.named_buffers()]


@pytest.mark.parametrize("source", ["separate", "grouped"])
def test_checkpoint_round_trip_between_paths(source):
    separate, grouped = pair()
    src, dst = (separate, grouped) if source == "separate" else (grouped, separate)
    with torch.no_grad():
        for p in src.parameters():  # weights only the source has
            p.add_(0.01)
    buffer = io.BytesIO()
    torch.save(src.state_dict(), buffer)
    buffer.seek(0)
    dst.load_state_dict(torch.load(buffer, weights_only=True))
    x = tiny_input()
    with torch.no_grad():
        for a, b in zip(src(x), dst(x)):
            torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_switch_at_runtime_and_back():
    separate, _ = pair()
    x = tiny_input()
    with torch.no_grad():
        ref = separate(x)[0]
        separate.encoder.set_encoder_impl("grouped")
        fast = separate(x)[0]
        separate.encoder.set_encoder_impl("separate")
        back = separate(x)[0]
    torch.testing.assert_close(ref, fast, atol=ATOL, rtol=0)
    assert torch.equal(ref, back)


class CountingConv:
    """Stands in for F.conv3d and records the ``groups`` of each call."""

    def __init__(self, conv):
        self.conv, self.groups = conv, []

    def __call__(self, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        self.groups.append(groups)
        return self.conv(x, weight, bias, stride, padding, dilation, groups)


def test_grouped_path_issues_one_conv_per_layer(monkeypatch):
    separate, grouped = pair()
    convs_per_encoder = sum(isinstance(m, nn.Conv3d) for m in separate.encoder.encoders[0].modules())
    assert convs_per_encoder == 6
    x = tiny_input()
    counted = {}
    for name, net in (("separate", separate), ("grouped", grouped)):
        counter = CountingConv(F.conv3d)
        monkeypatch.setattr(F, "conv3d", counter)
        with torch.no_grad():
            net.encoder.forward_per_encoder(x)
            counted[name] = list(counter.groups)
            net(x)
            counted[name + " network"] = len(counter.groups) - len(counted[name])
        monkeypatch.setattr(F, "conv3d", counter.conv)
    assert counted["separate"] == [1] * (4 * convs_per_encoder)
    assert counted["grouped"] == [4] * convs_per_encoder
    # fusion and decoder are untouched: the whole network saves exactly (n - 1) encoders' convolutions
    assert counted["separate network"] - counted["grouped network"] == 3 * convs_per_encoder


@pytest.mark.parametrize("overrides, message", [
    (dict(encoder="residual"), "only PlainConvEncoder"),
    (dict(encoder_groups=[[0, 1], [2], [3]]), "different numbers of channels"),
    (dict(norm_op=nn.BatchNorm3d, norm_op_kwargs={"eps": 1e-5}), "BatchNorm3d is not a layer"),
    (dict(norm_op_kwargs={"eps": 1e-5, "affine": True, "track_running_stats": True}), "running statistics"),
    (dict(nonlin=nn.PReLU, nonlin_kwargs={}), "PReLU is not a layer"),
])
def test_unsupported_configurations_raise(overrides, message):
    with pytest.raises(ValueError, match=message):
        MultiEncoderUNet(**kwargs(**overrides), encoder_impl="grouped")
    net = MultiEncoderUNet(**kwargs(**overrides))  # the separate default still builds
    with pytest.raises(ValueError, match="encoder_impl='separate'"):
        net.encoder.set_encoder_impl("grouped")
    assert net.encoder.encoder_impl == "separate"


def test_encoders_that_differ_are_refused():
    net = MultiEncoderUNet(**kwargs())
    assert grouped_encoder_problem(net.encoder.encoders, net.encoder.groups) is None
    block = net.encoder.encoders[2].stages[0][0].convs[0]
    block.nonlin = block.all_modules[-1] = nn.LeakyReLU(0.2)
    assert "encoder 2 differs" in grouped_encoder_problem(net.encoder.encoders, net.encoder.groups)


def test_unknown_impl_name_raises():
    with pytest.raises(ValueError, match="encoder_impl must be one of"):
        MultiEncoderUNet(**kwargs(), encoder_impl="fast")


def test_plans_can_name_the_grouped_path():
    arch_kwargs = json.loads(json.dumps({
        "n_stages": 3, "features_per_stage": [4, 8, 16], "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]], "n_conv_per_stage": [2, 2, 2],
        "n_conv_per_stage_decoder": [1, 1], "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}, "encoder_impl": "grouped"}))
    net = get_network_from_plans("nnunetv2_ext.architectures.multi_encoder.MultiEncoderUNet", arch_kwargs,
                                 ["conv_op", "norm_op", "dropout_op", "nonlin"], 4, 3, deep_supervision=False)
    assert net.encoder.encoder_impl == "grouped"
    with torch.no_grad():
        assert net(torch.randn(1, 4, 16, 16, 16)).shape == (1, 3, 16, 16, 16)
