"""Tests for nnunetv2_ext.run.train without starting processes: nnU-Net's parser reaches our run_training, a single
process is exactly nnU-Net's run_training, and the launch errors name the flags and variables to fix. The torchrun runs
themselves are in tests/e2e/test_torchrun_e2e.py."""
from __future__ import annotations

import pytest
import torch

from nnunetv2_ext.distributed import TorchrunEnv
from nnunetv2_ext.run import train

TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")


@pytest.fixture(autouse=True)
def _restore_threads():
    """nnU-Net's parser sets torch's thread count for -device cpu."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_torchrun(monkeypatch):
    for var in TORCHRUN_VARS:
        monkeypatch.delenv(var, raising=False)


def test_single_process_is_nnunets_run_training(no_torchrun, monkeypatch):
    calls = []
    monkeypatch.setattr(train, "_NNUNET_RUN_TRAINING", lambda *a, **k: calls.append((a, k)))
    train.main(["901", "3d_fullres", "all", "-tr", "nnUNetTrainerVolumeFusion", "-p", "P", "--c", "-device", "cpu"])
    (args, kwargs), = calls
    assert args[:5] == ("901", "3d_fullres", "all", "nnUNetTrainerVolumeFusion", "P")
    assert args[6] == 1 and args[8] is True  # num_gpus, continue_training (nnU-Net's positional order)
    assert kwargs["device"] == torch.device("cpu")


def test_several_gpus_without_torchrun_is_refused(no_torchrun):
    with pytest.raises(ValueError, match=r"not launched by torchrun \(RANK, LOCAL_RANK, WORLD_SIZE not set\).*"
                                         r"torchrun --nproc_per_node 2 -m nnunetv2_ext.run.train"):
        train.main(["901", "3d_fullres", "0", "-num_gpus", "2", "-device", "cpu"])


def test_num_gpus_must_match_torchrun(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ValueError, match="-num_gpus 3 but torchrun started WORLD_SIZE=4"):
        train.main(["901", "3d_fullres", "0", "-num_gpus", "3", "-device", "cpu"])


def test_partial_torchrun_environment_is_refused(no_torchrun, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ValueError, match="LOCAL_RANK, WORLD_SIZE not: launch with torchrun"):
        train.main(["901", "3d_fullres", "0", "-device", "cpu"])


def test_worker_device():
    env = TorchrunEnv(rank=5, local_rank=1, world_size=8, local_world_size=4)
    assert train.worker_device(torch.device("cpu"), env) == torch.device("cpu")
    with pytest.raises(ValueError, match="cuda .NCCL. or cpu .Gloo."):
        train.worker_device(torch.device("mps"), env)
    if torch.cuda.device_count() > 1:
        assert train.worker_device(torch.device("cuda"), env) == torch.device("cuda", 1)
    else:
        with pytest.raises(ValueError, match=r"LOCAL_RANK=1 but this node sees .* --nproc_per_node.*"
                                             r"CUDA_VISIBLE_DEVICES"):
            train.worker_device(torch.device("cuda"), env)


def test_setup_py_console_scripts_resolve():
    """Every console script setup.py declares (nnunetv2_ext_train among them) names a function that exists (the
    installed entry points are only refreshed by a reinstall, so the declaration itself is checked)."""
    import importlib
    import re
    from pathlib import Path

    setup = (Path(__file__).resolve().parents[2] / "setup.py").read_text()
    scripts = dict(re.findall(r'"([\w-]+)=([\w.]+:\w+)"', setup))
    assert scripts["nnunetv2_ext_train"] == "nnunetv2_ext.run.train:main"
    for target in scripts.values():
        module, attr = target.split(":")
        assert callable(getattr(importlib.import_module(module), attr)), target
