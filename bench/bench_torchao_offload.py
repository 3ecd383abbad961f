#!/usr/bin/env python3
"""What torchao's CPUOffloadOptimizer costs our classes on the CPU: it builds one
optimizer per tensor of at least `minimal_size` (4096) elements and steps them
one after the other, where one of ours would step them all in one call.

    .venv/bin/python bench/bench_torchao_offload.py [--threads 2] [--rounds 9]

The CPU work of its step, without the device: ResNet-50's tensors of 4096
elements or more (the others stay on the device), float32, with gradients;
every round times, in turn, the per-tensor optimizers stepped in a loop (its
step) and one optimizer over the same tensors, for each class (after 2 warmup
steps each). torch's fused AdamW, its default, is timed the same way. Time
nothing else on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import LR, WEIGHT_DECAY, constructor_kwargs, load_average, resnet50_shapes  # noqa: E402

import holocron_optim as ho  # noqa: E402

MINIMAL_SIZE = 4096  # torchao's default
ALGORITHMS = ("LAMB", "LARS", "AdaBelief", "Adan")


def make(name: str, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    if name == "AdamW (torch, fused)":
        return torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY, fused=True)
    return getattr(ho, name)(params, **constructor_kwargs(name))


def tensors(shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    out = []
    for shape in shapes:
        p = (torch.randn(shape, generator=generator) * 0.05).requires_grad_(True)
        p.grad = torch.randn(shape, generator=generator) * 1e-3
        out.append(p)
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = load_average()
    shapes = [s for s in resnet50_shapes() if math.prod(s) >= MINIMAL_SIZE]

    steps = {}
    for name in ("AdamW (torch, fused)", *ALGORITHMS):
        per_tensor = [make(name, [p]) for p in tensors(shapes)]
        steps[f"{name}, one per tensor"] = lambda opts=per_tensor: [o.step() for o in opts]
        steps[f"{name}, one for all"] = make(name, tensors(shapes)).step
    for step in steps.values():
        step()
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)

    medians = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    elements = sum(math.prod(s) for s in shapes)
    print(f"torchao CPUOffloadOptimizer's CPU step: ResNet-50's {len(shapes)} tensors of >= {MINIMAL_SIZE} elements "
          f"({elements / 1e6:.1f} M elements, float32), {args.threads} threads, median of {args.rounds} steps, "
          f"load average {load}")
    print(f"{'optimizer':<22}{'one per tensor, ms':>20}{'one for all, ms':>18}{'ratio':>8}")
    for name in ("AdamW (torch, fused)", *ALGORITHMS):
        apart, together = medians[f"{name}, one per tensor"], medians[f"{name}, one for all"]
        print(f"{name:<22}{apart:>20.2f}{together:>18.2f}{apart / together:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
