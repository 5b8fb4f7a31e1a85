"""Prediction from any non-empty subset of a multi-encoder model's modalities, on top of nnU-Net's predictor.

nnU-Net refuses a case unless every channel file exists (MIC-DKFZ/nnUNet #513, #1245). Here only the present
modalities' files are needed: they are read with the plans' reader (as nnU-Net does), an all-zero image stands in
for each absent channel (nnU-Net's z-score normalisation keeps it at zero: mean 0, std clamped to 1e-8), the stack
goes through nnU-Net's own preprocessing, sliding-window prediction and export, and the absent modalities' encoders
are masked out of the fusion (``MultiEncoder.inference_present``), so the absent images never reach the output.
Nothing is written to disk besides the segmentations. A model trained with modality dropout
(``nnUNetTrainerMultiEncoderModalityDropout``) is meant for this; others are accepted with a warning.
"""
from __future__ import annotations

import os
import re
import warnings
from typing import Dict, Iterator, List, Sequence, Union

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json, save_json

from nnunetv2_ext.architectures.multi_encoder import MultiEncoderUNet
from nnunetv2_ext.dataset_json import channel_names

PathLike = Union[str, "os.PathLike[str]"]


def model_folder_from_args(dataset: Union[str, int], trainer: str = "nnUNetTrainer", plans: str = "nnUNetPlans",
                           configuration: str = "3d_fullres") -> str:
    """The trained model folder ``$nnUNet_results/DatasetXXX/TRAINER__PLANS__CONFIGURATION`` (as nnUNetv2_predict's
    ``-d -tr -p -c`` name it).

    Raises:
        FileNotFoundError: the folder does not exist.
    """
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    folder = get_output_folder(dataset, trainer, plans, configuration)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"no trained model at {folder}: check -d, -tr, -p and -c (dataset {dataset}, trainer "
                                f"{trainer}, plans {plans}, configuration {configuration}) and nnUNet_results")
    return folder


def _channels_of(modalities_present: Union[str, Sequence[str]], names: List[str]) -> List[int]:
    if isinstance(modalities_present, str):
        modalities_present = modalities_present.split(",")
    wanted = list(dict.fromkeys(m.strip() for m in modalities_present if m.strip()))
    if not wanted:
        raise ValueError(f"name at least one present modality, available: {names}")
    unknown = [m for m in wanted if m not in names]
    if unknown:
        raise ValueError(f"unknown modalities {unknown}: the model's dataset.json channel_names are {names}")
    return sorted(names.index(m) for m in wanted)


def _encoder_mask(network: MultiEncoderUNet, channels: List[int], names: List[str]) -> torch.Tensor:
    groups = network.encoder.groups
    present = []
    for g in groups:
        given = [c in channels for c in g]
        if any(given) and not all(given):
            raise ValueError(f"modalities {[names[c] for c in g]} share one encoder: give all of them or none "
                             f"(given: {[names[c] for c in g if c in channels]})")
        present.append(float(all(given)))
    return torch.tensor(present)


def _trainer_class(name: str) -> type:
    """The trainer class the predictor just resolved (already imported: found among nnUNetTrainer's subclasses, which
    avoids nnU-Net's slow search of every module), or nnU-Net's search as a fallback."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    stack = [nnUNetTrainer]
    while stack:
        cls = stack.pop()
        if cls.__name__ == name:
            return cls
        stack.extend(cls.__subclasses__())
    return recursive_find_trainer_class_by_name(name)


def _find_cases(input_folder: str, file_ending: str, channels: List[int], names: List[str]
                ) -> Dict[str, Dict[int, str]]:
    """case id -> {channel: file} for the present channels; every case must have all of them."""
    if not os.path.isdir(input_folder):
        raise FileNotFoundError(f"input folder {input_folder} does not exist")
    pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(file_ending) + "$")
    found: Dict[str, Dict[int, str]] = {}
    for fname in sorted(os.listdir(input_folder)):
        m = pattern.match(fname)
        if m:
            found.setdefault(m.group(1), {})[int(m.group(2))] = os.path.join(input_folder, fname)
    if not found:
        raise FileNotFoundError(f"no images named CASE_XXXX{file_ending} in {input_folder}")
    cases = {}
    for case, files in found.items():
        missing = [c for c in channels if c not in files]
        if missing:
            raise ValueError(f"case {case} lacks the present modalities "
                             f"{[f'{names[c]} ({case}_{c:04d}{file_ending})' for c in missing]} in {input_folder}; "
                             f"give those files or leave the modalities out of the present list")
        cases[case] = {c: files[c] for c in channels}
    return cases


def _preprocessed_cases(predictor, cases: Dict[str, Dict[int, str]], n_channels: int, output_folder: str
                        ) -> Iterator[dict]:
    """nnU-Net's preprocessing of each case with zeros for the absent channels, one case at a time (lazy, so memory
    does not grow with the number of cases)."""
    reader = predictor.plans_manager.image_reader_writer_class()
    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
    for case, files in cases.items():
        channels = sorted(files)
        images, properties = reader.read_images([files[c] for c in channels])
        stack = np.zeros((n_channels, *images.shape[1:]), dtype=images.dtype)
        stack[channels] = images
        data, _, properties = preprocessor.run_case_npy(stack, None, properties, predictor.plans_manager,
                                                        predictor.configuration_manager, predictor.dataset_json)
        yield {"data": torch.from_numpy(data).to(dtype=torch.float32, memory_format=torch.contiguous_format),
               "data_properties": properties, "ofile": os.path.join(output_folder, case)}


def _check_run(model_folder: str, folds: Sequence[Union[int, str]], checkpoint: str, device: Union[str, torch.device],
               num_processes: int, tile_step_size: float) -> torch.device:
    """Everything about the run that can be checked before the model is loaded; returns the device.

    Raises:
        ValueError: a count below 1, a step size outside (0, 1], an unknown device or one this machine lacks.
        FileNotFoundError: a fold's checkpoint is missing (the folds that have it are named).
    """
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise ValueError(f"-nps (processes for the segmentation export) must be an integer >= 1; got {num_processes!r}")
    if not 0 < tile_step_size <= 1:
        raise ValueError(f"-step_size must be in (0, 1] (nnU-Net's default 0.5); got {tile_step_size}")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"-device {device!r} is not a device: use cuda, cpu or mps ({e})") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("-device cuda: CUDA is not available on this machine (torch.cuda.is_available() is False); "
                         "use -device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("-device mps: MPS is not available on this machine; use -device cpu")
    if device.type not in ("cuda", "cpu", "mps"):
        raise ValueError(f"-device {device.type}: use cuda, cpu or mps")
    if not folds:
        raise ValueError("-f: give at least one fold")
    missing = [os.path.join(f"fold_{f}", checkpoint) for f in folds
               if not os.path.isfile(os.path.join(model_folder, f"fold_{f}", checkpoint))]
    if missing:
        have = sorted(d[len("fold_"):] for d in os.listdir(model_folder)
                      if d.startswith("fold_") and os.path.isfile(os.path.join(model_folder, d, checkpoint)))
        raise FileNotFoundError(f"{model_folder} lacks {missing}: check -f and -chk (folds with {checkpoint}: "
                                f"{have or 'none'})")
    return device


def predict_with_subset(model_folder: PathLike, input_folder: PathLike, output_folder: PathLike,
                        modalities_present: Union[Sequence[str], str], folds: Sequence[Union[int, str]] = (0,),
                        checkpoint: str = "checkpoint_final.pth", device: Union[str, torch.device] = "cpu",
                        overwrite: bool = False, num_processes: int = 1, use_mirroring: bool = True, *,
                        tile_step_size: float = 0.5, save_probabilities: bool = False,
                        continue_prediction: bool = False, verbose: bool = False,
                        zero_fill: bool = False) -> List[str]:
    """Segment every case of ``input_folder`` from the ``modalities_present`` only, with a trained multi-encoder.

    Everything that can be checked is checked before anything is written (modalities, input files, the output
    folder, the device, every fold's checkpoint, the process counts); the segmentations are written into a hidden
    staging folder beside ``output_folder`` and moved into it at the end, so a failed run leaves ``output_folder``
    as it was.

    Args:
        model_folder: ``TRAINER__PLANS__CONFIGURATION`` folder (``model_folder_from_args``).
        input_folder: nnU-Net raw layout ``CASE_XXXX<file_ending>``; only the present modalities' files are needed
            (files of the other channels are ignored).
        output_folder: where ``CASE<file_ending>`` segmentations go (with the input geometry), plus nnU-Net's
            ``dataset.json`` / ``plans.json`` and ``predict_with_subset_args.json``.
        modalities_present: dataset.json ``channel_names``, e.g. ``["T1", "FLAIR"]`` or ``"T1,FLAIR"``; with every
            modality the result is nnUNetv2_predict's.
        folds, checkpoint: as nnUNetv2_predict's ``-f`` and ``-chk`` (several folds are averaged).
        device: ``cpu``, ``cuda`` or ``mps``; one this machine lacks is refused before anything is written.
        overwrite: allow a non-empty output folder (files of the same name are replaced).
        num_processes: processes that resample and write the segmentations (nnUNetv2_predict's ``-nps``), >= 1.
        use_mirroring: test-time mirroring, on the axes the checkpoint allows (none for the ``_debug`` trainers).
        tile_step_size: sliding-window step, in (0, 1] (``-step_size``).
        save_probabilities: also write nnU-Net's ``.npz`` / ``.pkl`` probabilities (``--save_probabilities``).
        continue_prediction: keep the segmentations already in ``output_folder`` and predict only the other cases
            (``--continue_prediction``).
        verbose: nnU-Net's predictor talks (``--verbose``).
        zero_fill: also accept a network with one input stack (vanilla nnU-Net): the absent channels are all-zero
            images (zero after nnU-Net's z-score normalisation) and the network sees them as such. For a multi-encoder
            nothing changes (its absent encoders are masked out either way).

    Returns:
        the written segmentation files.

    Like nnU-Net's predictor it starts worker processes with ``spawn``: in a script, call it under
    ``if __name__ == "__main__":``.

    Raises:
        ValueError: unknown modality, a case without one of the present modalities' files, modalities that share an
            encoder given in part, a model that is not a multi-encoder (without ``zero_fill``), a cascade
            configuration, an unavailable device, a count below 1.
        FileExistsError: ``output_folder`` is not empty and neither ``overwrite`` nor ``continue_prediction``.
        FileNotFoundError: no input images, a fold without the checkpoint.
    """
    from nnunetv2_ext.data.raw_dataset import staged_dataset_folder

    model_folder, input_folder, output_folder = map(os.fspath, (model_folder, input_folder, output_folder))
    dataset_json = load_json(os.path.join(model_folder, "dataset.json"))
    names = channel_names(dataset_json)
    channels = _channels_of(modalities_present, names)
    cases = _find_cases(input_folder, dataset_json["file_ending"], channels, names)
    existing = os.listdir(output_folder) if os.path.isdir(output_folder) else []
    if existing and not (overwrite or continue_prediction):
        raise FileExistsError(f"output folder {output_folder} is not empty: choose an empty one, use --overwrite to "
                              f"replace its files or --continue_prediction to predict only the missing cases")
    device = _check_run(model_folder, folds, checkpoint, device, num_processes, tile_step_size)
    if continue_prediction:
        cases = {c: f for c, f in cases.items() if c + dataset_json["file_ending"] not in existing}
        if not cases:
            return []

    predictor = load_subset_predictor(model_folder, folds, checkpoint, device, use_mirroring, zero_fill=zero_fill,
                                      tile_step_size=tile_step_size, verbose=verbose)
    select_subset(predictor, channels, stacklevel=3)
    with staged_dataset_folder(output_folder, overwrite=True, merge=True) as staging:
        _write_run_files(predictor, str(staging), {
            "model_folder": model_folder, "input_folder": input_folder,
            "modalities_present": [names[c] for c in channels], "folds": [str(f) for f in folds],
            "checkpoint": checkpoint, "use_mirroring": use_mirroring, "tile_step_size": tile_step_size,
            "zero_fill": zero_fill})
        predictor.predict_from_data_iterator(_preprocessed_cases(predictor, cases, len(names), str(staging)),
                                             save_probabilities=save_probabilities,
                                             num_processes_segmentation_export=num_processes)
    return [os.path.join(output_folder, case + dataset_json["file_ending"]) for case in cases]


def load_subset_predictor(model_folder: PathLike, folds: Sequence[Union[int, str]] = (0,),
                          checkpoint: str = "checkpoint_final.pth", device: Union[str, torch.device] = "cpu",
                          use_mirroring: bool = True, zero_fill: bool = False, *, tile_step_size: float = 0.5,
                          verbose: bool = False):
    """nnU-Net's predictor for ``model_folder``, checked for subset prediction; give it to :func:`select_subset` and
    :func:`predict_subset_in_process` to predict several subsets with one loaded model.

    Raises:
        ValueError: a network that is not a multi-encoder (unless ``zero_fill``), a cascade configuration.
    """
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    model_folder = os.fspath(model_folder)
    device = torch.device(device)
    predictor = nnUNetPredictor(tile_step_size=tile_step_size, use_gaussian=True, use_mirroring=use_mirroring,
                                perform_everything_on_device=device.type == "cuda", device=device, verbose=verbose,
                                verbose_preprocessing=verbose, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(model_folder, tuple(folds), checkpoint_name=checkpoint)
    network = getattr(predictor.network, "_orig_mod", predictor.network)
    if not isinstance(network, MultiEncoderUNet) and not zero_fill:
        raise ValueError(f"subset prediction needs a multi-encoder: {model_folder} holds a "
                         f"{type(network).__name__} ({predictor.trainer_name}); predict it with nnUNetv2_predict "
                         f"and every modality, or zero-fill the absent channels (nnunetv2_ext predict --zero-fill)")
    if predictor.configuration_manager.previous_stage_name is not None:
        raise ValueError(f"subset prediction supports single-stage configurations, {model_folder} is a cascade stage")
    return predictor


def trained_with_dropout(trainer_name: str) -> float:
    """The modality (or channel) dropout probability a trainer trained with (its ``modality_dropout_p``; 0 if none)."""
    return float(getattr(_trainer_class(trainer_name), "modality_dropout_p", 0) or 0)


def select_subset(predictor, channels: List[int], stacklevel: int = 2) -> None:
    """Make ``predictor`` segment from the input ``channels`` only: a multi-encoder masks the absent encoders out of
    its fusion; any other network sees the zero-filled stack. Warns when the trainer did not train with dropout."""
    names = channel_names(predictor.dataset_json)
    network = getattr(predictor.network, "_orig_mod", predictor.network)
    multi_encoder = isinstance(network, MultiEncoderUNet)
    everything = len(channels) == len(names)
    if multi_encoder:
        present = _encoder_mask(network, channels, names)
        everything = bool(present.all())
        network.encoder.inference_present = None if everything else present  # all: exactly nnU-Net's prediction
    if not everything and not trained_with_dropout(predictor.trainer_name):
        hint = "train nnUNetTrainerMultiEncoderModalityDropout for missing modalities" if multi_encoder else \
            "the absent channels are zero-filled; train nnUNetTrainerVanillaChannelDropout for missing channels"
        warnings.warn(f"{predictor.trainer_name} was not trained with modality dropout: predictions without "
                      f"{[n for i, n in enumerate(names) if i not in channels]} will be poor; {hint}",
                      stacklevel=stacklevel)


def _write_run_files(predictor, output_folder: str, args: dict) -> None:
    os.makedirs(output_folder, exist_ok=True)
    save_json(predictor.dataset_json, os.path.join(output_folder, "dataset.json"), sort_keys=False)
    save_json(predictor.plans_manager.plans, os.path.join(output_folder, "plans.json"), sort_keys=False)
    save_json(args, os.path.join(output_folder, "predict_with_subset_args.json"))


def predict_subset_in_process(predictor, input_folder: PathLike, output_folder: PathLike,
                              modalities_present: Union[Sequence[str], str], num_processes_export: int = 1
                              ) -> List[str]:
    """:func:`predict_with_subset` with a loaded predictor (:func:`load_subset_predictor`) and, for
    ``num_processes_export`` 1, the export in this process (no worker pool to start per subset): nnU-Net's
    preprocessing, sliding window and ``export_prediction_from_logits``, one case at a time; more: nnU-Net's export
    pool of that many processes. Existing files in ``output_folder`` are replaced.

    Returns:
        the written segmentation files.
    """
    from nnunetv2.inference.export_prediction import export_prediction_from_logits

    input_folder, output_folder = os.fspath(input_folder), os.fspath(output_folder)
    names = channel_names(predictor.dataset_json)
    channels = _channels_of(modalities_present, names)
    ending = predictor.dataset_json["file_ending"]
    cases = _find_cases(input_folder, ending, channels, names)
    select_subset(predictor, channels, stacklevel=3)
    _write_run_files(predictor, output_folder, {"input_folder": input_folder, "modalities_present":
                                                [names[c] for c in channels],
                                                "in_process": num_processes_export <= 1})
    if num_processes_export > 1:
        predictor.predict_from_data_iterator(_preprocessed_cases(predictor, cases, len(names), output_folder),
                                             save_probabilities=False,
                                             num_processes_segmentation_export=num_processes_export)
        return [os.path.join(output_folder, case + ending) for case in cases]
    for item in _preprocessed_cases(predictor, cases, len(names), output_folder):
        logits = predictor.predict_logits_from_preprocessed_data(item["data"]).cpu().numpy()
        export_prediction_from_logits(logits, item["data_properties"], predictor.configuration_manager,
                                      predictor.plans_manager, predictor.dataset_json, item["ofile"], False)
    return [os.path.join(output_folder, case + ending) for case in cases]
