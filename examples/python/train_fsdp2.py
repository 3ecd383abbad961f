"""LAMB under FSDP2 on 2 CPU processes (gloo), with a torch.distributed.checkpoint
save and an exact resume.

    torchrun --standalone --nproc_per_node 2 examples/python/train_fsdp2.py CHECKPOINT_DIR

Each rank holds a shard of every parameter and of its optimizer state; the
step updates the shards in place and all-reduces the few per-tensor sums LAMB
needs (its norms), once per parameter group, so the result is that of LAMB on
the whole tensors.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from holocron_optim import LAMB

STEPS, RESUME_AT = 8, 4


def make_model(world_size: int) -> nn.Module:
    torch.manual_seed(0)  # the same initial weights on every rank
    # [fsdp2]
    model = nn.Sequential(nn.Linear(16, 33), nn.GELU(), nn.Linear(33, 1))
    mesh = init_device_mesh("cpu", (world_size,))
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = LAMB(model.parameters(), lr=1e-2, weight_decay=0.01)  # state sharded like the parameters
    # [fsdp2]
    return model, opt


def batch(step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 * step + rank)
    x = torch.randn(8, 16, generator=gen)
    return x, x.sum(dim=1, keepdim=True).sin()


def train(model: nn.Module, opt: LAMB, steps: range, rank: int) -> None:
    for step in steps:
        x, y = batch(step, rank)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def full_weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.full_tensor() for p in model.parameters()]


def main() -> None:
    checkpoint_dir = sys.argv[1]
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)

    model, opt = make_model(world_size)
    train(model, opt, range(RESUME_AT), rank)
    # [checkpoint-dcp]
    model_state, optim_state = get_state_dict(model, opt)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=checkpoint_dir)
    # [checkpoint-dcp]
    train(model, opt, range(RESUME_AT, STEPS), rank)
    uninterrupted = full_weights(model)

    model, opt = make_model(world_size)
    # [resume-dcp]
    model_state, optim_state = get_state_dict(model, opt)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=checkpoint_dir)
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    # [resume-dcp]
    train(model, opt, range(RESUME_AT, STEPS), rank)
    resumed = full_weights(model)

    if not all(torch.equal(a, b) for a, b in zip(uninterrupted, resumed)):
        raise SystemExit(f"rank {rank}: the resumed run differs from the uninterrupted one")
    if rank == 0:
        print(f"{world_size} ranks: the resumed run equals the uninterrupted one bit for bit")
    dist.destroy_process_group()


def exit_without_teardown() -> None:
    """Leave the process without the interpreter's teardown.

    With gloo, DTensor's sharding caches keep the process group alive until the
    interpreter shuts down, and a gloo worker thread may still be releasing the
    tensors of a finished collective then; taking the GIL at that point aborts
    the process ("terminate called without an active exception", about 1 run in
    7 with torch 2.13, also with torch.optim.AdamW; pytorch/pytorch#179291).
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
    exit_without_teardown()
