"""Spatial axis orders of the ecosystems, and the permutation of pretrained tensors between them.

MONAI pipelines order arrays (C, X, Y, Z), nnU-Net (C, Z, Y, X) (REFERENCE.md, "MONAI networks"). A
kernel learnt on one and applied to the other sees every direction swapped, so MONAI weights are permuted into
nnU-Net's order by default (:func:`permute_spatial_axes`); with ``to_axis_order=None`` they are left as they are and
the notes warn. Either way ``notes`` (and the transfer report, via
:func:`~nnunetv2_ext.transfer.report.with_source_notes`) says which was done.
The permutation is the exact one (tested: a permuted Swin ViT computes the permuted features of the permuted input).
Two things it cannot know: orientation flips (a RAS vs LPS reorientation in the pretraining pipeline reverses an axis;
files do not record it), and MONAI's own Swin quirk: where a stage is smaller than the window, MONAI indexes its
relative position table with the first n entries of the full window, which is not axis-symmetric, so such stages
differ slightly after any permutation.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import replace
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

# spatial axis order of the arrays each ecosystem's networks see
AXIS_ORDERS = {"nnunet": "(C, Z, Y, X)", "monai": "(C, X, Y, Z)"}
# MONAI PatchMerging: order in which the 2x2x2 neighbours are concatenated before norm + reduction
# (monai.networks.nets.swin_unetr: PatchMerging = legacy v0.9 order, the default 'merging'; PatchMergingV2 =
# itertools.product order). Offsets are along the network's spatial axes 0, 1, 2.
MERGING_OFFSETS = {
    "merging": [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1)],
    "mergingv2": list(itertools.product(range(2), range(2), range(2))),
}
_MERGING_2D = [(0, 0), (1, 0), (0, 1), (1, 1)]  # PatchMergingV2 2D: x[:, j::2, i::2] for i, j in product
_POS_EMBED = re.compile(r"(^|\.)(pos_embed|position_embeddings|absolute_pos_embed)$")


def _spatial_perm(ndim_spatial: int) -> List[int]:
    return list(range(ndim_spatial))[::-1]


def _is_cube(n: int, d: int) -> Optional[int]:
    r = round(n ** (1.0 / d))
    for c in (r - 1, r, r + 1):
        if c > 0 and c ** d == n:
            return c
    return None


def permute_spatial_axes(state: Mapping[str, torch.Tensor], from_order: str, to_order: str,
                         merging: str = "merging") -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Reverse the spatial axes of every tensor that has them, to move weights between MONAI's (C, X, Y, Z) and
    nnU-Net's (C, Z, Y, X) conventions. Pure: ``state`` is not modified.

    A network with the returned weights applied to ``x.permute(0, 1, 4, 3, 2)`` computes what the original computes
    on ``x``, permuted the same way. Tensors with spatial axes:

    - convolution and transposed-convolution kernels (``*.weight`` with 4 or 5 dims): ``[o, i, a, b, c] ->
      [o, i, c, b, a]`` (dims 2.. reversed);
    - Swin relative position bias tables (``*.relative_position_bias_table``, ``((2w-1)^d, heads)`` for a cubic
      window): the table seen as ``(2w-1, .., 2w-1, heads)`` has its offset axes reversed (Liu et al. 2021, Swin
      Transformer, eq. (4): the bias is indexed by the relative offset along each axis);
    - Swin patch merging (``*.downsample.reduction.weight`` and ``*.downsample.norm.*``): the 2^d neighbour blocks
      of the concatenated input are reordered, in MONAI's ``merging`` (default) or ``mergingv2`` order;
    - absolute positional embeddings (``*.pos_embed``, ``*.position_embeddings``, ``(1, n^d, D)`` on a cubic
      grid): grid axes reversed.

    Anything else (linear layers, norms, biases, 1x1 convolutions' values) has no spatial axis and is kept.
    Tensors that have spatial axes this function cannot see (a positional embedding on a non-cubic grid or with a
    class token; a non-cubic window's bias table) are kept and missing from the returned list: check with
    :func:`unpermuted_spatial_keys`.

    Args:
        state: flat state dict.
        from_order, to_order: ``'monai'`` or ``'nnunet'``.
        merging: MONAI ``SwinUNETR(downsample=...)`` the weights were trained with: ``'merging'`` (the default) or
            ``'mergingv2'``; the state dict cannot tell them apart.

    Returns:
        (new state dict in the same key order, keys whose values were permuted).

    Raises:
        ValueError: unknown axis order or merging mode.
    """
    for order in (from_order, to_order):
        if order not in AXIS_ORDERS:
            raise ValueError(f"axis order must be one of {sorted(AXIS_ORDERS)}, got {order!r}")
    if merging not in MERGING_OFFSETS:
        raise ValueError(f"merging must be one of {sorted(MERGING_OFFSETS)} (MONAI SwinUNETR downsample=...), "
                         f"got {merging!r}")
    out = dict(state)
    if from_order == to_order:
        return out, []
    permuted: List[str] = []
    spatial = 3
    for k, v in state.items():
        if k.endswith(".weight") and v.ndim in (4, 5):
            spatial = v.ndim - 2
            break
    for k, v in state.items():
        new = None
        if k.endswith(".weight") and v.ndim in (4, 5):
            if any(s > 1 for s in v.shape[2:]):
                new = v.permute(0, 1, *[2 + d for d in _spatial_perm(v.ndim - 2)])
        elif k.endswith("relative_position_bias_table") and v.ndim == 2:
            side = _is_cube(v.shape[0], spatial)
            if side is not None:
                grid = v.reshape(*([side] * spatial), v.shape[1])
                new = grid.permute(*_spatial_perm(spatial), spatial).reshape(v.shape)
        elif _POS_EMBED.search(k) and v.ndim == 3:
            side = _is_cube(v.shape[1], spatial)
            if side is not None and side > 1:
                grid = v.reshape(v.shape[0], *([side] * spatial), v.shape[2])
                new = grid.permute(0, *[1 + d for d in _spatial_perm(spatial)], spatial + 1).reshape(v.shape)
        elif re.search(r"(^|\.)downsample\.(reduction\.weight|norm\.weight|norm\.bias)$", k):
            offsets: Sequence[Tuple[int, ...]] = MERGING_OFFSETS[merging] if spatial == 3 else _MERGING_2D
            n = len(offsets)
            dim = v.ndim - 1  # the concatenated 2^d * C axis: last for both the Linear weight and the LayerNorm
            if v.shape[dim] % n == 0:
                perm = [offsets.index(tuple(reversed(o))) for o in offsets]
                blocks = v.reshape(*v.shape[:dim], n, v.shape[dim] // n)
                new = blocks[..., perm, :].reshape(v.shape)
        if new is not None:
            out[k] = new.contiguous()
            permuted.append(k)
    return out, permuted


def unpermuted_spatial_keys(state: Mapping[str, torch.Tensor], permuted: Sequence[str]) -> List[str]:
    """Keys that look spatial (positional embeddings, bias tables) but :func:`permute_spatial_axes` left alone."""
    done = set(permuted)
    return [k for k, v in state.items() if k not in done and
            ((_POS_EMBED.search(k) and v.ndim == 3 and v.shape[1] > 1) or k.endswith("relative_position_bias_table"))]


def apply_axis_order(weights: Any, to_axis_order: Optional[str], merging: str = "merging") -> Any:
    """``weights`` (a reader's :class:`~nnunetv2_ext.transfer.checkpoint.ExternalWeights`) in the axis order
    ``to_axis_order``: a copy with the state permuted (:func:`permute_spatial_axes`), ``axis_order`` and
    ``permuted_keys`` set, and a note saying what was permuted and what could not be. With ``to_axis_order=None``
    the tensors stay as they are (a copy with a warning note where they are not in nnU-Net's order); with the
    weights' own order, ``weights`` itself. ``weights`` is never modified.

    Raises:
        ValueError: unknown axis order or merging mode.
    """
    src = weights.axis_order
    if to_axis_order is None or to_axis_order == src:
        if to_axis_order is None and src != "nnunet":
            return replace(weights, notes=list(weights.notes) + [
                f"spatial axes NOT permuted: the kernels stay in {src} order {AXIS_ORDERS[src]}; in nnU-Net, whose "
                f"arrays are {AXIS_ORDERS['nnunet']}, every pretrained filter then sees its directions swapped (pass "
                f"to_axis_order='nnunet' to permute)"])
        return weights
    state, permuted = permute_spatial_axes(weights.state, src, to_axis_order, merging=merging)
    left = unpermuted_spatial_keys(state, permuted)
    note = (f"spatial axes permuted from {src} {AXIS_ORDERS[src]} to {to_axis_order} {AXIS_ORDERS[to_axis_order]} "
            f"in {len(permuted)} tensors (convolution kernels, Swin relative position bias tables, patch merging with "
            f"MONAI downsample={merging!r})" + (f"; NOT permuted (spatial layout unknown): {left}" if left else ""))
    return replace(weights, state=state, axis_order=to_axis_order, permuted_keys=permuted,
                   notes=list(weights.notes) + [note])
