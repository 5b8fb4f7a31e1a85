"""PCT-Net: Parallel Convolution and Transformer Network for 3D segmentation.

G. Wang, J. Wu, X. Luo, X. Liu, K. Li, S. Zhang, "MIS-FM: 3D Medical Image Segmentation using Foundation Models
Pretrained on a Large-Scale Unannotated Dataset", 2023, arXiv:2306.16925, section 3.1.4, Figure 3 and the
implementation details of section 4 (kernels 3x3 / 3x3x3, channels 24, 48, 128, 256, 512 at the five resolution levels).

Three parts, one resolution level each where the paper has one:

- multi-scale feature embedding (``PCTNet.embedding``): a projection conv, a 2D conv block at full resolution, a 2D
  downsampling, a 3D conv block at the second level, and a downsampling into the pyramid;
- pyramid PCT module (``PCTNet.pyramid``): three levels, encoder-decoder, every block a PCT block whose convolution
  branch (conv block with dropout before its second conv) and attention branch (a P-MSA block then an SP-MSA block
  with shift = half the window, i.e. 3D Swin Transformer blocks) are summed;
- prediction head (``PCTNet.decoder``): symmetric to the embedding; at each level the skip and the up-sampled feature
  are concatenated and fused by a conv, followed by a 2D/3D conv block.

Readings where the paper is not explicit (documented so a reader can change them):

- "2D" means in-plane: kernel 1 along the first (through-plane) axis, as nnU-Net orders axes with the largest spacing
  first. More generally, the embedding/head block at level ``i`` uses kernel 1 on the axes that the next
  downsampling (``strides[i + 1]``) leaves unchanged and 3 elsewhere: with the default strides this is the paper's
  2D-then-3D design; isotropic strides give a fully 3D network (the authors' ``resolution_mode`` 0).
- Downsampling is max pooling (kernel = stride) followed by a BN-PReLU-conv layer that changes the width; upsampling
  is BN-PReLU-transposed conv (kernel = stride). Every conv layer is pre-activation (BN, PReLU, conv), as the paper's
  "each containing a BN, a PReLU and a convolution" and the authors' release (github.com/openmedlab/MIS-FM) have it.
- The attention branch's input is the PCT block's input, and MONAI's Swin blocks are residual, so a PCT block computes
  ``conv_branch(x) + swin(x)`` with ``swin(x) = x + attention + MLP``, as in the authors' release.
- Window size 6 and heads (4, 8, 16) are the authors' released defaults (the paper gives none); the MLP ratio is
  Swin's 4. The paper places dropout only in the convolution branch of PCT blocks (rate 0.2 in the authors' released
  configuration); the released code also uses 0.2 dropout / drop-path inside the Swin blocks, which ``swin_dropout``
  reproduces (default 0: the paper does not mention it).
- The four pointwise prediction layers (two in the head, two on the pyramid's decoder levels, paper: "predictions at
  four different scales ... for deep supervision") live together in ``decoder.seg_layers``, full resolution first,
  so nnU-Net's ``network.decoder.deep_supervision`` switch controls all of them and checkpoints keep the same keys
  with and without deep supervision (as in dynamic-network-architectures' ``UNetDecoder``). Each is BN-PReLU-1x1x1
  conv, as in the authors' release.

Not built from dynamic-network-architectures blocks: its ``ConvDropoutNormReLU`` is conv-first, the paper's layers
are pre-activation; and PCT-Net has no encoder/decoder split matching ``UNetDecoder``'s encoder interface (the
pyramid is itself an encoder-decoder). MONAI is imported only when a network is built, so importing this module
stays light.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union, cast

import numpy as np
import torch
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import nn

from nnunetv2_ext.architectures.strides import IntOrSeq, PlansStrides, Triple


def _triple(value: IntOrSeq, name: str) -> Triple:
    values = [value] * 3 if isinstance(value, int) else list(value)
    if len(values) != 3 or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in values):
        raise ValueError(f"{name} must be a positive int or 3 positive ints (PCT-Net is 3D-only), got {value!r}")
    return cast(Triple, tuple(int(v) for v in values))  # 3 values, checked above


def _padding(kernel: Triple) -> Triple:
    return cast(Triple, tuple(k // 2 for k in kernel))


def in_plane_kernel(next_stride: Triple) -> Triple:
    """Kernel of an embedding/head level: 3 along the axes the next downsampling reduces most, 1 along the others.

    ``(1, 2, 2) -> (1, 3, 3)`` (the paper's 2D block before a 2D downsampling); ``(2, 2, 2) -> (3, 3, 3)``.
    """
    top = max(next_stride)
    return cast(Triple, tuple(3 if s == top else 1 for s in next_stride))


def pre_activation_conv(in_channels: int, out_channels: int, kernel: Triple) -> nn.Sequential:
    """One basic layer of the paper: BN -> PReLU -> conv (sec. 3.1.4)."""
    return nn.Sequential(nn.BatchNorm3d(in_channels), nn.PReLU(),
                         nn.Conv3d(in_channels, out_channels, kernel, padding=_padding(kernel)))


class ConvBlock(nn.Module):
    """Two pre-activation layers (sec. 3.1.4: "two basic convolutional layers, each containing a BN, a PReLU and a
    2D/3D convolution"); the PCT block's convolution branch adds dropout before the second convolution."""

    def __init__(self, channels: int, kernel: Triple, dropout: float = 0.0):
        super().__init__()
        self.layers = nn.Sequential(nn.BatchNorm3d(channels), nn.PReLU(),
                                    nn.Conv3d(channels, channels, kernel, padding=_padding(kernel)),
                                    nn.BatchNorm3d(channels), nn.PReLU(), nn.Dropout(dropout),
                                    nn.Conv3d(channels, channels, kernel, padding=_padding(kernel)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DownSample(nn.Sequential):
    """Max pooling by ``stride``, then BN -> PReLU -> conv to the next level's width."""

    def __init__(self, in_channels: int, out_channels: int, stride: Triple, kernel: Triple):
        super().__init__(nn.MaxPool3d(stride, stride), *pre_activation_conv(in_channels, out_channels, kernel))


class UpCat(nn.Module):
    """Up-sample the lower-resolution feature (BN -> PReLU -> transposed conv, kernel = stride), concatenate it with
    the skip and fuse both with BN -> PReLU -> conv (sec. 3.1.4: "a concatenation with convolution")."""

    def __init__(self, skip_channels: int, low_channels: int, stride: Triple, kernel: Triple):
        super().__init__()
        self.up = nn.Sequential(nn.BatchNorm3d(low_channels), nn.PReLU(),
                                nn.ConvTranspose3d(low_channels, skip_channels, stride, stride))
        self.fuse = pre_activation_conv(2 * skip_channels, skip_channels, kernel)

    def forward(self, skip: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([skip, self.up(low)], dim=1))


class PCTBlock(nn.Module):
    """Parallel Convolution and Transformer block (sec. 3.1.4): a 3D conv block with dropout, plus MONAI's 3D Swin
    ``BasicLayer`` of two blocks (P-MSA, then SP-MSA shifted by half the window); the two branches are added."""

    def __init__(self, channels: int, num_heads: int, window_size: Triple, dropout: float, swin_dropout: float,
                 swin_depth: int = 2, mlp_ratio: float = 4.0):
        super().__init__()
        from monai.networks.nets.swin_unetr import BasicLayer  # lazy: importing this module must not import monai

        self.conv = ConvBlock(channels, (3, 3, 3), dropout)
        self.attention = BasicLayer(dim=channels, depth=swin_depth, num_heads=num_heads, window_size=window_size,
                                    drop_path=swin_dropout,  # type: ignore[arg-type]  # MONAI: list, or a float
                                    mlp_ratio=mlp_ratio, qkv_bias=True, drop=swin_dropout,
                                    attn_drop=swin_dropout, norm_layer=nn.LayerNorm, downsample=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.attention(x)


class PCTEmbedding(nn.Module):
    """Multi-scale feature embedding (levels 0 and 1, and the step into level 2): projection conv, conv block,
    downsampling, conv block, downsampling. Returns the features of levels 0, 1 and 2."""

    def __init__(self, input_channels: int, channels: Sequence[int], strides: Sequence[Triple],
                 kernels: Sequence[Triple]):
        super().__init__()
        self.proj = nn.Conv3d(input_channels, channels[0], kernels[0], padding=_padding(kernels[0]))
        self.block0 = ConvBlock(channels[0], kernels[0])
        self.down1 = DownSample(channels[0], channels[1], strides[1], kernels[1])
        self.block1 = ConvBlock(channels[1], kernels[1])
        self.down2 = DownSample(channels[1], channels[2], strides[2], (3, 3, 3))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x0 = self.block0(self.proj(x))
        x1 = self.block1(self.down1(x0))
        return x0, x1, self.down2(x1)


class PCTPyramid(nn.Module):
    """Pyramid PCT module (levels 2-4): PCT blocks in an encoder-decoder. Returns the decoder features of levels 2
    and 3 (level 2 feeds the prediction head; both get a deep-supervision output)."""

    def __init__(self, channels: Sequence[int], strides: Sequence[Triple], num_heads: Sequence[int],
                 window_size: Triple, dropout: float, swin_dropout: float, swin_depth: int, mlp_ratio: float):
        super().__init__()
        c2, c3, c4 = channels[2], channels[3], channels[4]

        def pct(level: int) -> PCTBlock:
            return PCTBlock(channels[level], num_heads[level - 2], window_size, dropout, swin_dropout, swin_depth,
                            mlp_ratio)

        self.encoder_blocks = nn.ModuleList([pct(2), pct(3), pct(4)])
        self.downs = nn.ModuleList([DownSample(c2, c3, strides[3], (3, 3, 3)),
                                    DownSample(c3, c4, strides[4], (3, 3, 3))])
        # decoder, from the bottleneck up: level 3, then level 2
        self.ups = nn.ModuleList([UpCat(c3, c4, strides[4], (3, 3, 3)), UpCat(c2, c3, strides[3], (3, 3, 3))])
        self.decoder_blocks = nn.ModuleList([pct(3), pct(2)])

    def forward(self, x2: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        e2 = self.encoder_blocks[0](x2)
        e3 = self.encoder_blocks[1](self.downs[0](e2))
        e4 = self.encoder_blocks[2](self.downs[1](e3))
        d3 = self.decoder_blocks[0](self.ups[0](e3, e4))
        d2 = self.decoder_blocks[1](self.ups[1](e2, d3))
        return d2, d3


class PCTPredictionHead(nn.Module):
    """Prediction head (levels 1 and 0, symmetric to the embedding) and the four pointwise prediction layers.

    ``seg_layers[i]`` predicts at level ``i`` (full resolution first). With ``deep_supervision`` the forward returns
    the four predictions, highest resolution first (nnU-Net's order); without it, only the full-resolution one.
    """

    def __init__(self, channels: Sequence[int], strides: Sequence[Triple], kernels: Sequence[Triple],
                 num_classes: int, deep_supervision: bool):
        super().__init__()
        self.deep_supervision = deep_supervision
        # from level 2 up: level 1, then level 0
        self.ups = nn.ModuleList([UpCat(channels[1], channels[2], strides[2], kernels[1]),
                                  UpCat(channels[0], channels[1], strides[1], kernels[0])])
        self.blocks = nn.ModuleList([ConvBlock(channels[1], kernels[1]), ConvBlock(channels[0], kernels[0])])
        self.seg_layers = nn.ModuleList([pre_activation_conv(channels[level], num_classes, (1, 1, 1))
                                         for level in range(4)])

    def forward(self, x0: torch.Tensor, x1: torch.Tensor, d2: torch.Tensor, d3: torch.Tensor
                ) -> Union[torch.Tensor, List[torch.Tensor]]:
        u1 = self.blocks[0](self.ups[0](x1, d2))
        u0 = self.blocks[1](self.ups[1](x0, u1))
        if not self.deep_supervision:
            return self.seg_layers[0](u0)
        return [seg(f) for seg, f in zip(self.seg_layers, (u0, u1, d2, d3))]


class PCTNet(PlansStrides, nn.Module):
    """PCT-Net (Wang et al., MIS-FM, arXiv:2306.16925, sec. 3.1.4, Fig. 3) for nnU-Net: 3D only.

    Five resolution levels: two convolutional (embedding / prediction head) and three in the pyramid PCT module.
    Built by nnU-Net's ``get_network_from_plans`` from a plans entry such as
    ``{"network_class_name": "nnunetv2_ext.architectures.pctnet.PCTNet", "arch_kwargs": {"strides": [[1, 1, 1],
    [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]]}, "_kw_requires_import": []}``.

    Args:
        input_channels: image channels (modalities).
        num_classes: output channels (nnU-Net's label or region count).
        deep_supervision: return predictions at levels 0-3 (full resolution first); switchable later through
            ``network.decoder.deep_supervision``, as nnU-Net's trainer does.
        features_per_stage: channels at the five levels; the paper's (24, 48, 128, 256, 512) by default.
        strides: per-level strides as in nnU-Net plans (5 entries, the first all ones): level ``i`` has the input
            size divided by the product of ``strides[:i + 1]``. nnU-Net's trainer derives its deep-supervision target
            scales from the same list, and ``ds_scales()`` returns them. Default: the paper's 2D downsampling then
            three 3D downsamplings, ``[[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]]``.
        num_heads: attention heads at pyramid levels 2, 3, 4.
        window_size: Swin window (the paper's "patch" of P-MSA), an int or one per axis; MONAI shrinks it to the
            feature size along axes where the feature is smaller (and then does not shift along them).
        dropout: dropout before the second conv of each PCT block's convolution branch (paper sec. 3.1.4).
        swin_dropout: dropout, attention dropout and drop-path rate inside the Swin blocks (authors' release: 0.2).
        patch_size: optional training patch size, checked for divisibility by the total stride.

    Raises:
        ValueError: 2D configuration, wrong number of levels, first stride not all ones, channels not divisible by
            the heads, rates outside [0, 1), a patch size not divisible by the total stride.
    """

    network_name = "PCT-Net"
    default_features = (24, 48, 128, 256, 512)
    default_strides = ((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2))
    n_levels = 5
    n_ds_outputs = 4  # two in the prediction head, two on the pyramid's decoder levels
    swin_depth = 2  # P-MSA block + SP-MSA block
    mlp_ratio = 4.0

    def __init__(self,
                 input_channels: int,
                 num_classes: int,
                 deep_supervision: bool = False,
                 features_per_stage: Sequence[int] = default_features,
                 strides: Optional[Sequence[IntOrSeq]] = None,
                 num_heads: Sequence[int] = (4, 8, 16),
                 window_size: IntOrSeq = 6,
                 dropout: float = 0.2,
                 swin_dropout: float = 0.0,
                 patch_size: Optional[Sequence[int]] = None):
        super().__init__()
        features = list(features_per_stage)
        if len(features) != self.n_levels or not all(isinstance(f, (int, np.integer)) and f >= 1 for f in features):
            raise ValueError(f"PCT-Net has {self.n_levels} resolution levels: features_per_stage needs "
                             f"{self.n_levels} positive ints (paper: {list(self.default_features)}), got {features}")
        self.strides = self.validate_strides(self.default_strides if strides is None else strides)
        heads = list(num_heads)
        if len(heads) != 3:
            raise ValueError(f"num_heads needs one entry per pyramid level (3), got {heads}")
        for level, h in zip((2, 3, 4), heads):
            if h < 1 or features[level] % h:
                raise ValueError(f"the channels of pyramid level {level} ({features[level]}) must be divisible by "
                                 f"its number of heads ({h})")
        for name, rate in (("dropout", dropout), ("swin_dropout", swin_dropout)):
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {rate}")
        self.window_size = _triple(window_size, "window_size")
        self.patch_size = None if patch_size is None else self.validate_patch_size(patch_size)

        kernels = [in_plane_kernel(self.strides[1]), in_plane_kernel(self.strides[2])]
        self.features_per_stage = features
        self.num_classes = num_classes
        self.embedding = PCTEmbedding(input_channels, features, self.strides, kernels)
        self.pyramid = PCTPyramid(features, self.strides, heads, self.window_size, dropout, swin_dropout,
                                  self.swin_depth, self.mlp_ratio)
        self.decoder = PCTPredictionHead(features, self.strides, kernels, num_classes, deep_supervision)

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, List[torch.Tensor]]:
        if x.ndim != 5:
            raise ValueError(f"PCT-Net is 3D-only: expected input (batch, channels, x, y, z), got shape "
                             f"{tuple(x.shape)}")
        self.validate_patch_size(x.shape[2:])
        x0, x1, x2 = self.embedding(x)
        d2, d3 = self.pyramid(x2)
        return self.decoder(x0, x1, d2, d3)

    @staticmethod
    def initialize(module: nn.Module) -> None:
        """He initialisation of the (transposed) convolutions, as nnU-Net's U-Nets; Swin layers keep MONAI's."""
        InitWeights_He(1e-2)(module)
