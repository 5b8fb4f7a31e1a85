"""Shared fixtures: one small synthetic dataset, planned and preprocessed once per test session through nnU-Net's
real commands, reused by every end-to-end test."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

DATASET_ID = 991
SHAPE = (40, 40, 40)
#: nnU-Net plans and dataset.json of a tiny 4-modality dataset (nnUNetPlans_tiny.json, dataset_tiny.json, ...)
TINY_FIXTURES = Path(__file__).resolve().parent / "planning" / "fixtures"


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for the module's tests: tiny networks run fastest on one thread and do not stall when other
    processes share the cores. The previous count is restored afterwards. Use with
    ``pytestmark = pytest.mark.usefixtures("single_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_tiny_preprocessed(folder: Path) -> Path:
    """Make ``folder`` a preprocessed dataset folder holding only the tiny plans and dataset.json; return it."""
    folder.mkdir(parents=True)
    (folder / "nnUNetPlans.json").write_text((TINY_FIXTURES / "nnUNetPlans_tiny.json").read_text())
    (folder / "dataset.json").write_text((TINY_FIXTURES / "dataset_tiny.json").read_text())
    return folder


@pytest.fixture()
def preprocessed(tmp_path, monkeypatch):
    """$nnUNet_preprocessed with Dataset992_X holding nnU-Net's plans and dataset.json (nothing else set)."""
    root = tmp_path / "preprocessed"
    folder = write_tiny_preprocessed(root / "Dataset992_X")
    monkeypatch.setenv("nnUNet_preprocessed", str(root))
    monkeypatch.delenv("nnUNet_raw", raising=False)
    monkeypatch.delenv("nnUNet_results", raising=False)
    return folder


@dataclass
class NnUNetEnv:
    root: Path
    env: dict
    dataset_id: int
    dataset_name: str

    @property
    def raw(self) -> Path:
        return self.root / "raw" / self.dataset_name

    @property
    def preprocessed(self) -> Path:
        return self.root / "preprocessed" / self.dataset_name

    @property
    def results(self) -> Path:
        return self.root / "results" / self.dataset_name

    def run(self, *cmd: str, check: bool = True, timeout: int = 900, env: dict | None = None
            ) -> subprocess.CompletedProcess:
        """Run a console command (nnU-Net's or ours) with this environment; on failure show its output."""
        proc = subprocess.run(list(cmd), env={**self.env, **(env or {})}, capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout ---\n{proc.stdout[-6000:]}"
                                 f"\n--- stderr ---\n{proc.stderr[-6000:]}")
        return proc


def assert_valid_predictions(pred_dir: Path, images_dir: Path, valid_labels=frozenset({0, 1, 2, 3})) -> None:
    """Every test image has a prediction with its geometry and only valid labels."""
    import numpy as np
    import SimpleITK as sitk

    cases = sorted({p.name[:-len("_0000.nii.gz")] for p in images_dir.glob("*_0000.nii.gz")})
    assert cases, images_dir
    for case in cases:
        pred_file = pred_dir / f"{case}.nii.gz"
        assert pred_file.is_file(), f"missing prediction {pred_file}"
        pred, ref = sitk.ReadImage(str(pred_file)), sitk.ReadImage(str(images_dir / f"{case}_0000.nii.gz"))
        assert pred.GetSize() == ref.GetSize()
        assert np.allclose(pred.GetSpacing(), ref.GetSpacing())
        assert np.allclose(pred.GetOrigin(), ref.GetOrigin())
        assert np.allclose(pred.GetDirection(), ref.GetDirection())
        labels = set(np.unique(sitk.GetArrayFromImage(pred)).tolist())
        assert labels <= valid_labels, f"{pred_file} has labels {labels}"


def console_script(name: str) -> str:
    """Path of a console script installed beside this Python (the venv's bin)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def nnunet_environment(root: Path) -> dict:
    from nnunetv2_ext.discovery import trainer_path

    for sub in ("raw", "preprocessed", "results"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "preprocessed"),
               nnUNet_results=str(root / "results"), nnUNet_extTrainer=trainer_path(),
               nnUNet_def_n_proc="1", nnUNet_n_proc_DA="1", nnUNet_compile="false",
               PATH=str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""))
    return env


@pytest.fixture(scope="session")
def preprocessed_example(tmp_path_factory) -> NnUNetEnv:
    """The example dataset (5 training cases, 1 test case, 4 modalities), through nnUNetv2_plan_and_preprocess and
    `nnunetv2_ext plans` (which writes nnUNetPlans_MultiEncoder.json)."""
    from nnunetv2_ext.data.synthetic import make_brats_like_dataset

    root = tmp_path_factory.mktemp("nnunet")
    env = nnunet_environment(root)
    folder = make_brats_like_dataset(root / "raw", dataset_id=DATASET_ID, n_train=5, n_test=1, shape=SHAPE, seed=0)
    example = NnUNetEnv(root, env, DATASET_ID, folder.name)
    example.run(console_script("nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "3d_fullres",
                "-np", "1", "-npfp", "1")
    example.run(console_script("nnunetv2_ext"), "plans", str(DATASET_ID))
    return example
