"""Multi-encoder U-Net: one encoder per input modality, features fused per level, one shared decoder.

S. S. Taheri Otaghsara and R. Rahmanzadeh, "Multi-encoder nnU-Net outperforms Transformer models with self-supervised
pretraining" (UltraAI, 2025), section 4.1.1 and Figure 1: "Each MRI modality is fed into a separate encoder ... the
encoded representations from all modalities are combined ... passed through a shared decoder". The encoders are
dynamic-network-architectures' ``PlainConvEncoder`` or ``ResidualEncoder``; the decoder is its ``UNetDecoder``, so deep
supervision, ``seg_layers`` and checkpoints behave exactly as in nnU-Net's ``PlainConvUNet``.

The constructor takes the ``PlainConvUNet`` keyword arguments plus JSON-serialisable extras (``encoder_groups``,
``fusion``, ``encoder``, ``encoder_width``, ``modality_names``, ``encoder_impl``), so a plans file names it through
``network_class_name`` and nnU-Net's ``get_network_from_plans`` rebuilds it at inference with no special code.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Type, Union, cast

import numpy as np
import torch
from dynamic_network_architectures.architectures.abstract_arch import AbstractDynamicNetworkArchitectures
from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from dynamic_network_architectures.initialization.weight_init import InitWeights_He, init_last_bn_before_add_to_0
from torch import nn

from nnunetv2_ext.architectures.fusion import FeatureFusion
from nnunetv2_ext.architectures.grouped_encoder import ENCODER_IMPLS, check_groupable, grouped_forward_per_encoder

ENCODER_TYPES = ("plain", "residual")
IntOrSeq = Union[int, List[int], Tuple[int, ...]]


def validate_encoder_groups(encoder_groups: Optional[Sequence[Sequence[int]]], input_channels: int,
                            modality_names: Optional[Sequence[str]] = None) -> List[List[int]]:
    """Check that the groups cover every input channel exactly once; default: one encoder per channel.

    Raises:
        ValueError: fewer than 2 encoders, a channel missing, repeated or out of range. The message names the
            channels (by modality name where known).
    """
    def name(c: int) -> str:
        return f"{c} ({modality_names[c]})" if modality_names is not None and 0 <= c < len(modality_names) else str(c)

    if input_channels < 2:
        raise ValueError(f"a multi-encoder needs at least 2 modalities (input channels), this dataset has "
                         f"{input_channels}; train nnU-Net's own nnUNetTrainer on single-modality data")
    groups = [[c] for c in range(input_channels)] if encoder_groups is None else [list(g) for g in encoder_groups]
    flat = [int(c) for g in groups for c in g]
    if any(len(g) == 0 for g in groups):
        raise ValueError(f"encoder_groups contains an empty group: {groups}")
    out_of_range = sorted({c for c in flat if not 0 <= c < input_channels})
    repeated = sorted({c for c in flat if flat.count(c) > 1})
    missing = sorted(set(range(input_channels)) - set(flat))
    problems = []
    if out_of_range:
        problems.append(f"channels {out_of_range} do not exist (the input has channels 0..{input_channels - 1})")
    if repeated:
        problems.append(f"channels {[name(c) for c in repeated]} appear in more than one group")
    if missing:
        problems.append(f"channels {[name(c) for c in missing]} are in no group")
    if problems:
        raise ValueError(f"invalid encoder_groups {groups}: " + "; ".join(problems) +
                         ". Every input channel must belong to exactly one encoder group.")
    if len(groups) < 2:
        raise ValueError(f"a multi-encoder needs at least 2 encoders, encoder_groups {groups} gives one")
    return groups


class MultiEncoder(nn.Module):
    """Per-modality encoders plus per-level fusion, exposing the encoder interface ``UNetDecoder`` reads.

    ``forward`` returns one fused skip per resolution level (the bottleneck last), like a dynamic-network-
    architectures encoder with ``return_skips=True``; ``forward_per_encoder`` returns the unfused features.

    Missing modalities: ``forward(x, present)`` takes an encoder mask, ``(n_encoders,)`` for the whole batch or
    ``(batch, n_encoders)`` per sample, of 0/1. Every encoder still runs (so it stays in the autograd graph and DDP
    sees a gradient, zero for a dropped encoder), and its features at every level are multiplied by its mask entry
    before fusion: with ``concat`` and ``sum`` an absent encoder contributes nothing, ``mean`` averages over the
    present encoders only (at least one counted). This is the input-level modality dropout of ModDrop (Neverova et
    al., TPAMI 2016) and HeMIS (Havaei et al., MICCAI 2016) applied to whole encoders. ``present=None`` uses
    ``inference_present`` (``None``: every encoder present, the unmasked network bit for bit).

    ``encoder_impl`` (set with ``set_encoder_impl``): ``separate`` runs the encoders one after another; ``grouped``
    runs identical plain encoders as one stack of grouped convolutions (``grouped_encoder.py``), same parameters,
    same state_dict, same function.
    """

    def __init__(self, encoders: Sequence[nn.Module], groups: Sequence[Sequence[int]],
                 fusions: Sequence[FeatureFusion], features_per_stage: Sequence[int]):
        super().__init__()
        self.encoders = nn.ModuleList(encoders)
        self.fusions = nn.ModuleList(fusions)
        self.groups = [list(g) for g in groups]
        ref: Any = encoders[0]  # a dynamic-network-architectures encoder (untyped attributes)
        # the attribute set UNetDecoder (and nnU-Net's planners) read from an encoder
        self.output_channels = list(features_per_stage)
        self.strides = ref.strides
        self.kernel_sizes = ref.kernel_sizes
        self.conv_op = ref.conv_op
        self.norm_op = ref.norm_op
        self.norm_op_kwargs = ref.norm_op_kwargs
        self.nonlin = ref.nonlin
        self.nonlin_kwargs = ref.nonlin_kwargs
        self.dropout_op = ref.dropout_op
        self.dropout_op_kwargs = ref.dropout_op_kwargs
        self.conv_bias = ref.conv_bias
        self.return_skips = True
        # contiguous groups are sliced (a view), others gathered
        self._slices = [slice(g[0], g[-1] + 1) if g == list(range(g[0], g[-1] + 1)) else None for g in self.groups]
        for i, g in enumerate(self.groups):
            self.register_buffer(f"_index_{i}", torch.tensor(g, dtype=torch.long), persistent=False)
        # the encoder mask forward uses when given none: set it to predict from a subset of modalities through
        # nnU-Net's predictor, which calls network(x). A plain attribute: not in the state_dict, not broadcast by DDP.
        self.inference_present: Optional[torch.Tensor] = None
        self.encoder_impl = "separate"

    def set_encoder_impl(self, impl: str) -> None:
        """Run the encoders ``separate`` (one after another) or ``grouped`` (one grouped-conv stack).

        Raises:
            ValueError: an unknown name, or ``grouped`` for encoders that are not identical plain encoders.
        """
        if impl not in ENCODER_IMPLS:
            raise ValueError(f"encoder_impl must be one of {ENCODER_IMPLS}, got {impl!r}")
        if impl == "grouped":
            check_groupable(self.encoders, self.groups)
        self.encoder_impl = impl

    def select(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """The input channels of encoder ``i``."""
        s = self._slices[i]
        return x[:, s] if s is not None else x.index_select(1, getattr(self, f"_index_{i}"))

    def forward_per_encoder(self, x: torch.Tensor) -> List[List[torch.Tensor]]:
        if self.encoder_impl == "grouped":
            return grouped_forward_per_encoder(self.encoders, self.groups, x)
        return [enc(self.select(x, i)) for i, enc in enumerate(self.encoders)]

    def forward(self, x: torch.Tensor, present: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        per_encoder = self.forward_per_encoder(x)
        if present is None:
            present = self.inference_present
        if present is None:
            return [fusion([skips[level] for skips in per_encoder]) for level, fusion in enumerate(self.fusions)]
        present = self._check_present(present, x.shape[0]).to(device=x.device, dtype=torch.float32)
        n = len(self.encoders)
        fused = []
        for level, fusion in enumerate(self.fusions):
            weights = present
            if fusion.mode == "mean":
                # the fusion divides by n: scale so it averages over the present encoders (1.0 when all present)
                weights = present * (n / present.sum(1, keepdim=True).clamp_min(1.0))
            features = [skips[level] for skips in per_encoder]
            fused.append(fusion([f * weights[:, i].to(f.dtype).view(-1, *([1] * (f.ndim - 1)))
                                 for i, f in enumerate(features)]))
        return fused

    def _check_present(self, present: torch.Tensor, batch_size: int) -> torch.Tensor:
        n = len(self.encoders)
        if present.ndim == 1 and present.shape[0] == n:
            return present.unsqueeze(0).expand(batch_size, n)
        if present.ndim == 2 and tuple(present.shape) == (batch_size, n):
            return present
        raise ValueError(f"present must have shape ({n},) or (batch, {n}) = ({batch_size}, {n}): one 0/1 entry per "
                         f"encoder {self.groups}, got shape {tuple(present.shape)}")

    @contextmanager
    def presence(self, present: Optional[torch.Tensor]) -> Iterator["MultiEncoder"]:
        """Use ``present`` as ``inference_present`` inside the block (e.g. one modality-dropout training step through
        nnU-Net's ``train_step``, which calls ``network(data)``), and restore the previous mask afterwards."""
        previous = self.inference_present
        self.inference_present = present
        try:
            yield self
        finally:
            self.inference_present = previous

    def channel_mask(self, present: torch.Tensor) -> torch.Tensor:
        """The input-channel mask ``(batch, channels)`` of an encoder mask ``(batch, n_encoders)``: each channel gets
        the entry of the encoder that reads it."""
        encoder_of_channel = [0] * sum(len(g) for g in self.groups)
        for i, g in enumerate(self.groups):
            for c in g:
                encoder_of_channel[c] = i
        return present[:, torch.tensor(encoder_of_channel, device=present.device)]

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        output = np.int64(0)
        for enc in cast(Sequence[Any], self.encoders):  # dynamic-network-architectures encoders
            output += enc.compute_conv_feature_map_size(input_size)
        size = list(input_size)
        for stride, fusion in zip(self.strides, cast(Sequence[FeatureFusion], self.fusions)):
            size = [s // st for s, st in zip(size, stride)]
            output += np.int64(fusion.compute_conv_feature_map_size(size))
        return output


class MultiEncoderUNet(AbstractDynamicNetworkArchitectures):
    """U-Net with one encoder per modality (or group of channels) and a shared decoder (Taheri Otaghsara et al.
    2025, sec. 4.1.1).

    Args:
        input_channels ... nonlin_first: exactly the ``PlainConvUNet`` arguments. With ``encoder='residual'``,
            ``n_conv_per_stage`` is the number of residual blocks per stage (``n_blocks_per_stage`` in nnU-Net's
            ResEnc plans, also accepted under that name).
        encoder_groups: input channels per encoder, e.g. ``[[0, 1], [2, 3]]``; default one encoder per channel.
        fusion: ``concat`` (default: concatenation then 1x1x1 conv + norm + nonlin back to the decoder width),
            ``sum`` or ``mean``; applied at every resolution level, so the decoder gets one skip per level.
        encoder: ``plain`` (``PlainConvEncoder``) or ``residual`` (``ResidualEncoder``).
        encoder_width: width of each encoder relative to ``features_per_stage`` (0.5 gives a model with about
            the parameter count of the single-encoder U-Net); the fused skips always have the decoder width.
        modality_names: a name per input channel (dataset.json ``channel_names``), kept for weight transfer and
            error messages.
        encoder_impl: ``separate`` (default) or ``grouped``: run identical plain encoders as one stack of grouped
            convolutions (fewer, wider kernels; same parameters and checkpoints; whether it is faster depends on
            widths and backend: measure with ``benchmarks/multi_encoder_speed.py``).

    Raises:
        ValueError: fewer than 2 encoders, invalid groups, unknown fusion or encoder type, mismatched lengths,
            ``encoder_impl='grouped'`` for encoders that differ or are residual.
    """

    def __init__(self,
                 input_channels: int,
                 n_stages: int,
                 features_per_stage: IntOrSeq,
                 conv_op: Type[nn.Module],
                 kernel_sizes: IntOrSeq,
                 strides: IntOrSeq,
                 n_conv_per_stage: Optional[IntOrSeq] = None,
                 num_classes: Optional[int] = None,
                 n_conv_per_stage_decoder: Optional[IntOrSeq] = None,
                 conv_bias: bool = False,
                 norm_op: Optional[Type[nn.Module]] = None,
                 norm_op_kwargs: Optional[dict] = None,
                 dropout_op: Optional[Type[nn.Module]] = None,
                 dropout_op_kwargs: Optional[dict] = None,
                 nonlin: Optional[Type[nn.Module]] = None,
                 nonlin_kwargs: Optional[dict] = None,
                 deep_supervision: bool = False,
                 nonlin_first: bool = False,
                 encoder_groups: Optional[Sequence[Sequence[int]]] = None,
                 fusion: str = "concat",
                 encoder: str = "plain",
                 encoder_width: float = 1.0,
                 modality_names: Optional[Sequence[str]] = None,
                 n_blocks_per_stage: Optional[IntOrSeq] = None,
                 encoder_impl: str = "separate"):
        super().__init__()
        if n_conv_per_stage is None:
            n_conv_per_stage = n_blocks_per_stage
        for arg, value in (("n_conv_per_stage", n_conv_per_stage), ("num_classes", num_classes),
                           ("n_conv_per_stage_decoder", n_conv_per_stage_decoder)):
            if value is None:
                raise ValueError(f"MultiEncoderUNet needs {arg}")
        if encoder not in ENCODER_TYPES:
            raise ValueError(f"encoder must be one of {ENCODER_TYPES}, got {encoder!r}")
        if not encoder_width > 0:
            raise ValueError(f"encoder_width must be > 0, got {encoder_width}")
        if modality_names is not None and len(modality_names) != input_channels:
            raise ValueError(f"modality_names has {len(modality_names)} entries {list(modality_names)} but the "
                             f"network has {input_channels} input channels")
        groups = validate_encoder_groups(encoder_groups, input_channels, modality_names)

        def per_stage(v: IntOrSeq, n: int) -> List[int]:
            return [v] * n if isinstance(v, int) else list(v)

        features_per_stage = per_stage(features_per_stage, n_stages)
        # not None: checked above
        n_conv_per_stage = per_stage(cast(IntOrSeq, n_conv_per_stage), n_stages)
        n_conv_per_stage_decoder = per_stage(cast(IntOrSeq, n_conv_per_stage_decoder), n_stages - 1)
        if len(features_per_stage) != n_stages or len(n_conv_per_stage) != n_stages \
                or len(n_conv_per_stage_decoder) != n_stages - 1:
            raise ValueError(f"features_per_stage and n_conv_per_stage need {n_stages} entries and "
                             f"n_conv_per_stage_decoder {n_stages - 1}, got {features_per_stage}, {n_conv_per_stage}, "
                             f"{n_conv_per_stage_decoder}")
        encoder_features = [max(1, int(round(f * encoder_width))) for f in features_per_stage]

        common = dict(n_stages=n_stages, features_per_stage=encoder_features, conv_op=conv_op,
                      kernel_sizes=kernel_sizes, strides=strides, conv_bias=conv_bias, norm_op=norm_op,
                      norm_op_kwargs=norm_op_kwargs, dropout_op=dropout_op, dropout_op_kwargs=dropout_op_kwargs,
                      nonlin=nonlin, nonlin_kwargs=nonlin_kwargs, return_skips=True)
        if encoder == "plain":
            encoders = [PlainConvEncoder(len(g), n_conv_per_stage=n_conv_per_stage, nonlin_first=nonlin_first,
                                         **common) for g in groups]
        else:
            encoders = [ResidualEncoder(len(g), n_blocks_per_stage=n_conv_per_stage, **common) for g in groups]
        fusions = [FeatureFusion(fusion, [encoder_features[s]] * len(groups), features_per_stage[s], conv_op,
                                 conv_bias, norm_op, norm_op_kwargs, nonlin, nonlin_kwargs) for s in range(n_stages)]

        self.encoder_groups = groups
        self.fusion = fusion
        self.encoder_type = encoder
        self.modality_names = list(modality_names) if modality_names is not None else None
        self.encoder = MultiEncoder(encoders, groups, fusions, features_per_stage)
        self.encoder.set_encoder_impl(encoder_impl)
        self.decoder = UNetDecoder(self.encoder, num_classes, n_conv_per_stage_decoder, deep_supervision,
                                   nonlin_first=nonlin_first)
        # keys dynamic-network-architectures / nnssl use to find the encoder, stem and input projections
        self.key_to_encoder = "encoder.encoders"
        self.key_to_stem = "encoder.encoders"
        first_conv = "stages.0.0.convs.0.conv" if encoder == "plain" else "stem.convs.0.conv"
        self.keys_to_in_proj = tuple(f"encoder.encoders.{i}.{first_conv}" for i in range(len(groups)))

    def describe(self) -> str:
        """One line for logs: encoders (by modality), fusion, widths and parameter count."""
        names = self.modality_names or [str(c) for c in range(sum(len(g) for g in self.encoder_groups))]
        encoders = ", ".join("+".join(names[c] for c in g) for g in self.encoder_groups)
        widths = cast(List[int], self.encoder.encoders[0].output_channels)
        n_params = sum(p.numel() for p in self.parameters())
        return (f"{len(self.encoder_groups)} {self.encoder_type} encoders [{encoders}] of widths {list(widths)}, "
                f"{self.fusion} fusion to {list(self.encoder.output_channels)}, {n_params / 1e6:.2f}M parameters")

    def forward(self, x: torch.Tensor, present: Optional[torch.Tensor] = None):
        """``present``: optional encoder mask ``(n_encoders,)`` or ``(batch, n_encoders)`` of 0/1 (see
        ``MultiEncoder``); ``None`` uses ``self.encoder.inference_present``, by default every encoder."""
        skips = self.encoder(x, present)
        return self.decoder(skips)

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        if len(input_size) != convert_conv_op_to_dim(self.encoder.conv_op):
            raise ValueError(f"give the spatial size only, e.g. (x, y, z), got {input_size}")
        return self.encoder.compute_conv_feature_map_size(input_size) + \
            self.decoder.compute_conv_feature_map_size(input_size)

    @staticmethod
    def initialize(module: nn.Module) -> None:
        """He initialisation as in nnU-Net's U-Nets (plus zeroed last norm of residual blocks, as ResEnc does)."""
        InitWeights_He(1e-2)(module)
        init_last_bn_before_add_to_0(module)
