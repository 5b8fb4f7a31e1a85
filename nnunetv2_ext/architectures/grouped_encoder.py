"""All encoders of a multi-encoder run as one stack of grouped convolutions (a fast path; same function, same weights).

``MultiEncoder`` runs its N encoders one after another: N times the kernel launches, each on a narrow feature map.
When the encoders are identical plain encoders (dynamic-network-architectures' ``PlainConvEncoder``, equal widths,
the same number of input channels each), the N of them are one network with grouped convolutions (Krizhevsky et
al., NeurIPS 2012; the "cardinality" of ResNeXt, Xie et al., CVPR 2017): stacking the N conv weights
``(C_out, C_in, *k)`` along the output axis and convolving with ``groups=N`` computes exactly the N separate
convolutions, each group reading only its own encoder's channels. Instance norm, dropout, pooling and element-wise
nonlinearities act per channel, so applied once to the ``N * C`` channels they equal the N separate applications.

The parameters stay the per-encoder ``nn.Parameter`` objects: the grouped weights are concatenated on the fly
(``torch.cat``, which autograd differentiates back to each original), so the state_dict, checkpoints, optimisers
and DDP see exactly the tensors of the separate path. Only the order of floating-point work may differ (the
backend picks another kernel), and dropout draws its random mask once for the stacked tensor instead of once per
encoder (same distribution, other samples).
"""
from __future__ import annotations

from typing import Iterable, Iterator, List, Optional, Sequence, Tuple, Union, cast

import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from dynamic_network_architectures.building_blocks.simple_conv_blocks import ConvDropoutNormReLU, StackedConvBlocks
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.dropout import _DropoutNd
from torch.nn.modules.instancenorm import _InstanceNorm
from torch.nn.modules.pooling import _AvgPoolNd, _MaxPoolNd

ENCODER_IMPLS = ("separate", "grouped")
# parameter-free activations that still mix channels, so they cannot run on the stacked tensor
CHANNEL_MIXING = (nn.Softmax, nn.Softmin, nn.LogSoftmax, nn.Softmax2d, nn.GLU)
# containers whose forward only runs their children in order, and where the children are
_SEQUENTIAL_BLOCKS = {nn.Sequential: None, StackedConvBlocks: "convs", ConvDropoutNormReLU: "all_modules"}
# the encoders, as a list or as the nn.ModuleList that holds them (not a typing.Sequence)
Encoders = Union[Sequence[nn.Module], nn.ModuleList]


def _layers(module: nn.Module) -> Iterator[nn.Module]:
    """The leaf layers of a stage in the order its forward runs them."""
    kind = type(module)
    if kind in _SEQUENTIAL_BLOCKS:
        attr = _SEQUENTIAL_BLOCKS[kind]
        children: Iterable[nn.Module] = cast(nn.Sequential, module) if attr is None else getattr(module, attr)
        for child in children:
            yield from _layers(child)
    else:
        yield module


def _layer_problem(layer: nn.Module) -> Optional[str]:
    """Why ``layer`` cannot run grouped (``None`` if it can)."""
    if isinstance(layer, _ConvNd):
        if type(layer) not in (nn.Conv1d, nn.Conv2d, nn.Conv3d) or layer.groups != 1 \
                or layer.padding_mode != "zeros":
            return f"{layer!r} is not a plain zero-padded convolution"
        return None
    if isinstance(layer, _InstanceNorm):
        return (f"{layer!r} tracks running statistics, which the grouped path would not update"
                if layer.track_running_stats else None)
    if isinstance(layer, (_DropoutNd, _MaxPoolNd, _AvgPoolNd, nn.Identity)):
        return None
    if type(layer).__module__ == "torch.nn.modules.activation" and not isinstance(layer, CHANNEL_MIXING) \
            and not any(True for _ in layer.parameters()):
        return None
    return (f"{type(layer).__name__} is not a layer the grouped path knows to act per channel (supported: "
            f"Conv1d/2d/3d, InstanceNorm without running stats, dropout, pooling, parameter-free element-wise "
            f"activations)")


def grouped_encoder_problem(encoders: Encoders, groups: Sequence[Sequence[int]]) -> Optional[str]:
    """Why these encoders cannot run as one grouped stack (``None`` if they can)."""
    for i, enc in enumerate(encoders):
        if not isinstance(enc, PlainConvEncoder) or type(enc).forward is not PlainConvEncoder.forward:
            return (f"encoder {i} is a {type(enc).__name__}; only PlainConvEncoder (encoder='plain') is supported "
                    f"(residual blocks add a skip path the grouped stack does not implement)")
    sizes = sorted({len(g) for g in groups})
    if len(sizes) > 1:
        return f"the encoder groups {[list(g) for g in groups]} have different numbers of channels {sizes}"
    reference = repr(encoders[0])
    for i, enc in enumerate(encoders[1:], start=1):
        if repr(enc) != reference:
            return f"encoder {i} differs from encoder 0 in its layers or their settings"
    for stage in cast(PlainConvEncoder, encoders[0]).stages:  # every encoder is one, checked above
        for layer in _layers(stage):
            problem = _layer_problem(layer)
            if problem is not None:
                return problem
    return None


def check_groupable(encoders: Encoders, groups: Sequence[Sequence[int]]) -> None:
    """Raise ``ValueError`` unless ``grouped_forward_per_encoder`` can run these encoders.

    Raises:
        ValueError: what differs or is unsupported, and the fix (``encoder_impl='separate'``).
    """
    problem = grouped_encoder_problem(encoders, groups)
    if problem is not None:
        raise ValueError(f"encoder_impl='grouped' needs identical plain encoders with the same number of input "
                         f"channels each: {problem}. Use encoder_impl='separate' for this network.")


def _grouped_layer(layers: Tuple[nn.Module, ...], x: torch.Tensor) -> torch.Tensor:
    """Apply the N corresponding layers of the N encoders to the stacked tensor ``x`` (N * C channels)."""
    ref = layers[0]
    weight: Optional[torch.Tensor]
    if isinstance(ref, _ConvNd):
        # the N layers have the type and settings of ref (grouped_encoder_problem compared the encoders' reprs)
        convs = cast(Tuple[_ConvNd, ...], layers)
        weight = torch.cat([layer.weight for layer in convs])
        bias = torch.cat([cast(torch.Tensor, layer.bias) for layer in convs]) if ref.bias is not None else None
        conv = getattr(F, f"conv{len(ref.kernel_size)}d")
        return conv(x, weight, bias, ref.stride, ref.padding, ref.dilation, len(layers))
    if isinstance(ref, _InstanceNorm):
        norms = cast(Tuple[_InstanceNorm, ...], layers)
        weight = torch.cat([cast(torch.Tensor, layer.weight) for layer in norms]) if ref.affine else None
        bias = torch.cat([cast(torch.Tensor, layer.bias) for layer in norms]) if ref.affine else None
        return F.instance_norm(x, None, None, weight, bias, True, ref.momentum or 0.0, ref.eps)
    # per-channel or element-wise and parameter-free: the first encoder's layer stands for all
    return ref(x)


def grouped_forward_per_encoder(encoders: Encoders, groups: Sequence[Sequence[int]],
                                x: torch.Tensor) -> List[List[torch.Tensor]]:
    """The skips of every encoder, as ``[enc(x[:, group]) for enc, group in zip(encoders, groups)]``, computed by
    one grouped convolution per layer. Call ``check_groupable`` once before.

    Returns:
        per encoder, its skips per stage (channel slices, views, of the stacked stage outputs).
    """
    n = len(encoders)
    order = [c for g in groups for c in g]
    if order != list(range(x.shape[1])):
        x = x[:, order]
    per_stage = []
    for stages in zip(*(enc.stages for enc in encoders)):
        for layers in zip(*(list(_layers(stage)) for stage in stages)):
            x = _grouped_layer(layers, x)
        per_stage.append(x.chunk(n, dim=1))
    return [[chunks[i] for chunks in per_stage] for i in range(n)]
