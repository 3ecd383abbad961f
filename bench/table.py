#!/usr/bin/env python3
"""Prints the README's summary table from bench.py's JSON: per workload and
algorithm, our Python class's ms/step, its efficiency against the roofline, its
time per byte against torch's fused Adam and its speedup over the reference.

    .venv/bin/python bench/table.py bench/results.json
"""

from __future__ import annotations

import json
import sys

NAMES = {"resnet50-f32": "ResNet-50 f32", "resnet50-bf16": "ResNet-50 bf16",
         "small-3000": "3000 small f32", "big-32M": "one 32M f32"}


def main(path: str) -> None:
    data = json.load(open(path))
    workloads = [w for w in NAMES if w in data["workloads"]]
    results = {w: data["workloads"][w] for w in workloads}
    print("| algorithm | " + " | ".join(NAMES[w] for w in workloads) + " |")
    print("|---|" + "---:|" * len(workloads))
    adam = []
    for w in workloads:
        a = results[w]["adam"]
        adam.append(f"{a['median_ms']:.1f} ms, eff {a['efficiency']:.2f}")
    print("| fused Adam (torch) | " + " | ".join(adam) + " |")
    algorithms = results[workloads[0]]["algorithms"]
    for name in algorithms:
        cells = []
        for w in workloads:
            r = results[w]["algorithms"][name]
            ms = r["python"]["median_ms"]
            cells.append(f"{ms:.1f} ms, eff {r['efficiency_python']:.2f}, {r['time_per_byte_vs_adam']:.2f}, "
                         f"{r['speedup_vs_reference']:.1f}x")
        print(f"| {name} | " + " | ".join(cells) + " |")
    for wrapper in ("Lookahead", "Scout"):
        cells = [f"{results[w]['wrappers'][wrapper]['ratio_vs_adam']:.2f}x Adam" for w in workloads]
        print(f"| {wrapper}(fused Adam) | " + " | ".join(cells) + " |")
    print()
    print("Bandwidth (a.add_(b)): " + ", ".join(f"{NAMES[w]} {results[w]['bandwidth_gbs']:.1f} GB/s" for w in workloads))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench/results.json")
