"""What the eight optimizers share: a step that checks every parameter of every
group before it writes anything, then makes one C++ call per group."""

from __future__ import annotations

import inspect
import math
import numbers
from collections import defaultdict, deque
from collections.abc import Callable
from itertools import chain, repeat
from operator import attrgetter, is_, itemgetter, setitem
from types import MappingProxyType
from typing import Any, NamedTuple

import torch

from . import _distributed as distributed
from ._library import ops, walks


def as_real(value: Any) -> float | None:
    """`float(value)` for what the ops take as a number: a real number (numpy's included) or a
    one-element real tensor (torch.optim accepts a tensor lr); None for anything else, among them
    what `float()` would take but is no number: a string, a bool, a complex with no imaginary part."""
    if value is None or isinstance(value, (str, bytes, bool)):
        return None
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex() or value.dtype is torch.bool:
            return None
        return float(value.item())
    if getattr(getattr(value, "dtype", None), "kind", "f") not in "iuf" or getattr(value, "ndim", 0) != 0:
        return None  # numpy: bools, complex numbers, arrays of one or more dimensions
    if isinstance(value, numbers.Complex) and not isinstance(value, numbers.Real):
        return None
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return None


def check_finite(name: str, value: Any) -> float:
    """The number `value` is (as_real); ValueError for non-numbers and nan/inf, which the ops'
    range checks would also refuse."""
    number = as_real(value)
    if number is None or not math.isfinite(number):
        raise ValueError(f"Invalid {name} value: {value}")
    return number


def check_state_dict_layout(name: str, state_dict: Any, state_key: str = "state") -> None:
    """ValueError, before anything changes, for what torch.optim's load_state_dict would trip
    over with a KeyError or AttributeError: the top-level mapping, `state`, `param_groups`."""
    if not isinstance(state_dict, dict):
        raise ValueError(f"{name}: a state dict must be a dict, got {type(state_dict).__name__}")
    if not isinstance(state_dict.get(state_key), dict):
        raise ValueError(f"{name}: the state dict's '{state_key}' must be a dict, got {state_dict.get(state_key)!r:.80}")
    groups = state_dict.get("param_groups")
    if not isinstance(groups, list) or not all(
        isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups
    ):
        raise ValueError(f"{name}: the state dict's 'param_groups' must be a list of dicts with a 'params' list")
    for key, value in state_dict[state_key].items():
        if isinstance(key, int) and not isinstance(value, dict):
            raise ValueError(f"{name}: the state of parameter {key} must be a dict, got {type(value).__name__}")


def check_number(optimizer: str, option: str, value: Any) -> None:
    """A group's number as the ops take it (`float(value)`): a real number or a one-element real
    tensor. Others are refused by name, not converted: `float("0.01")` would take a string that
    a scheduler then fails to multiply, and a bool would pass for 1."""
    if isinstance(value, torch.Tensor) and value.numel() != 1:
        # torch.optim's words for lr
        raise ValueError("Tensor lr must be 1-element" if option == "lr" else f"{optimizer}: Tensor {option} must be 1-element")
    if as_real(value) is None:
        raise TypeError(f"{optimizer}: {option} must be a real number, got {value!r:.80}")


def check_betas(betas: Any, count: int, name: str) -> None:
    if not isinstance(betas, (tuple, list)) or len(betas) != count:
        raise ValueError(f"{name} requires {count} beta parameters, got {betas!r}")
    for index, beta in enumerate(betas):
        check_finite(f"beta parameter at index {index}", beta)


def valid_step(value: Any) -> bool:
    """A step counter as the reference or torch.optim stores it: an int, an integral float or a
    one-element tensor, finite and >= 0."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex():
            return False
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and 0 <= value <= MAX_STEP - 1 and float(value).is_integer()


# The largest step counter the ops take (int64), which a counter saved must stay below to be advanced.
MAX_STEP = 2**63 - 1
# After an attempt to let the ops read the gradients found one missing: how many steps gather
# them in Python before the next attempt (FusedStep._step_groups).
_GATHERING_STEPS_AFTER_A_MISS = 16
# The states a stateless group's op is given: one read-only empty mapping for every parameter, so
# that a step allocates no object per parameter (3000 dicts a step ran Python's garbage collector
# about four times a step).
_NO_STATE: Any = MappingProxyType({})


def gather(states: list[dict[str, Any]], key: str) -> list[Any]:
    """`[s[key] for s in states]`; eager, as a loop in C: on thousands of small parameters
    a step's Python time is mostly such loops (torch.compile traces the comprehension)."""
    if torch.compiler.is_compiling():
        return [s[key] for s in states]
    return list(map(itemgetter(key), states))


def state_walks(states: Any) -> Any:
    """The library's walks over state dicts (`_library.walks`) where they can take `states` (a
    list, in an eager step), else None. A step over thousands of small parameters spends about a
    millisecond walking their states in Python, one cache miss after another; these request each
    dict ahead of its turn (src/python_walks.cpp)."""
    if walks is None or type(states) is not list or not states or torch.compiler.is_compiling():
        return None
    return walks


def types_of(values: list[Any]) -> set[type]:
    return set(map(type, values))


def step_count(value: Any) -> int:
    # torch.optim.Adam.__setstate__ turns steps into tensors on load; the reference keeps ints.
    return int(value.item()) if isinstance(value, torch.Tensor) else int(value)


# A group's entries that no check of its options reads (and as long as its parameters).
_NOT_OPTIONS = frozenset({"params", "param_names"})


class _Mutable(Exception):
    """A value that may change without being replaced (`_frozen`)."""


_IMMUTABLE_SCALARS = (bool, int, float, complex, str, bytes, type(None))


def _frozen(value: Any) -> Any:
    """`(type, value)`, with lists and tuples frozen element by element: equal exactly when a
    check of the options would see the same thing. Raises _Mutable for anything else (tensors,
    arrays, objects), which a caller cannot compare with what it held before."""
    kind = type(value)
    if kind in _IMMUTABLE_SCALARS or isinstance(value, torch.dtype) or (
            isinstance(value, numbers.Number) and not isinstance(value, torch.Tensor)):  # numpy's scalars
        return kind, value
    if kind in (tuple, list):
        return kind, tuple(map(_frozen, value))
    raise _Mutable


class Option(NamedTuple):
    """A hyper-parameter of an algorithm, as its constructor takes it (with its default).

    `check(optimizer_name, value, option)` refuses what cannot be a value (ValueError)
    and returns the value to keep; the ops check the ranges every step (one
    check for both fronts). A `setting` is kept as an attribute of the
    optimizer rather than in its groups, as the reference keeps it."""

    name: str
    default: Any
    check: Callable[[str, Any, Option], Any] | None = None
    setting: bool = False
    # The values the ops accept, as an interval ("[0, 1)"; for betas, each
    # coefficient's): stated here for readers and tests (test_registry ties
    # it to what a step refuses); None: not a number.
    range: str | None = None
    # Added after checkpoints were first written: a loaded group without it
    # gets the default (which keeps the numbers it was saved with).
    added_later: bool = False


def flag(name: str, value: Any, option: Option) -> bool:
    """A switch: True or False (or 1 or 0)."""
    if isinstance(value, torch.Tensor) or value not in (True, False):
        raise TypeError(f"{name}: {option.name} must be a bool, got {value!r}")
    return bool(value)


def flag_or_none(name: str, value: Any, option: Option) -> bool:
    """A switch that torch.optim also takes as None (Adam's amsgrad, SGD's nesterov): off."""
    return False if value is None else flag(name, value, option)


# Checks that only refuse (they return what they are given, or its bool): also run on each
# group's value, which the ops would take as it is.
flag.checks_groups = flag_or_none.checks_groups = True  # type: ignore[attr-defined]


def positive_or_none(label: str) -> Callable[[str, Any, Option], Any]:
    """None, or a finite number > 0."""

    def check(name: str, value: Any, option: Option) -> Any:
        if value is None:
            return None
        number = as_real(value)
        if number is None or not math.isfinite(number) or number <= 0:
            raise ValueError(f"{name}: invalid {label} value: {value!r} (expected None or a finite number > 0)")
        return number

    check.checks_groups = True  # type: ignore[attr-defined]
    return check


def finite(label: str, non_negative: bool = False) -> Callable[[str, Any, Option], Any]:
    """A finite number, named `label` in the error (torch.optim's wording)."""

    def check(_: str, value: Any, __: Option) -> Any:
        number = check_finite(label, value)
        if non_negative and number < 0:  # torch.optim refuses it; pylocron's LAMB, RaLars and AdEMAMix do not
            raise ValueError(f"Invalid {label} value: {value}")
        return value

    return check


def learning_rate(_: str, value: Any, __: Option) -> Any:
    if isinstance(value, torch.Tensor) and value.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")  # torch.optim's own words
    check_finite("learning rate", value)
    return value


def betas(count_in_words: str | None = None) -> Callable[[str, Any, Option], Any]:
    """A tuple of as many coefficients as the default's (each finite; the ops check [0, 1)).
    `count_in_words`: the wording of the reference's own message for a wrong count."""

    def check(name: str, value: Any, option: Option) -> Any:
        count = len(option.default)
        if count_in_words and (not isinstance(value, (tuple, list)) or len(value) != count):
            raise ValueError(f"{name} requires {count_in_words} beta parameters, got {value!r}")
        check_betas(value, count, name)
        return value

    return check


# What `state_precision` names: the dtype of a group's per-element state buffers (None: each
# parameter's own). Step counters, trust ratios and TAdam's W_t keep the parameter's dtype.
# "8bit" keeps the moments of tensors of BLOCKWISE_MIN_NUMEL elements or more as 8-bit block-wise
# codes (Buffer.signed), and everything else of the state in float32.
STATE_PRECISIONS: dict[str, torch.dtype | None] = {
    "param": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "8bit": torch.float32}
# The dtypes state may have besides its parameter's (what the ops take).
LEAN_DTYPES = (torch.float32, torch.bfloat16)
# Smaller tensors keep float32 moments under "8bit" (bitsandbytes' rule): their scales would
# cost more than the codes save, and they are often the most sensitive (norms, biases).
BLOCKWISE_MIN_NUMEL = 4096
# Elements per block of codes, each with one float32 scale (`<name>_absmax` in the state).
BLOCKWISE_BLOCK = 256
ABSMAX_SUFFIX = "_absmax"


def state_precision(name: str, value: Any, option: Option) -> str:
    """One of STATE_PRECISIONS' names."""
    if not isinstance(value, str) or value not in STATE_PRECISIONS:
        raise ValueError(f"{name}: state_precision must be one of {', '.join(map(repr, STATE_PRECISIONS))}, "
                         f"got {value!r}")
    return value


def blockwise_codes_of(values: torch.Tensor, signed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """`values` as 8-bit codes (the values' shape, contiguous) and their float32 scales."""
    codes, absmax = ops.quantize_blockwise(values.detach(), signed)
    return codes.contiguous(), absmax


def blockwise_blocks(numel: int) -> int:
    return (numel + BLOCKWISE_BLOCK - 1) // BLOCKWISE_BLOCK


def blockwise_state_of(values: torch.Tensor, signed: bool, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`values` (of `p`'s shape; for a DTensor `p`, laid out as it, or its local shard) as the
    codes and scales of `p`'s 8-bit moment: for a DTensor, each local shard coded on its own
    and the scales laid out by `distributed.scales_layout`."""
    if not distributed.is_dtensor(p):
        return blockwise_codes_of(values, signed)
    codes, absmax = blockwise_codes_of(distributed.local(values), signed)
    shape, layout = distributed.scales_layout(p, blockwise_blocks)
    if absmax.numel() > shape[-1]:
        raise RuntimeError(f"a local shard of {codes.numel()} elements has more blocks than the {shape[-1]} its "
                           f"DTensor's scales hold (placements {tuple(p.placements)})")
    padded = absmax.new_zeros(shape[-1])
    padded[:absmax.numel()] = absmax
    padded = padded.view((1,) * (len(shape) - 1) + (shape[-1],))
    scales = distributed.DTensor.from_local(
        padded, p.device_mesh, layout, run_check=False, shape=torch.Size(shape),
        stride=torch.empty(shape, device="meta").stride())
    return distributed.wrap_like(codes, p), scales


def local_scales(absmax: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """The scales of the local codes `codes` (a view: the ops write them in place)."""
    if not distributed.is_dtensor(absmax):
        return absmax
    return distributed.local(absmax).view(-1)[:blockwise_blocks(distributed.local(codes).numel())]


def blockwise_values_of(codes: torch.Tensor, absmax: torch.Tensor, signed: bool, p: torch.Tensor) -> torch.Tensor:
    """The float32 values of `p`'s moment held as `codes` and `absmax` (blockwise_state_of's)."""
    values = ops.dequantize_blockwise(distributed.local(codes).contiguous(), local_scales(absmax, codes), signed)
    return distributed.wrap_like(values, p) if distributed.is_dtensor(p) else values


def blockwise_scales_problem(p: torch.Tensor, absmax: Any) -> str | None:
    """What `p`'s moment's scales should be, where `absmax` is not that; None where it fits."""
    if distributed.is_dtensor(p):
        shape, layout = distributed.scales_layout(p, blockwise_blocks)
        if (distributed.is_dtensor(absmax) and absmax.dtype == torch.float32 and tuple(absmax.shape) == shape
                and tuple(absmax.placements) == layout and absmax.device_mesh == p.device_mesh
                and distributed.local(absmax).is_contiguous()):
            return None
        return (f"a float32 DTensor of shape {shape} laid out as {layout} on its parameter's mesh (one row of "
                f"{shape[-1]} per local shard, one per block of {BLOCKWISE_BLOCK})")
    blocks = blockwise_blocks(p.numel())
    if (isinstance(absmax, torch.Tensor) and not distributed.is_dtensor(absmax) and absmax.dtype == torch.float32
            and absmax.shape == (blocks,) and absmax.is_contiguous()):
        return None
    return f"a contiguous float32 tensor of {blocks} elements (one per block of {BLOCKWISE_BLOCK})"


def _describe_tensor(value: Any) -> str:
    if distributed.is_dtensor(value):
        return f"DTensor {value.dtype} {tuple(value.shape)} {tuple(value.placements)}"
    return f"{getattr(value, 'dtype', type(value).__name__)} {tuple(getattr(value, 'shape', ()))}"


state_precision.checks_groups = True  # type: ignore[attr-defined]


# The parameter dtypes whose weights `kahan_summation` compensates (others are exact enough).
KAHAN_DTYPES = (torch.bfloat16, torch.float16)


def compensation_list(params: list[Any], comps: list[torch.Tensor | None]) -> list[torch.Tensor]:
    """`comps` as the ops' `kahan_comps` take them: a tensor without elements for each None
    (torch's functionalization of a mutable list of optional tensors fails on None entries)."""
    if None not in comps:
        return comps  # type: ignore[return-value]
    none = torch.empty(0, device=distributed.local(params[0]).device)
    return [none if c is None else c for c in comps]


class Buffer(NamedTuple):
    """A per-element state buffer of an algorithm, shaped like its parameter and typed as the
    group's `state_precision` says."""

    name: str
    # Whether a group's states hold it (amsgrad's running max); None: always.
    exists: Callable[[dict[str, Any]], bool] | None = None
    # Made by the algorithm's own step (LARS' momentum starts as the first
    # direction) rather than as zeros before it.
    made_by_step: bool = False
    # Under state_precision "8bit": kept as codes through the signed map (a first moment, a
    # momentum) or the unsigned one (a second moment, its running max); None: kept in float32
    # (Adan's previous gradient). The op's C++ function states the same per list.
    signed: bool | None = None

    def exists_in(self, group: dict[str, Any]) -> bool:
        return self.exists is None or bool(self.exists(group))


def per_tensor_shape(p: torch.Tensor, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of a value kept per tensor (a trust ratio, TAdam's W_t): `shape`, or
    one element per model tensor for a flat partition (DeepSpeed ZeRO)."""
    layout = distributed.flat_layout(p)
    return shape if layout is None else (len(layout.starts),)


class _RatioTargets(NamedTuple):
    """A group's trust-ratio tensors (`FusedStep._ratio_targets`), valid while its
    parameters, their states and what the states hold as `local_lr` are these."""

    group: dict[str, Any]
    params: list[torch.Tensor]
    states: list[dict[str, Any]]
    targets: list[torch.Tensor]
    held: list[Any]  # what each state held as local_lr when the targets were made
    pins: Any  # torch.classes.holocron.TensorPins of the targets (FusedStep._pin)


@torch.compiler.disable
def run_eagerly(step: Callable[..., Any], *args: Any) -> Any:
    """`step(*args)` inside a compiled function, for a step of DTensor parameters: not traced (its
    shards' process groups, read from their meshes, are no values dynamo can hold), but run
    eagerly there, a graph break (an error under fullgraph=True)."""
    return step(*args)


class _Borrowed(NamedTuple):
    """A group's parameters as an op borrows them (FusedStep._params_of)."""

    group: dict[str, Any]
    refs: Any  # torch.classes.holocron.BorrowedParams
    address: int | None  # its address for holocron_params_are; None where it could not borrow them


class _Pins(NamedTuple):
    """A group's state buffers as last handed to its op, with the C++ references that
    pin them (FusedStep._pin), and its parameters' dtypes then."""

    group: dict[str, Any]
    lists: list[list[Any]]
    pins: Any  # torch.classes.holocron.TensorPins
    dtypes: list[torch.dtype]
    precision: str
    complete: dict[str, list[Any]]  # the lists of the keys that every state held, by key


# The algorithms (holocron_optim.optimizers registers its eight): the state keys of one that another
# never holds tell their checkpoints apart at load (FusedStep._foreign_state_keys).
ALGORITHMS: list[type] = []


class FusedStep:
    """Mixin for torch.optim.Optimizer subclasses.

    Subclasses declare their state: `_state_buffers` (every per-element
    buffer, with the condition under which a group's states hold it),
    `_counts_steps` (a `step` counter per parameter) and `_scalar_state`
    (other entries a state must hold, made by `_init_state`); and
    `_apply(group, params, grads, states)`, which calls the op (with empty
    lists it only validates the group's options: `_validate_options`).
    """

    _state_buffers: tuple[Buffer, ...] = ()
    _counts_steps = True
    _scalar_state: tuple[str, ...] = ()
    _apply: Callable[..., None]

    # The constructor's hyper-parameters, in its order: from them follow
    # `__init__` (its signature, checks, defaults and settings), `_settings`
    # and the options a loaded group must hold.
    _options: tuple[Option, ...] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "_options" in cls.__dict__:
            cls.__init__ = _constructor(cls)  # type: ignore[method-assign]
            cls._settings = tuple(o.name for o in cls._options if o.setting)
            cls._clips_grad_norm = any(o.name == "max_grad_norm" for o in cls._options)
            cls._has_state_precision = any(o.name == "state_precision" for o in cls._options)
            cls._has_kahan_summation = any(o.name == "kahan_summation" for o in cls._options)
        cls._all_buffers = tuple(b.name for b in cls._state_buffers)
        cls._buffer_maps = {b.name: b.signed for b in cls._state_buffers}
        cls._coded_keys = tuple(b.name for b in cls._state_buffers if b.signed is not None)
        cls._required_state_keys = ("step",) * cls._counts_steps + cls._scalar_state
        # A load requires the group options among these (torch.optim's base may add
        # others to `defaults`, such as `differentiable`, which saved groups need not hold).
        cls._constructor_options = tuple(inspect.signature(cls.__init__).parameters)

    @classmethod
    def _own_state_keys(cls) -> frozenset[str]:
        """Every key a state of this class may hold."""
        keys = {"step", "kahan_comp", *cls._all_buffers, *cls._required_state_keys,
                *(key + ABSMAX_SUFFIX for key in cls._coded_keys)}
        if cls._keeps_trust_ratios:
            keys.add("local_lr")
        return frozenset(keys)

    def _foreign_state_keys(self) -> dict[str, str]:
        """The state keys of the other algorithms (ALGORITHMS) that this one never holds, each with
        the algorithms that do: a loaded state holding one is another optimizer's. Keys of no
        algorithm (a wrapper's, a user's) are not foreign."""
        mine = [cls for cls in ALGORITHMS if isinstance(self, cls)]
        own = type(self)._own_state_keys().union(*(cls._own_state_keys() for cls in mine))
        holders: dict[str, list[str]] = {}
        for cls in ALGORITHMS:
            if cls not in mine:
                for key in sorted(cls._own_state_keys() - own):
                    holders.setdefault(key, []).append(cls.__name__)
        return {key: " and ".join(names) for key, names in holders.items()}

    # Whether the class takes `state_precision` (set from `_options`): holocron_optim.timm's
    # classes keep timm's signatures, and their state in the parameters' dtype.
    _has_state_precision = False

    def _precision(self, group: dict[str, Any]) -> str:
        """This group's state_precision, checked ("param" for a class without the option)."""
        if not self._has_state_precision:
            return "param"
        return state_precision(type(self).__name__, group.get("state_precision", "param"), None)  # type: ignore[arg-type]

    def _state_dtype(self, group: dict[str, Any]) -> torch.dtype | None:
        """The dtype of this group's per-element state buffers; None: each parameter's."""
        return STATE_PRECISIONS[self._precision(group)]

    def _zero_buffer(self, group: dict[str, Any], p: torch.Tensor) -> torch.Tensor:
        """A new state buffer of `p` in this group: zeros of `p`'s shape, layout and device, in
        the group's state dtype."""
        return torch.zeros_like(p, dtype=self._state_dtype(group) or p.dtype, memory_format=torch.preserve_format)

    def _make_buffer(self, state: dict[str, Any], name: str, group: dict[str, Any], p: torch.Tensor) -> list[str]:
        """Puts a new buffer `name` of `p` (zeros) into `state`: codes of zeros and their scales
        (`<name>_absmax`) where the group keeps it as 8-bit codes, else `_zero_buffer`; returns
        the keys added."""
        signed = self._coded(group, name, p)
        if signed is None:
            state[name] = self._zero_buffer(group, p)
            return [name]
        zeros = torch.zeros(distributed.local(p).shape, device=p.device)
        state[name], state[name + ABSMAX_SUFFIX] = blockwise_state_of(zeros, signed, p)
        return [name, name + ABSMAX_SUFFIX]

    def _blockwise(self, group: dict[str, Any]) -> bool:
        """Whether this group keeps 8-bit state."""
        return self._has_state_precision and self._precision(group) == "8bit"

    def _coded(self, group: dict[str, Any], name: str, p: torch.Tensor) -> bool | None:
        """The map (True: signed) through which this group keeps `p`'s buffer `name` as 8-bit
        codes; None where it keeps it as floats (no 8-bit state, a buffer that is not a moment,
        a tensor of fewer than BLOCKWISE_MIN_NUMEL elements)."""
        if not self._blockwise(group):
            return None
        signed = self._buffer_maps.get(name)
        if signed is None or p.numel() < BLOCKWISE_MIN_NUMEL:
            return None
        self._refuse_flat_codes(p)
        return signed

    def _refuse_flat_codes(self, p: torch.Tensor) -> None:
        if distributed.flat_layouts_exist and distributed.flat_layout(p) is not None:
            raise NotImplementedError(
                f"{type(self).__name__}: state_precision='8bit' on DeepSpeed's flat partitions: a partition's "
                "pieces of model tensors would need blocks of their own; use 'bfloat16' state there")

    def _check_codable(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        """Refuses, before any group is updated, an 8-bit group holding DeepSpeed's flat partitions
        (_refuse_flat_codes), whatever their size, or a DTensor whose local shard is larger than
        torch.chunk's (_refuse_unchunked)."""
        if not self._blockwise(group):
            return
        if distributed.flat_layouts_exist:
            for p in params:
                self._refuse_flat_codes(p)
        if distributed.any_dtensor(params):
            for p in params:
                if distributed.is_dtensor(p) and p.numel() >= BLOCKWISE_MIN_NUMEL:
                    self._refuse_unchunked(p)

    def _refuse_unchunked(self, p: torch.Tensor) -> None:
        """A DTensor's scales hold the blocks of the largest local shard torch.chunk makes
        (distributed.scales_layout); one made otherwise (from_local with uneven shards) may not fit."""
        room = distributed.scales_layout(p, blockwise_blocks)[0][-1]
        if blockwise_blocks(distributed.local(p).numel()) > room:
            raise NotImplementedError(
                f"{type(self).__name__}: state_precision='8bit' on a DTensor whose local shard "
                f"({tuple(distributed.local(p).shape)}) is larger than torch.chunk's for its placements "
                f"{tuple(p.placements)}: its scales hold {room} blocks per rank")

    def _blockwise_scales(self, group: dict[str, Any], params: list[torch.Tensor],
                          states: list[dict[str, Any]]) -> dict[str, Any]:
        """The op's `state_absmax` keyword: the scales of every buffer held as codes, in the order
        of the op's state lists (the declared buffers'), parameter by parameter; nothing when none
        is."""
        # Other groups hold no codes: their step checked that (validate_group) when the buffers
        # were new, and when the precision changed.
        if not self._blockwise(group):
            return {}
        scales, owners = [], []
        for buffer in self._state_buffers:
            # A moment the op does not take this step (amsgrad switched off) has no scales there.
            if buffer.signed is None or not buffer.exists_in(group):
                continue
            key = buffer.name
            for owner, state in enumerate(states):
                codes = state.get(key)
                if isinstance(codes, torch.Tensor) and codes.dtype is torch.uint8:
                    scales.append(local_scales(state[key + ABSMAX_SUFFIX], codes))
                    owners.append(owner)
        if not scales:
            return {}
        # A group of DTensors laid out differently (or beside plain tensors) is updated by one call
        # per layout, each taking its own parameters' scales.
        return {"state_absmax": distributed.PerParameter(scales, owners) if distributed.any_dtensor(params) else scales}

    # Whether the class takes `kahan_summation` (set from `_options`).
    _has_kahan_summation = False

    def _kahan(self, group: dict[str, Any]) -> bool:
        """Whether this group's bfloat16 and float16 weights are Kahan-compensated."""
        return self._has_kahan_summation and bool(group.get("kahan_summation", False))

    def _compensation(self, group: dict[str, Any], params: list[torch.Tensor],
                      states: list[dict[str, Any]]) -> dict[str, Any]:
        """The op's `kahan_comps` keyword: with kahan_summation, each bfloat16 or float16
        parameter's `kahan_comp` (for the others, a tensor without elements: `compensation_list`);
        nothing without it."""
        if not params or not self._kahan(group):
            return {}
        return {"kahan_comps": compensation_list(
            params, [s.get("kahan_comp") if p.dtype in KAHAN_DTYPES else None for p, s in zip(params, states)])}

    def _check_compensation(self, group: dict[str, Any], params: list[torch.Tensor],
                            states: list[dict[str, Any] | None]) -> None:
        """ValueError for a `kahan_comp` (a loaded one) that does not fit its parameter, before
        any group is updated (the op checks its own group's too)."""
        if not self._kahan(group):
            return
        for index, (p, state) in enumerate(zip(params, states)):
            c = state.get("kahan_comp") if state else None
            if c is None or p.dtype not in KAHAN_DTYPES:
                continue
            if not isinstance(c, torch.Tensor) or (c.shape, c.dtype, c.device) != (p.shape, p.dtype, p.device):
                raise ValueError(
                    f"{type(self).__name__}: the kahan_comp of parameter {index} of its group "
                    f"({getattr(c, 'dtype', type(c).__name__)} {tuple(getattr(c, 'shape', ()))}) does not fit its "
                    f"parameter ({p.dtype} {tuple(p.shape)} on {p.device})")

    def _make_compensation(self, group: dict[str, Any], params: list[torch.Tensor],
                           states: list[dict[str, Any]]) -> list[tuple[dict[str, Any], str]]:
        """With kahan_summation, a `kahan_comp` of zeros for each bfloat16 or float16 parameter
        lacking one; returns what was added (taken back if the step fails)."""
        added = []
        if self._kahan(group):
            for p, state in zip(params, states):
                if p.dtype in KAHAN_DTYPES and "kahan_comp" not in state:
                    state["kahan_comp"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    added.append((state, "kahan_comp"))
                    self._kahan_comps_made = True
        return added

    def _buffers(self, group: dict[str, Any]) -> list[str]:
        """The buffers made as zeros before a step of this group."""
        return [b.name for b in self._state_buffers if not b.made_by_step and b.exists_in(group)]

    def _state_keys(self, group: dict[str, Any]) -> list[str]:
        """The per-element buffers a state of this group may hold already."""
        return [b.name for b in self._state_buffers if b.exists_in(group)]

    def _pinned_keys(self, group: dict[str, Any]) -> list[str]:
        """The state entries pinned after a step (_pin): the per-element buffers, and the
        one-element values kept per parameter (TAdam's W_t, LAMB's and RaLars' trust ratios),
        which their ops take as lists too."""
        return [*self._state_keys(group), *self._scalar_state, *("local_lr",) * self._keeps_trust_ratios]

    def _stateless(self, group: dict[str, Any]) -> bool:
        """True when this group's update keeps no per-parameter state."""
        return not (self._counts_steps or self._scalar_state or self._state_keys(group) or self._kahan(group))

    def _init_state(self, state: dict[str, Any], p: torch.Tensor, group: dict[str, Any]) -> None:
        if self._counts_steps:
            state["step"] = 0

    def _is_new(self, state: dict[str, Any] | None) -> bool:
        """Whether `state` holds nothing of this algorithm's own: none, empty, or only what a
        wrapper keeps in its base's state (timm's Lookahead's `lookahead_slow_buff`, made at a
        sync before the base's first step of that parameter)."""
        return not state or not any(key in state for key in (*self._required_state_keys, *self._all_buffers))

    def _construct(self, params: Any, defaults: dict[str, Any]) -> None:
        """torch.optim's constructor, with the group options' defaults."""
        super().__init__(params, defaults)  # type: ignore[call-arg]

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # type: ignore[misc]
        self._fill_options_added_later()

    def _fill_options_added_later(self) -> None:
        """Checkpoints written before a switch existed load with its default."""
        for group in self.param_groups:  # type: ignore[attr-defined]
            for option in self._options:
                if not option.setting and (option.added_later or isinstance(option.default, bool)):
                    group.setdefault(option.name, option.default)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)  # type: ignore[misc]
        try:
            self._validate_options(self.param_groups[-1])
        except Exception:
            self.param_groups.pop()
            raise

    # Settings the reference keeps as attributes rather than in param_groups;
    # torch.optim.Optimizer would not pickle (or deepcopy) them.
    _settings: tuple[str, ...] = ()

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()  # type: ignore[misc]
        state.update({key: getattr(self, key) for key in self._settings})
        return state

    def _validate_options(self, group: dict[str, Any], remember: bool = True) -> None:
        """A group's hyper-parameters, checked as every step checks them: the op's
        own checks run on empty lists (nothing to update), and what the op cannot
        see (betas unpacked in Python) is checked here first.

        Skipped when the group holds the values it held at its last check that passed
        (`_options_key`): with many groups (layer-wise learning rates), the op call with
        empty lists was about a third of a step."""
        key = self._options_key(group)
        validated = self.__dict__.setdefault("_validated", {})
        held = validated.get(id(group))
        if key is not None and held is not None and held[0] is group and held[1] == key:
            return
        self._check_group_options(group)
        self._apply(group, [], [], [])
        if key is not None and remember:
            validated[id(group)] = (group, key)

    @staticmethod
    def _options_key(group: dict[str, Any]) -> tuple[Any, ...] | None:
        """What a check of this group's options reads, as values that cannot change in place:
        every entry of the group but its parameters and their names, each with its type (True and 1 are checked
        differently); None where one can change in place (a tensor learning rate a scheduler
        writes into), so that the group is checked every step. The settings kept as attributes
        need not be part of it: they are every group's, and a step's first op checks them before
        anything is written."""
        try:
            return tuple((name, _frozen(value)) for name, value in group.items() if name not in _NOT_OPTIONS)
        except _Mutable:
            return None

    def _check_group_options(self, group: dict[str, Any]) -> None:
        """What the ops cannot see: betas are unpacked in Python before the call."""
        default_betas = self.defaults.get("betas")  # type: ignore[attr-defined]
        if default_betas is not None:
            check_betas(group.get("betas"), len(default_betas), type(self).__name__)
        # Switches and optional bounds, which the ops would take as they are (any truthy value
        # for a bool): checked as the constructor checks them.
        for option in self._options:
            if getattr(option.check, "checks_groups", False):
                option.check(type(self).__name__, group.get(option.name, option.default), option)
            elif option.range is not None and option.name != "betas" and not option.setting:
                value = group.get(option.name, option.default)
                if value is not None or option.default is not None:  # None: an optional number unset
                    check_number(type(self).__name__, option.name, value)
        if group.get("caution") and "caution" not in {o.name for o in self._options}:
            raise ValueError(_no_caution(type(self).__name__))

    def _validate(self, group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor],
                  states: list[dict[str, Any] | None], pinned_still: bool = False) -> None:
        """Everything the group's op checks before it writes (gradients, state
        buffers, step counters), in one C++ call: run for every group before
        any is updated, so that a step over several groups is all or nothing.
        `states`: each parameter's, or None where it has none yet; `pinned_still`:
        whether its buffers are those pinned after its last step (`_pinned_still`),
        whose lists are then taken as they are instead of walking the states again."""
        keys = self._state_keys(group)
        required = keys + ["step"] * self._counts_steps
        # Past the first steps every state holds every buffer: read in C.
        complete = None not in states and (not required or self._hold_all(states, required))
        held = self.__dict__.get("_pinned", {}).get(id(group)) if pinned_still else None
        if complete and held is not None and held.group is group and all(key in held.complete for key in keys):
            buffers = list(chain.from_iterable(held.complete[key] for key in keys))
        elif complete:
            buffers = list(chain.from_iterable(gather(states, key) for key in keys))
            complete = type(None) not in types_of(buffers)
        if complete:
            owners = list(range(len(params))) * len(keys)
            steps = self._advance_steps(states) if self._counts_steps else []
        else:
            buffers, owners, steps = [], [], []
            for index, state in enumerate(states):
                if not state:
                    continue
                for key in keys:
                    buffer = state.get(key)
                    if buffer is not None:
                        buffers.append(buffer)
                        owners.append(index)
                if "step" in state:
                    steps.append(step_count(state["step"]) + 1)
        if self._blockwise(group) or torch.uint8 in set(map(getattr, buffers, repeat("dtype"), repeat(None))):
            buffers, owners = self._check_codes(group, params, states, keys, buffers, owners)
        if distributed.any_dtensor(params):
            grads = [distributed.grad_like(g, p) for g, p in zip(grads, params)]
        name = type(self).__name__
        distributed.call_on_locals(
            lambda params, grads, buffers, owners, steps: ops.validate_group(
                optimizer=name, params=params, grads=grads, buffers=buffers, owners=owners, steps=steps,
                state_dtype=self._state_dtype(group)),
            params, grads, buffers, owners, steps
        )

    def _check_codes(self, group: dict[str, Any], params: list[torch.Tensor], states: list[dict[str, Any] | None],
                     keys: list[str], buffers: list[Any], owners: list[int]) -> tuple[list[Any], list[int]]:
        """8-bit state, checked where validate_group cannot see it: each buffer this group keeps
        as codes must be uint8 codes of its parameter's shape, contiguous, with scales
        (`<name>_absmax`: float32, one per block, on its device); codes anywhere else are refused.
        Returns the other buffers and their owners, for validate_group."""
        name = type(self).__name__
        kept, kept_owners = [], []
        for buffer, owner in zip(buffers, owners):
            p, state = params[owner], states[owner] or {}
            key = next((k for k in keys if state.get(k) is buffer), None)
            signed = self._coded(group, key, p) if key is not None else None
            is_codes = getattr(buffer, "dtype", None) is torch.uint8
            if signed is None and not is_codes:
                kept.append(buffer)
                kept_owners.append(owner)
                continue
            where = f"{name}: state '{key}' of parameter {owner} of its group"
            if signed is None:
                raise ValueError(f"{where} holds 8-bit codes, but its group keeps it as floats (state_precision="
                                 f"{self._precision(group)!r}; codes are kept for moments of tensors of at least "
                                 f"{BLOCKWISE_MIN_NUMEL} elements under '8bit'); load a checkpoint to convert it")
            if not is_codes:
                raise ValueError(f"{where} has dtype {getattr(buffer, 'dtype', type(buffer).__name__)}, but its "
                                 "group's state_precision '8bit' keeps it as uint8 codes; load a checkpoint to "
                                 "convert it")
            absmax = state.get(key + ABSMAX_SUFFIX)
            if (buffer.shape != p.shape or not distributed.local(buffer).is_contiguous() or buffer.device != p.device
                    or distributed.is_dtensor(buffer) != distributed.is_dtensor(p)
                    or (distributed.is_dtensor(p) and (buffer.placements != p.placements
                                                       or buffer.device_mesh != p.device_mesh))):
                raise ValueError(f"{where}: its codes ({_describe_tensor(buffer)} on {buffer.device}) must be "
                                 f"contiguous, of its parameter's shape {tuple(p.shape)} on {p.device}"
                                 + (f", laid out as it ({tuple(p.placements)})" if distributed.is_dtensor(p) else ""))
            wanted = blockwise_scales_problem(p, absmax)
            if wanted is not None:
                raise ValueError(f"{where}: its scales '{key}{ABSMAX_SUFFIX}' ({_describe_tensor(absmax)}) must be "
                                 f"{wanted} on {p.device}")
            if absmax.device != p.device:
                raise ValueError(f"{where}: its scales '{key}{ABSMAX_SUFFIX}' are on {absmax.device}, its "
                                 f"parameter on {p.device}")
        return kept, kept_owners

    # torch.amp.GradScaler hands such optimizers its scale and found_inf
    # (attributes `grad_scale` and `found_inf`) instead of unscaling the
    # gradients itself: the kernels read g * (1 / scale), and a step with an
    # inf or NaN gradient is skipped here, before anything is touched.
    _step_supports_amp_scaling = True
    _grad_scale_now: torch.Tensor | None = None
    # Compiled steps hand found_inf to the ops, which skip the update and the
    # counters (no host read, no branch; a first step's zeroed state stays).
    _found_inf_now: torch.Tensor | None = None

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if torch.compiler.is_compiling():
            if any(distributed.any_dtensor(group["params"]) for group in self.param_groups):  # type: ignore[attr-defined]
                run_eagerly(self._eager_step)
            else:
                self._compiled_step()
            return loss
        self._eager_step()
        return loss

    def _eager_step(self) -> None:
        found_inf = getattr(self, "found_inf", None)
        if found_inf is not None and bool(found_inf.item()):
            return
        self._grad_scale_now = getattr(self, "grad_scale", None)
        try:
            self._step_groups()
        finally:
            self._grad_scale_now = None

    def _step_groups(self) -> None:
        self._forget_removed_groups()
        gathering_left = self.__dict__.get("_gathering_steps_left", 0)
        if gathering_left:
            self._gathering_steps_left = gathering_left - 1
        elif self.__dict__.get("_every_grad_was_there", False):
            try:
                self._step_groups_reading_grads(in_ops=True)
                return
            except Exception:
                # A step that throws has written nothing. With a gradient gone missing since the
                # last step, the attempt checked that parameter (its op refuses it, as may a
                # check of its state) where torch.optim skips it: the step is taken again so.
                if not self._a_grad_is_missing():
                    raise
                self._gathering_steps_left = _GATHERING_STEPS_AFTER_A_MISS
        self._step_groups_reading_grads(in_ops=False)

    # Set by a step that found every parameter's gradient: the next one lets the ops read them.
    _every_grad_was_there = False
    # Steps left that gather the gradients in Python whatever the last found, after an attempt
    # found one missing: gradients missing every other step (an expert not routed to) then cost
    # an attempt taken again in 17 steps, not every other.
    _gathering_steps_left = 0

    def _a_grad_is_missing(self) -> bool:
        return any(p.grad is None for group in self.param_groups for p in group["params"])  # type: ignore[attr-defined]

    def _step_groups_reading_grads(self, in_ops: bool) -> None:
        """A step whose gradients are read by the ops (grads=None: each parameter's .grad, read in
        C++, where gathering p.grad in Python costs a step on 3000 small tensors about 0.5 ms)
        where `in_ops` and nothing else here needs them, which holds for a group without clipping
        or DTensors. A parameter without a gradient is then refused, before anything is written,
        and the step is taken again with the gradients read here, which skips it (_step_groups)."""
        work = []
        every_grad_was_there = True
        for group in self.param_groups:  # type: ignore[attr-defined]
            self._validate_options(group)  # before any state is made
            # Two flat lists, no object per parameter: what is allocated per
            # step (and so Python's garbage collector) does not grow with them.
            params = self._params_of(group)
            grads: list[torch.Tensor] | None = None
            if not in_ops or not self._ops_can_read_grads(group, params):
                grads = [p.grad for p in params]
                if type(None) in types_of(grads):
                    every_grad_was_there = False
                    params = [p for p, g in zip(params, grads) if g is not None]
                    grads = [g for g in grads if g is not None]
            if params:
                work.append((group, params, grads))
        self._every_grad_was_there = every_grad_was_there
        # A group's op checks everything before it writes: with several groups,
        # those after the first are checked before the first is updated (a
        # group of DTensors laid out differently, updated by several calls,
        # is checked whole first too).
        group_states = self._group_states([params for _, params, _ in work])
        split = any(distributed.is_split(params) for _, params, _ in work)
        still_pinned = set()
        for index, ((group, params, grads), states) in enumerate(zip(work, group_states)):
            # The first group's op checks its lists itself, but it also takes state of another
            # dtype than its parameter's (lean state, which the classes do not make yet): buffers
            # other than those its last step pinned (replaced, loaded) are checked here.
            if self._pinned_still(group, params, states):
                still_pinned.add(id(group))
            if index > 0 or split or id(group) not in still_pinned:
                self._validate(group, params, grads, states, pinned_still=id(group) in still_pinned)
            self._check_compensation(group, params, states)
            self._check_codable(group, params)
        self._clipping_now = self._grad_clipping(work)
        self._still_pinned_now = still_pinned
        try:
            self._update_groups(work, group_states)
        finally:
            self._clipping_now = {}
            self._still_pinned_now = frozenset()

    def _params_of(self, group: dict[str, Any]) -> list[torch.Tensor]:
        """The group's parameters, as a list that an eager op takes without converting it
        (distributed.BorrowedList) where the C walks can check it: an op handed a list of 3000
        parameters converts each, about 0.5 ms a step (BorrowedParams in src/ops.h). The borrowed
        parameters are made again whenever the list differs from theirs (a parameter added, removed
        or replaced, a tensor swapped into one by torch.utils.swap_tensors)."""
        params = list(group["params"])
        if walks is None or not params or torch.compiler.is_compiling() or distributed.flat_layouts_exist:
            return params
        cache = self.__dict__.setdefault("_borrowed", {})
        held = cache.get(id(group))
        if held is None or held.group is not group or (
                held.address is not None and not walks.holocron_params_are(params, held.address)):
            # Only plain tensors and Parameters: an op handed no tensor would not reach a subclass's
            # __torch_function__ or __torch_dispatch__ (a DTensor's shards are handed as lists).
            if not types_of(params) <= {torch.Tensor, torch.nn.Parameter}:
                cache.pop(id(group), None)
                return params
            refs = torch.classes.holocron.BorrowedParams(params)
            held = cache[id(group)] = _Borrowed(group, refs, refs.address() if refs.usable() else None)
        return params if held.address is None else distributed.BorrowedList(params, held.refs)

    def _ops_can_read_grads(self, group: dict[str, Any], params: list[torch.Tensor]) -> bool:
        """Whether nothing but the group's op needs its gradients: no clipping (whose norm is
        taken first), no DTensors or flat partitions (whose gradients are reshaped here)."""
        return not ((self._clips_grad_norm and group.get("max_grad_norm") is not None)
                    or distributed.flat_layouts_exist or distributed.any_dtensor(params))

    # Global gradient-norm clipping of the step in progress: per group (by id),
    # the keywords (grad_norm, max_grad_norm) that the ops of the algorithms
    # with a `max_grad_norm` option take.
    _clipping_now: dict[int, dict[str, Any]] = {}

    def _grad_clipping(self, work: list[tuple[dict[str, Any], list[torch.Tensor], list[torch.Tensor]]]
                       ) -> dict[int, dict[str, Any]]:
        """Clipping by one norm over the unscaled gradients (all shards) of every group holding
        the same `max_grad_norm` (usually all: the constructor's), which the kernels scale the
        gradients by as they read them (never in place): LAMB divides by
        max(1, norm / max_grad_norm) (timm, apex), Adan multiplies by
        min(max_grad_norm / (norm + eps), 1) (its authors). Groups holding None are not clipped."""
        if not self._clips_grad_norm:
            return {}
        together: dict[float, list[tuple[dict[str, Any], list[torch.Tensor], list[torch.Tensor]]]] = {}
        for entry in work:
            bound = entry[0].get("max_grad_norm")
            if bound is not None:
                together.setdefault(float(bound), []).append(entry)
        clipping = {}
        for bound, entries in together.items():
            sums = []
            for _, params, grads in entries:
                if distributed.flat_layouts_exist and any(map(distributed.flat_layout, params)):
                    raise NotImplementedError(
                        f"{type(self).__name__}: max_grad_norm with DeepSpeed's flat partitions; set DeepSpeed's "
                        "own gradient_clipping instead (it clips over all partitions before the step)"
                    )
                sums.append(distributed.call(
                    ops.grad_squared_norms, params, grads, grad_scale=self._grad_scale_now,
                    found_inf=self._found_inf_now, sums=True,
                ))
            # Summed as the C++ classes sum them: one float64 sum over every tensor.
            norm = torch.cat([s.cpu() for s in sums]).sum().sqrt()
            for group, _, _ in entries:
                clipping[id(group)] = {"grad_norm": norm, "max_grad_norm": bound}
        return clipping

    def _clipping(self, group: dict[str, Any]) -> dict[str, Any]:
        """This group's clipping keywords for its op (`_grad_clipping`); none when not clipped."""
        return self._clipping_now.get(id(group), {})

    # Whether the algorithm has a `max_grad_norm` option (set from `_options`).
    _clips_grad_norm = False

    def _update_groups(self, work: list[tuple[dict[str, Any], list[torch.Tensor], list[torch.Tensor]]],
                       group_states: list[list[dict[str, Any] | None]]) -> None:

        state_of = self.state  # type: ignore[attr-defined]
        for (group, params, grads), states in zip(work, group_states):
            if self._stateless(group):
                self._apply(group, params, grads, [_NO_STATE] * len(params))
                continue
            keys = self._buffers(group)  # `states` is this step's own list (_group_states): filled in place
            # What this step adds, taken back if its op fails: new states
            # (and their entries in self.state), and buffers added to old ones.
            made: list[tuple[torch.Tensor, bool, frozenset[str]]] = []
            added: list[tuple[dict[str, Any], str]] = []
            own = [*keys, *self._required_state_keys]
            pinned = self._pinned_lists(group)
            # Past the first steps every state holds every buffer: one pass, in C (none where the
            # buffers are those pinned after the last step, which every state held then).
            walk = not keys or not all(key in pinned for key in keys)
            self._lists_now = pinned
            try:
                if walk and (None in states or (own and not self._hold_all(states, own))):
                    for i, p in enumerate(params):
                        state = states[i]
                        if self._is_new(state):
                            made.append((p, state is None, frozenset(state or ())))
                            state = states[i] = state_of[p]
                            self._init_state(state, p, group)
                        for key in keys:
                            if key not in state:
                                added += [(state, made) for made in self._make_buffer(state, key, group, p)]
                added += self._make_compensation(group, params, states)
                self._apply(group, params, grads, states)
            except Exception:
                for p, had_no_entry, held in made:
                    if had_no_entry:
                        del state_of[p]
                    else:
                        for key in set(state_of[p]) - held:
                            del state_of[p][key]
                for state, key in added:
                    state.pop(key, None)
                raise
            finally:
                self._lists_now = {}
            self._pin(group, params, states)
            if self._kahan_comps_made and not self._kahan(group):
                # Turned off, a group's weights go on from p: what the compensation held is dropped
                # with it, so that turning it on again starts from zeros, not from a stale residue.
                for state in states:
                    state.pop("kahan_comp", None)

    # Set once this optimizer has held a `kahan_comp` (made or loaded): until then a step of a
    # group without kahan_summation looks for none.
    _kahan_comps_made = False

    def _pin(self, group: dict[str, Any], params: list[torch.Tensor], states: list[dict[str, Any]]) -> None:
        """Holds a C++ reference to the state buffers this group's op was handed, so that
        handing them again costs no PyObject incref and decref under the GIL (TensorPins in
        src/ops.cpp; about 0.07 us a tensor). Only speed depends on it. Made after a step
        that succeeded, remade when a buffer differs from the one pinned, dropped with its
        group (_forget_removed_groups) and by a load; until the next step they also hold
        buffers that were replaced or cleared since.

        Parameters are not pinned: a tensor referenced from C++ keeps its PyObject alive,
        out of the garbage collector's sight, and parameters commonly reference their
        optimizer (hooks, attributes set by frameworks): such a cycle would never be
        collected. The buffers are the optimizer's own. DTensors are not pinned either:
        the op is handed their local shards."""
        keys = self._pinned_keys(group)
        if (not keys or not states or id(group) in self._still_pinned_now or distributed.any_dtensor(params)
                or self._pinned_still(group, params, states)):
            return
        lists = [list(map(dict.get, states, repeat(key))) for key in keys]
        tensors = [[t for t in values if isinstance(t, torch.Tensor)] for values in lists]
        pins = torch.classes.holocron.TensorPins(list(chain.from_iterable(tensors)))
        complete, start = {}, 0
        for key, values, held in zip(keys, lists, tensors):
            if len(held) == len(values):
                complete[key] = distributed.PinnedList(values, pins, start, as_param=self._precision(group) == "param")
            start += len(held)
        self.__dict__.setdefault("_pinned", {})[id(group)] = _Pins(
            group, lists, pins, list(map(attrgetter("dtype"), params)), self._precision(group), complete)

    # Groups whose state buffers were, when this step began, those pinned after the last.
    _still_pinned_now: frozenset[int] | set[int] = frozenset()

    def _pinned_lists(self, group: dict[str, Any]) -> dict[str, list[torch.Tensor]]:
        """The buffers of a group still pinned (`_still_pinned_now`), by key, for the keys that
        every state held when pinned (and so still holds: the same tensors); empty otherwise."""
        held = self.__dict__.get("_pinned", {}).get(id(group))
        if id(group) not in self._still_pinned_now or held is None or held.group is not group:
            return {}
        return held.complete

    # The pinned lists (`_pinned_lists`) of the group whose op is being called: `_gather` hands
    # them over instead of walking the states again.
    _lists_now: dict[str, list[torch.Tensor]] = {}

    def _gather(self, states: list[dict[str, Any]], key: str) -> list[Any]:
        """`gather(states, key)` for the group being updated."""
        held = self._lists_now.get(key)
        return held if held is not None else gather(states, key)

    def _pinned_still(self, group: dict[str, Any], params: list[torch.Tensor],
                      states: list[dict[str, Any] | None]) -> bool:
        """Whether this group's state buffers are those its last step pinned (_pin), which
        were checked then, and its state_precision the value it had; true as well when the
        group keeps no buffers. A buffer whose dtype is changed in place (`.data = ...`) goes
        unseen: the op then takes it as state of that dtype (float32 or bfloat16 only).

        Parameters converted in place since (Module.half()) leave the buffers valid under a
        float32 or bfloat16 precision, and under "param" the op refuses them, as validate_group
        would (`state_as_param`, which `distributed.call` hands with the pinned lists, to whole
        tensors and flat partitions alike): the parameters' dtypes are walked only for an 8-bit
        group, and for a "param" group not every list of which is pinned."""
        keys = self._pinned_keys(group)
        if not keys:
            return True
        held = self.__dict__.get("_pinned", {}).get(id(group))
        if (held is None or held.group is not group or None in states or len(held.lists) != len(keys)
                or self._precision(group) != held.precision):
            return False
        if ((held.precision != "param" or len(held.complete) != len(keys))
                and held.precision not in ("float32", "bfloat16")
                and list(map(attrgetter("dtype"), params)) != held.dtypes):
            return False
        # In C where every state held the key when pinned (a list of tensors); in Python where one
        # lacked it (kahan_comp of a float32 parameter), pinned as None, which a missing entry matches.
        c_walks = state_walks(states)
        return all(c_walks.holocron_entries_are(states, key, pinned) if c_walks and key in held.complete
                   else len(pinned) == len(states) and all(map(is_, pinned, map(dict.get, states, repeat(key))))
                   for key, pinned in zip(keys, held.lists))

    def _forget_removed_groups(self) -> None:
        """Drops what is kept per group (pins, trust-ratio targets) for groups no longer in
        param_groups, so that their buffers can go."""
        current = {id(group) for group in self.param_groups}  # type: ignore[attr-defined]
        for cache in ("_pinned", "_trust_ratio_targets", "_validated", "_borrowed"):
            kept = self.__dict__.get(cache)
            if kept and not kept.keys() <= current:
                for key in [k for k in kept if k not in current]:
                    del kept[key]

    @staticmethod
    def _hold_all(states: list[dict[str, Any]], keys: list[str]) -> bool:
        try:
            deque(map(itemgetter(*keys), states), maxlen=0)
        except KeyError:
            return False
        return True

    def _group_states(self, groups: list[list[torch.Tensor]]) -> list[list[dict[str, Any] | None]]:
        """`[self.state.get(p) for p in params]` for each group's parameters. A lookup
        hashes its tensor in Python (`Tensor.__hash__`); when the states' keys are these
        parameters in their order (past the first step, what made them), the states are
        read in order instead, after a check of the keys' identities in C. ValueError for a
        parameter listed twice (`_refuse_listed_twice`), which only the lookups can hold."""
        state_of = self.state  # type: ignore[attr-defined]
        if len(state_of) == sum(map(len, groups)) and all(map(is_, state_of, chain.from_iterable(groups))):
            values = list(state_of.values())
            out, start = [], 0
            for params in groups:
                out.append(values[start:start + len(params)])
                start += len(params)
            return out
        # Checked here only: the states' keys, unique, cannot be a list holding a tensor twice.
        if len(set(map(id, chain.from_iterable(groups)))) != sum(map(len, groups)):
            self._refuse_listed_twice()
        return [list(map(state_of.get, params)) for params in groups]

    def _refuse_listed_twice(self) -> None:
        """ValueError naming a parameter listed twice (torch.optim only warns about such a group):
        its op would update it twice with one state, its counter advanced once."""
        seen: dict[int, tuple[int, int]] = {}
        for g, group in enumerate(self.param_groups):  # type: ignore[attr-defined]
            for i, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                if id(p) in seen:
                    h, j = seen[id(p)]
                    raise ValueError(f"{type(self).__name__}: parameter {i} of group {g} is also parameter {j} of "
                                     f"group {h}; a parameter listed twice would be updated twice with one state "
                                     "(list it once)")
                seen[id(p)] = (g, i)

    def _compiled_step(self) -> None:
        """The step torch.compile traces: one graph without breaks, the same
        after the first steps (no recompilation). State keeps the reference's
        keys, with tensor step counters (0-d float32, as torch.optim.Adam's) and
        tensor trust ratios, which the ops advance and write; the checks of the
        eager step that read values on the host are the ops' own."""
        self._grad_scale_now = getattr(self, "grad_scale", None)
        self._found_inf_now = getattr(self, "found_inf", None)
        # Traced once (the parameters are guarded on), as the eager step's `_group_states` checks.
        listed = [p for group in self.param_groups for p in group["params"] if p.grad is not None]  # type: ignore[attr-defined]
        if len({id(p) for p in listed}) != len(listed):
            self._refuse_listed_twice()
        try:
            if self._clips_grad_norm:
                work = []
                for group in self.param_groups:  # type: ignore[attr-defined]
                    params = [p for p in group["params"] if p.grad is not None]
                    if params:
                        work.append((group, params, [p.grad for p in params]))
                self._clipping_now = self._grad_clipping(work)
            for group in self.param_groups:  # type: ignore[attr-defined]
                params = [p for p in group["params"] if p.grad is not None]
                if not params:
                    continue
                if self._stateless(group):
                    self._apply(group, params, [p.grad for p in params], [_NO_STATE] * len(params))
                    continue
                states = []
                for p in params:
                    state = self.state[p]  # type: ignore[attr-defined]
                    if self._is_new(state):
                        self._init_state(state, p, group)
                    self._compiled_state(state, p, group)
                    states.append(state)
                self._check_compiled_codes(group, params, states)
                self._apply(group, params, [p.grad for p in params], states)
        finally:
            self._grad_scale_now = self._found_inf_now = None
            self._clipping_now = {}

    def _check_compiled_codes(self, group: dict[str, Any], params: list[torch.Tensor],
                              states: list[dict[str, Any]]) -> None:
        """_check_codes for a compiled step: floats left where its group now keeps codes (or codes
        where it keeps floats) are refused, as the eager step refuses them, not stepped as float
        state. Reads dtypes, shapes and layouts only, which torch.compile guards on."""
        keys = self._state_keys(group)
        present = [(state[key], owner) for owner, state in enumerate(states) for key in keys if key in state]
        if self._blockwise(group) or any(getattr(b, "dtype", None) is torch.uint8 for b, _ in present):
            self._check_codes(group, params, states, keys, [b for b, _ in present], [o for _, o in present])

    def _compiled_state(self, state: dict[str, Any], p: torch.Tensor, group: dict[str, Any]) -> None:
        """Buffers made, and the step counter as a tensor."""
        for key in self._buffers(group):
            if key not in state:
                self._make_buffer(state, key, group, p)
        self._make_compensation(group, [p], [state])
        if "step" in state and not isinstance(state["step"], torch.Tensor):
            state["step"] = torch.tensor(float(state["step"]), dtype=torch.float32)
        if self._keeps_trust_ratios:
            ratio = state.get("local_lr")
            if type(ratio) is not torch.Tensor or ratio.dtype != p.dtype or ratio.device != p.device:
                state["local_lr"] = torch.ones(per_tensor_shape(p, ()), dtype=p.dtype, device=p.device)

    # LAMB and RaLars store each tensor's trust ratio as `local_lr`.
    _keeps_trust_ratios = False

    @staticmethod
    def _lr(group: dict[str, Any]) -> dict[str, Any]:
        """The op's learning-rate keywords. A compiled step hands a tensor lr over as it is
        (`lr_tensor`, read when the op runs), as torch recommends for compiled optimizers whose lr
        changes: as a float it would be a constant of the graph (a new graph per value), and with
        fullgraph=True reading it is refused."""
        lr = group["lr"]
        if isinstance(lr, torch.Tensor) and torch.compiler.is_compiling():
            return {"lr": 0.0, "lr_tensor": lr}
        return {"lr": float(lr)}

    def _counters(self, states: list[dict[str, Any]]) -> tuple[list[int], dict[str, Any]]:
        """This step's counters for an op: the advanced ints (eager; stored by
        `_commit_steps` once the op has run), or the state's tensors, which the
        op advances itself (compiled)."""
        if torch.compiler.is_compiling():
            return [], {"step_tensors": [s["step"] for s in states]}
        return self._advance_steps(states), {}

    def _ratio_targets(self, group: dict[str, Any], params: list[torch.Tensor],
                       states: list[dict[str, Any]]) -> dict[str, Any]:
        """The 0-d tensors into which LAMB's and RaLars' ops write each trust ratio.

        Compiled: the state's own. Eager: a state holds its ratio as a 0-d tensor of the
        parameter's dtype (`_settle_ratios`); the tensors are made once per parameter and
        kept with the group's lists, so that a step makes no tensor per parameter
        and, past the first, walks no list in Python: the op writes them."""
        if torch.compiler.is_compiling():
            return {"local_lrs": [s["local_lr"] for s in states]}
        if not params:
            return {}  # a validation of the options (_validate_options)
        pinned = self._lists_now.get("local_lr")
        if pinned is not None:
            return {"local_lrs": pinned}  # the states' own, pinned after the last step (_pin)
        held = list(map(dict.get, states, repeat("local_lr")))
        cache = self.__dict__.setdefault("_trust_ratio_targets", {}).get(id(group))
        if (cache is not None and cache.group is group and len(cache.params) == len(params)
                and all(map(is_, cache.params, params)) and all(map(is_, cache.states, states))
                and all(map(is_, cache.held, held))):
            return {"local_lrs": cache.targets}
        targets = []
        for p, value in zip(params, held):
            # Whatever a loaded state holds is replaced when it cannot be written in place.
            shape = per_tensor_shape(p, ())
            if (type(value) is not torch.Tensor or value.shape != shape or value.dtype != p.dtype
                    or value.device != p.device):
                value = torch.empty(shape, dtype=p.dtype, device=p.device)
            targets.append(value)
        self._trust_ratio_targets[id(group)] = _RatioTargets(
            group, params, states, targets, held, torch.classes.holocron.TensorPins(targets))
        return {"local_lrs": targets}

    def _settle_ratios(self, group: dict[str, Any], states: list[dict[str, Any]]) -> None:
        """Each state's `local_lr` after an eager step: its tensor, now holding the ratio, 1
        where a norm was zero. The reference holds the int 1 there; a tensor always keeps the
        entry's type from step to step, as torch.distributed.checkpoint's load needs (it fills
        a fresh optimizer's state with one step of zero gradients, where the norms are zero, and
        refuses a checkpoint whose entries are of other types)."""
        if not states or self._lists_now.get("local_lr") is not None:
            return  # none, or the states' own were written (_ratio_targets)
        cache = self._trust_ratio_targets[id(group)]
        if all(map(is_, cache.targets, cache.held)):
            return
        for state, value, before in zip(states, cache.targets, cache.held):
            if value is not before:
                state["local_lr"] = value
        self._trust_ratio_targets[id(group)] = cache._replace(held=cache.targets)

    def _commit_steps(self, states: list[dict[str, Any]], steps: list[int]) -> None:
        if not torch.compiler.is_compiling():
            self._store_steps(states, steps)

    def _advance_steps(self, states: list[dict[str, Any]]) -> list[int]:
        # Parameters stepped together share one counter value (and, as stored by _store_steps, one
        # int object): the common case is one walk in C (state_walks), or else a count in C, not a
        # call per parameter.
        c_walks = state_walks(states)
        first = states[0].get("step") if c_walks and type(states[0]) is dict else None
        all_ints = shared = type(first) is int and bool(c_walks.holocron_entries_all(states, "step", first))
        if not shared:
            counters = gather(states, "step")
            all_ints = bool(counters) and types_of(counters) == {int}
            first = counters[0] if all_ints else None
            shared = all_ints and counters.count(first) == len(counters)
        self._int_counters_of = states if all_ints else None
        if shared:
            steps = [first + 1] * len(states)
            lowest = highest = steps[0]
        else:
            # int() reads a tensor counter (torch.optim.Adam's load makes them).
            steps = list(map((1).__add__, counters)) if all_ints else [int(n) + 1 for n in counters]
            lowest, highest = min(steps, default=1), max(steps, default=1)
        # Checked here, before any write, for every algorithm (LAMB's op takes no counters).
        if lowest < 1:
            raise RuntimeError(f"{type(self).__name__}: a state 'step' is {lowest - 1}; counters cannot be negative")
        if highest > MAX_STEP:
            raise RuntimeError(f"{type(self).__name__}: a state 'step' is {highest - 1}; a counter cannot pass "
                               f"{MAX_STEP} (int64)")
        return steps

    # The states list whose counters _advance_steps last read, when every one was an int: storing
    # the steps of that list after its op (which leaves the states' entries alone) need not look
    # at them again.
    _int_counters_of: list[dict[str, Any]] | None = None

    def _store_steps(self, states: list[dict[str, Any]], steps: list[int]) -> None:
        known_ints, self._int_counters_of = states is self._int_counters_of, None
        if known_ints or not any(issubclass(kind, torch.Tensor) for kind in types_of(gather(states, "step"))):
            c_walks = state_walks(states)
            if c_walks and steps and len(steps) == len(states) and steps.count(steps[0]) == len(steps):
                c_walks.holocron_set_entries(states, "step", steps[0])
            else:
                deque(map(setitem, states, repeat("step"), steps), maxlen=0)
            return
        for state, step in zip(states, steps):
            if isinstance(state["step"], torch.Tensor):
                state["step"].fill_(step)
            else:
                state["step"] = step

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Refuses, before changing anything, buffers that do not fit their parameters.

        Each group keeps its own `state_precision`, as each parameter keeps its device: the
        loaded buffers are converted to it, from the values saved (torch.optim's load first
        casts them to the parameter's dtype, which would round float32 state of bfloat16
        parameters). Load hooks run as torch.optim runs them: the pre-hooks first (what they
        return is what is checked and loaded), the post-hooks once the state is converted."""
        name = type(self).__name__
        if not isinstance(state_dict, dict):
            raise ValueError(f"{name}: a state dict must be a dict, got {type(state_dict).__name__}")
        state_dict = state_dict.copy()  # shallow, as torch.optim's load
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():  # type: ignore[attr-defined]
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        check_state_dict_layout(name, state_dict)
        saved_groups = state_dict["param_groups"]
        params = [p for group in self.param_groups for p in group["params"]]  # type: ignore[attr-defined]
        ids = [i for group in saved_groups for i in group.get("params", [])]
        if len(saved_groups) != len(self.param_groups) or len(ids) != len(params):  # type: ignore[attr-defined]
            raise ValueError(
                f"{name}: the loaded state dict has {len(saved_groups)} groups and {len(ids)} parameters, "
                f"the optimizer {len(self.param_groups)} and {len(params)}"  # type: ignore[attr-defined]
            )
        self._check_loaded_groups(saved_groups)
        by_id = dict(zip(ids, params))
        foreign = self._foreign_state_keys()
        for key, state in state_dict.get("state", {}).items():
            # A parameter's key is what its group lists: an index, or a name where
            # torch.distributed.checkpoint's set_state_dict hands names.
            p = by_id.get(key)
            if p is None:
                if not isinstance(key, int):
                    continue  # not a parameter's: torch.optim keeps such entries (hooks put them) as they are
                raise ValueError(f"{name}: the loaded state dict has state for unknown parameter {key!r}")
            if "step" in state and not valid_step(state["step"]):
                raise ValueError(f"{name}: state 'step' of parameter {key} must be an integer from 0 to {MAX_STEP - 1}, "
                                 f"got {state['step']!r}")
            stray = [k for k in state if k in foreign]
            if stray:
                raise ValueError(
                    f"{name}: the state of parameter {key} holds "
                    f"{', '.join(f'{k!r} (kept by {foreign[k]})' for k in stray)}; is it another optimizer's?")
            missing = [k for k in self._required_state_keys if k not in state]
            if not self._is_new(state) and missing:
                raise ValueError(f"{name}: the state of parameter {key} lacks {', '.join(missing)}")
            for buffer_name in (k for k in self._all_buffers if k in state):
                buffer = state[buffer_name]
                codes = isinstance(buffer, torch.Tensor) and buffer.dtype is torch.uint8
                if codes and self._buffer_maps.get(buffer_name) is not None:
                    self._check_loaded_codes(key, p, buffer_name, buffer, state.get(buffer_name + ABSMAX_SUFFIX))
                    continue
                # Floats of any dtype are converted to the group's (torch.optim's load casts them to
                # the parameter's: a float64 checkpoint loads into float32 parameters).
                if (not isinstance(buffer, torch.Tensor) or buffer.layout != torch.strided or buffer.shape != p.shape
                        or not buffer.is_floating_point()):
                    raise ValueError(
                        f"{name}: state '{buffer_name}' of parameter {key} "
                        f"({tuple(getattr(buffer, 'shape', ()))}, {getattr(buffer, 'dtype', type(buffer))}"
                        f"{', ' + str(buffer.layout) if isinstance(buffer, torch.Tensor) else ''}) "
                        f"does not fit the parameter ({tuple(p.shape)}, {p.dtype}; state may be a dense tensor of any "
                        "floating dtype, converted to the group's state_precision, or 8-bit codes of a moment with "
                        "their scales)"
                    )
            comp = state.get("kahan_comp")
            self._kahan_comps_made = self._kahan_comps_made or comp is not None
            # Of its weight's dtype only: torch.optim's load would cast another one to it, rounding
            # the residues it holds (a float32 one), or taking a float16 one's range for bfloat16's.
            # A float32 weight (a bfloat16 model turned float32 since) reads none: it loads as it is.
            if comp is not None and (not isinstance(comp, torch.Tensor) or comp.layout != torch.strided
                                     or comp.shape != p.shape
                                     or (p.dtype in KAHAN_DTYPES and comp.dtype != p.dtype)):
                raise ValueError(
                    f"{name}: state 'kahan_comp' of parameter {key} ({tuple(getattr(comp, 'shape', ()))}, "
                    f"{getattr(comp, 'dtype', type(comp))}) does not fit the parameter ({tuple(p.shape)}, {p.dtype}): "
                    "a compensation has its weight's shape and dtype"
                )
        # Each group's precision, kept; the buffers whose saved dtype torch.optim's cast would not
        # leave as the group keeps them, converted from the saved values once it has loaded.
        precisions = [group.get("state_precision") for group in self.param_groups]  # type: ignore[attr-defined]
        group_of = {id(p): group for group in self.param_groups for p in group["params"]}  # type: ignore[attr-defined]
        conversions = []
        for key, state in state_dict.get("state", {}).items():
            p = by_id.get(key)
            if p is None:
                continue
            group = group_of[id(p)]
            wanted = self._state_dtype(group) or p.dtype
            for buffer_name in (k for k in self._all_buffers if k in state):
                saved = state[buffer_name]
                signed = self._coded(group, buffer_name, p)
                if signed is not None or saved.dtype is torch.uint8 or wanted != p.dtype:
                    if (signed is not None or saved.dtype is torch.uint8) and (
                            distributed.is_dtensor(saved) != distributed.is_dtensor(p)
                            or (distributed.is_dtensor(p) and (
                                saved.device_mesh != p.device_mesh
                                or (saved.dtype is torch.uint8 and saved.placements != p.placements)))):
                        raise ValueError(
                            f"{name}: state '{buffer_name}' of parameter {key} ({_describe_tensor(saved)}) is not "
                            f"laid out as its parameter ({_describe_tensor(p)}), which its 8-bit codes must be: "
                            "8-bit state of a sharded parameter loads on the mesh it was saved on")
                    if signed is not None and distributed.is_dtensor(p):
                        self._refuse_unchunked(p)
                    conversions.append((p, buffer_name, saved, state.get(buffer_name + ABSMAX_SUFFIX), signed,
                                        wanted))
        pre_hooks = self._optimizer_load_state_dict_pre_hooks  # type: ignore[attr-defined]
        post_hooks = self._optimizer_load_state_dict_post_hooks  # type: ignore[attr-defined]
        self._optimizer_load_state_dict_pre_hooks, self._optimizer_load_state_dict_post_hooks = {}, {}
        try:
            super().load_state_dict(state_dict)  # type: ignore[misc]
        finally:
            self._optimizer_load_state_dict_pre_hooks = pre_hooks
            self._optimizer_load_state_dict_post_hooks = post_hooks
        for group, precision in zip(self.param_groups, precisions):  # type: ignore[attr-defined]
            if precision is not None:
                group["state_precision"] = precision
        for p, buffer_name, saved, saved_absmax, signed, dtype in conversions:
            self._convert_loaded(self.state[p], p, buffer_name, saved, saved_absmax, signed, dtype)  # type: ignore[attr-defined]
        # The buffers just replaced go now, not at the next step.
        self.__dict__.pop("_pinned", None)
        self.__dict__.pop("_trust_ratio_targets", None)
        self.__dict__.pop("_validated", None)
        for post_hook in post_hooks.values():
            post_hook(self)

    def _check_loaded_codes(self, key: Any, p: torch.Tensor, buffer_name: str, codes: torch.Tensor,
                            absmax: Any) -> None:
        """A saved buffer of 8-bit codes: its parameter's shape, with fitting scales."""
        name = type(self).__name__
        sharded = distributed.is_dtensor(p)
        if (codes.shape != p.shape or distributed.is_dtensor(codes) != sharded
                or (sharded and (codes.placements != p.placements or codes.device_mesh != p.device_mesh))):
            raise ValueError(f"{name}: state '{buffer_name}' of parameter {key} ({_describe_tensor(codes)}, uint8 "
                             f"codes) does not fit the parameter ({_describe_tensor(p)})"
                             + ("; 8-bit state of a sharded parameter loads on the mesh it was saved on"
                                if sharded or distributed.is_dtensor(codes) else ""))
        wanted = blockwise_scales_problem(p, absmax.contiguous() if isinstance(absmax, torch.Tensor) else absmax)
        if wanted is not None:
            raise ValueError(
                f"{name}: state '{buffer_name}' of parameter {key} holds 8-bit codes, but its scales "
                f"'{buffer_name}{ABSMAX_SUFFIX}' ({_describe_tensor(absmax)}) are not {wanted}")

    def _convert_loaded(self, state: dict[str, Any], p: torch.Tensor, buffer_name: str, saved: torch.Tensor,
                        saved_absmax: torch.Tensor | None, signed: bool | None, dtype: torch.dtype) -> None:
        """A loaded buffer as its group keeps it, from the values saved (torch.optim's load cast
        them to the parameter's dtype, codes and scales included): codes with their scales where
        the group keeps 8-bit codes (encoded from a float buffer), else floats of `dtype`
        (decoded from codes)."""
        if saved.dtype is torch.uint8:
            if signed is not None:
                state[buffer_name] = saved.to(device=p.device).contiguous()
                state[buffer_name + ABSMAX_SUFFIX] = saved_absmax.to(device=p.device).contiguous()  # type: ignore[union-attr]
                return
            values = blockwise_values_of(saved, saved_absmax.contiguous(), self._buffer_maps[buffer_name], p)  # type: ignore[union-attr]
            saved = values.to(device=p.device)
        state.pop(buffer_name + ABSMAX_SUFFIX, None)
        if signed is not None:
            if distributed.is_dtensor(saved) and saved.placements != p.placements:
                saved = saved.redistribute(p.device_mesh, p.placements)  # float state saved otherwise laid out
            state[buffer_name], state[buffer_name + ABSMAX_SUFFIX] = blockwise_state_of(saved.to(p.device), signed, p)
        else:
            state[buffer_name] = saved.to(device=p.device, dtype=dtype)

    def _check_loaded_groups(self, saved_groups: list[dict[str, Any]]) -> None:
        """The groups a load would install, validated as the constructor and every step validate
        them, before anything is replaced: another optimizer's checkpoint (an AdaBelief one in
        LARS or Adan) or a bad hyper-parameter is refused here, not by the next step.

        torch.optim's load keeps each saved group's options with the current parameters, and then
        the class's ``__setstate__`` fills the options that older checkpoints lack; both are
        reproduced on copies, through a stand-in of this optimizer."""
        name = type(self).__name__
        groups = [dict(saved, params=current["params"]) for saved, current in zip(saved_groups, self.param_groups)]  # type: ignore[attr-defined]
        for group, current in zip(groups, self.param_groups):  # type: ignore[attr-defined]
            if "state_precision" in current:  # kept by the load
                group["state_precision"] = current["state_precision"]
        stand_in = object.__new__(type(self))
        stand_in.__dict__.update(self.__dict__)
        stand_in.__dict__["defaults"] = dict(self.defaults)  # type: ignore[attr-defined]
        type(self).__setstate__(stand_in, {"state": defaultdict(dict), "param_groups": groups})
        for index, group in enumerate(stand_in.param_groups):
            missing = [key for key in self._constructor_options if key in self.defaults and key not in group]  # type: ignore[attr-defined]
            if missing:
                raise ValueError(
                    f"{name}: group {index} of the loaded state dict lacks {', '.join(map(repr, missing))}; "
                    "is it another optimizer's?"
                )
            try:
                self._validate_options(group, remember=False)  # a group that may never be installed
            except (ValueError, RuntimeError, TypeError) as error:
                reason = str(error).removeprefix(f"{name}: ")
                raise ValueError(f"{name}: group {index} of the loaded state dict: {reason}") from error

    # Derived from the declarations above (__init_subclass__): every
    # per-element buffer a state may hold, and what a (non-empty) state must
    # hold for the next step (missing buffers are made then).
    _all_buffers: tuple[str, ...] = ()
    _buffer_maps: dict[str, bool | None] = {}
    _coded_keys: tuple[str, ...] = ()
    _required_state_keys: tuple[str, ...] = ("step",)
    _constructor_options: tuple[str, ...] = ()


# Checked first, in this order, as torch.optim checks them.
_CHECKED_FIRST = ("lr", "eps", "weight_decay")


def _no_caution(name: str) -> str:
    return (f"{name} has no caution: Cautious Optimizers (timm, pytorch-optimizer) define it for LAMB, Adan, "
            f"AdEMAMix and AdamP among these algorithms, not for {name}")


def _constructor(cls: type) -> Callable[..., None]:
    """The `__init__` of an algorithm, from its declared `_options`."""
    options = cls._options  # type: ignore[attr-defined]
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    signature = inspect.Signature(
        [inspect.Parameter("self", kind), inspect.Parameter("params", kind)]
        + [inspect.Parameter(o.name, kind, default=o.default) for o in options]
    )
    order = sorted(options, key=lambda o: _CHECKED_FIRST.index(o.name) if o.name in _CHECKED_FIRST else len(_CHECKED_FIRST))
    name = cls.__name__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if "caution" in kwargs and "caution" not in signature.parameters:
            raise TypeError(_no_caution(name))
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        values = bound.arguments
        for option in order:
            if option.check is not None:
                values[option.name] = option.check(name, values[option.name], option)
        for option in options:
            if option.setting:
                setattr(self, option.name, values[option.name])
        self._construct(values["params"], {o.name: values[o.name] for o in options if not o.setting})

    __init__.__signature__ = signature  # type: ignore[attr-defined]
    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    __init__.__doc__ = f"{name}'s constructor: see the class's documentation."
    return __init__
