"""Multi-encoder vs vanilla nnU-Net: training step and sliding-window prediction time, memory and parameters (issue:
"Multi-encoder speed on GPU: reach vanilla nnU-Net's efficiency in training and inference").

Variants: vanilla (the plans' own network), the multi-encoder at full encoder width and at half width
(``encoder_width=0.5``, about the vanilla parameter count), each with the encoders run separately and as one stack of
grouped convolutions (``encoder_impl='grouped'``). The grouped variant loads the separate variant's state_dict, so the
run also checks that the two paths share the checkpoint format, and prints the largest logit difference between them.

Training step as nnU-Net's ``train_step``: forward with deep supervision, DC_and_CE loss with nnU-Net's deep-
supervision weights, backward, gradient clipping at 12, SGD (momentum 0.99, Nesterov); on CUDA under fp16 autocast
with a GradScaler and timed with CUDA events after warm-up; on CPU in fp32 with the wall clock (a smoke run, not a
GPU claim). Prediction: nnU-Net's ``nnUNetPredictor.predict_sliding_window_return_logits`` on one random case.

    python benchmarks/multi_encoder_speed.py --device cuda                       # BraTS-like plan (6 stages 32..320)
    python benchmarks/multi_encoder_speed.py --plans $nnUNet_preprocessed/Dataset137_BraTS2021/nnUNetPlans.json
    python benchmarks/multi_encoder_speed.py --device cpu --patch 32 32 32 --features 8 16 32 --iters 3 \\
        --case-shape 40 40 40
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import statistics
import time
from types import SimpleNamespace
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from timing import timed
from torch import nn

from nnunetv2_ext.planning.multi_encoder_plans import multi_encoder_architecture

PLAIN_UNET = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
# name, encoder width (None: the vanilla network), encoder_impl
VARIANTS = (("vanilla", None, None),
            ("ME full separate", 1.0, "separate"), ("ME full grouped", 1.0, "grouped"),
            ("ME half separate", 0.5, "separate"), ("ME half grouped", 0.5, "grouped"))
WIDTH_NAMES = {1.0: "full width", 0.5: "half width"}
BRATS_FEATURES = [32, 64, 128, 256, 320, 320]
BRATS_PATCH = [128, 160, 112]
GPU_CASE_SHAPE = [155, 240, 240]  # a BraTS case
CPU_CASE_SHAPE = [40, 40, 40]


def strides_for(patch: Sequence[int], n_stages: int) -> List[List[int]]:
    """nnU-Net-like strides: halve an axis while it stays even and at least 4 voxels."""
    size, strides = list(patch), [[1] * len(patch)]
    for _ in range(1, n_stages):
        stride = [2 if s % 2 == 0 and s // 2 >= 4 else 1 for s in size]
        size = [s // st for s, st in zip(size, stride)]
        strides.append(stride)
    return strides


def synthetic_architecture(patch: Sequence[int], features: Sequence[int]) -> dict:
    """A plans-format PlainConvUNet architecture like nnU-Net's 3d_fullres plan for BraTS."""
    n, dim = len(features), len(patch)
    return {"network_class_name": PLAIN_UNET,
            "arch_kwargs": {"n_stages": n, "features_per_stage": list(features),
                            "conv_op": f"torch.nn.modules.conv.Conv{dim}d", "kernel_sizes": [[3] * dim] * n,
                            "strides": strides_for(patch, n), "n_conv_per_stage": [2] * n,
                            "n_conv_per_stage_decoder": [2] * (n - 1), "conv_bias": True,
                            "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
                            "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None,
                            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                            "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}


def settings_from_args(args: argparse.Namespace) -> SimpleNamespace:
    """Architecture (plans format), patch, batch size and batch dice, from a plans file or the BraTS-like default."""
    if args.plans:
        with open(args.plans) as f:
            config = PlansManager(json.load(f)).get_configuration(args.configuration)
        architecture = {"network_class_name": config.network_arch_class_name,
                        "arch_kwargs": dict(config.network_arch_init_kwargs),
                        "_kw_requires_import": list(config.network_arch_init_kwargs_req_import)}
        if architecture["network_class_name"].endswith("MultiEncoderUNet"):
            raise ValueError(f"{args.plans} already names the multi-encoder; give nnU-Net's own plans "
                             f"(e.g. nnUNetPlans.json) it was derived from, the benchmark derives the variants")
        if args.features:
            if len(args.features) != architecture["arch_kwargs"]["n_stages"]:
                raise ValueError(f"--features needs {architecture['arch_kwargs']['n_stages']} entries for this "
                                 f"plan, got {args.features}")
            architecture["arch_kwargs"]["features_per_stage"] = list(args.features)
        return SimpleNamespace(architecture=architecture, patch=list(args.patch or config.patch_size),
                               batch=args.batch or config.batch_size, batch_dice=config.batch_dice,
                               source=f"{args.plans} [{args.configuration}]")
    patch, features = list(args.patch or BRATS_PATCH), list(args.features or BRATS_FEATURES)
    return SimpleNamespace(architecture=synthetic_architecture(patch, features), patch=patch, batch=args.batch or 2,
                           batch_dice=False, source="BraTS-like default plan")


def variant_architecture(architecture: dict, channels: int, width: Optional[float], impl: Optional[str]) -> dict:
    if width is None:
        return architecture
    derived = multi_encoder_architecture(architecture, channels, encoder_width=width)
    derived["arch_kwargs"]["encoder_impl"] = impl
    return derived


def build(architecture: dict, channels: int, classes: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return get_network_from_plans(architecture["network_class_name"], architecture["arch_kwargs"],
                                  architecture["_kw_requires_import"], channels, classes, allow_init=True,
                                  deep_supervision=True)


def deep_supervision_loss(n_outputs: int, batch_dice: bool) -> nn.Module:
    """nnU-Net's ``_build_loss`` for label (not region) training with deep supervision."""
    loss = DC_and_CE_loss({"batch_dice": batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
                          weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)
    weights = np.array([1 / (2 ** i) for i in range(n_outputs)])
    weights[-1] = 0
    return DeepSupervisionWrapper(loss, weights / weights.sum())


def time_training(net: nn.Module, settings: SimpleNamespace, args: argparse.Namespace, device: torch.device) -> dict:
    net.train()
    net.decoder.deep_supervision = True
    optimizer = torch.optim.SGD(net.parameters(), 1e-2, weight_decay=3e-5, momentum=0.99, nesterov=True)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(settings.batch, args.channels, *settings.patch, generator=g).to(device)
    labels = torch.randint(0, args.classes, (settings.batch, 1, *settings.patch), generator=g).float().to(device)
    with torch.no_grad():
        shapes = [o.shape[2:] for o in net(x)]
    targets = [F.interpolate(labels, size=s, mode="nearest") for s in shapes]
    loss_fn = deep_supervision_loss(len(shapes), settings.batch_dice)
    autocast = torch.autocast(device.type, dtype=torch.float16) if device.type == "cuda" else contextlib.nullcontext()

    def step() -> None:  # nnUNetTrainer.train_step
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_fn(net(x), targets)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
            optimizer.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    ms = statistics.median(timed(step, device, args.iters, args.warmup))
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None
    return {"train_ms": ms, "samples_per_s": settings.batch / ms * 1000, "train_peak_mib": peak}


def predict_case(net: nn.Module, case: torch.Tensor, settings: SimpleNamespace, args: argparse.Namespace,
                 device: torch.device) -> dict:
    """nnU-Net's sliding-window prediction of one case; the predictor gets only what that method reads."""
    net.decoder.deep_supervision = False  # as nnU-Net builds the network for inference
    with contextlib.redirect_stdout(io.StringIO()):  # the predictor's note about CPU devices
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=args.mirror,
                                    perform_everything_on_device=device.type == "cuda", device=device,
                                    verbose=False, allow_tqdm=False)
    predictor.network = net
    predictor.configuration_manager = SimpleNamespace(patch_size=list(settings.patch))
    predictor.label_manager = SimpleNamespace(num_segmentation_heads=args.classes)
    predictor.allowed_mirroring_axes = tuple(range(len(settings.patch)))
    logits = None

    def run() -> None:
        nonlocal logits
        logits = predictor.predict_sliding_window_return_logits(case)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(args.predict_warmup):
        run()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(args.predict_iters):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None
    return {"predict_s": statistics.median(times), "predict_peak_mib": peak, "logits": logits.cpu()}


def run_variants(settings: SimpleNamespace, args: argparse.Namespace, device: torch.device) -> dict:
    case = torch.randn(args.channels, *args.case_shape, generator=torch.Generator().manual_seed(1))
    rows: Dict[str, dict] = {}
    initial_states: Dict[float, dict] = {}
    separate_logits: Dict[float, torch.Tensor] = {}
    diffs: Dict[str, dict] = {}
    for name, width, impl in VARIANTS:
        try:
            net = build(variant_architecture(settings.architecture, args.channels, width, impl), args.channels,
                        args.classes, seed=0)
        except ValueError as e:  # e.g. the grouped path for residual encoders
            rows[name] = {"skipped": str(e)}
            continue
        if impl == "separate":
            initial_states[width] = {k: v.detach().clone() for k, v in net.state_dict().items()}
        elif impl == "grouped" and width in initial_states:
            net.load_state_dict(initial_states.pop(width))  # the separate variant's weights: same checkpoint format
        net.to(device)
        row = {"params": sum(p.numel() for p in net.parameters())}
        model = torch.compile(net) if args.compile else net  # attribute reads (model.decoder) reach net
        prediction = predict_case(model, case, settings, args, device)
        logits = prediction.pop("logits")
        if impl == "separate":
            separate_logits[width] = logits
        elif impl == "grouped" and width in separate_logits:
            reference = separate_logits.pop(width).float()
            diff, scale = (logits.float() - reference).abs().max().item(), reference.abs().max().item()
            # nnU-Net accumulates the sliding-window logits in fp16: expect differences of its rounding
            diffs[WIDTH_NAMES.get(width, f"width {width}")] = {"max_abs_diff": diff, "max_abs_logit": scale,
                                                                 "relative": diff / max(scale, 1e-12)}
        row.update(prediction)
        row.update(time_training(model, settings, args, device))
        rows[name] = row
        del net, model, logits
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"rows": rows, "max_abs_logit_diff_grouped_vs_separate": diffs}


def markdown(result: dict) -> str:
    """The results as a markdown table (ratios to the vanilla row), the logit differences and skipped variants."""
    rows = result["rows"]
    base = rows.get("vanilla", {})

    def value(row: dict, key: str, spec: str, scale: float = 1.0) -> str:
        return format(row[key] * scale, spec) if row.get(key) is not None else "n/a"

    def ratio(row: dict, key: str) -> str:
        return f"{row[key] / base[key]:.2f}x" if row.get(key) is not None and base.get(key) else "n/a"

    header = ["variant", "train ms", "samples/s", "train vs vanilla", "train peak MiB", "memory vs vanilla",
              "params M", "params vs vanilla", "predict s", "predict vs vanilla", "predict peak MiB"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    notes = []
    for name, row in rows.items():
        if "skipped" in row:
            cells = [name] + ["skipped"] * (len(header) - 1)
            notes.append(f"- {name} skipped: {row['skipped']}")
        else:
            cells = [name, value(row, "train_ms", ".1f"), value(row, "samples_per_s", ".2f"), ratio(row, "train_ms"),
                     value(row, "train_peak_mib", ".0f"), ratio(row, "train_peak_mib"),
                     value(row, "params", ".2f", 1e-6), ratio(row, "params"), value(row, "predict_s", ".2f"),
                     ratio(row, "predict_s"), value(row, "predict_peak_mib", ".0f")]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for width, diff in result["max_abs_logit_diff_grouped_vs_separate"].items():
        lines.append(f"max abs logit diff (grouped - separate), {width}: {diff['max_abs_diff']:.3e} (max |logit| "
                     f"{diff['max_abs_logit']:.3g}, relative {diff['relative']:.1e})")
    return "\n".join(lines + notes)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--plans", help="an nnU-Net plans file (nnUNetPlans.json); default: a BraTS-like plan")
    parser.add_argument("--configuration", default="3d_fullres")
    parser.add_argument("--patch", type=int, nargs="+", help=f"patch size (default: the plans', else {BRATS_PATCH})")
    parser.add_argument("--features", type=int, nargs="+",
                        help=f"features per stage (default: the plans', else {BRATS_FEATURES})")
    parser.add_argument("--batch", type=int, help="batch size (default: the plans', else 2)")
    parser.add_argument("--channels", type=int, default=4, help="input modalities (one encoder each)")
    parser.add_argument("--classes", type=int, default=4, help="segmentation outputs (labels incl. background)")
    parser.add_argument("--iters", type=int, default=20, help="timed training steps (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed training steps first")
    parser.add_argument("--case-shape", type=int, nargs="+",
                        help=f"spatial shape of the predicted case (default {GPU_CASE_SHAPE} on cuda, "
                             f"{CPU_CASE_SHAPE} on cpu)")
    parser.add_argument("--predict-iters", type=int, default=1, help="timed predictions of the case")
    parser.add_argument("--predict-warmup", type=int, default=1, help="untimed predictions first")
    parser.add_argument("--mirror", action="store_true", help="test-time mirroring, as nnU-Net's default")
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks, as nnU-Net does on GPU")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as nnU-Net's run_training
    settings = settings_from_args(args)
    args.case_shape = args.case_shape or (GPU_CASE_SHAPE if device.type == "cuda" else CPU_CASE_SHAPE)
    if len(args.case_shape) != len(settings.patch):
        raise ValueError(f"--case-shape {args.case_shape} and the patch {settings.patch} need the same dimensions")
    result = run_variants(settings, args, device)
    kwargs = settings.architecture["arch_kwargs"]
    described = (f"{device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu, wall clock'}), "
                 f"{settings.source}: {kwargs['n_stages']} stages {list(kwargs['features_per_stage'])}, patch "
                 f"{settings.patch}, batch {settings.batch}, {args.channels} channels, {args.classes} classes; "
                 f"training median of {args.iters} steps after {args.warmup} warm-up "
                 f"({'fp16 autocast + GradScaler' if device.type == 'cuda' else 'fp32'}); prediction of a case "
                 f"{args.case_shape}, mirroring {'on' if args.mirror else 'off'}, median of {args.predict_iters}; "
                 f"torch {torch.__version__}, compile {'on' if args.compile else 'off'}")
    print(described)
    print()
    print(markdown(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": described, "device": str(device), "patch": settings.patch,
                       "batch": settings.batch, "architecture": settings.architecture, **result}, f, indent=2)


if __name__ == "__main__":
    main()
