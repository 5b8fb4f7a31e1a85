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
from typing import Dict, List

import numpy as np
import torch
import torch.nn.functional as F
from torch import distributed as dist

from nnunetv2_ext.pretext.volume_fusion import (
    VolumeFusionConfig,
    class_counts,
    constant_predictor_dice,
    dice_per_level,
    fusion_level_confusion,
    mean_level_dice,
    save_volume_fusion_figure,
    volume_fusion,
)
from nnunetv2_ext.training.base import NarrowDebugScheduleMixin
from nnunetv2_ext.training.pretext_base import MISFMAdamPretextTrainer
from nnunetv2_ext.training.pretext_metrics import pretext_metric

__all__ = ["nnUNetTrainerVolumeFusion", "nnUNetTrainerVolumeFusion_debug"]


def volume_fusion_labels(k: int) -> dict:
    """dataset.json ``labels`` of the pretext: background plus one class per fusion level alpha = i / K."""
    return {"background": 0, **{f"alpha_{i}_{k}": i for i in range(1, k + 1)}}


class nnUNetTrainerVolumeFusion(MISFMAdamPretextTrainer):
    """Volume Fusion pretraining (Wang et al. 2023, MIS-FM, sec. 3.1): K = 4, M ~ U(10, 40) boxes of 8-40 x 8-80 x
    8-80 voxels at a 64x128x128 sub-volume (scaled to the plans' patch), loss Dice + CE; foreground and background from
    two different scans of the batch, so the per-GPU batch size must be >= 2. Under DDP (``nnUNetv2_train -num_gpus``,
    torchrun) the pairs are drawn inside each process's share of the batch, never across processes: the pretext is
    the same at any number of GPUs for the same per-GPU batch, and a per-GPU batch below 2 is refused.

    Optimiser of the paper (sec. 4.1): Adam, lr 1e-3, weight decay 1e-5, the lr halved every ``lr_halving_iterations``
    training iterations (converted to nnU-Net epochs of ``num_iterations_per_epoch``). With nnU-Net's SGD (lr 1e-2,
    momentum 0.99) this pretext collapsed to "all background" (pseudo-Dice 0) within ~160 steps on 3D patches.

    Validation: nnU-Net's pseudo-Dice of the K fusion levels (progress.png) and the pretext metric against its trivial
    baseline (log line and ``pretext_metrics.json``): the mean Dice over the K levels of the argmax prediction against
    the best constant predictor (one class everywhere) on the same validation batches.
    """
    vf_config = VolumeFusionConfig()
    enable_deep_supervision = True       # the pretext is a K + 1 class segmentation: nnU-Net's loss and outputs
    pretext_name = "Volume Fusion"
    validation_hint = "the pseudo-Dice of the fusion levels in progress.png"
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

    @classmethod
    def pretext_output_channels(cls, num_input_channels: int) -> int:
        """K + 1 outputs (one per fusion level)."""
        return cls.vf_config.k + 1

    def on_train_start(self):
        if not self.was_initialized:
            self.initialize()  # sets the per-process batch size (nnU-Net splits the plans' batch over DDP workers)
        if self.batch_size < 2:
            workers = dist.get_world_size() if self.is_ddp else 1
            raise ValueError(
                f"Volume Fusion fuses two different scans of each process's batch: the batch size per process must be "
                f">= 2, it is {self.batch_size} (the plans' batch_size {self.configuration_manager.batch_size} split "
                f"over {workers} process(es): WORLD_SIZE / -num_gpus). Set the configuration's batch_size in the "
                f"plans to at least 2 x the number of processes, or start fewer processes")
        super().on_train_start()

    def pretext_batch(self, data: torch.Tensor, generator: torch.Generator):
        """A Volume Fusion sample: the fused images and their fusion-level labels (one per deep-supervision scale)."""
        fused, label, _ = volume_fusion(data, self.vf_config, generator)
        scales = self._get_deep_supervision_scales()
        if scales is None:
            return fused, label
        spatial = label.shape[2:]
        return fused, [label if all(s == 1 for s in scale) else
                       F.interpolate(label.float(), size=[round(n * s) for n, s in zip(spatial, scale)],
                                     mode="nearest").long() for scale in scales]

    def pretext_train_batch(self, batch: dict) -> dict:
        fused = super().pretext_train_batch(batch)
        figure = os.path.join(self.output_folder, "volume_fusion_sample.png")
        if self.local_rank == 0 and not os.path.isfile(figure):
            # one picture of what the network sees: background, foreground, fusion levels, fused image
            label = fused["target"][0] if isinstance(fused["target"], list) else fused["target"]
            save_volume_fusion_figure(batch["data"], fused["data"].detach().cpu(), label.cpu(), figure)
            self.print_to_log_file(f"A Volume Fusion training sample: {figure}")
        return fused

    def validation_values(self, inputs, target, output) -> dict:
        """The counts of nnU-Net's online pseudo-Dice of the K levels (full resolution) and the class counts of the
        target (for the constant-predictor baseline)."""
        if self.enable_deep_supervision:
            output, target = output[0], target[0]
        tp, fp, fn = fusion_level_confusion(output.argmax(1, keepdim=True), target, self.vf_config.k)
        return {"tp_hard": tp.cpu().numpy(), "fp_hard": fp.cpu().numpy(), "fn_hard": fn.cpu().numpy(),
                "class_counts": class_counts(target, self.vf_config.k).cpu().numpy()}

    def _confusion(self, values: Dict[str, np.ndarray]):
        k = self.vf_config.k
        return [values[key].reshape(-1, k).sum(0) for key in ("tp_hard", "fp_hard", "fn_hard")]

    def pretext_metrics(self, values: Dict[str, np.ndarray]) -> List[dict]:
        counts = values["class_counts"].reshape(-1, self.vf_config.k + 1).sum(0)
        return [pretext_metric("fusion-level Dice", mean_level_dice(*self._confusion(values)),
                               constant_predictor_dice(counts), "constant predictor", higher_is_better=True)]

    def pseudo_dice(self, values: Dict[str, np.ndarray], metrics) -> List[float]:
        """nnU-Net's pseudo-Dice: the Dice of each fusion level (NaN where a level is in neither prediction nor
        target)."""
        return dice_per_level(*self._confusion(values)).tolist()


class nnUNetTrainerVolumeFusion_debug(NarrowDebugScheduleMixin, nnUNetTrainerVolumeFusion):
    """3 epochs of 4 iterations, no mirroring: smoke tests and CPU examples."""
