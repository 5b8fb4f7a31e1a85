"""Tests for nnunetv2_ext.inference.subset_predict: the parsing and checks of the present modalities, the case
search, the zero-filled channel stack, the encoder mask, and one prediction through nnU-Net's predictor with a tiny
randomly initialised multi-encoder (the 2d configuration of the tiny 4-modality plans; no training, no
preprocessing run). tests/e2e/test_missing_modalities_e2e.py runs the command on a model trained with modality
dropout."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nnunetv2_ext.architectures.multi_encoder import MultiEncoderUNet
from nnunetv2_ext.inference.subset_predict import (
    _channels_of,
    _encoder_mask,
    _find_cases,
    _preprocessed_cases,
    _trainer_class,
    model_folder_from_args,
    predict_with_subset,
)
from tests.conftest import TINY_FIXTURES

pytestmark = pytest.mark.usefixtures("single_thread")

NAMES = ["T1", "T1Gd", "T2", "FLAIR"]
SHAPE = (1, 40, 32)  # (z, y, x): one slice of the 2d configuration's 40 x 32 patch


def _tiny_network(encoder_groups=None) -> MultiEncoderUNet:
    return MultiEncoderUNet(input_channels=4, n_stages=2, features_per_stage=[4, 8], conv_op=torch.nn.Conv2d,
                            kernel_sizes=3, strides=[[1, 1], [2, 2]], n_conv_per_stage=1, num_classes=2,
                            n_conv_per_stage_decoder=1, norm_op=torch.nn.InstanceNorm2d,
                            nonlin=torch.nn.LeakyReLU, encoder_groups=encoder_groups, modality_names=NAMES)


def _write_image(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))


# ---------------------------------------------------------------------------------------- present modalities

@pytest.mark.parametrize("given, channels", [
    ("T1,FLAIR", [0, 3]),
    ("FLAIR, T1", [0, 3]),              # channel order, whatever the order given
    (["T2"], [2]),
    ("T1,,T1, T2 ,", [0, 2]),           # empty entries and repeats dropped
    (NAMES, [0, 1, 2, 3]),
])
def test_present_modalities_become_sorted_channels(given, channels):
    assert _channels_of(given, NAMES) == channels


def test_unknown_or_no_modality_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match=r"unknown modalities \['T3'\].*\['T1', 'T1Gd', 'T2', 'FLAIR'\]"):
        _channels_of("T1,T3", NAMES)
    with pytest.raises(ValueError, match=r"unknown modalities \['t1'\]"):  # names are case-sensitive
        _channels_of("t1", NAMES)
    with pytest.raises(ValueError, match=r"at least one present modality, available: \['T1', 'T1Gd'"):
        _channels_of(" , ", NAMES)


def test_encoder_mask_follows_the_groups_and_refuses_half_a_group():
    assert _encoder_mask(_tiny_network(), [0, 3], NAMES).tolist() == [1.0, 0.0, 0.0, 1.0]
    grouped = _tiny_network(encoder_groups=[[0, 1], [2], [3]])  # T1 and T1Gd share an encoder
    assert _encoder_mask(grouped, [0, 1, 3], NAMES).tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match=r"\['T1', 'T1Gd'\] share one encoder.*given: \['T1'\]"):
        _encoder_mask(grouped, [0, 3], NAMES)


# -------------------------------------------------------------------------------------------------- the cases

def test_find_cases_needs_only_the_present_files(tmp_path):
    for name in ("a_0000.nii.gz", "a_0003.nii.gz", "b_0000.nii.gz", "b_0001.nii.gz", "b_0003.nii.gz", "notes.txt",
                 "a_0000.nii"):
        (tmp_path / name).touch()
    cases = _find_cases(str(tmp_path), ".nii.gz", [0, 3], NAMES)
    assert cases == {"a": {0: str(tmp_path / "a_0000.nii.gz"), 3: str(tmp_path / "a_0003.nii.gz")},
                     "b": {0: str(tmp_path / "b_0000.nii.gz"), 3: str(tmp_path / "b_0003.nii.gz")}}
    with pytest.raises(ValueError, match=r"case a lacks the present modalities \['T1Gd \(a_0001.nii.gz\)'\]"):
        _find_cases(str(tmp_path), ".nii.gz", [0, 1], NAMES)


def test_find_cases_names_a_missing_or_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _find_cases(str(tmp_path / "nope"), ".nii.gz", [0], NAMES)
    (tmp_path / "a_0000.nii").touch()
    with pytest.raises(FileNotFoundError, match=r"no images named CASE_XXXX\.nii\.gz"):
        _find_cases(str(tmp_path), ".nii.gz", [0], NAMES)


class _RecordingPreprocessor:
    """Stands in for nnU-Net's preprocessor: keeps the stack it is given and returns it unchanged."""
    stacks: list = []

    def __init__(self, verbose: bool = False):
        pass

    def run_case_npy(self, data, seg, properties, plans_manager, configuration_manager, dataset_json):
        self.stacks.append(data.copy())
        return data, seg, properties


def test_absent_channels_are_zeros_and_present_ones_the_images(tmp_path):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    rng = np.random.default_rng(0)
    images = {c: rng.uniform(1, 2, size=SHAPE).astype(np.float32) for c in (0, 3)}
    for c, image in images.items():
        _write_image(tmp_path / f"x_{c:04d}.nii.gz", image)
    predictor = SimpleNamespace(plans_manager=SimpleNamespace(image_reader_writer_class=SimpleITKIO),
                                configuration_manager=SimpleNamespace(preprocessor_class=_RecordingPreprocessor),
                                dataset_json={})
    _RecordingPreprocessor.stacks = []
    cases = {"x": {c: str(tmp_path / f"x_{c:04d}.nii.gz") for c in images}}
    (item,) = list(_preprocessed_cases(predictor, cases, 4, "/out"))
    (stack,) = _RecordingPreprocessor.stacks
    assert stack.shape == (4, *SHAPE) and stack.dtype == np.float32
    np.testing.assert_array_equal(stack[0], images[0])
    np.testing.assert_array_equal(stack[3], images[3])
    assert not stack[1].any() and not stack[2].any()
    assert item["ofile"] == "/out/x" and item["data"].dtype == torch.float32
    assert item["data_properties"]["spacing"] == [1.0, 1.0, 1.0]


def test_zscore_normalisation_keeps_a_zero_channel_zero():
    """The module relies on it: nnU-Net's z-score of an all-zero image is all zero (std clamped), masked or not."""
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import ZScoreNormalization

    for use_mask in (False, True):
        zeros = np.zeros(SHAPE, dtype=np.float32)
        seg = np.zeros(SHAPE, dtype=np.int8) if use_mask else None
        out = ZScoreNormalization(use_mask_for_norm=use_mask, intensityproperties={}).run(zeros, seg)
        assert np.all(out == 0)


# ---------------------------------------------------------------------------------------- folders and trainers

def test_model_folder_from_args(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    folder = tmp_path / "Dataset992_Tiny" / "nnUNetTrainerX__nnUNetPlans_MultiEncoder__2d"
    folder.mkdir(parents=True)
    assert Path(model_folder_from_args("Dataset992_Tiny", "nnUNetTrainerX", "nnUNetPlans_MultiEncoder", "2d")) == folder
    with pytest.raises(FileNotFoundError, match=r"no trained model at .*nnUNetTrainerX__nnUNetPlans__3d_fullres"):
        model_folder_from_args("Dataset992_Tiny", "nnUNetTrainerX")


def test_trainer_class_finds_a_loaded_subclass_and_its_dropout():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunetv2_ext.training.modality_dropout import nnUNetTrainerMultiEncoderModalityDropout

    assert _trainer_class("nnUNetTrainer") is nnUNetTrainer
    cls = _trainer_class("nnUNetTrainerMultiEncoderModalityDropout")
    assert cls is nnUNetTrainerMultiEncoderModalityDropout and cls.modality_dropout_p > 0
    assert not getattr(nnUNetTrainer, "modality_dropout_p", 0)


# ------------------------------------------------------------------------------------ through the predictor

def _random_model_folder(root: Path, plans: dict, name: str) -> Path:
    """A model folder as nnUNetv2_train leaves it (dataset.json, plans.json, fold_0/checkpoint_final.pth), holding a
    randomly initialised network of the plans' 2d configuration (written by nnUNetTrainer)."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    dataset_json = json.loads((TINY_FIXTURES / "dataset_tiny.json").read_text())
    arch = plans["configurations"]["2d"]["architecture"]
    heads = PlansManager(plans).get_label_manager(dataset_json).num_segmentation_heads  # 3 regions
    torch.manual_seed(0)
    network = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                     4, heads, allow_init=True, deep_supervision=False)
    folder = root / name
    (folder / "fold_0").mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    (folder / "plans.json").write_text(json.dumps(plans))
    torch.save({"network_weights": network.state_dict(), "trainer_name": "nnUNetTrainer",
                "init_args": {"configuration": "2d"}, "inference_allowed_mirroring_axes": (0, 1)},
               folder / "fold_0" / "checkpoint_final.pth")
    return folder


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    """A randomly initialised multi-encoder for the tiny plans' 2d configuration."""
    from nnunetv2_ext.planning.multi_encoder_plans import derive_multi_encoder_plans

    plans = derive_multi_encoder_plans(json.loads((TINY_FIXTURES / "nnUNetPlans_tiny.json").read_text()),
                                       json.loads((TINY_FIXTURES / "dataset_tiny.json").read_text()))
    assert plans["configurations"]["2d"]["architecture"]["network_class_name"].endswith("MultiEncoderUNet")
    return _random_model_folder(tmp_path_factory.mktemp("results"), plans,
                                "nnUNetTrainer__nnUNetPlans_MultiEncoder__2d")


def test_predicts_from_two_of_four_modalities(model_folder, tmp_path):
    import SimpleITK as sitk

    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(1)
    for c in (0, 3):  # T1 and FLAIR only: no T1Gd or T2 file exists
        _write_image(inputs / f"case_{c:04d}.nii.gz", rng.uniform(0, 1, size=SHAPE).astype(np.float32),
                     spacing=(1.0, 1.0, 2.0))
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match=r"not trained with modality dropout: predictions without \['T1Gd', 'T2'\]"):
        written = predict_with_subset(model_folder, inputs, out, "T1,FLAIR", use_mirroring=False)
    assert written == [str(out / "case.nii.gz")]
    seg = sitk.ReadImage(written[0])
    assert seg.GetSize() == SHAPE[::-1] and seg.GetSpacing() == (1.0, 1.0, 2.0)
    assert set(np.unique(sitk.GetArrayFromImage(seg))) <= {0, 1, 2, 3}
    args = json.loads((out / "predict_with_subset_args.json").read_text())
    assert args["modalities_present"] == ["T1", "FLAIR"] and args["folds"] == ["0"]
    assert (out / "plans.json").is_file() and (out / "dataset.json").is_file()
    with pytest.raises(FileExistsError, match="not empty"):
        predict_with_subset(model_folder, inputs, out, "T1,FLAIR")


def test_checks_happen_before_the_network_is_loaded(model_folder, tmp_path):
    (tmp_path / "case_0000.nii.gz").touch()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"unknown modalities \['PD'\]"):
            predict_with_subset(model_folder, tmp_path, tmp_path / "out", "T1,PD")
        with pytest.raises(ValueError, match=r"case case lacks the present modalities \['FLAIR \(case_0003"):
            predict_with_subset(model_folder, tmp_path, tmp_path / "out", ["T1", "FLAIR"])
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def vanilla_folder(tmp_path_factory) -> Path:
    """The same, holding nnU-Net's PlainConvUNet (one input stack) of the tiny plans."""
    return _random_model_folder(tmp_path_factory.mktemp("results"),
                                json.loads((TINY_FIXTURES / "nnUNetPlans_tiny.json").read_text()),
                                "nnUNetTrainer__nnUNetPlans__2d")


# ------------------------------------------------------------------------ validated first, written last (issue 19)


def _t1_flair_inputs(folder: Path) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(1)
    for c in (0, 3):
        _write_image(folder / f"case_{c:04d}.nii.gz", rng.uniform(0, 1, size=SHAPE).astype(np.float32),
                     spacing=(1.0, 1.0, 2.0))
    return folder


def _entries(folder: Path) -> list:
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}")) + (
        sorted(p.name for p in folder.iterdir()) if folder.exists() else [])


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(folds=(0, 1)), FileNotFoundError, r"lacks \['fold_1/checkpoint_final.pth'\]: check -f and -chk "
                                            r"\(folds with checkpoint_final.pth: \['0'\]\)"),
    (dict(checkpoint="checkpoint_best.pth"), FileNotFoundError, r"fold_0/checkpoint_best.pth.*none"),
    (dict(num_processes=0), ValueError, r"-nps .* >= 1; got 0"),
    (dict(tile_step_size=1.5), ValueError, r"-step_size must be in \(0, 1\]"),
    (dict(device="tpu"), ValueError, r"-device"),
    (dict(device="cuda"), ValueError, r"CUDA is not available on this machine .*use -device cpu"),
])
def test_bad_runs_are_refused_before_anything_is_written(model_folder, tmp_path, monkeypatch, kwargs, error, match):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    inputs, out = _t1_flair_inputs(tmp_path / "in"), tmp_path / "out"
    with pytest.raises(error, match=match):
        predict_with_subset(model_folder, inputs, out, "T1,FLAIR", **kwargs)
    assert _entries(out) == []


def test_a_run_failing_after_the_model_loaded_leaves_the_output_as_it_was(model_folder, tmp_path, monkeypatch):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    inputs, out = _t1_flair_inputs(tmp_path / "in"), tmp_path / "out"
    out.mkdir()
    (out / "case.nii.gz").write_bytes(b"an earlier prediction")

    def fail_half_way(self, iterator, save_probabilities, num_processes_segmentation_export):
        first = next(iter(iterator))
        Path(first["ofile"] + ".nii.gz").write_bytes(b"half")
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(nnUNetPredictor, "predict_from_data_iterator", fail_half_way)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match="out of memory"):
            predict_with_subset(model_folder, inputs, out, "T1,FLAIR", overwrite=True, use_mirroring=False)
    assert _entries(out) == ["case.nii.gz"] and (out / "case.nii.gz").read_bytes() == b"an earlier prediction"


def test_continue_prediction_predicts_only_the_missing_cases(model_folder, tmp_path):
    inputs, out = _t1_flair_inputs(tmp_path / "in"), tmp_path / "out"
    rng = np.random.default_rng(3)
    for c in (0, 3):
        _write_image(inputs / f"other_{c:04d}.nii.gz", rng.uniform(0, 1, size=SHAPE).astype(np.float32))
    out.mkdir()
    (out / "case.nii.gz").write_bytes(b"done before")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        written = predict_with_subset(model_folder, inputs, out, "T1,FLAIR", use_mirroring=False,
                                      continue_prediction=True, save_probabilities=True)
        assert written == [str(out / "other.nii.gz")]
        assert (out / "case.nii.gz").read_bytes() == b"done before"
        assert {"other.nii.gz", "other.npz", "other.pkl"} <= set(_entries(out))
        assert predict_with_subset(model_folder, inputs, out, "T1,FLAIR", continue_prediction=True) == []


def test_zero_fill_lets_a_one_stack_network_predict_from_a_subset(vanilla_folder, tmp_path):
    inputs = _t1_flair_inputs(tmp_path / "in")
    with pytest.raises(ValueError, match=r"needs a multi-encoder.*predict --zero-fill"):
        predict_with_subset(vanilla_folder, inputs, tmp_path / "o1", "T1,FLAIR", use_mirroring=False)
    with pytest.warns(UserWarning, match="absent channels are zero-filled"):
        written = predict_with_subset(vanilla_folder, inputs, tmp_path / "o2", "T1,FLAIR", use_mirroring=False,
                                      zero_fill=True)
    assert json.loads((tmp_path / "o2" / "predict_with_subset_args.json").read_text())["zero_fill"] is True
    # the zero-filled stack is exactly what the network sees: a full stack with zero images gives the same result
    from nnunetv2_ext.inference.subset_predict import load_subset_predictor, predict_subset_in_process

    full = tmp_path / "full"
    shutil.copytree(inputs, full)
    for c in (1, 2):
        _write_image(full / f"case_{c:04d}.nii.gz", np.zeros(SHAPE, np.float32), spacing=(1.0, 1.0, 2.0))
    predictor = load_subset_predictor(vanilla_folder, use_mirroring=False, zero_fill=True)
    again = predict_subset_in_process(predictor, full, tmp_path / "o3", "T1,T1Gd,T2,FLAIR")
    assert np.array_equal(_read(written[0]), _read(again[0]))


def test_in_process_prediction_equals_predict_with_subset(model_folder, tmp_path):
    from nnunetv2_ext.inference.subset_predict import load_subset_predictor, predict_subset_in_process

    inputs = _t1_flair_inputs(tmp_path / "in")
    with pytest.warns(UserWarning):
        ours = predict_with_subset(model_folder, inputs, tmp_path / "a", "T1,FLAIR", use_mirroring=False)
        predictor = load_subset_predictor(model_folder, use_mirroring=False)
        again = predict_subset_in_process(predictor, inputs, tmp_path / "b", ["FLAIR", "T1"])
    assert np.array_equal(_read(ours[0]), _read(again[0]))


def _read(path: str) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(path))
