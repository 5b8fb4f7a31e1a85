"""The fine-tuning schedule: decoder-first warm-up, then the encoders, then poly decay; parameter groups."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from nnunetv2_ext.architectures.multi_encoder import MultiEncoderUNet
from nnunetv2_ext.training.lr_schedules import (
    DECODER_GROUP,
    ENCODER_GROUP,
    FineTuneWarmupLRScheduler,
    StepLRScheduler,
    WarmupCosineLRScheduler,
    encoder_decoder_param_groups,
    warmup_epochs,
)

KW = dict(n_stages=3, features_per_stage=[4, 8, 16], conv_op=nn.Conv2d, kernel_sizes=3, strides=[1, 2, 2],
          num_classes=3, n_conv_per_stage=1, n_conv_per_stage_decoder=1, conv_bias=True, norm_op=nn.InstanceNorm2d,
          norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
          deep_supervision=True)


def _net() -> MultiEncoderUNet:
    return MultiEncoderUNet(2, modality_names=["T1", "FLAIR"], **KW)


def test_every_parameter_is_in_exactly_one_group():
    net = _net()
    groups = encoder_decoder_param_groups(net)
    assert [g["name"] for g in groups] == [DECODER_GROUP, ENCODER_GROUP]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(net.parameters()))
    encoder = {id(p) for p in net.encoder.parameters()}
    assert {id(p) for p in groups[1]["params"]} == encoder
    with pytest.raises(ValueError, match="no encoder"):
        encoder_decoder_param_groups(nn.Sequential(nn.Conv2d(1, 1, 1)))


def _lrs(scheduler, optimizer, epoch):
    scheduler.step(epoch)
    return {g["name"]: g["lr"] for g in optimizer.param_groups}


def test_decoder_warms_up_first_then_the_encoder_then_poly():
    net = _net()
    optimizer = torch.optim.SGD(encoder_decoder_param_groups(net), 0.01, momentum=0.95)
    scheduler = FineTuneWarmupLRScheduler(optimizer, 0.01, max_epochs=20, decoder_warmup_epochs=2,
                                          encoder_warmup_epochs=2)
    poly = [0.01 * (1 - e / 20) ** 0.9 for e in range(20)]
    lrs = [_lrs(scheduler, optimizer, e) for e in range(20)]
    assert lrs[0][ENCODER_GROUP] == lrs[1][ENCODER_GROUP] == 0          # encoders held
    assert lrs[0][DECODER_GROUP] == pytest.approx(poly[0] / 2)          # decoder ramps up
    assert lrs[1][DECODER_GROUP] == pytest.approx(poly[1])
    assert lrs[2][ENCODER_GROUP] == pytest.approx(poly[2] / 2)          # then the encoders
    assert all(lrs[e][ENCODER_GROUP] == pytest.approx(poly[e]) == lrs[e][DECODER_GROUP] for e in range(3, 20))
    # a pure function of the epoch: a resumed run (--c) gets the same lr
    resumed = FineTuneWarmupLRScheduler(optimizer, 0.01, 20, 2, 2)
    assert _lrs(resumed, optimizer, 2) == lrs[2]


def test_frozen_encoder_does_not_move_but_gets_gradients():
    torch.manual_seed(0)
    net = _net()  # deep supervision on, as nnU-Net trains: every seg layer is used
    optimizer = torch.optim.SGD(encoder_decoder_param_groups(net), 0.01, momentum=0.95, weight_decay=3e-5)
    scheduler = FineTuneWarmupLRScheduler(optimizer, 0.01, 10, 1, 1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    scheduler.step(0)
    loss = sum(out.square().mean() for out in net(torch.randn(2, 2, 16, 16)))
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())           # DDP: every parameter gets a gradient
    optimizer.step()
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoder."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder.stages."))


def test_warmup_epochs_and_bad_arguments():
    assert warmup_epochs(500, 0.05, 0.05) == (25, 25) and warmup_epochs(10, 0.05, 0) == (1, 0)
    assert warmup_epochs(3, 0.05, 0.05) == (1, 1)
    assert warmup_epochs(2, 0.05, 0.05) == (1, 0)  # one epoch of poly decay is always left
    assert warmup_epochs(1, 0.05, 0.05) == (0, 0)
    with pytest.raises(ValueError, match="lie in"):
        warmup_epochs(10, 1.5, 0)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], 0.1)
    with pytest.raises(ValueError, match="shorter than the training"):
        FineTuneWarmupLRScheduler(optimizer, 0.1, 4, 2, 2)


def test_warmup_cosine_schedule():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=4e-4)
    sched = WarmupCosineLRScheduler(opt, 4e-4, max_steps=10, warmup_steps=2)
    lrs = []
    for epoch in range(10):
        sched.step(epoch)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(2e-4) and lrs[1] == pytest.approx(4e-4) and lrs[2] == pytest.approx(4e-4)
    assert all(a > b for a, b in zip(lrs[2:], lrs[3:]))  # cosine decay after the warm-up
    assert sched.lr_at(10) == pytest.approx(0.0, abs=1e-12)


def test_step_schedule_halves_every_step_epochs():
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = StepLRScheduler(opt, 1e-3, step_epochs=3)
    assert [sched.lr_at(e) for e in (0, 2, 3, 6)] == [1e-3, 1e-3, 5e-4, 2.5e-4]
    sched.step(4)
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-4)
    with pytest.raises(ValueError, match="step_epochs >= 1"):
        StepLRScheduler(opt, 1e-3, step_epochs=0)
