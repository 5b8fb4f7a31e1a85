"""The -pretrained_weights hook: nnU-Net's loader routed to the transfer for this package's trainers only."""
from __future__ import annotations

import nnunetv2.run.run_training as run_training
import pytest
import torch

from nnunetv2_ext.training.base import ExtTrainerBase
from nnunetv2_ext.training.pretrained import install_hook, register


@pytest.fixture()
def hooked(monkeypatch):
    """The hook installed over nnU-Net's original loader (restored afterwards)."""
    original = getattr(run_training.load_pretrained_weights, "__wrapped__", run_training.load_pretrained_weights)
    monkeypatch.setattr(run_training, "load_pretrained_weights", original)
    install_hook()
    return original


def _trainer(tmp_path) -> ExtTrainerBase:
    trainer = ExtTrainerBase.__new__(ExtTrainerBase)  # what load_pretrained_weights reads, no dataset
    trainer.local_rank, trainer.output_folder, trainer.resumed, trainer.was_initialized = 0, str(tmp_path), False, True
    trainer.pretrained_format = None
    net = torch.nn.Conv3d(2, 2, 3)
    trainer._plain_network = lambda: net
    return trainer


def test_a_text_file_is_named_and_exits_2_without_a_traceback(hooked, tmp_path, capsys):
    weights = tmp_path / "t.pth"
    weights.write_text("weights are on the lab server\n")
    network = torch.nn.Conv3d(2, 2, 3)
    trainer = _trainer(tmp_path / "fold_0")
    register(network, trainer)
    with pytest.raises(SystemExit) as info:
        run_training.load_pretrained_weights(network, str(weights))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"nnUNetv2_train: error: -pretrained_weights {weights}: ")
    assert "not a readable PyTorch checkpoint" in err
    assert not (tmp_path / "fold_0").exists()  # nothing written


def test_other_networks_get_nnunets_own_loader(monkeypatch):
    calls = []

    def nnunet_loader(net, fname, verbose=False):
        calls.append((net, fname))

    monkeypatch.setattr(run_training, "load_pretrained_weights", nnunet_loader)
    install_hook()
    assert run_training.load_pretrained_weights.__wrapped__ is nnunet_loader
    network = torch.nn.Conv3d(2, 2, 3)  # built by no trainer of this package
    run_training.load_pretrained_weights(network, "x.pth")
    assert calls == [(network, "x.pth")]
