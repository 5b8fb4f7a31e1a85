"""Models Genesis image restoration as an nnU-Net pretext trainer (Zhou et al., "Models Genesis", Medical Image
Analysis 67, 101840, 2021, arXiv:2004.07882): the plans' network restores each sub-volume from its corrupted copy
(local pixel shuffling, a non-linear intensity curve, in- or out-painting: ``nnunetv2_ext.pretext.model_genesis``)."""
from __future__ import annotations

import torch

from nnunetv2_ext.pretext.model_genesis import ModelsGenesisConfig, models_genesis
from nnunetv2_ext.training.base import NarrowDebugScheduleMixin
from nnunetv2_ext.training.pretext_base import RestorationPretextTrainer

__all__ = ["nnUNetTrainerModelGenesis", "nnUNetTrainerModelGenesis_debug"]


class nnUNetTrainerModelGenesis(RestorationPretextTrainer):
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

    def pretext_batch(self, data: torch.Tensor, generator: torch.Generator):
        """The corrupted images and the originals (Zhou et al. 2021, ``generate_pair``)."""
        inputs, target, _ = models_genesis(data, self.mg_config, generator)
        return inputs, target


class nnUNetTrainerModelGenesis_debug(NarrowDebugScheduleMixin, nnUNetTrainerModelGenesis):
    """3 epochs of 4 iterations, no mirroring: smoke tests and CPU examples."""
