"""Derive plans whose configurations build an alternative backbone (pure functions: plans dict in, new dict out).

Backbones, by name:

- ``swin_unetr``, ``segresnet``, ``unetr``: MONAI's networks through the wrappers in
  :mod:`nnunetv2_ext.architectures.monai_backbones`. The planned patch is rounded UP to what the network accepts
  (Swin UNETR: multiples of 32; SegResNet: multiples of 2 ** (levels - 1); UNETR: multiples of 16, and UNETR's
  ``img_size`` is that patch); every change is returned as a note. nnU-Net pads images smaller than the patch, for
  training and for sliding-window inference, so a larger patch needs no new preprocessing (the derived plans keep
  the ``data_identifier``). SegResNet gets deep supervision (MONAI's SegResNetDS) unless ``deep_supervision=False``.
- ``stunet_s``, ``stunet_b``, ``stunet_l``: STU-Net (Huang et al., "STU-Net: Scalable and Transferable Medical Image
  Segmentation Models Empowered by Large-Scale Supervised Pre-training", arXiv:2304.06716; the CT foundation-model
  thesis on AortaSeg24 and HaN-Seg (docs/references.md) sec. 2.3.1 and Table 4.1, where STU-Net at 128^3 has 58.18 M
  parameters, the B preset) as the residual nnU-Net of dynamic-network-architectures' ``ResidualEncoderUNet``: the
  plans' strides and kernel sizes, the preset's widths
  and blocks per stage (the authors' ``STUNetTrainer_small/base/large``, uni-medical/STU-Net
  ``network_training/STUNetTrainer.py``: widths 16..256 / 32..512 / 64..1024 over 6 stages, 1 / 1 / 2 residual blocks
  per stage). STU-Net's decoder stages are residual blocks of two convolutions each; ``UNetDecoder`` stages are plain
  convolutions, so each gets ``2 * blocks`` of them: at 6 stages, 1 input channel, 105 classes (TotalSegmentator) this
  gives 15.1 / 60.4 / 448.8 M parameters against the paper's 14.6 / 58.3 / 440.3 M (transposed-convolution
  upsampling instead of STU-Net's interpolation + 1x1 convolution makes up most of the difference). Plans with more
  than 6 stages repeat the last width; plans with fewer take the first ones.

Nothing is edited in place: callers' dicts stay as they were.
"""
from __future__ import annotations

import copy
import json
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

MONAI_MODULE = "nnunetv2_ext.architectures.monai_backbones"
RESENC_CLASS = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
RESENC_REQUIRES_IMPORT = ["conv_op", "norm_op", "dropout_op", "nonlin"]  # as nnU-Net's ResEnc planner writes them

# name -> wrapper class, plans-name suffix and default arch kwargs (the papers' BraTS settings)
MONAI_BACKBONES: Dict[str, dict] = {
    # Hatamizadeh et al. 2022 / research-contributions SwinUNETR/BRATS21: feature size 48
    "swin_unetr": {"class": "SwinUNETRBackbone", "suffix": "SwinUNETR", "defaults": {"feature_size": 48}},
    # Myronenko 2018, Table 1: 32 initial filters, blocks (1, 2, 2, 4), GroupNorm(8), ReLU
    "segresnet": {"class": "SegResNetBackbone", "suffix": "SegResNet",
                  "defaults": {"init_filters": 32, "blocks_down": [1, 2, 2, 4], "norm": ["group", {"num_groups": 8}],
                               "act": ["relu", {"inplace": True}]}},
    # Hatamizadeh et al. 2022 (UNETR): ViT-B/16, feature size 16 (MONAI's defaults)
    "unetr": {"class": "UNETRBackbone", "suffix": "UNETR",
              "defaults": {"feature_size": 16, "hidden_size": 768, "mlp_dim": 3072, "num_heads": 12}},
}
# STU-Net presets (uni-medical/STU-Net network_training/STUNetTrainer.py; paper Table 1)
STUNET_PRESETS: Dict[str, dict] = {
    "stunet_s": {"suffix": "STUNetS", "widths": [16, 32, 64, 128, 256, 256], "blocks": 1},
    "stunet_b": {"suffix": "STUNetB", "widths": [32, 64, 128, 256, 512, 512], "blocks": 1},
    "stunet_l": {"suffix": "STUNetL", "widths": [64, 128, 256, 512, 1024, 1024], "blocks": 2},
}
# networks written in this package (architectures/): class, plans suffix, number of stages (strides) they take
CUSTOM_BACKBONES: Dict[str, dict] = {
    "pctnet": {"class": "nnunetv2_ext.architectures.pctnet.PCTNet", "suffix": "PCTNet", "n_strides": 5},
    "transbts": {"class": "nnunetv2_ext.architectures.transbts.TransBTS", "suffix": "TransBTS", "n_strides": 4},
}
BACKBONE_NAMES: Tuple[str, ...] = tuple(MONAI_BACKBONES) + tuple(STUNET_PRESETS) + tuple(CUSTOM_BACKBONES)
SPATIAL_DIMS = (2, 3)  # every backbone here builds 2D and 3D networks
PRESET_CONFIG_KEYS = ("patch_size", "batch_size")
# Taheri Otaghsara and Rahmanzadeh 2025, "Multi-encoder nnU-Net outperforms Transformer models with self-supervised
# pretraining", sec. 4.2.1, Swin UNETR on BraTS: patch 96 x 96 x 96, batch size 4 (as data: dump it into plans/ to use
# it from the command line)
SWIN_UNETR_SEED000_PRESET = {
    "description": "Swin UNETR on BraTS as in Taheri Otaghsara et al. 2025 (Multi-encoder nnU-Net) sec. 4.2.1: "
                   "patch 96x96x96, batch size 4, feature size 48",
    "configurations": {"3d_fullres": {"patch_size": [96, 96, 96], "batch_size": 4}},
    "backbone": {"feature_size": 48},
}


def _check_name(name: str) -> None:
    if name not in BACKBONE_NAMES:
        raise ValueError(f"unknown backbone {name!r}; available: {', '.join(BACKBONE_NAMES)}")


def backbone_class_name(name: str) -> str:
    """The dotted ``network_class_name`` a backbone's plans use."""
    _check_name(name)
    if name in MONAI_BACKBONES:
        return f"{MONAI_MODULE}.{MONAI_BACKBONES[name]['class']}"
    if name in CUSTOM_BACKBONES:
        return CUSTOM_BACKBONES[name]["class"]
    return RESENC_CLASS


def default_plans_name(source_plans_name: str, name: str) -> str:
    """``nnUNetPlans`` + ``swin_unetr`` -> ``nnUNetPlans_SwinUNETR``."""
    _check_name(name)
    suffix = (MONAI_BACKBONES.get(name) or STUNET_PRESETS.get(name) or CUSTOM_BACKBONES[name])["suffix"]
    return f"{source_plans_name}_{suffix}"


def _monai_class(name: str):
    from nnunetv2_ext.architectures import monai_backbones  # no MONAI import: the wrappers import it when built

    return getattr(monai_backbones, MONAI_BACKBONES[name]["class"])


def _monai_architecture(name: str, config: dict, options: dict) -> List[str]:
    """Rewrite ``config`` (a private copy) for a MONAI backbone; returns notes."""
    cls = _monai_class(name)
    source = config["architecture"]
    same = source["network_class_name"] == backbone_class_name(name)
    kwargs = copy.deepcopy(source["arch_kwargs"]) if same else copy.deepcopy(MONAI_BACKBONES[name]["defaults"])
    options = dict(options)
    dims = len(config["patch_size"])
    if options.pop("spatial_dims", dims) != dims:
        raise ValueError(f"spatial_dims must match the patch {config['patch_size']} ({dims} axes)")
    notes = []
    if name == "segresnet":
        deep_supervision = options.pop("deep_supervision", None)
        if deep_supervision is None:
            deep_supervision = kwargs.get("dsdepth") is not None if same else True
        kwargs.update(options)
        levels = len(kwargs.get("blocks_down", [1, 2, 2, 4]))
        kwargs.pop("dsdepth", None)
        kwargs.pop("strides", None)
        if deep_supervision and levels - 1 >= 2:
            kwargs["dsdepth"] = levels - 1  # one head per decoder level: nnU-Net's n_stages - 1 outputs
            kwargs["strides"] = cls.network_strides(dims, [1] * levels)  # nnU-Net reads the DS scales from here
        elif deep_supervision:
            notes.append(f"SegResNet with {levels} levels has one output: no deep supervision")
    else:
        if "deep_supervision" in options:
            raise ValueError(f"{name} has no deep supervision option")
        kwargs.update(options)
    kwargs["spatial_dims"] = dims
    patch = [int(p) for p in config["patch_size"]]
    new_patch = cls.valid_patch_size(patch, **kwargs)
    if new_patch != patch:
        notes.append(f"patch {patch} -> {new_patch} for {cls.monai_name} ({cls.patch_rule(**kwargs)})")
    if name == "unetr":
        kwargs["img_size"] = new_patch
    try:
        json.dumps(kwargs)
    except TypeError as e:
        raise ValueError(f"{name} options must be JSON-serialisable (they are written into the plans): {e}") from None
    config["patch_size"] = new_patch
    config["architecture"] = {"network_class_name": backbone_class_name(name), "arch_kwargs": kwargs,
                              "_kw_requires_import": []}
    return notes


def _stunet_architecture(name: str, config: dict, options: dict) -> List[str]:
    """Rewrite ``config`` (a private copy) for an STU-Net preset; returns notes."""
    if options:
        raise ValueError(f"{name} takes no options besides patch_size and batch_size, got {sorted(options)}")
    source = config["architecture"]
    kwargs = source["arch_kwargs"]
    needed = ("n_stages", "strides", "kernel_sizes", "conv_op", "norm_op", "nonlin")
    missing = [k for k in needed if k not in kwargs]
    if missing:
        raise ValueError(f"STU-Net takes its topology (strides, kernel sizes, conv/norm ops) from an nnU-Net U-Net "
                         f"configuration; {source['network_class_name']} lacks {missing}: derive from nnU-Net's own "
                         f"plans (e.g. nnUNetPlans)")
    preset = STUNET_PRESETS[name]
    n = int(kwargs["n_stages"])
    widths = [preset["widths"][min(i, len(preset["widths"]) - 1)] for i in range(n)]
    blocks = preset["blocks"]
    arch_kwargs = {
        "n_stages": n, "features_per_stage": widths, "conv_op": kwargs["conv_op"],
        "kernel_sizes": copy.deepcopy(kwargs["kernel_sizes"]), "strides": copy.deepcopy(kwargs["strides"]),
        "n_blocks_per_stage": [blocks] * n, "n_conv_per_stage_decoder": [2 * blocks] * (n - 1),
        "conv_bias": True, "norm_op": kwargs["norm_op"],
        "norm_op_kwargs": copy.deepcopy(kwargs.get("norm_op_kwargs", {"eps": 1e-5, "affine": True})),
        "dropout_op": kwargs.get("dropout_op"), "dropout_op_kwargs": copy.deepcopy(kwargs.get("dropout_op_kwargs")),
        "nonlin": kwargs["nonlin"], "nonlin_kwargs": copy.deepcopy(kwargs.get("nonlin_kwargs", {"inplace": True})),
    }
    config["architecture"] = {"network_class_name": RESENC_CLASS, "arch_kwargs": arch_kwargs,
                              "_kw_requires_import": list(RESENC_REQUIRES_IMPORT)}
    cut = "" if n == len(preset["widths"]) else f" (STU-Net's {len(preset['widths'])} stages, the plans' {n})"
    return [f"{preset['suffix']}: widths {widths}{cut}, {blocks} residual block(s) per encoder stage, {2 * blocks} "
            f"convolutions per decoder stage, the plans' strides and kernel sizes; patch {list(config['patch_size'])} "
            f"kept"]


def _custom_architecture(name: str, config: dict, options: dict) -> List[str]:
    """Rewrite ``config`` (a private copy) for PCT-Net or TransBTS (3D only): the plans' first strides (as many as
    the network has stages; [2, 2, 2] where the plans have fewer), the patch rounded up to a multiple of their
    product, and for TransBTS the patch its position embedding is built for; returns notes."""
    spec = CUSTOM_BACKBONES[name]
    patch = [int(p) for p in config["patch_size"]]
    if len(patch) != 3:
        raise ValueError(f"{name} is 3D only, the configuration's patch is {patch}")
    source = config["architecture"]
    same = source["network_class_name"] == spec["class"]
    kwargs = copy.deepcopy(source["arch_kwargs"]) if same else {}
    planned = [list(st) for st in source["arch_kwargs"].get("strides", [[1, 1, 1]])]
    strides = (planned + [[2, 2, 2]] * spec["n_strides"])[:spec["n_strides"]] if not same else kwargs["strides"]
    kwargs.update(options)
    kwargs["strides"] = strides
    product = [int(np.prod([st[a] for st in strides])) for a in range(3)]
    new_patch = [int(np.ceil(p / m) * m) for p, m in zip(patch, product)]
    kwargs["patch_size"] = new_patch
    config["patch_size"] = new_patch
    config["architecture"] = {"network_class_name": spec["class"], "arch_kwargs": kwargs, "_kw_requires_import": []}
    notes = [f"{spec['suffix']}: strides {strides} (the plans' first {spec['n_strides']})"]
    if new_patch != patch:
        notes.append(f"patch {patch} -> {new_patch} for {spec['suffix']} (multiples of {product})")
    return notes


def backbone_architecture(name: str, configuration: dict, patch_size: Optional[Sequence[int]] = None,
                          batch_size: Optional[int] = None, **options) -> Tuple[dict, List[str]]:
    """One plans configuration rewritten for a backbone.

    Args:
        name: one of ``BACKBONE_NAMES``.
        configuration: an nnU-Net plans configuration with an ``architecture`` (left unchanged).
        patch_size: a patch to use instead of the planned one (e.g. Taheri Otaghsara et al. 2025's 96^3 for Swin
            UNETR); rounded up for MONAI backbones, re-planned with nnU-Net's topology rules for STU-Net.
        batch_size: a batch size to use instead of the planned one.
        **options: MONAI backbones: constructor arguments of the wrapper (``feature_size``, ``depths``, ...;
            SegResNet also ``deep_supervision``); a configuration already naming the same backbone keeps its
            arguments and takes these on top. STU-Net: none.

    Returns:
        (new configuration, notes): the notes say what changed beyond the network (patch rounding, stage count).

    Raises:
        ValueError: unknown name (the message lists the names), no ``architecture``, a patch that is not 2D or 3D,
            options that are not JSON-serialisable or not accepted.
    """
    _check_name(name)
    if "architecture" not in configuration:
        raise ValueError("the configuration has no 'architecture' (it inherits one: derive the configuration it "
                         "inherits from)")
    config = copy.deepcopy(configuration)
    notes: List[str] = []
    if patch_size is not None:
        patch_size = [int(p) for p in patch_size]
        if name in STUNET_PRESETS:
            from nnunetv2_ext.planning.multi_encoder_plans import adapt_topology_to_patch

            config = adapt_topology_to_patch(config, patch_size)
        elif len(patch_size) != len(config["patch_size"]):
            raise ValueError(f"patch size {patch_size} has {len(patch_size)} axes, the configuration "
                             f"{len(config['patch_size'])}")
        notes.append(f"patch {list(configuration['patch_size'])} -> {patch_size} (requested)")
        config["patch_size"] = patch_size
    if batch_size is not None:
        notes.append(f"batch size {configuration.get('batch_size')} -> {int(batch_size)} (requested)")
        config["batch_size"] = int(batch_size)
    if len(config["patch_size"]) not in SPATIAL_DIMS:
        raise ValueError(f"{name} builds 2D and 3D networks, the patch is {config['patch_size']}")
    build = _monai_architecture if name in MONAI_BACKBONES else \
        _custom_architecture if name in CUSTOM_BACKBONES else _stunet_architecture
    notes += build(name, config, options)
    return config, notes


def derive_backbone_plans(plans: dict, dataset_json: dict, name: str, plans_name: Optional[str] = None,
                          preset: Optional[dict] = None, **options) -> Tuple[dict, List[str]]:
    """New plans whose configurations build the backbone ``name``.

    Every configuration with an ``architecture`` and a 2D or 3D patch is rewritten by :func:`backbone_architecture`;
    the others are left as they are, with a note (configurations that inherit their network follow the one they
    inherit from). Spacing, normalisation, data identifiers and everything else stay as planned.

    Args:
        plans: nnU-Net plans (e.g. ``nnUNetPlans.json``), left unchanged.
        dataset_json: the dataset's dataset.json (the same signature as ``derive_multi_encoder_plans``; the backbones
            need nothing from it).
        name: one of ``BACKBONE_NAMES``.
        plans_name: default: source plans name + ``_SwinUNETR`` / ``_SegResNet`` / ``_UNETR`` / ``_STUNetS`` ...
        preset: ``{"configurations": {"3d_fullres": {"patch_size": [...], "batch_size": 4}}, "backbone": {...}}``
            (e.g. ``SWIN_UNETR_SEED000_PRESET``); ``backbone`` holds options, ``**options`` override them.
        **options: see :func:`backbone_architecture`.

    Returns:
        (new plans, notes), each note prefixed with its configuration's name.

    Raises:
        ValueError: unknown name, a preset naming a configuration the plans lack or an unknown preset key, options
            the backbone refuses.
    """
    _check_name(name)
    preset = preset or {}
    unknown = set(preset) - {"description", "configurations", "backbone"}
    if unknown:
        raise ValueError(f"preset keys {sorted(unknown)} are not supported (configurations, backbone, description)")
    per_config = preset.get("configurations", {})
    for cname, changes in per_config.items():
        if cname not in plans["configurations"]:
            raise ValueError(f"preset changes configuration {cname!r}, the plans have "
                             f"{sorted(plans['configurations'])}")
        if set(changes) - set(PRESET_CONFIG_KEYS):
            raise ValueError(f"preset keys {sorted(set(changes) - set(PRESET_CONFIG_KEYS))} are not supported "
                             f"({', '.join(PRESET_CONFIG_KEYS)})")
    options = {**preset.get("backbone", {}), **options}
    new = copy.deepcopy(plans)
    new["plans_name"] = plans_name or default_plans_name(plans["plans_name"], name)
    notes: List[str] = []
    for cname, config in new["configurations"].items():
        if "architecture" not in config:
            notes.append(f"{cname}: inherits its network from {config.get('inherits_from', '?')}")
            continue
        if len(config["patch_size"]) not in SPATIAL_DIMS:
            notes.append(f"{cname}: skipped, {name} builds 2D and 3D networks, the patch is {config['patch_size']}")
            continue
        if name in CUSTOM_BACKBONES and len(config["patch_size"]) != 3:
            notes.append(f"{cname}: skipped, {name} is 3D only, the patch is {config['patch_size']}")
            continue
        derived, config_notes = backbone_architecture(name, config, **per_config.get(cname, {}), **options)
        new["configurations"][cname] = derived
        notes += [f"{cname}: {note}" for note in config_notes]
    return new, notes


def write_backbone_plans(dataset: str | int, name: str, source_plans: str = "nnUNetPlans",
                         plans_name: Optional[str] = None, overwrite: bool = False,
                         preset_file: Optional[str] = None, **options) -> Tuple[str, List[str]]:
    """Read ``<source_plans>.json`` of a preprocessed dataset, derive the backbone's plans and write them beside it
    (``nnUNetPlans_SwinUNETR.json`` for ``swin_unetr`` by default).

    Returns:
        (written path, notes of :func:`derive_backbone_plans`).

    Raises:
        FileNotFoundError: the source plans, dataset.json or preset file is missing (with the command that makes it).
        FileExistsError: the target plans exist and ``overwrite`` is False.
        ValueError: see :func:`derive_backbone_plans`.
    """
    from nnunetv2_ext.io_utils import atomic_write_json, load_json, preprocessed_dataset_folder

    _check_name(name)
    folder = preprocessed_dataset_folder(dataset)
    source_file = folder / f"{source_plans}.json"
    if not source_file.is_file():
        raise FileNotFoundError(f"{source_file} does not exist: run nnUNetv2_plan_and_preprocess -d {dataset} first "
                                f"(or pass --source-plans with an existing plans name)")
    preset = load_json(preset_file) if preset_file is not None else None
    new, notes = derive_backbone_plans(load_json(source_file), load_json(folder / "dataset.json"), name, plans_name,
                                       preset, **options)
    path = atomic_write_json(new, folder / f"{new['plans_name']}.json", overwrite=overwrite)
    return str(path), notes
