"""Volume Fusion self-supervised pretraining as an nnU-Net trainer (Wang et al., "MIS-FM: 3D Medical Image
Segmentation using Foundation Models Pretrained on a Large-Scale Unannotated Dataset", 2023, arXiv:2306.16925,
sec. 3.1, Algorithm 1).

The dataset's labels are ignored. Each training step fuses pairs of patches of the batch on the device
(``nnunetv2_ext.pretext.volume_fusion``) and trains the network to segment the K + 1 fusion levels with nnU-Net's
own Dice + CE loss and deep supervision, with the paper's Adam optimiser. The trainer swaps the label manager for one
with K + 1 classes, so nnU-Net's loss, online pseudo-Dice (progress.png) and checkpoints work unchanged; works with any
network the plans name (multi-encoder, PlainConvUNet, ResidualEncoderUNet).
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunetv2_ext.pretext.volume_fusion import (VolumeFusionConfig, class_counts, constant_predictor_dice,
                                                mean_level_dice, save_volume_fusion_figure, volume_fusion)
from nnunetv2_ext.training.base import DebugScheduleMixin, ExtTrainerBase
from nnunetv2_ext.training.pretext_metrics import gather_values, pretext_metric, report_pretext_metrics
from nnunetv2_ext.training.lr_schedules import StepLRScheduler


def volume_fusion_labels(k: int) -> dict:
    """dataset.json ``labels`` of the pretext: background plus one class per fusion level alpha = i / K."""
    return {"background": 0, **{f"alpha_{i}_{k}": i for i in range(1, k + 1)}}


class nnUNetTrainerVolumeFusion(ExtTrainerBase):
    """Volume Fusion pretraining (Wang et al. 2023, MIS-FM, sec. 3.1): K = 4, M ~ U(10, 40) boxes of 8-40 x 8-80 x
    8-80 voxels at a 64x128x128 sub-volume (scaled to the plans' patch), loss Dice + CE; foreground and background from
    two different scans of the batch, so the per-GPU batch size must be >= 2.

    Optimiser of the paper (sec. 4.1): Adam, lr 1e-3, weight decay 1e-5, the lr halved every ``lr_halving_iterations``
    training iterations (converted to nnU-Net epochs of ``num_iterations_per_epoch``). With nnU-Net's SGD (lr 1e-2,
    momentum 0.99) this pretext collapsed to "all background" (pseudo-Dice 0) within ~160 steps on 3D patches.

    Validation: nnU-Net's pseudo-Dice of the K fusion levels (progress.png) and the pretext metric against its trivial
    baseline (log line and ``pretext_metrics.json``): the mean Dice over the K levels of the argmax prediction against
    the best constant predictor (one class everywhere) on the same validation batches.
    """
    vf_config = VolumeFusionConfig()
    vf_seed = 12345                      # training stream: vf_seed + rank; validation: fixed per batch index
    oversample_foreground_percent = 0.0  # the pretext has no foreground class to oversample
    # Wang et al. 2023 (MIS-FM, arXiv:2306.16925) sec. 4.1: Adam, weight decay 1e-5, lr 1e-3 halved every 20k-50k
    # iterations (20k here: the shorter end, for runs much shorter than the paper's)
    initial_lr = 1e-3
    weight_decay = 1e-5
    lr_halving_iterations = 20000

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        # dataset_json (with its channel_names) stays in init_args/checkpoints for the weight transfer
        self.label_manager = self.plans_manager.get_label_manager(
            {"labels": volume_fusion_labels(self.vf_config.k)})
        self._train_generator = None
        self._val_batch = 0

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        """The plans' network with K + 1 outputs (one per fusion level)."""
        return get_network_from_plans(configuration_manager.network_arch_class_name,
                                      configuration_manager.network_arch_init_kwargs,
                                      configuration_manager.network_arch_init_kwargs_req_import,
                                      num_input_channels, cls.vf_config.k + 1, allow_init=True,
                                      deep_supervision=enable_deep_supervision)

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay)
        halving_epochs = max(1, round(self.lr_halving_iterations / self.num_iterations_per_epoch))
        return optimizer, StepLRScheduler(optimizer, self.initial_lr, halving_epochs, gamma=0.5)

    def on_train_start(self):
        super().on_train_start()
        if self.batch_size < 2:
            raise ValueError(f"Volume Fusion fuses two different scans of a batch: the batch size per process must "
                             f"be >= 2, it is {self.batch_size} (plans batch size / number of GPUs)")
        self._train_generator = torch.Generator(device=self.device).manual_seed(self.vf_seed + self.local_rank)

    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        self._val_batch = 0

    def _fuse_batch(self, batch: dict, generator: torch.Generator) -> dict:
        """Replace the batch's images and targets by a Volume Fusion sample (on the device)."""
        data = batch["data"].to(self.device, non_blocking=True)
        fused, label, _ = volume_fusion(data, self.vf_config, generator)
        scales = self._get_deep_supervision_scales()
        if scales is None:
            target = label
        else:
            spatial = label.shape[2:]
            target = [label if all(s == 1 for s in scale) else
                      F.interpolate(label.float(), size=[round(n * s) for n, s in zip(spatial, scale)],
                                    mode="nearest").long() for scale in scales]
        return {**batch, "data": fused, "target": target}

    def train_step(self, batch: dict) -> dict:
        fused = self._fuse_batch(batch, self._train_generator)
        figure = os.path.join(self.output_folder, "volume_fusion_sample.png")
        if self.local_rank == 0 and not os.path.isfile(figure):
            # one picture of what the network sees: background, foreground, fusion levels, fused image
            label = fused["target"][0] if isinstance(fused["target"], list) else fused["target"]
            save_volume_fusion_figure(batch["data"], fused["data"].detach().cpu(), label.cpu(), figure)
            self.print_to_log_file(f"A Volume Fusion training sample: {figure}")
        return super().train_step(fused)

    def validation_step(self, batch: dict) -> dict:
        # the same boxes for validation batch i in every epoch, so the pseudo-Dice curve is comparable
        generator = torch.Generator(device=self.device).manual_seed(self.vf_seed + 1_000_003 + self._val_batch)
        self._val_batch += 1
        fused = self._fuse_batch(batch, generator)
        label = fused["target"][0] if isinstance(fused["target"], list) else fused["target"]
        return {**super().validation_step(fused), "class_counts": class_counts(label, self.vf_config.k).cpu().numpy()}

    def on_validation_epoch_end(self, val_outputs):
        super().on_validation_epoch_end(val_outputs)  # nnU-Net's pseudo-Dice per level (log, progress.png)
        outputs = collate_outputs(val_outputs)
        k = self.vf_config.k
        tp, fp, fn = (gather_values(np.sum(outputs[key], 0), self.is_ddp).reshape(-1, k).sum(0)
                      for key in ("tp_hard", "fp_hard", "fn_hard"))
        counts = gather_values(np.sum(outputs["class_counts"], 0), self.is_ddp).reshape(-1, k + 1).sum(0)
        report_pretext_metrics(self, [pretext_metric("fusion-level Dice", mean_level_dice(tp, fp, fn),
                                                     constant_predictor_dice(counts), "constant predictor",
                                                     higher_is_better=True)])

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("Volume Fusion pretraining: no segmentation validation (the pretext has no labels); "
                               "see the pseudo-Dice of the fusion levels in progress.png")


class nnUNetTrainerVolumeFusion_debug(DebugScheduleMixin, nnUNetTrainerVolumeFusion):
    """3 epochs of 4 iterations, no mirroring: smoke tests and CPU examples."""
