"""How nnU-Net finds this package's trainers.

nnU-Net (>= 2.8) searches the folders in the ``nnUNet_extTrainer`` environment variable for a trainer class by
name, importing each module there under its bare name and purging it afterwards. This folder holds one such
module, ``nnunetv2_ext_trainers.py``, that only re-exports the trainers from the installed package, so the classes
keep their real module path (pickling, DDP workers and ``isinstance`` work) and nothing is copied into nnunetv2.

    export nnUNet_extTrainer=$(nnunetv2_ext trainer-path)
"""
import os

SHIM_MODULE = "nnunetv2_ext_trainers"
ENV_VAR = "nnUNet_extTrainer"


def trainer_path() -> str:
    """The folder to put in ``nnUNet_extTrainer``."""
    return os.path.dirname(os.path.abspath(__file__))


def export_line() -> str:
    return f"export {ENV_VAR}=$(nnunetv2_ext trainer-path)"


def is_enabled() -> bool:
    """Whether ``nnUNet_extTrainer`` lists this package's shim folder."""
    paths = [os.path.abspath(p) for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p.strip()]
    return trainer_path() in paths
