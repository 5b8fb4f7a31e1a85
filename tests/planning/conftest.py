"""Fixtures of the planning tests: nnU-Net's plans and dataset.json of a tiny 4-modality dataset."""
import json

import pytest

from tests.conftest import TINY_FIXTURES


@pytest.fixture()
def plans():
    return json.loads((TINY_FIXTURES / "nnUNetPlans_tiny.json").read_text())


@pytest.fixture()
def dataset_json():
    return json.loads((TINY_FIXTURES / "dataset_tiny.json").read_text())
