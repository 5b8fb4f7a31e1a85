"""Fixtures shared by the transfer tests (test_transfer.py, test_report.py)."""
from __future__ import annotations

import pytest

from nnunetv2_ext.transfer import read_checkpoint
from tests.transfer.test_transfer import PLAIN_CLASS, clone_state, plain, pretrained, save_nnunet


@pytest.fixture(scope="module")
def plain_source(tmp_path_factory):
    """A 2-modality (T1, FLAIR) PlainConvUNet checkpoint saved nnU-Net style, and its state."""
    net = pretrained(plain(2), seed=10)
    path = tmp_path_factory.mktemp("plain") / "checkpoint_final.pth"
    save_nnunet(path, net, ["T1", "FLAIR"], PLAIN_CLASS)
    return read_checkpoint(path), clone_state(net)
