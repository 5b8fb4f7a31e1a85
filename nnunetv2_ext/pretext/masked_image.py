"""Masked image modelling (MIM) for a convolutional network: mask most of the local patches of a sub-volume and
reconstruct the masked voxels.

Wang et al. 2023 ("MIS-FM: 3D Medical Image Segmentation using Foundation Models Pretrained on a Large-Scale
Unannotated Dataset", arXiv:2306.16925) compare Volume Fusion with MIM (Table 2, their reference [8]: Z. Chen et al.,
"Masked Image Modeling Advances 3D Medical Image Analysis", WACV 2023, arXiv:2204.11716), "where local patches are
randomly masked at a high masking ratio for image restoration", pretraining the same 3D U-Net; MIS-FM gives no
masking ratio or patch size. Chen et al. 2023 carry MAE (He et al., "Masked Autoencoders Are Scalable Vision
Learners", CVPR 2022, arXiv:2111.06377) and SimMIM (Xie et al., "SimMIM: A Simple Framework for Masked Image
Modeling", CVPR 2022, arXiv:2111.09886) over to 3D and find that predicting raw voxel values with a high masking ratio
and a relatively small patch works best. The settings here:

- the image is tiled by a grid of ``patch_size`` patches, 16 voxels per axis by default (the token size of the
  ViT / UNETR encoders Chen et al. 2023 pretrain; they find smaller patches better than larger ones); exactly
  ``round(mask_ratio * n_patches)`` patches per sample are masked, chosen uniformly (MAE / SimMIM random masking);
- ``mask_ratio = 0.75``: MAE's default (He et al. 2022, sec. 4.1: 75 %), a high ratio as Chen et al. 2023 recommend
  (SimMIM's default is 0.6 for 32-pixel patches; its best ratio rises as the patch shrinks);
- SimMIM's formulation, not MAE's: a convolutional network sees the whole grid, so masked voxels are replaced (MAE
  drops its masked tokens, which a U-Net cannot), and the loss is SimMIM's L1 on the masked voxels only
  (:func:`~nnunetv2_ext.pretext.swin_proxies.masked_l1`);
- the replacement (SimMIM: a learnable mask token at the patch embedding) is a constant: ``"zero"`` (the default:
  the mean of a z-scored image, i.e. a token at the data mean), ``"mean"`` (each sample's and channel's mean of its
  visible voxels) or ``"noise"`` (standard normal). A network that wants a learnable token adds
  ``mask * token`` to its input itself.

Multi-channel input: one mask for all channels (the MRI modalities are co-registered, and a patch masked in one
modality only could be copied from the others at the same place: cross-modality prediction, not MIM).

A spatial size that ``patch_size`` does not divide gets a partial patch at the far border of that axis (the grid has
``ceil(size / patch)`` patches per axis); the masked fraction of the patches is exact, that of the voxels is exact
when every size is a multiple of the patch.

Pure tensor functions: generator-seeded, vectorised over the batch, on the device of the input, no file I/O.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from nnunetv2_ext.pretext.checks import check_images, is_int
from nnunetv2_ext.pretext.swin_proxies import masked_l1

__all__ = [
    "MASK_FILLS",
    "MaskedImageConfig",
    "patch_grid_shape",
    "random_patch_mask",
    "mask_patches",
    "masked_l1",
    "identity_masked_l1",
    "visible_mean_masked_l1",
    "trivial_baseline",
]

MASK_FILLS = ("zero", "mean", "noise")


@dataclass(frozen=True)
class MaskedImageConfig:
    """Settings of masked image modelling (Chen et al. 2023 after He et al. 2022 and Xie et al. 2022; see the module
    docstring).

    mask_ratio: fraction of the patches masked per sample, in (0, 1) (0.75).
    patch_size: patch extent per axis (z, y, x); a 2D image uses the last two (16, 16, 16).
    fill: what replaces the masked voxels, one of :data:`MASK_FILLS` ("zero").
    """

    mask_ratio: float = 0.75
    patch_size: Tuple[int, int, int] = (16, 16, 16)
    fill: str = "zero"

    def __post_init__(self) -> None:
        r = self.mask_ratio
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 < r < 1.0:
            raise ValueError(f"MaskedImageConfig.mask_ratio must lie strictly between 0 and 1 (the fraction of "
                             f"patches masked), got {r!r}")
        try:
            p = tuple(self.patch_size)
        except TypeError:
            raise ValueError(f"MaskedImageConfig.patch_size must be 3 ints >= 1 (z, y, x), got "
                             f"{self.patch_size!r}") from None
        if len(p) != 3 or not all(is_int(v) and v >= 1 for v in p):
            raise ValueError(f"MaskedImageConfig.patch_size must be 3 ints >= 1 (z, y, x), got {self.patch_size!r}")
        if self.fill not in MASK_FILLS:
            raise ValueError(f"MaskedImageConfig.fill must be one of {MASK_FILLS}, got {self.fill!r}")
        object.__setattr__(self, "patch_size", p)


def patch_grid_shape(spatial_shape, cfg: MaskedImageConfig = MaskedImageConfig()) -> Tuple[int, ...]:
    """Patches per axis, ``ceil(size / patch)``, for a 2D or 3D ``spatial_shape``; raises ``ValueError`` when the
    grid has fewer than 2 patches (nothing would stay visible, or nothing be masked)."""
    shape = tuple(int(s) for s in spatial_shape)
    if len(shape) not in (2, 3) or not all(s >= 1 for s in shape):
        raise ValueError(f"masked image modelling needs 2 or 3 spatial sizes >= 1, got {shape}")
    patch = cfg.patch_size[-len(shape):]
    grid = tuple(math.ceil(s / p) for s, p in zip(shape, patch))
    if math.prod(grid) < 2:
        raise ValueError(f"patch_size {patch} leaves one patch on a {shape} image: nothing to mask and keep; use a "
                         f"patch smaller than the image on at least one axis")
    return grid


def random_patch_mask(batch: int, spatial_shape, cfg: MaskedImageConfig = MaskedImageConfig(),
                      generator: Optional[torch.Generator] = None, device: torch.device | str | None = None
                      ) -> torch.Tensor:
    """Random patch mask of a batch, bool (B, 1, *spatial), True = masked.

    Per sample exactly ``n = round(mask_ratio * n_patches)`` (kept within ``1 .. n_patches - 1``) patches of the
    grid of :func:`patch_grid_shape`, chosen uniformly (the first ``n`` of a random permutation, as MAE / SimMIM).
    """
    if not is_int(batch) or batch < 1:
        raise ValueError(f"batch must be an int >= 1, got {batch!r}")
    shape = tuple(int(s) for s in spatial_shape)
    grid = patch_grid_shape(shape, cfg)
    patch = cfg.patch_size[-len(shape):]
    n_patches = math.prod(grid)
    n_masked = min(n_patches - 1, max(1, round(cfg.mask_ratio * n_patches)))
    target = torch.device(device) if device is not None else torch.device("cpu")
    draw = generator.device if generator is not None else target
    order = torch.rand((batch, n_patches), generator=generator, device=draw).to(target).argsort(1)
    masked_patch = torch.zeros((batch, n_patches), dtype=torch.bool, device=target)
    masked_patch.scatter_(1, order[:, :n_masked], True)
    index = torch.zeros((1,) * len(shape), dtype=torch.int64, device=target)
    for d, (s, p, g) in enumerate(zip(shape, patch, grid)):
        view = [1] * len(shape)
        view[d] = s
        index = index * g + (torch.arange(s, device=target) // p).view(view)
    flat = index.expand(shape).reshape(1, -1).expand(batch, -1)
    return masked_patch.gather(1, flat).view((batch, 1) + shape)


def mask_patches(images: torch.Tensor, cfg: MaskedImageConfig = MaskedImageConfig(),
                 generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The MIM input and target of a batch ``images`` (B, C, *spatial), floating point, 2D or 3D.

    Returns ``(inputs, targets, mask)``: ``inputs`` like ``images`` with the masked voxels (all channels) replaced by
    ``cfg.fill``; ``targets`` a copy of ``images``; ``mask`` bool (B, 1, *spatial), True = masked (the voxels the
    loss :func:`masked_l1` counts). All random numbers come from ``generator`` (on its device).
    """
    check_images(images, "mask_patches")
    b = images.shape[0]
    mask = random_patch_mask(b, images.shape[2:], cfg, generator, images.device)
    if cfg.fill == "zero":
        fill = torch.zeros((), dtype=images.dtype, device=images.device)
    elif cfg.fill == "mean":
        fill = _visible_mean(images, mask).to(images.dtype)
    else:
        draw = generator.device if generator is not None else images.device
        fill = torch.randn(images.shape, generator=generator, device=draw).to(images.device, images.dtype)
    return torch.where(mask, fill, images), images.clone(), mask


def _visible_mean(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the visible (unmasked) voxels per sample and channel, float32 (B, C, 1, ...)."""
    visible = (~mask).expand_as(images).float()
    dims = tuple(range(2, images.dim()))
    return (images.float() * visible).sum(dims, keepdim=True) / visible.sum(dims, keepdim=True).clamp_min(1)


# ---------------------------------------------------------------------------------------------------------------------
# learnability: the metric (masked_l1) and its trivial baselines


def identity_masked_l1(inputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """:func:`masked_l1` of a network that returns its masked input unchanged (the fill value at masked voxels)."""
    return masked_l1(inputs, targets, mask)


def visible_mean_masked_l1(inputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """:func:`masked_l1` of predicting, at every masked voxel, the mean of the sample's visible voxels in that
    channel: a constant per image that a network can compute from its input."""
    return masked_l1(_visible_mean(inputs, mask).expand_as(targets), targets, mask)


def trivial_baseline(inputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, str]:
    """The stronger (lower) of :func:`identity_masked_l1` and :func:`visible_mean_masked_l1`, with its name
    (``"identity"`` or ``"visible mean"``): a reconstruction below it has learned more than a constant fill."""
    identity = identity_masked_l1(inputs, targets, mask)
    mean = visible_mean_masked_l1(inputs, targets, mask)
    return (identity, "identity") if bool(identity <= mean) else (mean, "visible mean")
