"""Self-supervised pretext trainers: Swin UNETR proxy tasks and cross-modality prediction, as nnU-Net trainers.

Like ``nnUNetTrainerVolumeFusion`` they ignore the dataset's labels: every training and validation batch is replaced on
the device by a pretext batch built with the pure functions of ``nnunetv2_ext.pretext`` and nnU-Net's own
``train_step`` does the optimisation. The network is the one the plans name (``MultiEncoderUNet``, ``PlainConvUNet``,
``ResidualEncoderUNet``), built with its own output count, so its ``encoder.*`` / ``decoder.*`` tensors keep their
names and ``-pretrained_weights`` of a fine-tuning run maps them (``nnunetv2_ext.transfer``). Segmentation validation
is skipped; the per-epoch validation logs pretext metrics, and the "pseudo dice" slot of nnU-Net's log and
``progress.png`` carries one of them (named in each trainer's docstring). The checkpoints are for weight transfer,
not for ``nnUNetv2_predict``.
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.helpers import dummy_context
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from torch import autocast, nn

from nnunetv2_ext.dataset_json import channel_names
from nnunetv2_ext.pretext import swin_proxies as sp
from nnunetv2_ext.pretext.cross_modality import (SSIM_WIN_SIZE, mean_intensity_psnr, psnr, resolve_channels,
                                                 split_modalities, ssim3d)
from nnunetv2_ext.training.base import DebugScheduleMixin, ExtTrainerBase, NoMirroringMixin
from nnunetv2_ext.training.lr_schedules import WarmupCosineLRScheduler
from nnunetv2_ext.training.pretext_metrics import gather_values, pretext_metric, report_pretext_metrics


# ----------------------------------------------------------------------------------------------------------------------
# shared pieces


def _autocast(device: torch.device):
    """nnU-Net's choice: autocast on CUDA only."""
    return autocast(device.type, enabled=True) if device.type == "cuda" else dummy_context()


# ----------------------------------------------------------------------------------------------------------------------
# Swin UNETR proxy tasks


class SSLOutput(NamedTuple):
    reconstruction: torch.Tensor  # (B, C_in, *spatial): the decoder's image
    rotation_logits: torch.Tensor  # (B, 4)
    projection: torch.Tensor  # (B, projection_dim): the contrastive embedding


class SSLHeads(nn.Module):
    """Rotation and contrastive heads on the bottleneck (Tang et al. 2022; MONAI Pretrain ``SSLHead``:
    ``rotation_head = Linear(dim, 4)``, ``contrastive_head = Linear(dim, 512)``, each reading one Swin token).

    A convolutional bottleneck has no tokens; both heads read its average over a ``grid``^D grid of cells (D spatial
    axes), flattened. Not one global average: after nnU-Net's InstanceNorm every channel has mean 0 and variance 1
    before the last nonlinearity, so global means are nearly the same for every image (cosine similarity 0.999
    between two unrelated inputs of the untrained multi-encoder), and a global average cannot see where things are,
    which is what a rotation changes; the cells keep the coarse layout. ``grid=1`` gives the global average.
    """

    def __init__(self, in_channels: int, spatial_dims: int = 3, grid: int = 2, n_rotations: int = sp.N_ROTATIONS,
                 projection_dim: int = sp.PROJECTION_DIM):
        super().__init__()
        if spatial_dims not in (2, 3) or grid < 1:
            raise ValueError(f"SSLHeads needs spatial_dims 2 or 3 and grid >= 1, got {spatial_dims} and {grid}")
        self.grid = grid
        self.spatial_dims = spatial_dims
        features = in_channels * grid ** spatial_dims
        self.rotation = nn.Linear(features, n_rotations)
        self.contrastive = nn.Linear(features, projection_dim)

    def forward(self, bottleneck: torch.Tensor):
        pool = F.adaptive_avg_pool3d if self.spatial_dims == 3 else F.adaptive_avg_pool2d
        pooled = pool(bottleneck, self.grid).flatten(1)
        return self.rotation(pooled), self.contrastive(pooled)


class SSLWrapper(nn.Module):
    """A dynamic-network-architectures U-Net (``encoder`` returning the skips, ``decoder(skips)``) plus SSL heads.

    The backbone's ``encoder`` and ``decoder`` are registered here under the same names, so the state dict keys are
    the backbone's own (``encoder.*``, ``decoder.*``) plus ``ssl_heads.*``, which the weight transfer reports as
    ``ignored`` when fine-tuning. The attributes the transfer reads from a target network (``encoder_groups``,
    ``modality_names``, ``keys_to_in_proj``, ...) are copied, so a wrapper can also receive pretrained weights
    (two-stage pretraining). ``forward`` returns an :class:`SSLOutput`; the reconstruction is the decoder output.
    """
    TRANSFER_ATTRIBUTES = ("encoder_groups", "modality_names", "keys_to_in_proj", "key_to_encoder", "key_to_stem",
                           "fusion", "encoder_type")

    def __init__(self, network: nn.Module, heads: nn.Module):
        super().__init__()
        missing = [a for a in ("encoder", "decoder") if not isinstance(getattr(network, a, None), nn.Module)]
        if missing:
            raise ValueError(f"SSL heads need a U-Net with an `encoder` returning its skips and a `decoder(skips)` "
                             f"(dynamic-network-architectures style); {type(network).__name__} has no {missing}")
        self.encoder = network.encoder
        self.decoder = network.decoder
        self.ssl_heads = heads
        self.backbone_class = type(network).__name__
        for name in self.TRANSFER_ATTRIBUTES:
            if hasattr(network, name):
                setattr(self, name, getattr(network, name))

    def forward(self, x: torch.Tensor) -> SSLOutput:
        skips = self.encoder(x)
        rotation, projection = self.ssl_heads(skips[-1])
        return SSLOutput(self.decoder(skips), rotation, projection)


class SwinProxiesLoss(nn.Module):
    """``sp.swin_proxy_losses`` on an :class:`SSLOutput` and the target ``[reconstruction target, rotation]``;
    keeps the last unweighted parts (detached) for the logs."""

    def __init__(self, weights: Dict[str, float], temperature: float):
        super().__init__()
        self.weights = dict(weights)
        self.temperature = temperature
        self.last_parts: Dict[str, torch.Tensor] = {}

    def forward(self, output: SSLOutput, target: Sequence[torch.Tensor]) -> torch.Tensor:
        image, rotation = target
        total, parts = sp.swin_proxy_losses(output.reconstruction, output.rotation_logits, output.projection, image,
                                            rotation, self.weights, self.temperature)
        self.last_parts = {k: v.detach() for k, v in parts.items()}
        return total


class nnUNetTrainerSwinProxies(NoMirroringMixin, ExtTrainerBase):
    """Swin UNETR self-supervision (Tang et al. 2022; Cox et al. 2024, BrainSegFounder, sec. 2.3) on the plans' U-Net.

    Each batch becomes two views per sample (rotated by k x 90 deg over the last two axes and box-masked,
    ``nnunetv2_ext.pretext.swin_proxies.two_views``), fed as one batch of 2B. The decoder reconstructs the rotated,
    unmasked image (as many outputs as input channels; L1), the heads on the bottleneck predict the rotation (CE) and
    give the contrastive embedding (NT-Xent, temperature 0.5), weights 1/1/1; AdamW lr 4e-4, weight decay 0.1,
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
    pretext_seed = 12345                 # training stream: pretext_seed + rank; validation: fixed per batch index
    oversample_foreground_percent = 0.0  # the pretext has no foreground class to oversample

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.enable_deep_supervision = False
        self._train_generator = None
        self._val_batch = 0

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = False) -> nn.Module:
        """The plans' network with one output per input channel (the reconstruction) plus the SSL heads."""
        network = get_network_from_plans(configuration_manager.network_arch_class_name,
                                         configuration_manager.network_arch_init_kwargs,
                                         configuration_manager.network_arch_init_kwargs_req_import,
                                         num_input_channels, num_input_channels, allow_init=True,
                                         deep_supervision=enable_deep_supervision)
        heads = SSLHeads(int(network.encoder.output_channels[-1]), convert_conv_op_to_dim(network.encoder.conv_op),
                         cls.head_grid, sp.N_ROTATIONS, cls.projection_dim)
        return SSLWrapper(network, heads)

    def _build_loss(self):
        return SwinProxiesLoss(self.loss_weights, self.temperature)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay)
        scheduler = WarmupCosineLRScheduler(optimizer, self.initial_lr, self.num_epochs,
                                            min(self.warmup_epochs, self.num_epochs))
        return optimizer, scheduler

    def on_train_start(self):
        super().on_train_start()
        if self.batch_size < 2:
            self.print_to_log_file(f"Warning: batch size {self.batch_size} per process: NT-Xent then has no negative "
                                   f"pairs and the contrastive loss is constant")
        self._train_generator = torch.Generator(device=self.device).manual_seed(self.pretext_seed + self.local_rank)

    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        self._val_batch = 0

    def _pretext_batch(self, batch: dict, generator: torch.Generator) -> dict:
        """Two views per sample as one batch ``[views 1; views 2]``; target ``[unmasked views, rotation classes]``."""
        data = batch["data"].to(self.device, non_blocking=True)
        if data.shape[-1] != data.shape[-2]:
            data = sp.center_square(data)
        views = sp.two_views(data, generator, **self.mask_kwargs)
        target = [torch.cat([views["target1"], views["target2"]]), torch.cat([views["rot1"], views["rot2"]])]
        return {**batch, "data": torch.cat([views["view1"], views["view2"]]), "target": target,
                "ssl_mask": torch.cat([views["mask1"], views["mask2"]])}

    def train_step(self, batch: dict) -> dict:
        out = super().train_step(self._pretext_batch(batch, self._train_generator))
        return {**out, **{k: float(v) for k, v in self.loss.last_parts.items()}}

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        parts = {k: gather_values([o[k] for o in train_outputs], self.is_ddp).mean() for k in self.loss_weights}
        self.print_to_log_file("train losses: " + ", ".join(f"{k} {v:.4f}" for k, v in parts.items()))

    def validation_step(self, batch: dict) -> dict:
        # the same views for validation batch i in every epoch, so the curves are comparable
        generator = torch.Generator(device=self.device).manual_seed(self.pretext_seed + 1_000_003 + self._val_batch)
        self._val_batch += 1
        batch = self._pretext_batch(batch, generator)
        with _autocast(self.device):
            output = self.network(batch["data"])
            loss = self.loss(output, batch["target"])
        correct = output.rotation_logits.argmax(1) == batch["target"][1]
        return {"loss": float(loss), "rotation_correct": int(correct.sum()), "rotation_total": int(correct.numel()),
                "identity_l1": float(sp.identity_l1(batch["data"], batch["target"][0])),
                "inpaint_l1": float(sp.masked_l1(output.reconstruction, batch["target"][0], batch["ssl_mask"])),
                "identity_inpaint_l1": float(sp.masked_l1(batch["data"], batch["target"][0], batch["ssl_mask"])),
                **{k: float(v) for k, v in self.loss.last_parts.items()}}

    def on_validation_epoch_end(self, val_outputs: List[dict]):
        outputs = collate_outputs(val_outputs)
        loss = gather_values(outputs["loss"], self.is_ddp).mean()
        accuracy = gather_values(outputs["rotation_correct"], self.is_ddp).sum() / \
            gather_values(outputs["rotation_total"], self.is_ddp).sum()
        parts = {k: gather_values(outputs[k], self.is_ddp).mean() for k in self.loss_weights}
        identity = gather_values(outputs["identity_l1"], self.is_ddp).mean()
        inpaint, identity_inpaint = (gather_values(outputs[k], self.is_ddp).mean()
                                     for k in ("inpaint_l1", "identity_inpaint_l1"))
        self.logger.log("mean_fg_dice", accuracy, self.current_epoch)
        self.logger.log("dice_per_class_or_region", [accuracy], self.current_epoch)
        self.logger.log("val_losses", loss, self.current_epoch)
        self.print_to_log_file("validation losses: " + ", ".join(f"{k} {v:.4f}" for k, v in parts.items()) +
                               "; 'Pseudo dice' shows the rotation accuracy")
        report_pretext_metrics(self, [
            pretext_metric("rotation accuracy", accuracy, sp.ROTATION_CHANCE, "chance", higher_is_better=True),
            pretext_metric("reconstruction L1", parts["reconstruction"], identity, "identity",
                           higher_is_better=False),
            pretext_metric("inpainting L1 (masked boxes)", inpaint, identity_inpaint, "identity",
                           higher_is_better=False)])

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("Swin UNETR proxy pretraining: no segmentation validation (the pretext has no labels); "
                               "see the losses and the rotation accuracy ('Pseudo dice') in the log and progress.png")


class nnUNetTrainerSwinProxies_debug(DebugScheduleMixin, nnUNetTrainerSwinProxies):
    """3 epochs of 4 iterations (1 warm-up epoch), no mirroring: smoke tests and CPU examples."""
    warmup_epochs = 1


# ----------------------------------------------------------------------------------------------------------------------
# cross-modality prediction


class nnUNetTrainerCrossModality(ExtTrainerBase):
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
    oversample_foreground_percent = 0.0  # the pretext has no foreground class to oversample

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
        self.enable_deep_supervision = False

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = False) -> nn.Module:
        """The plans' network with one output per target modality."""
        return get_network_from_plans(configuration_manager.network_arch_class_name,
                                      configuration_manager.network_arch_init_kwargs,
                                      configuration_manager.network_arch_init_kwargs_req_import,
                                      num_input_channels, len(cls.target_modalities), allow_init=True,
                                      deep_supervision=enable_deep_supervision)

    def _build_loss(self):
        return nn.MSELoss()

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs, exponent=self.poly_exponent)

    def _pretext_batch(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)
        inputs, target = split_modalities(data, self.target_channels, self.input_channels, mode="zero")
        return {**batch, "data": inputs, "target": target}

    def train_step(self, batch: dict) -> dict:
        return super().train_step(self._pretext_batch(batch))

    def validation_step(self, batch: dict) -> dict:
        batch = self._pretext_batch(batch)
        with _autocast(self.device):
            pred = self.network(batch["data"])
            loss = self.loss(pred, batch["target"])
        pred, target = pred.float(), batch["target"].float()
        win = min(SSIM_WIN_SIZE, *pred.shape[2:])
        return {"loss": float(loss), "psnr": psnr(pred, target).cpu().numpy(),
                "psnr_mean_intensity": mean_intensity_psnr(target).cpu().numpy(),
                "ssim": ssim3d(pred, target, win_size=win).cpu().numpy()}

    def on_validation_epoch_end(self, val_outputs: List[dict]):
        outputs = collate_outputs(val_outputs)
        mse = gather_values(outputs["loss"], self.is_ddp).mean()
        psnr_db = gather_values(outputs["psnr"], self.is_ddp).mean()
        ssim = gather_values(outputs["ssim"], self.is_ddp).mean()
        baseline = gather_values(outputs["psnr_mean_intensity"], self.is_ddp).mean()
        self.logger.log("mean_fg_dice", ssim, self.current_epoch)
        self.logger.log("dice_per_class_or_region", [ssim], self.current_epoch)
        self.logger.log("val_losses", mse, self.current_epoch)
        self.print_to_log_file(f"validation {'+'.join(self.input_modalities)} -> {'+'.join(self.target_modalities)}: "
                               f"MSE {mse:.4f}, PSNR {psnr_db:.2f} dB, SSIM {ssim:.4f} (shown as 'Pseudo dice')")
        report_pretext_metrics(self, [pretext_metric("PSNR (dB)", psnr_db, baseline, "target mean intensity",
                                                     higher_is_better=True)])

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("Cross-modality pretraining: no segmentation validation (the pretext has no labels); "
                               "see MSE, PSNR and SSIM ('Pseudo dice') in the log and progress.png")


class nnUNetTrainerCrossModality_debug(DebugScheduleMixin, nnUNetTrainerCrossModality):
    """3 epochs of 4 iterations, no mirroring: smoke tests and CPU examples."""
