"""Models Genesis self-supervised image restoration (Zhou et al., "Models Genesis", Medical Image Analysis 67, 101840,
2021, arXiv:2004.07882), one of the three baselines Volume Fusion is compared with in Wang et al. 2023 ("MIS-FM: 3D
Medical Image Segmentation using Foundation Models Pretrained on a Large-Scale Unannotated Dataset",
arXiv:2306.16925, Table 2: "non-linear transformation, local pixel shuffling and inter/outer cutout for image
restoration").

A sub-volume is corrupted by up to three transformations in a row and the network restores the original with the
L2 (MSE) loss over all voxels (:func:`~nnunetv2_ext.pretext.restoration.restoration_mse`). The order, the
probabilities and the sizes are the authors' (MrGiovanni/ModelsGenesis, ``pytorch/config.py`` and
``pytorch/utils.py: generate_pair``), where a sub-volume is 64 x 64 x 32 voxels:

1. local pixel shuffling with probability ``local_rate = 0.5``: the voxels inside small windows (each extent
   1 .. size // 10) are permuted;
2. a non-linear intensity transformation with probability ``nonlinear_rate = 0.9``: a cubic Bezier curve through
   ``P0 = (0, 0)``, two random control points ``P1, P2`` in [0, 1]^2 and ``P3 = (1, 1)``, flipped (decreasing) with
   probability 1/2, applied to intensities in [0, 1];
3. with probability ``paint_rate = 0.9`` either in-painting (probability ``inpaint_rate = 1 - outpaint_rate = 0.2``):
   up to 5 boxes (each further box with probability 0.95), extents ``size // 6 .. size // 3``, at least 3 voxels
   from the border, filled with uniform noise in [0, 1]; or out-painting (0.8): everything noise except 1 + up to 4
   boxes (again 0.95 each) of extent ``size - (3 size // 7 .. 4 size // 7)`` that keep the image.

Not reproduced: the random flips of ``generate_pair`` (``flip_rate = 0.4``), which flip input and target together:
a data augmentation, which nnU-Net's own mirroring already provides.

Vectorised deviation: Models Genesis shuffles 10000 overlapping random windows one after another. Here each sample
is tiled by a grid of windows (one random extent per axis and sample in 1 .. size // 10, random grid offset), and each
window is shuffled with probability ``shuffle_coverage = 0.85``: the expected fraction of a 64 x 64 x 32 sub-volume
the authors' 10000 windows cover (``1 - exp(-10000 * 3.5 * 3.5 * 2 / 131072)``). So every voxel moves only within its
own window, and all windows of the batch are shuffled by two sorts.

Intensities: nnU-Net's images are z-scored, Models Genesis' are in [0, 1] (CT clipped to [-1000, 1000] HU and
rescaled). The whole corruption therefore runs on each sample's channel min-max mapped to [0, 1] (its own minimum and
maximum) and is mapped back with the same affine map, so the noise spans the channel's intensity range and the target
is the original z-scored image. A constant channel stays unchanged.

Multi-channel input (C MRI modalities): every spatial decision (shuffled windows and their permutation, painted
boxes) is shared by all channels, and whether each transformation is applied is drawn once per sample, as for one
image in the paper. The modalities are co-registered: a box painted in one channel only, or voxels shuffled in one
channel only, could be restored by copying the other modalities at the same place, a cross-modality shortcut that
Models Genesis does not have. The Bezier curve and the noise are drawn per channel, because the modalities' intensity
scales are unrelated (as the authors' PyMIC port, HiLab-git/PyMIC ``NonLinearTransform``, does per channel).

Everything here is a pure tensor function: generator-seeded, vectorised over the batch (Python loops run over the
spatial axes and the handful of boxes only), on the device of the input.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from nnunetv2_ext.pretext.checks import check_images, is_int
from nnunetv2_ext.pretext.restoration import identity_mse, restoration_mse
from nnunetv2_ext.pretext.swin_proxies import boxes_to_mask

__all__ = [
    "BEZIER_SAMPLES",
    "ModelsGenesisConfig",
    "bezier_curves",
    "apply_curves",
    "nonlinear_transform",
    "local_pixel_shuffle",
    "painting_boxes",
    "models_genesis",
    "restoration_mse",
    "identity_mse",
]

# points on each Bezier curve used as the lookup table (Models Genesis: 100000, PyMIC: 10000; 1000 is within 1e-5 of
# the curve's intensity at any input, far below a network's restoration error)
BEZIER_SAMPLES = 1000
_EPS = 1e-9


def _check_probability(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"ModelsGenesisConfig.{name} is a probability and must lie in [0, 1], got {value!r}")


def _check_fraction_range(name: str, value) -> Tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"ModelsGenesisConfig.{name} must be a pair (low, high) of fractions of the axis size, "
                         f"got {value!r}") from None
    if not 0.0 < lo <= hi < 1.0:
        raise ValueError(f"ModelsGenesisConfig.{name} needs 0 < low <= high < 1 (fractions of the axis size), "
                         f"got {value!r}")
    return lo, hi


@dataclass(frozen=True)
class ModelsGenesisConfig:
    """Settings of Models Genesis (Zhou et al. 2021; the authors' ``pytorch/config.py`` and ``utils.py``).

    local_rate: probability of local pixel shuffling per sample (0.5).
    nonlinear_rate: probability of the Bezier intensity transformation per sample (0.9).
    paint_rate: probability of in- or out-painting per sample (0.9).
    inpaint_rate: given painting, the probability of in-painting; out-painting otherwise (1 - outpaint_rate = 0.2).
    shuffle_max_fraction: window extent per axis uniform in ``1 .. floor(size * shuffle_max_fraction)`` (1/10).
    shuffle_coverage: probability that a window of the grid is shuffled (0.85, see the module docstring).
    inpaint_boxes / outpaint_boxes: most boxes (5; out-painting: the first box plus up to 4 more).
    box_continue: probability of each further box (0.95).
    inpaint_extent: in-painting box extent per axis in ``floor(size * low) .. floor(size * high)`` (1/6 .. 1/3).
    outpaint_cut: an out-painting box is ``size - cut`` with ``cut`` in ``floor(size * low) .. floor(size * high)``
        (3/7 .. 4/7).
    border: boxes start at least this many voxels from either border (3), less where the axis is too small.
    """

    local_rate: float = 0.5
    nonlinear_rate: float = 0.9
    paint_rate: float = 0.9
    inpaint_rate: float = 0.2
    shuffle_max_fraction: float = 0.1
    shuffle_coverage: float = 0.85
    inpaint_boxes: int = 5
    outpaint_boxes: int = 5
    box_continue: float = 0.95
    inpaint_extent: Tuple[float, float] = (1 / 6, 1 / 3)
    outpaint_cut: Tuple[float, float] = (3 / 7, 4 / 7)
    border: int = 3

    def __post_init__(self) -> None:
        for name in ("local_rate", "nonlinear_rate", "paint_rate", "inpaint_rate", "shuffle_coverage", "box_continue"):
            _check_probability(name, getattr(self, name))
        f = self.shuffle_max_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 < f <= 1.0:
            raise ValueError(f"ModelsGenesisConfig.shuffle_max_fraction must lie in (0, 1] (the largest window "
                             f"extent as a fraction of the axis size), got {f!r}")
        for name in ("inpaint_boxes", "outpaint_boxes"):
            v = getattr(self, name)
            if not is_int(v) or v < 1:
                raise ValueError(f"ModelsGenesisConfig.{name} must be an int >= 1, got {v!r}")
        if not is_int(self.border) or self.border < 0:
            raise ValueError(f"ModelsGenesisConfig.border must be an int >= 0, got {self.border!r}")
        object.__setattr__(self, "inpaint_extent", _check_fraction_range("inpaint_extent", self.inpaint_extent))
        object.__setattr__(self, "outpaint_cut", _check_fraction_range("outpaint_cut", self.outpaint_cut))


def _draw_device(generator: Optional[torch.Generator], fallback: torch.device) -> torch.device:
    return generator.device if generator is not None else fallback


def _rand(shape, generator, draw, device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=draw).to(device)


def _randint_between(low: torch.Tensor, high: torch.Tensor, generator, draw, device) -> torch.Tensor:
    """Integers uniform in ``[low, high]`` (both inclusive, elementwise; int64 tensors of one shape)."""
    u = _rand(low.shape, generator, draw, device)
    return torch.minimum(low + (u * (high - low + 1).to(u.dtype)).floor().long(), high)


# ---------------------------------------------------------------------------------------------------------------------
# non-linear intensity transformation


def bezier_curves(n: int, generator: Optional[torch.Generator] = None, device: torch.device | str | None = None,
                  samples: int = BEZIER_SAMPLES) -> Tuple[torch.Tensor, torch.Tensor]:
    """``n`` random Models Genesis intensity curves as lookup tables (Zhou et al. 2021, "non-linear transformation").

    Each is the cubic Bezier curve ``B(t) = (1-t)^3 P0 + 3 (1-t)^2 t P1 + 3 (1-t) t^2 P2 + t^3 P3`` with
    ``P0 = (0, 0)``, ``P3 = (1, 1)`` and ``P1, P2`` uniform in [0, 1]^2, sampled at ``samples`` values of t; both
    coordinates are sorted (the curve is increasing), and with probability 1/2 the y values are reversed (a
    decreasing curve: the authors' "flip"). Returns ``(xs, ys)``, float32 (n, samples): knots with ``xs`` increasing
    from 0 to 1 and ``ys`` monotone, from 0 to 1 or from 1 to 0. Control points for ``P1, P2`` in [0, 1]^2 make x(t)
    monotone in t, so sorting keeps the curve a function.
    """
    if not is_int(n) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if not is_int(samples) or samples < 2:
        raise ValueError(f"samples must be an int >= 2, got {samples!r}")
    target = torch.device(device) if device is not None else torch.device("cpu")
    draw = _draw_device(generator, target)
    points = _rand((n, 4), generator, draw, target)  # x1, y1, x2, y2
    flip = _rand((n,), generator, draw, target) < 0.5
    t = torch.linspace(0.0, 1.0, samples, device=target)
    b1, b2, b3 = 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t ** 2, t ** 3  # P0 = (0, 0) contributes nothing
    xs = points[:, 0:1] * b1 + points[:, 2:3] * b2 + b3
    ys = points[:, 1:2] * b1 + points[:, 3:4] * b2 + b3
    xs, ys = xs.sort(dim=1).values, ys.sort(dim=1).values
    ys = torch.where(flip[:, None], ys.flip(1), ys)
    return xs, ys


def apply_curves(x01: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear lookup ``y = f_k(x)`` of the curves ``(xs, ys)`` (K, S) on ``x01`` (K, N), row k with curve k
    (``numpy.interp`` per row, as Models Genesis applies its curve); inputs outside [0, 1] are clamped."""
    if x01.dim() != 2 or xs.shape != ys.shape or xs.dim() != 2 or xs.shape[0] != x01.shape[0]:
        raise ValueError(f"apply_curves needs x01 (K, N) and knots xs, ys (K, S), got {tuple(x01.shape)}, "
                         f"{tuple(xs.shape)} and {tuple(ys.shape)}")
    v = x01.float().clamp(0.0, 1.0).contiguous()
    idx = torch.searchsorted(xs.contiguous(), v).clamp(1, xs.shape[1] - 1)
    x0, x1 = xs.gather(1, idx - 1), xs.gather(1, idx)
    y0, y1 = ys.gather(1, idx - 1), ys.gather(1, idx)
    w = ((v - x0) / (x1 - x0).clamp_min(_EPS)).clamp(0.0, 1.0)
    return y0 + w * (y1 - y0)


def nonlinear_transform(x01: torch.Tensor, generator: Optional[torch.Generator] = None,
                        apply: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Map every channel of every sample of ``x01`` (B, C, *spatial), intensities in [0, 1], through its own random
    Bezier curve (:func:`bezier_curves`); samples where ``apply`` (bool (B,)) is False are returned unchanged."""
    check_images(x01, "nonlinear_transform")
    b, c = x01.shape[:2]
    xs, ys = bezier_curves(b * c, generator, x01.device)
    out = apply_curves(x01.reshape(b * c, -1), xs, ys).reshape(x01.shape).to(x01.dtype)
    if apply is None:
        return out
    return torch.where(apply.to(x01.device).view(b, *([1] * (x01.dim() - 1))), out, x01)


# ---------------------------------------------------------------------------------------------------------------------
# local pixel shuffling


def local_pixel_shuffle(x: torch.Tensor, generator: Optional[torch.Generator] = None, max_fraction: float = 0.1,
                        coverage: float = 0.85, apply: Optional[torch.Tensor] = None
                        ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Local pixel shuffling (Zhou et al. 2021), vectorised over a grid of windows (see the module docstring).

    Per sample, each axis of size ``s`` gets a window extent uniform in ``1 .. max(1, floor(s * max_fraction))`` and a
    grid offset uniform in ``0 .. extent - 1``; every window of that grid is shuffled with probability ``coverage``
    (in samples where ``apply`` (bool (B,)) is True; all samples when None). A shuffled window's voxels are permuted
    at random, the same permutation for every channel.

    Returns ``(shuffled, window, shuffled_mask)``: ``shuffled`` like ``x``; ``window`` int64 (B, *spatial), the window
    index of each voxel within its sample; ``shuffled_mask`` bool (B, 1, *spatial), True in the shuffled windows.
    """
    check_images(x, "local_pixel_shuffle")
    if not 0.0 < max_fraction <= 1.0:
        raise ValueError(f"max_fraction must lie in (0, 1], got {max_fraction}")
    if not 0.0 <= coverage <= 1.0:
        raise ValueError(f"coverage must lie in [0, 1], got {coverage}")
    b, c = x.shape[:2]
    spatial = tuple(x.shape[2:])
    n = math.prod(spatial)
    device = x.device
    draw = _draw_device(generator, device)
    window = torch.zeros((b,) + (1,) * len(spatial), dtype=torch.int64, device=device)
    for d, s in enumerate(spatial):
        hi = max(1, math.floor(s * max_fraction + _EPS))
        extent = torch.randint(1, hi + 1, (b,), generator=generator, device=draw).to(device)
        offset = (_rand((b,), generator, draw, device) * extent).floor().long()
        cell = (torch.arange(s, device=device)[None, :] + offset[:, None]) // extent[:, None]  # (B, s), < s
        view = [b] + [1] * len(spatial)
        view[1 + d] = s
        window = window * s + cell.view(view)  # mixed radix with base s per axis: ids in [0, n)
    window = window.expand((b,) + spatial)
    chosen = _rand((b, n), generator, draw, device) < coverage
    if apply is not None:
        chosen = chosen & apply.to(device)[:, None]
    flat_window = window.reshape(b, n)
    selected = chosen.gather(1, flat_window)  # (B, n): the voxel's window is shuffled
    keys = torch.where(selected, _rand((b, n), generator, draw, device), torch.full((), -1.0, device=device))
    group = (flat_window + torch.arange(b, device=device)[:, None] * n).reshape(-1)  # global window id
    # voxels grouped by window, in index order (order0) and in random order within shuffled windows (order1);
    # unshuffled windows share the key -1, so the stable sorts keep their voxels in index order
    by_key = torch.sort(keys.reshape(-1), stable=True).indices
    order1 = by_key[torch.sort(group[by_key], stable=True).indices]
    order0 = torch.sort(group, stable=True).indices
    source = torch.empty_like(order0)
    source[order0] = order1
    source = (source - torch.arange(b, device=device).repeat_interleave(n) * n).view(b, 1, n)
    shuffled = x.reshape(b, c, n).gather(2, source.expand(b, c, n)).reshape(x.shape)
    return shuffled, window, selected.view((b, 1) + spatial)


# ---------------------------------------------------------------------------------------------------------------------
# in-painting and out-painting


def painting_boxes(batch: int, spatial_shape, extent_low: float, extent_high: float, max_boxes: int,
                   box_continue: float, first_always: bool, border: int = 3, complement: bool = False,
                   generator: Optional[torch.Generator] = None, device: torch.device | str | None = None
                   ) -> torch.Tensor:
    """The union of the Models Genesis painting boxes of a batch as a bool mask (B, 1, *spatial).

    Per sample up to ``max_boxes`` boxes: box 0 is drawn when ``first_always`` (out-painting) or with probability
    ``box_continue`` (in-painting), each further box with probability ``box_continue`` while the previous one was drawn
    (the authors' ``while cnt > 0 and random.random() < 0.95``). Per box and axis of size ``s``: ``k`` uniform in
    ``floor(s * extent_low) .. floor(s * extent_high)`` gives the extent ``k`` (or ``s - k`` when ``complement``, the
    out-painting boxes), at least 1; the start is uniform in ``m .. s - extent - m`` with ``m = min(border,
    (s - extent) // 2)``. Boxes may overlap (:func:`~nnunetv2_ext.pretext.swin_proxies.boxes_to_mask` takes the union).
    """
    shape = tuple(int(s) for s in spatial_shape)
    if len(shape) not in (2, 3) or not all(s >= 1 for s in shape):
        raise ValueError(f"painting needs 2 or 3 spatial sizes >= 1, got {shape}")
    if not is_int(max_boxes) or max_boxes < 1:
        raise ValueError(f"max_boxes must be an int >= 1, got {max_boxes!r}")
    target = torch.device(device) if device is not None else torch.device("cpu")
    draw = _draw_device(generator, target)
    lower, upper = [], []
    for s in shape:
        k_lo = math.floor(s * extent_low + _EPS)
        k_hi = max(k_lo, math.floor(s * extent_high + _EPS))
        k = torch.randint(k_lo, k_hi + 1, (batch, max_boxes), generator=generator, device=draw).to(target)
        extent = ((s - k) if complement else k).clamp(1, s)
        margin = torch.clamp((s - extent) // 2, max=border)
        start = _randint_between(margin, s - extent - margin, generator, draw, target)
        lower.append(start)
        upper.append(start + extent)
    go_on = _rand((batch, max_boxes), generator, draw, target) < box_continue
    if first_always:
        go_on[:, 0] = True
    active = go_on.long().cumprod(1).bool()
    return boxes_to_mask(torch.stack(lower, -1), torch.stack(upper, -1), active, shape)


# ---------------------------------------------------------------------------------------------------------------------
# the pretext


def models_genesis(images: torch.Tensor, cfg: ModelsGenesisConfig = ModelsGenesisConfig(),
                   generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor, None]:
    """The Models Genesis input and target of a batch (Zhou et al. 2021; the authors' ``generate_pair``).

    ``images`` (B, C, *spatial), floating point, 2D or 3D, e.g. z-scored. Per sample and channel the intensities are
    min-max mapped to [0, 1]; then, each decision drawn per sample: local pixel shuffling (``cfg.local_rate``,
    :func:`local_pixel_shuffle`), the Bezier transformation (``cfg.nonlinear_rate``, :func:`nonlinear_transform`, one
    curve per channel), and with probability ``cfg.paint_rate`` in-painting (``cfg.inpaint_rate``: noise inside the
    boxes) or out-painting (noise outside the boxes) with uniform noise in [0, 1] per voxel and channel
    (:func:`painting_boxes`, boxes shared by the channels); finally mapped back to the original range.

    Returns ``(inputs, targets, None)``: ``inputs`` like ``images`` (dtype, device); ``targets`` a copy of ``images``;
    no mask (the L2 restoration loss covers all voxels). A sample that drew no transformation is its own target (the
    authors' autoencoder case). All random numbers come from ``generator`` (on its device).
    """
    check_images(images, "models_genesis")
    b = images.shape[0]
    spatial = tuple(images.shape[2:])
    device = images.device
    draw = _draw_device(generator, device)
    x = images.float()
    dims = tuple(range(2, x.dim()))
    lo, hi = x.amin(dims, keepdim=True), x.amax(dims, keepdim=True)
    scale = hi - lo
    x01 = (x - lo) / scale.clamp_min(torch.finfo(torch.float32).tiny)

    u = _rand((b, 4), generator, draw, device)
    shuffle, nonlinear, paint, inpaint = (u[:, 0] < cfg.local_rate, u[:, 1] < cfg.nonlinear_rate,
                                          u[:, 2] < cfg.paint_rate, u[:, 3] < cfg.inpaint_rate)
    x01 = local_pixel_shuffle(x01, generator, cfg.shuffle_max_fraction, cfg.shuffle_coverage, shuffle)[0]
    x01 = nonlinear_transform(x01, generator, nonlinear)
    inner = painting_boxes(b, spatial, *cfg.inpaint_extent, cfg.inpaint_boxes, cfg.box_continue, False, cfg.border,
                           False, generator, device)
    outer = painting_boxes(b, spatial, *cfg.outpaint_cut, cfg.outpaint_boxes, cfg.box_continue, True, cfg.border,
                           True, generator, device)
    view = (b,) + (1,) * (x.dim() - 1)
    noisy = torch.where((paint & inpaint).view(view), inner, torch.zeros((), dtype=torch.bool, device=device))
    noisy = noisy | ((paint & ~inpaint).view(view) & ~outer)
    noise = _rand(x.shape, generator, draw, device)
    x01 = torch.where(noisy, noise, x01)
    inputs = (x01 * scale + lo).to(images.dtype)
    untouched = ~(shuffle | nonlinear | paint)  # exactly the target, without the round trip through [0, 1]
    inputs = torch.where(untouched.view(view), images, inputs)
    return inputs, images.clone(), None
