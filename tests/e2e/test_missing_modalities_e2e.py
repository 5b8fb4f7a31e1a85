"""End to end on the synthetic example dataset: nnUNetv2_train with modality dropout, then prediction from a subset
of the modalities (T1 and FLAIR only: the other channel files do not exist), and with every modality the same
segmentation as nnUNetv2_predict."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tests.conftest import NnUNetEnv, assert_valid_predictions, console_script

TRAINER = "nnUNetTrainerMultiEncoderModalityDropout_debug"
PLANS = "nnUNetPlans_MultiEncoder"
FOLD = 2  # folds 0 and 1 belong to other end-to-end tests
CASE = "SynBraTS_005"
NNUNET_VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer", "nnUNet_compile")


@pytest.fixture(scope="module")
def trained(preprocessed_example: NnUNetEnv) -> NnUNetEnv:
    example = preprocessed_example
    example.run(console_script("nnUNetv2_train"), str(example.dataset_id), "3d_fullres", str(FOLD), "-tr", TRAINER,
                "-p", PLANS, "-device", "cpu")
    return example


@pytest.fixture
def env(trained: NnUNetEnv, monkeypatch) -> NnUNetEnv:
    """nnU-Net's paths for in-process calls (nnunetv2.paths reads the environment when used)."""
    for name in NNUNET_VARS:
        monkeypatch.setenv(name, trained.env[name])
    return trained


def model_folder(env: NnUNetEnv) -> str:
    from nnunetv2_ext.inference.subset_predict import model_folder_from_args

    folder = model_folder_from_args(env.dataset_id, TRAINER, PLANS, "3d_fullres")
    assert Path(folder) == env.results / f"{TRAINER}__{PLANS}__3d_fullres"
    return folder


def test_training_used_modality_dropout(trained: NnUNetEnv):
    fold = trained.results / f"{TRAINER}__{PLANS}__3d_fullres" / f"fold_{FOLD}"
    assert (fold / "checkpoint_final.pth").is_file()
    logs = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert "Modality dropout: p = 0.5 per sample over 4 encoders" in logs


def test_predict_from_t1_and_flair_only(env: NnUNetEnv, tmp_path: Path):
    """Through the console command: `nnunetv2_ext predict --modalities T1,FLAIR` with only those files present."""
    images = tmp_path / "in"
    images.mkdir()
    for channel in (0, 3):  # T1, FLAIR
        shutil.copy(env.raw / "imagesTs" / f"{CASE}_{channel:04d}.nii.gz", images)
    out = tmp_path / "pred"
    proc = env.run(console_script("nnunetv2_ext"), "predict", "-i", str(images), "-o", str(out), "-d",
                   str(env.dataset_id), "-f", str(FOLD), "-tr", TRAINER, "-p", PLANS, "--modalities", "T1,FLAIR",
                   "-device", "cpu", "-nps", "1")
    assert "wrote 1 segmentations" in proc.stdout
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"{CASE}.nii.gz"]
    assert_valid_predictions(out, images)
    assert "modality dropout" not in proc.stderr  # trained with dropout: no warning


def test_every_modality_matches_nnunet_predict(env: NnUNetEnv, tmp_path: Path):
    from nnunetv2_ext.inference.subset_predict import predict_with_subset

    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    predict_with_subset(model_folder(env), env.raw / "imagesTs", ours, "T1,T1Gd,T2,FLAIR", folds=(FOLD,))
    env.run(console_script("nnUNetv2_predict"), "-i", str(env.raw / "imagesTs"), "-o", str(theirs),
            "-d", str(env.dataset_id), "-c", "3d_fullres", "-f", str(FOLD), "-tr", TRAINER, "-p", PLANS,
            "-device", "cpu", "-npp", "1", "-nps", "1")
    a = sitk.ReadImage(str(ours / f"{CASE}.nii.gz"))
    b = sitk.ReadImage(str(theirs / f"{CASE}.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
    assert a.GetSpacing() == b.GetSpacing() and a.GetOrigin() == b.GetOrigin()


def test_subset_errors(env: NnUNetEnv, tmp_path: Path):
    from nnunetv2_ext.inference.subset_predict import predict_with_subset

    folder = model_folder(env)
    images = tmp_path / "in"
    images.mkdir()
    shutil.copy(env.raw / "imagesTs" / f"{CASE}_0000.nii.gz", images)
    with pytest.raises(ValueError, match=r"unknown modalities \['T3'\].*\['T1', 'T1Gd', 'T2', 'FLAIR'\]"):
        predict_with_subset(folder, images, tmp_path / "o1", ["T1", "T3"], folds=(FOLD,))
    with pytest.raises(ValueError, match=rf"case {CASE} lacks the present modalities \['T2 \({CASE}_0002"):
        predict_with_subset(folder, images, tmp_path / "o2", ["T1", "T2"], folds=(FOLD,))
    (tmp_path / "o3").mkdir()
    (tmp_path / "o3" / "old.nii.gz").write_text("")
    with pytest.raises(FileExistsError, match="not empty"):
        predict_with_subset(folder, images, tmp_path / "o3", ["T1"], folds=(FOLD,))
    with pytest.raises(FileNotFoundError, match="no trained model"):
        from nnunetv2_ext.inference.subset_predict import model_folder_from_args
        model_folder_from_args(env.dataset_id, "nnUNetTrainerMultiEncoder_nonexistent", PLANS, "3d_fullres")
