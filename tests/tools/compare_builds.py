"""Bits of two builds of the library on the same inputs: a refactoring must not change a number.

    python tests/tools/compare_builds.py run OUT.pt     # with the build to record on the path
    python tests/tools/compare_builds.py diff A.pt B.pt # exits 1 on the first difference

`run` steps every class (and both wrappers) over option variants that reach
every branch, four dtypes, each instruction-set build and the reference
backend, 1 and 2 threads, GradScaler's scale and skipped steps, and a
compiled step, then saves every parameter and state tensor. Point
PYTHONPATH at the other checkout's `python/` to record the other build.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
from registry import ALGORITHMS  # noqa: E402 (the tests' registry, next to them)

import holocron_optim as ho

OPS = torch.ops.holocron
SHAPES = [(37, 5), (1,), (3, 4, 5, 7), (17000,)]  # tails, a 1-element tensor, several chunks
# The test registry's variants (every branch), after each algorithm's defaults.
VARIANTS = {name: [dict(lr=0.01), *algorithm.variants] for name, algorithm in ALGORITHMS.items()}
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
# A group long enough for its host work to run on the intra-op threads (kMinParallelTensors), with
# a few tensors big enough for 8-bit codes.
MANY = [(1 + (i * 37) % 64,) for i in range(600)] + [(5000,)] * 4
MANY_VARIANTS = [(dict(lr=0.01), torch.float32), (dict(lr=0.01, state_precision="8bit"), torch.float32),
                 (dict(lr=0.01, kahan_summation=True), torch.bfloat16)]


def make(name: str, options: dict, params: list[torch.Tensor]):
    if name == "Lookahead(LAMB)":
        return ho.Lookahead(ho.LAMB(params, lr=0.01, weight_decay=0.01), sync_rate=0.4, sync_period=3)
    if name == "Scout(AdamP)":
        return ho.Scout(ho.AdamP(params, lr=0.01), sync_rate=0.2, sync_period=3)
    return getattr(ho, name)(params, **options)


def params_for(dtype: torch.dtype, seed: int, shapes: list[tuple[int, ...]] = SHAPES) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]


def train(name: str, options: dict, dtype: torch.dtype, steps: int = 7, scaled: bool = False,
          compiled: bool = False, shapes: list[tuple[int, ...]] = SHAPES) -> list[torch.Tensor]:
    params = params_for(dtype, 0, shapes)
    opt = make(name, options, params)
    step = torch.compile(opt.step, fullgraph=False) if compiled else opt.step
    for t in range(steps):
        gen = torch.Generator().manual_seed(100 + t)
        for p in params:
            p.grad = (torch.randn(p.shape, generator=gen, dtype=torch.float64) + 0.3 * p.double()).to(dtype)
        if scaled:
            opt.grad_scale = torch.tensor(1.0 / 1024.0)
            opt.found_inf = torch.tensor(1.0 if t == 3 else 0.0)
            for p in params:
                p.grad.mul_(1024.0)
        step()
    out = [p.detach().clone() for p in params]
    # The state, not the groups' options: those are inputs, and a new option adds a key there.
    for value in _tensors(copy.deepcopy(opt.state_dict())["state"]):
        out.append(value)
    return out


def _tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj.detach().clone()]
    if isinstance(obj, dict):
        return [t for key in sorted(obj, key=str) for t in _tensors(obj[key])]
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in _tensors(item)]
    if isinstance(obj, (int, float)):
        return [torch.tensor(float(obj), dtype=torch.float64)]
    return []


def run(out_path: str) -> None:
    results: dict[str, list[torch.Tensor]] = {}
    capabilities = list(OPS.available_cpu_capabilities())
    names = [(name, options) for name, variants in VARIANTS.items() for options in variants]
    names += [("Lookahead(LAMB)", {}), ("Scout(AdamP)", {})]
    for capability in capabilities:
        OPS.set_cpu_capability(capability)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for name, options in names:
                for dtype in DTYPES:
                    key = f"{capability}/{threads}/{name}/{options}/{dtype}"
                    results[key] = train(name, options, dtype)
                results[f"{capability}/{threads}/{name}/{options}/scaled"] = train(name, options, torch.float32, scaled=True)
    OPS.set_cpu_capability(capabilities[-1])
    torch.set_num_threads(2)
    for name in ALGORITHMS:
        for options, dtype in MANY_VARIANTS:
            results[f"many/{name}/{options}/{dtype}"] = train(name, options, dtype, steps=4, shapes=MANY)
    for name in ("LAMB", "Adan", "Scout(AdamP)"):
        results[f"compiled/{name}"] = train(name, VARIANTS.get(name, [{}])[0], torch.float32, steps=4, compiled=True)
    torch.save(results, out_path)
    print(f"{len(results)} runs, {sum(len(v) for v in results.values())} tensors -> {out_path}")


def diff(a_path: str, b_path: str) -> int:
    a, b = torch.load(a_path), torch.load(b_path)
    if set(a) != set(b):
        print("different runs:", sorted(set(a) ^ set(b))[:5])
        return 1
    compared = 0
    for key in a:
        if len(a[key]) != len(b[key]):
            print(f"{key}: {len(a[key])} tensors against {len(b[key])}")
            return 1
        for i, (x, y) in enumerate(zip(a[key], b[key])):
            same = x.dtype == y.dtype and x.shape == y.shape and torch.equal(
                x.view(torch.uint8) if x.dim() else x.reshape(1).view(torch.uint8),
                y.view(torch.uint8) if y.dim() else y.reshape(1).view(torch.uint8))
            if not same:
                print(f"{key}: tensor {i} differs")
                return 1
            compared += 1
    print(f"bitwise identical: {len(a)} runs, {compared} tensors")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "run":
        run(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "diff":
        sys.exit(diff(sys.argv[2], sys.argv[3]))
    else:
        sys.exit(__doc__)
