#!/usr/bin/env python3
"""The ZeRO-Offload optimizer step: ours on DeepSpeed's flat CPU partition of a
ResNet-50-sized model against DeepSpeed's own DeepSpeedCPUAdam (its AVX build,
JIT-compiled by DeepSpeed) on the same partition, in one process.

    .venv/bin/python bench/bench_zero_offload.py [--threads 2] [--rounds 7]

One DeepSpeed engine (ZeRO stage 2, offload_optimizer: cpu, one rank, gloo)
makes the partition and, through zero_aware, its layout of the 161 tensors;
each optimizer steps its own copy of it (same layout, same gradient), as
ZeRO-Offload steps its client: one group holding one flat float32 tensor.
Every round times one step of each optimizer in turn (after 2 warmup steps
each). Reported: median ms/step, and time per byte moved relative to
DeepSpeedCPUAdam (below 1 is faster per byte), with performance.md's bytes per
element (Adam 28). Time nothing else on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import FLOAT32_BYTES, LR, WEIGHT_DECAY, constructor_kwargs, load_average, resnet50_shapes  # noqa: E402

import deepspeed  # noqa: E402
from deepspeed.ops.adam import DeepSpeedCPUAdam  # noqa: E402

import holocron_optim as ho  # noqa: E402
from holocron_optim import _distributed  # noqa: E402
from holocron_optim.deepspeed import zero_aware  # noqa: E402

ALGORITHMS = ("LAMB", "LARS", "Adan", "AdEMAMix")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flat_partition() -> torch.Tensor:
    """DeepSpeed's fp32 partition of a model with ResNet-50's tensors, its layout set by zero_aware."""
    torch.manual_seed(0)
    model = nn.ParameterList([nn.Parameter(torch.randn(shape) * 0.05) for shape in resnet50_shapes()])
    config = {
        "train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}},
        "zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False, "steps_per_print": 10**9,
    }
    engine, *_ = deepspeed.initialize(model=model, optimizer=ho.LAMB(model.parameters(), lr=LR), config=config)
    zero_aware(engine)
    (partition,) = engine.optimizer.single_partition_of_fp32_groups
    return partition


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS), help="ours, comma-separated")
    args = parser.parse_args()
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(free_port())})
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False, verbose=False)
    torch.set_num_threads(args.threads)
    load = load_average()

    partition = flat_partition()
    layout = _distributed.flat_layout(partition)
    gradient = torch.randn(partition.shape, generator=torch.Generator().manual_seed(1)) * 1e-3

    def copy() -> torch.Tensor:
        flat = partition.detach().clone().requires_grad_(True)
        flat.grad = gradient
        setattr(flat, _distributed.FLAT_LAYOUT, layout)
        return flat

    algorithms = args.algorithms.split(",")
    optimizers = {"DeepSpeedCPUAdam": DeepSpeedCPUAdam([copy()], lr=LR, weight_decay=WEIGHT_DECAY),
                  "AdamW (torch, fused)": torch.optim.AdamW([copy()], lr=LR, weight_decay=WEIGHT_DECAY, fused=True)}
    for name in algorithms:
        optimizers[name] = getattr(ho, name)([copy()], **constructor_kwargs(name))
    bytes_per_element = {"DeepSpeedCPUAdam": FLOAT32_BYTES["Adam"], "AdamW (torch, fused)": FLOAT32_BYTES["Adam"],
                         **{n: FLOAT32_BYTES[n] for n in algorithms}}

    for opt in optimizers.values():
        for _ in range(2):
            opt.step()
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    names = list(optimizers)
    for round_index in range(args.rounds):
        for name in names[round_index % len(names):] + names[:round_index % len(names)]:
            start = time.perf_counter()
            optimizers[name].step()
            times[name].append(time.perf_counter() - start)

    elements = partition.numel()
    medians = {name: statistics.median(t) for name, t in times.items()}
    per_byte = {name: medians[name] / (bytes_per_element[name] * elements) for name in medians}
    print(f"ZeRO-Offload step, DeepSpeed {deepspeed.__version__} stage 2 offload_optimizer=cpu, one flat float32 "
          f"partition of {elements / 1e6:.1f} M elements (ResNet-50's {len(layout.starts)} tensors), "
          f"{args.threads} threads, median of {args.rounds} steps, load average {load}")
    print(f"{'optimizer':<22}{'ms/step':>10}{'GB/s':>8}{'time per byte / DeepSpeedCPUAdam':>36}")
    for name in names:
        rate = bytes_per_element[name] * elements / medians[name] / 1e9
        print(f"{name:<22}{medians[name] * 1e3:>10.1f}{rate:>8.1f}{per_byte[name] / per_byte['DeepSpeedCPUAdam']:>36.2f}")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # see exit_without_teardown in examples/python/train_fsdp2.py
