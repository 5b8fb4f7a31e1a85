"""Bad input through the ``nnunetv2_ext`` command (issue 19): a clear error naming the flag, exit code 2, nothing
written, the input untouched. Tiny synthetic NIfTI, no training."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nnunetv2_ext import cli
from tests.data.test_brats import _hashes, _path, _read, _write, make_fake_brats


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


# ------------------------------------------------------------------------------------------------ example-data


def test_example_data_refuses_an_existing_dataset_id_of_another_name(tmp_path, capsys):
    raw = tmp_path / "raw"
    (raw / "Dataset137_BraTS2021" / "imagesTr").mkdir(parents=True)
    before = _listing(raw)
    argv = ["example-data", "--raw", str(raw), "--dataset-id", "137", "--n-train", "2", "--n-test", "0",
            "--shape", "24", "24", "24"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Dataset137_BraTS2021" in err and "--dataset-id" in err
    assert _listing(raw) == before
    assert cli.main([*argv, "--overwrite"]) == 2  # --overwrite replaces a dataset of the same name only
    assert _listing(raw) == before


# --------------------------------------------------------------------------------------------- brats convert


def test_brats_convert_names_and_refuses_non_finite_voxels(tmp_path, capsys):
    root = make_fake_brats(tmp_path / "in", "2021", n=2)
    flair = _path(root, "2021", 1, "flair")
    array = _read(flair)
    array[2, 2, 2] = np.nan
    _write(array, flair)
    before = _hashes(root)
    raw = tmp_path / "raw"
    argv = ["brats", "convert", "--input", str(root), "--raw", str(raw)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "BraTS2021_00001_flair.nii.gz: 1 NaN/inf voxel value(s)" in err and "--skip-bad" in err
    assert _listing(raw) == []
    assert cli.main([*argv, "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "skipped BraTS2021_00001" in out
    (folder,) = raw.iterdir()
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [f"BraTS2021_00000_{i:04d}.nii.gz"
                                                                       for i in range(4)]
    assert _hashes(root) == before


# ------------------------------------------------------------------------------------------------------ plans


@pytest.mark.parametrize("arch", ["multi_encoder", "segresnet"])
def test_plans_never_replace_their_source(preprocessed, capsys, arch):
    before = _listing(preprocessed), (preprocessed / "nnUNetPlans.json").read_bytes()
    assert cli.main(["plans", "992", "--arch", arch, "--plans-name", "nnUNetPlans", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "source plans" in err and "--plans-name" in err
    assert (_listing(preprocessed), (preprocessed / "nnUNetPlans.json").read_bytes()) == before


@pytest.mark.parametrize("preset", ["brats_taheri2025", "brats_taheri2025.json", "plans/brats_taheri2025.json"])
def test_plans_preset_by_name_from_any_folder(preprocessed, tmp_path, monkeypatch, preset):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert cli.main(["plans", "992", "--preset", preset]) == 0
    config = json.loads((preprocessed / "nnUNetPlans_MultiEncoder.json").read_text())["configurations"]["3d_fullres"]
    assert config["patch_size"] == [96, 112, 80] and config["batch_size"] == 2


def test_plans_preset_file_of_ones_own_wins_and_unknown_names_are_listed(preprocessed, tmp_path, monkeypatch,
                                                                          capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "brats_taheri2025.json").write_text(json.dumps({"configurations": {"3d_fullres": {"batch_size": 3}}}))
    assert cli.main(["plans", "992", "--preset", "brats_taheri2025.json"]) == 0
    config = json.loads((preprocessed / "nnUNetPlans_MultiEncoder.json").read_text())["configurations"]["3d_fullres"]
    assert config["batch_size"] == 3
    assert cli.main(["plans", "992", "--preset", "no_such_preset", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "no_such_preset" in err and "brats_taheri2025" in err and "--list-presets" in err


def test_plans_list_presets(capsys):
    assert cli.main(["plans", "--list-presets"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("brats_taheri2025: Multi-encoder nnU-Net") and "swin_unetr_taheri2025: " in out
    assert cli.main(["plans"]) == 2
    assert "--list-presets" in capsys.readouterr().err


def test_presets_ship_as_package_data():
    """setup.py's package_data names every shipped preset (else `pip install .` would leave them out)."""
    import ast
    import fnmatch

    from nnunetv2_ext.planning.presets import PRESET_DIR

    tree = ast.parse((Path(__file__).resolve().parents[1] / "setup.py").read_text())
    (data,) = [ast.literal_eval(k.value) for node in ast.walk(tree) if isinstance(node, ast.Call)
               for k in node.keywords if k.arg == "package_data"]
    globs = data["nnunetv2_ext.planning"]
    shipped = sorted(p.name for p in PRESET_DIR.iterdir())
    assert "brats_taheri2025.json" in shipped
    assert all(any(fnmatch.fnmatch(f"presets/{name}", g) for g in globs) for name in shipped), (shipped, globs)


# ------------------------------------------------------------------------------------------ evaluate / report

BRATS_JSON = {"channel_names": {"0": "T1", "1": "T1Gd"}, "labels": {"background": 0, "whole tumor": [1, 2, 3],
              "tumor core": [2, 3], "enhancing tumor": [3]}, "regions_class_order": [1, 2, 3],
              "file_ending": ".nii.gz", "numTraining": 1, "brats_layout": "2021"}


def _label_folders(root: Path) -> tuple[Path, Path]:
    """One case whose prediction equals its reference: an edema cube around a necrosis and an enhancing lesion."""
    import SimpleITK as sitk

    label = np.zeros((12, 12, 12), np.uint8)
    label[2:9, 2:9, 2:9] = 1
    label[3:6, 3:6, 3:6] = 2
    label[6:8, 6:8, 6:8] = 3
    ref, pred = root / "ref", root / "pred"
    for folder in (ref, pred):
        folder.mkdir(parents=True)
        sitk.WriteImage(sitk.GetImageFromArray(label), str(folder / "a.nii.gz"))
    return ref, pred


@pytest.fixture()
def raw_only(tmp_path, monkeypatch):
    """Dataset961_Conv converted into $nnUNet_raw, nothing preprocessed yet."""
    raw = tmp_path / "raw"
    (raw / "Dataset961_Conv").mkdir(parents=True)
    (raw / "Dataset961_Conv" / "dataset.json").write_text(json.dumps(BRATS_JSON))
    monkeypatch.setenv("nnUNet_raw", str(raw))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    monkeypatch.delenv("nnUNet_results", raising=False)
    return raw / "Dataset961_Conv"


def test_evaluate_reads_the_raw_dataset_json_of_a_dataset_not_yet_preprocessed(raw_only, tmp_path, capsys):
    ref, pred = _label_folders(tmp_path)
    assert cli.main(["evaluate", "--ref", str(ref), "--pred", str(pred), "-d", "961"]) == 0
    out = capsys.readouterr().out
    assert "    WT: Dice 1.0000" in out and "    ET: Dice 1.0000" in out


def test_dataset_json_path_prefers_the_preprocessed_one(raw_only, tmp_path):
    from nnunetv2_ext.io_utils import dataset_json_path

    assert dataset_json_path(961) == raw_only / "dataset.json"
    preprocessed = tmp_path / "preprocessed" / "Dataset961_Conv"
    preprocessed.mkdir(parents=True)
    (preprocessed / "dataset.json").write_text(json.dumps(BRATS_JSON))
    assert dataset_json_path("Dataset961_Conv") == preprocessed / "dataset.json"
    (raw_only / "dataset.json").unlink()
    (preprocessed / "dataset.json").unlink()
    with pytest.raises(FileNotFoundError, match="no dataset.json for Dataset961_Conv.*give --dataset-json"):
        dataset_json_path(961)


def test_evaluate_refuses_an_existing_output_without_overwrite(raw_only, tmp_path, capsys):
    ref, pred = _label_folders(tmp_path)
    summary = tmp_path / "summary.json"
    summary.write_text("an earlier summary")
    argv = ["evaluate", "--ref", str(ref), "--pred", str(pred), "--dataset", "961", "-o", str(summary)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"{summary} already exists; use --overwrite" in err
    assert summary.read_text() == "an earlier summary" and not summary.with_suffix(".csv").exists()
    assert cli.main([*argv, "--overwrite"]) == 0
    assert json.loads(summary.read_text())["n_cases"] == 1 and summary.with_suffix(".csv").is_file()


def test_evaluate_brats_lesion_wise_through_the_cli(raw_only, tmp_path, capsys):
    ref, pred = _label_folders(tmp_path)
    out = tmp_path / "lw.json"
    assert cli.main(["evaluate", "--ref", str(ref), "--pred", str(pred), "-d", "961", "-o", str(out),
                     "--brats", "2023", "--brats-labels", "nnunet"]) == 0
    printed = capsys.readouterr()
    assert "LW DSC 1.0000" in printed.out and "evaluate pred" in printed.err  # the progress bar
    summary = json.loads(out.read_text())
    assert summary["lesion_wise"]["definition"] == "2023" and summary["mean"]["ET"]["brats_lesion_dice"] == 1.0
    assert summary["lesion_wise"]["labels"]["NETC"] == 2  # nnU-Net's convention: 2 necrosis
    with pytest.raises(SystemExit) as info:
        cli.main(["evaluate", "--ref", str(ref), "--pred", str(pred), "-d", "961", "--brats", "2022"])
    assert info.value.code == 2


def test_brats_choices_are_the_lesion_wise_definitions():
    from nnunetv2_ext.evaluation.lesionwise import DEFINITIONS

    assert sorted(cli.BRATS_DEFINITIONS) == sorted(DEFINITIONS)


def _results_tree(root: Path, ref: Path) -> Path:
    """$nnUNet_results/Dataset961_Conv with two trainers' fold_0 validation predictions (B's misses the ET)."""
    import shutil

    import SimpleITK as sitk

    results = root / "results" / "Dataset961_Conv"
    for trainer in ("A", "B"):
        model = results / f"{trainer}__nnUNetPlans__3d_fullres"
        (model / "fold_0" / "validation").mkdir(parents=True)
        (model / "dataset.json").write_text(json.dumps(BRATS_JSON))
        shutil.copy(ref / "a.nii.gz", model / "fold_0" / "validation" / "a.nii.gz")
    worse = sitk.GetArrayFromImage(sitk.ReadImage(str(ref / "a.nii.gz")))
    worse[worse == 3] = 1
    sitk.WriteImage(sitk.GetImageFromArray(worse), str(results / "B__nnUNetPlans__3d_fullres" / "fold_0" /
                                                          "validation" / "a.nii.gz"))
    return results


def test_report_brats_and_rank_by_through_the_cli(raw_only, tmp_path, capsys):
    ref, _ = _label_folders(tmp_path)
    results = _results_tree(tmp_path, ref)
    out = tmp_path / "report"
    argv = ["report", "--results", str(results), "-o", str(out), "--gt", str(ref), "--brats", "2023",
            "--brats-labels", "nnunet", "--rank-by", "brats_lesion_dice"]
    assert cli.main(argv) == 0
    assert "report Dataset961_Conv" in capsys.readouterr().err  # the progress bar over the folds
    rows = (out / "table_models.csv").read_text().splitlines()
    assert rows[0].startswith("rank,brats_lesion_dice,")
    assert rows[1].split(",")[:3] == ["1", "1.0", "A__nnUNetPlans__3d_fullres"]
    assert rows[2].split(",")[2] == "B__nnUNetPlans__3d_fullres"
    assert "LW DSC" in (out / "table_models.md").read_text()
    assert cli.main([*argv[:-1], "no_such_metric", "--overwrite"]) == 2
    assert "--rank-by 'no_such_metric'" in capsys.readouterr().err


# -------------------------------------------------------------------------------------------- dataset restrict


def test_dataset_restrict_refuses_a_repeated_channel(tmp_path, monkeypatch, capsys):
    from nnunetv2_ext.data.synthetic import make_brats_like_dataset

    raw = tmp_path / "raw"
    make_brats_like_dataset(raw, dataset_id=4, name="Src", n_train=2, n_test=0, shape=(24, 24, 24))
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    before = _listing(raw)
    argv = ["dataset", "restrict", "-d", "4", "--channels", "T1,T1", "--dataset-id", "5", "--raw", str(raw)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "names ['T1'] more than once" in err and "--allow-repeated-channels" in err
    assert _listing(raw) == before
    assert cli.main([*argv, "--allow-repeated-channels"]) == 0
    assert "restrict Dataset004_Src/imagesTr" in capsys.readouterr().err  # progress
    assert json.loads((raw / "Dataset005_Src_T1-T1" / "dataset.json").read_text())["channel_names"] == {
        "0": "T1", "1": "T1"}


# ----------------------------------------------------------------------------------------------- brats convert


@pytest.mark.parametrize("layout, name", [("2021", "BraTS2021"), ("gli", "BraTSGLI")])
def test_brats_convert_default_name_says_what_the_data_is(tmp_path, capsys, layout, name):
    root = make_fake_brats(tmp_path / "in", layout, n=1)
    assert cli.main(["brats", "convert", "--input", str(root), "--raw", str(tmp_path / "raw")]) == 0
    assert [p.name for p in (tmp_path / "raw").iterdir()] == [f"Dataset137_{name}"]


# ----------------------------------------------------------------------------------------------------- predict


@pytest.fixture()
def results_model(tmp_path, monkeypatch):
    """$nnUNet_results/Dataset992_X/<default trainer>__nnUNetPlans_MultiEncoder__3d_fullres with fold_0 only (no
    weights: every refusal below comes before the model is loaded)."""
    from tests.conftest import TINY_FIXTURES

    model = (tmp_path / "results" / "Dataset992_X" /
             "nnUNetTrainerMultiEncoderModalityDropout__nnUNetPlans_MultiEncoder__3d_fullres")
    (model / "fold_0").mkdir(parents=True)
    (model / "fold_0" / "checkpoint_final.pth").write_bytes(b"never read")
    (model / "dataset.json").write_text((TINY_FIXTURES / "dataset_tiny.json").read_text())
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    images = tmp_path / "in"
    images.mkdir()
    for c in (0, 3):
        _write(np.zeros((4, 4, 4), np.float32), images / f"case_{c:04d}.nii.gz")
    return images


@pytest.mark.parametrize("extra, message", [
    (["-device", "cpu"], "lacks ['fold_1/checkpoint_final.pth', 'fold_2/checkpoint_final.pth'"),  # -f: 0 1 2 3 4
    (["-f", "0"], "CUDA is not available on this machine (torch.cuda.is_available() is False); use -device cpu"),
    (["-f", "0", "-device", "cpu", "-npp", "0"], "-npp must be >= 1; got 0"),
    (["-f", "0", "-device", "cpu", "-nps", "0"], "-nps (processes for the segmentation export) must be an integer"),
    (["-f", "0", "-device", "cpu", "-step_size", "2"], "-step_size must be in (0, 1]"),
])
def test_predict_refuses_before_writing_anything(results_model, tmp_path, monkeypatch, capsys, extra, message):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "pred"
    assert cli.main(["predict", "-i", str(results_model), "-o", str(out), "-d", "992", "--modalities", "T1,FLAIR",
                     *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".pred")]
