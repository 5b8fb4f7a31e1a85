"""What every trainer of this package shares: hyper-parameters as class attributes and atomic checkpoints."""
from __future__ import annotations

import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

# nnUNetTrainer.__init__ assigns these as instance attributes; a subclass sets them as class attributes instead
HYPERPARAMETERS = ("initial_lr", "weight_decay", "num_epochs", "num_iterations_per_epoch",
                   "num_val_iterations_per_epoch", "save_every", "oversample_foreground_percent")


class ExtTrainerBase(nnUNetTrainer):
    """Base of this package's trainers.

    - Hyper-parameters are class attributes (one-line variants, nnU-Net style): any of ``HYPERPARAMETERS`` defined
      on a subclass overrides nnUNetTrainer's default.
    - Checkpoints are written to ``<name>.partial`` and renamed into place, so a crash or a full disk during the
      write never destroys the previous checkpoint (nnU-Net writes in place). Only rank 0 writes, as in nnU-Net.
    """

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        for name in HYPERPARAMETERS:
            value = getattr(type(self), name, None)
            if value is not None:
                setattr(self, name, value)

    def save_checkpoint(self, filename: str) -> None:
        partial = filename + ".partial"
        super().save_checkpoint(partial)
        if self.local_rank == 0 and os.path.isfile(partial):
            os.replace(partial, filename)


class NoMirroringMixin(nnUNetTrainer):
    """No mirroring augmentation and no test-time mirroring (as nnU-Net's nnUNetTrainerNoMirroring)."""

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch_size, None
