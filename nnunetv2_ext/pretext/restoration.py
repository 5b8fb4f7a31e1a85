"""Image-restoration loss and its trivial baseline, shared by the restoration pretexts.

Models Genesis (Zhou et al., "Models Genesis", Medical Image Analysis 67, 2021, arXiv:2004.07882) and context
restoration by patch swapping (Chen et al., "Self-supervised learning for medical image analysis using image context
restoration", Medical Image Analysis 58, 2019) both train the network to return the original image from a corrupted
one with the L2 (mean squared error) loss over all voxels. A network that returns its input unchanged (the identity)
is exact wherever nothing was corrupted, so it is the baseline a restoration has to beat; where the corruption is
heavy (Models Genesis' out-painting fills most of the image with noise), so is a constant image, which a network that
learned nothing can also return: :func:`mean_intensity_mse`.

Pure tensor functions, no file I/O.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["restoration_mse", "identity_mse", "mean_intensity_mse"]


def restoration_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of a restoration over all voxels and channels (the L2 restoration loss of Zhou et al. 2021
    and Chen et al. 2019), in float32. ``prediction`` and ``target`` of the same shape (B, C, *spatial)."""
    if prediction.shape != target.shape:
        raise ValueError(f"prediction and target must have the same shape, got {tuple(prediction.shape)} and "
                         f"{tuple(target.shape)}")
    return F.mse_loss(prediction.float(), target.float())


def identity_mse(corrupted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The trivial baseline of :func:`restoration_mse`: the error of a network that returns its corrupted input
    unchanged. A restoration below it has learned to undo part of the corruption."""
    return restoration_mse(corrupted, target)


def mean_intensity_mse(target: torch.Tensor) -> torch.Tensor:
    """The other trivial baseline of :func:`restoration_mse`: the error of predicting each sample's and channel's own
    mean intensity everywhere (the best constant image, i.e. the mean variance of the target images; about 1 for
    z-scored images). It knows the target's mean, so a restoration below it has learned more than a constant.
    ``target`` (B, C, *spatial); float32."""
    if target.dim() < 3:
        raise ValueError(f"target must be (B, C, *spatial), got shape {tuple(target.shape)}")
    target = target.float()
    mean = target.mean(dim=tuple(range(2, target.dim())), keepdim=True)
    return restoration_mse(mean.expand_as(target), target)
