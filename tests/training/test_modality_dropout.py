"""Tests for nnunetv2_ext.training.modality_dropout: the mask sampler (never drops every encoder, drops with
probability p, uniform over the non-empty proper subsets, reproducible) and the trainer's train_step (per-sample
masks reach the network, dropped channels are zeroed, the mask is cleared afterwards)."""
import itertools
import math

import pytest
import torch

from nnunetv2_ext.training.modality_dropout import (
    nnUNetTrainerMultiEncoderModalityDropout,
    nnUNetTrainerMultiEncoderModalityDropout_debug,
    sample_present_mask,
)
from tests.architectures.test_multi_encoder import tiny_input, tiny_net


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("n", [2, 3, 4, 7])
@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_masks_are_binary_and_never_empty(n, p):
    mask = sample_present_mask(5000, n, p, gen())
    assert mask.shape == (5000, n) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert bool((mask.sum(1) >= 1).all()), "a sample dropped every encoder"


@pytest.mark.parametrize("p", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_drop_rate_is_p(p):
    n_samples = 20000
    mask = sample_present_mask(n_samples, 4, p, gen(1))
    rate = float((mask.sum(1) < 4).float().mean())
    tolerance = 4 * math.sqrt(p * (1 - p) / n_samples) + 1e-12  # 4 standard errors
    assert abs(rate - p) <= tolerance, f"drop rate {rate}, expected {p}"


def test_dropped_samples_are_uniform_over_non_empty_proper_subsets():
    n, n_samples = 4, 28000
    mask = sample_present_mask(n_samples, n, 1.0, gen(2))
    counts = {}
    for row in mask.to(torch.int64).tolist():
        counts[tuple(row)] = counts.get(tuple(row), 0) + 1
    subsets = [s for s in itertools.product((0, 1), repeat=n) if 0 < sum(s) < n]
    assert set(counts) == set(subsets)  # all 14, and never the empty or the full set
    expected = n_samples / len(subsets)
    chi2 = sum((counts[s] - expected) ** 2 / expected for s in subsets)
    assert chi2 < 36.1, f"chi2 {chi2} over 13 degrees of freedom (p < 0.001)"


def test_seeded_masks_are_reproducible():
    a, b = sample_present_mask(64, 4, 0.5, gen(7)), sample_present_mask(64, 4, 0.5, gen(7))
    assert torch.equal(a, b)
    assert not torch.equal(a, sample_present_mask(64, 4, 0.5, gen(8)))
    g = gen(7)
    first, second = sample_present_mask(64, 4, 0.5, g), sample_present_mask(64, 4, 0.5, g)
    assert not torch.equal(first, second)  # one generator goes on drawing


@pytest.mark.parametrize("n, p", [(4, -0.1), (4, 1.5), (1, 0.5), (63, 0.5)])
def test_invalid_arguments_are_refused(n, p):
    with pytest.raises(ValueError):
        sample_present_mask(2, n, p)


def bare_trainer(network, p=1.0):
    """The trainer's train_step on a tiny network, without plans or data (only what train_step reads)."""
    trainer = object.__new__(nnUNetTrainerMultiEncoderModalityDropout)
    trainer.network, trainer.device, trainer.is_ddp, trainer.local_rank = network, torch.device("cpu"), False, 0
    trainer.grad_scaler = None
    trainer.optimizer = torch.optim.SGD(network.parameters(), lr=0.0)
    trainer.loss = lambda output, target: sum((o * t).sum() for o, t in zip(output, target))
    trainer.modality_dropout_p = p
    return trainer


def test_train_step_masks_each_sample_and_clears_the_mask():
    torch.set_num_threads(1)
    net = tiny_net(deep_supervision=True)
    seen = {}

    def record(module, args):
        seen["data"], seen["present"] = args[0].detach().clone(), module.inference_present.clone()

    trainer = bare_trainer(net, p=1.0)
    data = tiny_input() + 3.0  # no zeros in the input
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        target = [torch.randn(o.shape, generator=g) for o in net(data)]
    net.encoder.register_forward_pre_hook(record)
    batch = {"data": data, "target": target}
    out = trainer.train_step(batch)
    assert batch["data"] is data and torch.all(data != 0), "the caller's batch was changed"
    assert set(out) == {"loss"}
    present = seen["present"]
    assert present.shape == (2, 4) and bool((present.sum(1) >= 1).all()) and bool((present.sum(1) < 4).all())
    for s in range(2):
        for c in range(4):
            if present[s, c]:
                assert torch.equal(seen["data"][s, c], data[s, c])
            else:
                assert torch.count_nonzero(seen["data"][s, c]) == 0, f"sample {s} saw dropped modality {c}"
    assert net.encoder.inference_present is None, "the training mask outlived the step"
    assert not [n for n, p in net.named_parameters() if p.grad is None]
    for i in range(4):  # an encoder dropped in both samples gets zero gradient, one present somewhere a real one
        grads = [p.grad for n, p in net.named_parameters() if n.startswith(f"encoder.encoders.{i}.")]
        assert any(torch.count_nonzero(gr) for gr in grads) == bool(present[:, i].any())


def test_trainer_masks_are_seeded_per_rank():
    masks = {}
    for rank in (0, 0, 1):
        trainer = bare_trainer(tiny_net(), p=0.5)
        trainer.local_rank = rank
        masks.setdefault(rank, []).append(sample_present_mask(32, 4, 0.5, trainer._mask_generator()))
    assert torch.equal(masks[0][0], masks[0][1])
    assert not torch.equal(masks[0][0], masks[1][0])


def test_debug_variant():
    t = nnUNetTrainerMultiEncoderModalityDropout_debug
    assert (t.num_epochs, t.num_iterations_per_epoch, t.num_val_iterations_per_epoch, t.save_every) == (3, 4, 2, 1)
    assert t.modality_dropout_p == 0.5 and issubclass(t, nnUNetTrainerMultiEncoderModalityDropout)
