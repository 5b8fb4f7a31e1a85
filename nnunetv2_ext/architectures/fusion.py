"""Fusion of per-modality encoder features at one resolution level.

Taheri Otaghsara et al. 2025 ("Multi-encoder nnU-Net outperforms Transformer models with self-supervised
pretraining", section 4.1.1 and Figure 1) combines the encoded representations of all
modalities before the shared decoder. The shared decoder expects one skip per level with the decoder width, so
each level gets one fusion block mapping ``n_encoders`` feature maps to that width.
"""
from __future__ import annotations

from typing import Sequence, Type

import torch
from torch import nn

FUSION_MODES = ("concat", "sum", "mean")


class FeatureFusion(nn.Module):
    """Fuse a list of same-resolution feature maps into one.

    Args:
        mode: ``concat`` (channel concatenation, then 1x1(x1) conv + norm + nonlin to ``out_channels``),
            ``sum`` or ``mean`` (element-wise; every input must already have ``out_channels`` channels).
        in_channels: channels of each encoder's feature map at this level.
        out_channels: channels the decoder expects at this level.
        conv_op, conv_bias, norm_op, norm_op_kwargs, nonlin, nonlin_kwargs: as in dynamic-network-architectures.
    """

    def __init__(self, mode: str, in_channels: Sequence[int], out_channels: int, conv_op: Type[nn.Module],
                 conv_bias: bool = False, norm_op: Type[nn.Module] | None = None, norm_op_kwargs: dict | None = None,
                 nonlin: Type[nn.Module] | None = None, nonlin_kwargs: dict | None = None):
        super().__init__()
        if mode not in FUSION_MODES:
            raise ValueError(f"fusion must be one of {FUSION_MODES}, got {mode!r}")
        if mode != "concat" and any(c != out_channels for c in in_channels):
            raise ValueError(f"fusion {mode!r} adds feature maps element-wise, so every encoder needs the decoder "
                             f"width {out_channels} at this level, got {list(in_channels)}; use fusion='concat' "
                             f"or encoder_width=1.0")
        self.mode = mode
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        if mode == "concat":
            layers = [conv_op(sum(in_channels), out_channels, kernel_size=1, stride=1, padding=0, bias=conv_bias)]
            if norm_op is not None:
                layers.append(norm_op(out_channels, **(norm_op_kwargs or {})))
            if nonlin is not None:
                layers.append(nonlin(**(nonlin_kwargs or {})))
            self.proj = nn.Sequential(*layers)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        if self.mode == "concat":
            return self.proj(torch.cat(list(features), dim=1))
        fused = torch.stack(list(features), dim=0).sum(0)
        return fused / len(features) if self.mode == "mean" else fused

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Voxels of the feature maps this block writes (nnU-Net's planner uses it to estimate memory)."""
        n = int(torch.tensor(list(input_size)).prod())
        if self.mode == "concat":
            # concatenated input + conv output + norm output (+ nonlin is in place)
            return (sum(self.in_channels) + 2 * self.out_channels) * n
        return self.out_channels * n
