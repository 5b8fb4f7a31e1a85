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


# ------------------------------------------------------------------------------------------ the 15-subset benchmark

VANILLA_DROPOUT = "nnUNetTrainerVanillaChannelDropout_debug"


def _scores_equal_evaluate(env: NnUNetEnv, out: Path, rows: list) -> None:
    from nnunetv2_ext.evaluation.metrics import evaluate_folders
    from nnunetv2_ext.evaluation.missing_modality import ordered_subsets, subset_key

    subsets = ordered_subsets(["T1", "T1Gd", "T2", "FLAIR"])
    for i in (0, 6, 14):  # T2 alone, T1 + FLAIR (predicted again on the rerun), all four
        subset, row = subsets[i], rows[i]
        direct = evaluate_folders(env.raw / "labelsTs", out / "predictions" / subset_key(subset),
                                  env.raw / "dataset.json")
        for region in ("WT", "TC", "ET"):
            for metric in ("dice", "hd95_mm", "sensitivity", "precision"):
                assert row[f"{region}_{metric}"] == pytest.approx(direct["mean"][region][metric], nan_ok=True)


def test_benchmark_missing_modality_cli_table_heatmap_and_rerun(env: NnUNetEnv, tmp_path: Path):
    """The command predicts all 15 subsets, its scores are `evaluate`'s on the same predictions, the heat map is drawn
    from 15 rows, and a rerun predicts only what has no done marker."""
    import json

    from nnunetv2_ext.evaluation.missing_modality import run_missing_modality

    out = tmp_path / "bench"
    cases = tmp_path / "test_cases.txt"
    cases.write_text(f"# the test list\n{CASE}\n")
    proc = env.run(console_script("nnunetv2_ext"), "benchmark", "missing-modality", "-i", str(env.raw / "imagesTs"),
                   "--ref", str(env.raw / "labelsTs"), "--cases", str(cases), "-o", str(out), "-d",
                   str(env.dataset_id), "-f", str(FOLD), "-tr", TRAINER, "-p", PLANS, "-device", "cpu")
    assert "average (15 subsets): WT" in proc.stdout and "predicted now: 15 subset(s)" in proc.stdout
    done = sorted((out / "predictions").glob("*/.done"))
    assert len(done) == 15
    md = (out / "missing_modality.md").read_text()
    assert "trained with modality dropout (p = 0.5" in md and "RFNet / mmFormer" in md
    assert md.count("\n| ○ | ○ | ○ | ● |") == 1  # T2 alone (columns FLAIR, T1, T1Gd, T2) is the first row
    heat = json.loads((out / "missing_modality_heatmap.json").read_text())
    assert len(heat["rows"]) == 15 and heat["rows"][0] == "T2" and heat["rows"][-1] == "T1 + T1Gd + T2 + FLAIR"
    assert (out / "missing_modality_heatmap.png").stat().st_size > 0
    assert len((out / "missing_modality.csv").read_text().splitlines()) == 17  # header, 15 subsets, average

    stamps = {p: p.stat().st_mtime_ns for p in done}
    (out / "predictions" / "T1+FLAIR" / ".done").unlink()  # as if interrupted in that subset
    result = run_missing_modality(model_folder(env), env.raw / "imagesTs", env.raw / "labelsTs", out, folds=(FOLD,),
                                  cases_file=str(cases))
    assert result["predicted"] == ["T1+FLAIR"]
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p.parent.name != "T1+FLAIR")
    assert len(result["table"]) == 16
    _scores_equal_evaluate(env, out, result["table"][:15])


def test_vanilla_channel_dropout_trains_and_is_benchmarked_zero_filled(env: NnUNetEnv, tmp_path: Path):
    """nnUNetTrainerVanillaChannelDropout through nnUNetv2_train; the benchmark reads it as a one-stack model with
    dropout (zero-filled, the header's note; the 15-subset run itself is the multi-encoder test's) and checks --cases
    before loading anything."""
    from nnunetv2_ext.evaluation.missing_modality import describe_model, run_missing_modality

    env.run(console_script("nnUNetv2_train"), str(env.dataset_id), "3d_fullres", str(FOLD), "-tr", VANILLA_DROPOUT,
            "-device", "cpu")
    folder = env.results / f"{VANILLA_DROPOUT}__nnUNetPlans__3d_fullres"
    logs = "".join(p.read_text() for p in (folder / f"fold_{FOLD}").glob("training_log_*.txt"))
    assert "Channel dropout: p = 0.5 per sample over 4 input channels" in logs
    info = describe_model(folder)
    assert not info.multi_encoder and info.dropout_p == 0.5
    assert "absent channels are zero-filled" in info.note and "trained with modality dropout (p = 0.5" in info.note
    cases = tmp_path / "cases.txt"
    cases.write_text("SynBraTS_999\n")
    with pytest.raises(ValueError, match=r"--cases .* lists 1 case\(s\) with no image"):
        run_missing_modality(folder, env.raw / "imagesTs", env.raw / "labelsTs", tmp_path / "c", folds=(FOLD,),
                             cases_file=str(cases))
