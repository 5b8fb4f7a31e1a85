"""Modality dropout for the multi-encoder: train so that any non-empty subset of modalities can be segmented.

Beyond the papers this package implements (they train and test with all four BraTS modalities). Whole modalities are
dropped at random during training, as in ModDrop (Neverova et al., "ModDrop: adaptive multi-modal gesture
recognition", TPAMI 2016) and the random subsets of HeMIS (Havaei et al., "HeMIS: Hetero-Modal Image Segmentation",
MICCAI 2016): with probability ``p`` a sample sees a subset drawn uniformly from the ``2**n - 2`` non-empty proper
subsets of its ``n`` encoders (HeMIS' per-modality coin flips at 1/2, conditioned on keeping at least one and
dropping at least one), otherwise all of them. A dropped encoder's input channels are zeroed and its features are
multiplied by zero before fusion (``MultiEncoder.forward(x, present)``), so it stays in the graph (DDP needs a
gradient, here zero, for every parameter). Validation uses every modality. ``nnunetv2_ext.inference.subset_predict``
predicts from a subset.
"""
from __future__ import annotations

from typing import Optional

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_ext.training.base import NarrowDebugScheduleMixin
from nnunetv2_ext.training.multi_encoder import nnUNetTrainerMultiEncoder
from nnunetv2_ext.training.vanilla import nnUNetTrainerVanilla

__all__ = ["nnUNetTrainerMultiEncoderModalityDropout", "nnUNetTrainerMultiEncoderModalityDropout_debug",
           "nnUNetTrainerVanillaChannelDropout", "nnUNetTrainerVanillaChannelDropout_debug"]

MAX_ENCODERS = 62  # subsets are drawn as bit patterns of an int64


def sample_present_mask(batch_size: int, n_encoders: int, p: float,
                        generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Per-sample encoder masks for modality dropout (vectorised, on the CPU).

    Args:
        batch_size: number of samples.
        n_encoders: encoders (modalities or modality groups) per sample, at least 2.
        p: probability that a sample drops some encoders; it then keeps a subset drawn uniformly from the non-empty
            proper subsets. With probability ``1 - p`` it keeps every encoder.
        generator: random source (seed it for reproducible masks).

    Returns:
        float tensor ``(batch_size, n_encoders)`` of 0/1 with at least one 1 in every row.

    Raises:
        ValueError: ``p`` outside [0, 1], fewer than 2 or more than 62 encoders.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"modality dropout probability p must be in [0, 1], got {p}")
    if not 2 <= n_encoders <= MAX_ENCODERS:
        raise ValueError(f"modality dropout needs 2..{MAX_ENCODERS} encoders (one must stay, one may go), "
                         f"got {n_encoders}")
    drop = torch.rand(batch_size, generator=generator) < p
    # codes 1 .. 2**n - 2 are exactly the non-empty proper subsets (0 is the empty set, 2**n - 1 all encoders)
    codes = torch.randint(1, 2 ** n_encoders - 1, (batch_size,), generator=generator, dtype=torch.int64)
    subsets = (codes.unsqueeze(1) >> torch.arange(n_encoders, dtype=torch.int64)) & 1
    return torch.where(drop.unsqueeze(1), subsets, torch.ones_like(subsets)).to(torch.float32)


class _DropoutMasks(nnUNetTrainer):
    """The dropout probability and the seeded per-rank mask generator both dropout trainers share."""
    modality_dropout_p = 0.5    # beyond the papers: probability that a sample trains with a subset
    modality_dropout_seed = 0   # per-rank generator seed of the masks (seed + rank)

    _dropout_generator: Optional[torch.Generator] = None

    def _mask_generator(self) -> torch.Generator:
        if self._dropout_generator is None:
            self._dropout_generator = torch.Generator().manual_seed(self.modality_dropout_seed + self.local_rank)
        return self._dropout_generator


class nnUNetTrainerMultiEncoderModalityDropout(_DropoutMasks, nnUNetTrainerMultiEncoder):
    """The multi-encoder trained with modality dropout, so it segments from any non-empty subset of modalities.

    Each training sample drops a random non-empty proper subset of encoders with probability
    ``modality_dropout_p`` (see ``sample_present_mask``); the dropped encoders' input channels are zeroed and their
    features masked out of the fusion. The masks come from a generator seeded with ``modality_dropout_seed`` plus the
    DDP rank, so ranks draw different masks. Validation and the final validation use every modality.
    """

    def on_train_start(self):
        super().on_train_start()
        encoder = self._plain_network().encoder
        self.print_to_log_file(f"Modality dropout: p = {self.modality_dropout_p} per sample over "
                               f"{len(encoder.encoders)} encoders (never all dropped), seed "
                               f"{self.modality_dropout_seed} + rank {self.local_rank}")

    def train_step(self, batch: dict) -> dict:
        encoder = self._plain_network().encoder
        data = batch["data"]
        present = sample_present_mask(data.shape[0], len(encoder.encoders), self.modality_dropout_p,
                                      self._mask_generator()).to(self.device, non_blocking=True)
        data = data.to(self.device, non_blocking=True)
        channels = encoder.channel_mask(present).to(data.dtype)
        data = data * channels.view(*channels.shape, *([1] * (data.ndim - 2)))
        with encoder.presence(present):
            return super().train_step({**batch, "data": data})


class nnUNetTrainerMultiEncoderModalityDropout_debug(NarrowDebugScheduleMixin,
                                                     nnUNetTrainerMultiEncoderModalityDropout):
    """3 epochs of 4 iterations, a checkpoint every epoch, no mirroring: smoke tests and CPU examples."""


class nnUNetTrainerVanillaChannelDropout(_DropoutMasks, nnUNetTrainerVanilla):
    """nnU-Net's network (one input stack) trained with the same dropout over its input channels: a dropped channel is
    an all-zero image, which is what a missing modality is at prediction with zero-filling
    (``nnunetv2_ext predict --modalities ... `` / ``benchmark missing-modality``). The strong simple baseline of the
    multi-encoder's modality dropout (ModDrop, Neverova et al., TPAMI 2016; HeMIS, Havaei et al., MICCAI 2016): the
    masks of ``sample_present_mask`` over channels instead of encoders. Validation uses every channel.
    """

    def on_train_start(self):
        super().on_train_start()
        self.print_to_log_file(f"Channel dropout: p = {self.modality_dropout_p} per sample over "
                               f"{self.num_input_channels} input channels (never all dropped), seed "
                               f"{self.modality_dropout_seed} + rank {self.local_rank}")

    def train_step(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)
        present = sample_present_mask(data.shape[0], data.shape[1], self.modality_dropout_p,
                                      self._mask_generator()).to(self.device, non_blocking=True)
        data = data * present.to(data.dtype).view(*present.shape, *([1] * (data.ndim - 2)))
        return super().train_step({**batch, "data": data})


class nnUNetTrainerVanillaChannelDropout_debug(NarrowDebugScheduleMixin, nnUNetTrainerVanillaChannelDropout):
    """3 epochs of 4 iterations at widths 8, 16, 32, ..., no mirroring: smoke tests and CPU examples."""
