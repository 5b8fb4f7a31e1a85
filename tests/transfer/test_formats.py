"""The format table (read_weights / detect_format): each format written as its producer writes it, read, transferred,
and the target's tensors compared value by value."""
from __future__ import annotations

import os
import shlex

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from torch import nn

from nnunetv2_ext.architectures.multi_encoder import MultiEncoderUNet
from nnunetv2_ext.transfer import transfer_weights
from nnunetv2_ext.transfer.axes import permute_spatial_axes
from nnunetv2_ext.transfer.checkpoint import load_object
from nnunetv2_ext.transfer.formats import (
    CHECKPOINT_FORMATS,
    FORMATS,
    ExternalWeights,
    checkpoint_format,
    detect,
    detect_format,
    encoder_only,
    read_weights,
    swin_prefix_of,
)
from nnunetv2_ext.transfer.inspect_cli import inspect_weights
from nnunetv2_ext.transfer.report import with_source_notes
from tests.transfer.test_checkpoint import nnunet_checkpoint

monai = pytest.importorskip("monai")
from monai.networks.nets import SwinUNETR  # noqa: E402
from monai.networks.nets.swin_unetr import SwinTransformer  # noqa: E402

from nnunetv2_ext.architectures.monai_backbones import SwinUNETRBackbone  # noqa: E402

NAMES4 = ["T1", "T1Gd", "T2", "FLAIR"]
SWIN = dict(feature_size=12, depths=(1, 1, 1, 1), num_heads=(3, 6, 12, 24))
PATCH_EMBED = "swinViT.patch_embed.proj.weight"


def randomize(net: nn.Module, seed: int) -> nn.Module:
    """Random values in every parameter, so a copied tensor never equals a fresh one by chance."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return net


def ddp(state: dict) -> dict:
    """Keys as DistributedDataParallel's state_dict() writes them."""
    return {f"module.{k}": v for k, v in state.items()}


class SSLHead(nn.Module):
    """The SSL network of MONAI research-contributions SwinUNETR/Pretrain/models/ssl_head.py (attribute ``swin_vit``)
    and of BrainSegFounder Downstream/ATLAS/models/ssl_head.py (attribute ``swinViT``): the same module names, hence
    the same state-dict keys (rotation_pre/head, contrastive_pre/head, ``conv`` reconstruction decoder); widths reduced
    (``dim = 16 * feature_size``, as 768 = 16 * 48 there) and depths 1 to stay small."""

    def __init__(self, in_channels: int, vit_attr: str, upsample: str, feature_size: int = 12):
        super().__init__()
        dim = 16 * feature_size
        setattr(self, vit_attr, SwinTransformer(
            in_chans=in_channels, embed_dim=feature_size, window_size=(7, 7, 7), patch_size=(2, 2, 2),
            depths=SWIN["depths"], num_heads=SWIN["num_heads"], mlp_ratio=4.0, qkv_bias=True, drop_rate=0.0,
            attn_drop_rate=0.0, drop_path_rate=0.0, norm_layer=nn.LayerNorm, use_checkpoint=False, spatial_dims=3))
        self.rotation_pre = nn.Identity()
        self.rotation_head = nn.Linear(dim, 4)
        self.contrastive_pre = nn.Identity()
        self.contrastive_head = nn.Linear(dim, 512)
        if upsample == "deconv":
            widths = [dim, dim // 2, dim // 4, dim // 8, dim // 16, in_channels]
            self.conv = nn.Sequential(*[nn.ConvTranspose3d(a, b, kernel_size=(2, 2, 2), stride=(2, 2, 2))
                                        for a, b in zip(widths[:-1], widths[1:])])
        else:  # "vae"
            layers = []
            for a, b in [(dim, dim // 2), (dim // 2, dim // 4), (dim // 4, dim // 8), (dim // 8, dim // 16),
                         (dim // 16, dim // 16)]:
                layers += [nn.Conv3d(a, b, kernel_size=3, stride=1, padding=1), nn.InstanceNorm3d(b), nn.LeakyReLU(),
                           nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False)]
            self.conv = nn.Sequential(*layers, nn.Conv3d(dim // 16, in_channels, kernel_size=1, stride=1))


def vit_state(head: SSLHead, attr: str) -> dict:
    return {k[len(attr) + 1:]: v for k, v in head.state_dict().items() if k.startswith(attr + ".")}


def backbone(n_in: int, seed: int = 5) -> SwinUNETRBackbone:
    torch.manual_seed(seed)
    return SwinUNETRBackbone(n_in, 2, **SWIN)


def monai_to_nnunet(state: dict) -> dict:
    return permute_spatial_axes(state, "monai", "nnunet")[0]


def loaded(target: nn.Module, state: dict) -> dict:
    target.load_state_dict(state)
    return target.state_dict()


@pytest.fixture(scope="module")
def research_ssl(tmp_path_factory):
    """research-contributions SwinUNETR/Pretrain main.py: {"epoch", "state_dict": DDP model.state_dict(),
    "optimizer"}, 1 input channel, the ConvTranspose3d ('deconv') reconstruction head."""
    torch.manual_seed(0)
    head = randomize(SSLHead(1, "swin_vit", "deconv"), seed=1)
    opt = torch.optim.AdamW(head.parameters(), lr=4e-4, weight_decay=0.1)
    path = tmp_path_factory.mktemp("ssl") / "model_final_epoch.pt"
    torch.save({"epoch": 100, "state_dict": ddp(head.state_dict()), "optimizer": opt.state_dict()}, path)
    return path, head


@pytest.fixture(scope="module")
def brainsegfounder(tmp_path_factory):
    """BrainSegFounder: the SSLHead with attribute ``swinViT`` on 2 channels (T1, FLAIR), saved from DDP the way the
    research code saves ({"epoch", "state_dict", "optimizer"}), VAE reconstruction head."""
    torch.manual_seed(0)
    head = randomize(SSLHead(2, "swinViT", "vae"), seed=2)
    path = tmp_path_factory.mktemp("bsf") / "batchwise_10k_t1t2.pt"
    torch.save({"epoch": 10, "state_dict": ddp(head.state_dict()), "optimizer": {"state": {}, "param_groups": []}},
               path)
    return path, head


@pytest.fixture(scope="module")
def swinunetr_file(tmp_path_factory):
    """research-contributions BTCV / BRATS21 utils.save_checkpoint: {"epoch", "best_acc", "state_dict"} of a whole
    SwinUNETR (model.module.state_dict() under DDP: no prefix)."""
    torch.manual_seed(0)
    net = randomize(SwinUNETR(in_channels=1, out_channels=2, **SWIN), seed=3)
    path = tmp_path_factory.mktemp("swinunetr") / "model.pt"
    torch.save({"epoch": 5, "best_acc": 0.8, "state_dict": net.state_dict()}, path)
    return path, net


# ----------------------------------------------------------------------------------------------------------------------
# nnssl


RESENC = dict(n_stages=3, features_per_stage=[4, 8, 16], conv_op=nn.Conv3d, kernel_sizes=3, strides=[1, 2, 2],
              n_blocks_per_stage=[1, 1, 1], n_conv_per_stage_decoder=[1, 1], conv_bias=True,
              norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU,
              nonlin_kwargs={"inplace": True})


def nnssl_checkpoint(state: dict, plan_overrides: dict | None = None) -> dict:
    """Written as nnssl writes it: MIC-DKFZ/nnssl src/nnssl/training/nnsslTrainer/AbstractTrainer.py,
    AbstractBaseTrainer.save_checkpoint (network_weights, optimizer_state, grad_scaler_state, logging, _best_ema,
    current_epoch, init_args, trainer_name, nnssl_adaptation_plan = self.adaptation_plan.serialize(); numpy values
    made Python by _convert_numpy). The plan as AdaptationPlan.serialize() lays it out
    (src/nnssl/adaptation_planning/adaptation_plan.py: architecture_plans, pretrain_plan, pretrain_num_input_channels,
    recommended_downstream_patchsize, key_to_encoder, key_to_stem, keys_to_in_proj, key_to_lpe), with the ResEncL
    entries of src/nnssl/utilities/add_adaptation_plan.py; the pretrain plan as the Plan / ConfigurationPlan dataclasses
    of src/nnssl/experiment_planning/experiment_planners/plan.py."""
    configuration = {"data_identifier": "nnsslPlans_onemmiso", "preprocessor_name": "DefaultPreprocessor",
                     "spacing_style": "onemmiso", "normalization_schemes": ["ZScoreNormalization"],
                     "use_mask_for_norm": [False], "resampling_fn_data": "resample_data_or_seg_to_shape",
                     "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
                     "resampling_fn_mask": "resample_data_or_seg_to_shape",
                     "resampling_fn_mask_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
                     "spacing": [1, 1, 1], "patch_size": [160, 160, 160]}
    plan = {"dataset_name": "Dataset745_OpenMind", "plans_name": "nnsslPlans",
            "original_median_spacing_after_transp": [1, 1, 1], "image_reader_writer": "NibabelReaderWriter",
            "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "configurations": {"onemmiso": configuration}, "experiment_planner_used": "ExperimentPlanner"}
    adaptation = {"architecture_plans": {"arch_class_name": "ResEncL", "arch_kwargs": None,
                                         "arch_kwargs_requiring_import": None},
                  "pretrain_plan": plan, "pretrain_num_input_channels": 1,
                  "recommended_downstream_patchsize": (160, 160, 160), "key_to_encoder": "encoder.stages",
                  "key_to_stem": "encoder.stem",
                  "keys_to_in_proj": ("encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0"),
                  "key_to_lpe": None, **(plan_overrides or {})}
    return {"network_weights": state,
            "optimizer_state": {"state": {}, "param_groups": [{"lr": 0.01, "momentum": 0.99, "params": [0, 1]}]},
            "grad_scaler_state": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                  "growth_interval": 2000, "_growth_tracker": 0},
            "logging": {"train_losses": [0.9, 0.8], "val_losses": [0.95, 0.85], "lrs": [0.01, 0.0099],
                        "epoch_start_timestamps": [1.0, 2.0], "epoch_end_timestamps": [1.5, 2.5]},
            "_best_ema": 0.85, "current_epoch": 2,
            "init_args": {"plan": plan, "configuration_name": "onemmiso", "fold": 0, "pretrain_json": {},
                          "device": "cuda"},
            "trainer_name": "BaseMAETrainer", "nnssl_adaptation_plan": adaptation}


@pytest.fixture(scope="module")
def nnssl_file(tmp_path_factory):
    """An nnssl MAE pretraining of ResEnc-L (ResidualEncoderUNet, 1 channel in, 1 reconstructed channel out)."""
    torch.manual_seed(0)
    net = randomize(ResidualEncoderUNet(1, num_classes=1, **RESENC), seed=4)
    path = tmp_path_factory.mktemp("nnssl") / "checkpoint_final.pth"
    torch.save(nnssl_checkpoint(net.state_dict()), path)
    return path, net


def test_nnssl_encoder_only_into_resenc(nnssl_file):
    path, pretrained = nnssl_file
    assert detect_format(path) == "nnssl"
    w = read_weights(path)
    assert isinstance(w, ExternalWeights) and w.format == "nnssl" and w.encoder_only
    assert w.network_class == "ResEncL" and w.trainer_name == "BaseMAETrainer" and w.axis_order == "nnunet"
    assert w.keys_to_in_proj == ("encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0")
    assert all(k.startswith(("encoder.stem.", "encoder.stages.")) for k in w.state)
    assert w.dropped_keys and all(k.startswith("decoder.") and not k.startswith("decoder.encoder.")
                                  for k in w.dropped_keys)
    assert any("encoder-only" in n for n in w.notes)

    torch.manual_seed(7)
    target = ResidualEncoderUNet(1, num_classes=3, **RESENC)  # downstream: 3 classes
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    state, report = transfer_weights(w, target)
    after = loaded(target, state)
    src = pretrained.state_dict()
    for k, v in after.items():
        if k.startswith("encoder.") or k.startswith("decoder.encoder."):
            assert torch.equal(v, src[k]), k  # the encoder, exactly
        else:
            assert torch.equal(v, fresh[k]), k  # the pretraining decoder is not offered: target init kept
    assert report.counts()["ignored"] == 0


def test_nnssl_single_channel_into_multi_encoder_mean(nnssl_file):
    """The 1-channel, modality-agnostic nnssl encoder into this package's residual MultiEncoderUNet: with
    new_modality_init='mean' every modality's encoder starts from it, first convolution included."""
    path, pretrained = nnssl_file
    w = read_weights(path)
    assert any("new_modality_init='mean'" in n for n in w.notes)
    torch.manual_seed(0)
    kw = {k: v for k, v in RESENC.items() if k != "n_blocks_per_stage"}
    target = MultiEncoderUNet(4, num_classes=3, n_blocks_per_stage=1, encoder="residual", modality_names=NAMES4, **kw)
    after = loaded(target, transfer_weights(w, target, new_modality_init="mean")[0])
    src = pretrained.state_dict()
    for i in range(4):
        for key in ("stem.convs.0.conv.weight", "stages.1.blocks.0.conv1.conv.weight"):
            assert torch.equal(after[f"encoder.encoders.{i}.{key}"], src[f"encoder.{key}"]), (i, key)


def test_nnssl_plan_moves_wrapped_keys_and_encoder_only_is_explicit(tmp_path):
    """A pretraining wrapper (nnssl's VoCo around Primus: key_to_encoder 'encoder.eva', key_to_stem
    'encoder.down_projection') is read into Primus' own key space (eva, down_projection, eva.pos_embed)."""
    t = torch.randn
    state = {"encoder.down_projection.proj.weight": t(8, 1, 4, 4, 4), "encoder.down_projection.proj.bias": t(8),
             "encoder.eva.pos_embed": t(1, 8, 8), "encoder.eva.blocks.0.attn.qkv.weight": t(24, 8),
             "decoder.up.weight": t(8, 8), "mask_token": t(1, 1, 8)}
    plan = {"architecture_plans": {"arch_class_name": "PrimusM", "arch_kwargs": None,
                                   "arch_kwargs_requiring_import": None},
            "key_to_encoder": "encoder.eva", "key_to_stem": "encoder.down_projection",
            "keys_to_in_proj": ("encoder.down_projection.proj",), "key_to_lpe": "encoder.eva.pos_embed"}
    torch.save(nnssl_checkpoint(state, plan), tmp_path / "voco.pth")
    w = read_weights(tmp_path / "voco.pth")
    assert set(w.state) == {"down_projection.proj.weight", "down_projection.proj.bias", "eva.pos_embed",
                            "eva.blocks.0.attn.qkv.weight"}
    assert torch.equal(w.state["eva.pos_embed"], state["encoder.eva.pos_embed"])
    assert w.keys_to_in_proj == ("down_projection.proj",)
    assert sorted(w.dropped_keys) == ["decoder.up.weight", "mask_token"]
    full = read_weights(tmp_path / "voco.pth", encoder_only=False)
    assert not full.encoder_only and "decoder.up.weight" in full.state and "mask_token" in full.state


# ----------------------------------------------------------------------------------------------------------------------
# nnU-Net


def test_nnunet_checkpoint_is_read_checkpoint(tmp_path):
    torch.manual_seed(0)
    net = randomize(PlainConvUNet(2, n_stages=3, features_per_stage=[4, 8, 16], conv_op=nn.Conv3d, kernel_sizes=3,
                                  strides=[1, 2, 2], num_classes=3, n_conv_per_stage=1, n_conv_per_stage_decoder=1,
                                  conv_bias=True, norm_op=nn.InstanceNorm3d, norm_op_kwargs={"affine": True},
                                  nonlin=nn.LeakyReLU), seed=8)
    path = tmp_path / "checkpoint_final.pth"
    torch.save(nnunet_checkpoint(net.state_dict(), ["T1", "FLAIR"],
                                 "dynamic_network_architectures.architectures.unet.PlainConvUNet"), path)
    assert detect_format(path) == "nnunet"
    w = read_weights(path, modality_names=["a", "b"])
    assert w.format == "nnunet" and w.modality_names == ["T1", "FLAIR"] and w.trainer_name == "nnUNetTrainer"
    assert any("the file's used" in n for n in w.notes)
    torch.manual_seed(1)
    target = PlainConvUNet(2, n_stages=3, features_per_stage=[4, 8, 16], conv_op=nn.Conv3d, kernel_sizes=3,
                           strides=[1, 2, 2], num_classes=3, n_conv_per_stage=1, n_conv_per_stage_decoder=1,
                           conv_bias=True, norm_op=nn.InstanceNorm3d, norm_op_kwargs={"affine": True},
                           nonlin=nn.LeakyReLU)
    state, _ = transfer_weights(w, target, target_modalities=["T1", "FLAIR"])
    after = loaded(target, state)
    src = net.state_dict()
    assert all(torch.equal(after[k], src[k]) for k in after if ".seg_layers." not in k)


# ----------------------------------------------------------------------------------------------------------------------
# MONAI Swin UNETR


def test_research_ssl_into_swinunetr_backbone(research_ssl):
    path, head = research_ssl
    assert detect_format(path) == "monai_swin_ssl"
    target = backbone(1)
    w = read_weights(path, swin_prefix=swin_prefix_of(target))
    assert w.encoder_only and w.axis_order == "nnunet" and w.keys_to_in_proj == ("net.swinViT.patch_embed.proj",)
    assert all(k.startswith("net.swinViT.") for k in w.state)
    heads = {k.split(".")[0] for k in w.dropped_keys}
    assert heads == {"rotation_head", "contrastive_head", "conv"}
    assert any("permuted" in n for n in w.notes)

    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    state, report = transfer_weights(w, target)
    after = loaded(target, state)
    expected = monai_to_nnunet(vit_state(head, "swin_vit"))
    assert len(expected) > 10
    for k, v in after.items():
        if k.startswith("net.swinViT."):
            assert torch.equal(v, expected[k[len("net.swinViT."):]]), k
        else:
            assert torch.equal(v, fresh[k]), k  # the UNETR decoder keeps its init
    # the report says which tensors were permuted
    noted = with_source_notes(report, w)
    entry = next(e for e in noted.entries if e.target_key == "net.swinViT.patch_embed.proj.weight")
    assert "permuted" in entry.note and entry.action == "loaded"
    assert any("permuted" in n for n in noted.notes) and not any("permuted" in n for n in report.notes)


def test_swin_ssl_unpermuted_is_exact_and_warned(research_ssl):
    path, head = research_ssl
    target = backbone(1)
    w = read_weights(path, swin_prefix="net.", to_axis_order=None)
    assert w.axis_order == "monai" and not w.permuted_keys
    assert any("NOT permuted" in n for n in w.notes)
    after = loaded(target, transfer_weights(w, target)[0])
    for k, v in vit_state(head, "swin_vit").items():
        assert torch.equal(after["net.swinViT." + k], v)


def test_released_swinvit_layout_module_is_the_vit(tmp_path, research_ssl):
    """MONAI's released model_swinvit.pt: {"state_dict": {"module.patch_embed...", "module.layers1..."}}, the
    layout research-contributions' fine-tuning scripts read with key.replace("module.", "swinViT.")."""
    _, head = research_ssl
    torch.save({"state_dict": ddp(vit_state(head, "swin_vit"))}, tmp_path / "model_swinvit.pt")
    assert detect_format(tmp_path / "model_swinvit.pt") == "monai_swin_ssl"
    w = read_weights(tmp_path / "model_swinvit.pt", swin_prefix="", to_axis_order=None)
    assert set(w.state) == {"swinViT." + k for k in vit_state(head, "swin_vit")} and not w.dropped_keys
    torch.manual_seed(0)
    target = SwinUNETR(in_channels=1, out_channels=2, **SWIN)  # a bare MONAI SwinUNETR: prefix ""
    assert swin_prefix_of(target) == ""
    after = loaded(target, transfer_weights(w, target)[0])
    assert all(torch.equal(after["swinViT." + k], v) for k, v in vit_state(head, "swin_vit").items())


def test_whole_swinunetr_and_its_encoder_only(swinunetr_file):
    path, net = swinunetr_file
    assert detect_format(path) == "monai_swin"
    expected = monai_to_nnunet(net.state_dict())
    target = backbone(1)
    after = loaded(target, transfer_weights(read_weights(path), target, skip=())[0])
    assert all(torch.equal(after["net." + k], v) for k, v in expected.items())
    # the 1x1x1 output conv has nothing to permute; a 3x3x3 one was permuted
    assert torch.equal(after["net.out.conv.conv.weight"], net.state_dict()["out.conv.conv.weight"])
    k3 = "net.encoder2.layer.conv1.conv.weight"
    assert not torch.equal(after[k3], net.state_dict()[k3[4:]])

    target = backbone(1, seed=6)
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    w = read_weights(path, encoder_only=True)
    assert w.encoder_only and all(k.startswith("net.swinViT.") for k in w.state)
    after = loaded(target, transfer_weights(w, target)[0])
    for k, v in after.items():
        want = expected[k[4:]] if k.startswith("net.swinViT.") else fresh[k]
        assert torch.equal(v, want), k


def test_brainsegfounder_detected_with_its_modalities(brainsegfounder):
    path, _ = brainsegfounder
    assert detect_format(path) == "brainsegfounder"
    w = read_weights(path)
    assert w.format == "brainsegfounder" and w.modality_names == ["T1", "FLAIR"]
    assert any("assumed" in n and "BrainSegFounder" in n for n in w.notes)
    assert w.state["net." + PATCH_EMBED].shape[1] == 2
    assert read_weights(path, modality_names=["t1", "flair"]).modality_names == ["t1", "flair"]
    with pytest.raises(ValueError, match="one name per input channel"):
        read_weights(path, modality_names=["T1"])


def test_brainsegfounder_into_four_modalities_loads_the_swin_vit(brainsegfounder):
    path, head = brainsegfounder
    target = backbone(4)
    state, report = transfer_weights(read_weights(path), target, target_modalities=NAMES4)
    after = loaded(target, state)
    expected = monai_to_nnunet(vit_state(head, "swinViT"))
    for k, v in expected.items():
        if k != "patch_embed.proj.weight":
            assert torch.equal(after["net.swinViT." + k], v), k


def test_brainsegfounder_keeps_t1_and_flair_slices_by_name(brainsegfounder):
    path, head = brainsegfounder
    target = backbone(4)
    fresh = target.state_dict()["net." + PATCH_EMBED].clone()
    state, report = transfer_weights(read_weights(path), target, target_modalities=NAMES4)
    after = loaded(target, state)["net." + PATCH_EMBED]
    src = monai_to_nnunet(vit_state(head, "swinViT"))["patch_embed.proj.weight"]  # channels T1, FLAIR
    assert torch.equal(after[:, 0], src[:, 0])  # T1
    assert torch.equal(after[:, 3], src[:, 1])  # FLAIR
    assert torch.equal(after[:, 1], fresh[:, 1]) and torch.equal(after[:, 2], fresh[:, 2])  # T1Gd, T2: He init kept
    entry = next(e for e in report.entries if e.target_key == "net." + PATCH_EMBED)
    assert entry.action == "adapted" and "T1Gd" in entry.note and "T2" in entry.note


def test_monai_weights_into_a_unet_match_nothing(research_ssl):
    path, _ = research_ssl
    torch.manual_seed(0)
    target = PlainConvUNet(1, n_stages=2, features_per_stage=[4, 8], conv_op=nn.Conv3d, kernel_sizes=3,
                           strides=[1, 2], num_classes=2, n_conv_per_stage=1, n_conv_per_stage_decoder=1)
    with pytest.raises(ValueError, match="no tensor of"):
        transfer_weights(read_weights(path), target)


def test_encoder_only_helper():
    state = {"net.swinViT.a": torch.zeros(1), "net.swinViTx.b": torch.zeros(1), "net.encoder1.c": torch.zeros(1)}
    assert list(encoder_only(state, ["net.swinViT"])) == ["net.swinViT.a"]
    assert list(encoder_only(state, ["net.swinViT."])) == ["net.swinViT.a"]


# ----------------------------------------------------------------------------------------------------------------------
# refusals


def test_unknown_format_lists_keys(tmp_path):
    torch.save({"weights": {"block": {"w": torch.zeros(3, 2)}}, "epoch": 3}, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match="unknown checkpoint format") as err:
        detect_format(tmp_path / "odd.pt")
    for part in ("weights", "epoch", "weights.block.w 3x2"):
        assert part in str(err.value)
    with pytest.raises(ValueError, match="unknown checkpoint format"):
        read_weights(tmp_path / "odd.pt")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds a list"):
        read_weights(tmp_path / "list.pt")
    with pytest.raises(ValueError, match="unknown format 'onnx'"):
        read_weights(tmp_path / "list.pt", format="onnx")
    with pytest.raises(FileNotFoundError):
        read_weights(tmp_path / "missing.pt")


def test_forced_format_of_another_layout(research_ssl, nnssl_file):
    with pytest.raises(ValueError, match="monai_swin_ssl"):
        read_weights(research_ssl[0], format="monai_swin")
    with pytest.raises(ValueError, match="MONAI Swin layout"):
        read_weights(nnssl_file[0], format="brainsegfounder")
    forced = read_weights(research_ssl[0], format="state_dict")
    assert forced.format == "state_dict" and "swin_vit.patch_embed.proj.weight" in forced.state


class _Payload:
    """Unpickling this runs a shell command (what a malicious checkpoint would do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def test_pickled_payload_is_refused_and_never_runs(tmp_path, research_ssl):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": ddp(research_ssl[1].state_dict()), "extra": _Payload(marker)}, path)
    for call in (detect_format, read_weights, inspect_weights):
        with pytest.raises(ValueError, match="refused"):
            call(path)
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------------------------------
# the table


def test_one_table_names_the_formats_and_each_layout_is_claimed_by_one_row(tmp_path, research_ssl, brainsegfounder,
                                                                            swinunetr_file, nnssl_file):
    assert FORMATS == tuple(row.name for row in CHECKPOINT_FORMATS) and CHECKPOINT_FORMATS[-1].name == "state_dict"
    torch.manual_seed(0)
    plain = PlainConvUNet(2, n_stages=2, features_per_stage=[4, 8], conv_op=nn.Conv3d, kernel_sizes=3,
                          strides=[1, 2], num_classes=2, n_conv_per_stage=1, n_conv_per_stage_decoder=1).state_dict()
    torch.save(nnunet_checkpoint(plain, ["T1", "FLAIR"], "x.PlainConvUNet"), tmp_path / "nnunet.pth")
    torch.save({"model": ddp(plain)}, tmp_path / "plain.pt")
    files = {"nnunet": tmp_path / "nnunet.pth", "nnssl": nnssl_file[0], "monai_swin_ssl": research_ssl[0],
             "monai_swin": swinunetr_file[0], "brainsegfounder": brainsegfounder[0],
             "state_dict": tmp_path / "plain.pt"}
    assert sorted(files) == sorted(FORMATS)
    for fmt, path in files.items():
        obj = load_object(path)
        claims = [row.name for row in CHECKPOINT_FORMATS if row.detect(obj) is not None]
        assert [c for c in claims if c != "state_dict"] == ([fmt] if fmt != "state_dict" else []), (fmt, claims)
        assert detect(obj)[0] is checkpoint_format(fmt)
        assert read_weights(path).format == fmt
    with pytest.raises(ValueError, match="unknown format 'onnx'; known: nnunet, nnssl"):
        checkpoint_format("onnx")
