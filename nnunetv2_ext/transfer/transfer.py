"""Transfer pretrained weights into a (multi-encoder or nnU-Net) U-Net, with a per-tensor report.

One pure function, :func:`transfer_weights`: ``(source weights, target network, modality mapping) -> (state dict,
report)``. It handles the cases nnU-Net's exact-match loader refuses (nnU-Net issues #2252, #2152, #2089):

- a single-encoder U-Net (``PlainConvUNet``, ``ResidualEncoderUNet``) into a ``MultiEncoderUNet``: every encoder
  starts from the pretrained encoder, its first convolution restricted to its own modalities;
- a multi-encoder U-Net into a multi-encoder U-Net with other or reordered modalities: encoders matched by name;
- a U-Net into the same U-Net with another input channel count: the first convolution adapted by modality name.

Input channels whose modality the source never saw get a new kernel slice, He-initialised as in BrainSegFounder's
2 -> 4 channel expansion (Cox et al. 2024, "BrainSegFounder: Towards 3D Foundation Models for Neuroimage
Segmentation", sec. 2.4.1), or the mean of the pretrained channels' kernels: :mod:`nnunetv2_ext.transfer.input_kernel`,
the one adaptation of input projections. The report is :mod:`nnunetv2_ext.transfer.report`'s.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from nnunetv2_ext.transfer.checkpoint import SourceWeights, strip_prefixes
from nnunetv2_ext.transfer.input_kernel import (
    NEW_MODALITY_INITS,
    adapt_input_kernel,
    mean_input_kernel,
    new_channel_note,
    same_beyond_input_channels,
)
from nnunetv2_ext.transfer.report import TransferEntry, TransferReport, format_shape

# what a transfer copies: "all" (encoders and decoder; the segmentation heads never) or "encoder" (encoders only, the
# decoder keeps the target's fresh initialisation)
TRANSFER_SCOPES = ("all", "encoder")
_DECODER_STAGE = re.compile(r"^decoder\.(?:stages|transpconvs|seg_layers)\.(\d+)\.")
SEG_HEAD = ".seg_layers."
DECODER_ALIAS = "decoder.encoder."
_MULTI_KEY = re.compile(r"^encoder\.encoders\.(\d+)\.")
_FUSION_CONV = re.compile(r"^encoder\.fusions\.\d+\.proj\.0\.weight$")
_ALL_MODULES = re.compile(r"^(.*)\.all_modules\.(\d+)\.([^.]+)$")
_BLOCK_CHILDREN = ("conv", "norm", "dropout", "nonlin")  # dynamic-network-architectures ConvDropoutNormReLU


# ----------------------------------------------------------------------------------------------------------------------
# aliases: tensors a state dict lists under several keys


def _alias_rank(key: str, order: int) -> tuple:
    return key.startswith(DECODER_ALIAS), ".all_modules." in key, order


def canonical_keys(state: Mapping[str, torch.Tensor]) -> Dict[str, str]:
    """Map every key to its canonical key (itself unless it is another name of the same tensor).

    Two keys are aliases if they share storage (how ``state_dict()`` and ``torch.save``/``torch.load`` keep them) or,
    for state dicts whose tensors were copied, if they are equal and named as dynamic-network-architectures names the
    same tensor twice (``decoder.encoder.X`` / ``encoder.X``; ``P.all_modules.N.S`` / ``P.conv.S``, ``P.norm.S``).
    The canonical key is the one outside ``decoder.encoder.`` and ``.all_modules.``.
    """
    keys = list(state)
    parent = {k: k for k in keys}

    def find(k: str) -> str:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[ra] = rb

    def same(a: str, b: str) -> bool:
        va, vb = state[a], state[b]
        return va.shape == vb.shape and va.dtype == vb.dtype and va.device == vb.device and torch.equal(va, vb)

    first_of: Dict[tuple, str] = {}
    for k in keys:
        v = state[k]
        if v.numel() == 0 or v.device.type == "meta":
            continue
        ident = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), v.stride(), v.dtype, v.device)
        if ident in first_of:
            union(k, first_of[ident])
        else:
            first_of[ident] = k
    for k in keys:
        if k.startswith(DECODER_ALIAS):
            other = k[len("decoder."):]
            if other in state and find(other) != find(k) and same(k, other):
                union(k, other)
        m = _ALL_MODULES.match(k)
        if m:
            base, idx, leaf = m.groups()
            children = _BLOCK_CHILDREN if idx == "0" else _BLOCK_CHILDREN[1:] + _BLOCK_CHILDREN[:1]
            for child in children:
                other = f"{base}.{child}.{leaf}"
                if other in state and same(k, other):
                    if find(other) != find(k):
                        union(k, other)
                    break
    order = {k: i for i, k in enumerate(keys)}
    groups: Dict[str, List[str]] = {}
    for k in keys:
        groups.setdefault(find(k), []).append(k)
    out = {}
    for members in groups.values():
        canon = min(members, key=lambda k: _alias_rank(k, order[k]))
        for k in members:
            out[k] = canon
    return out


# ----------------------------------------------------------------------------------------------------------------------
# the two sides: encoders, their input channels and first convolutions


@dataclass
class _Encoder:
    prefix: str  # "encoder." (single encoder) or "encoder.encoders.{i}."
    channels: List[int]  # input channels of the network that this encoder reads
    in_proj: Optional[str]  # key of the first convolution's weight


@dataclass
class _Side:
    kind: str  # "multi" | "single" | "other"
    encoders: List[_Encoder]
    names: Optional[List[str]]  # modality per input channel
    n_channels: int


def _first_conv(keys: Sequence[str], state: Mapping[str, torch.Tensor], prefix: str,
                declared: Sequence[str] = ()) -> Optional[str]:
    """The encoder's input projection: a declared ``keys_to_in_proj`` entry, else its first conv weight."""
    for d in declared:
        k = f"{d}.weight"
        if k.startswith(prefix) and k in keys:
            return k
    for k in keys:
        if k.startswith(prefix) and k.endswith(".weight") and state[k].ndim >= 3:
            return k
    return None


def _contiguous(sizes: Sequence[int]) -> List[List[int]]:
    groups, start = [], 0
    for n in sizes:
        groups.append(list(range(start, start + n)))
        start += n
    return groups


def _encoders(keys: Sequence[str], state: Mapping[str, torch.Tensor], groups: Optional[Sequence[Sequence[int]]],
              declared: Sequence[str], side: str, notes: List[str]) -> Tuple[str, List[_Encoder]]:
    ids = sorted({int(m.group(1)) for k in keys if (m := _MULTI_KEY.match(k))})
    if ids:
        prefixes = [f"encoder.encoders.{i}." for i in ids]
        projs = [_first_conv(keys, state, p, declared) for p in prefixes]
        sizes = [int(state[k].shape[1]) if k else 0 for k in projs]
        if groups is None or len(groups) != len(ids) or any(len(g) != n for g, n in zip(groups, sizes)):
            if groups is not None:
                notes.append(f"{side} encoder_groups {list(groups)} do not fit its first convolutions "
                             f"({sizes} input channels): assumed contiguous channel groups")
            elif any(n > 1 for n in sizes):
                notes.append(f"{side} encoder groups unknown: assumed contiguous channel groups of sizes {sizes}")
            groups = _contiguous(sizes)
        return "multi", [_Encoder(p, [int(c) for c in g], k) for p, g, k in zip(prefixes, groups, projs)]
    if any(k.startswith(("encoder.stages.", "encoder.stem.")) for k in keys):
        proj = _first_conv(keys, state, "encoder.", declared)
        n = int(state[proj].shape[1]) if proj else 0
        return "single", [_Encoder("encoder.", list(range(n)), proj)]
    return "other", []


def _names(given: Optional[Sequence[str]], n_channels: int, side: str, notes: List[str],
           strict: bool) -> Optional[List[str]]:
    if given is None:
        return None
    given = [str(n) for n in given]
    if n_channels and len(given) != n_channels:
        msg = (f"{side} modality names {given} ({len(given)}) do not match its {n_channels} input channels")
        if strict:
            raise ValueError(msg + "; pass one name per input channel of the target network (dataset.json "
                                   "channel_names order)")
        notes.append(msg + ": names ignored")
        return None
    return given


def _norm_name(name: str) -> str:
    return name.strip().lower()


# ----------------------------------------------------------------------------------------------------------------------
# the transfer


class _Transfer:
    """One transfer: holds both sides and the decisions; :func:`transfer_weights` is its only user."""

    def __init__(self, source: SourceWeights, target: nn.Module, target_modalities: Optional[Sequence[str]],
                 new_modality_init: str, skip: Tuple[str, ...], generator: Optional[torch.Generator],
                 fresh: Optional[Mapping[str, str]] = None):
        self.source, self.target = source, target
        self.mode, self.skip, self.generator = new_modality_init, tuple(skip), generator
        self.fresh = dict(fresh or {})  # canonical target key -> why it keeps its fresh initialisation
        self.notes: List[str] = []
        self.mapping: List[str] = []
        self.s_state = source.state
        self.s_canon = canonical_keys(self.s_state)
        self.s_keys = [k for k in self.s_state if self.s_canon[k] == k]
        self.t_state = target.state_dict()
        self.t_canon = canonical_keys(self.t_state)
        self.t_keys = [k for k in self.t_state if self.t_canon[k] == k]
        self.referenced: set = set()

        kind, encs = _encoders(self.s_keys, self.s_state, source.encoder_groups, (), "source", self.notes)
        n = sum(len(e.channels) for e in encs) or (len(source.modality_names) if source.modality_names else 0)
        self.src = _Side(kind, encs, _names(source.modality_names, n, "source", self.notes, strict=False), n)

        declared = [k for k in getattr(target, "keys_to_in_proj", ()) or () if isinstance(k, str)]
        groups = getattr(target, "encoder_groups", None)
        kind, encs = _encoders(self.t_keys, self.t_state, groups, declared, "target", self.notes)
        n = sum(len(e.channels) for e in encs)
        names = target_modalities if target_modalities is not None else getattr(target, "modality_names", None)
        self.tgt = _Side(kind, encs, _names(names, n, "target", self.notes, strict=True), n)

        if self.src.kind == "multi" and self.tgt.kind == "single":
            if not any(k.startswith("encoder.") and k in self.s_state and self.s_state[k].shape == self.t_state[k].shape
                       for k in self.t_keys):
                raise ValueError(
                    f"transferring a multi-encoder checkpoint ({len(self.src.encoders)} encoders, keys "
                    f"encoder.encoders.*) into a single-encoder network ({type(target).__name__}, keys "
                    f"encoder.stages.*) is not supported: there is no one right way to merge several encoders into "
                    f"one. Fine-tune a MultiEncoderUNet instead (nnUNetPlans_MultiEncoder plans), or pretrain a "
                    f"single-encoder network.")
        if self.src.kind == "other" or self.tgt.kind == "other" or \
                (self.src.kind == "multi" and self.tgt.kind == "single"):
            # no encoder structure to map: keys are matched as they are
            self.tgt.encoders = []
        self._match_names()
        self.assign = self._assign()
        # input projections of networks without a U-Net encoder structure (MONAI backbones): the target's declared
        # keys_to_in_proj and the reader's (ExternalWeights.keys_to_in_proj, already in the target's key space)
        self.flat_in_proj = set()
        if not self.tgt.encoders:
            for d in list(declared) + list(getattr(source, "keys_to_in_proj", ()) or ()):
                if f"{d}.weight" in self.t_state:
                    self.flat_in_proj.add(self.t_canon[f"{d}.weight"])

    # -- modality names ------------------------------------------------------------------------------------------------
    def _match_names(self) -> None:
        if self.tgt.encoders and (self.src.names is None or self.tgt.names is None):
            unknown = " and ".join(s for s, side in (("source", self.src), ("target", self.tgt)) if side.names is None)
            self.notes.append(f"modality names unknown for the {unknown}: input channels mapped by index "
                              f"(source channel c -> target channel c)")
            self.s_disp = [f"ch{c}" for c in range(self.src.n_channels)]
            self.t_disp = [f"ch{c}" for c in range(self.tgt.n_channels)]
        else:
            self.s_disp = list(self.src.names or [])
            self.t_disp = list(self.tgt.names or [])
        self.s_loc: Dict[str, Tuple[int, int]] = {}  # modality -> (source encoder, position in its group)
        for j, enc in enumerate(self.src.encoders):
            for p, c in enumerate(enc.channels):
                if c < len(self.s_disp):
                    self.s_loc.setdefault(_norm_name(self.s_disp[c]), (j, p))

    def _group_names(self, side: str, enc: _Encoder) -> List[str]:
        disp = self.s_disp if side == "source" else self.t_disp
        return [disp[c] if c < len(disp) else f"ch{c}" for c in enc.channels]

    def _assign(self) -> List[Optional[int]]:
        """Source encoder for each target encoder (None: no modality of it was pretrained)."""
        out: List[Optional[int]] = []
        for i, enc in enumerate(self.tgt.encoders):
            names = [_norm_name(n) for n in self._group_names("target", enc)]
            j: Optional[int]
            if self.src.kind == "single":
                j = 0
            else:
                src_sets = [{_norm_name(n) for n in self._group_names("source", s)} for s in self.src.encoders]
                exact = [j for j, s in enumerate(src_sets) if s == set(names)]
                overlap = [len(s & set(names)) for s in src_sets]
                j = exact[0] if exact else (max(range(len(overlap)), key=lambda k: (overlap[k], -k))
                                            if overlap and max(overlap) > 0 else None)
            out.append(j)
            t_desc = f"target encoder {i} [{', '.join(self._group_names('target', enc))}]"
            if j is None:
                how = "mean of pretrained encoders" if self.mode == "mean" and self.src.encoders else "new"
                self.mapping.append(f"{t_desc} <- none of its modalities was pretrained: {how}")
            else:
                s_name = "the source encoder" if self.src.kind == "single" else f"source encoder {j}"
                s_names = ", ".join(self._group_names("source", self.src.encoders[j]))
                self.mapping.append(f"{t_desc} <- {s_name} [{s_names}]")
        return out

    # -- helpers ------------------------------------------------------------------------------------------------------
    def _src(self, key: str) -> Optional[str]:
        """The source key holding ``key`` (marked referenced), or None."""
        if key in self.s_state:
            self.referenced.add(self.s_canon[key])
            return key
        return None

    def _entry(self, tkey: str, action: str, skey: Optional[str], note: str = "") -> TransferEntry:
        s_shape = tuple(self.s_state[skey].shape) if skey is not None else None
        return TransferEntry(tkey, action, skey, s_shape, tuple(self.t_state[tkey].shape), note)

    def _cast(self, value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return value.detach().to(device=like.device, dtype=like.dtype).clone()

    def _adapt(self, tval: torch.Tensor, slices: Sequence[Optional[torch.Tensor]], mean: torch.Tensor
               ) -> Tuple[torch.Tensor, str]:
        """:func:`~nnunetv2_ext.transfer.input_kernel.adapt_input_kernel` with this transfer's init and generator."""
        return adapt_input_kernel(tval, slices, self.mode, mean, self.generator)

    # -- decisions ----------------------------------------------------------------------------------------------------
    def _in_proj(self, i: int, j: int, tkey: str, tval: torch.Tensor) -> Tuple[torch.Tensor, TransferEntry]:
        """First convolution of target encoder ``i`` from source encoder ``j``, channel by modality name."""
        enc, senc = self.tgt.encoders[i], self.src.encoders[j]
        skey = self._src(senc.in_proj) if senc.in_proj else None
        if skey is None:
            return tval, self._entry(tkey, "new", None, "source encoder has no input convolution")
        ks = self.s_state[skey]
        if not same_beyond_input_channels(ks, tval):
            return tval, self._entry(tkey, "new", skey, f"input convolution: source {format_shape(tuple(ks.shape))} vs "
                                                        f"target {format_shape(tuple(tval.shape))} differ beyond the "
                                                        f"input channels: target init kept")
        slices: List[Optional[torch.Tensor]] = []
        copied, borrowed, fresh = [], [], []
        for name in self._group_names("target", enc):
            loc = self.s_loc.get(_norm_name(name))
            other = self.src.encoders[loc[0]] if loc is not None else None
            if loc is not None and loc[0] == j:
                slices.append(ks[:, loc[1]])
                copied.append(name)
            elif loc is not None and other is not None and other.in_proj is not None and \
                    same_beyond_input_channels(self.s_state[other.in_proj], ks):
                self._src(other.in_proj)  # marks it referenced
                slices.append(self.s_state[other.in_proj][:, loc[1]])
                borrowed.append(f"{name} (from source encoder {loc[0]})")
            else:
                slices.append(None)
                fresh.append(name)
        out, action = self._adapt(tval, slices, mean_input_kernel([ks]))
        exact = not fresh and not borrowed and ks.shape == tval.shape and \
            [_norm_name(n) for n in self._group_names("source", senc)] == \
            [_norm_name(n) for n in self._group_names("target", enc)]
        s_names, t_names = self._group_names("source", senc), self._group_names("target", enc)
        origin = f"source encoder {j}" if self.src.kind == "multi" else "source"
        parts = [f"[{', '.join(t_names)}] from {origin} [{', '.join(s_names)}]"]
        if copied:
            parts.append(f"copied {', '.join(copied)}")
        if borrowed:
            parts.append(f"copied {', '.join(borrowed)}")
        if fresh:
            parts.append(new_channel_note(fresh, self.mode, self.generator))
        return out, self._entry(tkey, "loaded" if exact else action, skey, "; ".join(parts))

    def _mean_of_encoders(self, rest: str, tkey: str, tval: torch.Tensor, is_in_proj: bool
                          ) -> Tuple[torch.Tensor, TransferEntry]:
        """Rule for a target encoder with no pretrained modality under new_modality_init='mean'."""
        if is_in_proj:
            keys = [s.in_proj for s in self.src.encoders
                    if s.in_proj is not None and same_beyond_input_channels(self.s_state[s.in_proj], tval)]
        else:
            keys = [s.prefix + rest for s in self.src.encoders
                    if s.prefix + rest in self.s_state and self.s_state[s.prefix + rest].shape == tval.shape]
        if not keys:
            return tval, self._entry(tkey, "new", None, "no pretrained modality and no source tensor of this shape: "
                                                        "target init kept")
        for k in keys:
            self._src(k)
        if is_in_proj:
            value, _ = self._adapt(tval, [None] * tval.shape[1], mean_input_kernel([self.s_state[k] for k in keys]))
        elif tval.is_floating_point():
            value = self._cast(torch.stack([self.s_state[k].float() for k in keys]).mean(0), tval)
        else:
            value = self._cast(self.s_state[keys[0]], tval)
        return value, self._entry(tkey, "adapted", keys[0], f"mean of pretrained encoders ({len(keys)})")

    def _encoder_key(self, i: int, tkey: str, tval: torch.Tensor) -> Tuple[torch.Tensor, TransferEntry]:
        enc = self.tgt.encoders[i]
        rest = tkey[len(enc.prefix):]
        j = self.assign[i]
        is_in_proj = tkey == enc.in_proj
        if j is None:
            if self.mode == "mean" and self.src.encoders:
                return self._mean_of_encoders(rest, tkey, tval, is_in_proj)
            names = ", ".join(self._group_names("target", enc))
            return tval, self._entry(tkey, "new", None, f"modality {names} not in the source: target init kept")
        if is_in_proj:
            return self._in_proj(i, j, tkey, tval)
        skey = self._src(self.src.encoders[j].prefix + rest)
        origin = "" if self.src.kind == "single" and len(self.tgt.encoders) == 1 else \
            ("from the single pretrained encoder" if self.src.kind == "single" else f"from source encoder {j}")
        if skey is None:
            return tval, self._entry(tkey, "new", None, f"no source tensor {self.src.encoders[j].prefix + rest}")
        sval = self.s_state[skey]
        if sval.shape != tval.shape:
            return tval, self._entry(tkey, "new", skey, f"encoder width differs: source "
                                                        f"{format_shape(tuple(sval.shape))} vs target "
                                                        f"{format_shape(tuple(tval.shape))}: target init kept")
        return self._cast(sval, tval), self._entry(tkey, "loaded", skey, origin)

    def _fusion_conv(self, tkey: str, tval: torch.Tensor) -> Tuple[torch.Tensor, TransferEntry]:
        """Concat-fusion 1x1 conv: input-channel block of target encoder i <- block of its source encoder."""
        skey = self._src(tkey)
        if skey is None:
            return tval, self._entry(tkey, "new", None, "not in the source")
        ks = self.s_state[skey]
        n_t, n_s = len(self.tgt.encoders), len(self.src.encoders)
        if ks.shape == tval.shape and self.assign == list(range(n_t)) and n_t == n_s:
            return self._cast(ks, tval), self._entry(tkey, "loaded", skey)
        w_t, w_s = tval.shape[1] // max(n_t, 1), ks.shape[1] // max(n_s, 1)
        if ks.ndim != tval.ndim or ks.shape[0] != tval.shape[0] or ks.shape[2:] != tval.shape[2:] or \
                tval.shape[1] % max(n_t, 1) or ks.shape[1] % max(n_s, 1) or w_t != w_s:
            return tval, self._entry(tkey, "new", skey, f"fusion input blocks differ: source "
                                                        f"{format_shape(tuple(ks.shape))} ({n_s} encoders) vs target "
                                                        f"{format_shape(tuple(tval.shape))} ({n_t} encoders): target "
                                                        f"init kept")
        out = tval.clone()
        blocks = []
        for i, j in enumerate(self.assign):
            if j is None:
                blocks.append(f"{i} new")
            else:
                out[:, i * w_t:(i + 1) * w_t] = self._cast(ks[:, j * w_t:(j + 1) * w_t], tval)
                blocks.append(f"{i}<-{j}")
        if all(j is None for j in self.assign):
            return tval, self._entry(tkey, "new", skey, "no target encoder was pretrained: target init kept")
        return out, self._entry(tkey, "adapted", skey, f"input blocks of width {w_t} (target<-source encoder): "
                                                       + ", ".join(blocks))

    def _flat_in_proj(self, tkey: str, tval: torch.Tensor) -> Tuple[torch.Tensor, TransferEntry]:
        """Input projection of a network without encoder structure: kernel slices by modality name."""
        skey = self._src(tkey)
        if skey is None:
            return tval, self._entry(tkey, "new", None, "not in the source")
        ks = self.s_state[skey]
        if not same_beyond_input_channels(ks, tval):
            return self._generic(tkey, tval)
        s_names = list(self.src.names) if self.src.names and len(self.src.names) == ks.shape[1] else \
            [f"ch{c}" for c in range(ks.shape[1])]
        t_names = list(self.tgt.names) if self.tgt.names and len(self.tgt.names) == tval.shape[1] else \
            [f"ch{c}" for c in range(tval.shape[1])]
        if ks.shape == tval.shape and [_norm_name(n) for n in s_names] == [_norm_name(n) for n in t_names]:
            return self._cast(ks, tval), self._entry(tkey, "loaded", skey)
        loc: Dict[str, int] = {}
        for c, n in enumerate(s_names):
            loc.setdefault(_norm_name(n), c)
        slices = [ks[:, loc[_norm_name(n)]] if _norm_name(n) in loc else None for n in t_names]
        out, action = self._adapt(tval, slices, mean_input_kernel([ks]))
        copied = [n for n, piece in zip(t_names, slices) if piece is not None]
        fresh = [n for n, piece in zip(t_names, slices) if piece is None]
        parts = [f"[{', '.join(t_names)}] from source [{', '.join(s_names)}]"]
        if copied:
            parts.append(f"copied {', '.join(copied)}")
        if fresh:
            parts.append(new_channel_note(fresh, self.mode, self.generator))
        return out, self._entry(tkey, action, skey, "; ".join(parts))

    def _generic(self, tkey: str, tval: torch.Tensor) -> Tuple[torch.Tensor, TransferEntry]:
        skey = self._src(tkey)
        if skey is None:
            return tval, self._entry(tkey, "new", None, "not in the source")
        sval = self.s_state[skey]
        if sval.shape != tval.shape:
            return tval, self._entry(tkey, "new", skey, f"shape differs: source {format_shape(tuple(sval.shape))} vs "
                                                        f"target {format_shape(tuple(tval.shape))}: target init kept")
        return self._cast(sval, tval), self._entry(tkey, "loaded", skey)

    def decide(self, tkey: str) -> Tuple[torch.Tensor, TransferEntry]:
        tval = self.t_state[tkey].detach().clone()
        if tkey in self.fresh:
            return tval, self._entry(tkey, "new", self._src(tkey), self.fresh[tkey])
        hit = next((s for s in self.skip if s in tkey), None)
        if hit is not None:
            skey = self._src(tkey)
            note = "segmentation head: not transferred" if hit == SEG_HEAD else \
                f"matches skip pattern {hit!r}: not transferred"
            return tval, self._entry(tkey, "new", skey, note)
        for i, enc in enumerate(self.tgt.encoders):
            if tkey.startswith(enc.prefix):
                return self._encoder_key(i, tkey, tval)
        if self.tgt.kind == "multi" and self.src.kind == "multi" and self.tgt.encoders and _FUSION_CONV.match(tkey):
            return self._fusion_conv(tkey, tval)
        if tkey in self.flat_in_proj:
            return self._flat_in_proj(tkey, tval)
        return self._generic(tkey, tval)

    def run(self) -> Tuple[Dict[str, torch.Tensor], TransferReport]:
        values: Dict[str, torch.Tensor] = {}
        entries: List[TransferEntry] = []
        for tkey in self.t_keys:
            values[tkey], entry = self.decide(tkey)
            entries.append(entry)
        if not any(e.action in ("loaded", "adapted") for e in entries):
            def listing(state: Mapping[str, torch.Tensor], keys: Sequence[str]) -> str:
                return "; ".join(f"{k} {format_shape(tuple(state[k].shape))}" for k in keys[:8])
            raise ValueError(
                f"no tensor of {self.source.describe()} matches the target network {type(self.target).__name__}. "
                f"Source keys (first 8 of {len(self.s_keys)}): {listing(self.s_state, self.s_keys)}. Target keys "
                f"(first 8 of {len(self.t_keys)}): {listing(self.t_state, self.t_keys)}. Pretrain with the same "
                f"network family (dynamic-network-architectures U-Net or MultiEncoderUNet), or strip the prefix the "
                f"pretraining framework added to the keys.")
        for k in self.s_keys:
            if k not in self.referenced:
                entries.append(TransferEntry(None, "ignored", k, tuple(self.s_state[k].shape), None,
                                             "not used by the target network"))
        state = {k: values[self.t_canon[k]] for k in self.t_state}
        report = TransferReport(entries=entries, source=self.source.describe(), target=type(self.target).__name__,
                                notes=self.notes, mapping=self.mapping,
                                n_aliases=len(self.t_state) - len(self.t_keys))
        return state, report


def fresh_keys_for_scope(target: nn.Module, scope: str = "all", fresh_decoder_stages: int = 0,
                         reset_decoder_norm: bool = False) -> Dict[str, str]:
    """Canonical state-dict keys of ``target`` that a transfer with this scope leaves at their fresh initialisation,
    each with the reason (the report's note).

    Args:
        target: a dynamic-network-architectures style U-Net (``encoder.*`` / ``decoder.*`` keys) for any scope other
            than ``"all"`` with no fresh stages and no norm reset.
        scope: ``"all"`` (encoders and decoder) or ``"encoder"`` (encoders only: every ``decoder.*`` key fresh).
        fresh_decoder_stages: with ``scope="all"``, the number of the decoder's last (highest-resolution) stages kept
            fresh (their ``decoder.stages.i``, ``decoder.transpconvs.i`` and ``decoder.seg_layers.i`` keys).
        reset_decoder_norm: keep the affine parameters (and running statistics) of every normalisation layer of the
            decoder fresh (weight 1, bias 0), the decoder's convolutions transferred.

    Raises:
        ValueError: an unknown scope, a negative stage count, or a scope that needs ``encoder.*`` / ``decoder.*``
            keys on a network without them.
    """
    if scope not in TRANSFER_SCOPES:
        raise ValueError(f"transfer scope must be one of {TRANSFER_SCOPES}, got {scope!r}")
    if fresh_decoder_stages < 0:
        raise ValueError(f"fresh_decoder_stages must be >= 0, got {fresh_decoder_stages}")
    if scope == "all" and not fresh_decoder_stages and not reset_decoder_norm:
        return {}
    state = target.state_dict()
    canon = canonical_keys(state)
    keys = [k for k in state if canon[k] == k]
    if not any(k.startswith("encoder.") for k in keys) or not any(k.startswith("decoder.") for k in keys):
        raise ValueError(f"a transfer of scope {scope!r} (or with fresh decoder stages / decoder norm reset) needs a "
                         f"U-Net with encoder.* and decoder.* keys (dynamic-network-architectures style); "
                         f"{type(target).__name__} has none: use scope 'all'")
    if scope == "encoder":
        return {k: "decoder: not transferred (scope 'encoder')" for k in keys if k.startswith("decoder.")}
    fresh: Dict[str, str] = {}
    stages = sorted({int(m.group(1)) for k in keys if (m := _DECODER_STAGE.match(k))})
    last = set(stages[len(stages) - fresh_decoder_stages:]) if fresh_decoder_stages else set()
    for k in keys:
        m = _DECODER_STAGE.match(k)
        if m and int(m.group(1)) in last:
            fresh[k] = f"decoder stage {m.group(1)}: one of the last {fresh_decoder_stages}, not transferred"
    if reset_decoder_norm:
        norms = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
        for k in keys:
            module_name = k.rsplit(".", 1)[0]
            if k.startswith("decoder.") and k not in fresh and \
                    isinstance(target.get_submodule(module_name), norms):
                fresh[k] = "decoder normalisation: affine parameters and statistics re-initialised"
    return fresh


def transfer_weights(source: SourceWeights | Mapping[str, torch.Tensor], target: nn.Module,
                     target_modalities: Optional[Sequence[str]] = None, new_modality_init: str = "kaiming",
                     skip: Tuple[str, ...] = (SEG_HEAD,), generator: Optional[torch.Generator] = None,
                     scope: str = "all", fresh_decoder_stages: int = 0, reset_decoder_norm: bool = False
                     ) -> Tuple[Dict[str, torch.Tensor], TransferReport]:
    """Build a state dict for ``target`` from pretrained weights, mapping encoders and input channels by modality.

    Pure: neither ``target`` nor ``source`` is modified; apply the result with ``target.load_state_dict(state)``.
    Tensors not transferred keep the target's fresh initialisation.

    Rules, per canonical target key (``decoder.encoder.*`` / ``*.all_modules.*`` aliases follow their canonical key):

    - keys matching ``skip`` (segmentation heads): ``new``;
    - single-encoder source (``PlainConvUNet`` / ``ResidualEncoderUNet`` keys ``encoder.stages.*``,
      ``encoder.stem.*``) into a ``MultiEncoderUNet``: every target encoder takes the pretrained encoder's tensors
      (``loaded``; ``new`` where the encoder width differs); into a single-encoder U-Net: the same keys;
    - multi-encoder source into a ``MultiEncoderUNet``: each target encoder takes the source encoder with the same
      modalities, else the one holding most of them; an encoder with no pretrained modality is ``new``, or with
      ``new_modality_init='mean'`` the element-wise mean of all pretrained encoders (``adapted``); concat-fusion
      1x1 convs get, per target encoder, the input-channel block of its source encoder (``adapted``);
    - first convolutions (input projections): kernel slice of each input channel copied from the source channel of
      the same modality (by index where names are unknown); channels of modalities the source lacks are new:
      ``'kaiming'`` keeps the target's He-initialised slice (redrawn from ``generator`` if one is given) as in
      BrainSegFounder's 2 -> 4 channel expansion (Cox et al. 2024, sec. 2.4.1), ``'mean'`` takes the mean of the
      pretrained channels' kernels;
    - every other key: ``loaded`` if the source has it with the same shape, else ``new`` (with both shapes);
    - source tensors nothing used: ``ignored`` entries.

    Args:
        source: weights from :func:`~nnunetv2_ext.transfer.checkpoint.read_checkpoint` (or a plain state dict).
        target: the freshly initialised network to fill (``MultiEncoderUNet``, ``PlainConvUNet``, ...).
        target_modalities: a name per target input channel; default ``target.modality_names``.
        new_modality_init: ``'kaiming'`` or ``'mean'`` for input channels / encoders without pretrained modality.
        skip: substrings of keys never transferred (default: segmentation heads).
        generator: with ``'kaiming'``, redraw new channels' kernels from this generator (He normal, negative slope
            1e-2 as nnU-Net's InitWeights_He) instead of keeping the target's own init.
        scope, fresh_decoder_stages, reset_decoder_norm: what is transferred at all (see
            :func:`fresh_keys_for_scope`); keys left out are ``new``, with the reason in the note.

    Returns:
        (state dict with every key of ``target.state_dict()``, report).

    Raises:
        ValueError: unknown ``new_modality_init``; ``target_modalities`` of the wrong length; a multi-encoder source
            into a single-encoder target; no tensor loaded or adapted at all (the message lists keys of both sides).
    """
    if new_modality_init not in NEW_MODALITY_INITS:
        raise ValueError(f"new_modality_init must be one of {NEW_MODALITY_INITS}, got {new_modality_init!r}")
    if isinstance(skip, str):
        skip = (skip,)
    if not isinstance(source, SourceWeights):
        if not isinstance(source, Mapping) or not all(isinstance(v, torch.Tensor) for v in source.values()):
            raise ValueError(f"source must be SourceWeights (see read_checkpoint) or a state dict of tensors, got "
                             f"{type(source).__name__}")
        source = SourceWeights(state=strip_prefixes(source))
    fresh = fresh_keys_for_scope(target, scope, fresh_decoder_stages, reset_decoder_norm)
    with torch.no_grad():
        return _Transfer(source, target, target_modalities, new_modality_init, tuple(skip), generator, fresh).run()
