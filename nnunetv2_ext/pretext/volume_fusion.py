"""Volume Fusion self-supervised pretext task (Wang et al. 2023, "MIS-FM: 3D Medical Image Segmentation using
Foundation Models Pretrained on a Large-Scale Unannotated Dataset", arXiv:2306.16925).

MIS-FM, section 3.1 / Algorithm 1: a foreground sub-volume ``I_f`` is fused into a background
sub-volume ``I_b`` of a *different* scan with a voxel-wise fusion coefficient map ``alpha``,

    X = alpha * I_f + (1 - alpha) * I_b                                  (eq. (1))

where ``alpha`` takes values in ``{0, 1/K, ..., (K-1)/K, 1}``.  ``alpha`` is 0 everywhere except in
``M ~ U(m0, m1)`` random boxes ("local patches"), drawn one after another; each box gets a coefficient drawn
from ``{1/K, ..., 1}`` and later boxes overwrite earlier ones.  The network is trained to segment the label
map ``Y = K * alpha`` (``K + 1`` classes).  Paper settings (sec. 4): K = 4, M ~ U(10, 40), sub-volume
64 x 128 x 128, box extents 8-40 x 8-80 x 8-80.

Details that the paper leaves open follow the authors' code (HiLab-git/PyMIC, ``volume_fusion``):
M is drawn per sample with both ends inclusive; the box centre is uniform over the volume and the box is
clipped at the border; the foreground of sample ``n`` is sample ``(n - 1) mod B`` of the same batch (cyclic
pairing, i.e. ``torch.roll(images, 1, 0)``) and the background is sample ``n`` itself; one ``alpha`` map is
shared by all channels.

Everything here is a pure tensor function: no per-voxel Python loops, runs on the device of the input.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from nnunetv2_ext.pretext.checks import int_triple, is_int

__all__ = [
    "VolumeFusionConfig",
    "scale_extent_range",
    "scaled_extents",
    "sample_boxes",
    "boxes_to_label",
    "volume_fusion",
    "save_volume_fusion_figure",
    "fusion_level_confusion",
    "class_counts",
    "dice_per_level",
    "mean_level_dice",
    "constant_predictor_dice",
]


@dataclass(frozen=True)
class VolumeFusionConfig:
    """Settings of Volume Fusion (Wang et al. 2023, MIS-FM, sec. 3.1 and sec. 4 implementation details).

    k: number of non-zero fusion levels; alpha in {0, 1/K, ..., 1}, K + 1 classes (paper: K = 4).
    min_boxes / max_boxes: box count M ~ U(min_boxes, max_boxes), both ends inclusive (paper: U(10, 40)).
    ref_shape: the sub-volume size the extents refer to (paper: 64 x 128 x 128).
    min_extent / max_extent: box extent range per axis at ``ref_shape`` (paper: 8-40 x 8-80 x 8-80);
        scaled per axis to the actual patch by :func:`scaled_extents`.
    """

    k: int = 4
    min_boxes: int = 10
    max_boxes: int = 40
    ref_shape: tuple[int, int, int] = (64, 128, 128)
    min_extent: tuple[int, int, int] = (8, 8, 8)
    max_extent: tuple[int, int, int] = (40, 80, 80)

    def __post_init__(self) -> None:
        if not is_int(self.k) or self.k < 1:
            raise ValueError(f"VolumeFusionConfig.k must be an int >= 1 (number of non-zero fusion levels), "
                             f"got {self.k!r}")
        if not (is_int(self.min_boxes) and is_int(self.max_boxes)) or not (1 <= self.min_boxes <= self.max_boxes):
            raise ValueError(
                "VolumeFusionConfig needs ints with 1 <= min_boxes <= max_boxes, "
                f"got min_boxes={self.min_boxes!r}, max_boxes={self.max_boxes!r}"
            )
        ref = int_triple("VolumeFusionConfig", "ref_shape", self.ref_shape)
        lo = int_triple("VolumeFusionConfig", "min_extent", self.min_extent)
        hi = int_triple("VolumeFusionConfig", "max_extent", self.max_extent)
        if not all(a <= b for a, b in zip(lo, hi)):
            raise ValueError(f"VolumeFusionConfig needs min_extent <= max_extent on every axis, got {lo} and {hi}")
        if not all(b <= r for b, r in zip(hi, ref)):
            raise ValueError(f"VolumeFusionConfig needs max_extent <= ref_shape on every axis, got {hi} and {ref}")
        # normalise lists to tuples (frozen dataclass: bypass __setattr__)
        object.__setattr__(self, "ref_shape", ref)
        object.__setattr__(self, "min_extent", lo)
        object.__setattr__(self, "max_extent", hi)


def _check_spatial_shape(spatial_shape) -> tuple[int, ...]:
    shape = tuple(int(s) for s in spatial_shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"Volume Fusion needs 2 or 3 spatial dimensions, got spatial shape {shape}")
    if not all(s >= 1 for s in shape):
        raise ValueError(f"spatial shape must be >= 1 on every axis, got {shape}")
    return shape


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def scale_extent_range(ref_shape, min_extent, max_extent, patch_shape) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Extent range (min, max) per axis given at ``ref_shape``, scaled to ``patch_shape``.

    Each bound is scaled by ``patch / ref`` per axis (rounded half up), then kept within ``[1, patch size]`` with
    ``min <= max``.  For a 2D patch the last two axes of ``ref_shape`` / ``min_extent`` / ``max_extent`` are used.
    Shared by the pretexts whose paper gives box or patch sizes for one sub-volume size (Volume Fusion, patch
    swapping).
    """
    shape = _check_spatial_shape(patch_shape)
    nd = len(shape)
    ref = tuple(ref_shape)[-nd:]
    lo_ref = tuple(min_extent)[-nd:]
    hi_ref = tuple(max_extent)[-nd:]
    lows, highs = [], []
    for s, r, lo, hi in zip(shape, ref, lo_ref, hi_ref):
        ratio = s / r
        h = min(s, max(1, _round_half_up(hi * ratio)))
        l_ = min(h, max(1, _round_half_up(lo * ratio)))
        lows.append(l_)
        highs.append(h)
    return tuple(lows), tuple(highs)


def scaled_extents(cfg: VolumeFusionConfig, patch_shape) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Box extent range (min, max) per axis, scaled from ``cfg.ref_shape`` to ``patch_shape``.

    The paper's extents (Wang et al. 2023, MIS-FM, sec. 4: 8-40 x 8-80 x 8-80) refer to a 64 x 128 x 128
    sub-volume; here they are scaled by ``patch / ref`` per axis (rounded half up), then kept within
    ``[1, patch size]`` with ``min <= max`` (:func:`scale_extent_range`).  For a 2D patch the last two axes of the
    config are used.
    """
    return scale_extent_range(cfg.ref_shape, cfg.min_extent, cfg.max_extent, patch_shape)


def sample_boxes(
    batch: int,
    spatial_shape,
    cfg: VolumeFusionConfig = VolumeFusionConfig(),
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw the Volume Fusion boxes for a whole batch at once (Wang et al. 2023, MIS-FM, Algorithm 1, lines 7-10).

    Per sample: M ~ U(min_boxes, max_boxes) (inclusive); per box: an extent per axis uniform in the scaled range
    (:func:`scaled_extents`), a centre uniform over the voxels, the box ``[centre - e // 2, centre - e // 2 + e)``
    clipped at the border (PyMIC) so it always covers at least the centre voxel, and a level uniform in {1..K}.

    Returns ``(lower, upper, levels, active)``: ``lower``/``upper`` int64 (B, M_max, D) with half-open
    ``[lower, upper)`` per axis (already clipped to the volume), ``levels`` int64 (B, M_max) in 1..K, ``active``
    bool (B, M_max), True for the first M boxes of each sample; ``M_max = cfg.max_boxes``.
    Random numbers are drawn on ``generator``'s device (the default generator of ``device`` when None) and the
    results are moved to ``device``.
    """
    if not is_int(batch) or batch < 1:
        raise ValueError(f"batch must be an int >= 1, got {batch!r}")
    shape = _check_spatial_shape(spatial_shape)
    target = torch.device(device) if device is not None else torch.device("cpu")
    draw = generator.device if generator is not None else target
    lo_e, hi_e = scaled_extents(cfg, shape)
    m_max = cfg.max_boxes

    def randint(low: int, high_incl: int, size) -> torch.Tensor:
        return torch.randint(low, high_incl + 1, size, generator=generator, device=draw, dtype=torch.int64)

    n_boxes = randint(cfg.min_boxes, cfg.max_boxes, (batch,))
    active = torch.arange(m_max, device=draw)[None, :] < n_boxes[:, None]
    lower, upper = [], []
    for s, lo, hi in zip(shape, lo_e, hi_e):
        extent = randint(lo, hi, (batch, m_max))
        centre = randint(0, s - 1, (batch, m_max))
        start = centre - extent // 2
        lower.append(start.clamp(min=0))
        upper.append((start + extent).clamp(max=s))
    levels = randint(1, cfg.k, (batch, m_max))
    lower_t = torch.stack(lower, dim=-1)
    upper_t = torch.stack(upper, dim=-1)
    return lower_t.to(target), upper_t.to(target), levels.to(target), active.to(target)


def boxes_to_label(
    lower: torch.Tensor,
    upper: torch.Tensor,
    levels: torch.Tensor,
    active: torch.Tensor,
    spatial_shape,
) -> torch.Tensor:
    """Paint boxes into a label map (Wang et al. 2023, MIS-FM, Algorithm 1, lines 6-11 and 14).

    ``lower``/``upper`` (B, M, D) half-open box corners, ``levels`` (B, M), ``active`` (B, M) bool.  Returns
    int64 (B, 1, *spatial): 0 where no active box, otherwise the level of the *last* active box (highest box
    index) covering the voxel, i.e. later boxes overwrite earlier ones.  Each box mask is the outer product of
    three (or two) 1-D interval masks; the loop runs over box indices only, each step one tensor op on the
    whole batch.
    """
    shape = _check_spatial_shape(spatial_shape)
    nd = len(shape)
    if lower.dim() != 3 or lower.shape != upper.shape or lower.shape[-1] != nd:
        raise ValueError(f"lower/upper must be (B, M, {nd}), got {tuple(lower.shape)} and {tuple(upper.shape)}")
    b, m = lower.shape[:2]
    if levels.shape != (b, m) or active.shape != (b, m):
        raise ValueError(f"levels/active must be ({b}, {m}), got {tuple(levels.shape)} and {tuple(active.shape)}")
    device = lower.device
    # 1-D interval masks per axis: (B, M, S_d); inactive boxes are emptied on the first axis.
    intervals = []
    for d, s in enumerate(shape):
        coords = torch.arange(s, device=device)
        iv = (coords >= lower[..., d, None]) & (coords < upper[..., d, None])
        if d == 0:
            iv = iv & active.to(device=device, dtype=torch.bool)[..., None]
        intervals.append(iv)
    lev = levels.to(device=device, dtype=torch.int32)
    label = torch.zeros((b, *shape), dtype=lev.dtype, device=device)
    view_lev = (b,) + (1,) * nd
    for j in range(m):
        if nd == 3:
            mask = (intervals[0][:, j, :, None, None] & intervals[1][:, j, None, :, None]
                    & intervals[2][:, j, None, None, :])
        else:
            mask = intervals[0][:, j, :, None] & intervals[1][:, j, None, :]
        label = torch.where(mask, lev[:, j].view(view_lev), label)
    return label.to(torch.int64).unsqueeze(1)


def volume_fusion(
    images: torch.Tensor,
    cfg: VolumeFusionConfig = VolumeFusionConfig(),
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Volume Fusion of a batch (Wang et al. 2023, MIS-FM, sec. 3.1, eq. (1), Algorithm 1).

    ``images`` (B, C, *spatial), floating point, B >= 2, 2D or 3D.  Returns ``(fused, label, alpha)``:

    * background of sample n = sample n, foreground = sample (n - 1) mod B (cyclic pairing as in PyMIC), so
      foreground and background always come from two different samples of the batch;
    * ``label`` (B, 1, *spatial) int64 in {0..K}: 0 outside all boxes, each box's level uniform in {1..K},
      later boxes overwrite earlier ones (:func:`sample_boxes`, :func:`boxes_to_label`);
    * ``alpha = label / K`` (B, 1, *spatial) in the dtype of ``images``, shared by all channels;
    * ``fused = alpha * I_fg + (1 - alpha) * I_bg`` (eq. (1)), same dtype and device as ``images``.

    All random numbers are drawn with ``generator`` (on its device, then moved to ``images.device``), so the
    same seed gives the same output; with ``generator=None`` the default generator of ``images.device`` is used.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() not in (4, 5):
        raise ValueError(
            f"Volume Fusion needs images (B, C, *spatial) with 2 or 3 spatial dimensions, got shape "
            f"{tuple(images.shape)}"
        )
    if not images.is_floating_point():
        raise TypeError(f"Volume Fusion needs floating-point images (eq. (1) blends intensities), got {images.dtype}")
    b = images.shape[0]
    if b < 2:
        raise ValueError(
            f"Volume Fusion needs a batch of at least 2 samples (foreground and background from two different "
            f"scans), got B={b}"
        )
    spatial = tuple(images.shape[2:])
    lower, upper, levels, active = sample_boxes(b, spatial, cfg, generator, images.device)
    label = boxes_to_label(lower, upper, levels, active, spatial)
    alpha = label.to(images.dtype) / cfg.k
    foreground = torch.roll(images, 1, 0)  # foreground[n] = images[(n - 1) mod B]
    fused = alpha * foreground + (1 - alpha) * images
    return fused, label, alpha


# ---------------------------------------------------------------------------------------------------------------------
# learnability: the pretext's metric and its trivial baseline


def fusion_level_confusion(prediction: torch.Tensor, target: torch.Tensor, k: int
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """True positives, false positives and false negatives of the fusion levels 1..K, summed over the batch.

    ``prediction``/``target``: label maps of the same shape with values in {0..K} (e.g. the argmax of the network's
    K + 1 outputs and the ``label`` of :func:`volume_fusion`). Returns three int64 (K,) tensors, entry ``j - 1`` for
    level ``j``: the counts nnU-Net's online validation accumulates (``get_tp_fp_fn_tn`` of the one-hot argmax, the
    background dropped).
    """
    if prediction.shape != target.shape:
        raise ValueError(f"prediction and target must have the same shape, got {tuple(prediction.shape)} and "
                         f"{tuple(target.shape)}")
    if not is_int(k) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    levels = torch.arange(1, k + 1, device=target.device).view(k, *([1] * target.dim()))
    pred, tgt = prediction[None] == levels, target[None] == levels
    dims = tuple(range(1, target.dim() + 1))
    tp = (pred & tgt).sum(dims)
    return tp, (pred & ~tgt).sum(dims), (~pred & tgt).sum(dims)


def class_counts(target: torch.Tensor, k: int) -> torch.Tensor:
    """Voxels of each class 0..K in ``target`` (int64 (K + 1,)); raises ``ValueError`` for labels outside 0..K."""
    if not is_int(k) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    flat = target.reshape(-1).long()
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) > k):
        raise ValueError(f"Volume Fusion labels lie in 0..{k}, got values {int(flat.min())}..{int(flat.max())}")
    return torch.bincount(flat, minlength=k + 1)


def dice_per_level(tp, fp, fn) -> torch.Tensor:
    """``2 tp / (2 tp + fp + fn)`` per level (float64), NaN where a level is in neither prediction nor target (as
    nnU-Net's online pseudo-Dice). Arguments: array-likes of one shape, e.g. (K,) or (candidates, K)."""
    tp, fp, fn = (torch.as_tensor(v, dtype=torch.float64) for v in (tp, fp, fn))
    denominator = 2 * tp + fp + fn
    return torch.where(denominator > 0, 2 * tp / denominator.clamp_min(1), torch.full_like(tp, float("nan")))


def mean_level_dice(tp, fp, fn) -> float:
    """Mean Dice over the K fusion levels (classes 1..K) from their counts, levels without any voxel in prediction and
    target left out (nnU-Net's ``mean_fg_dice``: the nan-mean of the per-class Dice); NaN when every level is empty.
    The Volume Fusion pretext metric (Wang et al., "MIS-FM: 3D Medical Image Segmentation using Foundation Models
    Pretrained on a Large-Scale Unannotated Dataset", 2023, arXiv:2306.16925: the pretext is a K + 1 class
    segmentation)."""
    dice = dice_per_level(tp, fp, fn)
    valid = ~torch.isnan(dice)
    return float(dice[valid].mean()) if bool(valid.any()) else float("nan")


def constant_predictor_dice(counts) -> float:
    """The trivial baseline of :func:`mean_level_dice`: the best mean level Dice of a network that predicts one class
    ``c`` in 0..K everywhere, computed from the class counts of the same targets (:func:`class_counts`, (K + 1,)).

    Predicting level ``c`` everywhere gives it ``tp = n_c, fp = N - n_c, fn = 0``, so Dice ``2 n_c / (n_c + N)``, and
    every other level Dice 0 (``tp = fp = 0, fn = n_j``; NaN and left out where ``n_j = 0``); predicting background
    gives 0 on every level. A network that collapsed to one class scores at most this.
    """
    counts = torch.as_tensor(counts, dtype=torch.float64).reshape(-1)
    if counts.numel() < 2 or bool((counts < 0).any()):
        raise ValueError(f"counts must hold K + 1 >= 2 non-negative class counts, got {counts.tolist()}")
    n_levels, total, zero = counts[1:], counts.sum(), torch.zeros((), dtype=torch.float64)
    # candidate c (rows 0..K) against level j (columns 1..K)
    predicted = torch.arange(counts.numel())[:, None] == torch.arange(1, counts.numel())[None, :]
    tp = torch.where(predicted, n_levels[None, :], zero)
    fp = torch.where(predicted, total - n_levels[None, :], zero)
    fn = torch.where(predicted, zero, n_levels[None, :])
    means = [mean_level_dice(tp[c], fp[c], fn[c]) for c in range(counts.numel())]
    means = [m for m in means if not math.isnan(m)]
    return max(means) if means else float("nan")


def save_volume_fusion_figure(
    images: torch.Tensor,
    fused: torch.Tensor,
    label: torch.Tensor,
    path,
    channel: int = 0,
    sample: int = 0,
):
    """Save a PNG with, for one sample, the middle axial slice of background, foreground, label (alpha = label / K)
    and fused image side by side (Wang et al. 2023, MIS-FM, Fig. 1/2 style).  2D inputs are shown whole.
    Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if images.dim() not in (4, 5) or fused.shape != images.shape:
        raise ValueError(f"images and fused must both be (B, C, *spatial), got {tuple(images.shape)} and "
                         f"{tuple(fused.shape)}")
    b = images.shape[0]
    if not 0 <= sample < b:
        raise ValueError(f"sample must be in [0, {b}), got {sample}")
    bg = images[sample, channel]
    fg = images[(sample - 1) % b, channel]
    fu = fused[sample, channel]
    lab = label[sample, 0]
    if images.dim() == 5:
        z = images.shape[2] // 2
        bg, fg, fu, lab = bg[z], fg[z], fu[z], lab[z]
    to_np = lambda t: t.detach().float().cpu().numpy()  # noqa: E731
    bg, fg, fu, lab = to_np(bg), to_np(fg), to_np(fu), to_np(lab)
    vmin = float(min(bg.min(), fg.min(), fu.min()))
    vmax = float(max(bg.max(), fg.max(), fu.max()))
    k = max(1, int(label.max().item()))
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
    panels = [
        (bg, f"background (sample {sample})", "gray", vmin, vmax),
        (fg, f"foreground (sample {(sample - 1) % b})", "gray", vmin, vmax),
        (lab, "label (alpha = label / K)", "viridis", 0, k),
        (fu, "fused = a*fg + (1-a)*bg", "gray", vmin, vmax),
    ]
    for ax, (img, title, cmap, lo, hi) in zip(axes, panels):
        im = ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
        if cmap == "viridis":
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, ticks=list(range(0, k + 1)))
    fig.tight_layout()
    path = os.fspath(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
