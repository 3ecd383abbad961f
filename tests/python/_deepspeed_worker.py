"""One rank of the DeepSpeed tests (test_deepspeed.py), under torchrun:

    python -m torch.distributed.run --standalone --nproc_per_node N _deepspeed_worker.py OUT_DIR CASE[,CASE...]

A case is `ALGORITHM:STAGE[:offload][:bf16|fp16][:clip][:MODE]`. The rank trains a small model for
STEPS steps with DeepSpeed ZeRO (CPU accelerator, gloo) and, beside it, plain
data-parallel training done locally (the same optimizer class on whole
tensors, gradients of the mean loss over every rank's batch); it writes the
largest relative difference between the two models' weights. Modes:
`raw` (no zero_aware), `raw-refused` (no zero_aware, a step that must raise), `refused` (zero_aware
must raise), `shifted` (the layout read with every tensor's offset
moved by one element), `resume` (a save_checkpoint after RESUME_AT steps, the
rest run twice: on, and after a load_checkpoint into a new engine; writes
whether the two ended bitwise equal).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import deepspeed  # noqa: E402
import holocron_optim as ho  # noqa: E402
import holocron_optim.deepspeed as ho_deepspeed  # noqa: E402

STEPS, RESUME_AT, BATCH = 10, 5, 4
CLIP = 0.05  # small enough to clip every step
# Odd sizes: the flat buffer's tensors cut across the ranks' partitions.
SIZES = (7, 13, 5, 3)
# Options that make each algorithm reduce whole tensors in every branch it has.
OPTIONS = {
    "LARS": {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3},
    "LAMB": {"lr": 1e-2, "weight_decay": 1e-2},
    "RaLars": {"lr": 1e-2, "weight_decay": 1e-2},
    "TAdam": {"lr": 1e-2, "weight_decay": 1e-2},
    "AdamP": {"lr": 1e-2, "weight_decay": 1e-2, "delta": 0.9},
    # timm's: each output channel's sums over the partitions, which cut rows (delta 1.5 projects
    # some weights' updates channel by channel, some as layers, some not at all).
    "AdamP-timm": {"lr": 1e-2, "weight_decay": 5e-2, "delta": 1.5, "decoupled_weight_decay": True,
                   "channel_projection": True, "wd_ratio": 0.1, "nesterov": True},
}


def make_model() -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(SIZES, SIZES[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.Tanh()]
    return nn.Sequential(*layers[:-1])


def make_optimizer(name: str, model: nn.Module) -> torch.optim.Optimizer:
    # Two groups: weights with the options, biases with a group option of their own.
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    wrappers = []
    while name.endswith(")"):
        wrapper, name = name[:-1].split("(", 1)
        wrappers.append(getattr(ho, wrapper))
    options = OPTIONS[name]
    groups = [{"params": weights}, {"params": biases, "lr": options["lr"] / 2}]
    optimizer = getattr(ho, name.split("-")[0])(groups, **options)
    for wrapper in reversed(wrappers):
        optimizer = wrapper(optimizer, sync_period=3)
    return optimizer


def batch(step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1000 * step + rank)
    x = torch.randn(BATCH, SIZES[0], generator=generator)
    return x, torch.randn(BATCH, SIZES[-1], generator=generator)


def loss_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(model(x), y)


def config(stage: int, offload: bool, precision: str, clip: float, world: int) -> dict:
    zero: dict = {"stage": stage}
    if offload:
        zero["offload_optimizer"] = {"device": "cpu"}
    return {
        **({precision: {"enabled": True}} if precision else {}),
        "train_micro_batch_size_per_gpu": BATCH, "gradient_accumulation_steps": 1, "train_batch_size": BATCH * world,
        "zero_optimization": zero, "zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False,
        "gradient_clipping": clip, "steps_per_print": 10**9,
    }


def make_engine(name: str, stage: int, offload: bool, precision: str, clip: float, mode: str, world: int):
    model = make_model()
    engine, *_ = deepspeed.initialize(model=model, optimizer=make_optimizer(name, model),
                                      config=config(stage, offload, precision, clip, world))
    if mode == "shifted":
        zero = engine.optimizer
        zero.round_robin_bit16_offsets = [[o + 1 if o else o for o in offsets]
                                          for offsets in zero.round_robin_bit16_offsets]
    if not mode.startswith("raw") and mode != "refused":
        ho_deepspeed.zero_aware(engine)
    return engine


def train_engine(engine, steps: range, rank: int) -> None:
    for step in steps:
        x, y = (t.to(next(engine.module.parameters()).dtype) for t in batch(step, rank))
        engine.backward(loss_of(engine, x, y).float())
        engine.step()


def plain_training(name: str, world: int, precision: str, clip: float) -> list[torch.Tensor]:
    """The optimizer on whole float32 tensors. With bf16, as DeepSpeed's mixed
    precision: float32 master weights, each rank's gradient from a bfloat16 copy,
    averaged in float32."""
    model = make_model()
    optimizer = make_optimizer(name, model)
    low = make_model().to(torch.bfloat16) if precision else None
    for step in range(STEPS):
        optimizer.zero_grad()
        if low is None:
            xs, ys = zip(*(batch(step, r) for r in range(world)))
            loss_of(model, torch.cat(xs), torch.cat(ys)).backward()
        else:
            with torch.no_grad():
                for p, q in zip(low.parameters(), model.parameters()):
                    p.copy_(q)
            grads = [torch.zeros_like(p) for p in model.parameters()]
            for r in range(world):
                low.zero_grad()
                x, y = (t.to(torch.bfloat16) for t in batch(step, r))
                loss_of(low, x, y).float().backward()
                for g, p in zip(grads, low.parameters()):
                    g.add_(p.grad.float(), alpha=1 / world)
            for p, g in zip(model.parameters(), grads):
                p.grad = g
        if clip:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


def weights(engine) -> list[torch.Tensor]:
    return [p.detach().clone() for p in engine.module.parameters()]


def equal(a, b) -> bool:
    """Bitwise equality of nested states."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(equal, a, b))
    return a == b


def relative_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(((x - y).norm() / y.norm()).item() for x, y in zip(a, b))


def run_case(case: str, rank: int, world: int, out: Path) -> dict:
    name, stage, *flags = case.split(":")
    offload = "offload" in flags
    precision = next((f for f in flags if f in ("bf16", "fp16")), "")
    # DeepSpeed clips by the global norm of the averaged gradients, before the step.
    clip = CLIP if "clip" in flags else 0.0
    mode = next((f for f in flags if f not in ("offload", "bf16", "fp16", "clip")), "")
    engine = make_engine(name, int(stage), offload, precision, clip, mode, world)
    if mode == "resume":
        directory = out / f"checkpoint-{case.replace(':', '-')}"
        train_engine(engine, range(RESUME_AT), rank)
        engine.save_checkpoint(str(directory), tag="step")
        train_engine(engine, range(RESUME_AT, STEPS), rank)
        uninterrupted = weights(engine)
        state = engine.optimizer.optimizer.state_dict()["state"]
        resumed_engine = make_engine(name, int(stage), offload, precision, clip, mode, world)
        resumed_engine.load_checkpoint(str(directory), tag="step")
        train_engine(resumed_engine, range(RESUME_AT, STEPS), rank)
        resumed_state = resumed_engine.optimizer.optimizer.state_dict()["state"]
        return {"bitwise": all(map(torch.equal, uninterrupted, weights(resumed_engine))),
                "same_state": equal(state, resumed_state)}
    if mode == "refused":
        try:
            ho_deepspeed.zero_aware(engine)
        except (ValueError, RuntimeError) as error:
            return {"refused": f"{type(error).__name__}: {error}"}
        return {"refused": ""}
    if mode == "raw-refused":
        try:
            train_engine(engine, range(STEPS), rank)
        except RuntimeError as error:
            return {"refused": str(error)}
        return {"refused": ""}
    train_engine(engine, range(STEPS), rank)
    # The float32 master weights (with bf16, the model's are their rounded copies).
    master = [deepspeed.utils.safe_get_full_fp32_param(p).detach().clone() for p in engine.module.parameters()]
    return {"difference": relative_difference(master, plain_training(name, world, precision, clip))}


def main() -> int:
    out, cases = Path(sys.argv[1]), sys.argv[2].split(",")
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False, verbose=False)
    torch.set_num_threads(1)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    results = {}
    for case in cases:
        try:
            results[case] = run_case(case, rank, world, out)
        except Exception:
            results[case] = {"error": traceback.format_exc()}
    (out / f"rank{rank}.json").write_text(json.dumps(results))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # see exit_without_teardown in examples/python/train_fsdp2.py
