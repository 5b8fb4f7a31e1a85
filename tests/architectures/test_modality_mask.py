"""Tests for the encoder mask of nnunetv2_ext.architectures.multi_encoder (missing modalities): ``present`` zeroes the
dropped encoders' contribution to the fusion and nothing else, keeps every parameter in the graph, and leaves the
network and its checkpoint keys unchanged when unused."""
import pytest
import torch

from nnunetv2_ext.architectures.multi_encoder import MultiEncoderUNet
from tests.architectures.test_multi_encoder import tiny_input, tiny_net

FUSIONS = ["concat", "sum", "mean"]




def capture_fusion_inputs(net: MultiEncoderUNet):
    """Forward pre-hooks on every fusion block: the per-encoder features each one receives, per level."""
    captured = {}

    def hook(level):
        def fn(module, args):
            captured[level] = [f.detach().clone() for f in args[0]]
        return fn

    handles = [f.register_forward_pre_hook(hook(level)) for level, f in enumerate(net.encoder.fusions)]
    return captured, handles


def silence_encoders(net: MultiEncoderUNet, dropped):
    """Forward hooks that make the ``dropped`` encoders output zero features at every level."""
    return [net.encoder.encoders[i].register_forward_hook(lambda m, a, out: [torch.zeros_like(o) for o in out])
            for i in dropped]


def as_list(out):
    return out if isinstance(out, (list, tuple)) else [out]


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("dropped", [[1], [0, 3], [0, 1, 2]])
def test_mask_zeroes_exactly_the_dropped_encoders_fusion_inputs(fusion, dropped):
    net = tiny_net(fusion=fusion).eval()
    x = tiny_input()
    present = torch.ones(4)
    present[dropped] = 0
    with torch.no_grad():
        reference = net.encoder.forward_per_encoder(x)
        captured, handles = capture_fusion_inputs(net)
        net(x, present)
    for h in handles:
        h.remove()
    for level, features in captured.items():
        for i, f in enumerate(features):
            if i in dropped:
                assert torch.count_nonzero(f) == 0, f"dropped encoder {i} reaches fusion level {level}"
            elif fusion != "mean":
                assert torch.equal(f, reference[i][level]), f"present encoder {i} changed at level {level}"


@pytest.mark.parametrize("encoder", ["plain", "residual"])
@pytest.mark.parametrize("dropped", [[2], [0, 1]])
def test_concat_mask_equals_encoders_with_zero_features(encoder, dropped):
    """With concat fusion, masking is a network whose dropped encoders output zero features."""
    net = tiny_net(encoder=encoder, fusion="concat").eval()
    x = tiny_input()
    present = torch.ones(4)
    present[dropped] = 0
    with torch.no_grad():
        masked = as_list(net(x, present))
        handles = silence_encoders(net, dropped)
        silenced = as_list(net(x))
    for h in handles:
        h.remove()
    for a, b in zip(masked, silenced):
        assert torch.equal(a, b)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_absent_modality_content_does_not_matter(fusion):
    net = tiny_net(fusion=fusion).eval()
    x = tiny_input()
    x2 = x.clone()
    x2[:, 2] = torch.randn(x2[:, 2].shape, generator=torch.Generator().manual_seed(9)) * 10
    present = torch.tensor([1.0, 1.0, 0.0, 1.0])
    with torch.no_grad():
        for a, b in zip(as_list(net(x, present)), as_list(net(x2, present))):
            assert torch.equal(a, b)
        assert not torch.equal(as_list(net(x))[0], as_list(net(x2))[0])


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("encoder", ["plain", "residual"])
def test_all_present_is_bit_identical_to_no_mask(fusion, encoder):
    net = tiny_net(fusion=fusion, encoder=encoder).eval()
    x = tiny_input()
    with torch.no_grad():
        reference = as_list(net(x))
        for present in (torch.ones(4), torch.ones(2, 4), torch.ones(4, dtype=torch.bool)):
            for a, b in zip(reference, as_list(net(x, present))):
                assert torch.equal(a, b)


def test_per_sample_masks_act_per_sample():
    net = tiny_net().eval()
    x = tiny_input()
    masks = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    with torch.no_grad():
        batch = as_list(net(x, masks))
        for s in range(2):
            single = as_list(net(x[s:s + 1], masks[s]))
            for a, b in zip(batch, single):
                torch.testing.assert_close(a[s:s + 1], b, rtol=1e-4, atol=1e-5)


def constant_encoders(net: MultiEncoderUNet, values):
    """Encoder i outputs the constant values[i] at every level (known-answer fusion checks)."""
    return [enc.register_forward_hook(lambda m, a, out, v=v: [torch.full_like(o, v) for o in out])
            for enc, v in zip(net.encoder.encoders, values)]


@pytest.mark.parametrize("present, expected", [
    ([1, 1, 1, 1], (1 + 2 + 4 + 8) / 4), ([1, 0, 1, 0], (1 + 4) / 2), ([0, 0, 0, 1], 8.0), ([0, 1, 1, 1], 14 / 3),
    ([0, 0, 0, 0], 0.0),  # nothing present: zero, not NaN (the count is clamped to 1)
])
def test_mean_fusion_averages_over_present_encoders(present, expected):
    net = tiny_net(fusion="mean").eval()
    handles = constant_encoders(net, [1.0, 2.0, 4.0, 8.0])
    with torch.no_grad():
        skips = net.encoder(tiny_input(), torch.tensor(present, dtype=torch.float32))
    for h in handles:
        h.remove()
    for s in skips:
        torch.testing.assert_close(s, torch.full_like(s, expected))


def test_sum_fusion_sums_present_encoders():
    net = tiny_net(fusion="sum").eval()
    handles = constant_encoders(net, [1.0, 2.0, 4.0, 8.0])
    with torch.no_grad():
        skips = net.encoder(tiny_input(), torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]]))
    for h in handles:
        h.remove()
    for s in skips:
        assert torch.all(s[0] == 5.0) and torch.all(s[1] == 10.0)


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("encoder", ["plain", "residual"])
def test_every_parameter_stays_in_the_graph(fusion, encoder):
    """DDP needs a gradient for every parameter: dropped encoders get zero ones, the rest real ones."""
    net = tiny_net(fusion=fusion, encoder=encoder)
    present = torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 1.0]])  # encoder 1 dropped in both samples
    out = as_list(net(tiny_input(), present))
    g = torch.Generator().manual_seed(2)
    sum((o * torch.randn(o.shape, generator=g)).sum() for o in out).backward()
    assert not [n for n, p in net.named_parameters() if p.grad is None]
    for n, p in net.named_parameters():
        if n.startswith("encoder.encoders.1."):
            assert torch.count_nonzero(p.grad) == 0, n
    live = [n for n, p in net.named_parameters() if not n.startswith("encoder.encoders.1.")
            and torch.count_nonzero(p.grad) == 0]
    assert not live, f"parameters of present parts without gradient: {live}"


def test_state_dict_keys_unchanged_and_inference_present_used():
    net = tiny_net().eval()
    keys = list(net.state_dict())
    x = tiny_input()
    present = torch.tensor([1.0, 0.0, 0.0, 1.0])
    with torch.no_grad():
        full, masked = as_list(net(x))[0], as_list(net(x, present))[0]
        net.encoder.inference_present = present
        assert list(net.state_dict()) == keys
        assert "inference_present" not in dict(net.named_buffers())
        net.load_state_dict(tiny_net().state_dict(), strict=True)  # what nnU-Net's predictor does per fold
        assert net.encoder.inference_present is present
        assert torch.equal(as_list(net(x))[0], masked)
        assert torch.equal(as_list(net(x, torch.ones(4)))[0], full)  # an explicit mask wins
        net.encoder.inference_present = None
        assert torch.equal(as_list(net(x))[0], full)


def test_presence_context_sets_and_restores_the_mask():
    net = tiny_net()
    outer, inner = torch.tensor([1.0, 1.0, 0.0, 1.0]), torch.tensor([0.0, 1.0, 1.0, 1.0])
    net.encoder.inference_present = outer
    with pytest.raises(RuntimeError):
        with net.encoder.presence(inner):
            assert net.encoder.inference_present is inner
            raise RuntimeError("a failing step")
    assert net.encoder.inference_present is outer


@pytest.mark.parametrize("shape", [(3,), (5,), (2, 3), (3, 4), (2, 4, 1)])
def test_wrong_mask_shape_is_refused(shape):
    net = tiny_net()
    with pytest.raises(ValueError, match=r"present must have shape \(4,\) or \(batch, 4\)"):
        net(tiny_input(), torch.ones(shape))


@pytest.mark.parametrize("groups, present, expected", [
    (None, [[1, 0, 1, 0]], [[1, 0, 1, 0]]),
    ([[0, 1], [2, 3]], [[0, 1], [1, 0]], [[0, 0, 1, 1], [1, 1, 0, 0]]),
    ([[3], [0, 2], [1]], [[1, 0, 1]], [[0, 1, 0, 1]]),
])
def test_channel_mask_follows_the_groups(groups, present, expected):
    net = tiny_net(encoder_groups=groups)
    got = net.encoder.channel_mask(torch.tensor(present, dtype=torch.float32))
    assert got.tolist() == expected
