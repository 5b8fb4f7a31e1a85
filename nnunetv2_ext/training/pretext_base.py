"""What every self-supervised pretext trainer shares: the dataset's labels ignored, each batch replaced on the device by
a pretext batch, nnU-Net's own optimisation step, no segmentation validation, and the pretext metrics logged against
their trivial baselines (``pretext_metrics.json``, :mod:`nnunetv2_ext.training.pretext_metrics`).

A pretext trainer is its hook, its loss, its network and its metrics::

    class nnUNetTrainerDenoising(PretextTrainerBase):
        pretext_name = "Denoising"
        initial_lr = 1e-4                                     # the paper's optimiser: class attributes

        def _build_loss(self):
            return nn.MSELoss()

        def pretext_batch(self, data, generator):             # (network input, target) from the pure functions
            return data + 0.1 * torch.randn(data.shape, generator=generator, device=data.device), data

        def validation_values(self, inputs, target, output):  # per validation batch
            return {"mse": float(F.mse_loss(output, target)), "identity_mse": float(F.mse_loss(inputs, target))}

        def pretext_metrics(self, values):                    # gathered over the batches and DDP workers
            return [pretext_metric("restoration MSE", values["mse"].mean(), values["identity_mse"].mean(),
                                   "identity", higher_is_better=False)]

The network is the one the plans name (``MultiEncoderUNet``, ``PlainConvUNet``, ``ResidualEncoderUNet``), built with
``pretext_output_channels`` outputs (one per input channel by default: a restoration), so its ``encoder.*`` /
``decoder.*`` tensors keep their names and ``-pretrained_weights`` of a fine-tuning run maps them
(``nnunetv2_ext.transfer``). The checkpoints are for weight transfer, not for ``nnUNetv2_predict``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.helpers import dummy_context
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import autocast, nn

from nnunetv2_ext.training.base import ExtTrainerBase
from nnunetv2_ext.training.pretext_metrics import gather_values, report_pretext_metrics

#: validation batch i is drawn with seed ``pretext_seed + VALIDATION_SEED_OFFSET + i`` in every epoch
VALIDATION_SEED_OFFSET = 1_000_003


class PretextTrainerBase(ExtTrainerBase):
    """Base of the self-supervised pretext trainers.

    A subclass supplies:

    - :meth:`pretext_batch` (required): ``(data, generator) -> (network input, target)`` on the device, calling the
      pure tensor functions of ``nnunetv2_ext.pretext``; the target is whatever the loss takes (a tensor or a list of
      tensors, as nnU-Net's ``train_step`` moves them).
    - ``_build_loss`` (nnU-Net's hook) when the loss is not nnU-Net's Dice + CE; ``configure_optimizers`` and the
      hyper-parameters of the paper as class attributes; ``pretext_output_channels`` or ``build_network_architecture``
      (via ``super()``) for its output head.
    - :meth:`validation_values` (per validation batch) and :meth:`pretext_metrics` (required: the metrics against
      their trivial baselines from the gathered values); optionally :meth:`pseudo_dice` (what nnU-Net's "pseudo
      dice" slot of the log and progress.png shows) and :meth:`validation_summary` (one log line).

    The base provides:

    - ``oversample_foreground_percent = 0.0`` (a pretext has no foreground class) and no deep supervision (a subclass
      whose target is a segmentation sets ``enable_deep_supervision = True``);
    - seeded pretext streams: training draws from a ``torch.Generator`` seeded ``pretext_seed + rank`` in
      ``on_train_start`` (:meth:`seed_training_stream`); validation batch i from one seeded with ``pretext_seed +
      VALIDATION_SEED_OFFSET + i`` in every epoch, so the validation curves are comparable;
    - ``train_step``: nnU-Net's own (autocast on CUDA, grad scaler, gradient clipping) on the pretext batch;
      ``validation_step``: the network and the loss under nnU-Net's autocast on the pretext batch, then
      :meth:`validation_values`;
    - ``on_validation_epoch_end``: every value of every validation batch gathered over the DDP workers, nnU-Net's
      log slots filled (``val_losses``, and ``mean_fg_dice`` / ``dice_per_class_or_region`` from :meth:`pseudo_dice`;
      the "best" checkpoint follows it), :meth:`validation_summary` logged and the metrics reported
      (``report_pretext_metrics``: log line and ``pretext_metrics.json``);
    - ``perform_actual_validation``: no segmentation validation, one log line naming where to look instead.
    """
    oversample_foreground_percent = 0.0  # the pretext has no foreground class to oversample
    enable_deep_supervision = False      # the pretext's target is not a segmentation (Volume Fusion's is)
    pretext_seed = 12345                 # training stream: pretext_seed + rank; validation: fixed per batch index
    pretext_name = "Pretext"             # in the log: "<pretext_name> pretraining: no segmentation validation ..."
    validation_hint = "the pretext metrics in the log and pretext_metrics.json"  # where to look instead

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self._train_generator: Optional[torch.Generator] = None
        self._val_batch = 0

    # ------------------------------------------------------------------------------------------ what a pretext supplies

    @classmethod
    def pretext_output_channels(cls, num_input_channels: int) -> int:
        """Outputs of the plans' network: one per input channel (a restoration of the input) unless overridden."""
        return num_input_channels

    def pretext_batch(self, data: torch.Tensor, generator: torch.Generator) -> Tuple[torch.Tensor, Any]:
        """The pretext's ``(network input, target)`` for a batch of images ``data`` (on the device), random draws
        from ``generator`` only."""
        raise NotImplementedError(f"{type(self).__name__} must define pretext_batch(data, generator) -> "
                                  f"(network input, target)")

    def validation_values(self, inputs: torch.Tensor, target: Any, output: Any) -> Dict[str, Any]:
        """Values of one validation batch for :meth:`pretext_metrics` (numbers or numpy arrays, one set of keys for
        every batch), beside its ``loss``; ``output`` is the network's output for ``inputs``."""
        return {}

    def pretext_metrics(self, values: Dict[str, np.ndarray]) -> List[dict]:
        """The pretext's metrics against their trivial baselines (entries of ``pretext_metric``), from ``values``:
        for each key of :meth:`validation_values` (and ``loss``) its values of every batch of every DDP worker,
        flattened to float64 (``gather_values``)."""
        raise NotImplementedError(f"{type(self).__name__} must define pretext_metrics(values) -> [pretext_metric(...)]")

    def pseudo_dice(self, values: Dict[str, np.ndarray], metrics: Sequence[dict]) -> List[float]:
        """What nnU-Net's "pseudo dice" slot shows (one value per class; the log prints them, progress.png and the
        "best" checkpoint follow their nan-mean). By default the first metric, as a score where higher is better: its
        value, or for an error ``1 - value / baseline`` (the share of the trivial baseline's error removed)."""
        first = metrics[0]
        if first["higher_is_better"]:
            return [first["value"]]
        return [1.0 - first["value"] / first["baseline"] if first["baseline"] else math.nan]

    def validation_summary(self, values: Dict[str, np.ndarray]) -> Optional[str]:
        """One log line of the validation epoch before the metrics (None: none)."""
        return None

    # ------------------------------------------------------------------------------------------------- pretext streams

    def seed_training_stream(self) -> None:
        """Seed the training pretext stream of this DDP worker (``pretext_seed + rank``); ``on_train_start`` does."""
        self._train_generator = torch.Generator(device=self.device).manual_seed(self.pretext_seed + self.local_rank)

    def on_train_start(self):
        super().on_train_start()
        self.seed_training_stream()

    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        self._val_batch = 0

    def _pretext(self, batch: dict, generator: torch.Generator) -> dict:
        inputs, target = self.pretext_batch(batch["data"].to(self.device, non_blocking=True), generator)
        return {**batch, "data": inputs, "target": target}

    def pretext_train_batch(self, batch: dict) -> dict:
        """``batch`` with ``data`` / ``target`` replaced by the pretext's, drawn from the training stream."""
        return self._pretext(batch, self._train_generator)

    def pretext_validation_batch(self, batch: dict) -> dict:
        """``batch`` with ``data`` / ``target`` replaced by the pretext's; the i-th call of a validation epoch draws
        the same as the i-th of every other epoch."""
        generator = torch.Generator(device=self.device).manual_seed(
            self.pretext_seed + VALIDATION_SEED_OFFSET + self._val_batch)
        self._val_batch += 1
        return self._pretext(batch, generator)

    # ----------------------------------------------------------------------------------------------- nnU-Net's hooks

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = False) -> nn.Module:
        """The plans' network with ``pretext_output_channels`` outputs (the dataset's label count is not used)."""
        return get_network_from_plans(configuration_manager.network_arch_class_name,
                                      configuration_manager.network_arch_init_kwargs,
                                      configuration_manager.network_arch_init_kwargs_req_import,
                                      num_input_channels, cls.pretext_output_channels(num_input_channels),
                                      allow_init=True, deep_supervision=enable_deep_supervision)

    def train_step(self, batch: dict) -> dict:
        return super().train_step(self.pretext_train_batch(batch))

    def validation_step(self, batch: dict) -> dict:
        batch = self.pretext_validation_batch(batch)
        # nnU-Net's choice: autocast on CUDA only
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            output = self.network(batch["data"])
            loss = self.loss(output, batch["target"])
        return {"loss": float(loss), **self.validation_values(batch["data"], batch["target"], output)}

    def on_validation_epoch_end(self, val_outputs: List[dict]):
        values = {k: gather_values(v, self.is_ddp) for k, v in collate_outputs(val_outputs).items()}
        metrics = self.pretext_metrics(values)
        dice = [float(d) for d in self.pseudo_dice(values, metrics)]
        self.logger.log("mean_fg_dice", np.nanmean(dice) if not np.all(np.isnan(dice)) else math.nan,
                        self.current_epoch)
        self.logger.log("dice_per_class_or_region", dice, self.current_epoch)
        self.logger.log("val_losses", values["loss"].mean(), self.current_epoch)
        summary = self.validation_summary(values)
        if summary is not None:
            self.print_to_log_file(summary)
        report_pretext_metrics(self, metrics)

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file(f"{self.pretext_name} pretraining: no segmentation validation (the pretext has no "
                               f"labels); see {self.validation_hint}")


class MISFMAdamPretextTrainer(PretextTrainerBase):
    """A pretext trained with MIS-FM's optimiser (Wang et al. 2023, "MIS-FM: 3D Medical Image Segmentation using
    Foundation Models Pretrained on a Large-Scale Unannotated Dataset", arXiv:2306.16925, sec. 4.1, and the authors'
    PyMIC configs of its Table 2 baselines): Adam, lr 1e-3, weight decay 1e-5, the lr halved every
    ``lr_halving_iterations`` (the shorter end of MIS-FM's 20k-50k), as a pure function of the epoch so ``--c``
    resumes at the right lr."""
    initial_lr = 1e-3
    weight_decay = 1e-5
    lr_halving_iterations = 20000

    def configure_optimizers(self):
        from nnunetv2_ext.training.lr_schedules import StepLRScheduler

        optimizer = torch.optim.Adam(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay)
        halving_epochs = max(1, round(self.lr_halving_iterations / self.num_iterations_per_epoch))
        return optimizer, StepLRScheduler(optimizer, self.initial_lr, halving_epochs, gamma=0.5)


class RestorationPretextTrainer(MISFMAdamPretextTrainer):
    """A restoration pretext (Models Genesis, patch swapping): the network (one output per input channel) returns the
    original from the corrupted input of :meth:`pretext_batch`, L2 loss over all voxels; validated by the restoration
    MSE against the stronger trivial baseline on the same batches, returning the corrupted input (the identity) or
    each image's own mean intensity."""

    def _build_loss(self):
        from nnunetv2_ext.pretext.restoration import restoration_mse

        return restoration_mse

    def validation_values(self, inputs: torch.Tensor, target: torch.Tensor, output: torch.Tensor) -> dict:
        from nnunetv2_ext.pretext.restoration import identity_mse, mean_intensity_mse, restoration_mse

        return {"mse": float(restoration_mse(output, target)), "identity_mse": float(identity_mse(inputs, target)),
                "mean_intensity_mse": float(mean_intensity_mse(target))}

    def pretext_metrics(self, values: Dict[str, np.ndarray]) -> List[dict]:
        from nnunetv2_ext.training.pretext_metrics import pretext_metric

        baselines = {"identity": values["identity_mse"].mean(), "target mean": values["mean_intensity_mse"].mean()}
        name = min(baselines, key=baselines.get)
        return [pretext_metric("restoration MSE", values["mse"].mean(), baselines[name], name, higher_is_better=False)]
