#!/usr/bin/env python3
"""Benchmark of holocron-optim against the reference (pylocron==0.3.0) and torch's fused Adam.

    .venv/bin/python bench/bench.py [--workloads resnet50-f32,small-3000] [--threads 2]
                                    [--quick] [--json PATH] [--block-seconds S] [--rounds R]
                                    [--bin build/bench/holocron_bench] [--no-cpp]

`make bench` runs it with BENCH_ARGS. See ../shared/docs/performance.md for the cost model.

For each workload the driver starts one worker process (this script with --worker), so that
workloads share no allocator state. A worker, with torch.set_num_threads(--threads):
  - makes the parameters of the workload (fixed seed) and their gradients, set once and reused
    by every step;
  - for each algorithm, runs a block of interleaved rounds: in every round one read-modify-write
    bandwidth sample (`a.add_(b)` on two float32 buffers of at least 256 MiB and the size of
    the last-level cache each, 12 bytes per element), then, in rotating order, K = 2 steps each
    of torch.optim.Adam(fused=True), our Python class (holocron_optim) and the reference's class,
    every step timed on its own (after 2 warmup steps each; the number of rounds, 3 to 12, is
    set from the warmup's times to fill --block-seconds, default 6); then our C++ class, through
    build/bench/holocron_bench on the same shapes (a subprocess, same thread count, as many
    steps, each sample after twice the last-level cache is written, so that it starts as cold
    as ours in Python do);
  - a block of Lookahead and Scout (ours) around fused Adam against bare fused Adam, timed over
    whole sync periods (6 steps) so that each sample holds one sync; likewise the C++ Lookahead
    and Scout around torch::optim::Adam (not fused) against it, in turns in one holocron_bench;
  - on float32 ResNet-50 shapes only, a block per algorithm of our class with
    state_precision="bfloat16" against the same class with its default float32 state, in turns
    (with fused Adam for time per byte): the ratio, the state bytes per parameter measured from
    the tensors, and efficiency against each mode's own bytes (each state array moves 4 bytes
    per element fewer in bfloat16);
  - the extra peak memory of one step (VmHWM after it - VmRSS before it, after writing 5 to
    /proc/self/clear_refs), for ours and the reference (and fused Adam), after all timing: glibc
    then maps blocks of 64 KiB and more on their own and gets its free memory back to the system
    before each measured step, so that a step's temporaries show (holocron_bench does the same
    for the C++ classes).
The gradients are restored after every block (the reference's LARS adds weight decay into them).
--quick: 1 warmup step, K = 1, 3 rounds, 1 peak measurement. Reported figures are medians. Roofline time = bytes/element (performance.md's table; half
for bfloat16) x elements / bandwidth; efficiency = roofline / measured; time per byte against
fused Adam uses the Adam steps of the same block.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib.util
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BIN = ROOT / "build" / "bench" / "holocron_bench"

ALGORITHMS = ("LARS", "LAMB", "RaLars", "TAdam", "AdaBelief", "AdamP", "Adan", "AdEMAMix")
WORKLOADS = ("resnet50-f32", "resnet50-bf16", "small-3000", "big-32M")
LR = 1e-3
WEIGHT_DECAY = 0.01  # every algorithm takes one: its branch is timed
SYNC_PERIOD = 6  # Lookahead / Scout defaults

# Minimal float32 bytes moved per element (performance.md); weight decay is on for all.
FLOAT32_BYTES = {
    "LARS": 28,  # with momentum
    "LAMB": 40,
    "RaLars": 40,
    "TAdam": 44 if WEIGHT_DECAY else 40,
    "AdaBelief": 28,
    "AdamP": 40,
    "Adan": 44,
    "AdEMAMix": 36,
    "Adam": 28,
}


# The state precisions the state_precision block compares ("param": float32 on float32 weights).
LEAN_PRECISIONS = ("param", "bfloat16", "8bit")


def constructor_kwargs(name: str) -> dict[str, Any]:
    """Arguments given to ours and to the reference alike (default options otherwise)."""
    kwargs: dict[str, Any] = {"lr": LR, "weight_decay": WEIGHT_DECAY}
    if name == "LARS":
        kwargs["momentum"] = 0.9
    return kwargs


# --------------------------------------------------------------------------- workloads


def resnet50_shapes() -> list[tuple[int, ...]]:
    """torchvision's resnet50() parameters, in named_parameters() order."""
    shapes: list[tuple[int, ...]] = [(64, 3, 7, 7), (64,), (64,)]  # conv1, bn1
    inplanes = 64
    for planes, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for block in range(blocks):
            width, out = planes, planes * 4
            shapes += [(width, inplanes, 1, 1), (width,), (width,)]  # conv1, bn1
            shapes += [(width, width, 3, 3), (width,), (width,)]  # conv2, bn2
            shapes += [(out, width, 1, 1), (out,), (out,)]  # conv3, bn3
            if block == 0:
                shapes += [(out, inplanes, 1, 1), (out,), (out,)]  # downsample conv, bn
            inplanes = out
    shapes += [(1000, 2048), (1000,)]  # fc
    assert len(shapes) == 161, len(shapes)
    assert sum(math.prod(s) for s in shapes) == 25_557_032
    return shapes


def workload(name: str) -> tuple[list[tuple[int, ...]], str]:
    """(shapes, dtype name) of a workload."""
    if name == "resnet50-f32":
        return resnet50_shapes(), "float32"
    if name == "resnet50-bf16":
        return resnet50_shapes(), "bfloat16"
    if name == "small-3000":
        rng = random.Random(0)
        return [(rng.randint(64, 2048),) for _ in range(3000)], "float32"
    if name == "big-32M":
        return [(32 * 2**20,)], "float32"
    raise ValueError(f"unknown workload {name!r} (known: {', '.join(WORKLOADS)})")


# --------------------------------------------------------------------------- helpers


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def load_average() -> float | None:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def last_level_cache_bytes() -> int:
    best = 0
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        scale = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(text[-1:], 1)
        try:
            best = max(best, int(text.rstrip("KMG")) * scale)
        except ValueError:
            pass
    return best


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def status_bytes(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_extra_bytes(step: Callable[[], Any]) -> int | None:
    """Extra resident memory at the peak of one call of `step` (Linux only)."""
    trim_heap()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        step()
        return None
    before = status_bytes("VmRSS")
    step()
    hwm = status_bytes("VmHWM")
    if before is None or hwm is None:
        return None
    return max(hwm - before, 0)


def _libc() -> Any:
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def measure_mode() -> None:
    """glibc: from now on, blocks of 64 KiB and more are mapped on their own and given back to
    the system when freed (glibc otherwise raises that threshold as it goes and keeps such
    blocks in its heap). The heap is not trimmed on every free (a step of many small
    allocations would crawl) but before each measured step (trim_heap)."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 2**30)  # M_TRIM_THRESHOLD


def trim_heap() -> None:
    """glibc: give the free memory the allocator keeps back to the system."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def load_reference() -> types.SimpleNamespace:
    """The reference's classes, its holocron/optim/<name>.py files loaded one by one (importing
    the package `holocron` would pull in torchvision)."""
    spec = importlib.util.find_spec("holocron")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the reference package pylocron==0.3.0 (module holocron) is not installed")
    folder = Path(list(spec.submodule_search_locations)[0]) / "optim"
    classes = {}
    for name in ALGORITHMS:
        module_name = f"_holocron_reference_{name.lower()}"
        file_spec = importlib.util.spec_from_file_location(module_name, folder / f"{name.lower()}.py")
        assert file_spec is not None and file_spec.loader is not None
        module = importlib.util.module_from_spec(file_spec)
        sys.modules[module_name] = module
        file_spec.loader.exec_module(module)
        classes[name] = getattr(module, name)
    return types.SimpleNamespace(**classes)


# --------------------------------------------------------------------------- worker


class Worker:
    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        self.t_start = time.perf_counter()
        self.load_at_start = load_average()
        self.torch = torch
        self.args = args
        self.name = args.worker
        torch.set_num_threads(args.threads)
        import holocron_optim

        self.ours = holocron_optim
        try:
            self.ref: types.SimpleNamespace | None = load_reference()
            self.ref_error = None
        except Exception as exc:  # the benchmark still runs without the reference
            self.ref, self.ref_error = None, f"{type(exc).__name__}: {exc}"

        self.quick = args.quick
        self.warmup = 1 if self.quick else 2
        self.k = 1 if self.quick else 2  # steps per implementation per round
        self.block_seconds = args.block_seconds if args.block_seconds else (0.5 if self.quick else 6.0)
        self.min_rounds = 3
        self.max_rounds = 3 if self.quick else 12

        self.shapes, self.dtype_name = workload(self.name)
        self.dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[self.dtype_name]
        self.elements = sum(math.prod(s) for s in self.shapes)
        self.param_bytes = self.elements * (2 if self.dtype_name == "bfloat16" else 4)
        gen = torch.Generator().manual_seed(0)
        self.params = []
        for shape in self.shapes:
            p = (torch.randn(shape, generator=gen) * 0.1).to(self.dtype)
            p.grad = (torch.randn(shape, generator=gen) * 0.01).to(self.dtype)
            self.params.append(p)
        # The reference's LARS adds weight decay into p.grad: restored after every block.
        self.grads = [p.grad.clone() for p in self.params]

        # Bandwidth buffers: each at least 256 MiB and the last-level cache's size.
        n = max(256 * 2**20, last_level_cache_bytes()) // 4
        self.bw_elements = n
        self.bw_a = torch.full((n,), 1.0)
        self.bw_b = torch.full((n,), 1e-7)
        self.bw_a.add_(self.bw_b)
        self.bw_samples: list[float] = []

        self.adam = torch.optim.Adam(self.params, lr=LR, fused=True)
        self.adam_samples: list[float] = []

        fd, shapes_path = tempfile.mkstemp(prefix="holocron_bench_shapes_", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write("".join(" ".join(map(str, s)) + "\n" for s in self.shapes))
        self.shapes_path = shapes_path

    def log(self, message: str) -> None:
        elapsed = time.perf_counter() - self.t_start
        print(f"  [{self.name} {elapsed:5.0f}s] {message}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ measurements

    def bandwidth_sample(self) -> None:
        t0 = time.perf_counter()
        self.bw_a.add_(self.bw_b)
        seconds = time.perf_counter() - t0
        self.bw_samples.append(12 * self.bw_elements / seconds / 1e9)

    def timed_steps(self, step: Callable[[], Any], count: int, group: int = 1) -> list[float]:
        """`count` samples, each the mean ms per step over `group` consecutive steps."""
        samples = []
        for _ in range(count):
            t0 = time.perf_counter()
            for _ in range(group):
                step()
            samples.append((time.perf_counter() - t0) * 1e3 / group)
        return samples

    def interleaved(self, impls: dict[str, Any], group: int = 1) -> tuple[dict[str, list[float]], dict[str, str], int]:
        """Warm up each implementation, then rounds of K steps (or K groups) of each, in rotating
        order, with a bandwidth sample in each round. Returns samples, errors and rounds."""
        errors: dict[str, str] = {}
        cost = 0.0
        for label, opt in list(impls.items()):
            try:
                for _ in range(max(self.warmup, 1)):
                    t0 = time.perf_counter()
                    opt.step()
                    last = time.perf_counter() - t0
                cost += last * self.k * group
            except Exception as exc:
                errors[label] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                del impls[label]
        if self.args.rounds:
            rounds = self.args.rounds
        else:
            rounds = int(self.block_seconds / max(cost, 1e-6))
            rounds = min(max(rounds, self.min_rounds), self.max_rounds)
        samples: dict[str, list[float]] = {label: [] for label in impls}
        labels = list(impls)
        for r in range(rounds):
            order = labels[r % len(labels):] + labels[: r % len(labels)] if labels else []
            self.bandwidth_sample()
            for label in order:
                opt = impls[label]
                try:
                    samples[label] += self.timed_steps(opt.step, self.k, group)
                except Exception as exc:
                    errors[label] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                    labels.remove(label)
        return samples, errors, rounds

    def run_cpp(self, optimizers: list[str], steps: int, group: int = 1) -> dict[str, dict[str, Any]]:
        """The C++ classes through holocron_bench, in one process, samples taken in turns."""
        def failed(why: str) -> dict[str, dict[str, Any]]:
            return {name: {"error": why} for name in optimizers}

        if self.args.no_cpp:
            return failed("skipped (--no-cpp)")
        binary = Path(self.args.bin)
        if not binary.exists():
            return failed(f"{binary} not found (make build)")
        cmd = [
            str(binary), "--shapes", self.shapes_path, "--dtype", self.dtype_name,
            "--threads", str(self.args.threads), "--optimizer", ",".join(optimizers),
            "--steps", str(steps), "--warmup", str(self.warmup), "--group", str(group),
            "--peak-steps", "1" if self.quick else "2",
            "--lr", repr(LR), "--weight-decay", repr(WEIGHT_DECAY),
            # Cold samples, as ours in Python (taken in turns with other steps): otherwise
            # the part of a workload that fits the last-level cache stays there between steps.
            "--evict-bytes", str(2 * last_level_cache_bytes()),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            return failed(f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}")
        results: dict[str, dict[str, Any]] = {}
        try:
            for line in proc.stdout.strip().splitlines():
                result = json.loads(line)
                result["samples_ms"] = result.pop("times_ms", [])
                results[result["optimizer"]] = result
        except (ValueError, KeyError):
            return failed(f"unreadable output: {proc.stdout[-300:]!r}")
        return {name: results.get(name, {"error": "no output"}) for name in optimizers}

    # ------------------------------------------------------------------ blocks

    def restore_grads(self) -> None:
        for p, g in zip(self.params, self.grads):
            p.grad.copy_(g)

    def make(self, source: Any, name: str) -> Any:
        return getattr(source, name)(self.params, **constructor_kwargs(name))

    def algorithm_block(self, name: str) -> dict[str, Any]:
        impls: dict[str, Any] = {"adam": self.adam}
        errors: dict[str, str] = {}
        for label, source in (("python", self.ours), ("reference", self.ref)):
            if source is None:
                errors[label] = self.ref_error or "unavailable"
                continue
            try:
                impls[label] = self.make(source, name)
            except Exception as exc:
                errors[label] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        samples, step_errors, rounds = self.interleaved(impls)
        errors.update(step_errors)
        del impls
        gc.collect()
        self.restore_grads()
        self.adam_samples += samples.get("adam", [])
        cpp = self.run_cpp([name], max(rounds * self.k, 3 if self.quick else 6))[name]
        result: dict[str, Any] = {"rounds": rounds}
        for label in ("python", "reference"):
            if label in samples and samples[label]:
                result[label] = {"median_ms": median(samples[label]), "samples_ms": samples[label]}
            else:
                result[label] = {"error": errors.get(label, "no samples")}
        result["cpp"] = cpp
        result["adam_block_ms"] = median(samples.get("adam", []))
        return result

    def wrapper_block(self) -> dict[str, Any]:
        torch = self.torch
        impls: dict[str, Any] = {"adam": self.adam}
        errors: dict[str, str] = {}
        for label in ("Lookahead", "Scout"):
            try:
                base = torch.optim.Adam(self.params, lr=LR, fused=True)
                impls[label] = getattr(self.ours, label)(base, sync_period=SYNC_PERIOD)
            except Exception as exc:
                errors[label] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        samples, step_errors, rounds = self.interleaved(impls, group=SYNC_PERIOD)
        errors.update(step_errors)
        del impls
        gc.collect()
        adam_ms = median(samples.get("adam", []))
        out: dict[str, Any] = {"rounds": rounds, "group": SYNC_PERIOD, "adam_ms": adam_ms}
        for label in ("Lookahead", "Scout"):
            ms = median(samples.get(label, []))
            if ms is None:
                out[label] = {"error": errors.get(label, "no samples")}
            else:
                out[label] = {"median_ms": ms, "ratio_vs_adam": ms / adam_ms if adam_ms else None,
                              "samples_ms": samples[label]}
        samples_each = 3 if self.quick else 4  # of 6 steps each: whole periods
        cpp = self.run_cpp(["Adam", "Lookahead", "Scout"], samples_each, group=SYNC_PERIOD)
        base_ms = cpp["Adam"].get("median_ms")
        for label in ("Lookahead", "Scout"):
            ms = cpp[label].get("median_ms")
            if ms is not None and base_ms:
                cpp[label]["ratio_vs_adam"] = ms / base_ms
        out["cpp"] = cpp
        return out

    def state_precision_block(self, name: str) -> dict[str, Any]:
        """Our class with bfloat16 and 8-bit state against float32 state, in turns."""
        impls: dict[str, Any] = {"adam": self.adam}
        errors: dict[str, str] = {}
        for precision in LEAN_PRECISIONS:
            try:
                impls[precision] = getattr(self.ours, name)(self.params, **constructor_kwargs(name),
                                                            state_precision=precision)
            except Exception as exc:
                errors[precision] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        samples, step_errors, rounds = self.interleaved(impls)
        errors.update(step_errors)
        out: dict[str, Any] = {"rounds": rounds, "adam_ms": median(samples.get("adam", []))}
        for precision in LEAN_PRECISIONS:
            ms = median(samples.get(precision, []))
            opt = impls.get(precision)
            if ms is None or opt is None:
                out[precision] = {"error": errors.get(precision, "no samples")}
                continue
            buffers = [t for state in opt.state.values() for key, t in state.items()
                       if key in opt._all_buffers or key.endswith("_absmax")]
            out[precision] = {
                "median_ms": ms,
                "state_arrays": round(sum(t.numel() for t in buffers if t.element_size() > 1) / self.elements),
                "coded_arrays": sum(t.numel() for t in buffers if t.element_size() == 1) / self.elements,
                "state_bytes_per_param": sum(t.numel() * t.element_size() for t in buffers) / self.elements,
                "samples_ms": samples[precision],
            }
        del impls
        gc.collect()
        self.restore_grads()
        return out

    def kahan_block(self, name: str) -> dict[str, Any]:
        """Our class on bfloat16 weights with kahan_summation against without, in turns: the cost
        of the compensation's read and write (2 bytes each per weight)."""
        impls: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for label, kahan in (("plain", False), ("kahan", True)):
            try:
                impls[label] = getattr(self.ours, name)(self.params, **constructor_kwargs(name), kahan_summation=kahan)
            except Exception as exc:
                errors[label] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        samples, step_errors, rounds = self.interleaved(impls)
        errors.update(step_errors)
        out: dict[str, Any] = {"rounds": rounds}
        for label in ("plain", "kahan"):
            ms = median(samples.get(label, []))
            out[label] = {"median_ms": ms, "samples_ms": samples.get(label, [])} if ms is not None else {
                "error": errors.get(label, "no samples")}
        plain, kahan = out["plain"].get("median_ms"), out["kahan"].get("median_ms")
        out["ratio"] = kahan / plain if plain and kahan else None
        del impls
        gc.collect()
        self.restore_grads()
        return out

    def peak_memory(self) -> dict[str, dict[str, float | None]]:
        """Extra peak bytes of one step, per algorithm, for ours and the reference; and Adam."""
        measure_mode()
        repeats = 1 if self.quick else 2
        out: dict[str, dict[str, float | None]] = {}

        def measure(opt: Any) -> int | None:
            for _ in range(2):
                opt.step()  # state made, allocator settled
            gc.collect()
            values = [peak_extra_bytes(opt.step) for _ in range(repeats)]
            known = [v for v in values if v is not None]
            return max(known) if known else None

        try:
            out["Adam"] = {"python": measure(self.adam)}
        except Exception:
            out["Adam"] = {"python": None}
        for name in ALGORITHMS:
            out[name] = {}
            for label, source in (("python", self.ours), ("reference", self.ref)):
                value = None
                if source is not None:
                    try:
                        opt = self.make(source, name)
                        value = measure(opt)
                    except Exception:
                        value = None
                    finally:
                        opt = None
                        gc.collect()
                        self.restore_grads()
                out[name][label] = value
        return out

    # ------------------------------------------------------------------ all

    def run(self) -> dict[str, Any]:
        torch = self.torch
        start = time.perf_counter()
        self.log(f"{len(self.shapes)} tensors, {self.elements:,} elements, {self.dtype_name}, "
                 f"{torch.get_num_threads()} threads")
        algorithms: dict[str, Any] = {}
        for name in ALGORITHMS:
            block = self.algorithm_block(name)
            algorithms[name] = block
            parts = []
            for label in ("cpp", "python", "reference"):
                ms = block[label].get("median_ms")
                parts.append(f"{label} {ms:.2f} ms" if ms is not None else f"{label} -")
            self.log(f"{name}: " + ", ".join(parts) + f" ({block['rounds']} rounds)")
        wrappers = self.wrapper_block()
        self.log("wrappers done")
        lean: dict[str, Any] = {}
        if self.name == "resnet50-f32":
            for name in ALGORITHMS:
                lean[name] = self.state_precision_block(name)
                f32, bf16, q8 = (lean[name][k].get("median_ms") for k in LEAN_PRECISIONS)
                self.log(f"{name} state: float32 {fmt(f32)} ms, bfloat16 {fmt(bf16)} ms, 8-bit {fmt(q8)} ms")
        kahan: dict[str, Any] = {}
        if self.name == "resnet50-bf16":
            for name in ALGORITHMS:
                kahan[name] = self.kahan_block(name)
                self.log(f"{name} kahan_summation: {fmt(kahan[name]['plain'].get('median_ms'))} ms without, "
                         f"{fmt(kahan[name]['kahan'].get('median_ms'))} ms with")
        peaks = self.peak_memory()
        self.log("peak memory done")
        os.unlink(self.shapes_path)

        bandwidth = median(self.bw_samples)  # GB/s
        scale = 0.5 if self.dtype_name == "bfloat16" else 1.0

        def roofline_ms(float32_bytes: float) -> float | None:
            if not bandwidth:
                return None
            return float32_bytes * scale * self.elements / (bandwidth * 1e9) * 1e3

        adam_ms = median(self.adam_samples)
        adam_roof = roofline_ms(FLOAT32_BYTES["Adam"])
        for name, block in algorithms.items():
            nbytes = FLOAT32_BYTES[name]
            roof = roofline_ms(nbytes)
            block["bytes_per_element"] = nbytes * scale
            block["roofline_ms"] = roof
            py, ref, cpp = (block[k].get("median_ms") for k in ("python", "reference", "cpp"))
            block["efficiency_python"] = roof / py if roof and py else None
            block["efficiency_cpp"] = roof / cpp if roof and cpp else None
            block["efficiency_reference"] = roof / ref if roof and ref else None
            a_ms = block["adam_block_ms"]
            block["time_per_byte_vs_adam"] = (
                (py / nbytes) / (a_ms / FLOAT32_BYTES["Adam"]) if py and a_ms else None
            )
            block["time_per_byte_vs_adam_cpp"] = (
                (cpp / nbytes) / (a_ms / FLOAT32_BYTES["Adam"]) if cpp and a_ms else None
            )
            block["speedup_vs_reference"] = ref / py if py and ref else None
            block["speedup_cpp_vs_reference"] = ref / cpp if cpp and ref else None
            peak = peaks.get(name, {})
            block["peak_extra_bytes"] = {
                "python": peak.get("python"),
                "reference": peak.get("reference"),
                "cpp": block["cpp"].get("peak_extra_bytes"),
            }
            block["peak_extra_pct"] = {
                k: (100.0 * v / self.param_bytes if v is not None else None)
                for k, v in block["peak_extra_bytes"].items()
            }
        lookahead_bytes = FLOAT32_BYTES["Adam"] + 16 / SYNC_PERIOD
        for label in ("Lookahead", "Scout"):
            entry = wrappers.get(label, {})
            ms = entry.get("median_ms")
            if label == "Lookahead" and ms:
                roof = roofline_ms(lookahead_bytes)
                entry["roofline_ms"] = roof
                entry["efficiency"] = roof / ms if roof else None

        for name, block in lean.items():
            f32, bf16, q8 = (block[k] for k in LEAN_PRECISIONS)
            if "error" in f32 or "error" in bf16 or "error" in q8:
                continue
            # Each state array moves 4 bytes per element fewer in bfloat16 (read and written); a
            # coded one 6 fewer (a byte and 1/64 of a scale's, read and written, for 4 + 4).
            bf16_bytes = FLOAT32_BYTES[name] - 4 * f32["state_arrays"]
            q8_bytes = round(FLOAT32_BYTES[name] - 2 * (4 - 1 - 4 / 256) * q8["coded_arrays"], 1)
            block["bytes_per_element"] = {"param": FLOAT32_BYTES[name], "bfloat16": bf16_bytes, "8bit": q8_bytes}
            block["ratio"] = bf16["median_ms"] / f32["median_ms"]
            block["ratio_8bit"] = q8["median_ms"] / f32["median_ms"]
            for key, nbytes in block["bytes_per_element"].items():
                roof = roofline_ms(nbytes)
                block[key]["efficiency"] = roof / block[key]["median_ms"] if roof else None

        adam_peak = peaks.get("Adam", {}).get("python")
        return {
            "workload": self.name,
            "dtype": self.dtype_name,
            "threads": torch.get_num_threads(),
            "tensors": len(self.shapes),
            "elements": self.elements,
            "param_bytes": self.param_bytes,
            "quick": self.quick,
            "bandwidth_gbs": bandwidth,
            "bandwidth_samples_gbs": self.bw_samples,
            "bandwidth_buffer_bytes": self.bw_elements * 4,
            "last_level_cache_bytes": last_level_cache_bytes(),
            "adam": {
                "median_ms": adam_ms,
                "roofline_ms": adam_roof,
                "efficiency": adam_roof / adam_ms if adam_roof and adam_ms else None,
                "peak_extra_pct": 100.0 * adam_peak / self.param_bytes if adam_peak is not None else None,
                "samples_ms": self.adam_samples,
            },
            "algorithms": algorithms,
            "wrappers": wrappers,
            "state_precision": lean,
            "kahan_summation": kahan,
            "reference_error": self.ref_error,
            "load_average_1min_at_start": self.load_at_start,
            "torch": torch.__version__,
            "elapsed_s": time.perf_counter() - start,
        }


def worker_main(args: argparse.Namespace) -> int:
    worker = Worker(args)
    result = worker.run()
    Path(args.out).write_text(json.dumps(result))
    return 0


# --------------------------------------------------------------------------- report


def fmt(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def report(result: dict[str, Any]) -> str:
    lines = []
    name = result["workload"]
    lines.append(f"### {name}: {result['tensors']} tensors, {result['elements']:,} elements, "
                 f"{result['dtype']}, {result['threads']} threads" + (" (quick)" if result.get("quick") else ""))
    lines.append("")
    adam = result["adam"]
    lines.append(f"- bandwidth (a.add_(b), 12 B/element): {fmt(result['bandwidth_gbs'], '.1f')} GB/s")
    lines.append(f"- torch.optim.Adam(fused=True): {fmt(adam['median_ms'])} ms/step, roofline "
                 f"{fmt(adam['roofline_ms'])} ms, efficiency {fmt(adam['efficiency'])}, "
                 f"extra peak mem {fmt(adam['peak_extra_pct'], '.1f', '%')}")
    llc = result.get("last_level_cache_bytes") or 0
    footprint = 4 * result["param_bytes"]  # fused Adam's arrays: p, g, m, v
    if footprint < llc:
        lines.append(f"- note: fused Adam's arrays ({footprint / 2**20:.0f} MiB) fit in the last-level cache "
                     f"({llc / 2**20:.0f} MiB): rooflines from memory bandwidth are not a bound here")
    wr = result["wrappers"]
    parts = []
    for label in ("Lookahead", "Scout"):
        entry = wr.get(label, {})
        if "error" in entry:
            parts.append(f"{label} error: {entry['error']}")
        else:
            parts.append(f"{label} {fmt(entry.get('median_ms'))} ms = {fmt(entry.get('ratio_vs_adam'), '.3f')}x")
    lines.append(f"- wrappers (ours, around fused Adam; means over {wr.get('group')}-step sync periods): "
                 f"Adam {fmt(wr.get('adam_ms'))} ms, " + ", ".join(parts))
    cpp = wr.get("cpp")
    if cpp:
        parts = []
        for label in ("Lookahead", "Scout"):
            entry = cpp.get(label, {})
            parts.append(f"{label} {fmt(entry.get('median_ms'))} ms = {fmt(entry.get('ratio_vs_adam'), '.3f')}x")
        lines.append(f"- wrappers (C++, around torch::optim::Adam, which is not fused): Adam {fmt(cpp.get('Adam', {}).get('median_ms'))} ms, "
                     + ", ".join(parts))
    lines.append("")
    lines.append("| algorithm | B/elem | C++ ms | Python ms | reference ms | efficiency (Python) "
                 "| time/byte vs fused Adam | speedup vs reference | extra peak mem % (ours / ref / C++) |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    errors = []
    for algo, block in result["algorithms"].items():
        cells = []
        for label in ("cpp", "python", "reference"):
            entry = block[label]
            if "error" in entry:
                cells.append("err")
                errors.append(f"{algo} {label}: {entry['error']}")
            else:
                cells.append(fmt(entry.get("median_ms")))
        pct = block["peak_extra_pct"]
        mem = " / ".join(fmt(pct.get(k), ".0f") for k in ("python", "reference", "cpp"))
        lines.append(f"| {algo} | {fmt(block['bytes_per_element'], 'g')} | {cells[0]} | {cells[1]} | {cells[2]} "
                     f"| {fmt(block['efficiency_python'])} | {fmt(block['time_per_byte_vs_adam'])} "
                     f"| {fmt(block['speedup_vs_reference'])} | {mem} |")
    if errors:
        lines.append("")
        lines += [f"- error: {e}" for e in errors]
    lean = result.get("state_precision") or {}
    if lean:
        lines.append("")
        lines.append("state_precision (our Python classes, bfloat16 and 8-bit state against float32 state, in turns):")
        lines.append("")
        lines.append("| algorithm | state B/param f32 / bf16 / 8-bit | f32 ms | bf16 ms | 8-bit ms | bf16 / f32 "
                     "| 8-bit / f32 | B/elem f32 / bf16 / 8-bit | efficiency f32 / bf16 / 8-bit |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for algo, block in lean.items():
            f32, bf16, q8 = (block[k] for k in LEAN_PRECISIONS)
            if "error" in f32 or "error" in bf16 or "error" in q8:
                lines.append(f"| {algo} | err: {f32.get('error') or bf16.get('error') or q8.get('error')} "
                             "| | | | | | | |")
                continue
            nbytes = block.get("bytes_per_element", {})
            lines.append(f"| {algo} | {fmt(f32['state_bytes_per_param'], '.3g')} / "
                         f"{fmt(bf16['state_bytes_per_param'], '.3g')} / {fmt(q8['state_bytes_per_param'], '.3g')} "
                         f"| {fmt(f32['median_ms'])} | {fmt(bf16['median_ms'])} | {fmt(q8['median_ms'])} "
                         f"| {fmt(block.get('ratio'), '.3f')} | {fmt(block.get('ratio_8bit'), '.3f')} "
                         f"| {nbytes.get('param')} / {nbytes.get('bfloat16')} / {nbytes.get('8bit')} "
                         f"| {fmt(f32.get('efficiency'))} / {fmt(bf16.get('efficiency'))} / {fmt(q8.get('efficiency'))} |")
    kahan = result.get("kahan_summation") or {}
    if kahan:
        lines.append("")
        lines.append("kahan_summation (our Python classes on bfloat16 weights, with against without, in turns):")
        lines.append("")
        lines.append("| algorithm | without ms | with ms | with / without |")
        lines.append("|---|---:|---:|---:|")
        for algo, block in kahan.items():
            lines.append(f"| {algo} | {fmt(block['plain'].get('median_ms'))} | {fmt(block['kahan'].get('median_ms'))} "
                         f"| {fmt(block.get('ratio'), '.3f')} |")
    lines.append("")
    lines.append(f"(worker took {result['elapsed_s']:.0f} s)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- driver


def driver_main(args: argparse.Namespace) -> int:
    names = [w.strip() for w in args.workloads.split(",") if w.strip()] if args.workloads else list(WORKLOADS)
    unknown = [name for name in names if name not in WORKLOADS]
    if unknown:
        print(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(WORKLOADS)}", file=sys.stderr)
        return 2
    load = load_average()
    if load is not None and load > 0.5:
        print(f"WARNING: 1-minute load average is {load:.2f} (> 0.5): other work is running; "
              "absolute timings will be noisy (the ratios to the same run's bandwidth and fused "
              "Adam hold better).", flush=True)
    binary = Path(args.bin)
    if not args.no_cpp and not binary.exists():
        print(f"WARNING: {binary} not found: no C++ timings (make build)", flush=True)
    json_path = Path(args.json) if args.json else ROOT / "bench" / "results.json"
    results: dict[str, Any] = {
        "meta": {
            "threads": args.threads,
            "quick": args.quick,
            "load_average_1min": load,
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
        "workloads": {},
    }
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    failed = []
    start = time.perf_counter()
    for name in names:
        print(f"running {name} ...", flush=True)
        fd, out = tempfile.mkstemp(prefix="holocron_bench_", suffix=".json")
        os.close(fd)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--out", out,
               "--threads", str(args.threads), "--bin", str(binary)]
        if args.quick:
            cmd.append("--quick")
        if args.no_cpp:
            cmd.append("--no-cpp")
        if args.block_seconds:
            cmd += ["--block-seconds", str(args.block_seconds)]
        if args.rounds:
            cmd += ["--rounds", str(args.rounds)]
        proc = subprocess.run(cmd, env=env)
        try:
            result = json.loads(Path(out).read_text()) if proc.returncode == 0 else None
        except ValueError:
            result = None
        finally:
            os.unlink(out)
        if result is None:
            print(f"ERROR: worker {name} failed (exit {proc.returncode})", flush=True)
            failed.append(name)
            results["workloads"][name] = {"error": f"worker exit {proc.returncode}"}
            continue
        results["workloads"][name] = result
        print()
        print(report(result), flush=True)
        print()
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=1))
    results["meta"]["elapsed_s"] = time.perf_counter() - start
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=1))
    print(f"results written to {json_path} ({results['meta']['elapsed_s']:.0f} s in all)")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", help=f"comma-separated, of {', '.join(WORKLOADS)} (default: all)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in every process (default 2)")
    parser.add_argument("--quick", action="store_true", help="a much shorter smoke run")
    parser.add_argument("--json", help="where to write the results (default bench/results.json)")
    parser.add_argument("--bin", default=str(DEFAULT_BIN), help="the C++ benchmark binary")
    parser.add_argument("--no-cpp", action="store_true", help="skip the C++ classes")
    parser.add_argument("--block-seconds", type=float, default=None,
                        help="timed seconds aimed at per algorithm block (default 6, quick 0.5)")
    parser.add_argument("--rounds", type=int, default=None, help="fixed number of rounds per block")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.worker:
        return worker_main(args)
    return driver_main(args)


if __name__ == "__main__":
    sys.exit(main())
