"""A checkpoint from outside nnU-Net starts a fine-tune through nnU-Net's own flag: a BrainSegFounder-layout Swin
UNETR SSL checkpoint (2 channels, T1 + FLAIR, DDP `module.` keys, SSL heads) into the 4-modality Swin UNETR."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import NnUNetEnv, console_script


def test_brainsegfounder_checkpoint_fine_tunes_swin_unetr(preprocessed_example: NnUNetEnv, tmp_path: Path):
    pytest.importorskip("monai")
    from tests.transfer.test_formats import SSLHead, ddp, randomize

    example = preprocessed_example
    head = randomize(SSLHead(2, "swinViT", "vae"), seed=2)
    checkpoint = tmp_path / "brainsegfounder_t1_flair.pt"
    torch.save({"epoch": 1, "state_dict": ddp(head.state_dict()), "optimizer": {"state": {}, "param_groups": []}},
               checkpoint)
    inspected = example.run(console_script("nnunetv2_ext"), "weights", "inspect", str(checkpoint)).stdout
    assert "brainsegfounder" in inspected and "T1, FLAIR" in inspected

    trainer = "nnUNetTrainerSwinUNETR_debug"
    example.run(console_script("nnUNetv2_train"), str(example.dataset_id), "3d_fullres", "3", "-tr", trainer, "-p",
                "nnUNetPlans", "-device", "cpu", "-pretrained_weights", str(checkpoint))
    fold = example.results / f"{trainer}__nnUNetPlans__3d_fullres" / "fold_3"
    report = json.loads((fold / "transfer_report.json").read_text())
    entries = {e["target_key"]: e for e in report["entries"] if e["target_key"]}
    embed = entries["net.swinViT.patch_embed.proj.weight"]
    assert embed["action"] == "adapted" and "T1" in embed["note"] and "FLAIR" in embed["note"]
    assert report["counts"]["loaded"] > 0
    notes = "\n".join(report["notes"])
    assert "rotation_head" in notes and "not offered to the transfer" in notes  # SSL heads listed, not loaded
    assert "axes permuted from monai (C, X, Y, Z) to nnunet (C, Z, Y, X)" in notes
    assert (fold / "checkpoint_final.pth").is_file()
