"""Volume Fusion pretraining step vs a supervised step of the same network and patch (issue: the pretext may cost
at most 5 %). Prints median step times and the ratio. GPU: CUDA events after warm-up, fp16 autocast as nnU-Net;
CPU: wall clock on a small patch (a smoke run, not a GPU claim).

    python benchmarks/volume_fusion_overhead.py --device cuda --patch 128 160 112 --batch 2
    python benchmarks/volume_fusion_overhead.py --device cpu --patch 32 32 32 --features 8 16 32 64 --iters 5
"""
from __future__ import annotations

import argparse
import statistics

import torch
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from timing import timed

from nnunetv2_ext.architectures.multi_encoder import MultiEncoderUNet
from nnunetv2_ext.pretext.volume_fusion import VolumeFusionConfig, volume_fusion


def build(features, n_channels: int, n_classes: int) -> MultiEncoderUNet:
    n = len(features)
    net = MultiEncoderUNet(n_channels, n, features, torch.nn.Conv3d, 3, [1] + [2] * (n - 1), 2, n_classes, 2,
                           conv_bias=True, norm_op=torch.nn.InstanceNorm3d,
                           norm_op_kwargs={"eps": 1e-5, "affine": True},
                           nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=False)
    net.apply(net.initialize)
    return net


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--patch", type=int, nargs=3, default=[128, 160, 112])
    parser.add_argument("--features", type=int, nargs="+", default=[32, 64, 128, 256, 320, 320])
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    cfg = VolumeFusionConfig()
    net = build(args.features, args.channels, cfg.k + 1).to(device)
    opt = torch.optim.SGD(net.parameters(), 1e-2, momentum=0.99, nesterov=True)
    loss_fn = DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False}, {}, weight_ce=1, weight_dice=1,
                             dice_class=MemoryEfficientSoftDiceLoss)
    images = torch.randn(args.batch, args.channels, *args.patch, device=device)
    target = torch.randint(0, cfg.k + 1, (args.batch, 1, *args.patch), device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    autocast = torch.autocast(device.type, enabled=device.type == "cuda")

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()

    def supervised():
        step(images, target)

    def pretext():
        fused, label, _ = volume_fusion(images, cfg, generator)
        step(fused, label)

    def fusion_only():
        volume_fusion(images, cfg, generator)

    results = {name: statistics.median(timed(fn, device, args.iters, args.warmup))
               for name, fn in (("supervised step", supervised), ("volume fusion step", pretext),
                                ("fusion alone", fusion_only))}
    print(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}), patch {args.patch}, "
          f"batch {args.batch}, features {args.features}, {sum(p.numel() for p in net.parameters()) / 1e6:.1f}M params")
    for name, ms in results.items():
        print(f"{name:>20}: {ms:9.2f} ms (median of {args.iters})")
    overhead = results["volume fusion step"] / results["supervised step"] - 1
    print(f"{'overhead':>20}: {100 * overhead:+.1f} % of a supervised step "
          f"(fusion alone {100 * results['fusion alone'] / results['supervised step']:.1f} %)")


if __name__ == "__main__":
    main()
