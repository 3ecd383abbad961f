"""timm's LAMB, LARS, Adan, AdaBelief and AdamP on ResNet-50's float32 tensors: holocron_optim.timm
against timm's own classes (foreach where timm has it), the cost of LAMB's global gradient-norm
clipping and of AdamP's channel-wise projection (ResNet-50's 161 tensors as 26,000 output
channels, each with its own sums), judged per byte against torch's fused Adam in the same
process (time per byte relative to Adam's, 1.0 = Adam's speed).

    make bench-timm            # or: python bench/bench_timm.py [--rounds N] [--threads N]

Bytes per float32 element (performance.md's model): LAMB 40 (read p, g, m, v; write p, m, v; read
p, m, v again in the second pass) and 4 more for max_grad_norm's read of the gradients; LARS with
momentum 28; Adan 44; AdaBelief 28; AdamP 40 (pass 1 reads p, g, m, v; pass 2 reads them again
and writes p, m, v) and 4 more with Nesterov (pass 2 reads g). timm's classes are loaded from the installed timm, file by file (its package
__init__ pulls torchvision).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import statistics
import sys
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))
from bench import resnet50_shapes  # noqa: E402

import holocron_optim as ho  # noqa: E402
import holocron_optim.timm as ho_timm  # noqa: E402

BYTES = {"Adam": 28, "LAMB": 40, "LAMB+clip": 44, "LARS": 28, "Adan": 44, "AdaBelief": 28, "AdamP": 40,
         "AdamP+nesterov": 44}


def timm_optim() -> types.SimpleNamespace | None:
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        return None
    package = types.ModuleType("_timm_optim_bench")
    package.__path__ = [str(Path(next(iter(spec.submodule_search_locations))) / "optim")]
    sys.modules[package.__name__] = package
    return types.SimpleNamespace(**{name: importlib.import_module(f"{package.__name__}.{name}")
                                    for name in ("lamb", "lars", "adan", "adabelief", "adamp")})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="steps per round and implementation")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
    print(f"ResNet-50 float32, {args.threads} threads, load average {load}")

    gen = torch.Generator().manual_seed(0)
    shapes = resnet50_shapes()

    def params():
        out = [torch.randn(s, generator=gen).requires_grad_() for s in shapes]
        for p in out:
            p.grad = torch.randn(p.shape, generator=gen) * 1e-2
        return out

    timm = timm_optim()
    lars = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}
    impls = {
        "torch Adam (fused)": ("Adam", torch.optim.Adam(params(), lr=1e-3, fused=True)),
        "ours LAMB (reference's options)": ("LAMB", ho.LAMB(params(), lr=1e-3, weight_decay=0.01)),
        "ours timm.Lamb (clipping)": ("LAMB+clip", ho_timm.Lamb(params())),
        "ours timm.Lamb (max_grad_norm=None)": ("LAMB", ho_timm.Lamb(params(), max_grad_norm=None)),
        "ours timm.Lars": ("LARS", ho_timm.Lars(params(), **lars)),
        "ours timm.Adan": ("Adan", ho_timm.Adan(params(), weight_decay=0.02)),
        "ours timm.AdaBelief": ("AdaBelief", ho_timm.AdaBelief(params(), weight_decay=0.01)),
        "ours AdamP (reference's projection)": ("AdamP", ho.AdamP(params(), weight_decay=0.01)),
        "ours timm.AdamP (channel-wise)": ("AdamP", ho_timm.AdamP(params(), weight_decay=0.01)),
        "ours timm.AdamP (channel-wise, Nesterov)": ("AdamP+nesterov", ho_timm.AdamP(params(), weight_decay=0.01,
                                                                                     nesterov=True)),
    }
    if timm is not None:
        impls["timm Lamb (foreach)"] = ("LAMB+clip", timm.lamb.Lamb(params()))
        impls["timm Lars (foreach)"] = ("LARS", timm.lars.Lars(params(), **lars))
        impls["timm Adan (foreach)"] = ("Adan", timm.adan.Adan(params(), weight_decay=0.02))
        impls["timm AdaBelief (foreach)"] = ("AdaBelief", timm.adabelief.AdaBelief(params(), weight_decay=0.01))
        impls["timm AdamP (per tensor)"] = ("AdamP", timm.adamp.AdamP(params(), weight_decay=0.01))
    samples: dict[str, list[float]] = {label: [] for label in impls}
    for _, opt in impls.values():
        opt.step()  # warm-up: state made
    labels = list(impls)
    for r in range(args.rounds):
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            opt = impls[label][1]
            t0 = time.perf_counter()
            for _ in range(args.steps):
                opt.step()
            samples[label].append((time.perf_counter() - t0) * 1e3 / args.steps)
    adam_ms = statistics.median(samples["torch Adam (fused)"])
    adam_per_byte = adam_ms / BYTES["Adam"]
    print(f"| implementation | bytes/elem | ms/step | time per byte vs fused Adam |")
    print(f"|---|---:|---:|---:|")
    for label, (kind, _) in impls.items():
        ms = statistics.median(samples[label])
        print(f"| {label} | {BYTES[kind]} | {ms:.1f} | {ms / BYTES[kind] / adam_per_byte:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
