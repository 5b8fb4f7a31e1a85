"""Masked image modelling as an nnU-Net pretext trainer (Z. Chen et al., "Masked Image Modeling Advances 3D Medical
Image Analysis", WACV 2023, arXiv:2204.11716, in SimMIM's formulation: Xie et al., "SimMIM: A Simple Framework for
Masked Image Modeling", CVPR 2022, arXiv:2111.09886): the plans' network reconstructs the masked patches of each
sub-volume (``nnunetv2_ext.pretext.masked_image``)."""
from __future__ import annotations

from dataclasses import replace
from typing import Dict, List, Sequence

import numpy as np
import torch

from nnunetv2_ext.pretext.masked_image import (
    MaskedImageConfig,
    identity_masked_l1,
    mask_patches,
    masked_l1,
    visible_mean_masked_l1,
)
from nnunetv2_ext.pretext.volume_fusion import scale_extent_range
from nnunetv2_ext.training.base import NarrowDebugScheduleMixin
from nnunetv2_ext.training.lr_schedules import StepLRScheduler
from nnunetv2_ext.training.pretext_base import PretextTrainerBase
from nnunetv2_ext.training.pretext_metrics import pretext_metric

__all__ = ["nnUNetTrainerMaskedImage", "nnUNetTrainerMaskedImage_debug"]


def masked_reconstruction_loss(output: torch.Tensor, target: Sequence[torch.Tensor]) -> torch.Tensor:
    """SimMIM's loss on the target ``[images, mask]``: the L1 of the reconstruction on the masked voxels only."""
    images, mask = target
    return masked_l1(output, images, mask)


class nnUNetTrainerMaskedImage(PretextTrainerBase):
    """Masked image modelling (Chen et al. 2023; SimMIM): 75 % of the patches of each sample are replaced by zeros
    (the mean of a z-scored image; one mask for all channels) and the network (one output per input channel)
    reconstructs them, L1 on the masked voxels (``masked_reconstruction_loss``).

    Patch size: Chen et al.'s 16 voxels per axis at their 96 x 96 x 96 crops (``mim_reference_shape``), scaled per
    axis to the plans' patch (``volume_fusion.scale_extent_range``, as patch swapping and Volume Fusion scale theirs),
    so that a patch covers the same fraction of the image (5 x 5 patches of a 32 x 32 one).

    Optimiser of Chen et al. 2023 (chenz53/MIM-Med3D, ``code/configs/ssl/brats/vitsimmim_base_m0.75_t1.yaml``):
    AdamW, lr 3e-4, weight decay 1e-5, a constant lr (their configuration names no scheduler).

    Validation: the masked L1 against the stronger trivial baseline on the same validation batches (log line and
    ``pretext_metrics.json``): returning the masked input (the zero fill) or each image's mean over its visible voxels;
    nnU-Net's "pseudo dice" slot shows the share of that baseline's error removed.
    """
    mim_config = MaskedImageConfig()
    mim_reference_shape = (96, 96, 96)   # Chen et al. 2023: 96^3 crops, 16^3 patches (MaskedImageConfig.patch_size)
    pretext_name = "Masked image modelling"
    validation_hint = "the masked L1 against its trivial baseline in the log and pretext_metrics.json"
    # Chen et al. 2023 (MIM-Med3D SimMIM configuration): AdamW, lr 3e-4, weight decay 1e-5, constant lr
    initial_lr = 3e-4
    weight_decay = 1e-5

    def _build_loss(self):
        return masked_reconstruction_loss

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay)
        return optimizer, StepLRScheduler(optimizer, self.initial_lr, step_epochs=1, gamma=1.0)  # a constant lr

    def mim_config_for(self, spatial_shape: Sequence[int]) -> MaskedImageConfig:
        """``mim_config`` with its patch size scaled from ``mim_reference_shape`` to ``spatial_shape`` (2D: the
        last two axes)."""
        patch = self.mim_config.patch_size
        scaled = scale_extent_range(self.mim_reference_shape, patch, patch, tuple(spatial_shape))[0]
        return replace(self.mim_config, patch_size=patch[:3 - len(scaled)] + scaled)

    def pretext_batch(self, data: torch.Tensor, generator: torch.Generator):
        """The masked images; target ``[images, mask]`` (mask bool (B, 1, *spatial), True = masked)."""
        inputs, target, mask = mask_patches(data, self.mim_config_for(data.shape[2:]), generator)
        return inputs, [target, mask]

    def validation_values(self, inputs: torch.Tensor, target, output: torch.Tensor) -> dict:
        images, mask = target
        return {"masked_l1": float(masked_l1(output, images, mask)),
                "identity_masked_l1": float(identity_masked_l1(inputs, images, mask)),
                "visible_mean_masked_l1": float(visible_mean_masked_l1(inputs, images, mask))}

    def pretext_metrics(self, values: Dict[str, np.ndarray]) -> List[dict]:
        baselines = {"identity": values["identity_masked_l1"].mean(),
                     "visible mean": values["visible_mean_masked_l1"].mean()}
        name = min(baselines, key=baselines.get)
        return [pretext_metric("masked L1", values["masked_l1"].mean(), baselines[name], name,
                               higher_is_better=False)]


class nnUNetTrainerMaskedImage_debug(NarrowDebugScheduleMixin, nnUNetTrainerMaskedImage):
    """3 epochs of 4 iterations, no mirroring: smoke tests and CPU examples."""
