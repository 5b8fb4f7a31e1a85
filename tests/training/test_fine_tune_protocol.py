"""Regression test: fine-tuning from a pretext checkpoint with nnUNetTrainerMultiEncoderSSL's default protocol (what
is transferred, the warm-up) is not worse than training from scratch, on the same tiny data and seeds.

The pretext checkpoint is made the harmful way the proxy benchmark once did: Volume Fusion under nnU-Net's SGD
(lr 1e-2, momentum 0.99), whose decoder, transferred whole, cost the fine-tuned network most of its Dice. The loop is
plain PyTorch on the package's own pieces (MultiEncoderUNet, volume_fusion, transfer_weights, the trainer's
parameter groups and schedule, nnU-Net's Dice + CE), in 2D at 32^2, a few seconds on one core.
"""
from __future__ import annotations

import pytest
import torch
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from torch import nn

from nnunetv2_ext.architectures.multi_encoder import MultiEncoderUNet
from nnunetv2_ext.pretext.volume_fusion import VolumeFusionConfig, volume_fusion
from nnunetv2_ext.training.lr_schedules import FineTuneWarmupLRScheduler, encoder_decoder_param_groups, warmup_epochs
from nnunetv2_ext.training.multi_encoder import nnUNetTrainerMultiEncoderSSL as SSL
from nnunetv2_ext.transfer import transfer_weights

SIZE, PRETRAIN_STEPS, FINE_TUNE_STEPS, BATCH = 32, 200, 150, 4
pytestmark = pytest.mark.usefixtures("single_thread")


def _net(n_out: int, seed: int) -> MultiEncoderUNet:
    torch.manual_seed(seed)
    net = MultiEncoderUNet(2, n_stages=3, features_per_stage=[8, 16, 32], conv_op=nn.Conv2d, kernel_sizes=3,
                           strides=[1, 2, 2], num_classes=n_out, n_conv_per_stage=1, n_conv_per_stage_decoder=1,
                           conv_bias=True, norm_op=nn.InstanceNorm2d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                           nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, modality_names=["T1", "FLAIR"])
    net.apply(net.initialize)
    return net


def _images(n: int, seed: int):
    """Two noisy channels with discs: the 'lesion' is bright in both channels (label 1), distractors in one only."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    images = 0.3 * torch.randn(n, 2, SIZE, SIZE, generator=g)
    labels = torch.zeros(n, 1, SIZE, SIZE, dtype=torch.long)
    for i in range(n):
        for lesion in (True, False, False):
            cy, cx = torch.randint(6, SIZE - 6, (2,), generator=g).tolist()
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= int(torch.randint(3, 7, (1,), generator=g)) ** 2
            if lesion:
                images[i, :, disc] += 1.0
                labels[i, 0, disc] = 1
            else:
                images[i, int(torch.randint(0, 2, (1,), generator=g)), disc] += 1.0
    return images, labels


LOSS = DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
                      weight_dice=1, dice_class=MemoryEfficientSoftDiceLoss)


@pytest.fixture(scope="module")
def collapsed_vf_checkpoint(single_thread):
    """Volume Fusion pretrained with nnU-Net's SGD (the optimiser that collapses it)."""
    unlabelled, _ = _images(32, seed=0)
    net = _net(VolumeFusionConfig().k + 1, seed=1)
    optimizer = torch.optim.SGD(net.parameters(), 1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
    g = torch.Generator().manual_seed(0)
    for _ in range(PRETRAIN_STEPS):
        fused, label, _ = volume_fusion(unlabelled[torch.randint(0, len(unlabelled), (BATCH,), generator=g)],
                                        VolumeFusionConfig(), g)
        loss = LOSS(net(fused), label)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.state_dict()


def _fine_tune(pretrained, scope: str, decoder_warmup: float, encoder_warmup: float) -> float:
    """Fine-tune on 4 labelled images as the SSL trainer does (SGD, its momentum/weight decay, its parameter groups
    and schedule, one scheduler step per iteration); Dice of label 1 on 16 held-out images."""
    train, test = _images(4, seed=1), _images(16, seed=2)
    net = _net(2, seed=7)
    if pretrained is not None:
        state, _ = transfer_weights(pretrained, net, scope=scope)
        net.load_state_dict(state)
    optimizer = torch.optim.SGD(encoder_decoder_param_groups(net), SSL.initial_lr, momentum=SSL.momentum,
                                nesterov=True, weight_decay=SSL.weight_decay)
    scheduler = FineTuneWarmupLRScheduler(optimizer, SSL.initial_lr, FINE_TUNE_STEPS,
                                          *warmup_epochs(FINE_TUNE_STEPS, decoder_warmup, encoder_warmup),
                                          exponent=SSL.poly_exponent)
    g = torch.Generator().manual_seed(3)
    for step in range(FINE_TUNE_STEPS):
        scheduler.step(step)
        idx = torch.randint(0, len(train[0]), (BATCH,), generator=g)
        loss = LOSS(net(train[0][idx]), train[1][idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        pred = net(test[0]).argmax(1, keepdim=True) == 1
    truth = test[1] == 1
    return float(2 * (pred & truth).sum() / (pred.sum() + truth.sum()))


@pytest.fixture(scope="module")
def scratch_dice(collapsed_vf_checkpoint):
    return _fine_tune(None, "all", 0.0, 0.0)


def test_default_protocol_is_not_worse_than_scratch(collapsed_vf_checkpoint, scratch_dice):
    scratch = scratch_dice
    default = _fine_tune(collapsed_vf_checkpoint, SSL.transfer_scope, SSL.decoder_warmup_fraction,
                         SSL.encoder_warmup_fraction)
    assert scratch > 0.6, scratch  # the task is learnable in the budget
    assert default >= scratch - 0.03, (default, scratch)


def test_the_check_sees_the_old_protocol(collapsed_vf_checkpoint, scratch_dice):
    """The old protocol (whole network transferred, no warm-up) is what the test above must catch."""
    scratch = scratch_dice
    old = _fine_tune(collapsed_vf_checkpoint, "all", 0.0, 0.0)
    assert old < scratch - 0.03, (old, scratch)
