"""Tiny pretext trainers for the training tests: the real trainer classes on a 3-stage 2D ``MultiEncoderUNet`` with
32x32 patches, initialised as ``nnUNetv2_train`` does (network, optimiser, lr scheduler, loss) on the CPU, without
any dataset (batches are made in memory)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

FIXTURES = Path(__file__).resolve().parents[1] / "planning" / "fixtures"
SIZE = 32
SEED = 0


def tiny_plans(batch_size: int, features=(8, 16, 32)) -> dict:
    """The tiny fixture plans with a '2d' configuration naming a small multi-encoder U-Net on 32x32 patches."""
    plans = json.loads((FIXTURES / "nnUNetPlans_tiny.json").read_text())
    config = plans["configurations"]["2d"]
    config.update(batch_size=batch_size, patch_size=[SIZE, SIZE])
    config["architecture"] = {
        "network_class_name": "nnunetv2_ext.architectures.multi_encoder.MultiEncoderUNet",
        "arch_kwargs": {
            "n_stages": 3, "features_per_stage": list(features), "conv_op": "torch.nn.modules.conv.Conv2d",
            "kernel_sizes": [[3, 3]] * 3, "strides": [[1, 1], [2, 2], [2, 2]], "n_conv_per_stage": [1, 1, 1],
            "n_conv_per_stage_decoder": [1, 1], "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
            "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True}},
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
    plans["continue_training"] = False  # nnUNetTrainer.__init__ of nnunetv2 >= 2.7 pops it
    return plans


def tiny_trainer(cls, channel_names: dict, batch_size: int, tmp_path, monkeypatch, features=(8, 16, 32)
                 ) -> nnUNetTrainer:
    """``cls`` on the tiny plans, initialised (``trainer.initialize()``), its pretext training stream seeded as
    ``on_train_start`` seeds it on rank 0 (``on_train_start`` itself is not run: dataloaders, plans copy)."""
    from nnunetv2_ext.training.pretext_base import PretextTrainerBase

    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    # initialize() reads the kind of the preprocessed cases from their file ending; no case is ever loaded here
    data = tmp_path / "preprocessed" / "Dataset992_SyntheticBraTS" / "nnUNetPlans_2d"
    data.mkdir(parents=True)
    (data / "case.npz").touch()
    dataset_json = {"channel_names": channel_names, "labels": {"background": 0, "structure": 1},
                    "numTraining": 1, "file_ending": ".nii.gz"}
    trainer = cls(tiny_plans(batch_size, features), "2d", 0, dataset_json, torch.device("cpu"))
    torch.manual_seed(SEED)  # the network's initial weights
    trainer.initialize()  # the network, optimiser, lr scheduler and loss the trainer builds for nnUNetv2_train
    if isinstance(trainer, PretextTrainerBase):
        trainer.seed_training_stream()
    return trainer
