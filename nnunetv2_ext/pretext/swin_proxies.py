"""Swin UNETR self-supervised proxy tasks: rotation, masked-volume inpainting, contrastive coding.

Cox et al. 2024 ("BrainSegFounder: Towards 3D Foundation Models for Neuroimage Segmentation"), section 2.3: "Adopting
the methodology from Tang et al. (2022), the Swin-UNETR encoder is pretrained through three distinct proxy tasks ...:
masked volume inpainting, 3D image rotation, and contrastive coding"; the input crops are "augmented with random inner
cutout and rotation". Tang et al. (2022, "Self-Supervised Pre-Training of Swin Transformers for 3D Medical Image
Analysis", CVPR) define the total loss

    L_tot = lambda_1 L_inpaint + lambda_2 L_contrast + lambda_3 L_rot,       lambda_1 = lambda_2 = lambda_3 = 1

with L_inpaint the L1 distance of the reconstruction of the masked view to the unmasked view, L_rot the cross-entropy
of the rotation class (k x 90 deg, k in 0..3) and L_contrast the NT-Xent loss between the two views (temperature 0.5).

Details the papers leave open follow the authors' code (Project-MONAI/research-contributions, SwinUNETR/Pretrain:
``utils/ops.py: rot_rand, patch_rand_drop, aug_rand``; ``losses/loss.py: Contrast, Loss``; ``main.py``):

- two views per sample, each rotated independently by ``rot90(k, (2, 3))`` of a ``(C, H, W, D)`` sample, i.e. over the
  last two spatial axes; the reconstruction target is the rotated, unmasked view;
- masking: a target fraction ``U(0, 0.3)`` of the voxels is drawn per sample, then boxes are added one after another
  (each extent uniform between 5 % and 25 % of the axis, clipped at the border, the same box for all channels) until the
  summed box volume reaches the target; each box is filled with standard normal noise min-max normalised to [0, 1]
  over the box (all channels together); here over all masked voxels of the sample (see :func:`random_box_mask`).

Not reproduced: ``aug_rand``'s second cutout that pastes regions of another sample of the batch.

Everything here is a pure tensor function: generator-seeded, vectorised over the batch (Python loops run over box
chunks, box corners and rotation classes only), no file I/O.
"""
from __future__ import annotations

import itertools
from typing import Callable, Dict, Optional, Tuple, cast

import torch
import torch.nn.functional as F

from nnunetv2_ext.pretext.checks import check_images

__all__ = [
    "N_ROTATIONS",
    "ROTATION_DIMS",
    "MAX_MASK_FRACTION",
    "MIN_BOX_FRACTION",
    "MAX_BOX_FRACTION",
    "TEMPERATURE",
    "PROJECTION_DIM",
    "LOSS_WEIGHTS",
    "rotate",
    "random_rotation",
    "center_square",
    "sample_mask_boxes",
    "boxes_to_mask",
    "random_box_mask",
    "two_views",
    "nt_xent",
    "swin_proxy_losses",
    "ROTATION_CHANCE",
    "rotation_accuracy",
    "reconstruction_l1",
    "identity_l1",
]

# Tang et al. 2022 / MONAI Pretrain ops.rot_rand: 4 classes, 0/90/180/270 deg over the last two spatial axes
N_ROTATIONS = 4
ROTATION_DIMS = (-2, -1)
# MONAI Pretrain ops.patch_rand_drop(max_drop=0.3, max_block_sz=0.25, tolr=0.05); Cox et al. 2024 sec. 2.3:
# "inner cutout"
MAX_MASK_FRACTION = 0.3
MIN_BOX_FRACTION = 0.05
MAX_BOX_FRACTION = 0.25
# Tang et al. 2022 / MONAI Pretrain losses.Contrast(temperature=0.5), ssl_head contrastive_head Linear(., 512)
TEMPERATURE = 0.5
PROJECTION_DIM = 512
# Tang et al. 2022 (L_tot) / MONAI Pretrain losses.Loss: alpha1 = alpha2 = alpha3 = 1 (rotation, contrastive, inpaint)
LOSS_WEIGHTS = {"reconstruction": 1.0, "rotation": 1.0, "contrastive": 1.0}
# the rotation task's trivial baseline: guessing one of the 4 uniformly drawn classes
ROTATION_CHANCE = 1.0 / N_ROTATIONS


def _draw_device(generator: Optional[torch.Generator], x: torch.Tensor) -> torch.device:
    return generator.device if generator is not None else x.device


def rotate(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Rotate sample ``n`` of ``x`` (B, C, *spatial) by ``k[n] x 90`` degrees over the last two spatial axes.

    ``torch.rot90(x[n], k[n], dims=(-2, -1))`` per sample (MONAI Pretrain ``ops.rot_rand``), computed with one
    ``rot90`` per distinct k. ``k`` is taken modulo 4 (k = 4 is the identity). Odd k need equal last two sizes.
    """
    check_images(x, "rotate")
    k = torch.as_tensor(k, device=x.device).long().reshape(-1)
    if k.numel() != x.shape[0]:
        raise ValueError(f"rotate needs one k per sample: {x.shape[0]} samples, got {k.numel()} values")
    k = k % N_ROTATIONS
    if x.shape[-1] != x.shape[-2] and bool((k % 2 == 1).any()):
        raise ValueError(f"a 90 or 270 degree rotation over the last two axes needs them of equal size, got "
                         f"{tuple(x.shape[-2:])}; crop first (center_square)")
    out = x.clone()
    for r in range(1, N_ROTATIONS):
        sel = (k == r).nonzero().flatten()
        if sel.numel():
            out[sel] = torch.rot90(x[sel], r, dims=ROTATION_DIMS)
    return out


def random_rotation(x: torch.Tensor, generator: Optional[torch.Generator] = None
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rotate every sample by a random multiple of 90 degrees over the last two spatial axes (Tang et al. 2022,
    "rotation prediction"; MONAI Pretrain ``ops.rot_rand``).

    Returns ``(rotated, k)``: ``rotated`` like ``x``; ``k`` int64 (B,) on ``x.device``, uniform in {0, 1, 2, 3}, the
    4-class target. Random numbers come from ``generator`` (on its device), so the same seed gives the same output.
    """
    check_images(x, "random_rotation")
    k = torch.randint(0, N_ROTATIONS, (x.shape[0],), generator=generator,
                      device=_draw_device(generator, x)).to(x.device)
    return rotate(x, k), k


def center_square(x: torch.Tensor) -> torch.Tensor:
    """Crop the last two axes of ``x`` to their smaller size, centred, so that 90-degree rotations keep the shape.

    MONAI's pretraining uses 96^3 crops; an nnU-Net patch can be non-square in-plane. A returned view, no copy.
    """
    h, w = x.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return x[..., top:top + s, left:left + s]


def _box_extent_range(size: int, min_fraction: float, max_fraction: float) -> Tuple[int, int]:
    lo = max(1, int(min_fraction * size))
    hi = max(lo, min(size, int(max_fraction * size)))
    return lo, hi


def sample_mask_boxes(batch: int, spatial_shape, generator: Optional[torch.Generator] = None,
                      device: torch.device | str | None = None, max_fraction: float = MAX_MASK_FRACTION,
                      min_box_fraction: float = MIN_BOX_FRACTION, max_box_fraction: float = MAX_BOX_FRACTION,
                      chunk: int = 32) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw the inpainting boxes of a batch (MONAI Pretrain ``ops.patch_rand_drop``), all samples at once.

    Per sample a target ``t ~ U(0, max_fraction) x n_voxels``; boxes are drawn one after another, each extent uniform
    in ``[max(1, floor(min_box_fraction * s)), max(that, floor(max_box_fraction * s))]`` (both ends inclusive), the
    start uniform in ``[0, s - min extent]``, the box clipped at the border; box ``j`` is kept while the summed volume
    of the boxes before it is below ``t``. So the masked fraction is at most ``max_fraction`` plus one box (boxes may
    overlap: the union is smaller). Boxes are drawn in chunks of ``chunk`` until every sample reached its target.

    Returns ``(lower, upper, active)``: ``lower``/``upper`` int64 (B, M, D) half-open corners, ``active`` bool (B, M).
    """
    shape = tuple(int(s) for s in spatial_shape)
    if len(shape) not in (2, 3) or not all(s >= 1 for s in shape):
        raise ValueError(f"masking needs 2 or 3 spatial sizes >= 1, got {shape}")
    if not 0.0 <= max_fraction <= 1.0:
        raise ValueError(f"max_fraction must be in [0, 1], got {max_fraction}")
    if not 0.0 <= min_box_fraction <= max_box_fraction <= 1.0:
        raise ValueError(f"box fractions need 0 <= min_box_fraction <= max_box_fraction <= 1, got "
                         f"{min_box_fraction} and {max_box_fraction}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    target_device = torch.device(device) if device is not None else torch.device("cpu")
    draw = generator.device if generator is not None else target_device
    n_vox = 1
    for s in shape:
        n_vox *= s
    goal = torch.rand((batch,), generator=generator, device=draw, dtype=torch.float64) * max_fraction * n_vox
    covered = torch.zeros((batch,), device=draw, dtype=torch.float64)
    ranges = [_box_extent_range(s, min_box_fraction, max_box_fraction) for s in shape]
    lowers, uppers, actives = [], [], []
    while True:
        lo_c, up_c = [], []
        for s, (lo, hi) in zip(shape, ranges):
            start = torch.randint(0, s - lo + 1, (batch, chunk), generator=generator, device=draw)
            extent = torch.randint(lo, hi + 1, (batch, chunk), generator=generator, device=draw)
            lo_c.append(start)
            up_c.append((start + extent).clamp(max=s))
        lower, upper = torch.stack(lo_c, -1), torch.stack(up_c, -1)
        volume = (upper - lower).prod(-1).to(torch.float64)
        before = covered[:, None] + volume.cumsum(1) - volume
        active = before < goal[:, None]
        covered = covered + (volume * active).sum(1)
        lowers.append(lower)
        uppers.append(upper)
        actives.append(active)
        if bool((covered >= goal).all()):
            break
    return (torch.cat(lowers, 1).to(target_device), torch.cat(uppers, 1).to(target_device),
            torch.cat(actives, 1).to(target_device))


def boxes_to_mask(lower: torch.Tensor, upper: torch.Tensor, active: torch.Tensor, spatial_shape) -> torch.Tensor:
    """Union of the active boxes as a bool mask (B, 1, *spatial).

    Vectorised over all boxes at once with a difference array: each box adds +-1 at its 2^D corners, and cumulative
    sums along every axis give the number of boxes covering each voxel (O(voxels + boxes), no loop over boxes).
    """
    shape = tuple(int(s) for s in spatial_shape)
    nd = len(shape)
    if lower.dim() != 3 or lower.shape != upper.shape or lower.shape[-1] != nd or active.shape != lower.shape[:2]:
        raise ValueError(f"lower/upper must be (B, M, {nd}) and active (B, M), got {tuple(lower.shape)}, "
                         f"{tuple(upper.shape)} and {tuple(active.shape)}")
    b = lower.shape[0]
    device = lower.device
    padded = tuple(s + 1 for s in shape)
    counts = torch.zeros((b, *padded), dtype=torch.int32, device=device)
    weight = active.to(torch.int32)
    batch_index = torch.arange(b, device=device)[:, None].expand_as(active)
    for corner in itertools.product((0, 1), repeat=nd):
        index = tuple((upper if c else lower)[..., d] for d, c in enumerate(corner))
        sign = -1 if sum(corner) % 2 else 1
        counts.index_put_((batch_index, *index), sign * weight, accumulate=True)
    for d in range(1, nd + 1):
        counts = counts.cumsum(d, dtype=torch.int32)
    return (counts[(slice(None),) + tuple(slice(0, s) for s in shape)] > 0).unsqueeze(1)


def random_box_mask(x: torch.Tensor, generator: Optional[torch.Generator] = None,
                    max_fraction: float = MAX_MASK_FRACTION, min_box_fraction: float = MIN_BOX_FRACTION,
                    max_box_fraction: float = MAX_BOX_FRACTION) -> Tuple[torch.Tensor, torch.Tensor]:
    """Masked-volume inpainting input (Tang et al. 2022; MONAI Pretrain ``ops.patch_rand_drop``).

    The boxes of :func:`sample_mask_boxes` (the same for every channel) are filled with standard normal noise,
    min-max normalised to [0, 1] over the masked voxels of each sample (all channels together; MONAI normalises each
    box on its own, which for boxes of hundreds of voxels gives nearly the same distribution). Voxels outside the
    boxes keep their value.

    Returns ``(masked, mask)``: ``masked`` like ``x``; ``mask`` bool (B, 1, *spatial), True in masked voxels.
    Random numbers come from ``generator`` (on its device), then move to ``x.device``.
    """
    check_images(x, "random_box_mask")
    b, c = x.shape[:2]
    spatial = tuple(x.shape[2:])
    lower, upper, active = sample_mask_boxes(b, spatial, generator, x.device, max_fraction, min_box_fraction,
                                             max_box_fraction)
    mask = boxes_to_mask(lower, upper, active, spatial)
    noise = torch.randn((b, c, *spatial), generator=generator, device=_draw_device(generator, x),
                        dtype=torch.float32).to(x.device)
    inside = mask.expand_as(noise)
    view = (b,) + (1,) * (x.dim() - 1)
    lo = torch.where(inside, noise, float("inf")).reshape(b, -1).amin(1).view(view)
    hi = torch.where(inside, noise, float("-inf")).reshape(b, -1).amax(1).view(view)
    normed = (noise - lo) / (hi - lo).clamp_min(torch.finfo(torch.float32).tiny)
    masked = torch.where(inside, normed.to(x.dtype), x)
    return masked, mask


def two_views(x: torch.Tensor, generator: Optional[torch.Generator] = None, **mask_kwargs) -> Dict[str, torch.Tensor]:
    """The two augmented views of Tang et al. 2022 (MONAI Pretrain ``main.py``: ``rot_rand`` then ``aug_rand`` twice).

    Returns a dict of ``view1``/``view2`` (rotated and masked: the network input), ``rot1``/``rot2`` (int64 (B,)
    rotation classes), ``mask1``/``mask2`` (bool (B, 1, *spatial)) and ``target1``/``target2`` (the rotated views
    before masking: the reconstruction targets). ``mask_kwargs`` go to :func:`random_box_mask`.
    """
    check_images(x, "two_views")
    target1, rot1 = random_rotation(x, generator)
    target2, rot2 = random_rotation(x, generator)
    view1, mask1 = random_box_mask(target1, generator, **mask_kwargs)
    view2, mask2 = random_box_mask(target2, generator, **mask_kwargs)
    return {"view1": view1, "view2": view2, "rot1": rot1, "rot2": rot2, "mask1": mask1, "mask2": mask2,
            "target1": target1, "target2": target2}


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al. 2020, "A Simple Framework for
    Contrastive Learning of Visual Representations", ICML, eq. (1)), as in MONAI Pretrain ``losses.Contrast``.

    With ``z = normalize([z1; z2])`` (2N rows) and ``s_ij = z_i . z_j``, the positive of row i is its other view
    (i +- N) and ``l_i = -log(exp(s_i,pos / t) / sum_{k != i} exp(s_ik / t))``; returns the mean of ``l_i`` over the
    2N rows. Computed in float32.
    """
    if z1.dim() != 2 or z1.shape != z2.shape:
        raise ValueError(f"nt_xent needs two (N, D) embeddings of the same shape, got {tuple(z1.shape)} and "
                         f"{tuple(z2.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    sim = (z @ z.t()) / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, positives)


def swin_proxy_losses(reconstruction: torch.Tensor, rotation_logits: torch.Tensor, projection: torch.Tensor,
                      target: torch.Tensor, rotation: torch.Tensor, weights: Optional[Dict[str, float]] = None,
                      temperature: float = TEMPERATURE,
                      gather: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
                      ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Total loss L_tot of Tang et al. 2022 for a batch that holds view 1 of N samples followed by view 2.

    ``reconstruction``/``target`` (2N, C, *spatial): L1; ``rotation_logits`` (2N, 4) / ``rotation`` (2N,):
    cross-entropy; ``projection`` (2N, D): NT-Xent between rows n and N + n. ``weights`` default
    :data:`LOSS_WEIGHTS` (all 1). Returns ``(total, {"reconstruction", "rotation", "contrastive"})``, the parts
    unweighted.

    ``gather`` (e.g. ``nnunetv2_ext.distributed.all_gather_rows``) maps each view's local embeddings to those of the
    global batch before NT-Xent, so that the negatives of a sample are the other 2(N - 1) views of the whole
    minibatch of every data-parallel worker, as SimCLR defines them (Chen et al. 2020, arXiv:2002.05709, sec. 2.1-2.2)
    and its code computes them (google-research/simclr ``objective.py``: ``tpu_cross_replica_concat`` of the
    embeddings). MONAI's Swin UNETR pretraining code (``losses.Contrast``, Tang et al. 2022, arXiv:2111.14791) takes
    the negatives of each GPU's batch only: that is ``gather=None``, and the same in one process. Every worker then
    computes the NT-Xent of the whole global batch; with a gather whose backward sums the gradients of a worker's rows
    over the workers, DDP's mean of the gradients equals the gradient of one process on the concatenated batch. The
    reconstruction and rotation terms stay local means.
    """
    w = dict(LOSS_WEIGHTS if weights is None else weights)
    if projection.shape[0] % 2:
        raise ValueError(f"the batch must hold two views of each sample (even size), got {projection.shape[0]}")
    n = projection.shape[0] // 2
    z1, z2 = projection[:n], projection[n:]
    if gather is not None:
        z1, z2 = gather(z1), gather(z2)
    parts = {
        "reconstruction": reconstruction_l1(reconstruction, target),
        "rotation": F.cross_entropy(rotation_logits.float(), rotation),
        "contrastive": nt_xent(z1, z2, temperature),
    }
    total = cast(torch.Tensor, sum(w[k] * v for k, v in parts.items()))  # a tensor: parts is not empty
    return total, parts


# ---------------------------------------------------------------------------------------------------------------------
# learnability: each proxy's metric and its trivial baseline


def rotation_accuracy(rotation_logits: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Fraction of samples whose rotation class (argmax of ``rotation_logits`` (N, 4)) is ``rotation`` (N,); its
    trivial baseline is :data:`ROTATION_CHANCE` (the classes are drawn uniformly). Returns a float32 scalar."""
    if rotation_logits.dim() != 2 or rotation_logits.shape[0] != rotation.numel():
        raise ValueError(f"rotation_accuracy needs logits (N, classes) and N targets, got "
                         f"{tuple(rotation_logits.shape)} and {tuple(rotation.shape)}")
    return (rotation_logits.argmax(1) == rotation.reshape(-1).to(rotation_logits.device)).float().mean()


def reconstruction_l1(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error of a reconstruction to the unmasked view (L_inpaint of Tang et al. 2022), in float32."""
    if reconstruction.shape != target.shape:
        raise ValueError(f"reconstruction and target must have the same shape, got {tuple(reconstruction.shape)} and "
                         f"{tuple(target.shape)}")
    return F.l1_loss(reconstruction.float(), target.float())


def masked_l1(reconstruction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error inside the masked boxes only (``mask`` (B, 1, *spatial), True = masked, broadcast over the
    channels): the inpainting part of :func:`reconstruction_l1`, in float32; 0 when nothing is masked."""
    if reconstruction.shape != target.shape or mask.shape[0] != target.shape[0] or mask.shape[2:] != target.shape[2:]:
        raise ValueError(f"reconstruction, target (B, C, *spatial) and mask (B, 1, *spatial) must agree, got "
                         f"{tuple(reconstruction.shape)}, {tuple(target.shape)} and {tuple(mask.shape)}")
    weight = mask.expand_as(target).float()
    return ((reconstruction.float() - target.float()).abs() * weight).sum() / weight.sum().clamp(min=1)


def identity_l1(view: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The trivial baseline of :func:`reconstruction_l1`: the L1 of a network that returns its masked input ``view``
    unchanged (exact outside the boxes, the noise inside). A reconstruction below it has learned to inpaint."""
    return reconstruction_l1(view, target)
