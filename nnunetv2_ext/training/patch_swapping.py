"""Context restoration by patch swapping as an nnU-Net pretext trainer (Chen et al., "Self-supervised learning for
medical image analysis using image context restoration", Medical Image Analysis 58, 101539, 2019): the plans' network
puts back the patches swapped in pairs (``nnunetv2_ext.pretext.patch_swapping``)."""
from __future__ import annotations

import torch

from nnunetv2_ext.pretext.patch_swapping import PatchSwappingConfig, swap_patches
from nnunetv2_ext.training.base import NarrowDebugScheduleMixin
from nnunetv2_ext.training.pretext_base import RestorationPretextTrainer

__all__ = ["nnUNetTrainerPatchSwapping", "nnUNetTrainerPatchSwapping_debug"]


class nnUNetTrainerPatchSwapping(RestorationPretextTrainer):
    """Context restoration (Chen et al. 2019): T pairs of isolated patches of each sample are swapped (the same in
    every channel; T and the patch size of MIS-FM's implementation, scaled to the plans' patch: ``ps_config``) and
    the network (one output per input channel) restores the original, L2 loss over all voxels (``restoration_mse``).

    Optimiser: MIS-FM's for its patch-swapping baseline (Wang et al. 2023, arXiv:2306.16925, Table 2; the authors'
    HiLab-git/PyMIC_examples ``seg_self_sup/lung/config/luna_pretrain/unet3d_patchswap.cfg``: Adam, lr 1e-3, weight
    decay 1e-5, the lr halved at a fixed iteration interval), the one of this package's Volume Fusion; Chen et al.
    train their 2D networks per application and give no setting for a 3D U-Net.

    Validation: the restoration MSE against the stronger trivial baseline on the same validation batches (log line
    and ``pretext_metrics.json``): returning the swapped input (the identity, exact outside the swapped patches) or
    each image's own mean intensity; nnU-Net's "pseudo dice" slot shows the share of that baseline's error removed.
    """
    ps_config = PatchSwappingConfig()
    pretext_name = "Patch swapping"
    validation_hint = "the restoration MSE against its trivial baseline in the log and pretext_metrics.json"

    def pretext_batch(self, data: torch.Tensor, generator: torch.Generator):
        """The images with their patches swapped, and the originals."""
        inputs, target, _ = swap_patches(data, self.ps_config, generator)
        return inputs, target


class nnUNetTrainerPatchSwapping_debug(NarrowDebugScheduleMixin, nnUNetTrainerPatchSwapping):
    """3 epochs of 4 iterations, no mirroring: smoke tests and CPU examples."""
