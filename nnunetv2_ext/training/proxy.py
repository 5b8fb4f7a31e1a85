"""Schedule-only trainer variants of the offline proxy benchmark (``nnunetv2_ext proxy run``).

Each class changes nothing but the schedule of a trainer of this package (epochs, iterations, checkpoint interval)
and, at the CPU scale, test-time mirroring; the networks come from the plans the benchmark writes. ``_cpu`` variants
fit the benchmark on a 2-core CPU in about an hour (see ``nnunetv2_ext.proxy.experiment.SCALES``); ``_gpu`` variants
are the longer schedule for a GPU. Fine-tuning runs of one scale share one schedule, so the methods differ only in
their network and initialisation.
"""
from __future__ import annotations

import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_ext.training.base import ExtTrainerBase
from nnunetv2_ext.training.cross_modality import nnUNetTrainerCrossModality
from nnunetv2_ext.training.masked_image import nnUNetTrainerMaskedImage
from nnunetv2_ext.training.modality_dropout import (
    nnUNetTrainerMultiEncoderModalityDropout,
    nnUNetTrainerVanillaChannelDropout,
)
from nnunetv2_ext.training.model_genesis import nnUNetTrainerModelGenesis
from nnunetv2_ext.training.multi_encoder import nnUNetTrainerMultiEncoder, nnUNetTrainerMultiEncoderSSL
from nnunetv2_ext.training.patch_swapping import nnUNetTrainerPatchSwapping
from nnunetv2_ext.training.swin_proxies import nnUNetTrainerSwinProxies
from nnunetv2_ext.training.vanilla import nnUNetTrainerVanilla
from nnunetv2_ext.training.volume_fusion import nnUNetTrainerVolumeFusion

__all__ = ["nnUNetTrainerProxyVanilla_cpu", "nnUNetTrainerProxyVanilla_gpu", "nnUNetTrainerProxyMultiEncoder_cpu",
           "nnUNetTrainerProxyMultiEncoder_gpu", "nnUNetTrainerProxyMultiEncoderSSL_cpu",
           "nnUNetTrainerProxyMultiEncoderSSL_gpu", "nnUNetTrainerProxyVolumeFusion_cpu",
           "nnUNetTrainerProxyVolumeFusion_gpu", "nnUNetTrainerProxySwinProxies_cpu",
           "nnUNetTrainerProxySwinProxies_gpu", "nnUNetTrainerProxyCrossModality_gpu",
           "nnUNetTrainerProxyCrossModality_cpu", "nnUNetTrainerProxyCrossModality_smoke",
           "nnUNetTrainerProxyVanilla_smoke", "nnUNetTrainerProxySwinProxies_smoke",
           "nnUNetTrainerProxyVanilla_cpu2d",
           "nnUNetTrainerProxyMultiEncoder_cpu2d",
           "nnUNetTrainerProxyMultiEncoderSSL_cpu2d", "nnUNetTrainerProxyVolumeFusion_cpu2d",
           "nnUNetTrainerProxyMultiEncoderSSLFullTransfer_cpu2d", "nnUNetTrainerProxyVolumeFusionSGD_cpu2d",
           "nnUNetTrainerProxySwinProxies_cpu2d", "nnUNetTrainerProxyCrossModality_cpu2d",
           "nnUNetTrainerProxyMultiEncoder_smoke", "nnUNetTrainerProxyMultiEncoderSSL_smoke",
           "nnUNetTrainerProxyVolumeFusion_smoke", "nnUNetTrainerProxyModelGenesis_cpu",
           "nnUNetTrainerProxyModelGenesis_gpu", "nnUNetTrainerProxyModelGenesis_cpu2d",
           "nnUNetTrainerProxyModelGenesis_smoke", "nnUNetTrainerProxyMaskedImage_cpu",
           "nnUNetTrainerProxyMaskedImage_gpu", "nnUNetTrainerProxyMaskedImage_cpu2d",
           "nnUNetTrainerProxyMaskedImage_smoke",
           "nnUNetTrainerProxyPatchSwapping_cpu", "nnUNetTrainerProxyPatchSwapping_gpu",
           "nnUNetTrainerProxyPatchSwapping_cpu2d", "nnUNetTrainerProxyPatchSwapping_smoke",
           "nnUNetTrainerProxyMultiEncoderModalityDropout_cpu", "nnUNetTrainerProxyVanillaChannelDropout_cpu",
           "nnUNetTrainerProxyMultiEncoderModalityDropout_smoke", "nnUNetTrainerProxyVanillaChannelDropout_smoke"]


class NoTestTimeMirroringMixin(nnUNetTrainer):
    """Mirroring augmentation while training, none at prediction (8x less inference on the CPU)."""

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        out = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return out


class CPUThreadsMixin(nnUNetTrainer):
    """On the CPU, use ``$NNUNETV2_EXT_NUM_THREADS`` torch threads (nnUNetv2_train takes every core), so that the
    benchmark's parallel lanes do not oversubscribe the machine."""
    threads_env = "NNUNETV2_EXT_NUM_THREADS"

    def on_train_start(self):
        threads = os.environ.get(self.threads_env)
        if threads and self.device.type == "cpu":
            torch.set_num_threads(max(1, int(threads)))
        super().on_train_start()


class _CPUFineTune(CPUThreadsMixin, NoTestTimeMirroringMixin):
    """CPU fine-tuning schedule: 10 epochs of 20 iterations (200 steps), one online-validation batch per epoch
    (few epochs: nnU-Net draws progress.png after each one)."""
    num_epochs = 10
    num_iterations_per_epoch = 20
    num_val_iterations_per_epoch = 1
    save_every = 5


class _GPUFineTune(nnUNetTrainer):
    """GPU fine-tuning schedule: 100 epochs of 250 iterations (nnU-Net's epoch), checkpoint every 25 epochs."""
    num_epochs = 100
    num_iterations_per_epoch = 250
    num_val_iterations_per_epoch = 25
    save_every = 25


class _CPUPretrain(CPUThreadsMixin, NoTestTimeMirroringMixin):
    """CPU pretraining stage: 8 epochs of 20 iterations (160 steps)."""
    num_epochs = 8
    num_iterations_per_epoch = 20
    num_val_iterations_per_epoch = 2
    save_every = 4


class _GPUPretrain(nnUNetTrainer):
    """GPU pretraining stage: 100 epochs of 250 iterations."""
    num_epochs = 100
    num_iterations_per_epoch = 250
    num_val_iterations_per_epoch = 25
    save_every = 25


class nnUNetTrainerProxyVanilla_cpu(_CPUFineTune, nnUNetTrainerVanilla):
    """nnU-Net's trainer (PlainConvUNet, SGD 1e-2, momentum 0.99), proxy CPU schedule."""


class nnUNetTrainerProxyVanilla_gpu(_GPUFineTune, nnUNetTrainerVanilla):
    """nnU-Net's trainer, proxy GPU schedule."""


class nnUNetTrainerProxyMultiEncoder_cpu(_CPUFineTune, nnUNetTrainerMultiEncoder):
    """Multi-encoder from scratch (the optimiser of Taheri Otaghsara et al. 2025), proxy CPU schedule."""


class nnUNetTrainerProxyMultiEncoder_gpu(_GPUFineTune, nnUNetTrainerMultiEncoder):
    """Multi-encoder from scratch, proxy GPU schedule."""


class nnUNetTrainerProxyMultiEncoderSSL_cpu(_CPUFineTune, nnUNetTrainerMultiEncoderSSL):
    """Multi-encoder fine-tuned from ``-pretrained_weights`` (refuses to start without), proxy CPU schedule."""


class nnUNetTrainerProxyMultiEncoderSSL_gpu(_GPUFineTune, nnUNetTrainerMultiEncoderSSL):
    """Multi-encoder fine-tuned from ``-pretrained_weights``, proxy GPU schedule."""


class nnUNetTrainerProxyVolumeFusion_cpu(_CPUPretrain, nnUNetTrainerVolumeFusion):
    """Volume Fusion pretraining stage (the settings of Wang et al. 2023, MIS-FM), proxy CPU schedule."""


class nnUNetTrainerProxyVolumeFusion_gpu(_GPUPretrain, nnUNetTrainerVolumeFusion):
    """Volume Fusion pretraining stage, proxy GPU schedule."""


class nnUNetTrainerProxySwinProxies_cpu(_CPUPretrain, nnUNetTrainerSwinProxies):
    """Swin UNETR proxies (inpainting, rotation, contrastive) on the multi-encoder, proxy CPU schedule."""
    warmup_epochs = 1


class nnUNetTrainerProxyCrossModality_cpu(_CPUPretrain, nnUNetTrainerCrossModality):
    """Cross-modality prediction (T1 + T1Gd -> FLAIR) on the target pool, proxy CPU schedule."""


class nnUNetTrainerProxySwinProxies_gpu(_GPUPretrain, nnUNetTrainerSwinProxies):
    """Swin UNETR proxies on the multi-encoder, proxy GPU schedule."""
    warmup_epochs = 2


class nnUNetTrainerProxyCrossModality_gpu(_GPUPretrain, nnUNetTrainerCrossModality):
    """Cross-modality prediction (T1 + T1Gd -> FLAIR) on the target pool, proxy GPU schedule."""


class _CPU2DFineTune(CPUThreadsMixin, NoTestTimeMirroringMixin):
    """CPU 2d fine-tuning schedule (scale ``cpu2d``): 20 epochs of 25 iterations (500 steps), one online-validation
    batch per epoch. The budget of the scale (``nnunetv2_ext.proxy.experiment.SCALES``) fixes it: 8 methods x 2 levels
    x 3 subsets of these in <= 90 min on 2 cores; the scratch curve in the results shows whether it has plateaued."""
    num_epochs = 20
    num_iterations_per_epoch = 25
    num_val_iterations_per_epoch = 1
    save_every = 5


class _CPU2DPretrain(CPUThreadsMixin, NoTestTimeMirroringMixin):
    """CPU 2d pretraining stage (scale ``cpu2d``): 20 epochs of 50 iterations (1000 steps; two stages per method,
    pretrained once and reused by its 6 fine-tuning runs)."""
    num_epochs = 20
    num_iterations_per_epoch = 50
    num_val_iterations_per_epoch = 2
    save_every = 10


class nnUNetTrainerProxyVanilla_cpu2d(_CPU2DFineTune, nnUNetTrainerVanilla):
    """nnU-Net's PlainConvUNet from scratch, proxy CPU 2d schedule."""


class nnUNetTrainerProxyMultiEncoder_cpu2d(_CPU2DFineTune, nnUNetTrainerMultiEncoder):
    """Multi-encoder from scratch, proxy CPU 2d schedule."""


class nnUNetTrainerProxyMultiEncoderSSL_cpu2d(_CPU2DFineTune, nnUNetTrainerMultiEncoderSSL):
    """Multi-encoder fine-tuned from ``-pretrained_weights`` with the SSL trainer's default protocol, proxy CPU 2d
    schedule."""


class nnUNetTrainerProxyVolumeFusion_cpu2d(_CPU2DPretrain, nnUNetTrainerVolumeFusion):
    """Volume Fusion pretraining stage, proxy CPU 2d schedule."""


class nnUNetTrainerProxyMultiEncoderSSLFullTransfer_cpu2d(nnUNetTrainerProxyMultiEncoderSSL_cpu2d):
    """Ablation: the fine-tuning protocol before issue 16 (whole network transferred, no warm-up)."""
    transfer_scope = "all"
    decoder_warmup_fraction = 0.0
    encoder_warmup_fraction = 0.0


class nnUNetTrainerProxyVolumeFusionSGD_cpu2d(nnUNetTrainerProxyVolumeFusion_cpu2d):
    """Ablation: Volume Fusion under nnU-Net's optimiser (SGD lr 1e-2, momentum 0.99, poly decay) instead of
    MIS-FM's Adam."""
    initial_lr = 1e-2
    weight_decay = 3e-5

    def configure_optimizers(self):
        return ExtTrainerBase.configure_optimizers(self)


class nnUNetTrainerProxySwinProxies_cpu2d(_CPU2DPretrain, nnUNetTrainerSwinProxies):
    """Swin UNETR proxies on the multi-encoder, proxy CPU 2d schedule (2 of 20 epochs warm-up)."""
    warmup_epochs = 2


class nnUNetTrainerProxyCrossModality_cpu2d(_CPU2DPretrain, nnUNetTrainerCrossModality):
    """Cross-modality prediction (T1 + T1Gd -> FLAIR) on the target pool, proxy CPU 2d schedule."""


class _SmokeSchedule(CPUThreadsMixin, NoTestTimeMirroringMixin):
    """The tests' toy schedule: 2 epochs of 3 iterations."""
    num_epochs = 2
    num_iterations_per_epoch = 3
    num_val_iterations_per_epoch = 1
    save_every = 1


class nnUNetTrainerProxyMultiEncoder_smoke(_SmokeSchedule, nnUNetTrainerMultiEncoder):
    """Multi-encoder from scratch, the tests' toy schedule."""


class nnUNetTrainerProxyMultiEncoderSSL_smoke(_SmokeSchedule, nnUNetTrainerMultiEncoderSSL):
    """Multi-encoder fine-tuned from ``-pretrained_weights``, the tests' toy schedule."""


class nnUNetTrainerProxyVolumeFusion_smoke(_SmokeSchedule, nnUNetTrainerVolumeFusion):
    """Volume Fusion pretraining stage, the tests' toy schedule."""


class nnUNetTrainerProxyVanilla_smoke(_SmokeSchedule, nnUNetTrainerVanilla):
    """nnU-Net's PlainConvUNet from scratch, the tests' toy schedule."""


class nnUNetTrainerProxySwinProxies_smoke(_SmokeSchedule, nnUNetTrainerSwinProxies):
    """Swin UNETR proxies on the multi-encoder, the tests' toy schedule (no warm-up epoch)."""
    warmup_epochs = 0


class nnUNetTrainerProxyCrossModality_smoke(_SmokeSchedule, nnUNetTrainerCrossModality):
    """Cross-modality prediction on the target pool, the tests' toy schedule."""


# the restoration pretexts (methods ssl_mg, ssl_mim, ssl_ps): the pretraining stages of Volume Fusion's scales


class nnUNetTrainerProxyModelGenesis_cpu(_CPUPretrain, nnUNetTrainerModelGenesis):
    """Models Genesis restoration pretraining stage (Zhou et al. 2021), proxy CPU schedule."""


class nnUNetTrainerProxyModelGenesis_gpu(_GPUPretrain, nnUNetTrainerModelGenesis):
    """Models Genesis restoration pretraining stage, proxy GPU schedule."""


class nnUNetTrainerProxyModelGenesis_cpu2d(_CPU2DPretrain, nnUNetTrainerModelGenesis):
    """Models Genesis restoration pretraining stage, proxy CPU 2d schedule."""


class nnUNetTrainerProxyModelGenesis_smoke(_SmokeSchedule, nnUNetTrainerModelGenesis):
    """Models Genesis restoration pretraining stage, the tests' toy schedule."""


class nnUNetTrainerProxyMaskedImage_cpu(_CPUPretrain, nnUNetTrainerMaskedImage):
    """Masked image modelling pretraining stage (Chen et al. 2023, SimMIM), proxy CPU schedule."""


class nnUNetTrainerProxyMaskedImage_gpu(_GPUPretrain, nnUNetTrainerMaskedImage):
    """Masked image modelling pretraining stage, proxy GPU schedule."""


class nnUNetTrainerProxyMaskedImage_cpu2d(_CPU2DPretrain, nnUNetTrainerMaskedImage):
    """Masked image modelling pretraining stage, proxy CPU 2d schedule."""


class nnUNetTrainerProxyMaskedImage_smoke(_SmokeSchedule, nnUNetTrainerMaskedImage):
    """Masked image modelling pretraining stage, the tests' toy schedule."""


class nnUNetTrainerProxyPatchSwapping_cpu(_CPUPretrain, nnUNetTrainerPatchSwapping):
    """Patch-swapping context restoration pretraining stage (Chen et al. 2019), proxy CPU schedule."""


class nnUNetTrainerProxyPatchSwapping_gpu(_GPUPretrain, nnUNetTrainerPatchSwapping):
    """Patch-swapping context restoration pretraining stage, proxy GPU schedule."""


class nnUNetTrainerProxyPatchSwapping_cpu2d(_CPU2DPretrain, nnUNetTrainerPatchSwapping):
    """Patch-swapping context restoration pretraining stage, proxy CPU 2d schedule."""


class nnUNetTrainerProxyPatchSwapping_smoke(_SmokeSchedule, nnUNetTrainerPatchSwapping):
    """Patch-swapping context restoration pretraining stage, the tests' toy schedule."""


class nnUNetTrainerProxyMultiEncoderModalityDropout_cpu(_CPUFineTune, nnUNetTrainerMultiEncoderModalityDropout):
    """Multi-encoder with modality dropout, proxy CPU schedule (the missing-modality benchmark)."""


class nnUNetTrainerProxyVanillaChannelDropout_cpu(_CPUFineTune, nnUNetTrainerVanillaChannelDropout):
    """nnU-Net's PlainConvUNet with channel dropout, proxy CPU schedule (the missing-modality benchmark)."""


class nnUNetTrainerProxyMultiEncoderModalityDropout_smoke(_SmokeSchedule, nnUNetTrainerMultiEncoderModalityDropout):
    """Multi-encoder with modality dropout, the tests' toy schedule."""


class nnUNetTrainerProxyVanillaChannelDropout_smoke(_SmokeSchedule, nnUNetTrainerVanillaChannelDropout):
    """PlainConvUNet with channel dropout, the tests' toy schedule."""
