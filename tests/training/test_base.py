"""Shared trainer behaviour: atomic checkpoints, the 1-modality refusal."""
from __future__ import annotations

import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_ext.training.base import ExtTrainerBase
from nnunetv2_ext.training.multi_encoder import nnUNetTrainerMultiEncoder


def _bare_trainer() -> ExtTrainerBase:
    trainer = ExtTrainerBase.__new__(ExtTrainerBase)  # no dataset needed to exercise save_checkpoint
    trainer.local_rank = 0
    return trainer


def test_checkpoint_is_replaced_only_when_complete(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint_latest.pth"
    target.write_bytes(b"previous good checkpoint")

    def write(self, filename):
        with open(filename, "wb") as f:
            f.write(b"new checkpoint")

    monkeypatch.setattr(nnUNetTrainer, "save_checkpoint", write)
    _bare_trainer().save_checkpoint(str(target))
    assert target.read_bytes() == b"new checkpoint"
    assert not (tmp_path / "checkpoint_latest.pth.partial").exists()


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), PermissionError(13, "Read-only file system"),
                                   KeyboardInterrupt()])
def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch, error):
    target = tmp_path / "checkpoint_latest.pth"
    target.write_bytes(b"previous good checkpoint")

    def fail_half_way(self, filename):
        with open(filename, "wb") as f:
            f.write(b"half a chec")
        raise error

    monkeypatch.setattr(nnUNetTrainer, "save_checkpoint", fail_half_way)
    with pytest.raises(type(error)):
        _bare_trainer().save_checkpoint(str(target))
    assert target.read_bytes() == b"previous good checkpoint"
    assert not (tmp_path / "checkpoint_latest.pth.partial").exists()


def test_single_modality_dataset_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    with pytest.raises(ValueError, match="at least 2 modalities"):
        nnUNetTrainerMultiEncoder({}, "3d_fullres", 0, {"channel_names": {"0": "CT"}, "labels": {"background": 0}},
                                  torch.device("cpu"))
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_pretrained_weights_into_a_finished_run_are_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.delenv("NNUNETV2_EXT_OVERWRITE", raising=False)
    (tmp_path / "checkpoint_final.pth").write_bytes(b"finished run")
    trainer = _bare_trainer()
    trainer.output_folder, trainer.resumed = str(tmp_path), False
    with pytest.raises(RuntimeError, match="pass --c to continue"):
        trainer.load_pretrained_weights(str(tmp_path / "weights.pth"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_final.pth"]
