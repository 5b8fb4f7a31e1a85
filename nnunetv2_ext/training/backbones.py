"""nnU-Net trainers for alternative backbones: MONAI's Swin UNETR, SegResNet and UNETR, and any network a plans file
names (STU-Net: ``-p nnUNetPlans_STUNetB`` with nnU-Net's own trainer or ``nnUNetTrainerBackbone``).

A trainer with a ``backbone`` derives that network from whatever plans it is given (nnU-Net's ``nnUNetPlans`` or
the backbone's own plans from :func:`nnunetv2_ext.planning.backbones.write_backbone_plans`): in ``__init__``, on a
copy of the plans, before nnU-Net's trainer sees them. So the patch the network needs (e.g. [32, 40, 40] -> [32, 64,
64] for Swin UNETR) is the patch nnU-Net trains with, writes into the output folder's plans.json and the
checkpoint's ``init_args``, and predicts with; the change is logged.
"""
from __future__ import annotations

import copy
from typing import List, Tuple

import torch
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunetv2_ext.planning.backbones import backbone_architecture, backbone_spec
from nnunetv2_ext.training.base import DebugScheduleMixin, ExtTrainerBase
from nnunetv2_ext.training.volume_fusion import nnUNetTrainerVolumeFusion

# the trainers nnU-Net's -tr finds (the discovery shim re-exports them)
__all__ = [
    "nnUNetTrainerBackbone", "nnUNetTrainerBackbone_debug",
    "nnUNetTrainerSwinUNETR", "nnUNetTrainerSwinUNETR_debug",
    "nnUNetTrainerUNETR", "nnUNetTrainerUNETR_debug",
    "nnUNetTrainerSegResNet", "nnUNetTrainerSegResNet_debug",
    "nnUNetTrainerPCTNet", "nnUNetTrainerPCTNet_debug",
    "nnUNetTrainerTransBTS", "nnUNetTrainerTransBTS_debug",
    "nnUNetTrainerVolumeFusionBackbone", "nnUNetTrainerVolumeFusionBackbone_debug",
]


def supports_deep_supervision(architecture: dict) -> bool:
    """Whether the network a plans ``architecture`` names has deep supervision. Networks that do not say (nnU-Net's
    U-Nets, the multi-encoder) have it; this package's MONAI wrappers answer through ``has_deep_supervision``."""
    import pydoc

    cls = pydoc.locate(architecture["network_class_name"])
    check = getattr(cls, "has_deep_supervision", None)
    return True if check is None else bool(check(**architecture["arch_kwargs"]))


def derive_backbone_configuration(plans: dict, configuration: str, backbone: str, options: dict
                                  ) -> Tuple[dict, List[str]]:
    """A copy of ``plans`` whose ``configuration`` builds ``backbone`` (inheritance resolved), and the notes."""
    resolved = PlansManager(plans).get_configuration(configuration).configuration
    derived, notes = backbone_architecture(backbone, resolved, **options)
    derived.pop("inherits_from", None)  # resolved: the configuration now stands alone
    plans = copy.deepcopy(plans)
    plans["configurations"][configuration] = derived
    return plans, notes


class SquaredSoftDiceLoss(nn.Module):
    """Soft Dice with squared denominator (Taheri Otaghsara et al. 2025, Multi-encoder nnU-Net, sec. 4.2.1; Milletari
    et al. 2016) on nnU-Net's targets: MONAI's ``DiceLoss(squared_pred=True)``, with sigmoid for region masks (nnU-Net
    passes them as booleans) and softmax with one-hot labels for label maps."""

    def __init__(self, regions: bool, include_background: bool, smooth_nr: float, smooth_dr: float):
        super().__init__()
        from monai.losses import DiceLoss

        self.regions = regions
        self.dice = DiceLoss(include_background=include_background, to_onehot_y=not regions, sigmoid=regions,
                             softmax=not regions, squared_pred=True, smooth_nr=smooth_nr, smooth_dr=smooth_dr)

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.dice(output, target.to(output.dtype) if self.regions else target)


class BackboneMixin(ExtTrainerBase):
    """What a trainer needs for a network other than nnU-Net's U-Nets.

    - ``backbone`` (class attribute, a name of the registry ``nnunetv2_ext.planning.backbones.BACKBONES``, checked
      when the class is defined): derived from the given plans in ``__init__`` (patch rounded, logged) and again in
      ``build_network_architecture`` (inference with plans that name another network), all by the registry's rules;
      ``None``: build what the plans name.
    - ``backbone_options``: constructor arguments of the backbone, applied on top of the plans' (debug trainers
      shrink the network with them).
    - Deep supervision is switched off when the network has none (``enable_deep_supervision = False``), and nnU-Net's
      attempts to switch it on (after its final validation) are ignored.
    - The network's class and parameter count are logged.
    """
    backbone = None
    backbone_options: dict = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.backbone is not None:
            try:
                backbone_spec(cls.backbone)
            except ValueError as e:
                raise ValueError(f"{cls.__name__}.backbone: {e} (add a row to BACKBONES in "
                                 f"nnunetv2_ext/planning/backbones.py for a new one)") from None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        notes = []
        if self.backbone is not None:
            plans, notes = derive_backbone_configuration(plans, configuration, self.backbone, self.backbone_options)
        super().__init__(plans, configuration, fold, dataset_json, device)
        for note in notes:
            self.print_to_log_file(f"{self.__class__.__name__}, {configuration}: {note}")
        if not supports_deep_supervision(self.configuration_manager.configuration["architecture"]):
            self.enable_deep_supervision = False
            self.print_to_log_file(f"{self.configuration_manager.network_arch_class_name.split('.')[-1]} has no deep "
                                   f"supervision: training with one output (enable_deep_supervision = False)")

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        if cls.backbone is not None:
            config, _ = backbone_architecture(cls.backbone, configuration_manager.configuration,
                                              **cls.backbone_options)
            configuration_manager = ConfigurationManager(config)
        enable_deep_supervision = enable_deep_supervision and \
            supports_deep_supervision(configuration_manager.configuration["architecture"])
        return super().build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                  num_output_channels, enable_deep_supervision)

    def initialize(self):
        if not self.was_initialized:
            super().initialize()
            network = self._plain_network()
            n_parameters = sum(p.numel() for p in network.parameters())
            self.print_to_log_file(
                f"Network: {type(network).__module__}.{type(network).__name__}, {n_parameters:,} parameters, patch "
                f"{list(self.configuration_manager.patch_size)}, deep supervision "
                f"{'on' if self.enable_deep_supervision else 'off'}")

    def set_deep_supervision_enabled(self, enabled: bool):
        super().set_deep_supervision_enabled(enabled and self.enable_deep_supervision)


class nnUNetTrainerBackbone(BackboneMixin):
    """nnU-Net's schedule for whatever network the plans name (``-p nnUNetPlans_STUNetS``, ``nnUNetPlans_SegResNet``,
    ...), with deep supervision where the network has it."""


class AdamWCosineMixin(ExtTrainerBase):
    """AdamW with cosine annealing of the learning rate over ``num_epochs`` (no warm-up), stepped per epoch."""

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay)
        lr_scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.num_epochs)
        return optimizer, lr_scheduler


class nnUNetTrainerSwinUNETR(AdamWCosineMixin, nnUNetTrainerBackbone):
    """Swin UNETR as in Taheri Otaghsara et al. 2025 (Multi-encoder nnU-Net) sec. 4.2.1: AdamW, cosine annealing, 500
    epochs, soft Dice loss; patch 96^3 and batch size 4 come from the plans (``SWIN_UNETR_TAHERI2025_PRESET`` in
    ``nnunetv2_ext.planning.backbones``), any other plans work with the patch rounded to multiples of 32.

    The paper gives no learning rate or weight decay ("AdamW with weight decay"): 1e-4 and 1e-5 are those of the Swin
    UNETR BraTS 2021 reference code (Project-MONAI/research-contributions, SwinUNETR/BRATS21/main.py: ``optim_lr``,
    ``reg_weight``). The loss is the paper's soft Dice with squared denominator (Milletari et al. 2016),
    ``1 - 2/J sum_j sum_i G_ij Y_ij / (sum_i G_ij^2 + sum_i Y_ij^2)``: MONAI's ``DiceLoss(squared_pred=True)`` with
    the reference's smoothing (0 in the numerator, 1e-6 in the denominator), sigmoid per region for region-based
    datasets (BraTS: WT, TC, ET, all J of them), softmax over classes otherwise (without background unless
    ``dice_include_background``). nnU-Net's ``MemoryEfficientSoftDiceLoss`` has no squared denominator, hence MONAI's.
    """
    backbone = "swin_unetr"
    initial_lr = 1e-4          # research-contributions SwinUNETR/BRATS21 (the paper: "AdamW with weight decay")
    weight_decay = 1e-5        # idem
    num_epochs = 500           # Taheri Otaghsara et al. 2025 sec. 4.2.1
    dice_smooth_nr = 0.0       # research-contributions SwinUNETR/BRATS21 --squared_dice
    dice_smooth_dr = 1e-6
    dice_include_background = False  # label-based datasets only; regions always count every region

    def _build_loss(self):
        if self.enable_deep_supervision:
            raise ValueError(f"{self.__class__.__name__}'s soft Dice loss is for a network with one output; the "
                             f"plans' network has deep supervision")
        if self.label_manager.ignore_label is not None:
            raise ValueError(f"{self.__class__.__name__}: the soft Dice loss of Taheri Otaghsara et al. 2025 has no "
                             f"ignore label, the dataset has one ({self.label_manager.ignore_label}); use "
                             f"nnUNetTrainerBackbone")
        regions = self.label_manager.has_regions
        return SquaredSoftDiceLoss(regions, include_background=regions or self.dice_include_background,
                                   smooth_nr=self.dice_smooth_nr, smooth_dr=self.dice_smooth_dr)


class nnUNetTrainerUNETR(AdamWCosineMixin, nnUNetTrainerBackbone):
    """UNETR with the optimiser of its paper (Hatamizadeh et al., WACV 2022, sec. 4.2: AdamW, learning rate 1e-4) and
    its Dice + cross-entropy loss (nnU-Net's, eq. 4 of the paper); weight decay 1e-5 as the authors' code
    (research-contributions UNETR/BTCV main.py ``reg_weight``; its cosine schedule starts with a 50-epoch linear
    warm-up, left out here as for Swin UNETR, for which Taheri Otaghsara et al. 2025 say "Cosine Annealing"). That
    paper gives no UNETR settings: nnU-Net's 1000 epochs. UNETR has no deep supervision; its ``img_size`` is the
    (rounded) patch."""
    backbone = "unetr"
    initial_lr = 1e-4
    weight_decay = 1e-5


class nnUNetTrainerSegResNet(nnUNetTrainerBackbone):
    """SegResNet (Taheri Otaghsara et al. 2025, Multi-encoder nnU-Net, sec. 4.5; Myronenko 2018) with deep supervision
    through MONAI's SegResNetDS. The paper gives no SegResNet training settings, so nnU-Net's schedule and loss (SGD
    1e-2, polynomial decay, 1000 epochs, Dice + CE) are kept."""
    backbone = "segresnet"


class nnUNetTrainerPCTNet(nnUNetTrainerBackbone):
    """PCT-Net (Wang et al. 2023, MIS-FM, sec. 3.1.4) with deep supervision and nnU-Net's schedule and loss (the
    paper trains it with Dice + CE as nnU-Net does; its other settings are the authors' framework's, not nnU-Net's)."""
    backbone = "pctnet"


class nnUNetTrainerTransBTS(nnUNetTrainerBackbone):
    """TransBTS (Wang et al., MICCAI 2021; Taheri Otaghsara et al. 2025 sec. 4.4) with deep supervision and nnU-Net's
    schedule and loss; the plans' patch fixes its position embedding."""
    backbone = "transbts"


class nnUNetTrainerVolumeFusionBackbone(BackboneMixin, nnUNetTrainerVolumeFusion):
    """Volume Fusion pretraining (Wang et al. 2023, MIS-FM) for any backbone plans (``-p nnUNetPlans_SwinUNETR``,
    ...): deep supervision off where the network has none. Fine-tune with the backbone's trainer and
    ``-pretrained_weights``."""


class nnUNetTrainerBackbone_debug(DebugScheduleMixin, nnUNetTrainerBackbone):
    pass


class nnUNetTrainerSwinUNETR_debug(DebugScheduleMixin, nnUNetTrainerSwinUNETR):
    """Also a tiny Swin UNETR: feature size 12, one block per stage, 4^3 windows (7^3 windows pad the small feature
    maps of a debug patch, and attention then costs more than the rest of the network)."""
    backbone_options = {"feature_size": 12, "depths": [1, 1, 1, 1], "window_size": 4}


class nnUNetTrainerUNETR_debug(DebugScheduleMixin, nnUNetTrainerUNETR):
    """Also a tiny ViT (width 48, 4 heads, MLP 96) and feature size 8."""
    backbone_options = {"feature_size": 8, "hidden_size": 48, "mlp_dim": 96, "num_heads": 4}


class nnUNetTrainerSegResNet_debug(DebugScheduleMixin, nnUNetTrainerSegResNet):
    """Also 8 initial filters."""
    backbone_options = {"init_filters": 8}


class nnUNetTrainerVolumeFusionBackbone_debug(DebugScheduleMixin, nnUNetTrainerVolumeFusionBackbone):
    pass


class nnUNetTrainerPCTNet_debug(DebugScheduleMixin, nnUNetTrainerPCTNet):
    """Also narrow: channels 8, 8, 16, 16, 32, 2 heads per level, 2^3 windows."""
    backbone_options = {"features_per_stage": [8, 8, 16, 16, 32], "num_heads": [2, 2, 2], "window_size": 2}


class nnUNetTrainerTransBTS_debug(DebugScheduleMixin, nnUNetTrainerTransBTS):
    """Also narrow: widths 8..64, a 64-wide transformer of 1 layer."""
    backbone_options = {"features_per_stage": [8, 16, 32, 64], "embedding_dim": 64, "num_layers": 1, "num_heads": 2,
                        "mlp_dim": 128}
