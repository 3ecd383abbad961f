"""`make demo`, part 3: what lean state costs in quality (issue 17), with the Python classes.

1. scikit-learn's digits (1797 8x8 images that ship with the package; nothing downloaded): an
   MLP whose two large weight matrices (8192 elements each) keep 8-bit moments under
   state_precision="8bit" (tensors under 4096 elements keep float32 ones). Every algorithm, with
   float32, bfloat16 and 8-bit state, over several seeds (initial weights and batch order): the
   mean held-out accuracy, and each lean precision's difference from float32 state.
2. A fine-tuning task whose updates are smaller than a bfloat16 unit in the last place (weights
   in [1, 1.5), a quadratic pulls them 0.3 away at a learning rate that moves float32 weights by
   about 1/20 of a bfloat16 unit per step): how far the loss falls with float32 weights, plain
   bfloat16 weights, and bfloat16 weights with kahan_summation, relative to float32.

Prints both tables and writes them as CSV files (demo/plot.py plots them).

Usage: python demo/quality.py [--out DIR] [--seeds N] [--epochs N] [--threads N]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import time

import torch

import holocron_optim as ho

ALGORITHMS = ["LARS", "LAMB", "RaLars", "TAdam", "AdaBelief", "AdamP", "Adan", "AdEMAMix"]
PRECISIONS = ["float32", "bfloat16", "8bit"]
# Learning rates for the digits MLP, chosen once by hand from the demo's task's sweep (LARS and the
# LAMB family scale each step by ||p||, so their rates are in other units than Adam's).
DIGITS_LR = {"LARS": 1e-3, "LAMB": 0.01, "RaLars": 0.01, "TAdam": 1e-3, "AdaBelief": 1e-3, "AdamP": 1e-3,
             "Adan": 3e-3, "AdEMAMix": 1e-3}
DIGITS_OPTIONS = {"LARS": {"momentum": 0.9}}


def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's digits, scaled to [0, 1], split 1400 / 397 after a fixed shuffle."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def train_digits(name: str, precision: str, seed: int, epochs: int, data) -> float:
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 10))
    opt = getattr(ho, name)(model.parameters(), lr=DIGITS_LR[name], state_precision=precision,
                            **DIGITS_OPTIONS.get(name, {}))
    batches = torch.Generator().manual_seed(1000 + seed)
    for _ in range(epochs):
        order = torch.randperm(len(y_train), generator=batches)
        for start in range(0, len(order), 64):
            index = order[start:start + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x_train[index]), y_train[index]).backward()
            opt.step()
    with torch.no_grad():
        return (model(x_test).argmax(1) == y_test).float().mean().item() * 100.0


def fine_tune(name: str, weights: str, lr: float, steps: int = 400) -> tuple[float, float]:
    """How far the fine-tuning task's loss falls at the weights the model holds, and how far the
    weights moved on average (tests/python/test_kahan.py's fine-tuning target, the same task)."""
    gen = torch.Generator().manual_seed(0)
    start = (1.0 + 0.5 * torch.rand(64, 33, generator=gen)).to(torch.bfloat16).float()
    target = start + 0.3 * torch.randn(64, 33, generator=gen).sign()
    dtype = torch.float32 if weights == "float32" else torch.bfloat16
    p = start.to(dtype, copy=True).requires_grad_()
    options = {"momentum": 0.9} if name == "LARS" else {}
    opt = getattr(ho, name)([p], lr=lr, weight_decay=0.0, kahan_summation=weights == "bfloat16+Kahan", **options)

    def loss() -> float:
        return 0.5 * (p.detach().float() - target).pow(2).sum().item()

    before = loss()
    for _ in range(steps):
        p.grad = (p.detach().float() - target).to(dtype)
        opt.step()
    return before - loss(), (p.detach().float() - start).abs().mean().item()


def fine_tune_falls(name: str) -> dict[str, float]:
    """The loss's fall with each kind of weights, at the rate that moves float32 weights 0.15 on
    average in 400 steps (about 1/20 of a bfloat16 unit at 1 per step)."""
    _, moved = fine_tune(name, "float32", 1e-4)
    lr = 1e-4 * 0.15 / moved
    return {weights: fine_tune(name, weights, lr)[0] for weights in ("float32", "bfloat16", "bfloat16+Kahan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo-output")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)

    data = digits()
    print(f"\nState precision on scikit-learn's digits (1400 to train on, 397 held out): an MLP 64-128-64-10, "
          f"{args.epochs} epochs of batch 64, {args.seeds} seeds; mean held-out accuracy (%), the lean "
          "precisions' difference from float32 state (points), and the standard deviation over seeds of float32 "
          "state's accuracy:\n")
    header = (f"{'optimizer':<10} {'float32':>8} {'bfloat16':>9} {'8bit':>8} {'bf16 - f32':>11} {'8bit - f32':>11} "
              f"{'f32 sd':>7}")
    print(header)
    print("-" * len(header))
    rows = []
    started = time.time()
    for name in ALGORITHMS:
        means, spread = {}, 0.0
        for precision in PRECISIONS:
            accuracies = [train_digits(name, precision, seed, args.epochs, data) for seed in range(args.seeds)]
            means[precision] = statistics.mean(accuracies)
            if precision == "float32" and len(accuracies) > 1:
                spread = statistics.stdev(accuracies)
            rows.append({"task": "digits", "optimizer": name, "precision": precision,
                         "mean_accuracy": means[precision], "accuracies": " ".join(f"{a:.2f}" for a in accuracies)})
        print(f"{name:<10} {means['float32']:>8.2f} {means['bfloat16']:>9.2f} {means['8bit']:>8.2f} "
              f"{means['bfloat16'] - means['float32']:>+11.2f} {means['8bit'] - means['float32']:>+11.2f} "
              f"{spread:>7.2f}")
    print(f"({time.time() - started:.0f} s)")

    print("\nKahan summation: a fine-tuning task whose updates are about 1/20 of a bfloat16 unit in the last place "
          "(weights in [1, 1.5), 400 steps); how far the loss falls:\n")
    header = f"{'optimizer':<10} {'float32':>9} {'bfloat16':>9} {'bf16+Kahan':>11} {'Kahan / f32':>12}"
    print(header)
    print("-" * len(header))
    for name in ALGORITHMS:
        falls = fine_tune_falls(name)
        for weights, fall in falls.items():
            rows.append({"task": "fine-tune", "optimizer": name, "precision": weights, "loss_fall": fall})
        print(f"{name:<10} {falls['float32']:>9.2f} {falls['bfloat16']:>9.2f} {falls['bfloat16+Kahan']:>11.2f} "
              f"{falls['bfloat16+Kahan'] / falls['float32']:>12.3f}")

    path = os.path.join(args.out, "state_quality.csv")
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["task", "optimizer", "precision", "mean_accuracy", "accuracies",
                                               "loss_fall"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"\nwritten to {os.path.abspath(path)}")


if __name__ == "__main__":
    main()
