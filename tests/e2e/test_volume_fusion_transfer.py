"""Volume Fusion pretraining through nnUNetv2_train, then its checkpoint into another multi-encoder (grouped
encoders, so first convolutions must adapt) through nnU-Net's own -pretrained_weights flag."""
from __future__ import annotations

import json
import re

from tests.conftest import NnUNetEnv, console_script


def test_volume_fusion_pretraining_then_fine_tuning_with_transfer_report(preprocessed_example: NnUNetEnv):
    from nnunetv2_ext.pretext.volume_fusion import VolumeFusionConfig

    example = preprocessed_example
    train = console_script("nnUNetv2_train")
    example.run(train, str(example.dataset_id), "3d_fullres", "all", "-tr", "nnUNetTrainerVolumeFusion_debug",
                "-p", "nnUNetPlans_MultiEncoder", "-device", "cpu")
    vf_folder = example.results / "nnUNetTrainerVolumeFusion_debug__nnUNetPlans_MultiEncoder__3d_fullres" / "fold_all"
    checkpoint = vf_folder / "checkpoint_final.pth"
    assert checkpoint.is_file() and (vf_folder / "progress.png").is_file()
    log = next(vf_folder.glob("training_log_*.txt")).read_text()
    pseudo_dice = re.findall(r"Pseudo dice \[(.*)\]", log)
    assert pseudo_dice and len(pseudo_dice[-1].split(",")) == VolumeFusionConfig().k  # one per fusion level

    # a differently grouped target: T1 and FLAIR share an encoder, T1Gd and T2 have their own
    example.run(console_script("nnunetv2_ext"), "plans", str(example.dataset_id), "--groups", "T1,FLAIR;T1Gd;T2",
                "--plans-name", "nnUNetPlans_MultiEncoderGrouped")
    example.run(train, str(example.dataset_id), "3d_fullres", "1", "-tr", "nnUNetTrainerMultiEncoder_debug",
                "-p", "nnUNetPlans_MultiEncoderGrouped", "-device", "cpu", "-pretrained_weights", str(checkpoint))
    folder = (example.results / "nnUNetTrainerMultiEncoder_debug__nnUNetPlans_MultiEncoderGrouped__3d_fullres"
              / "fold_1")
    report = json.loads((folder / "transfer_report.json").read_text())
    entries = {e["target_key"]: e for e in report["entries"] if e["target_key"]}
    assert entries["encoder.encoders.0.stages.0.0.convs.0.conv.weight"]["action"] == "adapted"  # 1 -> 2 channels
    assert entries["encoder.encoders.1.stages.0.0.convs.0.conv.weight"]["action"] == "loaded"   # T1Gd -> T1Gd
    assert all(e["action"] == "new" for k, e in entries.items() if ".seg_layers." in k)       # 5 VF classes vs 3
    assert report["counts"]["loaded"] > 0 and report["counts"]["ignored"] > 0  # the 4th source encoder is dropped
    assert (folder / "checkpoint_final.pth").is_file()
    assert "Pretrained weights from" in next(folder.glob("training_log_*.txt")).read_text()
