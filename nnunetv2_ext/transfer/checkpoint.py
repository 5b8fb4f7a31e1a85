"""Read pretrained weights safely, and the readers of the two formats nnU-Net itself writes.

Every file is loaded with ``torch.load(..., weights_only=True)``: unpickling then only builds tensors, containers
and an explicit allow-list of harmless types, so a checkpoint from an untrusted source cannot run code. nnU-Net's
``checkpoint_*.pth`` files hold, besides the tensors, numpy scalars in ``logging`` (mean foreground Dice, losses)
and a ``torch.device`` in ``init_args``; :data:`NNUNET_SAFE_GLOBALS` allow-lists just what those need.

This module holds what every reader shares (:func:`load_object`, :func:`strip_prefixes`, :func:`find_state`, the
result types :class:`SourceWeights` / :class:`ExternalWeights`) and the detector and reader of the formats ``nnunet``
(:func:`detect_nnunet`, :func:`read_nnunet`) and ``state_dict`` (:func:`detect_state_dict`, :func:`read_state_dict`).
Which reader reads a file is chosen by the one table of formats,
:data:`nnunetv2_ext.transfer.formats.CHECKPOINT_FORMATS`; :func:`read_checkpoint` is the same two readers for a
caller that accepts nothing else.
"""
from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, TypeGuard

import numpy as np
import torch

from nnunetv2_ext.dataset_json import channel_names
from nnunetv2_ext.transfer.axes import AXIS_ORDERS

# numpy's scalar reconstructor, taken from the pickle protocol rather than a private module: numpy 2 names it
# ``numpy._core.multiarray.scalar``, numpy 1.x ``numpy.core.multiarray.scalar`` (``numpy._core`` does not exist before
# numpy 1.26.1, where it is a stub).
_np_scalar = np.float64(0).__reduce__()[0]

# What a real nnU-Net checkpoint needs beyond torch's default weights_only allow-list (found by loading one written
# by nnUNetTrainer.save_checkpoint): numpy scalars are pickled as ``numpy._core.multiarray.scalar(dtype, bytes)``
# (``numpy.core.multiarray.scalar`` when written with numpy 1.x; both names are listed, so either file loads under
# either numpy), with the dtype rebuilt as ``numpy.dtype`` and its class (float32 in the logs; float64 where a mean
# over Python floats was logged; ``numpy.dtypes.Float32DType`` from numpy 1.25 on, taken from an instance here so
# numpy 1.24 works too). No callable that runs code. The ``(object, name)`` entries need torch >= 2.6.
NNUNET_SAFE_GLOBALS: List[Any] = [
    (_np_scalar, "numpy._core.multiarray.scalar"),
    (_np_scalar, "numpy.core.multiarray.scalar"),
    np.dtype,
    type(np.dtype(np.float32)),
    type(np.dtype(np.float64)),
]

STRIPPED_PREFIXES = ("module.", "_orig_mod.")
# entries of a checkpoint dict that hold the state dict, in the order they are tried (MONAI research code and
# BrainSegFounder save {"state_dict": ..., "epoch"/"global_step": ..., "optimizer": ...}; some scripts model_state_dict)
STATE_CONTAINERS = ("state_dict", "model_state_dict", "model")
# the entry nnssl adds to nnU-Net's checkpoint layout (MIC-DKFZ/nnssl AbstractBaseTrainer.save_checkpoint)
NNSSL_PLAN_KEY = "nnssl_adaptation_plan"


@dataclass
class SourceWeights:
    """Pretrained tensors plus what the checkpoint says about the network that produced them.

    Attributes:
        state: flat ``key -> tensor`` state dict, ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) stripped.
        modality_names: a name per input channel in channel order (dataset.json ``channel_names``), None if the
            file does not say (plain state dicts).
        trainer_name: nnU-Net trainer class that wrote the checkpoint, if known.
        network_class: ``network_class_name`` from the plans in the checkpoint, if known.
        encoder_groups: input channels per encoder for a multi-encoder network, else None.
        path: file the weights came from (None for weights built in memory).
    """

    state: Dict[str, torch.Tensor] = field(repr=False)
    modality_names: Optional[List[str]] = None
    trainer_name: Optional[str] = None
    network_class: Optional[str] = None
    encoder_groups: Optional[List[List[int]]] = None
    path: Optional[str] = None

    def describe(self) -> str:
        """Short description for reports and error messages: path, trainer and network class where known."""
        parts = [self.path or "in-memory state dict"]
        extra = [x for x in (self.trainer_name, self.network_class) if x]
        if extra:
            parts.append(f"({', '.join(extra)})")
        return " ".join(parts)

@dataclass
class ExternalWeights(SourceWeights):
    """:class:`SourceWeights` plus what the reader of its format found out: what every reader returns.

    Attributes:
        format: one of :data:`~nnunetv2_ext.transfer.formats.FORMATS`.
        axis_order: spatial axis order of the tensors as returned: ``'nnunet'`` (C, Z, Y, X) or ``'monai'``
            (C, X, Y, Z) (:mod:`nnunetv2_ext.transfer.axes`).
        notes: what the reader assumed or changed (prefixes mapped, heads dropped, axes permuted or not, modality
            names assumed); :func:`~nnunetv2_ext.transfer.report.with_source_notes` puts them in the transfer report.
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


@dataclass(frozen=True)
class ReadOptions:
    """What the caller of a reader may say about the file (every reader takes the same options).

    Attributes:
        modality_names: a name per input channel of the pretrained network, used where the file does not say.
        encoder_only: offer only the encoder to the transfer; None: the format's own contract.
        swin_prefix: where the target network keeps MONAI's ``SwinUNETR`` (MONAI Swin formats only); None:
            :data:`~nnunetv2_ext.transfer.formats.SWIN_BACKBONE_PREFIX`.
    """

    modality_names: Optional[Sequence[str]] = None
    encoder_only: Optional[bool] = None
    swin_prefix: Optional[str] = None


# ----------------------------------------------------------------------------------------------------------------------
# what every reader shares


def is_state_dict(obj: Any) -> TypeGuard[Mapping[str, torch.Tensor]]:
    """True for a non-empty flat ``str -> Tensor`` mapping."""
    return isinstance(obj, Mapping) and len(obj) > 0 and \
        all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def unwrap_state(obj: Any) -> Tuple[Optional[Mapping[str, torch.Tensor]], Optional[str]]:
    """(flat state dict, the entry of :data:`STATE_CONTAINERS` it was found under or None for top level), or
    (None, None)."""
    if is_state_dict(obj):
        return obj, None
    if isinstance(obj, Mapping):
        for key in STATE_CONTAINERS:
            if key in obj and is_state_dict(obj[key]):
                return obj[key], key
    return None, None


def find_state(path: Path, obj: Any, fmt: str) -> Tuple[Mapping[str, torch.Tensor], Optional[str]]:
    """The state dict a reader of format ``fmt`` reads: :func:`unwrap_state`, else an nnU-Net checkpoint's
    ``network_weights`` (a format forced on an nnU-Net / nnssl file).

    Raises:
        ValueError: no state dict of tensors anywhere it looks (the top-level keys are listed).
    """
    state, container = unwrap_state(obj)
    if state is None and isinstance(obj, Mapping) and is_state_dict(obj.get("network_weights")):
        state, container = obj["network_weights"], "network_weights"
    if state is None:
        raise ValueError(f"{path}: format {fmt!r} needs a state dict of str -> Tensor (top level or under "
                         f"{', '.join(repr(c) for c in STATE_CONTAINERS)}); found "
                         f"{[str(k) for k in list(obj)[:20]] if isinstance(obj, Mapping) else type(obj).__name__}")
    return state, container


def resolve_modality_names(from_file: Optional[Sequence[str]], given: Optional[Sequence[str]], notes: List[str]
                           ) -> Optional[List[str]]:
    """The modality names a reader returns: the file's where it has them (a note if ``given`` differs), else
    ``given``, else None."""
    if from_file is not None:
        if given is not None and [n.lower() for n in given] != [n.lower() for n in from_file]:
            notes.append(f"modality names {list(given)} given, but the file says {list(from_file)}: the file's used")
        return list(from_file)
    return list(given) if given is not None else None


def strip_prefixes(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Remove leading ``module.`` / ``_orig_mod.`` (in any order, repeated) from every key.

    Raises:
        ValueError: two keys become the same after stripping.
    """
    out: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = key
        while new.startswith(STRIPPED_PREFIXES):
            new = new.split(".", 1)[1]
        if new in out:
            raise ValueError(f"keys {key!r} and another key both become {new!r} after removing the DDP/compile "
                             f"prefixes {STRIPPED_PREFIXES}; the state dict mixes wrapped and unwrapped copies of "
                             f"the network: save only one")
        out[new] = value
    return out


# how the files torch.save writes begin: a zip archive (the default since torch 1.6) or a pickle (the legacy format)
TORCH_FILE_MAGIC = (b"PK\x03\x04", b"\x80")


def _raise_if_not_torch_file(path: Path) -> None:
    """After a failed load: a ValueError that says so if ``path`` is not a file torch.save writes at all."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(TORCH_FILE_MAGIC):
        return
    what = "it is empty" if not head else (f"it starts with {head!r}, which is neither a zip archive (torch.save) nor "
                                          f"a pickle (legacy torch.save): a text or other non-PyTorch file")
    raise ValueError(f"{path} is not a readable PyTorch checkpoint: {what}. Expected a .pth / .pt file written by "
                     f"torch.save (an nnU-Net checkpoint_final.pth, or a state dict)") from None


def load_checkpoint_file(path: str | os.PathLike) -> Any:
    """``torch.load`` with weights_only=True and the nnU-Net allow-list, with errors that say what to do."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(NNUNET_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "Weights only load failed" in msg and re.search(r"GLOBAL|global|allowlist|Can only build", msg):
            try:
                found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            except Exception:  # legacy (non-zip) files cannot be inspected without unpickling
                found = sorted(set(re.findall(r"GLOBAL:? (\S+)", msg))) or ["(not named by torch)"]
            raise ValueError(
                f"refused to load {path}: it needs the non-allow-listed Python globals {found}, and "
                f"weights_only loading does not execute code (unpickling them could run arbitrary code). Expected an "
                f"nnU-Net checkpoint or a state dict of tensors. If you trust the file and it is a checkpoint of a "
                f"network, re-save just its tensors (torch.save(state_dict, path)) in a trusted environment.") from None
        _raise_if_not_torch_file(path)
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: "
                         f"{msg.strip().splitlines()[-1] if msg.strip() else 'no detail'}); the file may be truncated "
                         f"or corrupted: copy it again or re-save it with torch.save") from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, UnicodeDecodeError, AttributeError) as e:
        if isinstance(e, (FileNotFoundError, IsADirectoryError, PermissionError)):
            raise
        _raise_if_not_torch_file(path)
        detail = str(e).strip().splitlines()[0] if str(e).strip() else "no detail"
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {detail}); the file may "
                         f"be truncated or corrupted (size {path.stat().st_size} bytes): copy it again or re-save it "
                         f"with torch.save") from None


def checked_path(path: str | os.PathLike) -> Path:
    """``path`` as a :class:`~pathlib.Path` if it is a file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a folder (with the checkpoint inside it, if there is one).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"pretrained weights {path} do not exist; expected a checkpoint file: an nnU-Net "
                                f"checkpoint such as <results>/<dataset>/<trainer>__<plans>__<configuration>/fold_0/"
                                f"checkpoint_final.pth, an nnssl checkpoint, a MONAI / BrainSegFounder .pt or a "
                                f"torch.save'd state dict")
    if path.is_dir():
        hint = path / "checkpoint_final.pth"
        raise ValueError(f"{path} is a folder, expected a checkpoint file"
                         + (f"; did you mean {hint}?" if hint.is_file() else ""))
    return path


def load_object(path: str | os.PathLike) -> Any:
    """The file's content: :func:`load_checkpoint_file` of a :func:`checked_path`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a folder, an unreadable file, or one that needs non-allow-listed globals (a pickled payload is
            refused, never run).
    """
    return load_checkpoint_file(checked_path(path))


# ----------------------------------------------------------------------------------------------------------------------
# the formats nnU-Net writes: its checkpoints, plain state dicts


def _architecture(init_args: Mapping[str, Any]) -> Optional[Mapping[str, Any]]:
    """The plans' ``architecture`` entry of the checkpoint's configuration, following ``inherits_from``."""
    plans, configuration = init_args.get("plans"), init_args.get("configuration")
    if not isinstance(plans, Mapping) or not isinstance(configuration, str):
        return None
    configurations = plans.get("configurations")
    if not isinstance(configurations, Mapping):
        return None
    seen = set()
    while isinstance(configuration, str) and configuration in configurations and configuration not in seen:
        seen.add(configuration)
        config = configurations[configuration]
        if not isinstance(config, Mapping):
            return None
        if isinstance(config.get("architecture"), Mapping):
            return config["architecture"]
        configuration = config.get("inherits_from")
    return None


def detect_nnunet(obj: Any) -> Optional[str]:
    """Why ``obj`` is an nnU-Net checkpoint (``network_weights`` without nnssl's adaptation plan), or None."""
    if isinstance(obj, Mapping) and "network_weights" in obj and NNSSL_PLAN_KEY not in obj:
        return "'network_weights' (nnU-Net save_checkpoint layout)"
    return None


def read_nnunet(path: Path, obj: Any, options: ReadOptions = ReadOptions()) -> ExternalWeights:
    """Reader of format ``nnunet``: nnU-Net's / this package's ``checkpoint_*.pth`` (``network_weights``,
    ``init_args``, ``trainer_name``), keys unchanged but for ``module.`` / ``_orig_mod.``. The modality names,
    network class and encoder groups come from the plans and dataset.json recorded in ``init_args``.

    Raises:
        ValueError: no ``network_weights``, or not a flat state dict.
    """
    if not isinstance(obj, Mapping) or "network_weights" not in obj:
        raise ValueError(f"{path}: format 'nnunet' needs a dict with 'network_weights' (nnU-Net's save_checkpoint), "
                         f"found {[str(k) for k in list(obj)[:20]] if isinstance(obj, Mapping) else type(obj).__name__}"
                         f"; let the format be detected, or force --format state_dict")
    state = obj["network_weights"]
    if not is_state_dict(state):
        raise ValueError(f"{path}: 'network_weights' should be a flat dict of str -> Tensor, found "
                         f"{type(state).__name__} with {len(state) if isinstance(state, Mapping) else '?'} "
                         f"entries; the checkpoint was not written by nnU-Net's save_checkpoint")
    raw_init_args = obj.get("init_args")
    init_args: Mapping[str, Any] = raw_init_args if isinstance(raw_init_args, Mapping) else {}
    arch = _architecture(init_args) or {}
    raw_arch_kwargs = arch.get("arch_kwargs")
    arch_kwargs: Mapping[str, Any] = raw_arch_kwargs if isinstance(raw_arch_kwargs, Mapping) else {}
    network_class = arch.get("network_class_name") if isinstance(arch.get("network_class_name"), str) else None
    names = channel_names(init_args.get("dataset_json"), required=False)
    if names is None and isinstance(arch_kwargs.get("modality_names"), (list, tuple)):
        names = [str(n) for n in arch_kwargs["modality_names"]]
    encoder_groups = None
    is_multi = "encoder_groups" in arch_kwargs or (network_class or "").endswith("MultiEncoderUNet")
    if is_multi:
        groups = arch_kwargs.get("encoder_groups")
        if groups is not None:
            encoder_groups = [[int(c) for c in g] for g in groups]
        elif names is not None:  # MultiEncoderUNet's default: one encoder per input channel
            encoder_groups = [[c] for c in range(len(names))]
    trainer = obj.get("trainer_name")
    notes: List[str] = []
    names = resolve_modality_names(names, options.modality_names, notes)
    return ExternalWeights(state=strip_prefixes(state), modality_names=names,
                           trainer_name=trainer if isinstance(trainer, str) else None,
                           network_class=network_class, encoder_groups=encoder_groups, path=str(path),
                           format="nnunet", axis_order="nnunet", notes=notes)


def detect_state_dict(obj: Any) -> Optional[str]:
    """Why ``obj`` is a plain state dict (top level or under a :data:`STATE_CONTAINERS` entry), or None. Every
    state dict is one, so this row of the format table comes last: it catches what no other format claims."""
    state, container = unwrap_state(obj)
    if state is None:
        return None
    where = f"the {container!r} entry" if container else "a flat state dict"
    return f"{where} of tensors, no known layout: keys used as they are"


def read_state_dict(path: Path, obj: Any, options: ReadOptions = ReadOptions()) -> ExternalWeights:
    """Reader of format ``state_dict``: a flat ``str -> Tensor`` dict (top level, under a :data:`STATE_CONTAINERS`
    entry, or an nnU-Net checkpoint's ``network_weights``), keys used as they are (``module.`` / ``_orig_mod.``
    removed), spatial axes assumed nnU-Net's.

    Raises:
        ValueError: no state dict (:func:`find_state`).
    """
    state, container = find_state(path, obj, "state_dict")
    notes = [f"tensors read from the checkpoint's {container!r} entry"] if container else []
    notes.append(f"spatial axis order of a plain state dict unknown: assumed nnU-Net's {AXIS_ORDERS['nnunet']}, "
                 f"not permuted")
    if options.encoder_only:
        notes.append("encoder_only=True has no meaning for a plain state dict (no known encoder): ignored")
    return ExternalWeights(state=strip_prefixes(state), modality_names=resolve_modality_names(
        None, options.modality_names, notes), path=str(path), format="state_dict", notes=notes)


def read_checkpoint(path: str | os.PathLike) -> ExternalWeights:
    """Read pretrained weights from an nnU-Net checkpoint or a plain state-dict file, never executing code: the
    ``nnunet`` and ``state_dict`` readers of the format table, for callers that accept nothing else (any other
    format: :func:`nnunetv2_ext.transfer.formats.read_weights`).

    Args:
        path: ``checkpoint_final.pth`` / ``checkpoint_best.pth`` written by an nnU-Net trainer (a dict with
            ``network_weights`` and ``init_args``; read by :func:`read_nnunet`), or a file holding a flat
            ``str -> Tensor`` state dict at the top level (:func:`read_state_dict`).

    Returns:
        The tensors (prefixes ``module.``/``_orig_mod.`` removed) and, for nnU-Net checkpoints, the modality names,
        trainer, network class and encoder groups recorded in it.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a readable PyTorch checkpoint (truncated, corrupt), needs globals outside the
            allow-list (refused: weights_only loading executes no code), or holds neither ``network_weights`` nor a
            flat state dict.
    """
    path = checked_path(path)
    obj = load_checkpoint_file(path)
    if isinstance(obj, Mapping) and "network_weights" in obj:
        return read_nnunet(path, obj)
    if is_state_dict(obj):
        return read_state_dict(path, obj)
    if isinstance(obj, Mapping):
        keys = [str(k) for k in list(obj)[:20]]
        raise ValueError(f"{path} holds a dict with top-level keys {keys}{' ...' if len(obj) > 20 else ''}: expected "
                         f"an nnU-Net checkpoint (with 'network_weights') or a flat state dict of str -> Tensor. If "
                         f"the weights are under another key, save that entry alone: "
                         f"torch.save(checkpoint[<key>], path)")
    raise ValueError(f"{path} holds a {type(obj).__name__}: expected an nnU-Net checkpoint (a dict with "
                     f"'network_weights') or a flat state dict of str -> Tensor")
