"""Reading the inputs of ``nnunetv2_ext plans`` and checking where its output goes (shared by every --arch)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple


def read_planning_inputs(dataset: str | int, source_plans: str, preset_file: Optional[str]
                         ) -> Tuple[Path, dict, dict, Optional[dict]]:
    """``(preprocessed folder, source plans, dataset.json, preset or None)`` of a dataset.

    Raises:
        FileNotFoundError: the source plans, dataset.json or preset is missing (with the command that makes it).
    """
    from nnunetv2_ext.io_utils import load_json, preprocessed_dataset_folder
    from nnunetv2_ext.planning.presets import resolve_preset

    folder = preprocessed_dataset_folder(dataset)
    source_file = folder / f"{source_plans}.json"
    if not source_file.is_file():
        raise FileNotFoundError(f"{source_file} does not exist: run nnUNetv2_plan_and_preprocess -d {dataset} first "
                                f"(or pass --source-plans with an existing plans name)")
    preset = load_json(resolve_preset(preset_file)) if preset_file is not None else None
    return folder, load_json(source_file), load_json(folder / "dataset.json"), preset


def check_output_name(new_plans_name: str, source_plans: str) -> None:
    """Refuse derived plans named like their source (a preset or option could name them so).

    Raises:
        ValueError: the names are equal.
    """
    if new_plans_name == source_plans:
        raise ValueError(f"the derived plans would be named {new_plans_name}, the source plans: the output may never "
                         f"replace the plans it is derived from; choose another --plans-name")
