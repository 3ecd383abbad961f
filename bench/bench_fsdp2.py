#!/usr/bin/env python3
"""Optimizer steps under FSDP2 on 2 CPU processes: ours against the reference
(pylocron==0.3.0, whose plain torch ops DTensor runs, for the classes where it
works) and torch.optim.AdamW, measured side by side in one run.

    .venv/bin/python -m torch.distributed.run --standalone --nproc_per_node 2 \\
        bench/bench_fsdp2.py [--width 2048] [--layers 4] [--rounds 7]

Each rank runs one thread. The model is `layers` float32 Linear(width, width)
layers, each under fully_shard; the gradients are made once by a backward and
kept (no algorithm here writes into them). Every round times one step of each
optimizer in turn (after 2 warmup steps each); rank 0 prints the medians and
the ratio reference / ours. Time nothing else on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import load_reference  # noqa: E402

import holocron_optim as ho  # noqa: E402

ALGORITHMS = ("LAMB", "RaLars", "AdaBelief", "Adan", "AdEMAMix")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    rank = dist.get_rank()
    reference = load_reference()

    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(args.width, args.width) for _ in range(args.layers)])
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for layer in model:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    model(torch.randn(4, args.width)).square().mean().backward()
    params = list(model.parameters())
    weights = [p.detach().clone() for p in params]

    optimizers = {"AdamW (torch, foreach)": torch.optim.AdamW(params, lr=1e-4)}
    for name in ALGORITHMS:
        optimizers[f"{name} ours"] = getattr(ho, name)(params, lr=1e-4)
        optimizers[f"{name} reference"] = getattr(reference, name)(params, lr=1e-4)
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    for round_index in range(args.rounds + 2):
        for name, opt in optimizers.items():
            dist.barrier()
            start = time.perf_counter()
            opt.step()
            dist.barrier()
            if round_index >= 2:
                times[name].append(time.perf_counter() - start)
        with torch.no_grad():  # the weights do not drift over the rounds
            for p, w in zip(params, weights):
                p.copy_(w)

    if rank == 0:
        elements = sum(p.numel() for p in params)
        print(f"FSDP2, 2 ranks x 1 thread, {args.layers} x Linear({args.width}, {args.width}) float32 "
              f"({elements / 1e6:.1f} M elements, half per rank); median of {args.rounds} steps")
        print(f"{'optimizer':<24}{'ms/step':>10}{'reference / ours':>18}")
        medians = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        print(f"{'AdamW (torch, foreach)':<24}{medians['AdamW (torch, foreach)']:>10.2f}")
        for name in ALGORITHMS:
            ours, ref = medians[f"{name} ours"], medians[f"{name} reference"]
            print(f"{name:<24}{ours:>10.2f}{ref / ours:>17.2f}x   (reference {ref:.2f} ms)")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # Skips the teardown that can abort a gloo process under torch 2.13 (see
    # exit_without_teardown in examples/python/train_fsdp2.py).
    sys.stdout.flush()
    os._exit(0)
