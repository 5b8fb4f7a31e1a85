"""Read pretrained weights safely: nnU-Net checkpoints and plain state-dict files.

Every file is loaded with ``torch.load(..., weights_only=True)``: unpickling then only builds tensors, containers
and an explicit allow-list of harmless types, so a checkpoint from an untrusted source cannot run code. nnU-Net's
``checkpoint_*.pth`` files hold, besides the tensors, numpy scalars in ``logging`` (mean foreground Dice, losses)
and a ``torch.device`` in ``init_args``; :data:`NNUNET_SAFE_GLOBALS` allow-lists just what those need.
"""
from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import torch

from nnunetv2_ext.dataset_json import channel_names

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


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and \
        all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


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
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: "
                         f"{msg.strip().splitlines()[-1] if msg.strip() else 'no detail'}); the file may be truncated "
                         f"or corrupted: copy it again or re-save it with torch.save") from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, UnicodeDecodeError, AttributeError) as e:
        if isinstance(e, (FileNotFoundError, IsADirectoryError, PermissionError)):
            raise
        detail = str(e).strip().splitlines()[0] if str(e).strip() else "no detail"
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {detail}); the file may "
                         f"be truncated or corrupted (size {path.stat().st_size} bytes): copy it again or re-save it "
                         f"with torch.save") from None


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


def read_checkpoint(path: str | os.PathLike) -> SourceWeights:
    """Read pretrained weights from an nnU-Net checkpoint or a plain state-dict file, never executing code.

    Args:
        path: ``checkpoint_final.pth`` / ``checkpoint_best.pth`` written by an nnU-Net trainer (a dict with
            ``network_weights`` and ``init_args``), or a file holding a flat ``str -> Tensor`` state dict.

    Returns:
        The tensors (prefixes ``module.``/``_orig_mod.`` removed) and, for nnU-Net checkpoints, the modality names,
        trainer, network class and encoder groups recorded in it.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a readable PyTorch checkpoint (truncated, corrupt), needs globals outside the
            allow-list (refused: weights_only loading executes no code), or holds neither ``network_weights`` nor a
            flat state dict.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"pretrained weights {path} do not exist; expected an nnU-Net checkpoint such as "
                                f"<results>/<dataset>/<trainer>__<plans>__<configuration>/fold_0/checkpoint_final.pth "
                                f"or a torch.save'd state dict")
    if path.is_dir():
        hint = path / "checkpoint_final.pth"
        raise ValueError(f"{path} is a folder, expected a checkpoint file"
                         + (f"; did you mean {hint}?" if hint.is_file() else ""))
    obj = load_checkpoint_file(path)

    if isinstance(obj, Mapping) and "network_weights" in obj:
        state = obj["network_weights"]
        if not _is_state_dict(state):
            raise ValueError(f"{path}: 'network_weights' should be a flat dict of str -> Tensor, found "
                             f"{type(state).__name__} with {len(state) if isinstance(state, Mapping) else '?'} "
                             f"entries; the checkpoint was not written by nnU-Net's save_checkpoint")
        init_args = obj.get("init_args") if isinstance(obj.get("init_args"), Mapping) else {}
        arch = _architecture(init_args) or {}
        arch_kwargs = arch.get("arch_kwargs") if isinstance(arch.get("arch_kwargs"), Mapping) else {}
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
        return SourceWeights(state=strip_prefixes(state), modality_names=names,
                             trainer_name=trainer if isinstance(trainer, str) else None,
                             network_class=network_class, encoder_groups=encoder_groups, path=str(path))

    if _is_state_dict(obj):
        return SourceWeights(state=strip_prefixes(obj), path=str(path))

    if isinstance(obj, Mapping):
        keys = [str(k) for k in list(obj)[:20]]
        raise ValueError(f"{path} holds a dict with top-level keys {keys}{' ...' if len(obj) > 20 else ''}: expected "
                         f"an nnU-Net checkpoint (with 'network_weights') or a flat state dict of str -> Tensor. If "
                         f"the weights are under another key, save that entry alone: "
                         f"torch.save(checkpoint[<key>], path)")
    raise ValueError(f"{path} holds a {type(obj).__name__}: expected an nnU-Net checkpoint (a dict with "
                     f"'network_weights') or a flat state dict of str -> Tensor")
