"""Cross-modality prediction pretext: predict one MRI modality from others.

R. Umesh Kalyanappa, "Early Fusion-based Self-Supervised Learning (SSL) with Cross-Modality Prediction for Brain Tumour
Segmentation", Bachelor's thesis, Satakunta University of Applied Sciences, 2025, sec. 3.1: the SSL model "is configured
to accept two input channels - T1 and T1Gd and tasked with reconstructing the FLAIR modality",
``y_hat = F_SSL(x) = D(E(x))``, trained with the mean squared error ``L_SSL = sum_i ||y_hat_i - y_i||^2``; sec. 4.3.1
evaluates it with MSE, PSNR ``20 log10(MAX_I / sqrt(MSE))`` and SSIM
(Wang et al. 2004, "Image quality assessment: from error visibility to structural similarity", IEEE TIP 13(4)).
The paper slices the input to the two channels; :func:`split_modalities` can do that (``mode="select"``) or keep the
channel count and zero every channel that is not an input (``mode="zero"``), so a multi-encoder network keeps one
encoder per modality and its checkpoint maps onto the fine-tuning network by modality name.

Pure tensor functions, no file I/O.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence, Tuple, cast

import torch

__all__ = ["SPLIT_MODES", "SSIM_WIN_SIZE", "resolve_channels", "split_modalities", "psnr", "mean_intensity_psnr",
           "ssim3d"]

SPLIT_MODES = ("zero", "select")
# SSIM window of Wang et al. 2004 (11-tap gaussian, sigma 1.5; k1 = 0.01, k2 = 0.03), MONAI SSIMMetric's defaults
SSIM_WIN_SIZE = 11
SSIM_SIGMA = 1.5


def resolve_channels(channel_names: Mapping, names: Sequence[str]) -> list[int]:
    """Channel indices of modality ``names`` in dataset.json ``channel_names`` (``{"0": "T1", ...}``).

    Names match exactly, else case-insensitively. Raises ``ValueError`` naming the available channels when a name is
    missing or ambiguous, or when ``names`` is empty or repeats a channel.
    """
    if isinstance(names, str):
        names = [names]
    names = list(names)
    try:
        table = {int(k): str(v) for k, v in channel_names.items()}
    except (AttributeError, TypeError, ValueError):
        raise ValueError(f"channel_names must map channel indices to names (dataset.json 'channel_names', e.g. "
                         f"{{'0': 'T1', '1': 'FLAIR'}}), got {channel_names!r}") from None
    available = ", ".join(f"{i}: {n}" for i, n in sorted(table.items()))
    if not names:
        raise ValueError(f"no modality names given; available channels: {available}")
    out = []
    for name in names:
        exact = [i for i, n in table.items() if n == name]
        loose = [i for i, n in table.items() if n.strip().lower() == str(name).strip().lower()]
        found = exact or loose
        if len(found) != 1:
            why = "is not a channel of the dataset" if not found else "matches several channels"
            raise ValueError(f"modality {name!r} {why}; available channels: {available}")
        out.append(found[0])
    if len(set(out)) != len(out):
        raise ValueError(f"modalities {names} name the same channel more than once (channels {out}); available "
                         f"channels: {available}")
    return out


def split_modalities(x: torch.Tensor, target_channels: Sequence[int], input_channels: Sequence[int],
                     mode: str = "zero") -> Tuple[torch.Tensor, torch.Tensor]:
    """Split a batch ``x`` (B, C, *spatial) into the network input and the modality to predict (Umesh Kalyanappa
    2025, sec. 3.1).

    Args:
        x: images, channels in dataset.json order.
        target_channels: channels to predict (e.g. FLAIR).
        input_channels: channels the network sees (e.g. T1, T1Gd); disjoint from ``target_channels``.
        mode: ``"zero"``: the input keeps all C channels with every channel outside ``input_channels`` set to 0 (the
            target and any unused modality); ``"select"``: the input is ``x[:, input_channels]`` (the paper's slicing).

    Returns:
        ``(input, target)``; ``target = x[:, target_channels]`` (a copy, as is the input).
    """
    if mode not in SPLIT_MODES:
        raise ValueError(f"mode must be one of {SPLIT_MODES}, got {mode!r}")
    if x.dim() < 3:
        raise ValueError(f"x must be (B, C, *spatial), got shape {tuple(x.shape)}")
    c = x.shape[1]
    tgt, inp = [int(i) for i in target_channels], [int(i) for i in input_channels]
    if not tgt or not inp:
        raise ValueError(f"need at least one target and one input channel, got target {tgt} and input {inp}")
    bad = sorted({i for i in tgt + inp if not 0 <= i < c})
    if bad:
        raise ValueError(f"channels {bad} do not exist: x has channels 0..{c - 1}")
    both = sorted(set(tgt) & set(inp))
    if both:
        raise ValueError(f"channels {both} are both input and target: the network would see what it must predict")
    target = x[:, tgt].clone()
    if mode == "select":
        return x[:, inp].clone(), target
    keep = torch.zeros(c, dtype=torch.bool, device=x.device)
    keep[inp] = True
    shape = (1, c) + (1,) * (x.dim() - 2)
    return torch.where(keep.view(shape), x, torch.zeros((), dtype=x.dtype, device=x.device)), target


def _data_range(target: torch.Tensor, data_range: Optional[float]) -> torch.Tensor:
    """(B,) data range: the given one, or per sample ``max - min`` of the target."""
    b = target.shape[0]
    if data_range is not None:
        if not data_range > 0:
            raise ValueError(f"data_range must be > 0, got {data_range}")
        return torch.full((b,), float(data_range), dtype=torch.float64, device=target.device)
    flat = target.reshape(b, -1).double()
    return flat.amax(1) - flat.amin(1)


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: Optional[float] = None) -> torch.Tensor:
    """Peak signal-to-noise ratio per sample, ``20 log10(MAX_I / sqrt(MSE))`` in dB (Umesh Kalyanappa 2025 sec. 4.3.1).

    ``pred``/``target`` (B, ...). ``MAX_I = data_range``, or per sample ``target.max() - target.min()`` when None
    (nnU-Net images are z-scored, not in a fixed range). Returns float64 (B,); ``inf`` where ``pred == target``.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    b = target.shape[0]
    mse = (pred.double() - target.double()).pow(2).reshape(b, -1).mean(1)
    return 20 * torch.log10(_data_range(target, data_range)) - 10 * torch.log10(mse)


def mean_intensity_psnr(target: torch.Tensor, data_range: Optional[float] = None) -> torch.Tensor:
    """The trivial baseline of :func:`psnr`: the PSNR per sample of predicting each target image's own mean intensity
    (per sample and channel) everywhere, i.e. ``20 log10(MAX_I / std)``. It knows the target's mean, which the network
    does not see, so a prediction above it has learned the target's structure from the other modalities.

    ``target`` (B, C, *spatial); ``data_range`` as in :func:`psnr`. Returns float64 (B,).
    """
    if target.dim() < 3:
        raise ValueError(f"target must be (B, C, *spatial), got shape {tuple(target.shape)}")
    mean = target.double().mean(dim=tuple(range(2, target.dim())), keepdim=True)
    return psnr(mean.expand_as(target), target, data_range)


def ssim3d(pred: torch.Tensor, target: torch.Tensor, data_range: Optional[float] = None,
           win_size: int = SSIM_WIN_SIZE, kernel_sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Structural similarity per sample (Wang et al. 2004, eq. (13)), averaged over voxels and channels: MONAI's
    ``SSIMMetric`` (3D gaussian window ``win_size``, sigma ``kernel_sigma``, k1 = 0.01, k2 = 0.03).

    ``pred``/``target`` (B, C, D, H, W) (or (B, C, H, W): 2D SSIM), each spatial size >= ``win_size``.
    ``data_range`` as in :func:`psnr` (per sample target range when None). Returns float32 (B,); 1 where
    ``pred == target``.
    """
    from monai.metrics import SSIMMetric  # lazily: monai is only needed for this metric

    if pred.shape != target.shape or pred.dim() not in (4, 5):
        raise ValueError(f"ssim3d needs pred and target of the same shape (B, C, D, H, W) or (B, C, H, W), got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    if min(pred.shape[2:]) < win_size:
        raise ValueError(f"ssim3d's {win_size}-voxel window needs every spatial size >= {win_size}, got "
                         f"{tuple(pred.shape[2:])}; pass a smaller win_size")
    ranges = _data_range(target, data_range)
    out = []
    for i in range(pred.shape[0]):
        # a constant target (range 0) has no contrast to compare: any positive range gives the same SSIM scale
        r = float(ranges[i]) if float(ranges[i]) > 0 else 1.0
        metric = SSIMMetric(spatial_dims=pred.dim() - 2, data_range=r, win_size=win_size, kernel_sigma=kernel_sigma)
        # a tensor for tensor inputs (MONAI's return type also covers sequences of them)
        out.append(cast(torch.Tensor, metric(pred[i:i + 1].float(), target[i:i + 1].float())).reshape(()))
    return torch.stack(out)
