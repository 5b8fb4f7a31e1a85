"""Derive multi-encoder plans from nnU-Net's own plans (pure functions: plans dict in, new plans dict out).

The derived plans keep everything nnU-Net planned (spacing, normalisation, patch size, stages, kernel sizes,
strides, feature widths) and only swap the network class for
:class:`nnunetv2_ext.architectures.multi_encoder.MultiEncoderUNet`, adding its JSON-serialisable extras. Nothing is
edited in place: callers' dicts stay as they were.
"""
from __future__ import annotations

import copy
from typing import List, Optional, Sequence, Union, cast

from nnunetv2_ext.architectures.fusion import FUSION_MODES
from nnunetv2_ext.architectures.multi_encoder import ENCODER_TYPES, validate_encoder_groups
from nnunetv2_ext.dataset_json import channel_names

MULTI_ENCODER_CLASS = "nnunetv2_ext.architectures.multi_encoder.MultiEncoderUNet"
DEFAULT_PLANS_SUFFIX = "_MultiEncoder"
# source network class (last component of nnU-Net's dotted name) -> encoder type of the multi-encoder
SOURCE_ENCODERS = {"PlainConvUNet": "plain", "ResidualEncoderUNet": "residual", "MultiEncoderUNet": None}
MULTI_ENCODER_EXTRAS = ("encoder_groups", "fusion", "encoder", "encoder_width", "modality_names")

GroupsSpec = Union[None, str, Sequence[Sequence[Union[int, str]]]]


def parse_encoder_groups(spec: GroupsSpec, names: Sequence[str]) -> Optional[List[List[int]]]:
    """Encoder groups from a spec: ``None`` (one encoder per channel), a string such as ``"T1,T1Gd;T2,FLAIR"`` or
    ``"0,1;2,3"``, or a list of lists of channel indices or modality names.

    Raises:
        ValueError: a modality name the dataset lacks, or groups that miss or repeat channels.
    """
    if spec is None:
        return None
    if isinstance(spec, str):
        spec = [[item.strip() for item in group.split(",") if item.strip()] for group in spec.split(";")]
    groups = []
    for group in spec:
        indices = []
        for item in group:
            if isinstance(item, str) and not item.isdigit():
                if item not in names:
                    raise ValueError(f"encoder group names modality {item!r}, but the dataset's channels are "
                                     f"{list(names)}")
                indices.append(list(names).index(item))
            else:
                indices.append(int(item))
        groups.append(indices)
    validate_encoder_groups(groups, len(names), names)
    return groups


def multi_encoder_architecture(architecture: dict, n_channels: int, names: Optional[Sequence[str]] = None,
                               encoder: Optional[str] = None, fusion: str = "concat",
                               encoder_groups: GroupsSpec = None, encoder_width: float = 1.0) -> dict:
    """The ``architecture`` entry of one plans configuration, rewritten for the multi-encoder.

    Args:
        architecture: nnU-Net's ``{'network_class_name', 'arch_kwargs', '_kw_requires_import'}``.
        n_channels: number of input channels (modalities).
        names: modality name per input channel (dataset.json ``channel_names``), if known.
        encoder: ``plain`` or ``residual``; default: follow the source network (PlainConvUNet -> plain,
            ResidualEncoderUNet -> residual).
        fusion, encoder_groups, encoder_width: see ``MultiEncoderUNet``.

    Raises:
        ValueError: unsupported source network, fewer than 2 modalities, bad options.
    """
    source = architecture["network_class_name"].split(".")[-1]
    if source not in SOURCE_ENCODERS:
        raise ValueError(f"cannot derive a multi-encoder from {architecture['network_class_name']}: supported source "
                         f"networks are {sorted(SOURCE_ENCODERS)}")
    kwargs = copy.deepcopy(architecture["arch_kwargs"])
    if source == "MultiEncoderUNet":
        source_encoder = kwargs.get("encoder", "plain")
        for extra in MULTI_ENCODER_EXTRAS:
            kwargs.pop(extra, None)
    else:
        source_encoder = SOURCE_ENCODERS[source]
    encoder = encoder or source_encoder
    if encoder not in ENCODER_TYPES:
        raise ValueError(f"encoder must be one of {ENCODER_TYPES}, got {encoder!r}")
    if fusion not in FUSION_MODES:
        raise ValueError(f"fusion must be one of {FUSION_MODES}, got {fusion!r}")
    if not encoder_width > 0:
        raise ValueError(f"encoder_width must be > 0, got {encoder_width}")
    if fusion != "concat" and encoder_width != 1.0:
        raise ValueError(f"fusion {fusion!r} adds encoder features element-wise, so the encoders need the decoder "
                         f"width (encoder_width 1.0), got encoder_width {encoder_width}; use fusion='concat'")
    if "n_blocks_per_stage" in kwargs:  # ResEnc plans
        kwargs["n_conv_per_stage"] = kwargs.pop("n_blocks_per_stage")
    for key in ("block", "bottleneck_channels", "stem_channels"):  # ResEnc-only options the multi-encoder lacks
        kwargs.pop(key, None)
    if encoder != source_encoder and source_encoder == "residual":
        # residual plans count blocks (1, 3, 4, 6, ...); a plain encoder uses nnU-Net's 2 convs per stage
        kwargs["n_conv_per_stage"] = [2] * kwargs["n_stages"]
    if names is not None and len(names) != n_channels:
        raise ValueError(f"{len(names)} modality names {list(names)} for {n_channels} input channels")
    groups = parse_encoder_groups(encoder_groups, names if names is not None else [str(i) for i in range(n_channels)])
    validate_encoder_groups(groups, n_channels, names)
    kwargs.update(encoder_groups=groups, fusion=fusion, encoder=encoder, encoder_width=float(encoder_width),
                  modality_names=list(names) if names is not None else None)
    return {"network_class_name": MULTI_ENCODER_CLASS, "arch_kwargs": kwargs,
            "_kw_requires_import": list(architecture["_kw_requires_import"])}


def derive_multi_encoder_plans(plans: dict, dataset_json: dict, plans_name: Optional[str] = None,
                               preset: Optional[dict] = None, **options) -> dict:
    """A new plans dict whose configurations build ``MultiEncoderUNet``.

    Args:
        plans: nnU-Net plans (e.g. ``nnUNetPlans.json``), left unchanged.
        dataset_json: the dataset's dataset.json (``channel_names`` name the encoders).
        plans_name: name of the new plans (default: source name + ``_MultiEncoder``).
        preset: optional preset (see ``apply_preset``), applied after the architecture swap.
        **options: ``encoder``, ``fusion``, ``encoder_groups``, ``encoder_width`` for every configuration.
    """
    names = cast(List[str], channel_names(dataset_json))  # required=True: raises instead of returning None
    new = copy.deepcopy(plans)
    new["plans_name"] = plans_name or plans["plans_name"] + DEFAULT_PLANS_SUFFIX
    options = {**(preset or {}).get("multi_encoder", {}), **{k: v for k, v in options.items() if v is not None}}
    for config in new["configurations"].values():
        if "architecture" in config:
            config["architecture"] = multi_encoder_architecture(config["architecture"], len(names), names, **options)
    if preset is not None:
        new = apply_preset(new, preset)
    return new


def adapt_topology_to_patch(config: dict, patch_size: Sequence[int], min_feature_map_size: int = 4) -> dict:
    """A configuration with a new patch size and the network topology nnU-Net's planner would give it.

    Uses nnU-Net's own ``get_pool_and_conv_props`` (the planner's function), so strides, kernel sizes and the
    number of stages match what ``nnUNetv2_plan_experiment`` makes for that patch; per-stage lists (features,
    convs per stage) are cut or extended following the source plan's rule.

    Raises:
        ValueError: a patch with the wrong number of axes, or one the planner has to change (not divisible by
            the pooling it needs); the message gives the nearest valid patch.
    """
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    config = copy.deepcopy(config)
    if len(patch_size) != len(config["spacing"]):
        raise ValueError(f"patch size {list(patch_size)} has {len(patch_size)} axes, the configuration has "
                         f"{len(config['spacing'])}")
    _, strides, kernels, new_patch, _ = get_pool_and_conv_props(config["spacing"], list(patch_size),
                                                                min_feature_map_size, 999999)
    if [int(i) for i in new_patch] != [int(i) for i in patch_size]:
        raise ValueError(f"patch size {list(patch_size)} is not divisible by the pooling nnU-Net plans for it; "
                         f"the nearest valid patch is {[int(i) for i in new_patch]}")
    kwargs = config["architecture"]["arch_kwargs"]
    n_stages = len(strides)
    features = list(kwargs["features_per_stage"])
    # nnU-Net's planner caps widths at 320 (3D) / 512 (2D) (ExperimentPlanner.UNet_max_features_3d/_2d)
    base, top = features[0], max(max(features), 320 if len(patch_size) == 3 else 512)
    encoder_key = "n_blocks_per_stage" if "n_blocks_per_stage" in kwargs else "n_conv_per_stage"

    def resize(values: list, n: int) -> list:
        return list(values[:n]) + [values[-1]] * max(0, n - len(values))

    kwargs.update({"n_stages": n_stages, "strides": [list(s) for s in strides],
                   "kernel_sizes": [list(k) for k in kernels],
                   "features_per_stage": [min(top, base * 2 ** i) for i in range(n_stages)],
                   encoder_key: resize(kwargs[encoder_key], n_stages),
                   "n_conv_per_stage_decoder": resize(kwargs["n_conv_per_stage_decoder"], n_stages - 1)})
    config["patch_size"] = [int(i) for i in patch_size]
    return config


def sized_configuration(config: dict, patch_size: Optional[Sequence[int]] = None, base_features: Optional[int] = None,
                        max_stages: Optional[int] = None, batch_size: Optional[int] = None,
                        spacing: Optional[float] = None) -> dict:
    """A planned configuration resized for a smaller machine (the CPU quickstart, the proxy benchmark's scales):
    an isotropic ``spacing``, a new patch (topology re-derived by ``adapt_topology_to_patch``), at most
    ``max_stages`` resolution stages, widths ``base_features * 2**stage`` (capped at nnU-Net's 320) and a batch size.
    ``None`` keeps the plans' value. Returns a new dict; ``inherits_from`` is dropped, so pass a resolved
    configuration (``PlansManager.get_configuration(name).configuration``)."""
    config = copy.deepcopy(config)
    config.pop("inherits_from", None)
    if spacing is not None:
        config["spacing"] = [float(spacing)] * len(config["spacing"])
    if patch_size is not None:
        config = adapt_topology_to_patch(config, list(patch_size))
    kwargs = config["architecture"]["arch_kwargs"]
    if max_stages is not None and kwargs["n_stages"] > max_stages:
        n = int(max_stages)
        encoder_key = "n_blocks_per_stage" if "n_blocks_per_stage" in kwargs else "n_conv_per_stage"
        kwargs.update(n_stages=n, strides=kwargs["strides"][:n], kernel_sizes=kwargs["kernel_sizes"][:n],
                      features_per_stage=kwargs["features_per_stage"][:n], **{encoder_key: kwargs[encoder_key][:n]},
                      n_conv_per_stage_decoder=kwargs["n_conv_per_stage_decoder"][:n - 1])
    if base_features is not None:
        kwargs["features_per_stage"] = [min(320, int(base_features) * 2 ** i) for i in range(kwargs["n_stages"])]
    if batch_size is not None:
        config["batch_size"] = int(batch_size)
    return config


def apply_preset(plans: dict, preset: dict) -> dict:
    """Apply a preset (JSON from ``plans/``): ``{"configurations": {"3d_fullres": {"patch_size": [...],
    "batch_size": 2}}, "multi_encoder": {...}}``. A patch size change re-derives the topology.

    Raises:
        ValueError: the preset names a configuration the plans lack, or an unknown key.
    """
    plans = copy.deepcopy(plans)
    for name, changes in preset.get("configurations", {}).items():
        if name not in plans["configurations"]:
            raise ValueError(f"preset changes configuration {name!r}, the plans have "
                             f"{sorted(plans['configurations'])}")
        config = plans["configurations"][name]
        unknown = set(changes) - {"patch_size", "batch_size"}
        if unknown:
            raise ValueError(f"preset keys {sorted(unknown)} are not supported (patch_size, batch_size)")
        if "patch_size" in changes:
            config = adapt_topology_to_patch(config, changes["patch_size"])
        if "batch_size" in changes:
            config["batch_size"] = int(changes["batch_size"])
        plans["configurations"][name] = config
    return plans


def write_multi_encoder_plans(dataset: str | int, source_plans: str = "nnUNetPlans",
                              plans_name: Optional[str] = None, preset_file: Optional[str] = None,
                              overwrite: bool = False, **options) -> str:
    """Read ``<source_plans>.json`` of a preprocessed dataset, derive the multi-encoder plans and write them beside
    it (``nnUNetPlans_MultiEncoder.json`` by default). Returns the written path.

    Raises:
        FileNotFoundError: the source plans, dataset.json or preset file is missing (with the command that makes it).
        FileExistsError: the target plans exist and ``overwrite`` is False.
        ValueError: the target would be the source plans (``plans_name == source_plans``).
    """
    from nnunetv2_ext.io_utils import atomic_write_json
    from nnunetv2_ext.planning.plans_files import check_output_name, read_planning_inputs

    folder, plans, dataset_json, preset = read_planning_inputs(dataset, source_plans, preset_file)
    new = derive_multi_encoder_plans(plans, dataset_json, plans_name, preset, **options)
    check_output_name(new["plans_name"], source_plans)
    return str(atomic_write_json(new, folder / f"{new['plans_name']}.json", overwrite=overwrite))
