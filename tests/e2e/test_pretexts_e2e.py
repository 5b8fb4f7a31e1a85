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
