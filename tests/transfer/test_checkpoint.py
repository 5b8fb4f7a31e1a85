"""read_checkpoint: nnU-Net checkpoints and plain state dicts, always weights_only, with clear refusals."""
from __future__ import annotations

import os
import pickle
import shlex

import numpy as np
import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn

from nnunetv2_ext.transfer import SourceWeights, read_checkpoint

KW = dict(n_stages=3, features_per_stage=[4, 8, 16], conv_op=nn.Conv3d, kernel_sizes=3, strides=[1, 2, 2],
          num_classes=3, n_conv_per_stage=1, n_conv_per_stage_decoder=1, conv_bias=True, norm_op=nn.InstanceNorm3d,
          norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True})


def nnunet_checkpoint(state: dict, names: list[str], network_class: str, arch_extra: dict | None = None,
                      inherit: bool = False) -> dict:
    """A dict shaped like nnUNetTrainer.save_checkpoint's, numpy scalars and a torch.device included."""
    architecture = {"network_class_name": network_class,
                    "arch_kwargs": {"n_stages": 3, "features_per_stage": [4, 8, 16], **(arch_extra or {})},
                    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
    configurations = {"3d_fullres": {"patch_size": [16, 16, 16], "architecture": architecture}}
    configuration = "3d_fullres"
    if inherit:
        configurations["3d_custom"] = {"inherits_from": "3d_fullres", "batch_size": 2}
        configuration = "3d_custom"
    return {
        "network_weights": state,
        "optimizer_state": {"state": {}, "param_groups": [{"lr": 0.01, "momentum": 0.99}]},
        "grad_scaler_state": None,
        "logging": {"mean_fg_dice": [np.float32(0.25), np.float32(0.5)], "ema_fg_dice": [np.float64(0.3)],
                    "dice_per_class_or_region": [[np.float32(0.1), np.float32(0.2)]], "lrs": [0.01, 0.009]},
        "_best_ema": np.float32(0.5),
        "current_epoch": 2,
        "init_args": {"plans": {"plans_name": "nnUNetPlans", "configurations": configurations},
                      "configuration": configuration, "fold": 0,
                      "dataset_json": {"channel_names": {str(i): n for i, n in enumerate(names)},
                                       "labels": {"background": 0, "tumour": 1}, "file_ending": ".nii.gz"},
                      "device": torch.device("cpu")},
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }


@pytest.fixture(scope="module")
def plain_state() -> dict:
    torch.manual_seed(0)
    return PlainConvUNet(2, **KW).state_dict()


def test_reads_nnunet_checkpoint(tmp_path, plain_state):
    path = tmp_path / "checkpoint_final.pth"
    torch.save(nnunet_checkpoint(plain_state, ["T1", "FLAIR"],
                                 "dynamic_network_architectures.architectures.unet.PlainConvUNet"), path)
    # the file needs more than torch's default allow-list (numpy scalars in 'logging'): ours is exercised
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, map_location="cpu", weights_only=True)
    src = read_checkpoint(path)
    assert isinstance(src, SourceWeights)
    assert src.modality_names == ["T1", "FLAIR"]
    assert src.trainer_name == "nnUNetTrainer"
    assert src.network_class == "dynamic_network_architectures.architectures.unet.PlainConvUNet"
    assert src.encoder_groups is None
    assert src.path == str(path)
    assert list(src.state) == list(plain_state)
    assert all(torch.equal(src.state[k], v) for k, v in plain_state.items())
    # aliases (decoder.encoder.*) still share storage after loading, as in nnU-Net's own checkpoints
    key = "encoder.stages.0.0.convs.0.conv.weight"
    assert src.state[key].data_ptr() == src.state["decoder." + key].data_ptr()


def test_channel_names_in_channel_order_and_inherited_configuration(tmp_path, plain_state):
    ckpt = nnunet_checkpoint(plain_state, [], "nnunetv2_ext.architectures.multi_encoder.MultiEncoderUNet",
                             {"encoder_groups": [[0, 2], [1]], "modality_names": ["a", "b", "c"]}, inherit=True)
    ckpt["init_args"]["dataset_json"]["channel_names"] = {"2": "FLAIR", "0": "T1", "1": "T2", "10": "X"}
    torch.save(ckpt, tmp_path / "c.pth")
    src = read_checkpoint(tmp_path / "c.pth")
    assert src.modality_names == ["T1", "T2", "FLAIR", "X"]  # numeric order, not string order
    assert src.network_class.endswith("MultiEncoderUNet")  # found through inherits_from
    assert src.encoder_groups == [[0, 2], [1]]


def test_multi_encoder_default_groups_one_per_channel(tmp_path, plain_state):
    ckpt = nnunet_checkpoint(plain_state, ["T1", "T1Gd", "T2"],
                             "nnunetv2_ext.architectures.multi_encoder.MultiEncoderUNet", {"encoder_groups": None})
    torch.save(ckpt, tmp_path / "c.pth")
    assert read_checkpoint(tmp_path / "c.pth").encoder_groups == [[0], [1], [2]]


def test_plain_state_dict_accepted_and_prefixes_stripped(tmp_path, plain_state):
    torch.save({f"module._orig_mod.{k}": v for k, v in plain_state.items()}, tmp_path / "sd.pth")
    src = read_checkpoint(tmp_path / "sd.pth")
    assert src.modality_names is None and src.trainer_name is None and src.network_class is None
    assert list(src.state) == list(plain_state)
    assert all(torch.equal(src.state[k], v) for k, v in plain_state.items())


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="do not exist"):
        read_checkpoint(tmp_path / "nope.pth")


def test_truncated_file_is_not_readable(tmp_path, plain_state):
    full = tmp_path / "full.pth"
    torch.save(nnunet_checkpoint(plain_state, ["T1", "FLAIR"], "x.PlainConvUNet"), full)
    data = full.read_bytes()
    half = tmp_path / "half.pth"
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        read_checkpoint(half)
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        read_checkpoint(tmp_path / "empty.pth")


class _Payload:
    """Unpickling this runs a shell command (what a malicious checkpoint would do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


@pytest.mark.parametrize("zipfile", [True, False])
def test_pickled_payload_is_refused_and_never_runs(tmp_path, plain_state, zipfile):
    # the payload is real: calling what it would call creates its marker
    control = tmp_path / "control"
    fn, args = _Payload(control).__reduce__()
    fn(*args)
    assert control.exists()

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"network_weights": plain_state, "extra": _Payload(marker)}, path,
               _use_new_zipfile_serialization=zipfile)
    assert not marker.exists()
    with pytest.raises(ValueError, match="refused") as err:
        read_checkpoint(path)
    assert "weights_only loading does not execute code" in str(err.value)
    assert "system" in str(err.value)  # names the global it refused
    assert not marker.exists()


def test_dict_without_network_weights_lists_keys(tmp_path, plain_state):
    torch.save({"model": plain_state, "epoch": 3, "optimizer_state": {}}, tmp_path / "other.pth")
    with pytest.raises(ValueError) as err:
        read_checkpoint(tmp_path / "other.pth")
    for key in ("model", "epoch", "optimizer_state", "network_weights"):
        assert key in str(err.value)


def test_not_a_dict(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="holds a list"):
        read_checkpoint(tmp_path / "list.pth")


def test_network_weights_not_a_state_dict(tmp_path):
    torch.save({"network_weights": {"a": 1}}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="network_weights"):
        read_checkpoint(tmp_path / "bad.pth")


def test_read_checkpoint_is_the_tables_nnunet_and_state_dict_readers(tmp_path, plain_state):
    """read_checkpoint has no reader of its own: it returns what read_weights returns for the same file."""
    from nnunetv2_ext.transfer.formats import read_weights

    torch.save(nnunet_checkpoint(plain_state, ["T1", "FLAIR"], "x.PlainConvUNet"), tmp_path / "c.pth")
    torch.save(plain_state, tmp_path / "sd.pth")
    for name, fmt in (("c.pth", "nnunet"), ("sd.pth", "state_dict")):
        a, b = read_checkpoint(tmp_path / name), read_weights(tmp_path / name)
        assert a.format == b.format == fmt and list(a.state) == list(b.state)
        assert (a.modality_names, a.network_class, a.trainer_name) == (b.modality_names, b.network_class,
                                                                       b.trainer_name)
        assert b.notes[1:] == a.notes  # read_weights adds only the detection note


def test_text_file_is_named_as_no_pytorch_file(tmp_path):
    (tmp_path / "README.pth").write_text("weights are on the lab server\n")
    with pytest.raises(ValueError, match=r"not a readable PyTorch checkpoint: it starts with b'weights are on t'"):
        read_checkpoint(tmp_path / "README.pth")
