"""Models Genesis image restoration as an nnU-Net pretext trainer (Zhou et al., "Models Genesis", Medical Image
Analysis 67, 101840, 2021, arXiv:2004.07882): the plans' network restores each sub-volume from its corrupted copy
(local pixel shuffling, a non-linear intensity curve, in- or out-painting: ``nnunetv2_ext.pretext.model_genesis``)."""
from __future__ import annotations

from typing import Dict, List

import numpy as np
import torch

from nnunetv2_ext.pretext.model_genesis import ModelsGenesisConfig, identity_mse, models_genesis, restoration_mse
from nnunetv2_ext.pretext.restoration import mean_intensity_mse
from nnunetv2_ext.training.base import DebugScheduleMixin
from nnunetv2_ext.training.lr_schedules import StepLRScheduler
from nnunetv2_ext.training.pretext_base import PretextTrainerBase
from nnunetv2_ext.training.pretext_metrics import pretext_metric

__all__ = ["nnUNetTrainerModelGenesis", "nnUNetTrainerModelGenesis_debug"]


class nnUNetTrainerModelGenesis(PretextTrainerBase):
    """Models Genesis (Zhou et al. 2021): the network (one output per input channel) returns the original image from
    the corrupted one, L2 loss over all voxels (``restoration_mse``); the corruption's settings are the authors'
    (``ModelsGenesisConfig``), its spatial decisions shared by the MRI channels.

    Optimiser: MIS-FM's for its Models Genesis baseline (Wang et al. 2023, arXiv:2306.16925, Table 2; the authors'
    HiLab-git/PyMIC_examples ``seg_self_sup/lung/config/luna_pretrain/unet3d_genesis.cfg``: Adam, lr 1e-3, weight
    decay 1e-5, the lr halved at a fixed iteration interval), the one of this package's Volume Fusion, so that the
    pretexts of the benchmark differ in their task only. Zhou et al.'s own code (MrGiovanni/ModelsGenesis
    ``pytorch/config.py``) trains with SGD lr 1, momentum 0.9, a U-Net with a sigmoid output on intensities in
    [0, 1]; on nnU-Net's linear-output network and z-scored images that only learned the constant mean (the tiny data
    of ``tests/training/test_pretext_learning.py``, 150 steps: MSE 0.997 against 0.999 for each image's own mean;
    this Adam: 0.88, and 0.68 after 400 steps).

    Validation: the restoration MSE against the stronger trivial baseline on the same validation batches (log line
    and ``pretext_metrics.json``): returning the corrupted input (the identity) or each image's own mean intensity (a
    constant image, which beats the identity here: out-painting fills most of an image with noise); nnU-Net's
    "pseudo dice" slot shows the share of that baseline's error removed.
    """
    mg_config = ModelsGenesisConfig()
    pretext_name = "Models Genesis"
    validation_hint = "the restoration MSE against its trivial baseline in the log and pretext_metrics.json"
    # Wang et al. 2023 (MIS-FM) for its baselines, as nnUNetTrainerVolumeFusion: Adam, lr 1e-3, weight decay 1e-5,
    # the lr halved every 20k iterations (the shorter end of MIS-FM's 20k-50k; their PyMIC config for Models Genesis:
    # 40k)
    initial_lr = 1e-3
    weight_decay = 1e-5
    lr_halving_iterations = 20000

    def _build_loss(self):
        return restoration_mse

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay)
        halving_epochs = max(1, round(self.lr_halving_iterations / self.num_iterations_per_epoch))
        return optimizer, StepLRScheduler(optimizer, self.initial_lr, halving_epochs, gamma=0.5)

    def pretext_batch(self, data: torch.Tensor, generator: torch.Generator):
        """The corrupted images and the originals (Zhou et al. 2021, ``generate_pair``)."""
        inputs, target, _ = models_genesis(data, self.mg_config, generator)
        return inputs, target

    def validation_values(self, inputs: torch.Tensor, target: torch.Tensor, output: torch.Tensor) -> dict:
        return {"mse": float(restoration_mse(output, target)), "identity_mse": float(identity_mse(inputs, target)),
                "mean_intensity_mse": float(mean_intensity_mse(target))}

    def pretext_metrics(self, values: Dict[str, np.ndarray]) -> List[dict]:
        baselines = {"identity": values["identity_mse"].mean(), "target mean": values["mean_intensity_mse"].mean()}
        name = min(baselines, key=baselines.get)
        return [pretext_metric("restoration MSE", values["mse"].mean(), baselines[name], name, higher_is_better=False)]


class nnUNetTrainerModelGenesis_debug(DebugScheduleMixin, nnUNetTrainerModelGenesis):
    """3 epochs of 4 iterations, no mirroring: smoke tests and CPU examples."""
