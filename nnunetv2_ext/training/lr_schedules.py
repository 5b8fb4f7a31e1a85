"""Learning-rate schedules of this package's trainers, stepped once per epoch like nnU-Net's ``PolyLRScheduler``.

A schedule here is a pure function of the epoch (``step(epoch)`` sets every group's lr), so ``--c`` resumes at the
right lr and every DDP rank computes the same value.
"""
from __future__ import annotations

import math
from typing import Dict, List, Tuple

import torch
from torch import nn
from torch.optim.lr_scheduler import _LRScheduler

ENCODER_GROUP = "encoder"
DECODER_GROUP = "decoder"


def encoder_decoder_param_groups(network: nn.Module) -> List[Dict]:
    """Two optimiser parameter groups of a dynamic-network-architectures style U-Net: every parameter outside the
    encoder (decoder, segmentation heads) first, so that nnU-Net's log and progress.png show its lr, then the
    ``encoder.*`` parameters (the pretrained part). Each parameter is in exactly one group
    (tensors the U-Net registers twice, ``decoder.encoder.*``, are the encoder's); every parameter stays in the
    optimiser, so DDP sees a gradient for each one at every step.

    Raises:
        ValueError: the network has no ``encoder.*`` parameters.
    """
    seen, encoder, rest = set(), [], []
    for name, param in network.named_parameters():  # named_parameters yields each tensor once, first name first
        if id(param) in seen:
            continue
        seen.add(id(param))
        (encoder if name.startswith("encoder.") else rest).append(param)
    if not encoder:
        raise ValueError(f"{type(network).__name__} has no encoder.* parameters: the encoder/decoder warm-up needs a "
                         f"dynamic-network-architectures style U-Net; set decoder_warmup_fraction = "
                         f"encoder_warmup_fraction = 0 for this network")
    return [{"params": rest, "name": DECODER_GROUP}, {"params": encoder, "name": ENCODER_GROUP}]


def warmup_epochs(num_epochs: int, decoder_fraction: float, encoder_fraction: float) -> Tuple[int, int]:
    """(decoder, encoder) warm-up epochs: ``round(fraction * num_epochs)`` each, at least 1 when its fraction is > 0
    (short schedules keep the phase), cut so that at least one epoch of poly decay is left (encoder warm-up first)."""
    for fraction in (decoder_fraction, encoder_fraction):
        if not 0 <= fraction < 1:
            raise ValueError(f"a warm-up fraction must lie in [0, 1), got {fraction}")
    wd, we = (max(1, round(f * num_epochs)) if f > 0 else 0 for f in (decoder_fraction, encoder_fraction))
    wd = min(wd, num_epochs - 1)
    return wd, max(0, min(we, num_epochs - 1 - wd))


class EpochLRScheduler(_LRScheduler):
    """Base of the schedules here: every parameter group's lr is a pure function of the epoch, set by
    ``step(epoch)`` as nnU-Net calls it at each epoch start (``step()`` without an epoch counts on). Subclasses set
    their attributes, then call ``super().__init__`` (which takes the first step), and define :meth:`lr_at` or, for
    lrs that differ between groups, :meth:`group_lr`."""

    def __init__(self, optimizer: torch.optim.Optimizer, current_step: int = None):
        self.optimizer = optimizer
        self.ctr = 0
        super().__init__(optimizer, current_step if current_step is not None else -1)

    def lr_at(self, epoch: int) -> float:
        raise NotImplementedError

    def group_lr(self, group: dict, epoch: int) -> float:
        return self.lr_at(epoch)

    def step(self, current_step=None):
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        for group in self.optimizer.param_groups:
            group["lr"] = self.group_lr(group, current_step)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


class WarmupCosineLRScheduler(EpochLRScheduler):
    """Linear warm-up then cosine decay to 0.

    ``lr(e) = lr0 (e + 1) / W`` for ``e < W``, then ``lr0 (1 + cos(pi (e - W) / (T - W))) / 2`` (MONAI Pretrain
    ``optimizers.lr_scheduler.WarmupCosineSchedule`` with one half cosine; warm-up starts at ``lr0 / W``, not 0, so no
    epoch is spent at lr 0).
    """

    def __init__(self, optimizer, initial_lr: float, max_steps: int, warmup_steps: int, current_step: int = None):
        if warmup_steps < 0 or max_steps < 1:
            raise ValueError(f"need max_steps >= 1 and warmup_steps >= 0, got {max_steps} and {warmup_steps}")
        self.initial_lr = initial_lr
        self.max_steps = max_steps
        self.warmup_steps = warmup_steps
        super().__init__(optimizer, current_step)

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.initial_lr * (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps)
        return self.initial_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class StepLRScheduler(EpochLRScheduler):
    """``lr(e) = lr0 gamma ** floor(e / step_epochs)``: the lr multiplied by ``gamma`` every ``step_epochs`` epochs
    (as ``torch.optim.lr_scheduler.StepLR``)."""

    def __init__(self, optimizer, initial_lr: float, step_epochs: int, gamma: float = 0.5, current_step: int = None):
        if step_epochs < 1 or not 0 < gamma <= 1:
            raise ValueError(f"need step_epochs >= 1 and 0 < gamma <= 1, got {step_epochs} and {gamma}")
        self.initial_lr = initial_lr
        self.step_epochs = step_epochs
        self.gamma = gamma
        super().__init__(optimizer, current_step)

    def lr_at(self, step: int) -> float:
        return self.initial_lr * self.gamma ** (step // self.step_epochs)


class FineTuneWarmupLRScheduler(EpochLRScheduler):
    """Poly decay with a decoder-first warm-up, for fine-tuning a network whose encoder is pretrained.

    Three phases over ``max_epochs`` (nnU-Net's ``lr0 (1 - e / T) ** exponent`` throughout):

    1. epochs ``[0, Wd)``: the encoder group's lr is 0 (it is frozen without leaving the graph or the optimiser, so
       DDP needs no ``find_unused_parameters``); the decoder group's rises linearly to the poly value;
    2. epochs ``[Wd, Wd + We)``: the encoder group's lr rises linearly to the poly value;
    3. then every group follows the poly decay.

    This is the two-step warm-up of nnU-Net's fine-tuning of self-supervised checkpoints (Wald et al., "An OpenMind
    for 3D medical vision self-supervised learning", 2025, arXiv:2412.17041, and MIC-DKFZ/nnssl: the decoder is
    warmed up first with the encoder fixed, then the whole network), written as one schedule of the epoch.
    Groups are told apart by their ``name`` (:func:`encoder_decoder_param_groups`); a group without one follows the
    decoder.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, initial_lr: float, max_epochs: int,
                 decoder_warmup_epochs: int = 0, encoder_warmup_epochs: int = 0, exponent: float = 0.9,
                 current_step: int = None):
        if max_epochs < 1 or decoder_warmup_epochs < 0 or encoder_warmup_epochs < 0:
            raise ValueError(f"need max_epochs >= 1 and warm-up epochs >= 0, got {max_epochs}, "
                             f"{decoder_warmup_epochs}, {encoder_warmup_epochs}")
        if decoder_warmup_epochs + encoder_warmup_epochs >= max_epochs:
            raise ValueError(f"the warm-ups ({decoder_warmup_epochs} + {encoder_warmup_epochs} epochs) must be shorter "
                             f"than the training ({max_epochs} epochs)")
        self.initial_lr = initial_lr
        self.max_epochs = max_epochs
        self.decoder_warmup_epochs = decoder_warmup_epochs
        self.encoder_warmup_epochs = encoder_warmup_epochs
        self.exponent = exponent
        super().__init__(optimizer, current_step)

    def lrs_at(self, epoch: int) -> Tuple[float, float]:
        """(encoder lr, decoder lr) at ``epoch``."""
        poly = self.initial_lr * (1 - min(epoch, self.max_epochs - 1) / self.max_epochs) ** self.exponent
        wd, we = self.decoder_warmup_epochs, self.encoder_warmup_epochs
        decoder = poly * min(1.0, (epoch + 1) / wd) if wd else poly
        if epoch < wd:
            encoder = 0.0
        else:
            encoder = poly * min(1.0, (epoch - wd + 1) / we) if we else poly
        return encoder, decoder

    def group_lr(self, group: dict, epoch: int) -> float:
        encoder, decoder = self.lrs_at(epoch)
        return encoder if group.get("name") == ENCODER_GROUP else decoder

