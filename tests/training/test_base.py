"""Shared trainer behaviour: atomic checkpoints, the 1-modality refusal, nnU-Net's optimiser from class attributes,
the one ``_debug`` schedule."""
from __future__ import annotations

import inspect

import pytest
import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

import nnunetv2_ext.discovery.nnunetv2_ext_trainers as shim
from nnunetv2_ext.training.backbones import nnUNetTrainerBackbone
from nnunetv2_ext.training.base import DebugScheduleMixin, ExtTrainerBase, NoMirroringMixin
from nnunetv2_ext.training.cross_modality import nnUNetTrainerCrossModality
from nnunetv2_ext.training.multi_encoder import nnUNetTrainerMultiEncoder
from nnunetv2_ext.training.proxy import nnUNetTrainerProxyVolumeFusionSGD_cpu2d
from nnunetv2_ext.training.swin_proxies import nnUNetTrainerSwinProxies_debug
from nnunetv2_ext.training.vanilla import nnUNetTrainerVanilla


def _bare_trainer() -> ExtTrainerBase:
    trainer = ExtTrainerBase.__new__(ExtTrainerBase)  # no dataset needed to exercise save_checkpoint
    trainer.local_rank = 0
    return trainer


def test_checkpoint_is_replaced_only_when_complete(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint_latest.pth"
    target.write_bytes(b"previous good checkpoint")

    def write(self, filename):
        with open(filename, "wb") as f:
            f.write(b"new checkpoint")

    monkeypatch.setattr(nnUNetTrainer, "save_checkpoint", write)
    _bare_trainer().save_checkpoint(str(target))
    assert target.read_bytes() == b"new checkpoint"
    assert not (tmp_path / "checkpoint_latest.pth.partial").exists()


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), PermissionError(13, "Read-only file system"),
                                   KeyboardInterrupt()])
def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch, error):
    target = tmp_path / "checkpoint_latest.pth"
    target.write_bytes(b"previous good checkpoint")

    def fail_half_way(self, filename):
        with open(filename, "wb") as f:
            f.write(b"half a chec")
        raise error

    monkeypatch.setattr(nnUNetTrainer, "save_checkpoint", fail_half_way)
    with pytest.raises(type(error)):
        _bare_trainer().save_checkpoint(str(target))
    assert target.read_bytes() == b"previous good checkpoint"
    assert not (tmp_path / "checkpoint_latest.pth.partial").exists()


def test_single_modality_dataset_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    with pytest.raises(ValueError, match="at least 2 modalities"):
        nnUNetTrainerMultiEncoder({}, "3d_fullres", 0, {"channel_names": {"0": "CT"}, "labels": {"background": 0}},
                                  torch.device("cpu"))
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_pretrained_weights_into_a_finished_run_are_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.delenv("NNUNETV2_EXT_OVERWRITE", raising=False)
    (tmp_path / "checkpoint_final.pth").write_bytes(b"finished run")
    trainer = _bare_trainer()
    trainer.output_folder, trainer.resumed = str(tmp_path), False
    with pytest.raises(RuntimeError, match="pass --c to continue"):
        trainer.load_pretrained_weights(str(tmp_path / "weights.pth"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_final.pth"]


# ----------------------------------------------------------------------------------------------- optimiser and schedule


def _optimizer_trainer(cls: type) -> nnUNetTrainer:
    """A bare ``cls`` (no plans, no dataset) with what ``configure_optimizers`` reads: a tiny network, and nnU-Net's
    ``__init__`` defaults for the hyper-parameters the class does not set itself."""
    trainer = cls.__new__(cls)
    trainer.network = torch.nn.Conv3d(2, 3, 3)
    for name, default in (("initial_lr", 1e-2), ("weight_decay", 3e-5), ("num_epochs", 1000)):
        if getattr(cls, name, None) is None:
            setattr(trainer, name, default)
    return trainer


def _hyperparameters(optimizer: torch.optim.Optimizer, scheduler) -> tuple:
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    return type(optimizer), groups, type(scheduler), scheduler.initial_lr, scheduler.max_steps, scheduler.exponent


@pytest.mark.parametrize("cls", [nnUNetTrainerVanilla, nnUNetTrainerBackbone, nnUNetTrainerProxyVolumeFusionSGD_cpu2d],
                         ids=lambda c: c.__name__)
def test_default_optimizer_is_nnunets(cls):
    trainer = _optimizer_trainer(cls)
    assert (cls.momentum, cls.poly_exponent) == (0.99, 0.9)
    assert _hyperparameters(*trainer.configure_optimizers()) == \
        _hyperparameters(*nnUNetTrainer.configure_optimizers(trainer))


def test_multi_encoder_optimizer_is_the_papers():
    """Taheri Otaghsara et al. 2025 sec. 4.1.1 / eq. (2): SGD lr 1e-2, momentum 0.95, Nesterov, weight decay 3e-5,
    poly decay with exponent 0.9 over 500 epochs."""
    optimizer, scheduler = _optimizer_trainer(nnUNetTrainerMultiEncoder).configure_optimizers()
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.SGD) and isinstance(scheduler, PolyLRScheduler)
    assert (group["momentum"], group["nesterov"], group["weight_decay"]) == (0.95, True, 3e-5)
    assert (scheduler.initial_lr, scheduler.max_steps, scheduler.exponent) == (1e-2, 500, 0.9)


@pytest.mark.parametrize("base", [nnUNetTrainerVanilla, nnUNetTrainerMultiEncoder, nnUNetTrainerBackbone],
                         ids=lambda c: c.__name__)
def test_a_subclass_changes_momentum_and_poly_exponent_with_one_line_each(base):
    variant = type(f"{base.__name__}Variant", (base,), {"momentum": 0.5, "poly_exponent": 2.0, "num_epochs": 10})
    optimizer, scheduler = _optimizer_trainer(variant).configure_optimizers()
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.SGD) and isinstance(scheduler, PolyLRScheduler)
    assert (group["momentum"], group["nesterov"]) == (0.5, True)
    assert (scheduler.max_steps, scheduler.exponent) == (10, 2.0)
    scheduler.step(5)
    assert group["lr"] == pytest.approx(scheduler.initial_lr * (1 - 5 / 10) ** 2.0)


def test_cross_modality_poly_decay_reads_poly_exponent():
    variant = type("CrossModalityVariant", (nnUNetTrainerCrossModality,), {"poly_exponent": 2.0})
    optimizer, scheduler = _optimizer_trainer(variant).configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam) and scheduler.exponent == 2.0
    assert _optimizer_trainer(nnUNetTrainerCrossModality).configure_optimizers()[1].exponent == 0.9


# ------------------------------------------------------------------------------------------------ the _debug schedule

DEBUG_TRAINERS = sorted((c for n, c in vars(shim).items() if n.endswith("_debug") and inspect.isclass(c)),
                        key=lambda c: c.__name__)


def test_the_shim_exports_the_debug_trainers():
    assert len(DEBUG_TRAINERS) >= 14  # the parametrised checks below must not run over nothing


@pytest.mark.parametrize("cls", DEBUG_TRAINERS, ids=lambda c: c.__name__)
def test_debug_trainers_share_one_schedule(cls):
    assert issubclass(cls, DebugScheduleMixin) and issubclass(cls, NoMirroringMixin)
    assert (cls.num_epochs, cls.num_iterations_per_epoch, cls.num_val_iterations_per_epoch, cls.save_every) == \
        (3, 4, 2, 1)


@pytest.mark.parametrize("cls", DEBUG_TRAINERS, ids=lambda c: c.__name__)
def test_debug_trainers_disable_mirroring(cls, monkeypatch):
    def nnunets(self):  # nnU-Net's answer for a 3D patch: mirror on every axis, in training and at test time
        self.inference_allowed_mirroring_axes = (0, 1, 2)
        return "rotation", False, (8, 8, 8), (0, 1, 2)

    monkeypatch.setattr(nnUNetTrainer, "configure_rotation_dummyDA_mirroring_and_inital_patch_size", nnunets)
    trainer = cls.__new__(cls)
    rotation, dummy_2d, patch, mirror_axes = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    assert (rotation, dummy_2d, patch) == ("rotation", False, (8, 8, 8))
    assert mirror_axes is None and trainer.inference_allowed_mirroring_axes is None


def test_swin_proxies_debug_keeps_its_short_warm_up():
    assert nnUNetTrainerSwinProxies_debug.warmup_epochs == 1
