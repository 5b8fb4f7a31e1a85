"""Context restoration by patch swapping (Chen et al., "Self-supervised learning for medical image analysis using image
context restoration", Medical Image Analysis 58, 101539, 2019), one of the three baselines Volume Fusion is compared
with in Wang et al. 2023 ("MIS-FM: 3D Medical Image Segmentation using Foundation Models Pretrained on a Large-Scale
Unannotated Dataset", arXiv:2306.16925, Table 2: "random small patches in an image are swapped for context
restoration").

Chen et al. 2019: two isolated small patches of an image are selected at random and their contents swapped; repeated
T times, this gives an image with the same intensity distribution but disordered spatial context, and the network
restores the original with the L2 loss (:func:`~nnunetv2_ext.pretext.restoration.restoration_mse`). Chen et al. set T
and the patch size per 2D application; MIS-FM does not state the ones of its 3D experiment, so they follow the MIS-FM
authors' implementation (HiLab-git/PyMIC, ``pymic/transform/intensity.py: PatchSwaping``, commit a906dfc): T uniform
in 10 .. 20 per sample (both inclusive) and 8 x 16 x 16 patches for the 64 x 128 x 128 sub-volumes of MIS-FM
(sec. 4), scaled here per axis to the actual patch size (``volume_fusion.scale_extent_range``; a 2D image uses the
last two axes). T refers to that 3D sub-volume (up to 40 of its 512 cells, 8 % of the voxels); an image with fewer
cells (a 2D slice: 64) swaps proportionally fewer pairs (:func:`swap_count_scale`), the same fraction of the image.

Isolated patches: PyMIC draws both corners anywhere, so patches can overlap. Here each sample is tiled by a grid of
patch-sized cells (random grid offset per sample and axis) and the 2T patches are 2T distinct cells, so they never
overlap and every swap exchanges whole patches: the result is a permutation of the sample's voxels (the intensity
distribution Chen et al. preserve). When the grid has fewer than 2T cells, T is cut to ``cells // 2``.

Multi-channel input: the same patches are swapped in every channel (the MRI modalities are co-registered; a swap in
one modality only could be undone by copying the others at the same place, a cross-modality shortcut).

Pure tensor functions: generator-seeded, vectorised over the batch (Python loops over the spatial axes only), on the
device of the input, no file I/O.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from nnunetv2_ext.pretext.checks import check_images, int_triple, is_int
from nnunetv2_ext.pretext.restoration import identity_mse, restoration_mse
from nnunetv2_ext.pretext.volume_fusion import scale_extent_range

__all__ = ["PatchSwappingConfig", "swap_patch_extent", "swap_count_scale", "swap_patches", "restoration_mse",
           "identity_mse"]


@dataclass(frozen=True)
class PatchSwappingConfig:
    """Settings of patch swapping (Chen et al. 2019; numbers of the MIS-FM authors' PyMIC ``PatchSwaping``).

    min_swaps / max_swaps: swaps T per sample uniform in ``min_swaps .. max_swaps``, both inclusive (10 .. 20).
    ref_shape: the sub-volume size ``patch_extent`` refers to (MIS-FM: 64 x 128 x 128).
    patch_extent: the swapped patch at ``ref_shape`` (8 x 16 x 16), scaled per axis by :func:`swap_patch_extent`.
    """

    min_swaps: int = 10
    max_swaps: int = 20
    ref_shape: Tuple[int, int, int] = (64, 128, 128)
    patch_extent: Tuple[int, int, int] = (8, 16, 16)

    def __post_init__(self) -> None:
        if not (is_int(self.min_swaps) and is_int(self.max_swaps)) or not 1 <= self.min_swaps <= self.max_swaps:
            raise ValueError(f"PatchSwappingConfig needs ints with 1 <= min_swaps <= max_swaps, got "
                             f"min_swaps={self.min_swaps!r}, max_swaps={self.max_swaps!r}")
        ref = int_triple("PatchSwappingConfig", "ref_shape", self.ref_shape)
        ext = int_triple("PatchSwappingConfig", "patch_extent", self.patch_extent)
        if not all(e <= r for e, r in zip(ext, ref)):
            raise ValueError(f"PatchSwappingConfig needs patch_extent <= ref_shape on every axis, got {ext} and {ref}")
        object.__setattr__(self, "ref_shape", ref)
        object.__setattr__(self, "patch_extent", ext)


def swap_patch_extent(cfg: PatchSwappingConfig, spatial_shape) -> Tuple[int, ...]:
    """The swapped patch's extent per axis for ``spatial_shape``: ``cfg.patch_extent`` scaled by ``size / ref`` per
    axis, rounded half up, within ``1 .. size`` (e.g. 8 x 16 x 16 at 64 x 128 x 128, 4 x 4 for a 32 x 32 image)."""
    return scale_extent_range(cfg.ref_shape, cfg.patch_extent, cfg.patch_extent, spatial_shape)[0]


def swap_count_scale(cfg: PatchSwappingConfig, spatial_shape) -> float:
    """Factor on T for ``spatial_shape``: its number of grid cells over the ``prod(ref_shape // patch_extent)`` cells
    of the 3D reference sub-volume (512 for MIS-FM's), so that the swapped fraction of the image stays the
    reference's. A 3D patch whose sizes the scaled extent divides has as many cells as the reference (factor 1); a 2D
    image has one slice's worth (1/8 for the defaults: T = 10 .. 20 becomes 1 .. 3 swaps)."""
    extent = swap_patch_extent(cfg, spatial_shape)
    cells = math.prod(s // e for s, e in zip(spatial_shape, extent))
    return cells / math.prod(r // e for r, e in zip(cfg.ref_shape, cfg.patch_extent))


def swap_patches(images: torch.Tensor, cfg: PatchSwappingConfig = PatchSwappingConfig(),
                 generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Context-disordered input and target of a batch (Chen et al. 2019, sec. 3 "context restoration").

    ``images`` (B, C, *spatial), floating point, 2D or 3D. Per sample: a grid of cells of :func:`swap_patch_extent`
    with a random offset (uniform over the slack ``size - cells * extent`` per axis), T swaps (``cfg.min_swaps ..
    cfg.max_swaps``, at most ``cells // 2``), the 2T patches the first 2T cells of a random permutation, cell ``2j``
    exchanged with cell ``2j + 1``; the same for every channel.

    Returns ``(inputs, targets, mask)``: ``inputs`` like ``images`` (a permutation of each sample's voxels);
    ``targets`` a copy of ``images``; ``mask`` bool (B, 1, *spatial), True in the swapped patches (everything outside
    is untouched). The L2 restoration loss covers all voxels. All random numbers come from ``generator``.
    """
    check_images(images, "swap_patches")
    b, c = images.shape[:2]
    spatial = tuple(images.shape[2:])
    nd = len(spatial)
    extent = swap_patch_extent(cfg, spatial)
    grid = tuple(s // e for s, e in zip(spatial, extent))
    n_cells = math.prod(grid)
    if n_cells < 2:
        raise ValueError(f"patch swapping needs at least 2 patches of {extent} in a {spatial} image, got {n_cells}; "
                         f"use a smaller PatchSwappingConfig.patch_extent")
    device = images.device
    draw = generator.device if generator is not None else device

    def rand(shape) -> torch.Tensor:
        return torch.rand(shape, generator=generator, device=draw).to(device)

    swaps = torch.randint(cfg.min_swaps, cfg.max_swaps + 1, (b,), generator=generator, device=draw).to(device)
    scale = swap_count_scale(cfg, spatial)
    swaps = torch.floor(swaps.double() * scale + 0.5).long().clamp(min=1)
    t_max = max(1, min(math.floor(cfg.max_swaps * scale + 0.5), n_cells // 2))
    swaps = swaps.clamp(max=t_max)
    order = rand((b, n_cells)).argsort(1)
    first, second = order[:, 0:2 * t_max:2], order[:, 1:2 * t_max:2]  # (B, t_max)
    active = torch.arange(t_max, device=device)[None, :] < swaps[:, None]
    partner = torch.arange(n_cells, device=device).repeat(b, 1)
    partner.scatter_(1, first, torch.where(active, second, first))
    partner.scatter_(1, second, torch.where(active, first, second))

    # per voxel: its cell (mixed radix over the grid), its offset inside the cell, and whether it lies in the grid
    cell = torch.zeros((b,) + (1,) * nd, dtype=torch.int64, device=device)
    inside = torch.ones((b,) + (1,) * nd, dtype=torch.bool, device=device)
    local = []
    for d, (s, e, g) in enumerate(zip(spatial, extent, grid)):
        slack = s - g * e
        offset = (rand((b,)) * (slack + 1)).floor().long().clamp(max=slack)
        rel = torch.arange(s, device=device)[None, :] - offset[:, None]  # (B, s)
        view = [b] + [1] * nd
        view[1 + d] = s
        inside = inside & ((rel >= 0) & (rel < g * e)).view(view)
        cell = cell * g + (rel.clamp(0, g * e - 1) // e).view(view)
        local.append((offset, rel.clamp(0, g * e - 1) % e, view))
    cell = cell.expand((b,) + spatial).reshape(b, -1)
    inside = inside.expand((b,) + spatial).reshape(b, -1)
    moved = partner.gather(1, cell)
    source = torch.zeros_like(cell)
    stride = n_cells
    for d, (s, e, g) in enumerate(zip(spatial, extent, grid)):
        stride //= g
        offset, within, view = local[d]
        cell_d = (moved // stride) % g
        within_d = within.view(view).expand((b,) + spatial).reshape(b, -1)
        coord_d = torch.arange(s, device=device).view(view[1:]).expand(spatial).reshape(1, -1)
        src_d = torch.where(inside, offset[:, None] + cell_d * e + within_d, coord_d)
        source = source * s + src_d
    inputs = images.reshape(b, c, -1).gather(2, source[:, None, :].expand(b, c, -1)).reshape(images.shape)
    mask = (inside & (moved != cell)).view((b, 1) + spatial)
    return inputs, images.clone(), mask
