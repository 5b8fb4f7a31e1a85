"""Tests for nnunetv2_ext.training.backbones: what the trainers take from the backbone registry, and the trainer list
nnU-Net's discovery re-exports (the trainers' runs are in tests/e2e/test_backbones_e2e.py)."""
import inspect

import pytest
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_ext.planning.backbones import BACKBONES
from nnunetv2_ext.training import backbones
from nnunetv2_ext.training.backbones import nnUNetTrainerBackbone


def test_all_lists_exactly_the_trainers_defined_here():
    defined = {name for name, obj in vars(backbones).items()
               if inspect.isclass(obj) and issubclass(obj, nnUNetTrainer) and obj.__module__ == backbones.__name__
               and name.startswith("nnUNetTrainer")}
    assert sorted(backbones.__all__) == sorted(defined)
    assert len(set(backbones.__all__)) == len(backbones.__all__)


def test_every_trainer_backbone_is_a_registry_row():
    for name in backbones.__all__:
        backbone = getattr(backbones, name).backbone
        assert backbone is None or backbone in BACKBONES, (name, backbone)


def test_a_trainer_naming_an_unknown_backbone_fails_when_defined():
    with pytest.raises(ValueError, match=r"nnUNetTrainerTypo\.backbone: unknown backbone 'swinunetr'; available: "
                                         r"swin_unetr, .*BACKBONES"):
        type("nnUNetTrainerTypo", (nnUNetTrainerBackbone,), {"backbone": "swinunetr"})
