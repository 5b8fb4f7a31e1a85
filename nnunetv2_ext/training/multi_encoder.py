"""nnU-Net trainers for the multi-encoder U-Net (Taheri Otaghsara et al. 2025, Multi-encoder nnU-Net, section 4.1.1)."""
from __future__ import annotations

import torch
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunetv2_ext.architectures.multi_encoder import MultiEncoderUNet
from nnunetv2_ext.dataset_json import channel_names
from nnunetv2_ext.planning.multi_encoder_plans import MULTI_ENCODER_CLASS, multi_encoder_architecture
from nnunetv2_ext.training.base import ExtTrainerBase, NarrowDebugScheduleMixin, QuickstartScheduleMixin
from nnunetv2_ext.training.lr_schedules import FineTuneWarmupLRScheduler, encoder_decoder_param_groups, warmup_epochs

__all__ = ["nnUNetTrainerMultiEncoder", "nnUNetTrainerMultiEncoder_debug", "nnUNetTrainerMultiEncoder_quickstart",
           "nnUNetTrainerMultiEncoderSSL",
           "nnUNetTrainerMultiEncoderSSL_debug"]


def build_multi_encoder(configuration_manager: ConfigurationManager, num_input_channels: int,
                        num_output_channels: int, enable_deep_supervision: bool = True) -> MultiEncoderUNet:
    """The multi-encoder for a configuration: as planned by ``nnunetv2_ext plans``, or derived from nnU-Net's
    PlainConvUNet / ResidualEncoderUNet configuration (same stages and widths, one encoder per channel)."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    architecture = configuration_manager.configuration["architecture"]
    if architecture["network_class_name"] != MULTI_ENCODER_CLASS:
        architecture = multi_encoder_architecture(architecture, num_input_channels)
    return get_network_from_plans(architecture["network_class_name"], architecture["arch_kwargs"],
                                  architecture["_kw_requires_import"], num_input_channels, num_output_channels,
                                  allow_init=True, deep_supervision=enable_deep_supervision)


class nnUNetTrainerMultiEncoder(ExtTrainerBase):
    """Multi-encoder nnU-Net with the schedule of Taheri Otaghsara et al. 2025 (Multi-encoder nnU-Net) section 4.1.1:
    SGD lr 1e-2, momentum 0.95, weight decay 3e-5, polynomial decay with exponent 0.9, 500 epochs (the class
    attributes below, read by ``ExtTrainerBase.configure_optimizers``); loss Dice + CE (nnU-Net's, eq. (1) with
    l1 = l2 = 1).

    Works with plans written by ``nnunetv2_ext plans DATASET --arch multi_encoder`` and with nnU-Net's own
    ``nnUNetPlans`` (the multi-encoder is then derived from the planned U-Net).
    """
    initial_lr = 1e-2          # Taheri Otaghsara et al. 2025 sec. 4.1.1, eta_0
    weight_decay = 3e-5        # Taheri Otaghsara et al. 2025 sec. 4.1.1
    momentum = 0.95            # Taheri Otaghsara et al. 2025 sec. 4.1.1 (nnU-Net: 0.99)
    num_epochs = 500           # Taheri Otaghsara et al. 2025 sec. 4.1.1 (nnU-Net: 1000)
    poly_exponent = 0.9        # Taheri Otaghsara et al. 2025 eq. (2)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        names = channel_names(dataset_json)
        if len(names) < 2:
            raise ValueError(f"{self.__class__.__name__}: a multi-encoder needs at least 2 modalities, the dataset "
                             f"has {len(names)} ({names}); use nnU-Net's nnUNetTrainer for single-modality data")
        super().__init__(plans, configuration, fold, dataset_json, device)

    @staticmethod
    def build_network_architecture(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        return build_multi_encoder(configuration_manager, num_input_channels, num_output_channels,
                                   enable_deep_supervision)

    def initialize(self):
        if not self.was_initialized:
            super().initialize()
            self.print_to_log_file(f"Multi-encoder: {self._plain_network().describe()}")


class nnUNetTrainerMultiEncoder_debug(NarrowDebugScheduleMixin, nnUNetTrainerMultiEncoder):
    """3 epochs of 4 iterations at widths 8, 16, 32, ..., a checkpoint every epoch, no mirroring: smoke tests."""


class nnUNetTrainerMultiEncoder_quickstart(QuickstartScheduleMixin, nnUNetTrainerMultiEncoder):
    """The README's quickstart: the multi-encoder at a CPU size (patch 32^3, widths 8..64) for a few hundred steps,
    enough to segment the example data (``nnunetv2_ext example-data``) on a 2-core CPU."""


class nnUNetTrainerMultiEncoderSSL(nnUNetTrainerMultiEncoder):
    """The multi-encoder fine-tuned from self-supervised weights (Taheri Otaghsara et al. 2025 sec. 4.3): the same
    schedule as ``nnUNetTrainerMultiEncoder``, but it never silently trains from scratch. Without
    ``-pretrained_weights`` (and not continuing a run with ``--c``) it takes the checkpoint recorded with
    ``nnunetv2_ext weights use``, else the one pretext-trainer run of the same dataset, plans and configuration
    (``nnunetv2_ext.training.pretraining_lookup``), says in the training log which, and refuses to start when there
    is none or several. The transfer report is saved in the fold folder (``transfer_report.json`` / ``.txt``).

    Fine-tuning protocol (class attributes; see docs/ssl_fine_tuning.md for the measurements behind the defaults):

    - ``transfer_scope = "encoder"``: only the encoders (and their fusion convolutions) are transferred; the decoder
      starts fresh, as in training from scratch. A pretext's decoder solves another task (Volume Fusion segments
      fusion levels; the restoration pretexts reconstruct intensities): transferred whole, a collapsed Volume
      Fusion decoder dropped fine-tuned mean Dice from 0.736 (scratch) to 0.397 (3D proxy, 8 labelled cases, 200
      steps), the same checkpoint with a fresh decoder gave 0.731. ``"all"`` transfers the decoder too, with
      ``transfer_fresh_decoder_stages`` of its last stages and optionally its normalisation
      (``transfer_reset_decoder_norm``) kept fresh.
    - A decoder-first warm-up (``FineTuneWarmupLRScheduler``): for ``decoder_warmup_fraction`` of the epochs the
      encoders are held (lr 0) while the fresh decoder learns to read them, with a linear lr ramp; then the encoders'
      lr ramps up linearly over ``encoder_warmup_fraction`` of the epochs; then nnU-Net's poly decay for all. Both
      5 %: nnU-Net's fine-tuning of self-supervised checkpoints warms up the decoder for 50 and then the whole
      network for 50 of 1000 epochs (Wald et al., "An OpenMind for 3D medical vision self-supervised learning",
      2025, arXiv:2412.17041; MIC-DKFZ/nnssl). Set both to 0 for the plain schedule of Taheri Otaghsara et al. 2025.
    """
    transfer_scope = "encoder"
    decoder_warmup_fraction = 0.05   # of num_epochs: encoders held, decoder lr ramps up
    encoder_warmup_fraction = 0.05   # of num_epochs: then the encoders' lr ramps up

    def configure_optimizers(self):
        groups = encoder_decoder_param_groups(self._plain_network())
        optimizer = torch.optim.SGD(groups, self.initial_lr, weight_decay=self.weight_decay, momentum=self.momentum,
                                    nesterov=True)
        decoder, encoder = warmup_epochs(self.num_epochs, self.decoder_warmup_fraction, self.encoder_warmup_fraction)
        scheduler = FineTuneWarmupLRScheduler(optimizer, self.initial_lr, self.num_epochs,
                                              decoder_warmup_epochs=decoder, encoder_warmup_epochs=encoder,
                                              exponent=self.poly_exponent)
        return optimizer, scheduler

    def on_train_epoch_start(self):
        super().on_train_epoch_start()  # steps the schedule; nnU-Net logs the first (decoder) group's lr
        lrs = {g.get("name", str(i)): g["lr"] for i, g in enumerate(self.optimizer.param_groups)}
        self.print_to_log_file("learning rates: " + ", ".join(f"{k} {v:.5f}" for k, v in lrs.items()))

    def on_train_start(self):
        if self.transfer_report is None and not self.resumed:
            from pathlib import Path

            from nnunetv2_ext.training.pretraining_lookup import resolve_pretraining_checkpoint

            dataset, plans = self.plans_manager.dataset_name, self.plans_manager.plans_name
            found = resolve_pretraining_checkpoint(
                Path(self.output_folder_base).parent.parent, dataset, plans, self.configuration_name,
                f"nnUNetv2_train {dataset} {self.configuration_name} {self.fold} -tr {self.__class__.__name__} "
                f"-p {plans}")
            self.print_to_log_file(found.describe())
            self.load_pretrained_weights(str(found.path))
        super().on_train_start()


class nnUNetTrainerMultiEncoderSSL_debug(NarrowDebugScheduleMixin, nnUNetTrainerMultiEncoderSSL):
    """3 short epochs: smoke tests and CPU examples."""
