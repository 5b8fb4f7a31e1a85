"""Re-exports every nnU-Net trainer of nnunetv2_ext for nnU-Net's ``nnUNet_extTrainer`` search: the ``__all__`` of each
module in ``nnunetv2_ext.training.TRAINER_MODULES``. Imports only: nnU-Net imports this file as a top-level module and
purges it afterwards; the classes live in nnunetv2_ext (their real module path: pickling, DDP workers, isinstance)."""
from nnunetv2_ext.training import exported_trainers as _exported_trainers

_trainers = _exported_trainers()
globals().update(_trainers)
__all__ = sorted(_trainers)
del _trainers
