"""Read pretrained weights from the wider ecosystem into :class:`SourceWeights` for :func:`transfer_weights`.

One reader per format, chosen by :func:`detect_format` (or forced with ``format=``); :func:`read_weights` dispatches.
Every file is loaded by :mod:`nnunetv2_ext.transfer.checkpoint`'s ``weights_only`` loader (allow-list, refusal of
pickled payloads); nothing here unpickles anything itself.

==================  ==========================================================================================
format              what it is and how its keys are mapped
==================  ==========================================================================================
``nnunet``          nnU-Net's / this package's ``checkpoint_*.pth`` (``network_weights``, ``init_args``,
                    ``trainer_name``): :func:`~nnunetv2_ext.transfer.checkpoint.read_checkpoint`, keys unchanged.
``nnssl``           MIC-DKFZ/nnssl pretraining checkpoint (``network_weights`` + ``nnssl_adaptation_plan``,
                    written by ``AbstractBaseTrainer.save_checkpoint``). The plan's ``key_to_stem`` /
                    ``key_to_encoder`` / ``key_to_lpe`` / ``keys_to_in_proj`` are moved to where the planned
                    architecture (``architecture_plans.arch_class_name``) keeps them in dynamic-network-architectures
                    (ResEnc: ``encoder.stem`` / ``encoder.stages``; Primus: ``down_projection`` / ``eva``).
                    Encoder-only by default, as nnssl's own downstream loader: the pretraining decoder is dropped,
                    and the notes say so.
``monai_swin_ssl``  MONAI research-contributions ``SwinUNETR/Pretrain``: ``SSLHead`` state dicts (``swin_vit.*`` or
                    ``swinViT.*`` plus ``rotation_head``, ``contrastive_head``, the ``conv`` reconstruction decoder),
                    under ``state_dict`` and with DDP's ``module.``, or the released ``model_swinvit.pt`` whose
                    ``module.`` *is* the Swin ViT. The Swin ViT goes to ``<prefix>swinViT.*``; the SSL heads have no
                    counterpart in a segmentation network and are dropped (listed in the notes).
``monai_swin``      a MONAI ``SwinUNETR`` state dict (``swinViT.*``, ``encoder1..10.*``, ``decoder1..5.*``,
                    ``out.*``), e.g. a BTCV / BraTS21 fine-tuning: every key goes to ``<prefix><key>``;
                    ``encoder_only=True`` keeps the Swin ViT alone.
``brainsegfounder`` BrainSegFounder (lab-smile/BrainSegFounder): a MONAI Swin ``SSLHead`` pretrained on 2 channels,
                    T1 and FLAIR (Cox et al. 2024, UK Biobank stage); read as ``monai_swin_ssl`` with modality
                    names ``('T1', 'FLAIR')`` unless told otherwise, and its patch embedding declared as input
                    projection (``keys_to_in_proj``), so that a transfer can keep both pretrained channels by name (the
                    authors' own 2 -> 4 channel loader ends with a fresh patch embedding, REFERENCE.md). Where the
                    transfer cannot, :func:`with_source_notes` puts a WARNING in the report.
``state_dict``      any other flat ``str -> Tensor`` dict (top level or under ``state_dict`` / ``model_state_dict``
                    / ``model``): keys used as they are (``module.`` / ``_orig_mod.`` removed).
==================  ==========================================================================================

``<prefix>`` is where the target network keeps MONAI's ``SwinUNETR``: the attribute of this package's
``SwinUNETRBackbone`` (:data:`SWIN_BACKBONE_PREFIX`), or ``""`` for a bare MONAI ``SwinUNETR`` (``swin_prefix=""``).

Spatial axes: MONAI pipelines order arrays (C, X, Y, Z), nnU-Net (C, Z, Y, X) (REFERENCE.md, "MONAI networks"). A
kernel learnt on one and applied to the other sees every direction swapped, so MONAI weights are permuted into
nnU-Net's order by default (:func:`permute_spatial_axes`); with ``to_axis_order=None`` they are left as they are and
the notes warn. Either way ``notes`` (and the transfer report, via :func:`with_source_notes`) says which was done.
The permutation is the exact one (tested: a permuted Swin ViT computes the permuted features of the permuted input).
Two things it cannot know: orientation flips (a RAS vs LPS reorientation in the pretraining pipeline reverses an axis;
files do not record it), and MONAI's own Swin quirk: where a stage is smaller than the window, MONAI indexes its
relative position table with the first n entries of the full window, which is not axis-symmetric, so such stages
differ slightly after any permutation.
"""
from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch

from nnunetv2_ext.transfer.checkpoint import SourceWeights, _is_state_dict, read_checkpoint, strip_prefixes
from nnunetv2_ext.transfer.checkpoint import load_checkpoint_file as _safe_load  # weights_only + allow-list + refusal message
from nnunetv2_ext.transfer.transfer import TransferReport, canonical_keys

FORMATS = ("nnunet", "nnssl", "monai_swin_ssl", "monai_swin", "brainsegfounder", "state_dict")
AXIS_ORDERS = {"nnunet": "(C, Z, Y, X)", "monai": "(C, X, Y, Z)"}

# where this package's SwinUNETRBackbone keeps MONAI's SwinUNETR (architectures/monai_backbones.py: self.net, so its
# state-dict keys are "net.swinViT..."); swin_prefix_of(network) finds it in any network
SWIN_BACKBONE_PREFIX = "net."
# entries of a checkpoint dict that hold the state dict, in the order they are tried (MONAI research code and
# BrainSegFounder save {"state_dict": ..., "epoch"/"global_step": ..., "optimizer": ...}; some scripts model_state_dict)
STATE_CONTAINERS = ("state_dict", "model_state_dict", "model")
# MONAI Swin layouts. SSLHead's Swin ViT attribute: research-contributions `swin_vit`, BrainSegFounder `swinViT`.
SWIN_SSL_VIT_ATTRS = ("swinViT.", "swin_vit.")
SWIN_SSL_HEADS = ("rotation_pre.", "rotation_head.", "contrastive_pre.", "contrastive_head.", "conv.")
SWINUNETR_VIT = "swinViT."
SWINUNETR_PARTS = ("encoder1.", "encoder2.", "encoder3.", "encoder4.", "encoder10.", "decoder1.", "decoder2.",
                   "decoder3.", "decoder4.", "decoder5.", "out.")
SWIN_PATCH_EMBED = "patch_embed.proj.weight"
# MONAI SwinUNETR's input projections, relative to the SwinUNETR (keys_to_in_proj convention of
# dynamic-network-architectures: module paths without ".weight")
SWINUNETR_IN_PROJ = ("swinViT.patch_embed.proj", "encoder1.layer.conv1.conv", "encoder1.layer.conv3.conv")
# Cox et al. 2024 (BrainSegFounder): 2-channel T1 + FLAIR pretraining
BRAINSEGFOUNDER_MODALITIES = {2: ("T1", "FLAIR"), 1: ("T1",)}

# nnssl adaptation plan -> where dynamic-network-architectures keeps encoder, stem and learnable positional embedding
# (AbstractDynamicNetworkArchitectures.key_to_encoder / key_to_stem / key_to_lpe of the planned architecture)
NNSSL_TARGET_KEYS: Dict[str, Tuple[str, str, Optional[str]]] = {
    "ResEncL": ("encoder.stages", "encoder.stem", None),
    "NoSkipResEncL": ("encoder.stages", "encoder.stem", None),
    "ResidualEncoderUNet": ("encoder.stages", "encoder.stem", None),
    "PlainConvUNet": ("encoder.stages", "encoder.stages.0", None),
    **{name: ("eva", "down_projection", "eva.pos_embed") for name in ("PrimusS", "PrimusB", "PrimusM", "PrimusL")},
}

# MONAI PatchMerging: order in which the 2x2x2 neighbours are concatenated before norm + reduction
# (monai.networks.nets.swin_unetr: PatchMerging = legacy v0.9 order, the default 'merging'; PatchMergingV2 =
# itertools.product order). Offsets are along the network's spatial axes 0, 1, 2.
MERGING_OFFSETS = {
    "merging": [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1)],
    "mergingv2": list(itertools.product(range(2), range(2), range(2))),
}
_MERGING_2D = [(0, 0), (1, 0), (0, 1), (1, 1)]  # PatchMergingV2 2D: x[:, j::2, i::2] for i, j in product
_POS_EMBED = re.compile(r"(^|\.)(pos_embed|position_embeddings|absolute_pos_embed)$")


@dataclass
class ExternalWeights(SourceWeights):
    """:class:`SourceWeights` plus what a reader of a foreign format found out.

    Attributes:
        format: one of :data:`FORMATS`.
        axis_order: spatial axis order of the tensors as returned: ``'nnunet'`` (C, Z, Y, X) or ``'monai'``
            (C, X, Y, Z).
        notes: what the reader assumed or changed (prefixes mapped, heads dropped, axes permuted or not, modality
            names assumed); :func:`with_source_notes` puts them in the transfer report.
        encoder_only: the state holds only encoder tensors on purpose (the file's own contract or the caller's
            ``encoder_only=True``), so every decoder tensor of the target keeps its fresh init.
        keys_to_in_proj: input projections in the returned key space (module paths without ``.weight``).
        permuted_keys: keys whose spatial axes were permuted.
        dropped_keys: source tensors not offered to the transfer (SSL heads, a pretraining decoder).
    """

    format: str = "state_dict"
    axis_order: str = "nnunet"
    notes: List[str] = field(default_factory=list)
    encoder_only: bool = False
    keys_to_in_proj: Tuple[str, ...] = ()
    permuted_keys: List[str] = field(default_factory=list)
    dropped_keys: List[str] = field(default_factory=list)

    def describe(self) -> str:
        return f"{super().describe()} [{self.format}]"


# ----------------------------------------------------------------------------------------------------------------------
# detection


def _as_path(obj: Any) -> Optional[Path]:
    return Path(obj) if isinstance(obj, (str, os.PathLike)) else None


def _checked_path(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"pretrained weights {path} do not exist; expected a checkpoint file (nnU-Net "
                                f"checkpoint_final.pth, an nnssl checkpoint, a MONAI / BrainSegFounder .pt)")
    if path.is_dir():
        hint = path / "checkpoint_final.pth"
        raise ValueError(f"{path} is a folder, expected a checkpoint file"
                         + (f"; did you mean {hint}?" if hint.is_file() else ""))
    return path


def load_object(path: str | os.PathLike) -> Any:
    """The file's content, loaded with ``torch.load(weights_only=True)`` and this package's allow-list.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a folder, an unreadable file, or one that needs non-allow-listed globals (a pickled payload is
            refused, never run).
    """
    return _safe_load(_checked_path(Path(path)))


def _unwrap_state(obj: Any) -> Tuple[Optional[Mapping[str, torch.Tensor]], Optional[str]]:
    """(flat state dict, the entry it was found under or None for top level), or (None, None)."""
    if _is_state_dict(obj):
        return obj, None
    if isinstance(obj, Mapping):
        for key in STATE_CONTAINERS:
            if key in obj and _is_state_dict(obj[key]):
                return obj[key], key
    return None, None


@dataclass
class _SwinLayout:
    kind: str  # "ssl" (SSLHead or bare Swin ViT) | "unetr" (a whole SwinUNETR)
    vit_prefix: str  # where the Swin ViT lives in the (prefix-stripped) state: "swinViT." / "swin_vit." / ""
    in_channels: int


def _swin_layout(state: Mapping[str, torch.Tensor]) -> Optional[_SwinLayout]:
    """MONAI Swin layout of a prefix-stripped state, or None."""
    for prefix in ("",) + SWIN_SSL_VIT_ATTRS:
        key = prefix + SWIN_PATCH_EMBED
        if key in state and state[key].ndim >= 4 and \
                any(k.startswith(prefix + "layers1.") for k in state):
            in_channels = int(state[key].shape[1])
            if prefix == SWINUNETR_VIT and any(k.startswith(SWINUNETR_PARTS) for k in state):
                return _SwinLayout("unetr", prefix, in_channels)
            return _SwinLayout("ssl", prefix, in_channels)
    return None


def _first_tensor_keys(obj: Any, limit: int = 8) -> List[str]:
    found: List[str] = []

    def walk(o: Any, path: str, depth: int) -> None:
        if len(found) >= limit or depth > 3:
            return
        if isinstance(o, torch.Tensor):
            found.append(f"{path} {'x'.join(map(str, o.shape)) or 'scalar'}")
        elif isinstance(o, Mapping):
            for k, v in o.items():
                walk(v, f"{path}.{k}" if path else str(k), depth + 1)
        elif isinstance(o, (list, tuple)):
            for i, v in enumerate(o[:4]):
                walk(v, f"{path}[{i}]", depth + 1)
    walk(obj, "", 0)
    return found


def _detect(obj: Any) -> Tuple[str, str]:
    """(format, why) for a loaded checkpoint object."""
    if isinstance(obj, Mapping) and "network_weights" in obj:
        if "nnssl_adaptation_plan" in obj:
            return "nnssl", "'network_weights' with an 'nnssl_adaptation_plan'"
        return "nnunet", "'network_weights' (nnU-Net save_checkpoint layout)"
    state, container = _unwrap_state(obj)
    where = f"the {container!r} entry" if container else "a flat state dict"
    if state is not None:
        layout = _swin_layout(strip_prefixes(state))
        if layout is not None and layout.kind == "unetr":
            return "monai_swin", f"{where} with MONAI SwinUNETR keys (swinViT.*, encoder1.*, decoder*.*, out.*)"
        if layout is not None:
            what = f"{layout.vit_prefix}* + SSL heads" if layout.vit_prefix else \
                "a bare Swin ViT (patch_embed.*, layers*)"
            if layout.in_channels == 2:
                return "brainsegfounder", (f"{where} with a MONAI Swin SSL layout ({what}) pretrained on 2 input "
                                           f"channels, BrainSegFounder's T1 + FLAIR; force --format monai_swin_ssl "
                                           f"if it is another 2-channel Swin pretraining")
            return "monai_swin_ssl", f"{where} with a MONAI Swin SSL layout ({what})"
        return "state_dict", f"{where} of tensors, no known layout: keys used as they are"
    if isinstance(obj, Mapping):
        top = [str(k) for k in list(obj)[:20]]
        raise ValueError(
            f"unknown checkpoint format: a dict with top-level keys {top}{' ...' if len(obj) > 20 else ''}; first "
            f"tensors found: {_first_tensor_keys(obj) or 'none'}. Known formats: {', '.join(FORMATS)} (an nnU-Net or "
            f"nnssl checkpoint with 'network_weights', or a state dict of str -> Tensor at the top level or under "
            f"{', '.join(repr(c) for c in STATE_CONTAINERS)}). If the weights are under another key, save that entry "
            f"alone: torch.save(checkpoint[<key>], path)")
    raise ValueError(f"unknown checkpoint format: the file holds a {type(obj).__name__} (first tensors found: "
                     f"{_first_tensor_keys(obj) or 'none'}); expected a dict: an nnU-Net / nnssl checkpoint or a state "
                     f"dict of str -> Tensor. Known formats: {', '.join(FORMATS)}")


def detect_format(obj_or_path: Any) -> str:
    """The format of a checkpoint file or of an object already loaded from one.

    Rules, first match wins: ``network_weights`` with ``nnssl_adaptation_plan`` -> ``nnssl``; ``network_weights``
    -> ``nnunet``; a state dict (top level or under ``state_dict`` / ``model_state_dict`` / ``model``; DDP's
    ``module.`` ignored) with MONAI SwinUNETR keys -> ``monai_swin``; with a Swin SSL layout (``swinViT.`` /
    ``swin_vit.`` + heads, or a bare Swin ViT) -> ``brainsegfounder`` if its patch embedding takes 2 channels, else
    ``monai_swin_ssl``; any other state dict -> ``state_dict``.

    Raises:
        ValueError: none of these (the message lists the top-level keys and the first tensors found), or a file
            that cannot be read or is refused (pickled payload).
        FileNotFoundError: no such file.
    """
    path = _as_path(obj_or_path)
    obj = load_object(path) if path is not None else obj_or_path
    return _detect(obj)[0]


# ----------------------------------------------------------------------------------------------------------------------
# helpers on state dicts


def encoder_only(state: Mapping[str, torch.Tensor], prefixes: Sequence[str]) -> Dict[str, torch.Tensor]:
    """The tensors whose key starts with one of ``prefixes`` (module paths; a trailing ``.`` is implied)."""
    heads = tuple(p if p.endswith(".") else p + "." for p in prefixes)
    exact = tuple(p.rstrip(".") for p in prefixes)
    return {k: v for k, v in state.items() if k.startswith(heads) or k in exact}


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
            offsets = MERGING_OFFSETS[merging] if spatial == 3 else _MERGING_2D
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


def _remap(key: str, old: str, new: str) -> Optional[str]:
    """``key`` with module path ``old`` replaced by ``new``, or None if ``key`` is not under ``old``."""
    if key == old or key.startswith(old + "."):
        return new + key[len(old):] if new else key[len(old) + 1:]
    return None


def _join(prefix: str, key: str) -> str:
    return prefix + key if not prefix or prefix.endswith(".") else f"{prefix}.{key}"


def _dropped_note(dropped: Sequence[str], what: str) -> str:
    heads = sorted({k.split(".")[0] for k in dropped})
    return f"{len(dropped)} {what} not offered to the transfer: {', '.join(h + '.*' for h in heads)}"


def _non_alias(state: Mapping[str, torch.Tensor], keys: Sequence[str], kept: Iterable[str]) -> List[str]:
    """``keys`` without aliases of kept tensors (``decoder.encoder.*`` is the encoder)."""
    canon = canonical_keys(state)
    kept_canon = {canon[k] for k in kept if k in canon}
    return [k for k in keys if canon[k] not in kept_canon and canon[k] == k]


# ----------------------------------------------------------------------------------------------------------------------
# readers


def _from_source(sw: SourceWeights, **extra: Any) -> ExternalWeights:
    return ExternalWeights(**{f.name: getattr(sw, f.name) for f in fields(SourceWeights)}, **extra)


def _names(from_file: Optional[Sequence[str]], given: Optional[Sequence[str]], notes: List[str]
           ) -> Optional[List[str]]:
    if from_file is not None:
        if given is not None and [n.lower() for n in given] != [n.lower() for n in from_file]:
            notes.append(f"modality names {list(given)} given, but the file says {list(from_file)}: the file's used")
        return list(from_file)
    return list(given) if given is not None else None


def _read_nnunet(path: Path, modality_names: Optional[Sequence[str]]) -> ExternalWeights:
    sw = read_checkpoint(path)
    notes: List[str] = []
    names = _names(sw.modality_names, modality_names, notes)
    out = _from_source(sw, format="nnunet", axis_order="nnunet", notes=notes)
    out.modality_names = names
    return out


def _plan_str(plan: Mapping[str, Any], key: str, path: Path) -> str:
    value = plan.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{path}: nnssl_adaptation_plan[{key!r}] should name a module path of the pretraining "
                         f"network, found {value!r}; the checkpoint was not written by a current nnssl")
    return value


def _read_nnssl(path: Path, obj: Mapping[str, Any], modality_names: Optional[Sequence[str]],
                only_encoder: Optional[bool]) -> ExternalWeights:
    """nnssl (MIC-DKFZ/nnssl, src/nnssl/training/nnsslTrainer/AbstractTrainer.py: save_checkpoint;
    src/nnssl/adaptation_planning/adaptation_plan.py: AdaptationPlan.serialize)."""
    weights, plan = obj.get("network_weights"), obj.get("nnssl_adaptation_plan")
    if not _is_state_dict(weights):
        raise ValueError(f"{path}: 'network_weights' should be a flat dict of str -> Tensor, found "
                         f"{type(weights).__name__}; the checkpoint was not written by nnssl's save_checkpoint")
    if not isinstance(plan, Mapping):
        raise ValueError(f"{path}: no 'nnssl_adaptation_plan' dict (found {type(plan).__name__}): not an nnssl "
                         f"checkpoint with an adaptation plan; add one with nnssl's add_adaptation_plan, or read the "
                         f"file with --format nnunet / state_dict")
    state = strip_prefixes(weights)
    notes: List[str] = []
    arch_plans = plan.get("architecture_plans") if isinstance(plan.get("architecture_plans"), Mapping) else {}
    arch = arch_plans.get("arch_class_name") if isinstance(arch_plans.get("arch_class_name"), str) else None
    pt_encoder, pt_stem = _plan_str(plan, "key_to_encoder", path), _plan_str(plan, "key_to_stem", path)
    pt_lpe = plan.get("key_to_lpe") if isinstance(plan.get("key_to_lpe"), str) else None
    pt_in_proj = [k for k in (plan.get("keys_to_in_proj") or ()) if isinstance(k, str)]
    if arch in NNSSL_TARGET_KEYS:
        t_encoder, t_stem, t_lpe = NNSSL_TARGET_KEYS[arch]
        t_lpe = t_lpe if pt_lpe else None
    else:
        t_encoder, t_stem, t_lpe = pt_encoder, pt_stem, pt_lpe
        notes.append(f"nnssl architecture {arch!r} unknown here (known: {', '.join(NNSSL_TARGET_KEYS)}): encoder, "
                     f"stem and positional embedding keys kept as the adaptation plan names them")
    # most specific module path first (PlainConvUNet's stem encoder.stages.0 lies inside encoder.stages)
    rules = sorted([(pt_stem, t_stem), (pt_encoder, t_encoder)] + ([(pt_lpe, t_lpe)] if pt_lpe else []),
                   key=lambda r: -len(r[0]))

    def to_target(key: str) -> Optional[str]:
        for old, new in rules:
            mapped = _remap(key, old, new)
            if mapped is not None:
                return mapped
        return None

    mapped_state: Dict[str, torch.Tensor] = {}
    rest: Dict[str, torch.Tensor] = {}
    for k, v in state.items():
        t = to_target(k)
        if t is not None:
            mapped_state[t] = v
        else:
            rest[k] = v
    if not mapped_state:
        raise ValueError(f"{path}: the nnssl adaptation plan puts the stem at {pt_stem!r} and the encoder at "
                         f"{pt_encoder!r}, but no tensor of network_weights lies there (first keys: "
                         f"{list(state)[:8]}); the plan does not describe these weights")
    moved = [f"{old} -> {new}" for old, new in rules if old != new]
    if moved:
        notes.append(f"nnssl adaptation plan ({arch}): {'; '.join(moved)}")
    only_encoder = True if only_encoder is None else only_encoder
    dropped: List[str] = []
    if only_encoder:
        dropped = _non_alias(state, list(rest), {k for k in state if to_target(k) is not None})
        notes.append("encoder-only load (nnssl's adaptation contract: stem and encoder are the transferable part; "
                     "pass encoder_only=False to offer the pretraining decoder too)"
                     + (f": {_dropped_note(dropped, 'pretraining tensors')}" if dropped else ""))
    else:
        clash = [k for k in rest if k in mapped_state]
        if clash:
            raise ValueError(f"{path}: keys {clash[:4]} exist both outside the plan's encoder and after moving it to "
                             f"{t_encoder!r}; read it encoder-only")
        mapped_state.update(rest)
        notes.append(f"encoder_only=False: {len(rest)} tensors outside stem/encoder (the pretraining decoder) are "
                     f"offered to the transfer under their own keys")
    in_proj = tuple(t for t in (to_target(k + ".weight") for k in pt_in_proj) if t is not None)
    in_proj = tuple(t[: -len(".weight")] for t in in_proj)
    n_in = plan.get("pretrain_num_input_channels")
    proj = next((k + ".weight" for k in in_proj if k + ".weight" in mapped_state), None)
    if proj is not None and isinstance(n_in, int) and int(mapped_state[proj].shape[1]) != n_in:
        notes.append(f"adaptation plan says {n_in} input channels, {proj} has {mapped_state[proj].shape[1]}")
    names = _names(None, modality_names, notes)
    if names is None and n_in == 1:
        notes.append("nnssl pretrains one channel on images of any MRI sequence, so its input kernel is not tied to "
                     "a modality: with new_modality_init='mean' every target channel starts from it (nnssl's own "
                     "loader repeats it divided by the channel count); by default only target channel 0 gets it")
    patch = None
    pretrain_plan = plan.get("pretrain_plan")
    if isinstance(pretrain_plan, Mapping) and isinstance(pretrain_plan.get("configurations"), Mapping):
        config = next(iter(pretrain_plan["configurations"].values()), None)
        if isinstance(config, Mapping) and config.get("patch_size") is not None:
            patch = [int(s) for s in config["patch_size"]]
    recommended = plan.get("recommended_downstream_patchsize")
    if patch is not None or recommended is not None:
        notes.append(f"pretrained on patches of {patch or 'unknown size'}; nnssl recommends downstream patch size "
                     f"{list(recommended) if recommended is not None else 'unknown'}")
    if t_lpe and patch is not None:
        notes.append(f"learnable positional embedding {t_lpe} was trained for patch size {patch}: a target with "
                     f"another patch size gets it only if the shapes agree (nnssl's loader resizes it)")
    trainer = obj.get("trainer_name")
    return ExternalWeights(state=mapped_state, modality_names=names,
                           trainer_name=trainer if isinstance(trainer, str) else None, network_class=arch,
                           path=str(path), format="nnssl", axis_order="nnunet", notes=notes,
                           encoder_only=bool(only_encoder), keys_to_in_proj=in_proj, dropped_keys=dropped)


def _read_swin(path: Path, state: Mapping[str, torch.Tensor], fmt: str, container: Optional[str],
               modality_names: Optional[Sequence[str]], only_encoder: Optional[bool], prefix: str) -> ExternalWeights:
    stripped = strip_prefixes(state)
    layout = _swin_layout(stripped)
    if layout is None:
        raise ValueError(f"{path}: format {fmt!r} needs a MONAI Swin layout (a '{SWIN_PATCH_EMBED}' and 'layers1.*' "
                         f"at the top level or under {', '.join(SWIN_SSL_VIT_ATTRS)}); first keys: "
                         f"{list(stripped)[:8]}")
    if fmt == "monai_swin" and layout.kind != "unetr":
        raise ValueError(f"{path}: format 'monai_swin' needs a whole MONAI SwinUNETR state (swinViT.* and "
                         f"encoder1.*, decoder*.*, out.*); this is a Swin SSL / encoder-only layout: use "
                         f"--format monai_swin_ssl")
    notes: List[str] = []
    if container:
        notes.append(f"tensors read from the checkpoint's {container!r} entry")
    if any(k.startswith("module.") for k in state):
        notes.append("DDP prefix 'module.' removed" + (" (here it holds the Swin ViT itself, as in MONAI's released "
                                                        "model_swinvit.pt)" if layout.vit_prefix == "" else ""))
    vit_target = _join(prefix, SWINUNETR_VIT)
    mapped: Dict[str, torch.Tensor] = {}
    dropped: List[str] = []
    if layout.kind == "unetr":
        only_encoder = bool(only_encoder)
        for k, v in stripped.items():
            if only_encoder and not k.startswith(SWINUNETR_VIT):
                dropped.append(k)
            else:
                mapped[_join(prefix, k)] = v
        if only_encoder:
            notes.append(f"encoder-only load: the Swin ViT ({vit_target}*) alone; "
                         f"{_dropped_note(dropped, 'SwinUNETR tensors')}")
        if prefix:
            notes.append(f"SwinUNETR keys -> {prefix}*")
        in_proj = tuple(_join(prefix, k) for k in SWINUNETR_IN_PROJ if _join(prefix, k) + ".weight" in mapped)
    else:
        for k, v in stripped.items():
            rest = k[len(layout.vit_prefix):] if k.startswith(layout.vit_prefix) else None
            if rest is not None and not (layout.vit_prefix == "" and k.startswith(SWIN_SSL_HEADS)):
                mapped[vit_target + rest] = v
            else:
                dropped.append(k)
        only_encoder = True
        if layout.vit_prefix != vit_target:
            notes.append(f"Swin ViT {layout.vit_prefix + '*' if layout.vit_prefix else '(top level)'} -> {vit_target}*")
        notes.append("encoder-only load (a Swin SSL pretraining holds the Swin ViT alone)"
                     + (f"; {_dropped_note(dropped, 'SSL head tensors')} (rotation, contrastive and reconstruction "
                        f"heads have no counterpart in a segmentation network)" if dropped else ""))
        in_proj = (_join(prefix, SWINUNETR_IN_PROJ[0]),)
    if fmt == "brainsegfounder":
        default = BRAINSEGFOUNDER_MODALITIES.get(layout.in_channels)
        if modality_names is None:
            if default is None:
                raise ValueError(f"{path}: a BrainSegFounder checkpoint with {layout.in_channels} input channels; "
                                 f"the known pretrainings have 2 (T1, FLAIR) or 1 (T1): pass the modality names "
                                 f"(one per input channel)")
            notes.append(f"modality names {list(default)} assumed (BrainSegFounder pretrains on "
                         f"{' + '.join(default)}, in this channel order; Cox et al. 2024): pass modality_names if "
                         f"this file differs. The names let the transfer put each pretrained channel where the target "
                         f"has the same modality (BrainSegFounder's own 2 -> 4 loader ends with a fresh patch "
                         f"embedding)")
            modality_names = default
    names = list(modality_names) if modality_names is not None else None
    if names is not None and len(names) != layout.in_channels:
        raise ValueError(f"{path}: {len(names)} modality names {names} for a patch embedding with "
                         f"{layout.in_channels} input channels: give one name per input channel")
    network = "monai.networks.nets.SwinUNETR" if layout.kind == "unetr" else \
        "monai.networks.nets.swin_unetr.SwinTransformer (Swin ViT of an SSL pretraining)"
    return ExternalWeights(state=mapped, modality_names=names, network_class=network,
                           path=str(path), format=fmt, axis_order="monai", notes=notes,
                           encoder_only=only_encoder, keys_to_in_proj=in_proj, dropped_keys=dropped)


def _apply_axis_order(weights: ExternalWeights, to_axis_order: Optional[str], merging: str) -> ExternalWeights:
    src = weights.axis_order
    if to_axis_order is None or to_axis_order == src:
        if to_axis_order is None and src != "nnunet":
            weights.notes.append(f"spatial axes NOT permuted: the kernels stay in {src} order {AXIS_ORDERS[src]}; "
                                 f"in nnU-Net, whose arrays are {AXIS_ORDERS['nnunet']}, every pretrained filter "
                                 f"then sees its directions swapped (pass to_axis_order='nnunet' to permute)")
        return weights
    state, permuted = permute_spatial_axes(weights.state, src, to_axis_order, merging=merging)
    left = unpermuted_spatial_keys(state, permuted)
    weights.notes.append(f"spatial axes permuted from {src} {AXIS_ORDERS[src]} to {to_axis_order} "
                         f"{AXIS_ORDERS[to_axis_order]} in {len(permuted)} tensors (convolution kernels, Swin relative "
                         f"position bias tables, patch merging with MONAI downsample={merging!r})"
                         + (f"; NOT permuted (spatial layout unknown): {left}" if left else ""))
    return replace(weights, state=state, axis_order=to_axis_order, permuted_keys=permuted)


def read_weights(path: str | os.PathLike, format: Optional[str] = None,
                 modality_names: Optional[Sequence[str]] = None, *, encoder_only: Optional[bool] = None,
                 to_axis_order: Optional[str] = "nnunet", swin_prefix: Optional[str] = None,
                 merging: str = "merging") -> ExternalWeights:
    """Read pretrained weights of any known format (see the module docstring), never executing code.

    Args:
        path: the checkpoint file.
        format: one of :data:`FORMATS`; None detects it (:func:`detect_format`).
        modality_names: a name per input channel of the pretrained network, used where the file does not say
            (nnU-Net checkpoints carry theirs; BrainSegFounder defaults to ``('T1', 'FLAIR')``).
        encoder_only: offer only the encoder to the transfer. None: the format's own contract (nnssl and Swin SSL
            checkpoints: yes; whole networks: no). ``True`` on a MONAI SwinUNETR keeps its Swin ViT alone.
        to_axis_order: spatial axis order of the network the weights go into (``'nnunet'`` inside nnU-Net); MONAI
            weights are permuted into it. None leaves them as they are (and the notes warn).
        swin_prefix: where the target keeps MONAI's SwinUNETR; default :data:`SWIN_BACKBONE_PREFIX` (this package's
            ``SwinUNETRBackbone``), ``""`` for a bare MONAI ``SwinUNETR``.
        merging: the MONAI ``SwinUNETR(downsample=...)`` of the pretraining (``'merging'``, MONAI's default, or
            ``'mergingv2'``), needed to permute patch-merging weights.

    Returns:
        :class:`ExternalWeights`: the state in the target's key space, modality names, notes, axis order.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unknown format (top-level and first tensor keys listed), a format forced on a file of another
            layout, a pickled payload (refused, never run), an unreadable file.
    """
    path = _checked_path(Path(path))
    if format is not None and format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; known: {', '.join(FORMATS)}")
    obj = None if format == "nnunet" else _safe_load(path)  # read_checkpoint loads nnU-Net files itself
    detected, why = (format, "forced") if format is not None else _detect(obj)
    if detected == "nnunet":
        weights = _read_nnunet(path, modality_names)
    elif detected == "nnssl":
        weights = _read_nnssl(path, obj, modality_names, encoder_only)
    else:
        state, container = _unwrap_state(obj)
        if state is None and isinstance(obj, Mapping) and _is_state_dict(obj.get("network_weights")):
            state, container = obj["network_weights"], "network_weights"
        if state is None:
            raise ValueError(f"{path}: format {detected!r} needs a state dict of str -> Tensor (top level or under "
                             f"{', '.join(repr(c) for c in STATE_CONTAINERS)}); found "
                             f"{[str(k) for k in list(obj)[:20]] if isinstance(obj, Mapping) else type(obj).__name__}")
        if detected in ("monai_swin_ssl", "monai_swin", "brainsegfounder"):
            prefix = SWIN_BACKBONE_PREFIX if swin_prefix is None else swin_prefix
            weights = _read_swin(path, state, detected, container, modality_names, encoder_only, prefix)
        else:
            notes = [f"tensors read from the checkpoint's {container!r} entry"] if container else []
            notes.append(f"spatial axis order of a plain state dict unknown: assumed nnU-Net's "
                         f"{AXIS_ORDERS['nnunet']}, not permuted")
            if encoder_only:
                notes.append("encoder_only=True has no meaning for a plain state dict (no known encoder): ignored")
            weights = ExternalWeights(state=strip_prefixes(state), modality_names=_names(None, modality_names, notes),
                                      path=str(path), format="state_dict", notes=notes)
    weights.notes.insert(0, f"format {weights.format} ({'forced' if format is not None else 'detected: ' + why})")
    return _apply_axis_order(weights, to_axis_order, merging)


def with_source_notes(report: TransferReport, source: SourceWeights) -> TransferReport:
    """A copy of ``report`` that also says what the reader did: its notes first, per entry whether the tensor's
    spatial axes were permuted, and a warning for every declared input projection the transfer could not use (its
    pretrained channels are lost). ``report`` itself is not modified."""
    notes = list(getattr(source, "notes", []) or [])
    permuted = set(getattr(source, "permuted_keys", []) or [])
    in_proj = {k + ".weight" for k in getattr(source, "keys_to_in_proj", ()) or ()}
    order = getattr(source, "axis_order", "nnunet")
    entries, warnings = [], []
    for e in report.entries:
        if e.source_key in permuted and e.action in ("loaded", "adapted"):
            e = replace(e, note="; ".join(x for x in (e.note, f"spatial axes permuted to {order}") if x))
        if e.source_key in in_proj and e.target_key is not None and e.action == "new":
            names = f" [{', '.join(source.modality_names)}]" if source.modality_names else ""
            warnings.append(f"WARNING: the pretrained input projection {e.source_key} "
                            f"{'x'.join(map(str, e.source_shape or ()))}{names} was NOT transferred into "
                            f"{e.target_key} {'x'.join(map(str, e.target_shape or ()))}: its pretrained channels "
                            f"are lost ({e.note})")
        entries.append(e)
    return replace(report, entries=entries, notes=notes + warnings + list(report.notes))


def input_projection(weights: SourceWeights) -> Optional[str]:
    """Key of the tensor that takes the network's input: a declared input projection, else the first kernel."""
    for k in getattr(weights, "keys_to_in_proj", ()) or ():
        if k + ".weight" in weights.state:
            return k + ".weight"
    return next((k for k, v in weights.state.items() if k.endswith(".weight") and v.ndim >= 3), None)


def swin_prefix_of(target: torch.nn.Module) -> Optional[str]:
    """Where ``target`` keeps a MONAI SwinUNETR / Swin ViT (``"net."`` for ``SwinUNETRBackbone``, ``""`` for a bare
    ``SwinUNETR``), for ``read_weights(swin_prefix=...)``; None if it has none."""
    tail = SWINUNETR_VIT + SWIN_PATCH_EMBED
    return next((k[: -len(tail)] for k in target.state_dict() if k.endswith(tail)), None)
