"""Cross-modality prediction as an nnU-Net pretext trainer (Umesh Kalyanappa 2025 sec. 3.1): the plans' network
predicts some modalities from the others."""
from __future__ import annotations

from typing import Dict, List

import numpy as np
import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from torch import nn

from nnunetv2_ext.dataset_json import channel_names
from nnunetv2_ext.pretext.cross_modality import (
    SSIM_WIN_SIZE,
    mean_intensity_psnr,
    psnr,
    resolve_channels,
    split_modalities,
    ssim3d,
)
from nnunetv2_ext.training.base import NarrowDebugScheduleMixin
from nnunetv2_ext.training.pretext_base import PretextTrainerBase
from nnunetv2_ext.training.pretext_metrics import pretext_metric

__all__ = ["nnUNetTrainerCrossModality", "nnUNetTrainerCrossModality_debug"]


class nnUNetTrainerCrossModality(PretextTrainerBase):
    """Cross-modality prediction (Umesh Kalyanappa 2025 sec. 3.1): the plans' network predicts ``target_modalities``
    (FLAIR) from ``input_modalities`` (T1, T1Gd) with an MSE loss; Adam, lr 1e-4 (Umesh Kalyanappa 2025 sec. 4.2)
    with nnU-Net's polynomial decay (the thesis' StepLR halves the lr every 10 data epochs, which nnU-Net's
    250-iteration epochs do not map to).

    The input keeps every channel, those outside ``input_modalities`` zeroed (``split_modalities(mode="zero")``), so a
    multi-encoder keeps one encoder per modality and the checkpoint maps onto the fine-tuning network by name.
    Modalities are resolved against dataset.json ``channel_names`` (a ``ValueError`` lists the available ones).
    Validation logs MSE (the validation loss), PSNR and SSIM (Umesh Kalyanappa 2025 sec. 4.3.1; data range = each
    target's range); SSIM fills nnU-Net's "pseudo dice" slot (log and progress.png; the "best" checkpoint is the best
    SSIM). The pretext metric (log line and ``pretext_metrics.json``) is the PSNR against that of predicting each
    target image's own mean intensity.
    """
    input_modalities = ("T1", "T1Gd")    # Umesh Kalyanappa 2025 sec. 3.1
    target_modalities = ("FLAIR",)       # Umesh Kalyanappa 2025 sec. 3.1
    initial_lr = 1e-4                    # Umesh Kalyanappa 2025 sec. 4.2, Adam
    weight_decay = 0.0                   # Umesh Kalyanappa 2025 names none
    pretext_name = "Cross-modality"
    validation_hint = "MSE, PSNR and SSIM ('Pseudo dice') in the log and progress.png"

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        names = dict(enumerate(channel_names(dataset_json)))
        self.input_channels = resolve_channels(names, self.input_modalities)
        self.target_channels = resolve_channels(names, self.target_modalities)
        both = sorted(set(self.input_modalities) & set(self.target_modalities))
        if set(self.input_channels) & set(self.target_channels):
            raise ValueError(f"{self.__class__.__name__}: modalities {both or self.target_modalities} are both input "
                             f"and target; set input_modalities and target_modalities to disjoint channel names")
        super().__init__(plans, configuration, fold, dataset_json, device)

    @classmethod
    def pretext_output_channels(cls, num_input_channels: int) -> int:
        """One output per target modality."""
        return len(cls.target_modalities)

    def _build_loss(self):
        return nn.MSELoss()

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs, exponent=self.poly_exponent)

    def pretext_batch(self, data: torch.Tensor, generator: torch.Generator):
        """Input: every channel, the targets zeroed; target: the target modalities (nothing random)."""
        return split_modalities(data, self.target_channels, self.input_channels, mode="zero")

    def validation_values(self, inputs: torch.Tensor, target: torch.Tensor, output: torch.Tensor) -> dict:
        pred, target = output.float(), target.float()
        win = min(SSIM_WIN_SIZE, *pred.shape[2:])
        return {"psnr": psnr(pred, target).cpu().numpy(),
                "psnr_mean_intensity": mean_intensity_psnr(target).cpu().numpy(),
                "ssim": ssim3d(pred, target, win_size=win).cpu().numpy()}

    def pretext_metrics(self, values: Dict[str, np.ndarray]) -> List[dict]:
        return [pretext_metric("PSNR (dB)", values["psnr"].mean(), values["psnr_mean_intensity"].mean(),
                               "target mean intensity", higher_is_better=True)]

    def pseudo_dice(self, values: Dict[str, np.ndarray], metrics) -> List[float]:
        """The SSIM (not a pretext metric: it has no trivial baseline here)."""
        return [values["ssim"].mean()]

    def validation_summary(self, values: Dict[str, np.ndarray]) -> str:
        return (f"validation {'+'.join(self.input_modalities)} -> {'+'.join(self.target_modalities)}: "
                f"MSE {values['loss'].mean():.4f}, PSNR {values['psnr'].mean():.2f} dB, "
                f"SSIM {values['ssim'].mean():.4f} (shown as 'Pseudo dice')")


class nnUNetTrainerCrossModality_debug(NarrowDebugScheduleMixin, nnUNetTrainerCrossModality):
    """3 epochs of 4 iterations, no mirroring: smoke tests and CPU examples."""
