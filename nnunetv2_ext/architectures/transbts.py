"""TransBTS: a 3D CNN encoder, a Transformer on the bottleneck, and a CNN decoder with skip connections.

W. Wang, C. Chen, M. Ding, H. Yu, S. Zha, J. Li, "TransBTS: Multimodal Brain Tumor Segmentation Using Transformer",
MICCAI 2021, LNCS 12901, pp. 109-119 (arXiv:2103.04430), section 2 and Figure 1; compared against in Taheri
Otaghsara et al. 2025, "Multi-encoder nnU-Net outperforms Transformer models with self-supervised pretraining"
(section 4.4). The paper's parts, as modules of ``TransBTS``:

- ``encoder`` (sec. 2.1, "spatial and depth feature extraction"): a 3x3x3 stem conv and residual blocks at four
  levels, downsampling by strided 3x3x3 convs to 1/8 of the input (``F`` with K = 8 x base width = 128 channels);
- ``bottleneck`` ("feature embedding", "Transformer layers", "feature mapping"): the paper's linear projection, a
  3x3x3 conv from K to d = 512 channels, flattened to N = (H/8)(W/8)(D/8) tokens plus a learnable position embedding;
  L = 4 pre-norm Transformer layers (``z'_l = MHA(LN(z_{l-1})) + z_{l-1}``, ``z_l = FFN(LN(z'_l)) + z'_l``; torch's
  ``TransformerEncoderLayer`` with ``norm_first=True``); reshaped back to d x H/8 x W/8 x D/8 and reduced to K by
  convolution;
- ``decoder`` ("progressive feature upsampling"): at each level a 1x1x1 conv halves the width, a transposed conv
  doubles the resolution, the encoder skip is concatenated and fused by a 1x1x1 conv, then a residual block; a
  1x1x1 conv predicts the classes.

Details the paper leaves open follow the authors' release (github.com/Wenxuan-1119/TransBTS,
``TransBTS_downsample8x_skipconnection.py``): blocks per encoder level (1, 2, 2, 4), pre-activation residual blocks
with GroupNorm(8) in the encoder, BN + ReLU before the projection, a feature mapping of conv-BN-ReLU x 2 followed by a
residual block, post-activation residual decoder blocks with BN, FFN width 4096, dropout 0.1 in the Transformer and
0.2 channel dropout after the stem. Deliberate differences, all small:

- the final LayerNorm of the Transformer is applied before the feature mapping (the release defines it but feeds the
  decoder the un-normalised output of the last layer, leaving that LayerNorm unused);
- the stem's channel dropout is active in training only (the release calls ``F.dropout3d`` with its default
  ``training=True``, so it also drops at inference);
- GroupNorm uses ``gcd(8, channels)`` groups, so narrow test networks build; identical at the default widths;
- downsampling strides come from ``strides`` (default 2 on every axis), so anisotropic plans work; the position
  embedding has one entry per bottleneck voxel of ``patch_size``;
- deep supervision, which TransBTS does not use, adds 1x1x1 prediction convs at 1/2 and 1/4 resolution (nnU-Net's
  ``len(strides) - 1`` scales). They exist with and without deep supervision, so checkpoints keep their keys.

Not built from dynamic-network-architectures blocks: its residual blocks are post-activation with a different layout
than the paper's encoder blocks, and the Transformer bottleneck does not fit its encoder interface.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Union, cast

import numpy as np
import torch
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import nn

from nnunetv2_ext.architectures.strides import IntOrSeq, PlansStrides, Triple


def group_norm(channels: int, groups: int = 8) -> nn.GroupNorm:
    """GroupNorm with ``groups`` groups (8 in the authors' release), fewer where ``channels`` is not divisible."""
    return nn.GroupNorm(math.gcd(groups, channels), channels)


class EncoderBlock(nn.Module):
    """Pre-activation residual block: ``x + conv(ReLU(GN(conv(ReLU(GN(x))))))`` (authors' ``EnBlock``)."""

    def __init__(self, channels: int, groups: int = 8):
        super().__init__()
        self.layers = nn.Sequential(group_norm(channels, groups), nn.ReLU(inplace=True),
                                    nn.Conv3d(channels, channels, 3, padding=1),
                                    group_norm(channels, groups), nn.ReLU(inplace=True),
                                    nn.Conv3d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)


def conv_bn_relu(in_channels: int, out_channels: int, kernel: int = 3) -> List[nn.Module]:
    return [nn.Conv3d(in_channels, out_channels, kernel, padding=kernel // 2), nn.BatchNorm3d(out_channels),
            nn.ReLU(inplace=True)]


class DecoderBlock(nn.Module):
    """Post-activation residual block: ``x + ReLU(BN(conv(ReLU(BN(conv(x))))))`` (authors' ``DeBlock``/``EnBlock2``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.layers = nn.Sequential(*conv_bn_relu(channels, channels), *conv_bn_relu(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)


class TransBTSEncoder(nn.Module):
    """3D CNN encoder (sec. 2.1): stem conv, then per level residual blocks, strided-conv downsampling between levels.

    Returns the features of every level, full resolution first (the last is ``F``, the bottleneck input).
    """

    def __init__(self, input_channels: int, features: Sequence[int], strides: Sequence[Triple],
                 blocks_per_stage: Sequence[int], stem_dropout: float, groups: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv3d(input_channels, features[0], 3, padding=1), nn.Dropout3d(stem_dropout))
        self.downs = nn.ModuleList([nn.Conv3d(features[i - 1], features[i], 3, stride=strides[i], padding=1)
                                    for i in range(1, len(features))])
        self.stages = nn.ModuleList([nn.Sequential(*[EncoderBlock(f, groups) for _ in range(n)])
                                     for f, n in zip(features, blocks_per_stage)])

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        skips = [self.stages[0](self.stem(x))]
        for down, stage in zip(self.downs, self.stages[1:]):
            skips.append(stage(down(skips[-1])))
        return skips


class TransformerBottleneck(nn.Module):
    """Feature embedding, Transformer layers and feature mapping (sec. 2.1 and 2.2).

    ``(B, K, h, w, d)`` -> projection (BN, ReLU, 3x3x3 conv to ``embedding_dim``) -> ``h*w*d`` tokens + learnable
    position embedding -> ``num_layers`` pre-norm Transformer layers -> LayerNorm -> reshape -> conv back to K.
    """

    def __init__(self, channels: int, bottleneck_size: Triple, embedding_dim: int, num_layers: int, num_heads: int,
                 mlp_dim: int, dropout: float):
        super().__init__()
        self.bottleneck_size = tuple(bottleneck_size)
        n_tokens = int(np.prod(bottleneck_size))
        self.projection = nn.Sequential(nn.BatchNorm3d(channels), nn.ReLU(inplace=True),
                                        nn.Conv3d(channels, embedding_dim, 3, padding=1))
        self.position_embedding = nn.Parameter(torch.zeros(1, n_tokens, embedding_dim))
        nn.init.trunc_normal_(self.position_embedding, std=0.02)
        self.embedding_dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(embedding_dim, num_heads, dim_feedforward=mlp_dim, dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, num_layers, norm=nn.LayerNorm(embedding_dim),
                                                 enable_nested_tensor=False)
        self.feature_mapping = nn.Sequential(*conv_bn_relu(embedding_dim, channels), *conv_bn_relu(channels, channels),
                                             DecoderBlock(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, *size = x.shape
        if tuple(size) != self.bottleneck_size:
            raise ValueError(f"the learned position embedding covers a {list(self.bottleneck_size)} bottleneck, got "
                             f"{size}: TransBTS only takes inputs of the patch_size it was built for")
        tokens = self.projection(x).flatten(2).transpose(1, 2)  # (B, N, d)
        tokens = self.transformer(self.embedding_dropout(tokens + self.position_embedding))
        x = tokens.transpose(1, 2).reshape(b, -1, *size)
        return self.feature_mapping(x)


class UpCat(nn.Module):
    """1x1x1 conv to the skip's width, transposed conv (kernel = stride), concatenation with the skip, 1x1x1 fusion
    conv (authors' ``DeUp_Cat``)."""

    def __init__(self, in_channels: int, out_channels: int, stride: Triple):
        super().__init__()
        self.reduce = nn.Conv3d(in_channels, out_channels, 1)
        self.up = nn.ConvTranspose3d(out_channels, out_channels, stride, stride)
        self.fuse = nn.Conv3d(2 * out_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([skip, self.up(self.reduce(x))], dim=1))


class TransBTSDecoder(nn.Module):
    """Progressive upsampling with skip connections (sec. 2.2), and the prediction convs.

    ``seg_layers[i]`` predicts at level ``i`` (full resolution first). With ``deep_supervision`` the forward returns
    one prediction per level above the bottleneck, highest resolution first; without it, the full-resolution one.
    """

    def __init__(self, features: Sequence[int], strides: Sequence[Triple], num_classes: int, deep_supervision: bool):
        super().__init__()
        self.deep_supervision = deep_supervision
        levels = range(len(features) - 2, -1, -1)  # from the level above the bottleneck up to full resolution
        self.ups = nn.ModuleList([UpCat(features[i + 1], features[i], strides[i + 1]) for i in levels])
        self.blocks = nn.ModuleList([DecoderBlock(features[i]) for i in levels])
        self.seg_layers = nn.ModuleList([nn.Conv3d(features[i], num_classes, 1) for i in range(len(features) - 1)])

    def forward(self, skips: Sequence[torch.Tensor], x: torch.Tensor) -> Union[torch.Tensor, List[torch.Tensor]]:
        decoded = []
        for up, block, skip in zip(self.ups, self.blocks, reversed(skips[:-1])):
            x = block(up(x, skip))
            decoded.append(x)
        decoded.reverse()  # full resolution first
        if not self.deep_supervision:
            return self.seg_layers[0](decoded[0])
        return [seg(f) for seg, f in zip(self.seg_layers, decoded)]


class TransBTS(PlansStrides, nn.Module):
    """TransBTS (Wang et al., MICCAI 2021) for nnU-Net: 3D only, fixed patch size (learned position embedding).

    Built by nnU-Net's ``get_network_from_plans`` from a plans entry such as
    ``{"network_class_name": "nnunetv2_ext.architectures.transbts.TransBTS", "arch_kwargs": {"patch_size": [128, 128,
    128], "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]}, "_kw_requires_import": []}``; ``patch_size``
    must be the configuration's patch size (nnU-Net trains and predicts with exactly that size).

    Args:
        input_channels: image channels (4 MRI modalities in the paper).
        num_classes: output channels.
        deep_supervision: return predictions at scales 1, 1/2, 1/4 (full resolution first); switchable later through
            ``network.decoder.deep_supervision``, as nnU-Net's trainer does.
        patch_size: the input size; must be divisible by the total stride (8 with the default strides). Default the
            paper's 128^3 crop.
        features_per_stage: encoder / decoder widths at the four levels (paper: base 16, so 16, 32, 64, K = 128).
        strides: per-level strides as in nnU-Net plans (4 entries, the first all ones); nnU-Net's trainer derives its
            deep-supervision target scales from the same list, and ``ds_scales()`` returns them.
        embedding_dim: token width d (paper: 512).
        num_layers: Transformer layers L (paper: 4).
        num_heads: attention heads (authors' release: 8).
        mlp_dim: FFN hidden width (authors' release: 4096).
        dropout: dropout in the Transformer and on the embedded tokens (authors' release: 0.1).
        stem_dropout: channel dropout after the stem conv (authors' release: 0.2).

    Raises:
        ValueError: 2D configuration, wrong number of levels, first stride not all ones, a patch size not divisible by
            the total stride, ``embedding_dim`` not divisible by ``num_heads``, rates outside [0, 1); in ``forward``,
            an input whose size differs from ``patch_size``.
    """

    network_name = "TransBTS"
    default_features = (16, 32, 64, 128)
    default_strides = ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2))
    stride_values = (1, 2)
    blocks_per_stage = (1, 2, 2, 4)  # encoder residual blocks per level (authors' release)
    n_levels = len(blocks_per_stage)  # four: downsampling to 1/8 with the default strides
    norm_groups = 8  # GroupNorm groups in the encoder (authors' release)

    def __init__(self,
                 input_channels: int,
                 num_classes: int,
                 deep_supervision: bool = False,
                 patch_size: Sequence[int] = (128, 128, 128),
                 features_per_stage: Sequence[int] = default_features,
                 strides: Optional[Sequence[IntOrSeq]] = None,
                 embedding_dim: int = 512,
                 num_layers: int = 4,
                 num_heads: int = 8,
                 mlp_dim: int = 4096,
                 dropout: float = 0.1,
                 stem_dropout: float = 0.2):
        super().__init__()
        features = list(features_per_stage)
        if len(features) != self.n_levels or not all(isinstance(f, (int, np.integer)) and f >= 1 for f in features):
            raise ValueError(f"TransBTS has {self.n_levels} resolution levels: features_per_stage needs "
                             f"{self.n_levels} positive ints (paper: {list(self.default_features)}), got {features}")
        self.strides = self.validate_strides(self.default_strides if strides is None else strides)
        self.patch_size = self.validate_patch_size(patch_size)
        if embedding_dim < 1 or num_heads < 1 or embedding_dim % num_heads:
            raise ValueError(f"embedding_dim must be divisible by num_heads, got {embedding_dim} and {num_heads}")
        if num_layers < 1 or mlp_dim < 1:
            raise ValueError(f"num_layers and mlp_dim must be >= 1, got {num_layers} and {mlp_dim}")
        for name, rate in (("dropout", dropout), ("stem_dropout", stem_dropout)):
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {rate}")

        self.features_per_stage = features
        self.num_classes = num_classes
        bottleneck_size = cast(Triple, tuple(p // t for p, t in zip(self.patch_size, self.total_stride())))
        self.encoder = TransBTSEncoder(input_channels, features, self.strides, self.blocks_per_stage, stem_dropout,
                                       self.norm_groups)
        self.bottleneck = TransformerBottleneck(features[-1], bottleneck_size, embedding_dim, num_layers, num_heads,
                                                mlp_dim, dropout)
        self.decoder = TransBTSDecoder(features, self.strides, num_classes, deep_supervision)

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, List[torch.Tensor]]:
        if x.ndim != 5 or tuple(x.shape[2:]) != self.patch_size:
            raise ValueError(f"TransBTS was built for inputs (batch, channels, {', '.join(map(str, self.patch_size))})"
                             f" (patch_size, fixed by the learned position embedding), got {tuple(x.shape)}")
        skips = self.encoder(x)
        return self.decoder(skips, self.bottleneck(skips[-1]))

    @staticmethod
    def initialize(module: nn.Module) -> None:
        """He initialisation of the (transposed) convolutions, as nnU-Net's U-Nets; the Transformer keeps torch's."""
        InitWeights_He(1e-2)(module)
