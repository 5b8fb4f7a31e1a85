"""The nnU-Net trainers of nnunetv2_ext, one concern per module.

:data:`TRAINER_MODULES` lists the modules that define nnU-Net trainers; each names its trainers in ``__all__``. The
discovery shim (``nnunetv2_ext/discovery/nnunetv2_ext_trainers.py``) re-exports them for nnU-Net and the pretraining
lookup finds the pretext trainers among them, so a trainer added to a listed module needs only its ``__all__`` entry,
and a new trainer module one line here. Nothing is imported until :func:`exported_trainers` is called.
"""
from __future__ import annotations

import importlib
from typing import Dict

TRAINER_MODULES = (
    "nnunetv2_ext.training.vanilla",
    "nnunetv2_ext.training.multi_encoder",
    "nnunetv2_ext.training.modality_dropout",
    "nnunetv2_ext.training.volume_fusion",
    "nnunetv2_ext.training.swin_proxies",
    "nnunetv2_ext.training.cross_modality",
    "nnunetv2_ext.training.model_genesis",
    "nnunetv2_ext.training.masked_image",
    "nnunetv2_ext.training.patch_swapping",
    "nnunetv2_ext.training.backbones",
    "nnunetv2_ext.training.proxy",
)


def exported_trainers() -> Dict[str, type]:
    """Trainer name -> class, for every name in the ``__all__`` of the :data:`TRAINER_MODULES` (imported here).

    Raises:
        ValueError: a listed module has no ``__all__``, or two modules export the same name (nnU-Net finds trainers
            by class name, so one would shadow the other).
    """
    trainers: Dict[str, type] = {}
    for module_name in TRAINER_MODULES:
        module = importlib.import_module(module_name)
        names = getattr(module, "__all__", None)
        if names is None:
            raise ValueError(f"{module_name} is listed in TRAINER_MODULES but has no __all__: add "
                             f"__all__ = [<its nnU-Net trainer class names>] to it")
        for name in names:
            if name in trainers:
                raise ValueError(f"trainer {name} is exported by {module_name} and by {trainers[name].__module__}: "
                                 f"nnU-Net finds trainers by class name, rename one")
            trainers[name] = getattr(module, name)
    return trainers
