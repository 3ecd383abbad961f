"""DeepSpeed ZeRO stages 1 and 2 (with or without `offload_optimizer`): layer-wise
algorithms on DeepSpeed's flat partitions.

DeepSpeed hands the client optimizer one flat float32 tensor per parameter group
and rank: this rank's slice of the concatenation of the group's model tensors.
LARS, LAMB, RaLars, TAdam, AdamP and Scout reduce whole tensors (norms,
distances, cosines); on a flat partition they would reduce across layers, and
over one rank's slice only. After `zero_aware(engine)` each of their steps
sees the partition as one piece per model tensor and all-reduces the pieces'
sums over the data-parallel group, so the numbers are those of plain
data-parallel training.

    engine, *_ = deepspeed.initialize(model=model, optimizer=LAMB(model.parameters()), config=config)
    holocron_optim.deepspeed.zero_aware(engine)

The layout is read from DeepSpeed's ZeRO optimizer (`DeepSpeedZeroOptimizer`):
`round_robin_bit16_offsets` and `round_robin_bit16_meta` (where each tensor
starts in the group's flat buffer, padding included), `partition_size` and the
rank in `real_dp_process_group`. Those are DeepSpeed internals: the versions
tested are `TESTED_VERSIONS`; another version is used when it has them (with a
warning), and refused with the missing names when it does not.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import torch

from . import _distributed as distributed
from .wrapper import Lookahead

TESTED_VERSIONS = ("0.19.8",)

# What the layout is read from, on DeepSpeed's ZeRO 1/2 optimizer.
_REQUIRED = ("optimizer", "single_partition_of_fp32_groups", "round_robin_bit16_offsets",
             "round_robin_bit16_meta", "partition_size", "real_dp_process_group")
# And with a Lookahead or Scout client, what its per-group step uses.
_REQUIRED_FOR_WRAPPERS = ("_optimizer_step", "_lazy_init_hp_params_optimizer_state", "parallel_partitioned_bit16_groups")


def zero_aware(engine: Any) -> Any:
    """Makes the client optimizer of a DeepSpeed engine (ZeRO stage 1 or 2) step
    its flat partitions tensor by tensor; returns the engine.

    Call it once, after `deepspeed.initialize` and before the first step. The
    optimizer's state then keeps, per flat partition, `local_lr` (LAMB, RaLars)
    and `W_t` (TAdam) as one element per model tensor of the group; the
    element-wise buffers are shaped like the partition, as DeepSpeed expects.
    """
    import deepspeed  # the caller has it: it made the engine

    zero = getattr(engine, "optimizer", None)
    stage = engine.zero_optimization_stage() if hasattr(engine, "zero_optimization_stage") else None
    if stage not in (1, 2):
        raise ValueError(
            f"zero_aware: the engine runs ZeRO stage {stage}; only stages 1 and 2 hand the optimizer flat "
            "partitions that this reads (stage 3 is not supported)"
        )
    missing = [name for name in _REQUIRED if not hasattr(zero, name)]
    if missing:
        raise RuntimeError(
            f"zero_aware: DeepSpeed {deepspeed.__version__}'s ZeRO optimizer ({type(zero).__name__}) lacks "
            f"{', '.join(missing)}, which this reads its partition layout from; tested with DeepSpeed "
            f"{', '.join(TESTED_VERSIONS)}"
        )
    if deepspeed.__version__ not in TESTED_VERSIONS:
        warnings.warn(
            f"zero_aware: tested with DeepSpeed {', '.join(TESTED_VERSIONS)}, not {deepspeed.__version__}",
            stacklevel=2,
        )
    client = zero.optimizer
    partitions = zero.single_partition_of_fp32_groups
    if len(client.param_groups) != len(partitions):
        raise RuntimeError(
            f"zero_aware: the client optimizer has {len(client.param_groups)} parameter groups and DeepSpeed "
            f"{len(partitions)} flat partitions"
        )
    for group, flat in zip(client.param_groups, partitions):
        if len(group["params"]) != 1 or group["params"][0] is not flat:
            raise RuntimeError("zero_aware: a parameter group of the client optimizer is not DeepSpeed's flat partition")
    layouts = [_layout(zero, index) for index in range(len(partitions))]
    if isinstance(client, Lookahead):
        if getattr(zero, "torch_autocast_gradscaler", None) or getattr(zero, "zenflow", False):
            raise NotImplementedError("zero_aware: Lookahead or Scout with DeepSpeed's torch_autocast or ZenFlow")
        missing = [name for name in _REQUIRED_FOR_WRAPPERS if not hasattr(zero, name)]
        if missing:
            raise RuntimeError(
                f"zero_aware: DeepSpeed {deepspeed.__version__}'s ZeRO optimizer lacks {', '.join(missing)}, "
                "which a wrapper's per-group step uses"
            )
    for flat, layout in zip(partitions, layouts):
        setattr(flat, distributed.FLAT_LAYOUT, layout)
    distributed.flat_layouts_exist = True
    if isinstance(client, Lookahead):
        client._retake_from_params()  # DeepSpeed replaced the model's tensors by the partitions
        zero._optimizer_step = functools.partial(_step_group_of_wrapper, zero, client)
    return engine


def _step_group_of_wrapper(zero: Any, client: Lookahead, group_index: int) -> None:
    """DeepSpeed's `_optimizer_step` for Lookahead and Scout clients.

    DeepSpeed steps its client one parameter group at a time (it makes each
    group's gradient partition just before), while a wrapper counts one step
    and syncs once per training step: the innermost optimizer steps the group,
    and after the last group the wrappers, innermost first, advance over all
    groups (the order of a nested wrapper's own step)."""
    import deepspeed.comm as dist

    wrappers = []
    optimizer: Any = client
    while isinstance(optimizer, Lookahead):
        wrappers.append(optimizer)
        optimizer = optimizer.base_optimizer
    groups = optimizer.param_groups
    optimizer.param_groups = [groups[group_index]]
    try:
        optimizer.step()
    finally:
        optimizer.param_groups = groups
    if group_index == len(groups) - 1:
        with torch.no_grad():
            for wrapper in reversed(wrappers):
                wrapper._advance(None)
                wrapper._sync_state_entries()
            if any(w.fast_steps % int(w.defaults["sync_period"]) == 0 for w in wrappers):
                # DeepSpeed copied the earlier groups' partitions to the model's
                # (bit16) weights right after stepping them, before this sync.
                for index in range(group_index):
                    rank = dist.get_rank(group=zero.real_dp_process_group[index])
                    zero.parallel_partitioned_bit16_groups[index][rank].data.copy_(
                        zero.single_partition_of_fp32_groups[index].data)
    zero._lazy_init_hp_params_optimizer_state()


def _layout(zero: Any, index: int) -> distributed.FlatLayout:
    """Where each model tensor of group `index` lies in this rank's partition."""
    import deepspeed.comm as dist

    flat = zero.single_partition_of_fp32_groups[index]
    group = zero.real_dp_process_group[index]
    size = int(zero.partition_size[index])
    if flat.dim() != 1 or flat.numel() != size:
        raise RuntimeError(
            f"zero_aware: group {index}'s partition has shape {tuple(flat.shape)}, not the ({size},) DeepSpeed reports"
        )
    start = size * dist.get_rank(group=group)
    end = start + size
    starts, lengths, numels, firsts, channels = [], [], [], [], []
    for offset, meta in zip(zero.round_robin_bit16_offsets[index], zero.round_robin_bit16_meta[index], strict=True):
        numel = meta.numel()
        low, high = max(offset, start), min(offset + numel, end)
        starts.append(low - start if high > low else 0)
        lengths.append(max(high - low, 0))
        numels.append(numel)
        firsts.append(low - offset if high > low else 0)
        channels.append(meta.size(0) if meta.dim() > 1 else 0)
    name = getattr(torch.distributed.group.WORLD if group is None else group, "group_name", None)
    if name is None:
        raise RuntimeError(f"zero_aware: group {index}'s data-parallel process group has no name")
    return distributed.FlatLayout(tuple(starts), tuple(lengths), tuple(numels), name, tuple(firsts), tuple(channels))
