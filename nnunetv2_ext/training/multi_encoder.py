"""nnU-Net trainers for the multi-encoder U-Net (seed 000, section 4.1.1)."""
from __future__ import annotations

import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunetv2_ext.architectures.multi_encoder import MultiEncoderUNet
from nnunetv2_ext.planning.multi_encoder_plans import MULTI_ENCODER_CLASS, modality_names, multi_encoder_architecture
from nnunetv2_ext.training.base import ExtTrainerBase, NoMirroringMixin


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
    """Multi-encoder nnU-Net with the schedule of seed 000 section 4.1.1: SGD lr 1e-2, momentum 0.95, weight decay
    3e-5, polynomial decay with exponent 0.9, 500 epochs; loss Dice + CE (nnU-Net's, eq. (1) with l1 = l2 = 1).

    Works with plans written by ``nnunetv2_ext plans DATASET --arch multi_encoder`` and with nnU-Net's own
    ``nnUNetPlans`` (the multi-encoder is then derived from the planned U-Net).
    """
    initial_lr = 1e-2          # seed 000 sec. 4.1.1, eta_0
    weight_decay = 3e-5        # seed 000 sec. 4.1.1
    momentum = 0.95            # seed 000 sec. 4.1.1 (nnU-Net: 0.99)
    num_epochs = 500           # seed 000 sec. 4.1.1 (nnU-Net: 1000)
    poly_exponent = 0.9        # seed 000 eq. (2)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        names = modality_names(dataset_json)
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

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.network.parameters(), self.initial_lr, weight_decay=self.weight_decay,
                                    momentum=self.momentum, nesterov=True)
        lr_scheduler = PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs, exponent=self.poly_exponent)
        return optimizer, lr_scheduler


class nnUNetTrainerMultiEncoder_debug(NoMirroringMixin, nnUNetTrainerMultiEncoder):
    """3 epochs of 4 iterations, a checkpoint every epoch, no mirroring: smoke tests and the CPU quickstart."""
    num_epochs = 3
    num_iterations_per_epoch = 4
    num_val_iterations_per_epoch = 2
    save_every = 1


class nnUNetTrainerMultiEncoderSSL(nnUNetTrainerMultiEncoder):
    """The multi-encoder fine-tuned from self-supervised weights (seed 000 sec. 4.3): the same schedule as
    ``nnUNetTrainerMultiEncoder``, but it refuses to start without ``-pretrained_weights`` (or a checkpoint to
    continue from), so a forgotten flag never silently trains from scratch. The transfer report is saved in the
    fold folder (``transfer_report.json`` / ``.txt``)."""
    def on_train_start(self):
        if self.transfer_report is None and not self.resumed:
            raise RuntimeError(
                f"{self.__class__.__name__} fine-tunes pretrained weights: pass -pretrained_weights "
                f"<checkpoint_final.pth of a pretraining run, e.g. nnUNetTrainerVolumeFusion> to nnUNetv2_train, or "
                f"use nnUNetTrainerMultiEncoder to train from scratch")
        super().on_train_start()


class nnUNetTrainerMultiEncoderSSL_debug(NoMirroringMixin, nnUNetTrainerMultiEncoderSSL):
    """3 short epochs: smoke tests and CPU examples."""
    num_epochs = 3
    num_iterations_per_epoch = 4
    num_val_iterations_per_epoch = 2
    save_every = 1
