"""End to end through nnU-Net's own console commands (subprocesses), on the synthetic example dataset:
plan_and_preprocess -> nnunetv2_ext plans -> nnUNetv2_train (killed mid-run) -> nnUNetv2_train --c -> predict ->
evaluate_folder -> find_best_configuration -> export/install zip -> predict from the installed model."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import NnUNetEnv, assert_valid_predictions, console_script

TRAINER = "nnUNetTrainerMultiEncoder_debug"
PLANS = "nnUNetPlans_MultiEncoder"


def _train_folder(example: NnUNetEnv) -> Path:
    return example.results / f"{TRAINER}__{PLANS}__3d_fullres" / "fold_0"


def _epochs_in_log(log: Path) -> list[int]:
    return [int(m) for m in re.findall(r": Epoch (\d+)\s*$", log.read_text(), flags=re.MULTILINE)]


def _read_checkpoint(path: Path) -> dict:
    # our own checkpoint from this test: nnU-Net stores numpy scalars in its logging, so no weights_only here
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def trained(preprocessed_example: NnUNetEnv) -> NnUNetEnv:
    """Train the debug multi-encoder trainer, SIGKILL it after its first checkpoint, resume it with --c."""
    example = preprocessed_example
    folder = _train_folder(example)
    cmd = [console_script("nnUNetv2_train"), str(example.dataset_id), "3d_fullres", "0", "-tr", TRAINER,
           "-p", PLANS, "-device", "cpu"]
    proc = subprocess.Popen(cmd, env=example.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    latest = folder / "checkpoint_latest.pth"
    deadline = time.time() + 600
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    stderr = proc.communicate()[1]
    assert latest.exists(), f"no checkpoint_latest.pth before the run ended:\n{stderr[-4000:]}"
    assert not (folder / "checkpoint_final.pth").exists(), "the run finished before it could be interrupted"
    example.killed_at_epoch = _read_checkpoint(latest)["current_epoch"]
    logs_before = set(folder.glob("training_log_*.txt"))

    time.sleep(1.1)  # nnU-Net names logs by the second: make sure the resumed run writes a new one
    example.run(*cmd, "--c")
    resumed_logs = set(folder.glob("training_log_*.txt")) - logs_before
    assert len(resumed_logs) == 1
    example.resumed_log = resumed_logs.pop()
    return example


def test_resume_continues_from_the_checkpoint(trained: NnUNetEnv):
    """--c picks up the epoch counter, and the run ends at the trainer's num_epochs."""
    from nnunetv2_ext.training.multi_encoder import nnUNetTrainerMultiEncoder_debug

    epochs = _epochs_in_log(trained.resumed_log)
    assert trained.killed_at_epoch >= 1
    assert epochs[0] == trained.killed_at_epoch, \
        f"resumed at epoch {epochs[0]}, checkpoint says {trained.killed_at_epoch}"
    # the LR schedule continues too: poly decay (Taheri Otaghsara et al. 2025, eq. 2) at the resumed epoch, not the
    # initial LR
    trainer = nnUNetTrainerMultiEncoder_debug
    lrs = [float(x) for x in re.findall(r"Current learning rate: ([0-9.e-]+)", trained.resumed_log.read_text())]
    expected = trainer.initial_lr * (1 - epochs[0] / trainer.num_epochs) ** trainer.poly_exponent
    assert lrs[0] == pytest.approx(expected, abs=1e-5)
    final = _read_checkpoint(_train_folder(trained) / "checkpoint_final.pth")
    assert final["current_epoch"] == nnUNetTrainerMultiEncoder_debug.num_epochs
    assert final["trainer_name"] == TRAINER
    assert any(k.startswith("encoder.encoders.3.") for k in final["network_weights"])  # 4 encoders
    assert "Multi-encoder: 4 plain encoders [T1, T1Gd, T2, FLAIR]" in trained.resumed_log.read_text()
    assert (_train_folder(trained) / "progress.png").is_file()
    assert (_train_folder(trained) / "validation" / "summary.json").is_file()


def test_predict_and_evaluate(trained: NnUNetEnv, tmp_path: Path):
    pred = tmp_path / "pred"
    trained.run(console_script("nnUNetv2_predict"), "-i", str(trained.raw / "imagesTs"), "-o", str(pred),
                "-d", str(trained.dataset_id), "-c", "3d_fullres", "-f", "0", "-tr", TRAINER, "-p", PLANS,
                "-device", "cpu", "-npp", "1", "-nps", "1")
    assert_valid_predictions(pred, trained.raw / "imagesTs")

    model = trained.results / f"{TRAINER}__{PLANS}__3d_fullres"
    trained.run(console_script("nnUNetv2_evaluate_folder"), str(trained.raw / "labelsTs"), str(pred),
                "-djfile", str(model / "dataset.json"), "-pfile", str(model / "plans.json"), "-np", "1")
    summary = json.loads((pred / "summary.json").read_text())
    assert set(summary["mean"]) == {"(1, 2, 3)", "(2, 3)", "(3,)"}  # whole tumour, tumour core, enhancing
    assert all(0.0 <= v["Dice"] <= 1.0 or np.isnan(v["Dice"]) for v in summary["mean"].values())

    # the quickstart's picture of the same prediction: modalities, overlays and the training curve
    png = tmp_path / "overview.png"
    trained.run(console_script("nnunetv2_ext"), "overview", "-i", str(trained.raw / "imagesTs"), "--ref",
                str(trained.raw / "labelsTs"), "--pred", str(pred), "-m", str(model), "-o", str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_find_best_configuration_export_and_install(trained: NnUNetEnv, tmp_path: Path):
    trained.run(console_script("nnUNetv2_find_best_configuration"), str(trained.dataset_id), "-c", "3d_fullres",
                "-tr", TRAINER, "-p", PLANS, "-f", "0", "-np", "1")
    model = trained.results / f"{TRAINER}__{PLANS}__3d_fullres"
    assert (model / "crossval_results_folds_0" / "postprocessing.pkl").is_file()

    archive = tmp_path / "model.zip"
    trained.run(console_script("nnUNetv2_export_model_to_zip"), "-d", str(trained.dataset_id), "-o", str(archive),
                "-c", "3d_fullres", "-tr", TRAINER, "-p", PLANS, "-f", "0", "--not_strict")
    other_results = tmp_path / "other_results"
    other_results.mkdir()
    env = {"nnUNet_results": str(other_results)}
    trained.run(console_script("nnUNetv2_install_pretrained_model_from_zip"), str(archive), env=env)
    pred = tmp_path / "pred_installed"
    trained.run(console_script("nnUNetv2_predict"), "-i", str(trained.raw / "imagesTs"), "-o", str(pred),
                "-d", str(trained.dataset_id), "-c", "3d_fullres", "-f", "0", "-tr", TRAINER, "-p", PLANS,
                "-device", "cpu", "-npp", "1", "-nps", "1", env=env)
    assert_valid_predictions(pred, trained.raw / "imagesTs")


def test_trainer_found_only_through_discovery(preprocessed_example: NnUNetEnv):
    """nnU-Net's own lookup finds the trainer through nnUNet_extTrainer (in a fresh process), with its real module
    (so pickling and DDP workers work), and says how to enable it when the variable is unset."""
    code = ("import pickle; from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f; "
            "c = f('nnUNetTrainerMultiEncoder'); pickle.dumps(c); print('MODULE', c.__module__)")
    proc = preprocessed_example.run(sys.executable, "-c", code)
    assert "MODULE nnunetv2_ext.training.multi_encoder" in proc.stdout
    env = {k: v for k, v in preprocessed_example.env.items() if k != "nnUNet_extTrainer"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "nnUNet_extTrainer" in proc.stderr


def test_report_on_the_results_tree(trained: NnUNetEnv, tmp_path: Path):
    """`nnunetv2_ext report` scores the fold's validation predictions and writes the seed-style tables."""
    out = tmp_path / "report"
    trained.run(console_script("nnunetv2_ext"), "report", "--results", str(trained.results), "-o", str(out),
                "--trainers", TRAINER)
    models = (out / "table_models.md").read_text()
    assert f"{TRAINER}__{PLANS}__3d_fullres" in models and "Av. DSC" in models and "DSC WT" in models
    row = next(line for line in (out / "table_models.csv").read_text().splitlines()[1:] if TRAINER in line)
    dice = float(row.split(",")[2])
    ours = json.loads((_train_folder(trained) / "validation" / "metrics_ext.json").read_text())
    assert dice == pytest.approx(np.mean([ours["mean"][r]["dice"] for r in ("WT", "TC", "ET")]))
    # nnU-Net's own evaluation of the same predictions agrees on the whole-tumour Dice
    nnunet = json.loads((_train_folder(trained) / "validation" / "summary.json").read_text())
    assert ours["mean"]["WT"]["dice"] == pytest.approx(nnunet["mean"]["(1, 2, 3)"]["Dice"], abs=1e-6)
    assert "| 0 |" in (out / "table_folds.md").read_text()
    proc = trained.run(console_script("nnunetv2_ext"), "report", "--results", str(trained.results), "-o", str(out),
                       check=False)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr


def test_training_over_a_finished_run_is_refused(trained: NnUNetEnv):
    """nnU-Net would silently start over; this package's trainers refuse unless --c (or the explicit override)."""
    final = _train_folder(trained) / "checkpoint_final.pth"
    before = final.read_bytes()
    proc = trained.run(console_script("nnUNetv2_train"), str(trained.dataset_id), "3d_fullres", "0", "-tr", TRAINER,
                       "-p", PLANS, "-device", "cpu", check=False)
    assert proc.returncode != 0 and "pass --c to continue" in proc.stderr
    assert final.read_bytes() == before
