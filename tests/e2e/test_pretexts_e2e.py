"""The pretexts through nnU-Net's own commands: pretrain on the example dataset (nnUNetv2_train ... -tr
nnUNetTrainer<Pretext>_debug), then fine-tune nnUNetTrainerMultiEncoderSSL_debug with -pretrained_weights and check
the transfer report: encoders loaded, SSL heads ignored, segmentation heads new.

Swin UNETR proxies and cross-modality prediction have a lane each. The three restoration pretexts (Models Genesis,
masked image modelling, patch swapping) share one: their networks are the plans' own with one output per modality,
so fine-tuning maps their checkpoints alike; they pretrain side by side, and the fine-tuning trainer takes each
checkpoint in process (its ``load_pretrained_weights``, what ``-pretrained_weights`` runs before the first epoch; the
fine-tuning epochs themselves are those of the lanes above).

Fine-tuning folds 3 and 4: other tests fine-tune the same trainer and plans on folds 0 and 1 of the same dataset."""
from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
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


# the restoration pretexts' _debug trainers and the metric of their pretext_metrics.json
RESTORATIONS = {"nnUNetTrainerModelGenesis_debug": "restoration MSE", "nnUNetTrainerMaskedImage_debug": "masked L1",
                "nnUNetTrainerPatchSwapping_debug": "restoration MSE"}


def test_restoration_pretexts_then_transfer(preprocessed_example: NnUNetEnv, tmp_path: Path, monkeypatch):
    import torch

    from nnunetv2_ext.training.multi_encoder import nnUNetTrainerMultiEncoderSSL_debug

    example = preprocessed_example
    train = console_script("nnUNetv2_train")
    with ThreadPoolExecutor(len(RESTORATIONS)) as pool:  # three nnUNetv2_train processes side by side
        list(pool.map(lambda t: example.run(train, str(example.dataset_id), "3d_fullres", "all", "-tr", t, "-p",
                                            PLANS, "-device", "cpu"), RESTORATIONS))

    # the fine-tuning trainer as nnUNetv2_train builds it, its results in a folder of its own
    for key in ("nnUNet_raw", "nnUNet_preprocessed"):
        monkeypatch.setenv(key, example.env[key])
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    plans = json.loads((example.preprocessed / f"{PLANS}.json").read_text())
    dataset_json = json.loads((example.preprocessed / "dataset.json").read_text())
    keys = None
    for fold, (pretext, metric) in enumerate(RESTORATIONS.items()):
        pretrained = _fold(example, pretext, "all")
        assert (pretrained / "checkpoint_final.pth").is_file() and (pretrained / "progress.png").is_file()
        assert "no segmentation validation" in _log(pretrained)
        record = json.loads((pretrained / "pretext_metrics.json").read_text())
        assert record["trainer"] == pretext and [h["epoch"] for h in record["history"]] == [0, 1, 2]
        assert [m["name"] for m in record["metrics"]] == [metric]

        trainer = nnUNetTrainerMultiEncoderSSL_debug({**plans, "continue_training": False}, "3d_fullres", fold,
                                                     dataset_json, torch.device("cpu"))
        trainer.load_pretrained_weights(str(pretrained / "checkpoint_final.pth"))
        report = json.loads((Path(trainer.output_folder) / "transfer_report.json").read_text())
        by_target = {e["target_key"]: e["action"] for e in report["entries"] if e["target_key"]}
        encoder = {k: a for k, a in by_target.items() if k.startswith("encoder.encoders.")}
        assert encoder and set(encoder.values()) == {"loaded"}, {k: a for k, a in encoder.items() if a != "loaded"}
        assert {a for k, a in by_target.items() if k.startswith("decoder.")} == {"new"}  # scope: encoders only
        ignored = {e["source_key"] for e in report["entries"] if e["action"] == "ignored"}
        assert all(".seg_layers." in k for k in ignored), ignored
        # the fine-tuning log says whether the pretext beat its baseline
        assert f"{pretext} at epoch 2: pretext metric: {metric}" in Path(trainer.log_file).read_text()
        source = {e["source_key"] for e in report["entries"] if e["source_key"]}
        assert keys is None or source == keys  # the three checkpoints hold the same tensors
        keys = source
