"""Turns the CSV files of `holocron_demo` into PNGs and prints their paths.

usage: python demo/plot.py DIR   (DIR: the demo's --out folder; the PNGs go there too)
"""

import csv
import math
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed, or wanted in CI
import matplotlib.pyplot as plt  # noqa: E402

BASELINES = ("Adam (torch)", "AdamW (torch)")


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def by_optimizer(rows):
    """Rows grouped by optimizer, in the order the demo ran them."""
    groups = defaultdict(list)
    for row in rows:
        groups[row["optimizer"]].append(row)
    return groups


def styles(names):
    """A fixed colour per optimizer; the torch baselines dashed in greys so ours stand out."""
    colours = plt.get_cmap("tab10").colors
    ours = [n for n in names if n not in BASELINES]
    style = {n: {"color": colours[i % len(colours)], "linestyle": "-"} for i, n in enumerate(ours)}
    style["Adam (torch)"] = {"color": "black", "linestyle": "--"}
    style["AdamW (torch)"] = {"color": "grey", "linestyle": "--"}
    return style


def smoothed(values, weight=0.95):
    """Exponential moving average with bias correction, as TensorBoard's smoothing."""
    out, average = [], 0.0
    for i, v in enumerate(values, 1):
        average = weight * average + (1 - weight) * v
        out.append(average / (1 - weight**i))
    return out


def plot_training(folder):
    losses = by_optimizer(read_rows(folder / "training_loss.csv"))
    heldout = by_optimizer(read_rows(folder / "training_heldout.csv"))
    style = styles(list(losses))
    final = {n: float(rows[-1]["heldout_loss"]) for n, rows in heldout.items()}
    order = sorted(losses, key=final.get)  # legend from best to worst held-out loss

    fig, (ax_train, ax_loss, ax_acc) = plt.subplots(1, 3, figsize=(18, 5.5))
    for name in order:
        steps = [int(r["step"]) for r in losses[name]]
        ax_train.plot(steps, smoothed([float(r["loss"]) for r in losses[name]]), label=name, **style[name])
        eval_steps = [float(r["step"]) for r in heldout[name]]
        ax_loss.plot(eval_steps, [float(r["heldout_loss"]) for r in heldout[name]], label=name, **style[name])
        ax_acc.plot(eval_steps, [100 * float(r["heldout_accuracy"]) for r in heldout[name]], label=name,
                    **style[name])
    ax_train.set(title="training loss (smoothed)", xlabel="step", ylabel="cross-entropy", yscale="log")
    ax_loss.set(title="held-out loss", xlabel="step", ylabel="cross-entropy", yscale="log")
    ax_acc.set(title="held-out accuracy", xlabel="step", ylabel="%", ylim=(20, 100))
    for ax in (ax_train, ax_loss, ax_acc):
        ax.grid(True, which="both", alpha=0.3)
    ax_acc.legend(title="best held-out loss first", fontsize=8, loc="lower right")
    fig.suptitle("Shapes CNN: the same weights, batches and steps for every optimizer; lr per optimizer from a sweep")
    fig.tight_layout()
    path = folder / "training.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def rosenbrock(x, y):
    return (1 - x) ** 2 + 100 * (y - x * x) ** 2


def rastrigin(x, y):
    return 20 + x * x - 10 * math.cos(2 * math.pi * x) + y * y - 10 * math.cos(2 * math.pi * y)


FUNCTIONS = {
    "rosenbrock": {"f": rosenbrock, "x": (-2.5, 2.5), "y": (-1.5, 3.5), "optimum": (1, 1), "log": True, "levels": 30},
    "rastrigin": {"f": rastrigin, "x": (-4.5, 4.5), "y": (-4.5, 4.5), "optimum": (0, 0), "log": False, "levels": 12},
}


def plot_trajectories(folder, name):
    spec = FUNCTIONS[name]
    paths = by_optimizer(read_rows(folder / f"{name}_trajectories.csv"))
    n = 200
    xs = [spec["x"][0] + (spec["x"][1] - spec["x"][0]) * i / (n - 1) for i in range(n)]
    ys = [spec["y"][0] + (spec["y"][1] - spec["y"][0]) * j / (n - 1) for j in range(n)]
    zs = [[spec["f"](x, y) for x in xs] for y in ys]
    if spec["log"]:
        zs = [[math.log10(1 + z) for z in row] for row in zs]

    columns = 4
    rows = math.ceil(len(paths) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 4 * rows), squeeze=False)
    for ax in axes.flat[len(paths):]:
        ax.axis("off")
    for ax, (optimizer, points) in zip(axes.flat, paths.items()):
        px = [float(p["x"]) for p in points]
        py = [float(p["y"]) for p in points]
        distance = math.hypot(px[-1] - spec["optimum"][0], py[-1] - spec["optimum"][1])
        ax.contourf(xs, ys, zs, levels=spec["levels"], cmap="Greys_r", alpha=0.5)
        ax.plot(px, py, "-", color="tab:blue", linewidth=1)
        ax.plot(px, py, ".", color="tab:blue", markersize=2)
        ax.plot(px[0], py[0], "o", color="tab:green", markersize=8, label="start")
        ax.plot(*spec["optimum"], "*", color="tab:red", markersize=14, label="optimum")
        ax.plot(px[-1], py[-1], "x", color="tab:orange", markersize=9, markeredgewidth=2, label="end")
        ax.set_xlim(*spec["x"])
        ax.set_ylim(*spec["y"])
        ax.set_title(f"{optimizer}\nlr {float(points[0]['lr']):.2g}, ends {distance:.2g} from the optimum", fontsize=9)
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=7, loc="upper right")
    steps = len(next(iter(paths.values()))) - 1
    fig.suptitle(f"{name.capitalize()}: {steps} steps from the same start; each optimizer with the learning rate "
                 "that ends closest to the optimum")
    fig.tight_layout()
    path = folder / f"{name}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


PRECISION_COLOURS = {"float32": "tab:blue", "bfloat16": "tab:orange", "8bit": "tab:green",
                     "bfloat16+Kahan": "tab:purple"}


def bars(ax, groups, series, values, ylabel, title):
    """Grouped bars: one group per optimizer, one bar per series."""
    width = 0.8 / len(series)
    for k, label in enumerate(series):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(groups))]
        ax.bar(xs, [values.get((g, label), math.nan) for g in groups], width, label=label,
               color=PRECISION_COLOURS.get(label))
    ax.set_xticks(range(len(groups)), groups, rotation=30, fontsize=8)
    ax.set(ylabel=ylabel, title=title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)


def plot_state_quality(folder):
    """Part 3 and demo/quality.py: held-out accuracy per state precision on both tasks, and the
    fine-tuning task's loss fall with plain and Kahan-compensated bfloat16 weights."""
    shapes_path, quality_path = folder / "state_precision.csv", folder / "state_quality.csv"
    if not shapes_path.exists() or not quality_path.exists():
        return None
    shapes = defaultdict(list)
    for row in read_rows(shapes_path):
        shapes[(row["optimizer"], row["precision"])].append(100 * float(row["heldout_accuracy"]))
    shapes_mean = {key: sum(v) / len(v) for key, v in shapes.items()}
    quality = read_rows(quality_path)
    digits = {(r["optimizer"], r["precision"]): float(r["mean_accuracy"]) for r in quality if r["task"] == "digits"}
    falls = {(r["optimizer"], r["precision"]): float(r["loss_fall"]) for r in quality if r["task"] == "fine-tune"}
    relative = {(name, w): fall / falls[(name, "float32")] for (name, w), fall in falls.items() if w != "float32"}
    names = list(dict.fromkeys(name for name, _ in list(shapes_mean) + list(digits)))

    fig, (ax_shapes, ax_digits, ax_kahan) = plt.subplots(1, 3, figsize=(18, 5))
    low = min(list(shapes_mean.values()) + list(digits.values()))
    bars(ax_shapes, names, ["float32", "bfloat16", "8bit"], shapes_mean, "held-out accuracy (%)",
         "shapes CNN (the demo's task), mean over seeds")
    bars(ax_digits, names, ["float32", "bfloat16", "8bit"], digits, "held-out accuracy (%)",
         "scikit-learn's digits, an MLP, mean over seeds")
    for ax in (ax_shapes, ax_digits):
        ax.set_ylim(max(0.0, low - 5), 100)
    bars(ax_kahan, names, ["bfloat16", "bfloat16+Kahan"], relative, "loss fall / float32 weights' fall",
         "fine-tuning below a bfloat16 ulp: bfloat16 weights")
    ax_kahan.axhline(1.0, color="black", linewidth=0.8)
    ax_kahan.set_ylim(0, 1.2)
    fig.suptitle("Lean state: float32, bfloat16 and 8-bit moments; Kahan-compensated bfloat16 weights")
    fig.tight_layout()
    path = folder / "state_quality.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    folder = Path(sys.argv[1])
    written = [plot_training(folder)] + [plot_trajectories(folder, name) for name in FUNCTIONS]
    written += [path for path in [plot_state_quality(folder)] if path is not None]
    print("PNG files:")
    for path in written:
        print(f"  {path.resolve()}")


if __name__ == "__main__":
    main()
