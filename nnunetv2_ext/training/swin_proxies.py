"""The Swin UNETR proxy tasks (inpainting, rotation, contrastive) as an nnU-Net pretext trainer (Tang et al.,
"Self-Supervised Pre-Training of Swin Transformers for 3D Medical Image Analysis", CVPR 2022, arXiv:2111.14791; Cox et
al. 2024, BrainSegFounder, sec. 2.3) on the plans' U-Net with the heads of ``nnunetv2_ext.architectures.ssl_heads``.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np
import torch
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunetv2_ext.architectures.ssl_heads import SSLOutput, with_ssl_heads
from nnunetv2_ext.distributed import all_gather_rows
from nnunetv2_ext.pretext import swin_proxies as sp
from nnunetv2_ext.training.base import NarrowDebugScheduleMixin, NoMirroringMixin
from nnunetv2_ext.training.lr_schedules import WarmupCosineLRScheduler
from nnunetv2_ext.training.pretext_base import PretextTrainerBase
from nnunetv2_ext.training.pretext_metrics import gather_values, pretext_metric

__all__ = ["nnUNetTrainerSwinProxies", "nnUNetTrainerSwinProxies_debug"]


class SwinProxiesLoss(nn.Module):
    """``sp.swin_proxy_losses`` on an :class:`SSLOutput` and the target ``[reconstruction target, rotation, mask]``
    (the mask of the boxes is for the inpainting metric, not the loss); keeps the last unweighted parts (detached)
    for the logs. Under DDP the NT-Xent negatives come from the global batch (``all_gather_rows``; a no-op in one
    process)."""

    def __init__(self, weights: Dict[str, float], temperature: float):
        super().__init__()
        self.weights = dict(weights)
        self.temperature = temperature
        self.last_parts: Dict[str, torch.Tensor] = {}

    def forward(self, output: SSLOutput, target: Sequence[torch.Tensor]) -> torch.Tensor:
        image, rotation = target[0], target[1]
        total, parts = sp.swin_proxy_losses(output.reconstruction, output.rotation_logits, output.projection, image,
                                            rotation, self.weights, self.temperature, gather=all_gather_rows)
        self.last_parts = {k: v.detach() for k, v in parts.items()}
        return total


class nnUNetTrainerSwinProxies(NoMirroringMixin, PretextTrainerBase):
    """Swin UNETR self-supervision (Tang et al. 2022; Cox et al. 2024, BrainSegFounder, sec. 2.3) on the plans' U-Net.

    Each batch becomes two views per sample (rotated by k x 90 deg over the last two axes and box-masked,
    ``nnunetv2_ext.pretext.swin_proxies.two_views``), fed as one batch of 2B. The decoder reconstructs the rotated,
    unmasked image (as many outputs as input channels; L1), the heads on the bottleneck predict the rotation (CE) and
    give the contrastive embedding (NT-Xent, temperature 0.5, negatives from the global batch of all DDP workers as in
    SimCLR's code; MONAI's takes each GPU's batch), weights 1/1/1; AdamW lr 4e-4, weight decay 0.1,
    warm-up + cosine (MONAI Pretrain defaults, docs REFERENCE "Swin UNETR self-supervision").

    Deviations, on purpose: a U-Net decoder with skips reconstructs (MONAI: a skip-free upsampling head); the heads
    read the bottleneck averaged over a 2^D grid (MONAI: two Swin tokens; see SSLHeads); nnU-Net's patch,
    augmentation and epochs, without mirroring (a mirrored image is indistinguishable from one rotated by another k);
    patches with unequal last two sizes are centre-cropped square. Validation logs the three losses and the pretext
    metrics against their trivial baselines (``pretext_metrics.json``): rotation accuracy against chance (0.25), and
    the reconstruction L1 of the whole view and inside the masked boxes only (inpainting) against those of returning
    the masked input unchanged. The rotation accuracy fills nnU-Net's
    "pseudo dice" slot (log and progress.png; the "best" checkpoint is then the best rotation accuracy).
    """
    initial_lr = 4e-4                    # MONAI Pretrain main.py --lr
    weight_decay = 0.1                   # MONAI Pretrain main.py --decay (AdamW)
    warmup_epochs = 2                    # MONAI: 500 warm-up steps = 2 nnU-Net epochs of 250 iterations
    loss_weights = dict(sp.LOSS_WEIGHTS)  # reconstruction / rotation / contrastive, all 1 (Tang et al. 2022, L_tot)
    temperature = sp.TEMPERATURE         # NT-Xent temperature 0.5
    projection_dim = sp.PROJECTION_DIM   # contrastive head Linear(., 512)
    head_grid = 2                        # heads read the bottleneck averaged over a 2^D grid (see SSLHeads)
    mask_kwargs: Dict[str, float] = {}   # e.g. {"max_fraction": 0.3}: overrides of sp.random_box_mask's defaults
    pretext_name = "Swin UNETR proxy"
    validation_hint = "the losses and the rotation accuracy ('Pseudo dice') in the log and progress.png"

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = False) -> nn.Module:
        """The plans' network with one output per input channel (the reconstruction) plus the SSL heads."""
        network = super().build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                     num_output_channels, enable_deep_supervision)
        return with_ssl_heads(network, cls.head_grid, sp.N_ROTATIONS, cls.projection_dim)

    def _build_loss(self):
        return SwinProxiesLoss(self.loss_weights, self.temperature)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay)
        scheduler = WarmupCosineLRScheduler(optimizer, self.initial_lr, self.num_epochs,
                                            min(self.warmup_epochs, self.num_epochs))
        return optimizer, scheduler

    def on_train_start(self):
        super().on_train_start()
        global_batch = self.configuration_manager.batch_size if self.is_ddp else self.batch_size
        if global_batch < 2:
            self.print_to_log_file(f"Warning: batch size {global_batch} (all processes together): NT-Xent then has no "
                                   f"negative pairs and the contrastive loss is constant")

    def pretext_batch(self, data: torch.Tensor, generator: torch.Generator):
        """Two views per sample as one batch ``[views 1; views 2]``; target ``[unmasked views, rotation classes,
        box masks]``."""
        if data.shape[-1] != data.shape[-2]:
            data = sp.center_square(data)
        views = sp.two_views(data, generator, **self.mask_kwargs)
        return torch.cat([views["view1"], views["view2"]]), [
            torch.cat([views["target1"], views["target2"]]), torch.cat([views["rot1"], views["rot2"]]),
            torch.cat([views["mask1"], views["mask2"]])]

    def train_step(self, batch: dict) -> dict:
        out = super().train_step(batch)
        return {**out, **{k: float(v) for k, v in self.loss.last_parts.items()}}

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        parts = {k: gather_values([o[k] for o in train_outputs], self.is_ddp).mean() for k in self.loss_weights}
        self.print_to_log_file("train losses: " + ", ".join(f"{k} {v:.4f}" for k, v in parts.items()))

    def validation_values(self, inputs: torch.Tensor, target, output: SSLOutput) -> dict:
        image, rotation, mask = target
        correct = output.rotation_logits.argmax(1) == rotation
        return {"rotation_correct": int(correct.sum()), "rotation_total": int(correct.numel()),
                "identity_l1": float(sp.identity_l1(inputs, image)),
                "inpaint_l1": float(sp.masked_l1(output.reconstruction, image, mask)),
                "identity_inpaint_l1": float(sp.masked_l1(inputs, image, mask)),
                **{k: float(v) for k, v in self.loss.last_parts.items()}}

    def pretext_metrics(self, values: Dict[str, np.ndarray]) -> List[dict]:
        accuracy = values["rotation_correct"].sum() / values["rotation_total"].sum()
        return [
            pretext_metric("rotation accuracy", accuracy, sp.ROTATION_CHANCE, "chance", higher_is_better=True),
            pretext_metric("reconstruction L1", values["reconstruction"].mean(), values["identity_l1"].mean(),
                           "identity", higher_is_better=False),
            pretext_metric("inpainting L1 (masked boxes)", values["inpaint_l1"].mean(),
                           values["identity_inpaint_l1"].mean(), "identity", higher_is_better=False)]

    def validation_summary(self, values: Dict[str, np.ndarray]) -> str:
        return ("validation losses: " + ", ".join(f"{k} {values[k].mean():.4f}" for k in self.loss_weights) +
                "; 'Pseudo dice' shows the rotation accuracy")


class nnUNetTrainerSwinProxies_debug(NarrowDebugScheduleMixin, nnUNetTrainerSwinProxies):
    """3 epochs of 4 iterations (1 warm-up epoch), no mirroring: smoke tests and CPU examples."""
    warmup_epochs = 1
