"""Adapt a pretrained input projection (a network's first convolution or patch embedding) to the target's input
channels: the one place that builds such a kernel for other channels.

:func:`~nnunetv2_ext.transfer.transfer.transfer_weights` calls :func:`adapt_input_kernel` for every input projection
it fills: an encoder's first convolution (its channels from the source encoder of the same modalities, or borrowed
from another), the declared input projection of a network without encoder structure (a MONAI backbone's patch
embedding), and the first convolution of an encoder with no pretrained modality under ``new_modality_init='mean'``.

Each target channel takes the kernel slice of the pretrained channel of the same modality. A channel whose modality the
source never saw is new: ``'kaiming'`` keeps the target's He-initialised slice (or redraws it from a generator), as in
BrainSegFounder's 2 -> 4 channel expansion (Cox et al. 2024, "BrainSegFounder: Towards 3D Foundation Models for
Neuroimage Segmentation", sec. 2.4.1: "adding two new channels, whose weights were randomly initialized using the
Kaiming initialization method"); ``'mean'`` takes the mean of the pretrained channels' kernels.

Kernels must agree beyond the input-channel axis (:func:`same_beyond_input_channels`): the same number of output
channels and the same spatial kernel, hence the same dimensionality (no 2D <-> 3D inflation).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch

NEW_MODALITY_INITS = ("kaiming", "mean")
# negative slope nnU-Net's InitWeights_He uses for kaiming_normal_ (and MultiEncoderUNet.initialize)
HE_NEG_SLOPE = 1e-2


def same_beyond_input_channels(source: torch.Tensor, target: torch.Tensor) -> bool:
    """True if two kernels ``(out, in, *spatial)`` differ at most in their input channels (dim 1), so that one's
    channel slices can fill the other."""
    return source.ndim == target.ndim and source.shape[0] == target.shape[0] and source.shape[2:] == target.shape[2:]


def mean_input_kernel(kernels: Sequence[torch.Tensor]) -> torch.Tensor:
    """The mean over input channels of each kernel, then over the kernels: ``(out, *spatial)`` in float32, what a
    new channel gets under ``new_modality_init='mean'``.

    Raises:
        ValueError: no kernel given.
    """
    if not kernels:
        raise ValueError("mean_input_kernel needs at least one kernel, got none")
    return torch.stack([k.float().mean(1) for k in kernels]).mean(0)


def adapt_input_kernel(target: torch.Tensor, slices: Sequence[Optional[torch.Tensor]],
                       new_channel_init: str = "kaiming", mean: Optional[torch.Tensor] = None,
                       generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, str]:
    """A kernel shaped like ``target`` whose input channel ``p`` is ``slices[p]`` (a pretrained ``(out, *spatial)``
    slice, cast to the target's dtype and device) or, where ``slices[p]`` is None, a new channel.

    Args:
        target: the target's freshly initialised kernel ``(out, in, *spatial)``; not modified.
        slices: one entry per target input channel.
        new_channel_init: ``'kaiming'``: a new channel keeps the target's He-initialised slice, redrawn from
            ``generator`` if one is given (He normal with nnU-Net's negative slope :data:`HE_NEG_SLOPE`, fan-in of
            the whole kernel); ``'mean'``: a new channel is ``mean`` (:func:`mean_input_kernel`).
        mean: the kernel new channels get under ``'mean'``.
        generator: see ``new_channel_init``. Channels are drawn in channel order, so a seeded generator gives the same
            kernel every time.

    Returns:
        (kernel, action): ``'adapted'`` if a channel came from a pretrained slice or new channels took the mean, else
        ``'new'`` (every channel the target's own or redrawn). A caller whose result is the source kernel unchanged
        reports ``'loaded'`` instead.

    Raises:
        ValueError: ``slices`` does not match the target's input channels, an unknown ``new_channel_init``, or
            ``'mean'`` with no ``mean`` for a new channel.
    """
    if len(slices) != target.shape[1]:
        raise ValueError(f"adapt_input_kernel needs one slice (or None) per target input channel: target kernel "
                         f"{tuple(target.shape)} has {target.shape[1]}, got {len(slices)}")
    if new_channel_init not in NEW_MODALITY_INITS:
        raise ValueError(f"new_channel_init must be one of {NEW_MODALITY_INITS}, got {new_channel_init!r}")
    out = target.detach().clone()
    pretrained = 0
    for p, piece in enumerate(slices):
        if piece is not None:
            out[:, p] = piece.detach().to(device=target.device, dtype=target.dtype)
            pretrained += 1
        elif new_channel_init == "mean":
            if mean is None:
                raise ValueError("new_channel_init='mean' needs the mean kernel (mean_input_kernel) for new channels")
            out[:, p] = mean.to(out.dtype)
        elif generator is not None:
            fan_in = out.shape[1] * math.prod(out.shape[2:])
            std = math.sqrt(2.0 / (1 + HE_NEG_SLOPE ** 2)) / math.sqrt(fan_in)
            draw = torch.randn(out[:, p].shape, generator=generator, dtype=torch.float32) * std
            out[:, p] = draw.to(device=out.device, dtype=out.dtype)
    action = "adapted" if pretrained or new_channel_init == "mean" else "new"
    return out, action


def new_channel_note(names: Sequence[str], new_channel_init: str = "kaiming",
                     generator: Optional[torch.Generator] = None) -> str:
    """The report's words for the new channels ``names``: how :func:`adapt_input_kernel` initialised them."""
    if new_channel_init == "mean":
        how = "mean of the pretrained channels' kernels"
    elif generator is not None:
        how = "He (Kaiming) init redrawn, BrainSegFounder (Cox et al. 2024) sec. 2.4.1"
    else:
        how = "target's He (Kaiming) init kept, BrainSegFounder (Cox et al. 2024) sec. 2.4.1"
    return f"new {', '.join(names)} ({how})"
