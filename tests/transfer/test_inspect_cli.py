"""nnunetv2_ext weights inspect (inspect_cli): what it says of a small checkpoint of each format (format, tensors,
input channels, modalities), the dry run into a target, and the clear refusal (exit code 2) of what is no checkpoint."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from torch import nn

from nnunetv2_ext import cli
from nnunetv2_ext.transfer import canonical_keys
from nnunetv2_ext.transfer.checkpoint import ExternalWeights
from nnunetv2_ext.transfer.inspect_cli import build_target_network, describe_weights, inspect_target, inspect_weights
from tests.transfer.test_checkpoint import KW, nnunet_checkpoint
from tests.transfer.test_formats import NAMES4, RESENC, SWIN, SSLHead, backbone, ddp, nnssl_checkpoint, randomize

PLAIN_CLASS = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
FIXTURES = os.path.join(os.path.dirname(__file__), "..", "planning", "fixtures")


@pytest.fixture(scope="module")
def small_files(tmp_path_factory):
    """A small checkpoint of each format that needs no MONAI network, as its producer writes it."""
    folder = tmp_path_factory.mktemp("inspect")
    torch.manual_seed(0)
    plain = PlainConvUNet(2, **KW).state_dict()
    torch.save(nnunet_checkpoint(plain, ["T1", "FLAIR"], PLAIN_CLASS), folder / "checkpoint_final.pth")
    resenc = ResidualEncoderUNet(1, num_classes=1, **RESENC).state_dict()
    torch.save(nnssl_checkpoint(resenc), folder / "nnssl.pth")
    torch.save(ddp(plain), folder / "plain.pt")
    torch.save({"epoch": 3, "model": {"conv.weight": torch.zeros(4, 3, 3, 3), "conv.bias": torch.zeros(4)}},
               folder / "under_model.pt")
    (folder / "notes.txt").write_text("hello: this is not a checkpoint\n")
    torch.save({"epoch": 3, "weights": {"block": {"w": torch.zeros(3, 2)}}}, folder / "odd.pt")
    return folder, plain, resenc


@pytest.fixture(scope="module")
def monai_files(tmp_path_factory):
    """MONAI Swin files: a research-contributions SSL pretraining (1 channel), BrainSegFounder's (2 channels, T1 +
    FLAIR) and a whole SwinUNETR."""
    from monai.networks.nets import SwinUNETR

    folder = tmp_path_factory.mktemp("inspect_monai")
    torch.manual_seed(0)
    for name, head in (("monai_swin_ssl", SSLHead(1, "swin_vit", "deconv")),
                       ("brainsegfounder", randomize(SSLHead(2, "swinViT", "vae"), seed=2))):
        torch.save({"epoch": 1, "state_dict": ddp(head.state_dict()), "optimizer": {"state": {}, "param_groups": []}},
                   folder / f"{name}.pt")
    torch.save({"epoch": 5, "state_dict": SwinUNETR(in_channels=1, out_channels=2, **SWIN).state_dict()},
               folder / "monai_swin.pt")
    return {name: folder / f"{name}.pt" for name in ("monai_swin_ssl", "brainsegfounder", "monai_swin")}


def lines(text: str) -> dict:
    """``key: value`` lines of describe_weights, as a dict."""
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line and not line.startswith(" "))


def test_nnunet_checkpoint(small_files):
    folder, plain, _ = small_files
    info = lines(inspect_weights(folder / "checkpoint_final.pth"))
    assert info["format"] == "nnunet"
    assert info["network"] == f"{PLAIN_CLASS}; trainer: nnUNetTrainer"
    assert info["tensors"].startswith(f"{len(plain)} offered to the transfer")
    assert info["input channels"] == "2 (encoder.stages.0.0.convs.0.conv.weight 4x2x3x3x3)"
    assert info["modalities"] == "T1, FLAIR" and info["encoder only"] == "no"
    assert info["axis order"] == "nnunet (C, Z, Y, X)"


def test_nnssl_checkpoint_offers_the_encoder_only(small_files):
    folder, _, resenc = small_files
    text = inspect_weights(folder / "nnssl.pth")
    info = lines(text)
    assert info["format"] == "nnssl" and info["encoder only"] == "yes" and info["modalities"] == "unknown"
    n_encoder = sum(k.startswith(("encoder.stem.", "encoder.stages.")) for k in resenc)
    canon = canonical_keys(resenc)  # aliases of kept tensors (*.all_modules.*) are not listed
    n_dropped = sum(k.startswith("decoder.") and not k.startswith("decoder.encoder.") and canon[k] == k for k in resenc)
    assert info["tensors"].startswith(f"{n_encoder} offered to the transfer")
    assert info["tensors"].endswith(f"; {n_dropped} not offered")
    assert info["input channels"] == "1 (encoder.stem.convs.0.conv.weight 4x1x3x3x3)"
    assert "encoder-only load" in text


@pytest.mark.parametrize("name, n, channels", [("plain.pt", None, "2 (encoder.stages.0.0.convs.0.conv.weight"),
                                               ("under_model.pt", 2, "3 (conv.weight 4x3x3x3)")])
def test_plain_state_dicts(small_files, name, n, channels):
    folder, plain, _ = small_files
    text = inspect_weights(folder / name)
    info = lines(text)
    assert info["format"] == "state_dict" and info["modalities"] == "unknown" and info["encoder only"] == "no"
    assert info["tensors"].startswith(f"{n if n is not None else len(plain)} offered")
    assert info["input channels"].startswith(channels)
    assert ("'model' entry" in text) == (name == "under_model.pt")


def test_forced_format_is_said_and_checked(small_files):
    folder, _, _ = small_files
    assert "format state_dict (forced)" in inspect_weights(folder / "checkpoint_final.pth", format="state_dict")
    with pytest.raises(ValueError, match="needs a dict with 'network_weights'"):
        inspect_weights(folder / "plain.pt", format="nnunet")


@pytest.mark.parametrize("fmt, channels, modalities, encoder_only",
                         [("monai_swin_ssl", "1", "unknown", "yes"), ("brainsegfounder", "2", "T1, FLAIR", "yes"),
                          ("monai_swin", "1", "unknown", "no")])
def test_monai_formats(monai_files, fmt, channels, modalities, encoder_only):
    text = inspect_weights(monai_files[fmt])
    info = lines(text)
    assert info["format"] == fmt and info["modalities"] == modalities and info["encoder only"] == encoder_only
    assert info["input channels"].startswith(f"{channels} (net.swinViT.patch_embed.proj.weight ")
    assert info["axis order"].startswith("nnunet (C, Z, Y, X) (") and "tensors permuted" in info["axis order"]


def test_describe_weights_counts_values_and_encoder_groups():
    w = ExternalWeights(state={"encoder.encoders.0.c.weight": torch.zeros(4, 2, 3, 3, 3),
                               "encoder.encoders.1.c.weight": torch.zeros(4, 1, 3, 3, 3)},
                        encoder_groups=[[0, 2], [1]], modality_names=["T1", "T2", "FLAIR"], path="x.pth",
                        format="nnunet", dropped_keys=["a"], notes=["n"])
    info = lines(describe_weights(w))
    assert info["tensors"] == "2 offered to the transfer (324 values); 1 not offered"
    assert info["input channels"] == "3 in 2 encoders [0,2; 1] (first: encoder.encoders.0.c.weight 4x2x3x3x3)"
    assert info["modalities"] == "T1, T2, FLAIR" and "  - n" in describe_weights(w)
    assert "unknown (no convolution" in lines(describe_weights(ExternalWeights(state={"a": torch.zeros(3)})))[
        "input channels"]


# ----------------------------------------------------------------------------------------------------------------------
# the command: output, and exit code 2 with a clear message for what is no checkpoint


def test_command_prints_the_description(small_files, capsys):
    folder, _, _ = small_files
    assert cli.main(["weights", "inspect", str(folder / "checkpoint_final.pth")]) == 0
    out = capsys.readouterr().out
    assert "format: nnunet" in out and "modalities: T1, FLAIR" in out


@pytest.mark.parametrize("name, message", [
    ("notes.txt", "is not a readable PyTorch checkpoint: it starts with b'hello: this is n', which is neither a zip "
                  "archive (torch.save) nor a pickle"),
    ("odd.pt", "unknown checkpoint format: a dict with top-level keys ['epoch', 'weights']"),
    ("missing.pt", "do not exist"),
])
def test_command_refuses_what_is_no_checkpoint_with_exit_code_2(small_files, capsys, name, message):
    folder, _, _ = small_files
    assert cli.main(["weights", "inspect", str(folder / name)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("nnunetv2_ext weights: error: ")
    assert message in captured.err
    assert "Traceback" not in captured.err


def test_command_in_a_subprocess_exit_code_2_for_a_text_file(small_files):
    folder, _, _ = small_files
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "nnunetv2_ext.cli", "weights", "inspect", str(folder / "notes.txt")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "not a readable PyTorch checkpoint" in done.stderr and "Traceback" not in done.stderr


# ----------------------------------------------------------------------------------------------------------------------
# with a target: the dry run


def test_inspect_mentions_format_channels_and_modalities(monai_files):
    path = monai_files["brainsegfounder"]
    text = inspect_weights(path)
    assert "format: brainsegfounder" in text and "input channels: 2" in text and "modalities: T1, FLAIR" in text
    assert "encoder only: yes" in text and "permuted" in text

    target = backbone(4)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    text = inspect_weights(path, target=target, target_modalities=NAMES4)
    assert "dry run into SwinUNETRBackbone" in text and "net.swinViT.layers1.0.blocks.0.attn.qkv.weight" in text
    assert "loaded" in text and "ignored" in text
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())  # nothing loaded


def test_build_target_network_and_inspect_target(tmp_path):
    folder = tmp_path / "Dataset992_SyntheticBraTS"
    folder.mkdir()
    for name, as_name in (("dataset_tiny.json", "dataset.json"), ("nnUNetPlans_tiny.json", "nnUNetPlans.json")):
        (folder / as_name).write_text(open(os.path.join(FIXTURES, name)).read())
    net = build_target_network(folder, "nnUNetPlans", "3d_fullres", "nnUNetTrainer")
    assert isinstance(net, PlainConvUNet) and net.encoder.stages[0][0].convs[0].conv.in_channels == 4
    with pytest.raises(ValueError, match="configuration '3d_lowres'"):
        build_target_network(folder, "nnUNetPlans", "3d_lowres", "nnUNetTrainer")
    with pytest.raises(ValueError, match="nnUNet_extTrainer"):
        build_target_network(folder, "nnUNetPlans", "3d_fullres", "nnUNetTrainerDoesNotExist")

    # a T1 + FLAIR nnU-Net checkpoint of the same plans: the dry run adapts the first conv to the 4 channels
    torch.manual_seed(0)
    arch = json.loads((folder / "nnUNetPlans.json").read_text())["configurations"]["3d_fullres"]["architecture"]
    kw = {k: v for k, v in arch["arch_kwargs"].items() if k not in arch["_kw_requires_import"]}
    source = PlainConvUNet(2, num_classes=3, conv_op=nn.Conv3d, norm_op=nn.InstanceNorm3d, nonlin=nn.LeakyReLU, **kw)
    torch.save(nnunet_checkpoint(source.state_dict(), ["T1", "FLAIR"],
                                 "dynamic_network_architectures.architectures.unet.PlainConvUNet"), tmp_path / "c.pth")
    text = inspect_target(tmp_path / "c.pth", folder, "nnUNetPlans", "3d_fullres", "nnUNetTrainer")
    assert "format: nnunet" in text and "dry run into PlainConvUNet" in text and "input channels: 2" in text
    assert "adapted" in text and "new T1Gd, T2" in text
