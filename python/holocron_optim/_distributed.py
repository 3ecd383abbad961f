"""DTensor parameters (FSDP2's `fully_shard`, tensor parallelism): the ops run on
each rank's local shards, and the whole-tensor sums of a group (norms, TAdam's
distance, AdamP's cosine, Scout's coherence, the cautious mask's count) are all-reduced inside the op, in
one collective per step for all tensors of a group laid out alike (FSDP2's
case; tensors sharded over other mesh dimensions are updated by a call of
their own), over the process group of each mesh dimension that shards them.

Flat partitions (DeepSpeed ZeRO 1/2, see holocron_optim.deepspeed): a 1-D
tensor that holds, on each rank, a slice of the concatenation of a group's
model tensors carries a `FlatLayout`; the ops then see one piece of it per
model tensor (empty where this rank holds none of that tensor, so that every
rank's sums line up), with the whole tensors' sizes, and the sums are
all-reduced over the data-parallel group. Element-wise ops (no whole-tensor
sums) take the partition whole."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # a torch built without distributed support
    DTensor = None
try:
    from torch.distributed.tensor.placement_types import _StridedShard
except ImportError:  # torch without strided shards (or without distributed support)
    class _StridedShard:  # type: ignore[no-redef]
        pass


class FlatLayout(NamedTuple):
    """Where each model tensor of a flat partition lies in it."""

    starts: tuple[int, ...]  # in the partition, one per model tensor of the group
    lengths: tuple[int, ...]  # 0 for a tensor of which this rank holds nothing
    numels: tuple[int, ...]  # the whole model tensors'
    group_name: str  # the data-parallel process group the partitions are spread over
    # Where each piece starts in its model tensor's flattening, and that tensor's output channels
    # (its size(0), 0 where it has one dimension); empty: not known (AdamP's channel_projection
    # refuses the partition).
    firsts: tuple[int, ...] = ()
    channels: tuple[int, ...] = ()


FLAT_LAYOUT = "_holocron_optim_flat_layout"
# Set once a flat layout exists in the process: until then a step pays one
# global read for them, not a look per parameter.
flat_layouts_exist = False

# Keyword arguments holding one value per tensor that is not shaped like it
# (LAMB's and RaLars' trust ratios, TAdam's W_t): a flat partition's value
# holds one element per model tensor.
_PER_TENSOR_SCALARS = frozenset({"local_lrs", "W_ts"})


def flat_layout(t: Any) -> FlatLayout | None:
    return getattr(t, FLAT_LAYOUT, None) if flat_layouts_exist else None


def is_dtensor(t: Any) -> bool:
    return DTensor is not None and isinstance(t, DTensor)


def any_dtensor(tensors: list[Any]) -> bool:
    """Whether a list holds a DTensor. By the set of its types: a scan in C, where
    a call of is_dtensor per tensor costs a step about 0.3 us per parameter. None in a
    BorrowedList, made of none and checked this step to hold the same tensors (a type
    exchanged by swap_tensors goes with its tensor), where the scan would cost 0.1 ms
    over 3000 parameters, several times a step."""
    return (DTensor is not None and type(tensors) is not BorrowedList
            and any(issubclass(kind, DTensor) for kind in set(map(type, tensors))))


def local(t: Any) -> Any:
    # `_local_tensor` shares the DTensor's storage, so the ops' in-place
    # writes land in it; to_local() would add an autograd node per tensor.
    return t._local_tensor if is_dtensor(t) else t


def shards(placement: Any) -> bool:
    """Whether a placement splits the tensor over its mesh dimension: Shard, and _StridedShard
    (FSDP2's placement over tensor parallelism's, which is no Shard, and whose is_shard() is
    False in torch 2.13)."""
    return placement.is_shard() or isinstance(placement, _StridedShard)


def shard_groups(t: Any) -> tuple[str, ...]:
    """Names of the process groups across which `t`'s elements are spread (none for a plain tensor)."""
    if not is_dtensor(t):
        return ()
    mesh, placements = t.device_mesh, tuple(t.placements)
    # Kept on the mesh object itself: DeviceMesh compares equal across process
    # groups, so a cache keyed on it could hand out another mesh's groups.
    cache = mesh.__dict__.setdefault("_holocron_optim_shard_groups", {})
    groups = cache.get(placements)
    if groups is None:
        # A replicated mesh dimension holds whole copies: summing over it would count them twice.
        groups = cache[placements] = tuple(
            mesh.get_group(dim).group_name for dim, placement in enumerate(placements) if shards(placement)
        )
    return groups


def is_split(params: list[Any]) -> bool:
    """True when a group's DTensors are laid out differently (then updated by several calls)."""
    return any_dtensor(params) and len({shard_groups(p) for p in params}) > 1


def grad_like(g: Any, p: Any) -> Any:
    # FSDP2 gives gradients the parameter's placements; a tensor-parallel
    # gradient may still be Partial.
    if is_dtensor(g) and is_dtensor(p) and (g.placements != p.placements or g.device_mesh != p.device_mesh):
        return g.redistribute(p.device_mesh, p.placements)
    return g


def _as_local(value: Any) -> Any:
    if isinstance(value, list) and any_dtensor(value):
        return [local(t) for t in value]
    return value


class PerParameter(list):
    """A keyword's list whose entries belong to the parameters `owners` (several, one or none
    each, such as 8-bit state's scales): `call` hands each layout's call its parameters' entries."""

    def __init__(self, values: list[Any], owners: list[int]) -> None:
        super().__init__(values)
        self.owners = owners


class PinnedList(list):
    """A group's state list whose tensors are also held, from `at` on, by `pins` (a
    torch.classes.holocron.TensorPins, FusedStep._pin): `call` hands an op that takes
    `pinned_state` the pins instead of the list, which then converts no tensor from Python."""

    def __init__(self, values: list[Any], pins: Any, at: int, as_param: bool = False) -> None:
        super().__init__(values)
        self.pins = pins
        self.at = at
        # Whether its group keeps state of its parameters' dtypes (state_precision "param"), which
        # the op is then asked to check (`state_as_param`): the step walks no parameter's dtype.
        self.as_param = as_param


# Per operator: whether its schema takes `pinned_state` (HOLOCRON_PINNED in src/ops.h).
_TAKES_PINS: dict[Any, bool] = {}


def _takes_pins(op: Callable[..., Any]) -> bool:
    """Whether `op`'s schema takes `pinned_state` and `state_as_param` (HOLOCRON_PINNED)."""
    takes = _TAKES_PINS.get(op)
    if takes is None:
        schema = getattr(getattr(op, "default", op), "_schema", None)
        takes = _TAKES_PINS[op] = schema is not None and any(a.name == "pinned_state" for a in schema.arguments)
    return takes


class BorrowedList(list):
    """A group's parameters, also borrowed by `refs` (a torch.classes.holocron.BorrowedParams,
    FusedStep._params_of), checked this step to be these very tensors: `call` hands an op that
    takes `param_refs` the refs and an empty list, which then converts no parameter from Python."""

    def __init__(self, values: list[Any], refs: Any) -> None:
        super().__init__(values)
        self.refs = refs


def _traced() -> bool:
    """Whether an op called now is traced (torch.compile, a dispatch mode such as
    FakeTensorMode, make_fx or functionalization, a torch function mode): then it is handed
    lists, not pins or borrowed parameters, whose tensors are in no alias annotation."""
    return (torch.compiler.is_compiling() or bool(torch._C._len_torch_dispatch_stack())
            or torch._C._is_torch_function_mode_enabled())


def _with_pins(op: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """`kwargs` with each PinnedList of one pins object given as an empty list, named in
    `pinned_lists`, where `op` takes them, and `state_as_param` where their group keeps state of
    its parameters' dtypes (PinnedList.as_param). The pins are for eager calls only: the tensors written through the pins
    are not in the op's alias annotations, so a traced call (torch.compile, a dispatch mode such
    as FakeTensorMode, make_fx or functionalization, a torch function mode) is given the lists."""
    pinned = [name for name, value in kwargs.items() if type(value) is PinnedList]
    if not pinned or not _takes_pins(op):
        return kwargs
    out = {**kwargs, "state_as_param": True} if any(kwargs[name].as_param for name in pinned) else kwargs
    if _traced():
        return out
    out = dict(out)
    pins = kwargs[pinned[0]].pins
    pinned = [name for name in pinned if kwargs[name].pins is pins]
    out.update(dict.fromkeys(pinned, []))
    out["pinned_state"] = pins
    out["pinned_lists"] = pinned
    out["pinned_at"] = [kwargs[name].at for name in pinned]
    return out


def _pick(value: Any, indices: list[int], count: int) -> Any:
    if isinstance(value, PerParameter):
        wanted = set(indices)
        return [v for v, owner in zip(value, value.owners) if owner in wanted]
    if isinstance(value, list) and len(value) == count:
        return [value[i] for i in indices]
    return value


def call(op: Callable[..., Any], params: list[Any], grads: list[Any], *rest: Any,
         sums: bool = False, channels: bool = False, **kwargs: Any) -> Any:
    """`op(params, grads, *rest, **kwargs)` on local shards when the parameters are DTensors.

    Lists of DTensors, positional or keyword, are passed as their local shards.
    Lists as long as `params` (positional or keyword) are per-parameter lists
    (pass other sequences as tuples). With `sums`
    (the op reduces whole tensors), each parameter's whole element count and
    its shard groups are passed; parameters sharded differently are updated
    by separate calls, and a returned per-tensor tensor is put back in order.
    With `channels` too (the op sums each output channel on its own), where
    each shard lies among its whole tensor's channels (`channel_layouts`).
    """
    if sums and flat_layouts_exist and any(map(flat_layout, params)):
        return _call_on_pieces(op, params, grads, *rest, sums=sums, channels=channels, **kwargs)
    if not any_dtensor(params):
        if type(params) is BorrowedList and _takes_pins(op) and not _traced():
            return op([], grads, *rest, **_with_pins(op, kwargs), param_refs=params.refs)
        return op(params, grads, *rest, **_with_pins(op, kwargs))
    count = len(params)
    grads = [grad_like(g, p) for g, p in zip(grads, params)]
    layouts: dict[tuple[str, ...], list[int]] = {}
    for index, p in enumerate(params):
        layouts.setdefault(shard_groups(p), []).append(index)
    # Before the first call: a layout refused must leave every parameter as it was.
    channel_layouts = [_channel_layout(p) for p in params] if sums and channels else []
    results = []
    for groups, indices in layouts.items():
        split = len(layouts) > 1
        picked = [_pick(v, indices, count) for v in (params, grads, *rest)] if split else [params, grads, *rest]
        extra = {k: _pick(v, indices, count) for k, v in kwargs.items()} if split else dict(kwargs)
        if sums:
            extra["numels"] = [p.numel() for p in picked[0]]
            extra["shard_groups"] = list(groups)
            if channels:
                extra["channel_layouts"] = [n for i in (indices if split else range(count)) for n in channel_layouts[i]]
        results.append((indices, op(*[_as_local(v) for v in picked], **{k: _as_local(v) for k, v in extra.items()})))
    if len(results) == 1:
        return results[0][1]
    if not isinstance(results[0][1], torch.Tensor):
        return None
    merged = torch.empty(count, dtype=results[0][1].dtype, device=results[0][1].device)
    for indices, values in results:
        merged[indices] = values
    return merged


def _channel_layout(p: Any) -> tuple[int, int, int]:
    """Where `p`'s local shard lies among its output channels (Sharding::ChannelLayout):
    the whole tensor's channels, and (first, width) such that the local element k is in
    channel (first + k) // width. A DTensor's shard is a box of the whole tensor (FSDP2's
    rows, tensor parallelism's columns): its local rows are channels offset[0], ..."""
    if p.dim() < 2 or p.numel() == 0:
        return (0, 0, 1)
    shard = local(p)
    if not is_dtensor(p):
        return (p.size(0), 0, p.numel() // p.size(0))
    mesh, placements = p.device_mesh, tuple(p.placements)
    cache = mesh.__dict__.setdefault("_holocron_optim_row_offsets", {})
    key = (tuple(p.shape), placements)
    found = cache.get(key)
    if found is None:
        if any(isinstance(placement, _StridedShard) for placement in placements):
            raise NotImplementedError(
                f"AdamP's channel_projection on a DTensor sharded as {placements}: a strided shard's rows are "
                "not a range of the whole tensor's channels"
            )
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        local_shape, offset = compute_local_shape_and_global_offset(p.shape, mesh, placements)
        found = cache[key] = (tuple(local_shape), int(offset[0]))
    local_shape, first_row = found
    if tuple(shard.shape) != local_shape:
        raise NotImplementedError(
            f"AdamP's channel_projection on a DTensor whose local shard has shape {tuple(shard.shape)}, not the "
            f"{local_shape} torch's chunking gives its placements {placements}: where its rows lie is unknown"
        )
    width = shard.numel() // shard.size(0) if shard.numel() else 1
    return (p.size(0), first_row * width, width)


def _call_on_pieces(op: Callable[..., Any], params: list[Any], *rest: Any, sums: bool = False,
                    channels: bool = False, **kwargs: Any) -> Any:
    """`call` on flat partitions: every per-parameter list is handed to the op as
    one entry per model tensor (a piece of a tensor shaped like the partition, an
    element of a per-tensor scalar, the same value otherwise); a returned
    per-tensor tensor comes back with NaN for each flat partition (its values are
    in the per-tensor targets)."""
    layouts = [flat_layout(p) for p in params]
    if None in layouts:
        raise NotImplementedError(
            "flat partitions (DeepSpeed ZeRO) and other parameters in one parameter group are not supported together"
        )
    if len({layout.group_name for layout in layouts}) > 1:
        raise NotImplementedError("flat partitions spread over different process groups in one parameter group")
    if "step_tensors" in kwargs:
        raise NotImplementedError("a compiled step (torch.compile) of flat partitions (DeepSpeed ZeRO)")
    count = len(params)

    def expand(name: str, value: Any) -> Any:
        if not isinstance(value, list) or len(value) != count:
            return value
        out: list[Any] = []
        for p, layout, v in zip(params, layouts, value):
            if name in _PER_TENSOR_SCALARS:
                if not isinstance(v, torch.Tensor) or v.numel() != len(layout.starts):
                    raise RuntimeError(
                        f"a flat partition's '{name}' must hold one element per model tensor "
                        f"({len(layout.starts)}), got {tuple(getattr(v, 'shape', ()))}"
                    )
                out.extend(_pieces(v, layout, per_tensor=True))
            elif isinstance(v, torch.Tensor) and v.shape == p.shape:
                out.extend(_pieces(v, layout, per_tensor=False))
            else:
                out.extend(v for _ in layout.starts)
        return out

    extra = {name: expand(name, value) for name, value in kwargs.items()}
    # The pinned lists' dtype rule goes with their pieces (a step that pinned them walks no
    # parameter's dtype: FusedStep._pinned_still).
    if any(type(v) is PinnedList and v.as_param for v in kwargs.values()) and _takes_pins(op):
        extra["state_as_param"] = True
    if sums:
        extra["numels"] = [n for layout in layouts for n in layout.numels]
        extra["shard_groups"] = [layouts[0].group_name]
        if channels:
            extra["channel_layouts"] = _pieces_channel_layouts(layouts)
    result = op(expand("params", params), *[expand("", v) for v in rest], **extra)
    if not isinstance(result, torch.Tensor):
        return result
    return torch.full((count,), float("nan"), dtype=result.dtype, device=result.device)


def _pieces_channel_layouts(layouts: list[FlatLayout]) -> list[int]:
    if any(len(layout.firsts) != len(layout.starts) or len(layout.channels) != len(layout.starts)
           for layout in layouts):
        raise NotImplementedError(
            "AdamP's channel_projection on a flat partition whose layout does not say where its pieces lie "
            "in their model tensors (FlatLayout's firsts and channels)"
        )
    out: list[int] = []
    for layout in layouts:
        for first, count, numel in zip(layout.firsts, layout.channels, layout.numels):
            out += (count, first, numel // count) if count and numel else (0, 0, 1)
    return out


_PIECES = "_holocron_optim_pieces"


def _pieces(t: torch.Tensor, layout: FlatLayout, per_tensor: bool) -> tuple[torch.Tensor, ...]:
    """Views of `t`, one per model tensor: its pieces, or its elements (`per_tensor`),
    which the op writes in place. Kept on `t` while its storage is the same, since
    making several hundred views each step costs about 1 ms on ResNet-50's 161
    tensors."""
    cached = getattr(t, _PIECES, None)
    if cached is not None and cached[0] is layout and cached[1] == t.data_ptr():
        return cached[2]
    if per_tensor:
        flat = t.view(-1)
        pieces = tuple(flat[k:k + 1] for k in range(len(layout.starts)))
    else:
        pieces = tuple(t.narrow(0, start, length) for start, length in zip(layout.starts, layout.lengths))
    setattr(t, _PIECES, (layout, t.data_ptr(), pieces))
    return pieces


def call_on_locals(op: Callable[..., Any], first: list[Any], *rest: Any, **kwargs: Any) -> Any:
    """`op(first, *rest, **kwargs)` with every list of DTensors replaced by their local shards.

    The other lists hold tensors made like those of `first` (state, statistics):
    with no DTensor in `first`, nothing is scanned further."""
    if kwargs.get("shard_groups") and flat_layouts_exist and any(map(flat_layout, first)):
        return _call_on_pieces(op, first, *rest, **kwargs)
    if not any_dtensor(first):
        return op(first, *rest, **kwargs)
    return op(*[_as_local(v) for v in (first, *rest)], **{k: _as_local(v) for k, v in kwargs.items()})


def common_shard_groups(tensors: list[Any], what: str) -> list[str]:
    """The shard groups shared by all `tensors` (NotImplementedError when they differ)."""
    if flat_layouts_exist and any(map(flat_layout, tensors)):
        layouts = {(layout.group_name,) if layout is not None else () for layout in map(flat_layout, tensors)}
    else:
        layouts = {shard_groups(t) for t in tensors}
    if len(layouts) > 1:
        raise NotImplementedError(
            f"{what}: parameters laid out differently (sharded over different process groups, or DTensors "
            "with plain tensors) are not supported together"
        )
    return list(layouts.pop()) if layouts else []


def wrap_like(local_values: torch.Tensor, p: Any) -> Any:
    """A local shard of `p`'s shape (on this rank) as a DTensor laid out as `p`."""
    return DTensor.from_local(local_values, p.device_mesh, p.placements, run_check=False, shape=p.shape,
                              stride=p.stride())


def scales_layout(p: Any, blocks_of: Callable[[int], int]) -> tuple[tuple[int, ...], tuple[Any, ...]]:
    """The global shape and placements of the 8-bit scales of a DTensor parameter `p`'s moment.

    The codes are sharded as `p`, and their blocks lie inside each rank's local shard (a block
    never spans two ranks' elements), so each rank holds the scales of its own shard's blocks:
    one leading dimension per mesh dimension that shards `p` (of that dimension's size, sharded
    over it; replicated over the others), then the blocks of the largest local shard, which
    smaller shards pad with zeros. torch.distributed.checkpoint then saves and loads every rank's
    scales where they belong. Each leading dimension is followed by dimensions of size 1 that
    count which of `p`'s dimensions it splits (and how, for a strided shard): the shards' blocks
    hold other elements under other placements, so a checkpoint resharded to them would
    otherwise load each rank's scales beside other codes; this way its shape differs and the
    load is refused."""
    from torch.distributed.tensor import Replicate, Shard

    mesh, placements = p.device_mesh, tuple(p.placements)
    cache = mesh.__dict__.setdefault("_holocron_optim_scales_layouts", {})
    key = (tuple(p.shape), placements)
    found = cache.get(key)
    if found is None:
        largest = list(p.shape)
        leading: list[int] = []
        layout: list[Any] = []
        for mesh_dim, placement in enumerate(placements):
            if not shards(placement):
                layout.append(Replicate())
                continue
            dim = placement.dim % max(p.dim(), 1)
            if isinstance(placement, _StridedShard):
                # Its pieces are bounded by the whole dimension only.
                tags = p.dim() * (1 + int(placement.split_factor)) + dim
            else:
                # torch.chunk's first chunk is the largest.
                largest[dim] = -(-largest[dim] // mesh.size(mesh_dim))
                tags = dim
            layout.append(Shard(len(leading)))
            leading += [mesh.size(mesh_dim)] + [1] * tags
        numel = 1
        for size in largest:
            numel *= size
        found = cache[key] = ((*leading, blocks_of(numel)), tuple(layout))
    return found
