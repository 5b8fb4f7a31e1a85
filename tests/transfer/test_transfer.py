"""transfer_weights: encoders and input channels mapped by modality, values checked tensor by tensor."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from torch import nn

from nnunetv2_ext.architectures.multi_encoder import MultiEncoderUNet
from nnunetv2_ext.transfer import SourceWeights, TransferReport, read_checkpoint, transfer_weights

NAMES4 = ["T1", "T1Gd", "T2", "FLAIR"]
KW = dict(n_stages=3, features_per_stage=[4, 8, 16], conv_op=nn.Conv3d, kernel_sizes=3, strides=[1, 2, 2],
          num_classes=3, n_conv_per_stage_decoder=1, conv_bias=True, norm_op=nn.InstanceNorm3d,
          norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True})
FIRST = "stages.0.0.convs.0.conv.weight"
PLAIN_CLASS = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
MULTI_CLASS = "nnunetv2_ext.architectures.multi_encoder.MultiEncoderUNet"


def pretrained(net: nn.Module, seed: int) -> nn.Module:
    """Random values everywhere (norms too), so a copied tensor never equals a fresh one by chance."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return net


def plain(n_in: int, seed: int = 0, **kw) -> PlainConvUNet:
    torch.manual_seed(seed)
    return PlainConvUNet(n_in, n_conv_per_stage=1, **{**KW, **kw})


def multi(names: list[str], seed: int = 1, **kw) -> MultiEncoderUNet:
    torch.manual_seed(seed)
    net = MultiEncoderUNet(len(names), n_conv_per_stage=1, modality_names=names, **{**KW, **kw})
    net.apply(net.initialize)  # as nnU-Net's get_network_from_plans does
    return net


def save_nnunet(path, net: nn.Module, names: list[str], network_class: str) -> None:
    arch_kwargs = {"encoder_groups": getattr(net, "encoder_groups", None), "modality_names": names} \
        if network_class == MULTI_CLASS else {}
    torch.save({
        "network_weights": net.state_dict(),
        "init_args": {"plans": {"configurations": {"3d_fullres": {"architecture": {
            "network_class_name": network_class, "arch_kwargs": arch_kwargs}}}},
            "configuration": "3d_fullres", "fold": 0, "device": torch.device("cpu"),
            "dataset_json": {"channel_names": {str(i): n for i, n in enumerate(names)}}},
        "trainer_name": "nnUNetTrainer", "current_epoch": 1, "optimizer_state": {},
        "logging": {"mean_fg_dice": [np.float32(0.5)]},
    }, path)


def canonical(state: dict) -> list[str]:
    return [k for k in state if not k.startswith("decoder.encoder.") and ".all_modules." not in k]


def clone_state(net: nn.Module) -> dict:
    return {k: v.clone() for k, v in net.state_dict().items()}


def actions(report: TransferReport) -> dict:
    return {e.target_key: e for e in report.entries if e.target_key is not None}


@pytest.fixture(scope="module")
def multi_source(tmp_path_factory):
    """A 2-modality (T1, FLAIR) MultiEncoderUNet checkpoint."""
    net = pretrained(multi(["T1", "FLAIR"]), seed=11)
    path = tmp_path_factory.mktemp("multi") / "checkpoint_final.pth"
    save_nnunet(path, net, ["T1", "FLAIR"], MULTI_CLASS)
    return read_checkpoint(path), clone_state(net)


# ------------------------------------------------------------------------------------------------ single -> multi

@pytest.mark.parametrize("mode", ["kaiming", "mean"])
def test_plain_two_modalities_into_four_encoders(plain_source, mode):
    src, s = plain_source
    target = multi(NAMES4)
    before = clone_state(target)
    state, report = transfer_weights(src, target, new_modality_init=mode)
    target.load_state_dict(state)  # strict: every key present, shapes right
    t = target.state_dict()

    first_src = s["encoder." + FIRST]  # (4, 2, 3, 3, 3): channel 0 = T1, 1 = FLAIR
    for i in range(4):
        # every encoder starts from the pretrained encoder (all but the input projection)
        prefix = f"encoder.encoders.{i}."
        for k in t:
            rest = k[len(prefix):]
            if k.startswith(prefix) and rest not in (FIRST, "stages.0.0.convs.0.all_modules.0.weight"):
                assert torch.equal(t[k], s["encoder." + rest]), k
    assert torch.equal(t[f"encoder.encoders.0.{FIRST}"][:, 0], first_src[:, 0])  # T1
    assert torch.equal(t[f"encoder.encoders.3.{FIRST}"][:, 0], first_src[:, 1])  # FLAIR
    for i in (1, 2):  # T1Gd, T2: not pretrained
        expected = before[f"encoder.encoders.{i}.{FIRST}"] if mode == "kaiming" else \
            first_src.mean(1, keepdim=True)
        assert torch.equal(t[f"encoder.encoders.{i}.{FIRST}"], expected)
        # the alias key carries the same value
        assert torch.equal(t[f"encoder.encoders.{i}.stages.0.0.convs.0.all_modules.0.weight"], expected)
    for k in t:
        if k.startswith(("decoder.stages.", "decoder.transpconvs.")):
            assert torch.equal(t[k], s[k]), k
        if ".seg_layers." in k or k.startswith("encoder.fusions."):
            assert torch.equal(t[k], before[k]), k  # fresh

    keys = canonical(t)
    seg = [k for k in keys if ".seg_layers." in k]
    fusion = [k for k in keys if k.startswith("encoder.fusions.")]
    n_new_first = 2 if mode == "kaiming" else 0
    assert report.counts() == {"loaded": len(keys) - len(seg) - len(fusion) - 4, "adapted": 4 - n_new_first,
                               "new": len(seg) + len(fusion) + n_new_first, "ignored": 0}
    by_key = actions(report)
    assert len(by_key) == len(keys)  # one entry per canonical key: aliases not repeated
    assert by_key[f"encoder.encoders.0.{FIRST}"].action == "adapted"
    note = by_key[f"encoder.encoders.1.{FIRST}"].note
    assert "T1Gd" in note and ("BrainSegFounder" in note if mode == "kaiming" else "mean" in note)
    assert by_key["decoder.seg_layers.0.weight"].note == "segmentation head: not transferred"


def test_generator_redraws_new_channels_reproducibly(plain_source):
    src, s = plain_source
    target = multi(NAMES4)
    before = clone_state(target)
    a, _ = transfer_weights(src, target, generator=torch.Generator().manual_seed(3))
    b, _ = transfer_weights(src, target, generator=torch.Generator().manual_seed(3))
    key = f"encoder.encoders.1.{FIRST}"
    assert torch.equal(a[key], b[key]) and not torch.equal(a[key], before[key])
    assert torch.equal(a[f"encoder.encoders.0.{FIRST}"][:, 0], s["encoder." + FIRST][:, 0])


def test_unknown_names_map_by_index(plain_source):
    _, s = plain_source
    target = multi(NAMES4)
    before = clone_state(target)
    state, report = transfer_weights(SourceWeights(state=s), target)
    assert any("mapped by index" in n for n in report.notes)
    first = s["encoder." + FIRST]
    assert torch.equal(state[f"encoder.encoders.0.{FIRST}"][:, 0], first[:, 0])
    assert torch.equal(state[f"encoder.encoders.1.{FIRST}"][:, 0], first[:, 1])
    assert torch.equal(state[f"encoder.encoders.3.{FIRST}"], before[f"encoder.encoders.3.{FIRST}"])


def test_residual_source_into_residual_multi_encoder():
    torch.manual_seed(0)
    src_net = pretrained(ResidualEncoderUNet(2, n_blocks_per_stage=1, **KW), seed=5)
    s = clone_state(src_net)
    target = multi(NAMES4, encoder="residual")
    state, report = transfer_weights(SourceWeights(state=s, modality_names=["T1", "FLAIR"]), target)
    stem = "stem.convs.0.conv.weight"
    assert torch.equal(state[f"encoder.encoders.3.{stem}"][:, 0], s[f"encoder.{stem}"][:, 1])
    key = "stages.1.blocks.0.conv1.conv.weight"
    assert torch.equal(state[f"encoder.encoders.2.{key}"], s[f"encoder.{key}"])
    assert actions(report)[f"encoder.encoders.3.{stem}"].action == "adapted"


# ------------------------------------------------------------------------------------------------- multi -> multi

@pytest.mark.parametrize("mode", ["kaiming", "mean"])
def test_multi_two_into_multi_four(multi_source, mode):
    src, s = multi_source
    target = multi(NAMES4)
    before = clone_state(target)
    state, report = transfer_weights(src, target, new_modality_init=mode)
    target.load_state_dict(state)
    t = target.state_dict()
    enc_keys = [k[len("encoder.encoders.0."):] for k in t if k.startswith("encoder.encoders.0.")]
    for rest in enc_keys:
        assert torch.equal(t[f"encoder.encoders.0.{rest}"], s[f"encoder.encoders.0.{rest}"]), rest  # T1
        assert torch.equal(t[f"encoder.encoders.3.{rest}"], s[f"encoder.encoders.1.{rest}"]), rest  # FLAIR
        for i in (1, 2):
            if mode == "kaiming":
                expected = before[f"encoder.encoders.{i}.{rest}"]
            else:
                expected = torch.stack([s[f"encoder.encoders.0.{rest}"], s[f"encoder.encoders.1.{rest}"]]).mean(0)
            assert torch.equal(t[f"encoder.encoders.{i}.{rest}"], expected), (i, rest)

    by_key = actions(report)
    for level, w in enumerate(KW["features_per_stage"]):
        key = f"encoder.fusions.{level}.proj.0.weight"
        assert t[key].shape[1] == 4 * w and s[key].shape[1] == 2 * w
        assert torch.equal(t[key][:, :w], s[key][:, :w])  # target encoder 0 <- source block 0
        assert torch.equal(t[key][:, 3 * w:], s[key][:, w:2 * w])  # target encoder 3 <- source block 1
        assert torch.equal(t[key][:, w:3 * w], before[key][:, w:3 * w])  # new encoders' blocks: target init
        assert by_key[key].action == "adapted"
        for rest in ("proj.0.bias", "proj.1.weight", "proj.1.bias"):
            assert torch.equal(t[f"encoder.fusions.{level}.{rest}"], s[f"encoder.fusions.{level}.{rest}"])
    for k in t:
        if k.startswith(("decoder.stages.", "decoder.transpconvs.")):
            assert torch.equal(t[k], s[k]), k

    keys = canonical(t)
    n_enc = len(canonical({k: 0 for k in t if k.startswith("encoder.encoders.0.")}))
    seg = [k for k in keys if ".seg_layers." in k]
    n_fusion_conv = len(KW["features_per_stage"])
    n_new_enc = 2 * n_enc if mode == "kaiming" else 0
    assert report.counts() == {"loaded": len(keys) - len(seg) - n_fusion_conv - 2 * n_enc,
                               "adapted": n_fusion_conv + (2 * n_enc - n_new_enc),
                               "new": len(seg) + n_new_enc, "ignored": 0}
    if mode == "mean":
        assert by_key[f"encoder.encoders.1.{FIRST}"].note.startswith("mean of pretrained encoders")


def test_multi_same_names_other_order_maps_by_name(tmp_path):
    src_net = pretrained(multi(NAMES4), seed=12)
    save_nnunet(tmp_path / "c.pth", src_net, NAMES4, MULTI_CLASS)
    s = clone_state(src_net)
    order = ["FLAIR", "T2", "T1Gd", "T1"]
    target = multi(order)
    state, report = transfer_weights(read_checkpoint(tmp_path / "c.pth"), target)
    for i, name in enumerate(order):
        j = NAMES4.index(name)
        for k in state:
            if k.startswith(f"encoder.encoders.{i}."):
                assert torch.equal(state[k], s[f"encoder.encoders.{j}." + k[len(f"encoder.encoders.{i}."):]]), k
    for level, w in enumerate(KW["features_per_stage"]):
        key = f"encoder.fusions.{level}.proj.0.weight"
        for i, name in enumerate(order):
            j = NAMES4.index(name)
            assert torch.equal(state[key][:, i * w:(i + 1) * w], s[key][:, j * w:(j + 1) * w])
    keys = canonical(state)
    seg = [k for k in keys if ".seg_layers." in k]
    assert report.counts() == {"loaded": len(keys) - len(seg) - 3, "adapted": 3, "new": len(seg), "ignored": 0}


def test_grouped_target_encoder_takes_modalities_spread_over_source_encoders(multi_source):
    src, s = multi_source  # one source encoder per modality: T1, FLAIR
    target = multi(NAMES4, encoder_groups=[[0, 3], [1, 2]])  # [T1, FLAIR], [T1Gd, T2]
    before = clone_state(target)
    state, report = transfer_weights(src, target)
    first = state[f"encoder.encoders.0.{FIRST}"]
    assert torch.equal(first[:, 0], s[f"encoder.encoders.0.{FIRST}"][:, 0])
    assert torch.equal(first[:, 1], s[f"encoder.encoders.1.{FIRST}"][:, 0])
    key = "stages.1.0.convs.0.conv.weight"
    assert torch.equal(state[f"encoder.encoders.0.{key}"], s[f"encoder.encoders.0.{key}"])
    assert torch.equal(state[f"encoder.encoders.1.{key}"], before[f"encoder.encoders.1.{key}"])
    w = KW["features_per_stage"][0]
    fusion = "encoder.fusions.0.proj.0.weight"
    assert torch.equal(state[fusion][:, :w], s[fusion][:, :w])
    assert torch.equal(state[fusion][:, w:], before[fusion][:, w:])
    assert actions(report)[f"encoder.encoders.0.{FIRST}"].action == "adapted"
    # source encoder 1's other tensors are used by nobody: listed as ignored
    ignored = {e.source_key for e in report.entries if e.action == "ignored"}
    assert f"encoder.encoders.1.{key}" in ignored and f"encoder.encoders.1.{FIRST}" not in ignored


def test_multi_identity_is_all_loaded(multi_source):
    src, s = multi_source
    target = multi(["T1", "FLAIR"])
    state, report = transfer_weights(src, target)
    keys = canonical(state)
    seg = [k for k in keys if ".seg_layers." in k]
    assert report.counts() == {"loaded": len(keys) - len(seg), "adapted": 0, "new": len(seg), "ignored": 0}
    assert all(torch.equal(state[k], s[k]) for k in state if ".seg_layers." not in k)


def test_multi_into_plain_is_refused(multi_source):
    src, _ = multi_source
    with pytest.raises(ValueError, match="not supported"):
        transfer_weights(src, plain(2), target_modalities=["T1", "FLAIR"])


# ------------------------------------------------------------------------------------------------- plain -> plain

def test_plain_into_plain_other_channels(plain_source):
    src, s = plain_source
    target = plain(3, seed=4)
    before = clone_state(target)
    state, report = transfer_weights(src, target, target_modalities=["flair", "T2", "T1"])  # names case-insensitive
    key = "encoder." + FIRST
    assert torch.equal(state[key][:, 0], s[key][:, 1])
    assert torch.equal(state[key][:, 1], before[key][:, 1])
    assert torch.equal(state[key][:, 2], s[key][:, 0])
    assert torch.equal(state["decoder.encoder." + FIRST], state[key])
    keys = canonical(state)
    seg = [k for k in keys if ".seg_layers." in k]
    assert report.counts() == {"loaded": len(keys) - len(seg) - 1, "adapted": 1, "new": len(seg), "ignored": 0}
    assert all(torch.equal(state[k], s[k]) for k in keys if k != key and ".seg_layers." not in k)


def test_shape_mismatch_is_new_and_unused_source_is_ignored(plain_source):
    _, s = plain_source
    s = dict(s)
    odd = torch.randn(8, 16, 1, 1, 1)
    for k in ("decoder.stages.0.convs.0.conv.weight", "decoder.stages.0.convs.0.all_modules.0.weight"):
        s[k] = odd  # one tensor under both names, as a real state dict of another network would hold it
    s["head.weight"] = torch.randn(5, 16)  # a pretext head
    target = plain(2, seed=4)
    before = clone_state(target)
    state, report = transfer_weights(SourceWeights(state=s, modality_names=["T1", "FLAIR"]), target)
    entry = actions(report)["decoder.stages.0.convs.0.conv.weight"]
    assert entry.action == "new" and "8x16x1x1x1" in entry.note and "8x16x3x3x3" in entry.note
    assert torch.equal(state["decoder.stages.0.convs.0.conv.weight"], before["decoder.stages.0.convs.0.conv.weight"])
    ignored = [e for e in report.entries if e.action == "ignored"]
    assert [(e.source_key, e.source_shape, e.target_key) for e in ignored] == [("head.weight", (5, 16), None)]


def test_copied_source_without_shared_storage_reports_no_aliases(plain_source):
    _, s = plain_source
    copied = {k: v.clone() for k, v in s.items()}  # aliases no longer share storage
    state, report = transfer_weights(SourceWeights(state=copied, modality_names=["T1", "FLAIR"]), plain(2, seed=4))
    assert report.counts()["ignored"] == 0


def test_zero_matches_lists_keys():
    src = SourceWeights(state={"foo.weight": torch.zeros(3, 3), "bar.bias": torch.zeros(3)})
    with pytest.raises(ValueError, match="no tensor of") as err:
        transfer_weights(src, multi(NAMES4))
    msg = str(err.value)
    assert "foo.weight 3x3" in msg and "bar.bias" in msg and f"encoder.encoders.0.{FIRST}" in msg


def test_bad_arguments(plain_source):
    src, _ = plain_source
    with pytest.raises(ValueError, match="new_modality_init"):
        transfer_weights(src, multi(NAMES4), new_modality_init="zeros")
    with pytest.raises(ValueError, match="input channels"):
        transfer_weights(src, multi(NAMES4), target_modalities=["T1", "FLAIR"])


# ---------------------------------------------------------------------------------------------- purity and report

def test_does_not_modify_target_or_source(multi_source):
    src, s = multi_source
    target = multi(NAMES4)
    before = clone_state(target)
    src_before = {k: v.clone() for k, v in src.state.items()}
    ptrs = {k: v.data_ptr() for k, v in target.state_dict().items()}
    state, _ = transfer_weights(src, target, new_modality_init="mean")
    after = target.state_dict()
    assert all(torch.equal(after[k], before[k]) and after[k].data_ptr() == ptrs[k] for k in before)
    assert all(torch.equal(src.state[k], src_before[k]) for k in src_before)
    for v in state.values():  # the result shares no memory with either side
        v.add_(1)
    assert all(torch.equal(src.state[k], src_before[k]) for k in src_before)
    assert all(torch.equal(target.state_dict()[k], before[k]) for k in before)


# ----------------------------------------------------------------------------------------------------------------------
# what is transferred: the scope


def test_scope_encoder_keeps_the_whole_decoder_fresh(multi_source):
    src, s = multi_source
    target = multi(["T1", "FLAIR"])
    fresh = clone_state(target)
    state, report = transfer_weights(src, target, scope="encoder")
    by_key = actions(report)
    for k in canonical(state):
        if k.startswith("decoder."):
            assert by_key[k].action == "new" and torch.equal(state[k], fresh[k]), k
        else:
            assert by_key[k].action == "loaded" and torch.equal(state[k], s[k]), k
    assert "scope 'encoder'" in by_key["decoder.stages.0.convs.0.conv.weight"].note
    # the decoder's alias of the encoder (decoder.encoder.*) is the encoder: loaded with it
    alias = next(k for k in state if k.startswith("decoder.encoder."))
    assert torch.equal(state[alias], s[alias[len("decoder."):]])


def test_fresh_last_decoder_stage_and_norm_reset(multi_source):
    src, s = multi_source
    target = multi(["T1", "FLAIR"])
    fresh = clone_state(target)
    last = 1  # 3 encoder stages -> decoder stages 0 and 1; 1 is the full-resolution one
    state, report = transfer_weights(src, target, fresh_decoder_stages=1)
    by_key = actions(report)
    for k in canonical(state):
        if k.startswith((f"decoder.stages.{last}.", f"decoder.transpconvs.{last}.", "decoder.seg_layers.")):
            assert by_key[k].action == "new" and torch.equal(state[k], fresh[k]), k
        else:
            assert by_key[k].action == "loaded", k
    state, report = transfer_weights(src, target, reset_decoder_norm=True)
    by_key = actions(report)
    norm_keys = [k for k in canonical(state) if k.startswith("decoder.") and ".norm." in k]
    assert norm_keys and all(by_key[k].action == "new" and torch.equal(state[k], fresh[k]) for k in norm_keys)
    conv = "decoder.stages.0.convs.0.conv.weight"
    assert by_key[conv].action == "loaded" and torch.equal(state[conv], s[conv])


def test_scope_arguments_are_checked(multi_source):
    src, _ = multi_source
    with pytest.raises(ValueError, match="transfer scope must be one of"):
        transfer_weights(src, multi(["T1", "FLAIR"]), scope="decoder")
    with pytest.raises(ValueError, match="fresh_decoder_stages must be >= 0"):
        transfer_weights(src, multi(["T1", "FLAIR"]), fresh_decoder_stages=-1)
    flat = nn.Sequential(nn.Conv3d(2, 4, 3))
    with pytest.raises(ValueError, match="use scope 'all'"):
        transfer_weights({"0.weight": torch.zeros(4, 2, 3, 3, 3)}, flat, scope="encoder")
