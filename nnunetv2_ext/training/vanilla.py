"""nnU-Net's own network and schedule with this package's trainer behaviour (transfer, atomic checkpoints): the
vanilla baseline of the benchmarks, and a short variant for smoke runs on the CPU."""
from __future__ import annotations

from nnunetv2_ext.training.base import DebugScheduleMixin, ExtTrainerBase

__all__ = ["nnUNetTrainerVanilla", "nnUNetTrainerVanilla_debug"]


class nnUNetTrainerVanilla(ExtTrainerBase):
    """nnU-Net's nnUNetTrainer (PlainConvUNet from the plans, 1000 epochs, SGD 1e-2 momentum 0.99) that also
    accepts ``-pretrained_weights`` from any checkpoint of this package (weight transfer with a report). Its
    optimiser is ``ExtTrainerBase.configure_optimizers``, so a subclass changes ``momentum`` or ``poly_exponent``
    with one line."""


class nnUNetTrainerVanilla_debug(DebugScheduleMixin, nnUNetTrainerVanilla):
    """3 epochs of 4 iterations, no mirroring: smoke tests and dry runs."""
