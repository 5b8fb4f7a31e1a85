"""Timing shared by the benchmark scripts (imported as a sibling module: run them as ``python benchmarks/<x>.py``)."""
from __future__ import annotations

import time
from typing import Callable, List

import torch


def timed(fn: Callable[[], None], device: torch.device, iters: int, warmup: int) -> List[float]:
    """Milliseconds per call: CUDA events on the GPU, wall clock on the CPU."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
    return times
