"""MONAI's Swin UNETR, SegResNet and UNETR as networks nnU-Net can name in a plans file.

Thin wrappers, no re-implementation: each builds the MONAI network and adapts what nnU-Net expects of a network.

- Constructor ``(input_channels, num_classes, deep_supervision=False, **JSON-serialisable kwargs)``: the call
  ``nnunetv2.utilities.get_network_from_plans`` makes, so a plans ``architecture`` entry names the wrapper by dotted
  path (``network_class_name``) and nnU-Net rebuilds it at inference with no special code. MONAI networks initialise
  themselves: the wrappers have no ``initialize`` (``get_network_from_plans`` applies one only if it exists).
- ``network.decoder.deep_supervision``: the switch nnU-Net's trainer toggles. With it on, ``forward`` returns a list
  of outputs, highest resolution first (nnU-Net's order); with it off, one tensor. Swin UNETR and UNETR have no deep
  supervision: asking for it at construction raises ``ValueError`` (so nnU-Net's default trainer, which asks, stops
  with a message instead of training a wrong loss); switching it on later is ignored (nnU-Net switches it back on
  after its final validation, whatever the network).
- ``valid_patch_size(patch, **kwargs)``: the patch rounded up to the sizes the network accepts;
  ``has_deep_supervision(**kwargs)``: whether the configuration supports deep supervision.

MONAI is imported inside the constructors: nnU-Net's trainer search imports every trainer module of this package, and
one missing optional dependency must not stop it.

Why not the dynamic-network-architectures encoder interface (STYLE habit 2): the transformer encoders have no
per-stage ``conv_op`` / ``kernel_sizes`` / ``strides`` for a ``UNetDecoder`` to read, and MONAI's decoders are built
for their own encoders; wrapping keeps MONAI's networks and checkpoints as they are.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Union

import torch
from torch import nn

SWIN_UNETR_DEFAULT_FEATURE_SIZE = 48  # Hatamizadeh et al. 2022 (BraTS 2021), research-contributions BRATS21 main.py
UNETR_PATCH = 16                      # MONAI's UNETR fixes the ViT patch (token) size to 16 per axis
SEGRESNET_DEFAULT_BLOCKS_DOWN = (1, 2, 2, 4)  # Myronenko 2018, Table 1 (MONAI's default)


def round_up(patch: Sequence[int], multiple: Union[int, Sequence[int]]) -> List[int]:
    """Each entry of ``patch`` rounded up to a multiple of ``multiple`` (one number or one per axis)."""
    multiples = [int(multiple)] * len(patch) if isinstance(multiple, int) else [int(m) for m in multiple]
    return [int(math.ceil(int(p) / m) * m) for p, m in zip(patch, multiples)]


def _spatial_dims(spatial_dims: Optional[int], default: int = 3) -> int:
    dims = default if spatial_dims is None else int(spatial_dims)
    if dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3 (nnU-Net's 2d and 3d configurations), got {spatial_dims}")
    return dims


def _as_tuple(value):
    """JSON turns tuples into lists; MONAI's argument parsing (``split_args``, norm/act specs) expects tuples."""
    if isinstance(value, list):
        return tuple(_as_tuple(v) for v in value)
    return value


class DeepSupervisionSwitch:
    """The ``decoder`` attribute of the wrappers: nnU-Net's trainer sets ``network.decoder.deep_supervision``.

    For a network without deep supervision the switch stays off (setting it on is ignored: nnU-Net switches it on
    after its final validation for every network).
    """

    def __init__(self, supported: bool, enabled: bool = False):
        self.supported = bool(supported)
        self._enabled = False
        self.deep_supervision = enabled

    @property
    def deep_supervision(self) -> bool:
        return self._enabled

    @deep_supervision.setter
    def deep_supervision(self, enabled: bool) -> None:
        self._enabled = bool(enabled) and self.supported

    def __repr__(self) -> str:
        return f"DeepSupervisionSwitch(supported={self.supported}, deep_supervision={self._enabled})"


class _MonaiBackbone(nn.Module):
    """Shared plumbing: the MONAI network as ``self.net``, the deep-supervision switch as ``self.decoder``."""
    monai_name = ""

    def __init__(self, net: nn.Module, deep_supervision: bool, supported: bool):
        super().__init__()
        if deep_supervision and not supported:
            raise ValueError(
                f"{self.monai_name} has no deep supervision, but deep_supervision=True was requested: train it with a "
                f"trainer that disables deep supervision (nnunetv2_ext's nnUNetTrainerBackbone and its subclasses do "
                f"so by themselves; nnU-Net's nnUNetTrainerNoDeepSupervision also works)")
        self.net = net
        self.decoder = DeepSupervisionSwitch(supported, deep_supervision)

    @classmethod
    def has_deep_supervision(cls, **arch_kwargs) -> bool:
        return False

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, List[torch.Tensor]]:
        return self.net(x)


class SwinUNETRBackbone(_MonaiBackbone):
    """MONAI's Swin UNETR (Hatamizadeh et al., "Swin UNETR: Swin Transformers for Semantic Segmentation of Brain Tumors
    in MRI Images", BrainLes 2021, arXiv:2201.01266), as used for BraTS in Taheri Otaghsara et al. 2025
    ("Multi-encoder nnU-Net outperforms Transformer models with self-supervised pretraining") sec. 4.2.1.

    Every spatial size must be divisible by ``patch_size ** 5`` (32 with the default token patch of 2), and the
    bottleneck (size / 32) must hold more than one voxel (its InstanceNorm needs > 1 value per channel).

    Args:
        input_channels: input channels (modalities).
        num_classes: output channels (nnU-Net's segmentation heads).
        deep_supervision: must be False (Swin UNETR has one output).
        spatial_dims: 2 or 3 (default 3).
        feature_size: embedding width; divisible by 12 (MONAI's rule). Default 48 (the BraTS 2021 model).
        depths, num_heads: Swin stages (MONAI defaults (2, 2, 2, 2), (3, 6, 12, 24)).
        **swin_kwargs: any other JSON-serialisable ``monai.networks.nets.SwinUNETR`` argument (``patch_size``,
            ``window_size``, ``norm_name``, ``use_v2``, ``use_checkpoint``, ...). ``img_size`` no longer exists in
            MONAI >= 1.5 and is refused.

    Raises:
        ValueError: ``feature_size`` not divisible by 12, ``img_size`` given, ``deep_supervision`` requested.
    """
    monai_name = "SwinUNETR"

    def __init__(self, input_channels: int, num_classes: int, deep_supervision: bool = False,
                 spatial_dims: int = 3, feature_size: int = SWIN_UNETR_DEFAULT_FEATURE_SIZE,
                 depths: Sequence[int] = (2, 2, 2, 2), num_heads: Sequence[int] = (3, 6, 12, 24), **swin_kwargs):
        if "img_size" in swin_kwargs:
            raise ValueError("SwinUNETR takes no img_size in MONAI >= 1.5 (any size divisible by patch_size**5 works): "
                             "remove img_size from the plans' arch_kwargs")
        if int(feature_size) % 12 != 0:
            raise ValueError(f"SwinUNETR feature_size must be divisible by 12, got {feature_size}")
        from monai.networks.nets import SwinUNETR

        net = SwinUNETR(in_channels=input_channels, out_channels=num_classes, feature_size=int(feature_size),
                        spatial_dims=_spatial_dims(spatial_dims), depths=tuple(depths), num_heads=tuple(num_heads),
                        **{k: _as_tuple(v) for k, v in swin_kwargs.items()})
        super().__init__(net, deep_supervision, supported=False)

    @classmethod
    def valid_patch_size(cls, patch: Sequence[int], patch_size: int = 2, **arch_kwargs) -> List[int]:
        """``patch`` rounded up to multiples of ``patch_size ** 5``; if that leaves a one-voxel bottleneck, the axis
        that was largest in ``patch`` is doubled."""
        multiple = int(patch_size) ** 5
        new = round_up(patch, multiple)
        if all(p == multiple for p in new):
            new[max(range(len(patch)), key=lambda i: patch[i])] = 2 * multiple
        return new

    @classmethod
    def patch_rule(cls, patch_size: int = 2, **arch_kwargs) -> str:
        return f"multiples of {int(patch_size) ** 5}, bottleneck > 1 voxel"


class UNETRBackbone(_MonaiBackbone):
    """MONAI's UNETR (Hatamizadeh et al., "UNETR: Transformers for 3D Medical Image Segmentation", WACV 2022,
    arXiv:2103.10504).

    The ViT's position embedding is built for one input size: ``img_size`` is the plans' patch size, a multiple of
    the 16-voxel token patch per axis, and ``forward`` accepts only that size (nnU-Net's sliding window feeds exactly
    the patch size).

    Args:
        input_channels, num_classes: as nnU-Net passes them.
        img_size: the patch size (a multiple of 16 per axis).
        deep_supervision: must be False (UNETR has one output).
        spatial_dims: default ``len(img_size)``.
        feature_size, hidden_size, mlp_dim, num_heads: MONAI's defaults (16, 768, 3072, 12: the paper's ViT-B/16).
        **unetr_kwargs: any other JSON-serialisable ``monai.networks.nets.UNETR`` argument.

    MONAI's transformer blocks create a ``norm_cross_attn`` LayerNorm even without cross-attention (and, before
    MONAI 1.6, the ``cross_attn`` block too); they are never used, so they are replaced by identities (no parameter
    without a gradient: DDP refuses those; the same state_dict keys under every MONAI version).

    Raises:
        ValueError: ``img_size`` not a multiple of 16 or of the wrong length, ``deep_supervision`` requested.
    """
    monai_name = "UNETR"

    def __init__(self, input_channels: int, num_classes: int, img_size: Sequence[int], deep_supervision: bool = False,
                 spatial_dims: Optional[int] = None, feature_size: int = 16, hidden_size: int = 768,
                 mlp_dim: int = 3072, num_heads: int = 12, **unetr_kwargs):
        img_size = [int(i) for i in img_size]
        dims = _spatial_dims(spatial_dims, default=len(img_size))
        if len(img_size) != dims or any(i % UNETR_PATCH or i <= 0 for i in img_size):
            raise ValueError(f"UNETR img_size must be {dims} positive multiples of {UNETR_PATCH} (the patch size), got "
                             f"{img_size}; use UNETRBackbone.valid_patch_size")
        from monai.networks.nets import UNETR

        net = UNETR(in_channels=input_channels, out_channels=num_classes, img_size=tuple(img_size),
                    feature_size=int(feature_size), hidden_size=int(hidden_size), mlp_dim=int(mlp_dim),
                    num_heads=int(num_heads), spatial_dims=dims, **{k: _as_tuple(v) for k, v in unetr_kwargs.items()})
        for block in net.vit.blocks:
            if not getattr(block, "with_cross_attention", False):
                for unused in ("norm_cross_attn", "cross_attn"):
                    if hasattr(block, unused):
                        setattr(block, unused, nn.Identity())
        super().__init__(net, deep_supervision, supported=False)
        self.img_size = tuple(img_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[2:]) != self.img_size:
            raise ValueError(f"UNETR was built for inputs of size {list(self.img_size)} (its position embedding), got "
                             f"{list(x.shape[2:])}")
        return self.net(x)

    @classmethod
    def valid_patch_size(cls, patch: Sequence[int], **arch_kwargs) -> List[int]:
        """``patch`` rounded up to multiples of UNETR's 16-voxel token patch."""
        return round_up(patch, UNETR_PATCH)

    @classmethod
    def patch_rule(cls, **arch_kwargs) -> str:
        return f"multiples of {UNETR_PATCH}"


class SegResNetBackbone(_MonaiBackbone):
    """MONAI's SegResNet (Myronenko, "3D MRI brain tumor segmentation using autoencoder regularization", BrainLes
    2018, arXiv:1810.11654; Taheri Otaghsara et al. 2025, sec. 4.5), with or without deep supervision.

    - ``dsdepth=None``: ``monai.networks.nets.SegResNet``, the paper's encoder-decoder without its variational
      auto-encoder branch; one output, no deep supervision.
    - ``dsdepth=n`` (2 <= n <= len(blocks_down) - 1): ``monai.networks.nets.SegResNetDS`` with ``n`` output heads, for
      nnU-Net's deep supervision. MONAI's SegResNetDS returns its list of heads only in training mode; the wrapper
      returns it whenever ``decoder.deep_supervision`` is on (nnU-Net's validation step runs the network in eval mode
      and still expects the list), and only the full-resolution output when it is off.

    The class of the network depends on ``dsdepth`` only, never on ``deep_supervision``, so a checkpoint trained with
    deep supervision loads into the network nnU-Net builds for inference (without).

    Every spatial size must be divisible by ``2 ** (len(blocks_down) - 1)`` (isotropic downsampling by 2 per level).

    Args:
        input_channels, num_classes, deep_supervision: as nnU-Net passes them (deep supervision needs ``dsdepth``).
        spatial_dims: 2 or 3.
        init_filters: width of the first level (32 in the paper, Table 1).
        blocks_down, blocks_up: residual blocks per level (paper: (1, 2, 2, 4), one per decoder level).
        norm, act: MONAI norm / activation specs (paper: GroupNorm with 8 groups, ReLU).
        dsdepth: see above.
        strides: the per-level downsampling (``[[1]*d] + [[2]*d] * (levels - 1)``): nnU-Net reads the deep supervision
            scales from ``arch_kwargs['strides']``; checked against the network if given.
        **segresnet_kwargs: other JSON-serialisable MONAI arguments (``upsample_mode``, ``dropout_prob`` for
            SegResNet, ``resolution`` is refused: the strides would no longer describe the network).

    Raises:
        ValueError: ``dsdepth`` out of range, ``strides`` that do not match the network, ``deep_supervision`` without
            ``dsdepth``, ``resolution`` given.
    """
    monai_name = "SegResNet"

    def __init__(self, input_channels: int, num_classes: int, deep_supervision: bool = False, spatial_dims: int = 3,
                 init_filters: int = 32, blocks_down: Sequence[int] = SEGRESNET_DEFAULT_BLOCKS_DOWN,
                 blocks_up: Optional[Sequence[int]] = None, norm=("group", {"num_groups": 8}),
                 act=("relu", {"inplace": True}), dsdepth: Optional[int] = None,
                 strides: Optional[Sequence[Sequence[int]]] = None, **segresnet_kwargs):
        dims = _spatial_dims(spatial_dims)
        blocks_down = tuple(int(b) for b in blocks_down)
        n_up = len(blocks_down) - 1
        blocks_up = (1,) * n_up if blocks_up is None else tuple(int(b) for b in blocks_up)
        if "resolution" in segresnet_kwargs:
            raise ValueError("SegResNetBackbone does not take 'resolution' (anisotropic SegResNetDS): its downsampling "
                             "would no longer be the isotropic strides nnU-Net's deep supervision reads")
        if dsdepth is not None and not 1 <= int(dsdepth) <= max(n_up, 1):
            raise ValueError(f"dsdepth must be between 1 and len(blocks_down) - 1 = {n_up}, got {dsdepth}")
        expected = self.network_strides(dims, blocks_down)
        if strides is not None and [list(s) for s in strides] != expected:
            raise ValueError(f"strides {[list(s) for s in strides]} do not describe this SegResNet (blocks_down "
                             f"{list(blocks_down)} downsamples by 2 per level: {expected})")
        kwargs = dict(spatial_dims=dims, init_filters=int(init_filters), in_channels=input_channels,
                      out_channels=num_classes, norm=_as_tuple(norm), act=_as_tuple(act), blocks_down=blocks_down,
                      blocks_up=blocks_up, **{k: _as_tuple(v) for k, v in segresnet_kwargs.items()})
        net: nn.Module
        if dsdepth is None:
            from monai.networks.nets import SegResNet

            net = SegResNet(**kwargs)
        else:
            from monai.networks.nets import SegResNetDS

            net = SegResNetDS(dsdepth=int(dsdepth), **kwargs)
        super().__init__(net, deep_supervision, supported=self.has_deep_supervision(dsdepth=dsdepth))
        self.dsdepth = dsdepth

    @staticmethod
    def network_strides(spatial_dims: int, blocks_down: Sequence[int]) -> List[List[int]]:
        """The downsampling of each level, in nnU-Net's ``strides`` format."""
        return [[1] * spatial_dims] + [[2] * spatial_dims for _ in range(len(blocks_down) - 1)]

    @classmethod
    def has_deep_supervision(cls, dsdepth: Optional[int] = None, **arch_kwargs) -> bool:
        return dsdepth is not None and int(dsdepth) >= 2

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, List[torch.Tensor]]:
        net = self.net
        if self.decoder.deep_supervision and not net.training:
            # SegResNetDS gives its heads only in training mode; flip the flag of the top module alone, so every
            # norm / dropout layer stays in eval mode
            net.training = True
            try:
                out = net(x)
            finally:
                net.training = False
        else:
            out = net(x)
        if self.decoder.deep_supervision:
            return list(out)
        return out[0] if isinstance(out, (list, tuple)) else out

    @classmethod
    def valid_patch_size(cls, patch: Sequence[int], blocks_down: Sequence[int] = SEGRESNET_DEFAULT_BLOCKS_DOWN,
                         **arch_kwargs) -> List[int]:
        """``patch`` rounded up to multiples of ``2 ** (len(blocks_down) - 1)``."""
        return round_up(patch, 2 ** (len(blocks_down) - 1))

    @classmethod
    def patch_rule(cls, blocks_down: Sequence[int] = SEGRESNET_DEFAULT_BLOCKS_DOWN, **arch_kwargs) -> str:
        return f"multiples of {2 ** (len(blocks_down) - 1)}"

