"""The one table of checkpoint formats, and the readers of the formats from outside nnU-Net.

:data:`CHECKPOINT_FORMATS` is an ordered table of :class:`CheckpointFormat` rows ``(name, detect, read)``; everything
that reads pretrained weights goes through it: :func:`read_weights` (the transfer, nnU-Net's ``-pretrained_weights``
through the trainers' ``load_pretrained_weights``, ``nnunetv2_ext weights inspect``), :func:`detect_format` and
:func:`~nnunetv2_ext.transfer.checkpoint.read_checkpoint` (its ``nnunet`` and ``state_dict`` rows). Detection asks
the rows in order and the first whose detector answers wins; ``format=`` forces a row. Every file is loaded once,
by :func:`~nnunetv2_ext.transfer.checkpoint.load_object` (``weights_only``, allow-list, refusal of pickled payloads);
no reader unpickles anything itself. The readers of nnU-Net's own formats live in
:mod:`nnunetv2_ext.transfer.checkpoint`, those of the other ecosystems here.

==================  ==========================================================================================
format              what it is and how its keys are mapped
==================  ==========================================================================================
``nnunet``          nnU-Net's / this package's ``checkpoint_*.pth`` (``network_weights``, ``init_args``,
                    ``trainer_name``): :func:`~nnunetv2_ext.transfer.checkpoint.read_nnunet`, keys unchanged.
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
                    transfer cannot, :func:`~nnunetv2_ext.transfer.report.with_source_notes` puts a WARNING in the
                    report.
``state_dict``      any other flat ``str -> Tensor`` dict (top level or under ``state_dict`` / ``model_state_dict``
                    / ``model``): :func:`~nnunetv2_ext.transfer.checkpoint.read_state_dict`, keys used as they are
                    (``module.`` / ``_orig_mod.`` removed). The last row: it takes any state dict no other row claims.
==================  ==========================================================================================

``<prefix>`` is where the target network keeps MONAI's ``SwinUNETR``: the attribute of this package's
``SwinUNETRBackbone`` (:data:`SWIN_BACKBONE_PREFIX`), or ``""`` for a bare MONAI ``SwinUNETR`` (``swin_prefix=""``).
MONAI weights come in MONAI's spatial axis order and are permuted into nnU-Net's (:mod:`nnunetv2_ext.transfer.axes`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch

from nnunetv2_ext.transfer.axes import apply_axis_order
from nnunetv2_ext.transfer.checkpoint import (
    NNSSL_PLAN_KEY,
    STATE_CONTAINERS,
    ExternalWeights,
    ReadOptions,
    SourceWeights,
    detect_nnunet,
    detect_state_dict,
    find_state,
    is_state_dict,
    load_object,
    read_nnunet,
    read_state_dict,
    resolve_modality_names,
    strip_prefixes,
    unwrap_state,
)
from nnunetv2_ext.transfer.transfer import canonical_keys

# where this package's SwinUNETRBackbone keeps MONAI's SwinUNETR (architectures/monai_backbones.py: self.net, so its
# state-dict keys are "net.swinViT..."); swin_prefix_of(network) finds it in any network
SWIN_BACKBONE_PREFIX = "net."
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


def _remap(key: str, old: str, new: Optional[str]) -> Optional[str]:
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


def _plan_str(plan: Mapping[str, Any], key: str, path: Path) -> str:
    value = plan.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{path}: nnssl_adaptation_plan[{key!r}] should name a module path of the pretraining "
                         f"network, found {value!r}; the checkpoint was not written by a current nnssl")
    return value


def _read_nnssl(path: Path, obj: Any, options: ReadOptions) -> ExternalWeights:
    """Reader of format ``nnssl`` (MIC-DKFZ/nnssl, src/nnssl/training/nnsslTrainer/AbstractTrainer.py:
    save_checkpoint; src/nnssl/adaptation_planning/adaptation_plan.py: AdaptationPlan.serialize)."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: format 'nnssl' needs a dict with 'network_weights' and '{NNSSL_PLAN_KEY}', found "
                         f"a {type(obj).__name__}")
    modality_names, only_encoder = options.modality_names, options.encoder_only
    weights, plan = obj.get("network_weights"), obj.get(NNSSL_PLAN_KEY)
    if not is_state_dict(weights):
        raise ValueError(f"{path}: 'network_weights' should be a flat dict of str -> Tensor, found "
                         f"{type(weights).__name__}; the checkpoint was not written by nnssl's save_checkpoint")
    if not isinstance(plan, Mapping):
        raise ValueError(f"{path}: no 'nnssl_adaptation_plan' dict (found {type(plan).__name__}): not an nnssl "
                         f"checkpoint with an adaptation plan; add one with nnssl's add_adaptation_plan, or read the "
                         f"file with --format nnunet / state_dict")
    state = strip_prefixes(weights)
    notes: List[str] = []
    raw_arch_plans = plan.get("architecture_plans")
    arch_plans: Mapping[str, Any] = raw_arch_plans if isinstance(raw_arch_plans, Mapping) else {}
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
                     "read_weights(encoder_only=False) offers the pretraining decoder too)"
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
    names = resolve_modality_names(None, modality_names, notes)
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


def _read_swin(path: Path, obj: Any, options: ReadOptions, fmt: str) -> ExternalWeights:
    """Reader of the MONAI Swin formats ``monai_swin_ssl``, ``monai_swin`` and ``brainsegfounder`` (``fmt``)."""
    state, container = find_state(path, obj, fmt)
    modality_names, only_encoder = options.modality_names, options.encoder_only
    prefix = SWIN_BACKBONE_PREFIX if options.swin_prefix is None else options.swin_prefix
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


# ----------------------------------------------------------------------------------------------------------------------
# detectors of the formats from outside nnU-Net: the reason a loaded object is of the format, or None


def _detect_nnssl(obj: Any) -> Optional[str]:
    if isinstance(obj, Mapping) and "network_weights" in obj and NNSSL_PLAN_KEY in obj:
        return f"'network_weights' with an '{NNSSL_PLAN_KEY}'"
    return None


def _swin_of(obj: Any) -> Tuple[Optional[_SwinLayout], str]:
    """The MONAI Swin layout of the state dict in ``obj`` (None if none) and where that state dict was found."""
    state, container = unwrap_state(obj)
    where = f"the {container!r} entry" if container else "a flat state dict"
    return (_swin_layout(strip_prefixes(state)) if state is not None else None), where


def _detect_monai_swin(obj: Any) -> Optional[str]:
    layout, where = _swin_of(obj)
    if layout is not None and layout.kind == "unetr":
        return f"{where} with MONAI SwinUNETR keys (swinViT.*, encoder1.*, decoder*.*, out.*)"
    return None


def _ssl_what(layout: _SwinLayout) -> str:
    return f"{layout.vit_prefix}* + SSL heads" if layout.vit_prefix else "a bare Swin ViT (patch_embed.*, layers*)"


def _detect_brainsegfounder(obj: Any) -> Optional[str]:
    layout, where = _swin_of(obj)
    if layout is not None and layout.kind == "ssl" and layout.in_channels == 2:
        return (f"{where} with a MONAI Swin SSL layout ({_ssl_what(layout)}) pretrained on 2 input channels, "
                f"BrainSegFounder's T1 + FLAIR; force --format monai_swin_ssl if it is another 2-channel Swin "
                f"pretraining")
    return None


def _detect_monai_swin_ssl(obj: Any) -> Optional[str]:
    layout, where = _swin_of(obj)
    if layout is not None and layout.kind == "ssl" and layout.in_channels != 2:
        return f"{where} with a MONAI Swin SSL layout ({_ssl_what(layout)})"
    return None


# ----------------------------------------------------------------------------------------------------------------------
# the table


@dataclass(frozen=True)
class CheckpointFormat:
    """One row of :data:`CHECKPOINT_FORMATS`.

    Attributes:
        name: what ``format=`` / ``--format`` / ``pretrained_format`` call it.
        detect: ``detect(obj)`` on the loaded file: why ``obj`` is of this format, in words (the notes say it), or
            None. Detectors see the object, not the file, and must not raise.
        read: ``read(path, obj, options)`` -> :class:`~nnunetv2_ext.transfer.checkpoint.ExternalWeights` in the
            target's key space, in the format's own axis order (:func:`read_weights` permutes afterwards). Raises
            ``ValueError`` for an object of another layout (a forced format).
    """

    name: str
    detect: Callable[[Any], Optional[str]]
    read: Callable[[Path, Any, ReadOptions], ExternalWeights]


def _swin_reader(fmt: str) -> Callable[[Path, Any, ReadOptions], ExternalWeights]:
    def read(path: Path, obj: Any, options: ReadOptions) -> ExternalWeights:
        return _read_swin(path, obj, options, fmt)
    read.__doc__ = f"Reader of format ``{fmt}``: :func:`_read_swin`."
    return read


# Detection asks the rows in this order; the first answer wins. Every row but the last claims only its own layout
# (nnunet and nnssl differ by the adaptation plan, the Swin rows by layout and channel count); state_dict, last, takes
# any state dict left. A new format: a row here, its detector and reader, a test (CONTRIBUTING.md).
CHECKPOINT_FORMATS: Tuple[CheckpointFormat, ...] = (
    CheckpointFormat("nnunet", detect_nnunet, read_nnunet),
    CheckpointFormat("nnssl", _detect_nnssl, _read_nnssl),
    CheckpointFormat("monai_swin_ssl", _detect_monai_swin_ssl, _swin_reader("monai_swin_ssl")),
    CheckpointFormat("monai_swin", _detect_monai_swin, _swin_reader("monai_swin")),
    CheckpointFormat("brainsegfounder", _detect_brainsegfounder, _swin_reader("brainsegfounder")),
    CheckpointFormat("state_dict", detect_state_dict, read_state_dict),
)
FORMATS = tuple(row.name for row in CHECKPOINT_FORMATS)


def checkpoint_format(name: str) -> CheckpointFormat:
    """The row of :data:`CHECKPOINT_FORMATS` called ``name``.

    Raises:
        ValueError: no such format (the known ones are listed).
    """
    for row in CHECKPOINT_FORMATS:
        if row.name == name:
            return row
    raise ValueError(f"unknown format {name!r}; known: {', '.join(FORMATS)}")


def detect(obj: Any) -> Tuple[CheckpointFormat, str]:
    """The first row of :data:`CHECKPOINT_FORMATS` whose detector claims the loaded object, and its reason.

    Raises:
        ValueError: no row does (the message lists the top-level keys and the first tensors found).
    """
    for row in CHECKPOINT_FORMATS:
        why = row.detect(obj)
        if why is not None:
            return row, why
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
    """The format of a checkpoint file or of an object already loaded from one: the name of :func:`detect`'s row.

    Rules, in table order (each row's detector): ``network_weights`` without ``nnssl_adaptation_plan`` -> ``nnunet``;
    with it -> ``nnssl``; a state dict (top level or under ``state_dict`` / ``model_state_dict`` / ``model``; DDP's
    ``module.`` ignored) with a Swin SSL layout (``swinViT.`` / ``swin_vit.`` + heads, or a bare Swin ViT) ->
    ``monai_swin_ssl``, or ``brainsegfounder`` if its patch embedding takes 2 channels; with MONAI SwinUNETR keys ->
    ``monai_swin``; any other state dict -> ``state_dict``.

    Raises:
        ValueError: none of these (the message lists the top-level keys and the first tensors found), or a file
            that cannot be read or is refused (pickled payload).
        FileNotFoundError: no such file.
    """
    obj = load_object(obj_or_path) if isinstance(obj_or_path, (str, os.PathLike)) else obj_or_path
    return detect(obj)[0].name


def read_weights(path: str | os.PathLike, format: Optional[str] = None,
                 modality_names: Optional[Sequence[str]] = None, *, encoder_only: Optional[bool] = None,
                 to_axis_order: Optional[str] = "nnunet", swin_prefix: Optional[str] = None,
                 merging: str = "merging") -> ExternalWeights:
    """Read pretrained weights of any known format (see the module docstring), never executing code: the file is
    loaded once, its row of :data:`CHECKPOINT_FORMATS` detected (or forced) and its reader called, then the tensors
    are put in ``to_axis_order`` (:func:`~nnunetv2_ext.transfer.axes.apply_axis_order`).

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
        :class:`~nnunetv2_ext.transfer.checkpoint.ExternalWeights`: the state in the target's key space, modality
        names, notes, axis order.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unknown format (top-level and first tensor keys listed), a format forced on a file of another
            layout, a pickled payload (refused, never run), an unreadable file.
    """
    forced = checkpoint_format(format) if format is not None else None
    obj = load_object(path)
    row, why = (forced, "forced") if forced is not None else detect(obj)
    options = ReadOptions(modality_names=modality_names, encoder_only=encoder_only, swin_prefix=swin_prefix)
    weights = row.read(Path(path), obj, options)
    weights.notes.insert(0, f"format {weights.format} ({'forced' if forced is not None else 'detected: ' + why})")
    return apply_axis_order(weights, to_axis_order, merging)


# ----------------------------------------------------------------------------------------------------------------------
# helpers on state dicts and networks


def encoder_only(state: Mapping[str, torch.Tensor], prefixes: Sequence[str]) -> Dict[str, torch.Tensor]:
    """The tensors whose key starts with one of ``prefixes`` (module paths; a trailing ``.`` is implied)."""
    heads = tuple(p if p.endswith(".") else p + "." for p in prefixes)
    exact = tuple(p.rstrip(".") for p in prefixes)
    return {k: v for k, v in state.items() if k.startswith(heads) or k in exact}


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
