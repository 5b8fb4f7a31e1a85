"""Plans presets: JSON files shipped inside the package (``nnunetv2_ext/planning/presets/``), found by name.

``nnunetv2_ext plans D --preset brats_taheri2025`` works from any folder and after ``pip install .``; a path to
a JSON file of one's own is still accepted, and so is the repository path of a shipped preset from before they
moved into the package (``plans/brats_taheri2025.json``), read from the package when no such file exists.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict

PRESET_DIR = Path(__file__).resolve().parent / "presets"
"""The shipped presets, one ``<name>.json`` each (package data)."""


def list_presets() -> Dict[str, str]:
    """Name -> description of every shipped preset, sorted by name."""
    return {p.stem: json.loads(p.read_text()).get("description", "") for p in sorted(PRESET_DIR.glob("*.json"))}


def resolve_preset(preset: str | os.PathLike) -> Path:
    """The file a ``--preset`` value names: an existing file, else the shipped preset of that name.

    ``brats_taheri2025``, ``brats_taheri2025.json`` and ``plans/brats_taheri2025.json`` all name the shipped
    preset when no such file exists relative to the working folder.

    Raises:
        FileNotFoundError: neither a file nor a shipped preset, with the names of the shipped ones.
    """
    path = Path(preset)
    if path.is_file():
        return path
    name = path.name[:-len(".json")] if path.name.endswith(".json") else path.name
    shipped = PRESET_DIR / f"{name}.json"
    if shipped.is_file() and (path.parent == Path(".") or path.parent.name == "plans"):
        return shipped
    raise FileNotFoundError(f"--preset {preset}: {path} does not exist and is no shipped preset; give a JSON file or "
                            f"one of {', '.join(list_presets())} (nnunetv2_ext plans --list-presets)")
