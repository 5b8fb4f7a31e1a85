"""The self-supervised pipeline of Taheri Otaghsara et al. 2025 (Multi-encoder nnU-Net) through nnU-Net's own
commands:
unlabeled scans (T1, FLAIR) -> `nnunetv2_ext unlabeled-dataset` -> plan_and_preprocess -> Volume Fusion stage 1 ->
Volume Fusion stage 2 on the labelled 4-modality dataset (-pretrained_weights crosses 2 -> 4 modalities) ->
nnUNetTrainerMultiEncoderSSL fine-tuning with no -pretrained_weights (it finds stage 2 by convention) ->
nnUNetv2_predict."""
from __future__ import annotations

import functools
import json
import re
from pathlib import Path

from tests.conftest import NnUNetEnv, assert_valid_predictions, console_script

UNLABELED_ID = 992
PLANS = "nnUNetPlans_MultiEncoder"


def _fold(results: Path, dataset: str, trainer: str, fold: str) -> Path:
    return results / dataset / f"{trainer}__{PLANS}__3d_fullres" / f"fold_{fold}"


def _report(folder: Path) -> dict:
    report = json.loads((folder / "transfer_report.json").read_text())
    report["by_key"] = {e["target_key"]: e for e in report["entries"] if e["target_key"]}
    return report


def _first_conv(encoder: int) -> str:
    return f"encoder.encoders.{encoder}.stages.0.0.convs.0.conv.weight"


def test_two_stage_volume_fusion_then_ssl_fine_tuning(preprocessed_example: NnUNetEnv, tmp_path: Path):
    from nnunetv2_ext.data.synthetic import make_unlabeled_images
    from nnunetv2_ext.pretext.volume_fusion import VolumeFusionConfig

    example = preprocessed_example
    # a results folder of its own: other tests' pretext runs of the shared example dataset would be found by the
    # SSL trainer's convention search
    results = tmp_path / "results"
    run = functools.partial(example.run, env={"nnUNet_results": str(results)})
    ext, train = console_script("nnunetv2_ext"), console_script("nnUNetv2_train")
    scans = make_unlabeled_images(tmp_path / "ukb", n_cases=5, shape=(40, 40, 40), seed=1, modalities=("T1", "FLAIR"))
    run(ext, "unlabeled-dataset", "--images", str(scans), "--modalities", "T1,FLAIR",
                "--dataset-id", str(UNLABELED_ID), "--name", "UKB")
    run(console_script("nnUNetv2_plan_and_preprocess"), "-d", str(UNLABELED_ID), "-c", "3d_fullres",
                "-np", "1", "-npfp", "1")
    run(ext, "plans", str(UNLABELED_ID))

    # stage 1: healthy cohort, 2 modalities
    run(train, str(UNLABELED_ID), "3d_fullres", "all", "-tr", "nnUNetTrainerVolumeFusion_debug", "-p", PLANS,
                "-device", "cpu")
    stage1 = _fold(results, f"Dataset{UNLABELED_ID}_UKB", "nnUNetTrainerVolumeFusion_debug", "all")
    assert (stage1 / "checkpoint_final.pth").is_file() and (stage1 / "volume_fusion_sample.png").is_file()
    log = next(stage1.glob("training_log_*.txt")).read_text()
    assert len(re.findall(r"Pseudo dice \[(.*)\]", log)[-1].split(",")) == VolumeFusionConfig().k

    # no -pretrained_weights and no pretext run of the target dataset yet (stage 1 is another dataset's): the SSL
    # trainer refuses to start and says what to run
    proc = run(train, str(example.dataset_id), "3d_fullres", "0", "-tr", "nnUNetTrainerMultiEncoderSSL_debug",
                       "-p", PLANS, "-device", "cpu", check=False)
    assert proc.returncode != 0 and "pass -pretrained_weights" in proc.stderr
    pretrain = f"nnUNetv2_train {example.dataset_name} 3d_fullres all -tr nnUNetTrainerVolumeFusion -p {PLANS}"
    assert pretrain in proc.stderr

    # stage 2: the target dataset's images, 4 modalities: T1 and FLAIR encoders pretrained, T1Gd and T2 new
    run(train, str(example.dataset_id), "3d_fullres", "all", "-tr", "nnUNetTrainerVolumeFusion_debug",
                "-p", PLANS, "-device", "cpu", "-pretrained_weights", str(stage1 / "checkpoint_final.pth"))
    stage2 = _fold(results, example.dataset_name, "nnUNetTrainerVolumeFusion_debug", "all")
    report = _report(stage2)
    assert [report["by_key"][_first_conv(i)]["action"] for i in range(4)] == ["loaded", "new", "new", "loaded"]
    assert report["counts"]["loaded"] > report["counts"]["new"]

    # fine-tune with nnU-Net's literal command, no -pretrained_weights: stage 2 is the target dataset's only pretext
    # run with these plans and configuration; every encoder and the decoder pretrained, the segmentation heads fresh
    run(train, str(example.dataset_id), "3d_fullres", "0", "-tr", "nnUNetTrainerMultiEncoderSSL_debug",
                "-p", PLANS, "-device", "cpu")
    fine_tuned = _fold(results, example.dataset_name, "nnUNetTrainerMultiEncoderSSL_debug", "0")
    report = _report(fine_tuned)
    assert all(report["by_key"][_first_conv(i)]["action"] == "loaded" for i in range(4))
    assert all(e["action"] == "new" for k, e in report["by_key"].items() if ".seg_layers." in k)
    # the refused run above left its own log in this folder: read them all
    logs = "".join(p.read_text() for p in fine_tuned.glob("training_log_*.txt"))
    assert f"Pretrained weights found by convention: {stage2 / 'checkpoint_final.pth'}" in logs
    assert f"Pretrained weights from {stage2 / 'checkpoint_final.pth'}" in logs

    pred = tmp_path / "pred"
    run(console_script("nnUNetv2_predict"), "-i", str(example.raw / "imagesTs"), "-o", str(pred),
                "-d", str(example.dataset_id), "-c", "3d_fullres", "-f", "0",
                "-tr", "nnUNetTrainerMultiEncoderSSL_debug",
                "-p", PLANS, "-device", "cpu", "-npp", "1", "-nps", "1")
    assert_valid_predictions(pred, example.raw / "imagesTs")
