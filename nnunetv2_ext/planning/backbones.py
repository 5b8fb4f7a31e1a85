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
- ``pctnet``, ``transbts``: PCT-Net (Wang et al., "MIS-FM: 3D Medical Image Segmentation using Foundation Models
  Pretrained on a Large-Scale Unannotated Dataset", 2023, arXiv:2306.16925, sec. 3.1.4) and TransBTS (Wang et al.,
  "TransBTS: Multimodal Brain Tumor Segmentation Using Transformer", MICCAI 2021, arXiv:2103.04430), written in
  :mod:`nnunetv2_ext.architectures`, 3D only: the plans' first strides
  (as many as the network has levels), the patch rounded up to a multiple of their product (TransBTS's position
  embedding is built for that patch).

The backbones are one table, :data:`BACKBONES`: name -> :class:`BackboneSpec` (the class the plans name, the plans
suffix, the builder that writes the architecture, what a requested patch does, the spatial dimensions, defaults or
presets as data). Every function here dispatches through the spec; adding a backbone is its network file, one row
and its trainer (CONTRIBUTING.md, "Adding a backbone"). The patch sizes a network accepts are the network's own rule
(``valid_patch_size`` / ``patch_rule`` class methods of the MONAI wrappers and of
:class:`nnunetv2_ext.architectures.strides.PlansStrides`); the builders import the network's module only when they
run, so importing this module imports no torch (the command-line parser reads :data:`BACKBONE_NAMES`).

Nothing is edited in place: callers' dicts stay as they were.
"""
from __future__ import annotations

import copy
import importlib
import json
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple, cast

MONAI_MODULE = "nnunetv2_ext.architectures.monai_backbones"
RESENC_CLASS = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
RESENC_REQUIRES_IMPORT = ("conv_op", "norm_op", "dropout_op", "nonlin")  # as nnU-Net's ResEnc planner writes them
SPATIAL_DIMS = (2, 3)  # what a backbone builds unless its spec says otherwise
PRESET_CONFIG_KEYS = ("patch_size", "batch_size")
# Taheri Otaghsara and Rahmanzadeh 2025, "Multi-encoder nnU-Net outperforms Transformer models with self-supervised
# pretraining", sec. 4.2.1, Swin UNETR on BraTS: patch 96 x 96 x 96, batch size 4 (as data: dump it into plans/ to use
# it from the command line)
SWIN_UNETR_TAHERI2025_PRESET = {
    "description": "Swin UNETR on BraTS as in Taheri Otaghsara et al. 2025 (Multi-encoder nnU-Net) sec. 4.2.1: "
                   "patch 96x96x96, batch size 4, feature size 48",
    "configurations": {"3d_fullres": {"patch_size": [96, 96, 96], "batch_size": 4}},
    "backbone": {"feature_size": 48},
}

# (name, spec, private copy of the configuration, options) -> notes; writes the configuration's architecture and patch
Builder = Callable[[str, "BackboneSpec", dict, dict], List[str]]
# (private copy of the configuration, requested patch) -> configuration ready for that patch
PatchRequest = Callable[[dict, List[int]], dict]
# (network class, arch kwargs to complete, requested or None, the source's arch kwargs if it is the same network,
#  spatial dims) -> notes
DeepSupervisionRule = Callable[[type, dict, Optional[bool], Optional[dict], int], List[str]]


# What the builders read from a network class without building it (``BackboneSpec.network_class`` imports it by
# dotted path, so its static type is only ``type``): the class methods of the MONAI wrappers and of
# :class:`nnunetv2_ext.architectures.strides.PlansStrides`.
class PatchRules(Protocol):
    """A network class's patch rule: ``valid_patch_size`` rounds a patch up to what it accepts."""

    def valid_patch_size(self, patch: Sequence[int], **arch_kwargs: Any) -> List[int]: ...

    def patch_rule(self, **arch_kwargs: Any) -> str: ...


class FixedLevels(PatchRules, Protocol):
    """A network class with a fixed number of resolution levels (``PlansStrides``: PCT-Net, TransBTS)."""

    n_levels: int


class DeepSupervisionRules(Protocol):
    """A network class whose deep supervision the plans switch (``SegResNetBackbone``)."""

    def has_deep_supervision(self, dsdepth: Optional[int] = None, **arch_kwargs: Any) -> bool: ...

    def network_strides(self, spatial_dims: int, blocks_down: Sequence[int]) -> List[List[int]]: ...


def same_topology(config: dict, patch: List[int]) -> dict:
    """A requested patch with the planned topology: the builder rounds it to what the network accepts."""
    if len(patch) != len(config["patch_size"]):
        raise ValueError(f"patch size {patch} has {len(patch)} axes, the configuration {len(config['patch_size'])}")
    return config


def replanned_topology(config: dict, patch: List[int]) -> dict:
    """A requested patch with the strides and kernel sizes nnU-Net's planner gives it (for U-Nets that take the
    plans' topology, e.g. STU-Net)."""
    from nnunetv2_ext.planning.multi_encoder_plans import adapt_topology_to_patch  # imports torch

    return adapt_topology_to_patch(config, patch)


@dataclass(frozen=True)
class BackboneSpec:
    """One row of :data:`BACKBONES`.

    Attributes:
        class_path: the dotted ``network_class_name`` its plans use (nnU-Net resolves it with ``pydoc.locate``).
        suffix: plans-name suffix: ``nnUNetPlans`` -> ``nnUNetPlans_<suffix>``; also names the network in notes.
        builder: writes the architecture (and the patch the network accepts) into a configuration; one of
            :func:`monai_architecture`, :func:`plans_strides_architecture`, :func:`unet_kwargs_architecture`,
            :func:`stunet_architecture`, or a new one.
        requested_patch: how a requested ``patch_size`` enters the configuration before the builder runs:
            :func:`same_topology` (the network's rule rounds it) or :func:`replanned_topology`.
        spatial_dims: the patch dimensionalities it builds; other configurations are skipped with a note.
        defaults: data, read-only: the default arch kwargs (the papers' settings) or the preset (STU-Net: widths and
            blocks per stage), as the builder reads them.
        patch_kwarg: the constructor argument that receives the (rounded) patch, for a network built for one input
            size (UNETR's ``img_size``, TransBTS's ``patch_size``).
        deep_supervision: for a network with a ``deep_supervision`` option (SegResNet): completes its arch kwargs;
            ``None``: the option is refused.
        requires_import: arch kwargs nnU-Net imports by dotted name (``_kw_requires_import``).
    """
    class_path: str
    suffix: str
    builder: Builder
    requested_patch: PatchRequest = same_topology
    spatial_dims: Tuple[int, ...] = SPATIAL_DIMS
    defaults: Mapping[str, Any] = field(default_factory=dict)
    patch_kwarg: Optional[str] = None
    deep_supervision: Optional[DeepSupervisionRule] = None
    requires_import: Tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))

    def network_class(self) -> type:
        """The network class (imports its module, hence torch)."""
        module, _, cls = self.class_path.rpartition(".")
        return getattr(importlib.import_module(module), cls)

    def dims_rule(self) -> str:
        """``builds 2D and 3D networks`` / ``is 3D only``, for messages."""
        if len(self.spatial_dims) == 1:
            return f"is {self.spatial_dims[0]}D only"
        return f"builds {' and '.join(f'{d}D' for d in self.spatial_dims)} networks"


def _check_json(name: str, kwargs: dict) -> None:
    try:
        json.dumps(kwargs)
    except TypeError as e:
        raise ValueError(f"{name} options must be JSON-serialisable (they are written into the plans): {e}") from None


def _network_architecture(name: str, spec: BackboneSpec, cls: type, config: dict, kwargs: dict) -> List[str]:
    """The patch rounded by the network's rule, and the architecture with ``kwargs`` written; returns notes."""
    rules = cast(PatchRules, cls)
    patch = [int(p) for p in config["patch_size"]]
    new_patch = rules.valid_patch_size(patch, **kwargs)
    notes = []
    if new_patch != patch:
        notes.append(f"patch {patch} -> {new_patch} for {spec.suffix} ({rules.patch_rule(**kwargs)})")
    if spec.patch_kwarg is not None:
        kwargs[spec.patch_kwarg] = new_patch
    _check_json(name, kwargs)
    config["patch_size"] = new_patch
    config["architecture"] = {"network_class_name": spec.class_path, "arch_kwargs": kwargs,
                              "_kw_requires_import": list(spec.requires_import)}
    return notes


def _start_kwargs(spec: BackboneSpec, config: dict) -> Tuple[dict, bool]:
    """The arch kwargs to start from: the configuration's own when it already names this network (derivation is
    idempotent and keeps them), else the spec's defaults; and whether it did."""
    source = config["architecture"]
    same = source["network_class_name"] == spec.class_path
    return copy.deepcopy(dict(source["arch_kwargs"]) if same else dict(spec.defaults)), same


def monai_architecture(name: str, spec: BackboneSpec, config: dict, options: dict) -> List[str]:
    """Builder of the MONAI wrappers (:mod:`nnunetv2_ext.architectures.monai_backbones`): ``options`` are constructor
    arguments on top of the defaults (or of the configuration's, for the same network), ``spatial_dims`` is the
    patch's, the patch is rounded up by the wrapper's ``valid_patch_size``."""
    cls = spec.network_class()
    kwargs, same = _start_kwargs(spec, config)
    options = dict(options)
    dims = len(config["patch_size"])
    if options.pop("spatial_dims", dims) != dims:
        raise ValueError(f"spatial_dims must match the patch {config['patch_size']} ({dims} axes)")
    if "deep_supervision" in options and spec.deep_supervision is None:
        raise ValueError(f"{name} has no deep supervision option")
    requested = options.pop("deep_supervision", None)
    kwargs.update(options)
    notes = []
    if spec.deep_supervision is not None:
        source = config["architecture"]["arch_kwargs"] if same else None
        notes += spec.deep_supervision(cls, kwargs, requested, source, dims)
    kwargs["spatial_dims"] = dims
    return notes + _network_architecture(name, spec, cls, config, kwargs)


def segresnet_deep_supervision(cls: type, kwargs: dict, requested: Optional[bool], source: Optional[dict],
                               dims: int) -> List[str]:
    """SegResNet's deep supervision through MONAI's SegResNetDS: one head per decoder level (nnU-Net's n_stages - 1
    outputs) and the strides nnU-Net reads its scales from. On unless ``deep_supervision=False``, or the source is a
    SegResNet without it."""
    from nnunetv2_ext.architectures.monai_backbones import SEGRESNET_DEFAULT_BLOCKS_DOWN

    if requested is None:
        requested = source.get("dsdepth") is not None if source is not None else True
    levels = len(kwargs.get("blocks_down", SEGRESNET_DEFAULT_BLOCKS_DOWN))
    kwargs.pop("dsdepth", None)
    kwargs.pop("strides", None)
    rules = cast(DeepSupervisionRules, cls)
    if requested and rules.has_deep_supervision(dsdepth=levels - 1):
        kwargs["dsdepth"] = levels - 1
        kwargs["strides"] = rules.network_strides(dims, [1] * levels)
    elif requested:
        return [f"SegResNet with {levels} levels has one output: no deep supervision"]
    return []


def plans_strides_architecture(name: str, spec: BackboneSpec, config: dict, options: dict) -> List[str]:
    """Builder of networks with a fixed number of levels whose strides come from the plans
    (:class:`nnunetv2_ext.architectures.strides.PlansStrides`: PCT-Net, TransBTS): the plans' first strides (as many
    as the network has levels; [2, 2, 2] where the plans have fewer), the patch rounded up by the network's rule (a
    multiple of their product)."""
    cls = spec.network_class()
    kwargs, same = _start_kwargs(spec, config)
    n = cast(FixedLevels, cls).n_levels
    if same:
        strides = kwargs["strides"]
    else:
        planned = [list(st) for st in config["architecture"]["arch_kwargs"].get("strides", [[1, 1, 1]])]
        strides = (planned + [[2, 2, 2]] * n)[:n]
    kwargs.update(options)
    kwargs["strides"] = strides
    return [f"{spec.suffix}: strides {strides} (the plans' first {n})"] + \
        _network_architecture(name, spec, cls, config, kwargs)


def _unet_topology(spec: BackboneSpec, source: dict) -> dict:
    """The arch kwargs of the configuration's nnU-Net U-Net, checked to hold a topology."""
    kwargs = source["arch_kwargs"]
    needed = ("n_stages", "strides", "kernel_sizes", "conv_op", "norm_op", "nonlin")
    missing = [k for k in needed if k not in kwargs]
    if missing:
        raise ValueError(f"{spec.suffix} takes its topology (strides, kernel sizes, conv/norm ops) from an nnU-Net "
                         f"U-Net configuration; {source['network_class_name']} lacks {missing}: derive from nnU-Net's "
                         f"own plans (e.g. nnUNetPlans)")
    return kwargs


def unet_kwargs_architecture(name: str, spec: BackboneSpec, config: dict, options: dict) -> List[str]:
    """Builder of networks that take the dynamic-network-architectures U-Net constructor (STYLE habit 2: the
    ``PlainConvUNet`` / ``ResidualEncoderUNet`` keyword arguments plus JSON-serialisable extras): the configuration's
    U-Net arch kwargs with the class replaced, ``defaults`` and then ``options`` on top; topology and patch kept.
    Derive from plans of the U-Net whose arguments the network takes (``nnUNetPlans`` for ``PlainConvUNet``'s); with
    ``requested_patch=replanned_topology`` a requested patch gets the strides nnU-Net's planner gives it."""
    source = config["architecture"]
    if source["network_class_name"] == spec.class_path:
        kwargs = copy.deepcopy(source["arch_kwargs"])
    else:
        kwargs = {**copy.deepcopy(_unet_topology(spec, source)), **copy.deepcopy(dict(spec.defaults))}
    kwargs.update(copy.deepcopy(options))
    _check_json(name, kwargs)
    requires_import = source.get("_kw_requires_import", list(spec.requires_import))
    config["architecture"] = {"network_class_name": spec.class_path, "arch_kwargs": kwargs,
                              "_kw_requires_import": list(requires_import)}
    return [f"{spec.suffix}: the plans' U-Net arguments ({kwargs['n_stages']} stages); patch "
            f"{list(config['patch_size'])} kept"]


def stunet_architecture(name: str, spec: BackboneSpec, config: dict, options: dict) -> List[str]:
    """Builder of the STU-Net presets (``defaults``: ``widths`` per stage, residual ``blocks`` per stage) on the
    residual nnU-Net, with the topology of the configuration's U-Net; the patch is kept."""
    if options:
        raise ValueError(f"{name} takes no options besides patch_size and batch_size, got {sorted(options)}")
    kwargs = _unet_topology(spec, config["architecture"])
    preset_widths, blocks = list(spec.defaults["widths"]), spec.defaults["blocks"]
    n = int(kwargs["n_stages"])
    widths = [preset_widths[min(i, len(preset_widths) - 1)] for i in range(n)]
    arch_kwargs = {
        "n_stages": n, "features_per_stage": widths, "conv_op": kwargs["conv_op"],
        "kernel_sizes": copy.deepcopy(kwargs["kernel_sizes"]), "strides": copy.deepcopy(kwargs["strides"]),
        "n_blocks_per_stage": [blocks] * n, "n_conv_per_stage_decoder": [2 * blocks] * (n - 1),
        "conv_bias": True, "norm_op": kwargs["norm_op"],
        "norm_op_kwargs": copy.deepcopy(kwargs.get("norm_op_kwargs", {"eps": 1e-5, "affine": True})),
        "dropout_op": kwargs.get("dropout_op"), "dropout_op_kwargs": copy.deepcopy(kwargs.get("dropout_op_kwargs")),
        "nonlin": kwargs["nonlin"], "nonlin_kwargs": copy.deepcopy(kwargs.get("nonlin_kwargs", {"inplace": True})),
    }
    config["architecture"] = {"network_class_name": spec.class_path, "arch_kwargs": arch_kwargs,
                              "_kw_requires_import": list(spec.requires_import)}
    cut = "" if n == len(preset_widths) else f" (STU-Net's {len(preset_widths)} stages, the plans' {n})"
    return [f"{spec.suffix}: widths {widths}{cut}, {blocks} residual block(s) per encoder stage, {2 * blocks} "
            f"convolutions per decoder stage, the plans' strides and kernel sizes; patch {list(config['patch_size'])} "
            f"kept"]


def _stunet(suffix: str, widths: Sequence[int], blocks: int) -> BackboneSpec:
    return BackboneSpec(RESENC_CLASS, suffix, stunet_architecture, requested_patch=replanned_topology,
                        defaults={"widths": list(widths), "blocks": blocks}, requires_import=RESENC_REQUIRES_IMPORT)


BACKBONES: Dict[str, BackboneSpec] = {
    # Hatamizadeh et al. 2022 / research-contributions SwinUNETR/BRATS21: feature size 48
    "swin_unetr": BackboneSpec(f"{MONAI_MODULE}.SwinUNETRBackbone", "SwinUNETR", monai_architecture,
                               defaults={"feature_size": 48}),
    # Myronenko 2018, Table 1: 32 initial filters, blocks (1, 2, 2, 4), GroupNorm(8), ReLU; deep supervision through
    # MONAI's SegResNetDS
    "segresnet": BackboneSpec(f"{MONAI_MODULE}.SegResNetBackbone", "SegResNet", monai_architecture,
                              defaults={"init_filters": 32, "blocks_down": [1, 2, 2, 4],
                                        "norm": ["group", {"num_groups": 8}], "act": ["relu", {"inplace": True}]},
                              deep_supervision=segresnet_deep_supervision),
    # Hatamizadeh et al. 2022 (UNETR): ViT-B/16, feature size 16 (MONAI's defaults); img_size is the patch
    "unetr": BackboneSpec(f"{MONAI_MODULE}.UNETRBackbone", "UNETR", monai_architecture,
                          defaults={"feature_size": 16, "hidden_size": 768, "mlp_dim": 3072, "num_heads": 12},
                          patch_kwarg="img_size"),
    # STU-Net presets (uni-medical/STU-Net network_training/STUNetTrainer.py; paper Table 1)
    "stunet_s": _stunet("STUNetS", [16, 32, 64, 128, 256, 256], blocks=1),
    "stunet_b": _stunet("STUNetB", [32, 64, 128, 256, 512, 512], blocks=1),
    "stunet_l": _stunet("STUNetL", [64, 128, 256, 512, 1024, 1024], blocks=2),
    # networks written in this package (architectures/), 3D only, strides from the plans
    "pctnet": BackboneSpec("nnunetv2_ext.architectures.pctnet.PCTNet", "PCTNet", plans_strides_architecture,
                           spatial_dims=(3,), patch_kwarg="patch_size"),
    "transbts": BackboneSpec("nnunetv2_ext.architectures.transbts.TransBTS", "TransBTS", plans_strides_architecture,
                             spatial_dims=(3,), patch_kwarg="patch_size"),
}
BACKBONE_NAMES: Tuple[str, ...] = tuple(BACKBONES)


def backbone_spec(name: str) -> BackboneSpec:
    """The registry row of ``name``.

    Raises:
        ValueError: unknown name (the message lists the names).
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; available: {', '.join(BACKBONE_NAMES)}")
    return BACKBONES[name]


def backbone_class_name(name: str) -> str:
    """The dotted ``network_class_name`` a backbone's plans use."""
    return backbone_spec(name).class_path


def default_plans_name(source_plans_name: str, name: str) -> str:
    """``nnUNetPlans`` + ``swin_unetr`` -> ``nnUNetPlans_SwinUNETR``."""
    return f"{source_plans_name}_{backbone_spec(name).suffix}"


def backbone_architecture(name: str, configuration: dict, patch_size: Optional[Sequence[int]] = None,
                          batch_size: Optional[int] = None, **options) -> Tuple[dict, List[str]]:
    """One plans configuration rewritten for a backbone.

    Args:
        name: one of ``BACKBONE_NAMES``.
        configuration: an nnU-Net plans configuration with an ``architecture`` (left unchanged).
        patch_size: a patch to use instead of the planned one (e.g. Taheri Otaghsara et al. 2025's 96^3 for Swin
            UNETR); the spec's ``requested_patch`` applies it: rounded up to what the network accepts (MONAI
            backbones, PCT-Net, TransBTS), re-planned with nnU-Net's topology rules for STU-Net.
        batch_size: a batch size to use instead of the planned one.
        **options: MONAI backbones: constructor arguments of the wrapper (``feature_size``, ``depths``, ...;
            SegResNet also ``deep_supervision``), PCT-Net and TransBTS: constructor arguments of the network; a
            configuration already naming the same backbone keeps its arguments and takes these on top. STU-Net:
            none.

    Returns:
        (new configuration, notes): the notes say what changed beyond the network (patch rounding, stage count).

    Raises:
        ValueError: unknown name (the message lists the names), no ``architecture``, a patch of a dimensionality
            the backbone does not build (``spatial_dims``), options that are not JSON-serialisable or not accepted.
    """
    spec = backbone_spec(name)
    if "architecture" not in configuration:
        raise ValueError("the configuration has no 'architecture' (it inherits one: derive the configuration it "
                         "inherits from)")
    config = copy.deepcopy(configuration)
    notes: List[str] = []
    if patch_size is not None:
        patch_size = [int(p) for p in patch_size]
        config = spec.requested_patch(config, patch_size)
        notes.append(f"patch {list(configuration['patch_size'])} -> {patch_size} (requested)")
        config["patch_size"] = patch_size
    if batch_size is not None:
        notes.append(f"batch size {configuration.get('batch_size')} -> {int(batch_size)} (requested)")
        config["batch_size"] = int(batch_size)
    if len(config["patch_size"]) not in spec.spatial_dims:
        raise ValueError(f"{name} {spec.dims_rule()}, the patch is {config['patch_size']}")
    notes += spec.builder(name, spec, config, options)
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
            (e.g. ``SWIN_UNETR_TAHERI2025_PRESET``); ``backbone`` holds options, ``**options`` override them.
        **options: see :func:`backbone_architecture`.

    Returns:
        (new plans, notes), each note prefixed with its configuration's name.

    Raises:
        ValueError: unknown name, a preset naming a configuration the plans lack or an unknown preset key, options
            the backbone refuses.
    """
    spec = backbone_spec(name)
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
        if len(config["patch_size"]) not in spec.spatial_dims:
            notes.append(f"{cname}: skipped, {name} {spec.dims_rule()}, the patch is {config['patch_size']}")
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
        ValueError: see :func:`derive_backbone_plans`; the target would be the source plans.
    """
    from nnunetv2_ext.io_utils import atomic_write_json
    from nnunetv2_ext.planning.plans_files import check_output_name, read_planning_inputs

    backbone_spec(name)
    folder, plans, dataset_json, preset = read_planning_inputs(dataset, source_plans, preset_file)
    new, notes = derive_backbone_plans(plans, dataset_json, name, plans_name, preset, **options)
    check_output_name(new["plans_name"], source_plans)
    path = atomic_write_json(new, folder / f"{new['plans_name']}.json", overwrite=overwrite)
    return str(path), notes
