"""Swin UNETR proxies and cross-modality prediction through nnU-Net's own commands: pretrain on the example dataset
(nnUNetv2_train ... -tr nnUNetTrainer<Pretext>_debug), then fine-tune nnUNetTrainerMultiEncoderSSL_debug with
-pretrained_weights and check the transfer report: encoders loaded, SSL heads ignored, segmentation heads new.

Fine-tuning folds 3 and 4: other tests fine-tune the same trainer and plans on folds 0 and 1 of the same dataset."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import NnUNetEnv, console_script

PLANS = "nnUNetPlans_MultiEncoder"
FINE_TUNER = "nnUNetTrainerMultiEncoderSSL_debug"


def _fold(example: NnUNetEnv, trainer: str, fold: str) -> Path:
    return example.results / f"{trainer}__{PLANS}__3d_fullres" / f"fold_{fold}"


def _log(folder: Path) -> str:
    return next(folder.glob("training_log_*.txt")).read_text()


@pytest.mark.parametrize("pretext, fold, metric", [
    ("nnUNetTrainerSwinProxies_debug", "3", r"rotation accuracy ([0-9.]+)"),
    ("nnUNetTrainerCrossModality_debug", "4", r"MSE [0-9.]+, PSNR [-0-9.]+ dB, SSIM ([-0-9.]+)"),
])
def test_pretext_then_fine_tune(preprocessed_example: NnUNetEnv, pretext: str, fold: str, metric: str):
    example = preprocessed_example
    train = console_script("nnUNetv2_train")
    dataset = str(example.dataset_id)

    example.run(train, dataset, "3d_fullres", "all", "-tr", pretext, "-p", PLANS, "-device", "cpu")
    pretrained = _fold(example, pretext, "all")
    assert (pretrained / "checkpoint_final.pth").is_file() and (pretrained / "progress.png").is_file()
    log = _log(pretrained)
    assert "no segmentation validation" in log
    # the pretext metric is logged every epoch and is what nnU-Net shows as the one-entry pseudo dice
    values = re.findall(metric, log)
    dice = re.findall(r"Pseudo dice \[(?:np\.float\d+\()?([-0-9.e]+)\)?\]", log)
    assert len(values) == 3 and len(dice) == 3
    assert all(abs(float(v) - float(d)) < 1e-3 for v, d in zip(values, dice))

    example.run(train, dataset, "3d_fullres", fold, "-tr", FINE_TUNER, "-p", PLANS, "-device", "cpu",
                "-pretrained_weights", str(pretrained / "checkpoint_final.pth"))
    report = json.loads((_fold(example, FINE_TUNER, fold) / "transfer_report.json").read_text())
    by_target = {e["target_key"]: e["action"] for e in report["entries"] if e["target_key"]}
    ignored = {e["source_key"] for e in report["entries"] if e["action"] == "ignored"}
    encoder = {k: a for k, a in by_target.items() if k.startswith("encoder.encoders.")}
    assert encoder and set(encoder.values()) == {"loaded"}, {k: a for k, a in encoder.items() if a != "loaded"}
    seg = {a for k, a in by_target.items() if ".seg_layers." in k}
    assert seg == {"new"}
    # the SSL trainer's default scope: encoders only; the pretext's decoder (another task) is not transferred
    decoder = {k: a for k, a in by_target.items() if k.startswith("decoder.")}
    assert decoder and set(decoder.values()) == {"new"}
    if pretext.startswith("nnUNetTrainerSwinProxies"):
        assert {k for k in ignored if k.startswith("ssl_heads.")} == {
            "ssl_heads.rotation.weight", "ssl_heads.rotation.bias",
            "ssl_heads.contrastive.weight", "ssl_heads.contrastive.bias"}
    assert all(k.startswith("ssl_heads.") or ".seg_layers." in k for k in ignored), ignored


# ---------------------------------------------------------------------------------------------------------------------
# fast in-process checks of the pieces the commands above rely on (no nnU-Net run)


def _tiny_unet(in_channels: int = 2):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from torch import nn

    return PlainConvUNet(in_channels, 3, [4, 8, 16], nn.Conv3d, 3, [1, 2, 2], 1, in_channels, 1, conv_bias=True,
                         norm_op=nn.InstanceNorm3d, norm_op_kwargs={"affine": True}, nonlin=nn.LeakyReLU)


def test_ssl_wrapper_keeps_backbone_keys_and_trains_every_used_parameter():
    import torch

    from nnunetv2_ext.pretext.swin_proxies import swin_proxy_losses, two_views
    from nnunetv2_ext.training.pretext_trainers import SSLHeads, SSLWrapper

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
