"""One rank of the distributed tests (test_distributed.py starts two).

    python _distributed_worker.py RANK WORLD_SIZE STORE_FILE OUT_DIR SCENARIO[,SCENARIO...]

Every rank runs every case of every scenario named and writes what it
collected (full tensors, placements, tracebacks) to OUT_DIR/rank{RANK}.pt after
each case; rank 0 also trains the single-process baselines. The test process
only reads these files and asserts, so a failing case names its optimizer.

Scenarios:
    fsdp  FSDP2 (fully_shard) on a 1-D mesh of 2, uneven and empty shards,
          compared with one process training on both ranks' batches;
    hsdp  the same on the 2-D meshes (1, 2) and (2, 1), placements
          (Replicate(), Shard(0));
    ddp   DistributedDataParallel, compared likewise;
    dcp   FSDP2 + torch.distributed.checkpoint: a run saved, loaded into a fresh
          model and optimizer and continued equals the uninterrupted run bit
          for bit (8-bit state too);
    blockwise
          FSDP2 with 8-bit state, against one process whose float32 state is
          rounded through each rank's codes after every step.

After each case the ranks compare their outcome through the store; if they
ended differently (one raised, the other timed out in a collective waiting for
it), the process group is restarted before the next case.

HOLOCRON_OPTIM_DIST_STANDIN=1 replaces every optimizer by torch.optim.Adam or
SGD (the same case names), to check this harness itself.
HOLOCRON_OPTIM_DIST_PG_TIMEOUT sets the collectives' timeout (seconds, 20).
"""

from __future__ import annotations

import copy
import os
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

STANDIN = os.environ.get("HOLOCRON_OPTIM_DIST_STANDIN", "") not in ("", "0")
DTYPE = torch.float64
BATCH = 6  # rows per rank
STEPS = 8
DCP_BEFORE, DCP_AFTER = 4, 4  # steps before the checkpoint, and after it
# A collective waits this long for a rank that failed differently (then the
# process group is restarted, at most MAX_RESTARTS times).
PG_TIMEOUT_S = float(os.environ.get("HOLOCRON_OPTIM_DIST_PG_TIMEOUT", "20"))
MAX_RESTARTS = 3


# ---------------------------------------------------------------- optimizers

def _ho():
    import holocron_optim as ho

    return ho


def _timm() -> Any:
    import holocron_optim.timm

    return holocron_optim.timm


LR = 0.05
ADAMP_DELTA = 1.0  # projects some parameters' updates, not all (test_adamp_delta_...)


def adamp_with_delta(delta: float):
    if STANDIN:
        return lambda p: torch.optim.Adam(p, lr=LR, weight_decay=0.01)
    return lambda p: _ho().AdamP(p, lr=LR, weight_decay=0.01, delta=delta)


def adamp_timm(p: list[nn.Parameter]) -> torch.optim.Optimizer:
    return _timm().AdamP(p, lr=LR, weight_decay=0.05, delta=ADAMP_DELTA, nesterov=True)


def _case_factories() -> dict[str, Callable[[list[nn.Parameter]], torch.optim.Optimizer]]:
    """Case name -> constructor. Options exercise the whole-tensor reductions."""
    if STANDIN:
        adam = lambda p: torch.optim.Adam(p, lr=LR, weight_decay=0.01)  # noqa: E731
        return {
            "LARS": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01),
            "LAMB": adam,
            "RaLars": adam,
            "TAdam": adam,
            "TAdam-amsgrad": lambda p: torch.optim.Adam(p, lr=LR, amsgrad=True),
            "AdaBelief": lambda p: torch.optim.AdamW(p, lr=LR, amsgrad=True),
            "AdamP": adam,
            "Adan": adam,
            "AdEMAMix": adam,
            "Lookahead(LAMB)": adam,
            "Scout(AdamP)": adam,
            "LAMB(timm)": adam,
            "LARS(timm)": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01),
            "Adan(authors)": adam,
            "Adan(cautious)": adam,
            "AdEMAMix(cautious)": adam,
            "LAMB(cautious)": adam,
            "AdamP(cautious)": adam,
            "AdamP(timm)": adam,
            "LAMB(bfloat16 state)": adam,
            "Adan(bfloat16 state)": adam,
        }
    ho = _ho()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from registry import ALGORITHMS

    cases = {name: (lambda p, a=algorithm: a.make(p, lr=LR)) for name, algorithm in ALGORITHMS.items()}
    return {
        **cases,
        "LARS": lambda p: ALGORITHMS["LARS"].make(p, lr=0.1, scale_clip=(0.05, 5.0)),
        "TAdam": lambda p: ho.TAdam(p, lr=LR),  # dof=None: the parameter's size (numel)
        "TAdam-amsgrad": lambda p: ho.TAdam(p, lr=LR, weight_decay=0.01, amsgrad=True),
        "AdamP": adamp_with_delta(ADAMP_DELTA),
        "Lookahead(LAMB)": lambda p: ho.Lookahead(ho.LAMB(p, lr=LR, weight_decay=0.01), sync_rate=0.5, sync_period=3),
        # sync_rate=0: the rate is 1 - coherence, a mean over every parameter's elements
        "Scout(AdamP)": lambda p: ho.Scout(ho.AdamP(p, lr=LR, delta=ADAMP_DELTA), sync_rate=0.0, sync_period=3),
        # timm's options: bias correction and a global gradient norm clipped at 0.1 (one
        # norm over every shard of every parameter: the gradients here are larger).
        "LAMB(timm)": lambda p: _timm().Lamb(p, lr=LR, weight_decay=0.01, max_grad_norm=0.1),
        "LARS(timm)": lambda p: _timm().Lars(p, lr=0.1, momentum=0.9, weight_decay=0.01, trust_clip=True),
        # The authors' clipping (one norm over every shard) and decay.
        "Adan(authors)": lambda p: ho.Adan(p, lr=LR, weight_decay=0.02, decoupled_weight_decay=True, no_prox=True,
                                           max_grad_norm=0.1),
        # The cautious mask's mean over every shard of the tensor.
        "Adan(cautious)": lambda p: ho.Adan(p, lr=LR, weight_decay=0.02, caution=True),
        "AdEMAMix(cautious)": lambda p: ho.AdEMAMix(p, lr=LR, caution=True, t_alpha=3, t_beta3=3),
        "LAMB(cautious)": lambda p: _timm().Lamb(p, lr=LR, weight_decay=0.01, caution=True),
        "AdamP(cautious)": lambda p: ho.AdamP(p, lr=LR, delta=ADAMP_DELTA, weight_decay=0.01, caution=True,
                                              nesterov=True),
        # Each output channel's sums over its shards (test_adamp_timm_takes_each_branch).
        "AdamP(timm)": adamp_timm,
        # state_precision: bfloat16 buffers sharded as their parameters, the sums as ever.
        "LAMB(bfloat16 state)": lambda p: ho.LAMB(p, lr=LR, weight_decay=0.01, state_precision="bfloat16"),
        "Adan(bfloat16 state)": lambda p: ho.Adan(p, lr=LR, weight_decay=0.02, caution=True, state_precision="bfloat16"),
        # kahan_summation on a bfloat16 model (CASE_DTYPES): compensations sharded as their
        # parameters, LAMB's norms read p + c on every shard; Lookahead syncs p + c.
        "Lookahead(LAMB, Kahan)": lambda p: ho.Lookahead(
            ho.LAMB(p, lr=LR, weight_decay=0.01, state_precision="float32", kahan_summation=True),
            sync_rate=0.5, sync_period=3),
    }


def _blockwise_factories() -> dict[str, Callable[..., torch.optim.Optimizer]]:
    """8-bit state cases: name -> constructor taking the state precision ("8bit", or "float32"
    for the emulation that rounds its moments through each rank's codes after every step)."""
    if STANDIN:
        return {name: (lambda p, precision="8bit": torch.optim.Adam(p, lr=LR)) for name in BLOCKWISE_CASES}
    ho = _ho()
    return {
        # The trust ratio's norms from the decoded moments of both shards; LARS makes its momentum
        # in the op's first step; Adan's signed second moment; AdamP's cosines.
        "LAMB(8bit)": lambda p, precision="8bit": ho.LAMB(p, lr=LR, weight_decay=0.01, state_precision=precision),
        "LARS(8bit)": lambda p, precision="8bit": ho.LARS(p, lr=0.1, momentum=0.9, weight_decay=0.01,
                                                          state_precision=precision),
        "Adan(8bit)": lambda p, precision="8bit": ho.Adan(p, lr=LR, weight_decay=0.02, state_precision=precision),
        "AdamP(8bit)": lambda p, precision="8bit": ho.AdamP(p, lr=LR, weight_decay=0.01, delta=ADAMP_DELTA,
                                                            state_precision=precision),
    }


# Every moment of this model's small tensors is kept as codes in these cases: the ranks (main, not
# a process importing this module) lower the 4096-element floor to 1, so that the odd shapes give
# uneven blocks and an empty shard. Other cases keep no 8-bit state.
BLOCKWISE_CASES = ("LAMB(8bit)", "LARS(8bit)", "Adan(8bit)", "AdamP(8bit)")
CASES = tuple(_case_factories())
# The model's dtype in a case, when not DTYPE's float64 (main() sets DTYPE per case).
CASE_DTYPES = {"Lookahead(LAMB, Kahan)": torch.bfloat16}
HSDP_CASES = ("LARS", "LAMB", "TAdam", "AdamP", "Scout(AdamP)", "AdamP(timm)")
# Tensor parallelism's layout: a part of every output channel on each rank.
TP_CASES = ("LAMB", "TAdam", "AdamP", "AdamP(timm)", "LAMB(cautious)")
# FSDP2 with torch.compile(opt.step).
COMPILED_CASES = ("LAMB", "AdaBelief", "Scout(AdamP)")
HSDP_MESHES = ((1, 2), (2, 1))


# --------------------------------------------------------------------- model

class Mlp(nn.Module):
    """Every dimension odd: over 2 ranks the shards are uneven (3 -> 2 + 1,
    7 -> 4 + 3) and the last layer's (1, 7) weight and (1,) bias leave rank 1
    an empty shard. `scale` is a 1-D parameter of the root module."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 3)
        self.fc2 = nn.Linear(3, 7)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 7))
        self.fc3 = nn.Linear(7, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.fc1(x))
        h = torch.tanh(self.fc2(h)) * self.scale
        return self.fc3(h)


def make_model(seed: int = 0) -> Mlp:
    torch.manual_seed(seed)
    return Mlp().to(DTYPE)


def batch(step: int, rank: int | None, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Step `step`'s data: rank `rank`'s rows, or every rank's (None)."""
    gen = torch.Generator().manual_seed(100 + step)
    x = torch.randn(world * BATCH, 5, generator=gen, dtype=DTYPE)
    y = torch.sin(x.sum(dim=1, keepdim=True)) + 0.1 * torch.randn(world * BATCH, 1, generator=gen, dtype=DTYPE)
    if rank is None:
        return x, y
    return x[rank * BATCH : (rank + 1) * BATCH], y[rank * BATCH : (rank + 1) * BATCH]


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: range, rank: int | None, world: int,
          step_of: Callable[[], Any] | None = None) -> None:
    for step in steps:
        x, y = batch(step, rank, world)
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        (step_of or opt.step)()


# ---------------------------------------------------------------- collection

def _base(opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
    return getattr(opt, "base_optimizer", opt)


def _is_dtensor(t: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def _full(value: Any) -> Any:
    """A DTensor's full tensor (a collective), a tensor's copy, a number as a tensor."""
    if _is_dtensor(value):
        return value.full_tensor().detach().clone()
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (bool, int, float)):
        return torch.tensor(float(value), dtype=torch.float64)
    return value


def _describe(value: Any) -> str:
    if _is_dtensor(value):
        return f"DTensor{tuple(value.shape)}{tuple(value.placements)}"
    if isinstance(value, torch.Tensor):
        return f"Tensor{tuple(value.shape)}"
    return type(value).__name__


def collect(model: nn.Module, opt: torch.optim.Optimizer | None, distributed: bool) -> dict[str, Any]:
    """Full parameters and optimizer state, by parameter name, gathered in the
    same order on every rank (first checked to be the same on every rank, so
    that a mismatch is an error, not a hang)."""
    named = list(model.named_parameters())
    base = _base(opt) if opt is not None else None
    layout = []
    for name, p in named:
        st = base.state.get(p, {}) if base is not None else {}
        layout.append((name, sorted((str(k), _describe(v)) for k, v in st.items())))
    if distributed:
        layouts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(layouts, layout)
        if any(other != layouts[0] for other in layouts):
            raise RuntimeError(
                "the ranks' parameters or optimizer states differ in keys or types:\n"
                + "\n".join(f"rank {r}: {lay}" for r, lay in enumerate(layouts))
            )
    out: dict[str, Any] = {"params": {}, "state": {}, "local_scalars": {}}
    for name, p in named:
        out["params"][name] = _full(p)
    if base is not None:
        for name, p in named:
            st = base.state.get(p, {})
            out["state"][name] = {str(k): _full(st[k]) for k in sorted(st, key=str)}
            # plain (not DTensor) tensors as this rank holds them: must agree across ranks
            out["local_scalars"][name] = {
                str(k): v.detach().clone() for k, v in st.items() if isinstance(v, torch.Tensor) and not _is_dtensor(v)
            }
    if opt is not None and hasattr(opt, "slow_params"):
        out["slow_params"] = [_full(t) for group in opt.slow_params for t in group]
    if opt is not None and hasattr(opt, "last_sync_rate"):
        out["last_sync_rate"] = float(opt.last_sync_rate)
    if opt is not None and hasattr(opt, "fast_steps"):
        out["fast_steps"] = int(opt.fast_steps)
    return out


def placement_problems(model: nn.Module, opt: torch.optim.Optimizer) -> list[str]:
    """State tensors of a sharded parameter's shape must be DTensors laid out as it
    (TAdam's W_t is a per-tensor scalar, replicated, even where a parameter has one element)."""
    scalars = {"W_t", "local_lr", "step"}
    problems = []
    base = _base(opt)
    for name, p in model.named_parameters():
        if not _is_dtensor(p):
            problems.append(f"{name}: the parameter is a {type(p).__name__}, not a DTensor")
            continue
        for key, value in base.state.get(p, {}).items():
            if key in scalars or not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(p.shape):
                continue
            if not _is_dtensor(value):
                problems.append(f"{name}/{key}: a {type(value).__name__}, the parameter is a DTensor {tuple(p.placements)}")
            elif tuple(value.placements) != tuple(p.placements) or value.device_mesh != p.device_mesh:
                problems.append(
                    f"{name}/{key}: placements {tuple(value.placements)} on {value.device_mesh}, "
                    f"the parameter's are {tuple(p.placements)} on {p.device_mesh}"
                )
            elif value.to_local().shape != p.to_local().shape:
                problems.append(f"{name}/{key}: local shape {tuple(value.to_local().shape)}, "
                                f"the parameter's {tuple(p.to_local().shape)}")
    return problems


# ----------------------------------------------------------------- scenarios

def shard(model: Mlp, mesh) -> Mlp:
    from torch.distributed.fsdp import fully_shard

    for layer in (model.fc1, model.fc2, model.fc3):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def baseline(make: Callable, steps: range, world: int) -> dict[str, Any]:
    model = make_model(0)
    opt = make(list(model.parameters()))
    train(model, opt, steps, None, world)
    return collect(model, opt, distributed=False)


def run_fsdp(name: str, make: Callable, rank: int, world: int, mesh_shape: tuple[int, ...] = (2,),
             compiled: bool = False) -> dict[str, Any]:
    from torch.distributed.device_mesh import init_device_mesh

    if len(mesh_shape) == 1:
        mesh = init_device_mesh("cpu", mesh_shape)
    else:
        mesh = init_device_mesh("cpu", mesh_shape, mesh_dim_names=("replicate", "shard"))
    model = shard(make_model(0), mesh)
    opt = make(list(model.parameters()))
    # Compiled, a step of DTensors runs eagerly inside the compiled function (a graph break).
    train(model, opt, range(STEPS), rank, world, torch.compile(opt.step, backend="eager") if compiled else None)
    result = {"got": collect(model, opt, distributed=True), "placement_problems": placement_problems(model, opt),
              "param_placements": {n: str(tuple(p.placements)) for n, p in model.named_parameters()}}
    if rank == 0:
        result["expected"] = baseline(make, range(STEPS), world)
    return result


def run_ddp(name: str, make: Callable, rank: int, world: int) -> dict[str, Any]:
    from torch.nn.parallel import DistributedDataParallel

    model = make_model(0)
    ddp = DistributedDataParallel(model)
    opt = make(list(ddp.parameters()))
    train(ddp, opt, range(STEPS), rank, world)
    result = {"got": collect(model, opt, distributed=True)}
    if rank == 0:
        result["expected"] = baseline(make, range(STEPS), world)
    return result


def run_tp(name: str, make: Callable, rank: int, world: int) -> dict[str, Any]:
    """Tensor parallelism's layout of the optimizer's parameters: each weight split by
    columns (Shard(1): every rank holds a part of each output channel), the 1-D parameters
    replicated; the gradients of the whole batch laid out alike. The model that computes
    them is a plain copy, given the full weights after each step."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    model = make_model(0)
    sharded = make_model(0)
    placements = {}
    for module_name, module in list(sharded.named_modules()):
        for param_name, p in list(module.named_parameters(recurse=False)):
            placement = [Shard(1)] if p.dim() > 1 else [Replicate()]
            placements[f"{module_name}.{param_name}".lstrip(".")] = placement
            setattr(module, param_name, nn.Parameter(distribute_tensor(p.detach(), mesh, placement)))
    opt = make(list(sharded.parameters()))
    shards = dict(sharded.named_parameters())
    for step in range(STEPS):
        x, y = batch(step, None, world)
        model.zero_grad(set_to_none=True)
        nn.functional.mse_loss(model(x), y).backward()
        for n, p in model.named_parameters():
            shards[n].grad = distribute_tensor(p.grad, mesh, placements[n])
        opt.step()
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(shards[n].full_tensor())
    result = {"got": collect(sharded, opt, distributed=True),
              "param_placements": {n: str(tuple(p.placements)) for n, p in sharded.named_parameters()}}
    if rank == 0:
        result["expected"] = baseline(make, range(STEPS), world)
    return result


def run_dcp(name: str, make: Callable, rank: int, world: int, ckpt_root: Path) -> dict[str, Any]:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (world,))
    path = ckpt_root / "".join(c if c.isalnum() else "_" for c in name)
    model = shard(make_model(0), mesh)
    opt = make(list(model.parameters()))
    train(model, opt, range(DCP_BEFORE), rank, world)
    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(path))
    del msd, osd
    train(model, opt, range(DCP_BEFORE, DCP_BEFORE + DCP_AFTER), rank, world)
    uninterrupted = collect(model, opt, distributed=True)

    fresh = shard(make_model(1), mesh)  # other weights: the load must replace them
    fresh_opt = make(list(fresh.parameters()))
    msd, osd = get_state_dict(fresh, fresh_opt)
    loaded = {"model": msd, "optim": osd}
    dcp.load(loaded, checkpoint_id=str(path))
    set_state_dict(fresh, fresh_opt, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"])
    train(fresh, fresh_opt, range(DCP_BEFORE, DCP_BEFORE + DCP_AFTER), rank, world)
    return {"expected": uninterrupted, "got": collect(fresh, fresh_opt, distributed=True)}


def _coded_keys(opt: torch.optim.Optimizer, p: Any) -> dict[str, bool]:
    """The 8-bit moments (name -> signed map) of `p`'s state."""
    state = opt.state.get(p, {})
    return {k: signed for k, signed in type(opt)._buffer_maps.items()
            if signed is not None and getattr(state.get(k), "dtype", None) is torch.uint8}


def _round_through_shards(opt: torch.optim.Optimizer, world: int) -> None:
    """The emulation's float32 moments, rounded through the codes each rank would keep: FSDP2's
    shards are torch.chunk's row ranges, and each is coded on its own."""
    from holocron_optim._library import ops

    for group in opt.param_groups:
        for p in group["params"]:
            state = opt.state.get(p, {})
            for key, signed in type(opt)._buffer_maps.items():
                if signed is None or key not in state:
                    continue
                for chunk in torch.chunk(state[key], world, dim=0):
                    flat = chunk.reshape(-1)
                    codes, absmax = ops.quantize_blockwise(flat, signed)
                    chunk.copy_(ops.dequantize_blockwise(codes, absmax, signed).view_as(chunk))


def run_blockwise(name: str, make: Callable, rank: int, world: int) -> dict[str, Any]:
    """FSDP2 with 8-bit state: the parameters and the decoded moments, against one process with
    float32 state rounded through each rank's codes after every step (what the codes must
    hold), and where the codes and their scales lie."""
    from holocron_optim._base import ABSMAX_SUFFIX, blockwise_values_of
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (world,))
    model = shard(make_model(0), mesh)
    opt = make(list(model.parameters()))
    train(model, opt, range(STEPS), rank, world)
    got = {"params": {n: _full(p) for n, p in model.named_parameters()}, "moments": {}, "layout": {}}
    for n, p in model.named_parameters():
        for key, signed in (_coded_keys(opt, p).items() if not STANDIN else ()):
            state = opt.state[p]
            codes, absmax = state[key], state[key + ABSMAX_SUFFIX]
            got["moments"][f"{n}/{key}"] = _full(blockwise_values_of(codes, absmax, signed, p))
            got["layout"][f"{n}/{key}"] = {
                "codes": (str(tuple(codes.placements)), tuple(codes.to_local().shape)),
                "param": (str(tuple(p.placements)), tuple(p.to_local().shape)),
                "absmax": (tuple(absmax.shape), str(tuple(absmax.placements)), tuple(absmax.to_local().shape)),
            }
    result = {"got": got}
    if rank == 0:
        model = make_model(0)
        emulation = make(list(model.parameters()), "float32") if not STANDIN else make(list(model.parameters()))
        expected: dict[str, Any] = {"params": {}, "moments": {}}
        for step in range(STEPS):
            train(model, emulation, range(step, step + 1), None, world)
            if not STANDIN:
                _round_through_shards(emulation, world)
        expected["params"] = {n: _full(p) for n, p in model.named_parameters()}
        for n, p in model.named_parameters():
            for key in got["moments"]:
                if key.startswith(n + "/"):
                    expected["moments"][key] = _full(emulation.state[p][key.split("/", 1)[1]]).float()
        result["expected"] = expected
    return result


# -------------------------------------------------------------------- driver

def scenario_cases(scenario: str) -> list[tuple[str, Callable[..., dict[str, Any]]]]:
    factories = _case_factories()
    if scenario == "fsdp":
        return [(n, lambda r, w, n=n: run_fsdp(n, factories[n], r, w)) for n in CASES]
    if scenario == "hsdp":
        return [
            (f"{shape[0]}x{shape[1]}-{n}", lambda r, w, n=n, shape=shape: run_fsdp(n, factories[n], r, w, shape))
            for shape in HSDP_MESHES
            for n in HSDP_CASES
        ]
    if scenario == "ddp":
        factories.update(_blockwise_factories())
        return [(n, lambda r, w, n=n: run_ddp(n, factories[n], r, w)) for n in (*CASES, *BLOCKWISE_CASES)]
    if scenario == "blockwise":
        blockwise = _blockwise_factories()
        return [(n, lambda r, w, n=n: run_blockwise(n, blockwise[n], r, w)) for n in BLOCKWISE_CASES]
    if scenario == "tp":
        return [(n, lambda r, w, n=n: run_tp(n, factories[n], r, w)) for n in TP_CASES]
    if scenario == "compiled":
        return [(n, lambda r, w, n=n: run_fsdp(n, factories[n], r, w, compiled=True)) for n in COMPILED_CASES]
    raise KeyError(scenario)


def main() -> int:
    global DTYPE
    started = time.perf_counter()
    torch.set_num_threads(1)  # 2 ranks on a small machine (the test also sets OMP_NUM_THREADS=1)
    if not STANDIN:
        import holocron_optim._base

        holocron_optim._base.BLOCKWISE_MIN_NUMEL = 1  # BLOCKWISE_CASES
    rank, world = int(sys.argv[1]), int(sys.argv[2])
    store_file, out_dir = sys.argv[3], Path(sys.argv[4])
    scenarios = sys.argv[5].split(",")

    def save(name: str, value: Any) -> None:
        """One file per case: what finished survives a kill."""
        path = out_dir / f"rank{rank}" / f"{name}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(value, path.with_suffix(".tmp"))
        os.replace(path.with_suffix(".tmp"), path)

    save("_meta", {"standin": STANDIN, "torch": torch.__version__})
    store = dist.FileStore(store_file, world)
    store.set_timeout(timedelta(seconds=2 * PG_TIMEOUT_S + 10))

    def start_group(generation: int) -> None:
        dist.init_process_group("gloo", store=dist.PrefixStore(f"pg{generation}", store), rank=rank,
                                world_size=world, timeout=timedelta(seconds=PG_TIMEOUT_S))

    generation = 0
    start_group(generation)
    print(f"rank {rank}: process group up after {time.perf_counter() - started:.2f} s", flush=True)
    aborted = None
    for scenario in scenarios:
        if scenario == "dcp":
            factories = {**_case_factories(), **_blockwise_factories()}
            cases = [(n, lambda r, w, n=n: run_dcp(n, factories[n], r, w, out_dir / "dcp"))
                     for n in (*CASES, *BLOCKWISE_CASES)]
        else:
            cases = scenario_cases(scenario)
        for index, (case, run) in enumerate(cases):
            DTYPE = CASE_DTYPES.get(case, torch.float64)
            key = f"{scenario}/{case}"
            if aborted is not None:
                save(f"{scenario}-{index}", {"case": key, "error": f"not run: {aborted}"})
                continue
            case_started = time.perf_counter()
            try:
                result = run(rank, world)
                status = "ok"
            except Exception as error:
                result = {"error": traceback.format_exc()}
                lines = str(error).strip().splitlines()
                status = f"failed: {type(error).__name__}: {lines[0] if lines else ''}"
            result["case"] = key
            # Exchanged through the store, not a collective. Ranks that ended
            # differently (one raised, the other timed out waiting for it in a
            # collective) no longer pair their collectives up: the process
            # group is started afresh for the next case.
            store.set(f"{key}/{rank}", status)
            statuses = [store.get(f"{key}/{r}").decode() for r in range(world)]
            save(f"{scenario}-{index}", result)
            if len(set(statuses)) > 1:
                print(f"rank {rank}: the ranks ended {key} differently: restarting the process group", flush=True)
                try:
                    dist.destroy_process_group()
                    if generation == MAX_RESTARTS:
                        raise RuntimeError(f"the process group was already restarted {MAX_RESTARTS} times")
                    generation += 1
                    start_group(generation)
                except Exception:
                    aborted = (f"the ranks ended {key} differently ({'; '.join(statuses)}), "
                               f"and the process group was not restarted:\n{traceback.format_exc()}")
            print(f"rank {rank}: {key}: {status} ({time.perf_counter() - case_started:.2f} s)", flush=True)
    if dist.is_initialized():
        if aborted is None:
            dist.barrier()
        dist.destroy_process_group()
    print(f"rank {rank}: done after {time.perf_counter() - started:.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # everything is saved: skip the interpreter's slow teardown
