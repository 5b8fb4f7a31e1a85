"""Alternative backbones end to end through nnU-Net's own commands, on the synthetic example dataset: backbone plans
(`write_backbone_plans`) or nnU-Net's own nnUNetPlans -> nnUNetv2_train (debug trainers, CPU) -> nnUNetv2_predict.

- Swin UNETR: nnUNetTrainerSwinUNETR_debug on nnU-Net's own nnUNetPlans (the network and the rounded patch derived
  by the trainer);
- SegResNet (deep supervision) and STU-Net-S on their plans (nnUNetPlans_SegResNet, nnUNetPlans_STUNetS);
- UNETR through the SSL path: Volume Fusion pretraining on nnUNetPlans_UNETR, then nnUNetTrainerUNETR_debug with
  -pretrained_weights.

Most of a tiny CPU run is single-threaded (process start-up, trainer search, data augmentation, export), so the runs
go in two lanes side by side. Fold 2 (other e2e tests use folds 0, 1 and all) and trainers of their own keep the
result folders apart."""
from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Sequence

import pytest
import torch

from nnunetv2_ext.architectures.monai_backbones import SwinUNETRBackbone
from tests.conftest import NnUNetEnv, assert_valid_predictions, console_script

FOLD = "2"
CONFIGURATION = "3d_fullres"
PRETRAINER = "nnUNetTrainerVolumeFusionBackbone_debug"
# backbone -> (debug trainer, plans)
RUNS = {
    "swin_unetr": ("nnUNetTrainerSwinUNETR_debug", "nnUNetPlans"),
    "segresnet": ("nnUNetTrainerSegResNet_debug", "nnUNetPlans_SegResNet"),
    "unetr": ("nnUNetTrainerUNETR_debug", "nnUNetPlans_UNETR"),
    "stunet_s": ("nnUNetTrainerBackbone_debug", "nnUNetPlans_STUNetS"),
    "pctnet": ("nnUNetTrainerPCTNet_debug", "nnUNetPlans"),
    "transbts": ("nnUNetTrainerTransBTS_debug", "nnUNetPlans"),
}
LANES = (("swin_unetr", "segresnet", "pctnet"), ("unetr", "stunet_s", "transbts"))


def _model(example: NnUNetEnv, trainer: str, plans: str) -> Path:
    return example.results / f"{trainer}__{plans}__{CONFIGURATION}"


def _log(folder: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(folder.glob("training_log_*.txt")))


def _write_plans(example: NnUNetEnv, name: str, **options) -> str:
    """`write_backbone_plans` in this process, with the example's nnU-Net folders; returns the plans name."""
    from nnunetv2_ext.planning.backbones import write_backbone_plans

    with pytest.MonkeyPatch.context() as mp:
        for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            mp.setenv(key, example.env[key])
        path, _ = write_backbone_plans(example.dataset_id, name, overwrite=True, **options)
    return Path(path).stem


def _train(example: NnUNetEnv, trainer: str, plans: str, *extra: str) -> List[str]:
    return [console_script("nnUNetv2_train"), str(example.dataset_id), CONFIGURATION, FOLD, "-tr", trainer, "-p",
            plans, "-device", "cpu", *extra]


def _predict(example: NnUNetEnv, trainer: str, plans: str, out: Path) -> List[str]:
    return [console_script("nnUNetv2_predict"), "-i", str(example.raw / "imagesTs"), "-o", str(out), "-d",
            str(example.dataset_id), "-c", CONFIGURATION, "-f", FOLD, "-tr", trainer, "-p", plans, "-device", "cpu",
            "-npp", "1", "-nps", "1"]


def _steps(example: NnUNetEnv, name: str, pred: Path) -> List[List[str]]:
    trainer, plans = RUNS[name]
    if name == "unetr":
        pretrained = _model(example, PRETRAINER, plans) / f"fold_{FOLD}" / "checkpoint_final.pth"
        return [_train(example, PRETRAINER, plans), _train(example, trainer, plans, "-pretrained_weights",
                                                           str(pretrained)), _predict(example, trainer, plans, pred)]
    return [_train(example, trainer, plans), _predict(example, trainer, plans, pred)]


def _run_lane(example: NnUNetEnv, steps: Sequence[List[str]]) -> str:
    """Run the commands one after the other; the first failure's output, or '' if all passed."""
    for cmd in steps:
        proc = subprocess.run(cmd, env=example.env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            return (f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n"
                    f"{proc.stderr[-6000:]}")
    return ""


@pytest.fixture(scope="module")
def runs(preprocessed_example: NnUNetEnv, tmp_path_factory) -> Dict[str, dict]:
    """Every backbone trained and used for prediction; per backbone its model folder, predictions and any failure."""
    from nnunetv2_ext.training.backbones import nnUNetTrainerUNETR_debug

    example = preprocessed_example
    assert _write_plans(example, "segresnet") == RUNS["segresnet"][1]
    assert _write_plans(example, "stunet_s") == RUNS["stunet_s"][1]
    # the debug trainer's tiny ViT in the plans, so that the pretraining (which builds what the plans name) uses it too
    assert _write_plans(example, "unetr", **nnUNetTrainerUNETR_debug.backbone_options) == RUNS["unetr"][1]
    out = tmp_path_factory.mktemp("backbone_predictions")
    results = {name: {"model": _model(example, *RUNS[name]), "pred": out / name} for name in RUNS}
    with ThreadPoolExecutor(max_workers=len(LANES)) as pool:
        failures = pool.map(lambda lane: [(name, _run_lane(example, _steps(example, name, results[name]["pred"])))
                                          for name in lane], LANES)
        for lane in failures:
            for name, failure in lane:
                results[name]["failure"] = failure
    return results


def _done(runs: Dict[str, dict], name: str, example: NnUNetEnv) -> Path:
    """The model folder of a backbone whose training and prediction passed; the predictions are valid."""
    run = runs[name]
    if run["failure"]:
        raise AssertionError(run["failure"])
    assert (run["model"] / f"fold_{FOLD}" / "checkpoint_final.pth").is_file()
    assert (run["model"] / f"fold_{FOLD}" / "validation" / "summary.json").is_file()
    assert_valid_predictions(run["pred"], example.raw / "imagesTs")
    return run["model"]


def test_swin_unetr_from_nnunet_plans(runs, preprocessed_example: NnUNetEnv):
    """nnUNetTrainerSwinUNETR on nnU-Net's own plans: the Swin UNETR is derived in the trainer, and the rounded patch
    is the one saved in the model's plans.json and checkpoint and used for prediction."""
    example = preprocessed_example
    model = _done(runs, "swin_unetr", example)
    planned = json.loads((example.preprocessed / "nnUNetPlans.json").read_text())
    patch = planned["configurations"][CONFIGURATION]["patch_size"]
    rounded = SwinUNETRBackbone.valid_patch_size(patch)
    assert rounded != patch  # the example's patch is not a multiple of 32: the rounding is exercised
    saved = json.loads((model / "plans.json").read_text())["configurations"][CONFIGURATION]
    assert saved["patch_size"] == rounded
    assert saved["architecture"]["network_class_name"].endswith("monai_backbones.SwinUNETRBackbone")
    assert saved["architecture"]["arch_kwargs"]["feature_size"] == 12  # the debug trainer's tiny Swin UNETR
    checkpoint = torch.load(model / f"fold_{FOLD}" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["init_args"]["plans"]["configurations"][CONFIGURATION]["patch_size"] == rounded
    log = _log(model / f"fold_{FOLD}")
    assert f"patch {patch} -> {rounded} for SwinUNETR (multiples of 32" in log
    assert "SwinUNETRBackbone has no deep supervision: training with one output" in log
    assert "Network: nnunetv2_ext.architectures.monai_backbones.SwinUNETRBackbone" in log
    assert "deep supervision off" in log


def test_segresnet_with_deep_supervision(runs, preprocessed_example: NnUNetEnv):
    log = _log(_done(runs, "segresnet", preprocessed_example) / f"fold_{FOLD}")
    assert "Network: nnunetv2_ext.architectures.monai_backbones.SegResNetBackbone" in log
    assert "deep supervision on" in log


def test_stunet_s_with_the_generic_trainer(runs, preprocessed_example: NnUNetEnv):
    model = _done(runs, "stunet_s", preprocessed_example)
    log = _log(model / f"fold_{FOLD}")
    assert "Network: dynamic_network_architectures.architectures.unet.ResidualEncoderUNet" in log
    assert "deep supervision on" in log
    widths = json.loads((model / "plans.json").read_text())["configurations"][CONFIGURATION]["architecture"][
        "arch_kwargs"]["features_per_stage"]
    assert widths == [16, 32, 64, 128, 256, 256][:len(widths)]


def test_unetr_volume_fusion_pretraining_then_fine_tuning(runs, preprocessed_example: NnUNetEnv):
    """A backbone without deep supervision through the SSL path: Volume Fusion pretraining on the UNETR plans, then
    nnUNetTrainerUNETR with -pretrained_weights (this package's weight transfer: all but the output layer)."""
    example = preprocessed_example
    fold = _done(runs, "unetr", example) / f"fold_{FOLD}"
    pretraining = _model(example, PRETRAINER, RUNS["unetr"][1]) / f"fold_{FOLD}"
    assert "UNETRBackbone has no deep supervision" in _log(pretraining)
    report = json.loads((fold / "transfer_report.json").read_text())
    new = [e["target_key"] for e in report["entries"] if e["action"] == "new"]
    assert new and all(key.startswith("net.out.") for key in new), new
    assert report["counts"]["loaded"] > 10 * len(new)
    assert "Pretrained weights from" in _log(fold)


@pytest.mark.parametrize("name,cls", [("pctnet", "nnunetv2_ext.architectures.pctnet.PCTNet"),
                                      ("transbts", "nnunetv2_ext.architectures.transbts.TransBTS")])
def test_networks_written_here_train_with_deep_supervision(runs, preprocessed_example: NnUNetEnv, name, cls):
    """PCT-Net and TransBTS derived from nnU-Net's own plans by their trainers: strides and patch in plans.json."""
    model = _done(runs, name, preprocessed_example)
    log = _log(model / f"fold_{FOLD}")
    assert f"Network: {cls}" in log and "deep supervision on" in log
    config = json.loads((model / "plans.json").read_text())["configurations"][CONFIGURATION]
    assert config["architecture"]["network_class_name"] == cls
    assert config["architecture"]["arch_kwargs"]["patch_size"] == config["patch_size"]

