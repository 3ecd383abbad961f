"""Lookahead and Scout, wrapping any torch.optim.Optimizer.

Differences from the reference (README, "Deliberate fixes"): the wrapper's
param_groups are the base's, so an LR scheduler on the wrapper drives the base;
state_dict() also holds the slow weights, the step counter and
Scout's statistics; Scout keeps running statistics instead of a
growing stack of copies and ignores elements that did not move.
"""

from __future__ import annotations

import math
import operator
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.optim import Optimizer

from ._base import KAHAN_DTYPES, FusedStep, as_real, check_state_dict_layout, compensation_list, run_eagerly
from . import _distributed as distributed
from ._library import ops

__all__ = ["Lookahead", "Scout"]

_SCOUT_STATS = ("prev", "mean", "m2", "max", "min")


def _precision_dtype(base: Optimizer, group: dict[str, Any]) -> torch.dtype | None:
    """The dtype `base` keeps this group's state in (holocron's `state_precision`; through a
    wrapper, its base's); None: each parameter's own (that precision, or an optimizer without
    the option)."""
    if isinstance(base, Lookahead):
        return _precision_dtype(base.base_optimizer, group)
    return base._state_dtype(group) if isinstance(base, FusedStep) else None


def _group_params(param_group: dict[str, Any]) -> list[Any]:
    """The tensors of a group as add_param_group takes it: a tensor, a list, or (name, tensor) pairs."""
    params = param_group.get("params", [])
    if isinstance(params, torch.Tensor):
        return [params]
    return [p[1] if isinstance(p, tuple) and len(p) == 2 else p for p in list(params)]


def _check_sync_options(sync_rate: Any, sync_period: Any) -> tuple[float, int]:
    """(sync_rate, sync_period) as a float and an int, from any real number and integer (numpy's, a
    one-element tensor's) as the optimizers take their options; ValueError in the reference's words."""
    rate = as_real(sync_rate)
    if rate is None or not 0 <= rate <= 1:
        raise ValueError(f"expected positive float lower than 1 as sync_rate, received: {sync_rate}")
    is_bool = isinstance(sync_period, bool) or getattr(sync_period, "dtype", None) is torch.bool
    try:
        period = None if is_bool else operator.index(sync_period)
    except TypeError:
        period = None
    if period is None or period < 1:
        raise ValueError(f"expected positive integer as sync_period, received: {sync_period}")
    return rate, period


def _step_without_global_hooks(optimizer: Optimizer, closure: Callable[[], Any] | None) -> Any:
    """``optimizer.step(closure)`` with its own step hooks but not the global ones.

    torch's hooked ``step`` runs the global hooks
    (``register_optimizer_step_pre_hook``/``post_hook``) for every optimizer whose step is
    called; a wrapper's step calls its base's, and the global hooks must see one step, the
    wrapper's, as they do for torch's own optimizers. This is torch's ``profile_hook_step``
    without the global hooks. A step patched on the instance (an LR scheduler attached to the
    base itself) or a compiled step goes the usual way."""
    step = type(optimizer).step
    unhooked = getattr(step, "__wrapped__", None)
    if (unhooked is None or not getattr(step, "hooked", False) or "step" in vars(optimizer)
            or torch.compiler.is_compiling()):
        return optimizer.step(closure)
    args: tuple[Any, ...] = (optimizer, closure)
    kwargs: dict[str, Any] = {}
    with torch.autograd.profiler.record_function(f"Optimizer.step#{type(optimizer).__name__}.step"):
        for pre_hook in optimizer._optimizer_step_pre_hooks.values():
            result = pre_hook(optimizer, args, kwargs)
            if result is not None:
                if not (isinstance(result, tuple) and len(result) == 2):
                    raise RuntimeError(f"{step} must return None or a tuple of (new_args, new_kwargs), but got {result}.")
                args, kwargs = result
        out = unhooked(*args, **kwargs)
        optimizer._optimizer_step_code()
        for post_hook in optimizer._optimizer_step_post_hooks.values():
            post_hook(optimizer, args, kwargs)
    return out


class Lookahead(Optimizer):
    """Lookahead: slow weights that catch up with the fast ones every few steps.

    Paper: Michael R. Zhang, James Lucas, Geoffrey Hinton, Jimmy Ba, "Lookahead
    Optimizer: k steps forward, 1 step back", NeurIPS 2019,
    https://arxiv.org/abs/1907.08610

    Every ``sync_period`` steps of the base optimizer, the slow weights move
    ``sync_rate`` of the way to the fast ones
    (``slow += sync_rate * (fast - slow)``) and the fast weights (the
    parameters) restart from them. ``zero_grad`` forwards to the base.

    Example::

        opt = Lookahead(torch.optim.AdamW(model.parameters(), lr=3e-4), sync_period=5)

    Args:
        base_optimizer: the optimizer to wrap (any ``torch.optim.Optimizer``:
            torch's, holocron_optim's or another wrapper).
        sync_rate: how far the slow weights move toward the fast ones at each
            sync, in [0, 1]. Default `0.5`.
        sync_period: number of base optimizer steps between syncs, an int >= 1.
            Default `6`.

    State: ``slow_params`` (per group, copies of the parameters, taken at
    construction and in ``add_param_group``) and ``fast_steps`` (base steps
    taken). ``state_dict()`` has the reference's layout (``state``,
    ``param_groups``, ``base_state_dict``) plus the keys ``slow_params``,
    ``fast_steps``, ``sync_rate`` and ``sync_period``; a reference
    checkpoint still loads (the slow weights then come from the current
    parameters and the period restarts). Once the base has state, each
    parameter's entry of ``state`` also holds its slow weights
    (``slow_param``), and in ``state_dict()`` the base's state of it
    (``base_state``), while each group carries ``wrapper_settings`` (the
    counter and sync options, outermost wrapper first): a state dict reduced
    to ``state`` and ``param_groups``, as torch.distributed.checkpoint keeps
    it, loads too.

    Differences from the reference (pylocron 0.3.0):
        - the wrapper's ``param_groups`` are the base's, so an LR scheduler
          attached to the wrapper drives the base optimizer's lr; in the
          reference it changes only the wrapper's own copy;
        - checkpoints hold the slow weights and the step counter, and a
          resumed run continues exactly; a run resumed from the reference's
          restarts from wrong slow weights.

    As a torch.optim optimizer: ``defaults`` holds the base's defaults plus
    ``sync_rate`` and ``sync_period`` (so OneCycleLR and CyclicLR cycle the
    base's momentum); ``state_dict()["param_groups"]`` are the base's groups
    as torch lays them out (``param_names`` included), and on load their
    hyper-parameters win over the nested copy, so a load pre-hook may edit
    them; what is put in the wrapper's own ``state`` is saved and restored.
    Global step hooks (``torch.optim.optimizer.register_optimizer_step_*_hook``)
    fire once per step, for the wrapper (not again for its base); instance
    hooks for their optimizer, the base's when the wrapper steps it. Complex
    parameters are taken where the base takes them (torch's Adam and SGD do),
    through their real views.
    """

    def __init__(self, base_optimizer: Optimizer, sync_rate: float = 0.5, sync_period: int = 6) -> None:
        if not isinstance(base_optimizer, Optimizer):
            raise TypeError(
                f"{type(self).__name__}: base_optimizer must be a torch.optim.Optimizer, "
                f"got {type(base_optimizer).__name__}"
            )
        sync_rate, sync_period = _check_sync_options(sync_rate, sync_period)
        # torch.optim.Optimizer's bookkeeping, without its param-group handling.
        # The base's defaults too: schedulers read them from the optimizer they
        # are given (OneCycleLR and CyclicLR look for `betas` or `momentum`),
        # and the wrapper's param_groups are the base's.
        self.defaults = {**base_optimizer.defaults, "sync_rate": sync_rate, "sync_period": sync_period}
        self._optimizer_step_pre_hooks = OrderedDict()
        self._optimizer_step_post_hooks = OrderedDict()
        self._optimizer_state_dict_pre_hooks = OrderedDict()
        self._optimizer_state_dict_post_hooks = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()
        self._patch_step_function()
        self._state: defaultdict = defaultdict(dict)
        self.base_optimizer = base_optimizer
        # A tensor, advanced by the step op: a compiled step has no branch on
        # a Python int that changes every step (each value would recompile).
        self._fast_steps = torch.zeros((), dtype=torch.int64)
        self.slow_params: list[list[torch.Tensor]] = []
        self._mirror_new_groups()

    # torch.optim.Optimizer pickles only defaults/state/param_groups; the
    # wrapper's groups live in its base, so it pickles its whole dict.
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        # An LR scheduler patches `step` on the instance, bound to this object.
        state.pop("step", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Pickles of earlier versions held the counters as plain attributes.
        if "state" in state:
            state["_state"] = state.pop("state")
        if not isinstance(state.get("_fast_steps"), torch.Tensor):
            state["_fast_steps"] = torch.tensor(int(state.pop("fast_steps", 0)), dtype=torch.int64)
        if "last_sync_rate" in state:
            state["_last_sync_rate"] = torch.tensor(float(state.pop("last_sync_rate")), dtype=torch.float64)
        self.__dict__.update(state)
        self._patch_step_function()

    @property
    def state(self) -> defaultdict:  # type: ignore[override]
        """Per-parameter state: what users or hooks put there and, once the
        base has state, the wrapper's own tensors (see the class docstring)."""
        self._sync_state_entries()
        return self._state

    @state.setter
    def state(self, value: defaultdict) -> None:
        self._state = value

    # The wrapper's groups are the base's: schedulers and users setting
    # group["lr"] on the wrapper set the base's lr.
    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.base_optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.base_optimizer.param_groups = value

    def _fast_params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def _flat_slow(self) -> list[torch.Tensor]:
        return [p for group in self.slow_params for p in group]

    def _mirror_new_groups(self) -> None:
        for index, (group, slow) in enumerate(zip(self.param_groups, self.slow_params)):
            if len(group["params"]) != len(slow):
                raise RuntimeError(
                    f"{type(self).__name__}: group {index} has {len(group['params'])} parameters and "
                    f"{len(slow)} slow copies: its parameters were replaced after the wrapper was made "
                    "(DeepSpeed ZeRO does: call holocron_optim.deepspeed.zero_aware(engine) after "
                    "deepspeed.initialize)"
                )
        new_groups = self.param_groups[len(self.slow_params):]
        for index, group in enumerate(new_groups, len(self.slow_params)):
            self._check_wrappable(group["params"], index)
        for group in new_groups:
            self._has_complex = getattr(self, "_has_complex", False) or any(p.is_complex() for p in group["params"])
            # The slow weights follow the base's state precision, and take Kahan-compensated
            # weights as p + c (a base that has stepped already).
            dtype = _precision_dtype(self.base_optimizer, group)
            comps = self._compensation(group["params"]).get("kahan_comps") or [None] * len(group["params"])
            self.slow_params.append([
                (p.detach() if c is None or c.numel() == 0 else p.detach().float() + c.float()).to(
                    dtype or p.dtype, copy=True)
                for p, c in zip(group["params"], comps)])
            self._add_group_state(group)

    def _check_copies_fit(self) -> None:
        """Before the base moves anything: the wrapper's copies (slow weights, Scout's statistics)
        still fit their parameters in shape, dtype and device. A parameter converted or moved in
        place since they were taken (`model.double()`, `model.to(device)`, `p.data = ...`) is
        taken anew before the first step; after it, the step is refused, where syncing would
        round the weights to the copies' dtype or fail once the base has stepped."""
        # One C++ check per dtype the copies must have: a group's state precision, or (None) each
        # parameter's own.
        buckets: dict[torch.dtype | None, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        for _, _, params, _, copies, dtype in self._copies():
            held = buckets.setdefault(dtype, ([], []))
            held[0].extend(params)
            held[1].extend(copies)
        name = type(self).__name__
        try:
            for dtype, (params, copies) in buckets.items():
                if getattr(self, "_has_complex", False):
                    params, copies = ([torch.view_as_real(t) if t.is_complex() else t for t in ts] for ts in (params, copies))
                # Copies of the parameters' own dtype are checked as gradients are (their shape,
                # dtype and device): one list fewer to hand over than as state of a given dtype.
                distributed.call_on_locals(
                    lambda params, copies, dtype=dtype: ops.validate_group(
                        optimizer=name, params=params, grads=copies, buffers=[], owners=[], steps=[])
                    if dtype is None else ops.validate_group(
                        optimizer=name, params=params, grads=params, buffers=copies, owners=list(range(len(copies))),
                        steps=[], state_dtype=dtype),
                    params, copies)
        except (RuntimeError, ValueError):
            if not self.fast_steps and not self._registered:
                self._retake_from_params()
                return
            self._refuse_misfit()
            raise

    def _syncs_next(self) -> bool:
        """Whether the next step syncs, or is the first (when copies that no longer fit are taken
        anew). The slow weights are read only then: a parameter changed meanwhile is refused by the
        sync's check, still before its base moves, and the other steps pay for no check of them."""
        steps = self.fast_steps
        return steps == 0 or (steps + 1) % int(self.defaults["sync_period"]) == 0

    def _refuse_misfit(self) -> None:
        """Raises for the first copy that does not fit its parameter (the check above failed)."""
        for index, group, params, what, copies, dtype in self._copies():
            for i, (p, t) in enumerate(zip(params, copies)):
                expected = dtype or p.dtype
                if t.shape != p.shape or t.device != p.device or t.dtype != expected:
                    why = "" if dtype is None else f", the group's state_precision {group.get('state_precision')!r}"
                    raise RuntimeError(
                        f"{type(self).__name__}: parameter {i} of group {index} is now {tuple(p.shape)} {p.dtype} "
                        f"on {p.device}, and its {what} {tuple(t.shape)} {t.dtype} on {t.device} where "
                        f"{expected}{why} is expected: neither a parameter's shape, dtype or device nor a "
                        "group's state_precision can change after the wrapper's first step (convert or move "
                        "the model before making its optimizers)")

    def _copies(self) -> Iterator[tuple[int, dict[str, Any], list[torch.Tensor], str, list[torch.Tensor],
                                        torch.dtype | None]]:
        """Every copy the next step reads, group by group: (group index, group, parameters, what,
        copies, the dtype they must have or None for each parameter's)."""
        syncing = self._syncs_next()
        start = 0
        for index, (group, slow) in enumerate(zip(self.param_groups, self.slow_params)):
            params = group["params"]
            for what, copies, dtype in self._copies_of(group, slow, slice(start, start + len(params)), syncing):
                yield index, group, params, what, copies, dtype
            start += len(params)

    def _copies_of(self, group: dict[str, Any], slow: list[torch.Tensor], indices: slice,
                   syncing: bool) -> list[tuple[str, list[torch.Tensor], torch.dtype | None]]:
        """The wrapper's copies of a group's parameters that the next step reads (`indices`: theirs
        among all parameters; `syncing`: `_syncs_next()`), with the dtype each must have (None:
        its parameter's): (what, tensors, dtype). Slow weights follow the base's state precision."""
        return [("slow weight", slow, _precision_dtype(self.base_optimizer, group))] if syncing else []

    def _check_wrappable(self, params: list[Any], group_index: int) -> None:
        """The sync and Scout's statistics are defined for floating-point weights
        (a complex one through its real view): others are refused before the
        base optimizer moves any of them."""
        for i, p in enumerate(params):
            if isinstance(p, torch.Tensor) and not (p.is_floating_point() or p.is_complex()):
                raise RuntimeError(
                    f"{type(self).__name__}: parameter {i} of group {group_index} has dtype {p.dtype}; "
                    "only floating-point and complex parameters can be wrapped"
                )

    def _call(self, op: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``op`` on the local tensors, complex ones as their real views: as
        torch's optimizers do, a complex weight is its real and imaginary parts
        (the sync interpolates each; Scout's statistics count each)."""
        if getattr(self, "_has_complex", False):
            def real(arg: Any) -> Any:
                return [torch.view_as_real(t) if t is not None and t.is_complex() else t for t in arg] if isinstance(arg, list) else arg

            args = tuple(real(arg) for arg in args)
            kwargs = {key: real(value) for key, value in kwargs.items()}
        return distributed.call_on_locals(op, *args, **kwargs)

    def _add_group_state(self, group: dict[str, Any]) -> None:
        pass

    def _clear_group_states(self) -> None:
        pass

    def _retake_from_params(self) -> None:
        """The slow weights (and Scout's statistics) taken anew from the current
        parameters, before a first step: for a caller that replaced the base's
        parameters after the wrapper was made (DeepSpeed's flat partitions)."""
        if self.fast_steps or self._registered:
            raise RuntimeError(f"{type(self).__name__}: its parameters can be replaced only before its first step")
        if isinstance(self.base_optimizer, Lookahead):
            self.base_optimizer._retake_from_params()
        self.slow_params = []
        self._clear_group_states()
        self._mirror_new_groups()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Adds a group to the base optimizer and takes slow copies of its parameters."""
        self._mirror_new_groups()
        self._check_wrappable(_group_params(param_group), len(self.param_groups))
        self.base_optimizer.add_param_group(param_group)
        self._mirror_new_groups()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none)

    @property
    def fast_steps(self) -> int:
        """Steps of the base optimizer so far (it syncs when this is a multiple of sync_period)."""
        return int(self._fast_steps)

    @fast_steps.setter
    def fast_steps(self, value: int) -> None:
        self._fast_steps.fill_(value)

    # The wrapper's per-parameter tensors (slow weights, Scout's statistics) are
    # also entries of `state`, under these keys, once it has stepped: so the
    # "state" of its state_dict holds all a checkpoint needs per parameter,
    # the layout torch.distributed.checkpoint keeps (it drops other top-level
    # keys), and `state` is not empty once trained (DCP would otherwise take
    # a zero-lr step to make it).
    _OWN_KEYS = ("slow_param",)
    _BASE_KEY = "base_state"
    _SETTINGS_KEY = "wrapper_settings"

    def _own_tensors(self) -> dict[str, list[torch.Tensor]]:
        return {"slow_param": self._flat_slow()}

    def _sync_state_entries(self) -> None:
        """Puts the wrapper's tensors in `state` once the base has state or the wrapper has
        stepped (a fresh pair stays empty, so that DCP makes its state by a zero-lr step before
        loading into it; a base that keeps no state, SGD without momentum, still gets entries,
        which DCP's checkpoint is made of), and again when groups were added or the tensors
        replaced by a load."""
        fast = self._fast_params()
        if self._registered == len(fast) or not (self.base_optimizer.state or self._stepped):
            return
        for key, tensors in self._own_tensors().items():
            for p, t in zip(fast, tensors):
                self._state[p][key] = t
        self._registered = len(fast)

    _registered = 0
    # Set by a step, and by a load of a checkpoint past its first (fast_steps holds it as a tensor,
    # whose read a compiled step could not make).
    _stepped = False

    def _compensation(self, fast: list[torch.Tensor]) -> dict[str, Any]:
        """The sync's `kahan_comps`: the base's Kahan compensation of each fast weight whose group
        has `kahan_summation` (None for the others), so that the sync reads p + c and leaves
        p + c equal to the slow weight; nothing when no group has it."""
        base = self.base_optimizer
        while isinstance(base, Lookahead):
            base = base.base_optimizer
        if not isinstance(base, FusedStep):
            return {}
        compensated = {id(p) for group in base.param_groups if base._kahan(group) for p in group["params"]}
        if not compensated:
            return {}
        comps = [base.state.get(p, {}).get("kahan_comp") if id(p) in compensated and p.dtype in KAHAN_DTYPES else None
                 for p in fast]
        return {"kahan_comps": compensation_list(fast, comps)}

    def _check_base(self) -> None:
        """Raises, before anything changes, for a base this wrapper cannot step as it is (Scout's
        refusal of Kahan-compensated weights); Lookahead takes any."""

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        if torch.compiler.is_compiling() and any(distributed.any_dtensor(group["params"]) for group in self.param_groups):
            return run_eagerly(self.step, closure)
        self._check_base()
        self._mirror_new_groups()
        if not torch.compiler.is_compiling():
            self._check_copies_fit()
        found_inf = getattr(self, "found_inf", None)
        compiling = torch.compiler.is_compiling()
        if found_inf is None:
            loss = _step_without_global_hooks(self.base_optimizer, closure)
        elif not compiling and bool(found_inf.item()):  # GradScaler found an inf or NaN: nothing moves, nothing counts
            if closure is None:
                return None
            with torch.enable_grad():
                return closure()
        else:
            # Compiled, the base and the op below skip the step themselves on found_inf (no host read here).
            loss = self._base_step_with_scaling(closure, found_inf)
        with torch.no_grad():
            self._advance(found_inf)
        self._stepped = True
        self._sync_state_entries()
        return loss

    @property
    def _step_supports_amp_scaling(self) -> bool:
        """GradScaler hands its scale to the wrapper when the base takes it."""
        return bool(getattr(self.base_optimizer, "_step_supports_amp_scaling", False))

    def _base_step_with_scaling(self, closure: Callable[[], Any] | None, found_inf: torch.Tensor) -> Any:
        base = self.base_optimizer
        base.grad_scale = getattr(self, "grad_scale", None)  # type: ignore[attr-defined]
        base.found_inf = found_inf  # type: ignore[attr-defined]
        try:
            return _step_without_global_hooks(base, closure)
        finally:
            del base.grad_scale, base.found_inf  # type: ignore[attr-defined]

    def _advance(self, found_inf: torch.Tensor | None) -> None:
        """Counts the base's step and syncs at the end of a period (one op: no Python branch)."""
        fast = self._fast_params()
        self._call(
            ops.lookahead_step_, fast, slow=self._flat_slow(), fast_steps=self._fast_steps,
            sync_period=int(self.defaults["sync_period"]), sync_rate=float(self.defaults["sync_rate"]),
            found_inf=found_inf, **self._compensation(fast),
        )

    @torch.no_grad()
    def sync_params(self, sync_rate: float = 0.0) -> None:
        """slow += sync_rate * (fast - slow); fast = slow."""
        fast = self._fast_params()
        self._call(ops.lookahead_sync_, fast, slow=self._flat_slow(), sync_rate=float(sync_rate),
                   **self._compensation(fast))

    def state_dict(self) -> dict[str, Any]:
        """The reference's layout (state, param_groups, base_state_dict), plus
        the slow weights and the step counter."""
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        base_state_dict = self.base_optimizer.state_dict()
        # The base's groups (hyper-parameters, param_names, and torch's indices:
        # one per distinct parameter), as torch.optim lays them out, with the
        # wrapper's counter and options first in `wrapper_settings` (a wrapped
        # wrapper's follow).
        settings = {"fast_steps": self.fast_steps, "sync_rate": self.defaults["sync_rate"],
                    "sync_period": self.defaults["sync_period"], **self._extra_settings()}
        param_groups = []
        for group in base_state_dict["param_groups"]:
            group = dict(group)
            group["wrapper_settings"] = [settings, *group.get("wrapper_settings", [])]
            param_groups.append(group)
        # One copy of each of the wrapper's tensors, shared by the top-level
        # keys and the per-parameter entries (torch.save writes it once).
        self._sync_state_entries()
        copies = {key: [t.clone() for t in tensors] for key, tensors in self._own_tensors().items()}
        own_state = self._without_own_entries(self._pack_own_state())
        if self._registered:
            indices = self._param_indices()
            base_state = base_state_dict["state"]
            keys = list(copies)
            for p, values in zip(self._fast_params(), zip(*copies.values())):
                index = indices[id(p)]
                entry = dict(own_state.get(index, {}))
                entry.update(zip(keys, values))
                if index in base_state:
                    entry[self._BASE_KEY] = base_state[index]
                own_state[index] = entry
        state_dict = {
            "state": own_state,
            "param_groups": param_groups,
            "base_state_dict": base_state_dict,
            "fast_steps": self.fast_steps,
            "sync_rate": self.defaults["sync_rate"],
            "sync_period": self.defaults["sync_period"],
            "slow_params": copies["slow_param"],
            **self._extra_state(copies),
        }
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, state_dict)
            if result is not None:
                state_dict = result
        return state_dict

    def _extra_state(self, copies: dict[str, list[torch.Tensor]]) -> dict[str, Any]:
        return {}

    def _param_indices(self) -> dict[int, int]:
        """torch.optim's numbering: groups in order, one index per distinct parameter."""
        indices: dict[int, int] = {}
        for group in self.param_groups:
            for p in group["params"]:
                indices.setdefault(id(p), len(indices))
        return indices

    def _pack_own_state(self) -> dict[Any, Any]:
        # Besides the wrapper's own tensors (_sync_state_entries), what is in
        # `state` was put by the user or a hook, and travels as torch.optim's would.
        indices = self._param_indices()
        return {indices[id(k)] if isinstance(k, torch.Tensor) else k: v for k, v in self._state.items()}

    def _unpack_own_state(self, packed: Any) -> defaultdict:
        by_index: dict[int, torch.Tensor] = {}
        params = {id(p): p for group in self.param_groups for p in group["params"]}
        for param_id, index in self._param_indices().items():
            by_index[index] = params[param_id]
        state: defaultdict = defaultdict(dict)
        for key, value in (packed or {}).items():
            param = by_index.get(key) if isinstance(key, int) else None
            state[param if param is not None else key] = value
        return state

    def _check_tensors(self, name: str, tensors: Any, like: list[torch.Tensor]) -> None:
        """`tensors` fit `like`: dense, of the same shape, and of the same dtype or, for a
        floating-point one, of any floating-point dtype, converted by the load (as the base's load
        converts its state: a float64 checkpoint loads into a float32 model, another
        state_precision into this one)."""
        if not isinstance(tensors, (list, tuple)) or len(tensors) != len(like):
            raise ValueError(f"{type(self).__name__}: '{name}' must hold {len(like)} tensors")
        for index, (t, p) in enumerate(zip(tensors, like)):
            if (not isinstance(t, torch.Tensor) or t.layout != torch.strided or t.shape != p.shape
                    or not (t.dtype == p.dtype or (t.is_floating_point() and p.is_floating_point()))):
                held = (f"a {t.dtype} tensor of shape {tuple(t.shape)}" + ("" if t.layout == torch.strided else f", {t.layout}")
                        if isinstance(t, torch.Tensor) else f"{t!r:.80}")
                raise ValueError(
                    f"{type(self).__name__}: '{name}' holds {held} at {index}, for a parameter of shape "
                    f"{tuple(p.shape)} and dtype {p.dtype} (a dense tensor of its shape and dtype, or of another "
                    "floating-point dtype, which is converted)"
                )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads ours or the reference's (whose slow weights are then taken
        from the current parameters, as the reference would); checks
        everything before changing anything."""
        self._mirror_new_groups()
        if not isinstance(state_dict, dict):
            raise ValueError(f"{type(self).__name__}: a state dict must be a dict, got {type(state_dict).__name__}")
        state_dict = state_dict.copy()
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        name = type(self).__name__
        check_state_dict_layout(name, state_dict)
        if "base_state_dict" not in state_dict:
            state_dict = self._from_state_entries(state_dict)
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups) or any(
            len(saved["params"]) != len(group["params"]) for saved, group in zip(saved_groups, self.param_groups)
        ):
            raise ValueError(f"{name}: the loaded state dict's parameter groups do not match the optimizer's")
        if "base_state_dict" not in state_dict:
            raise ValueError(f"{name}: the loaded state dict has no 'base_state_dict'")
        fast = self._fast_params()
        slow = state_dict.get("slow_params")
        if slow is not None:
            self._check_tensors("slow_params", slow, fast)
        commit_extra = self._load_extra(state_dict, fast)
        sync_period = state_dict.get("sync_period", self.defaults["sync_period"])
        sync_rate = state_dict.get("sync_rate", self.defaults["sync_rate"])
        # A reference checkpoint has neither slow weights nor a counter: the
        # period restarts from the current weights.
        fast_steps = state_dict.get("fast_steps", 0) if slow is not None else 0
        sync_rate, sync_period = _check_sync_options(sync_rate, sync_period)
        if isinstance(fast_steps, bool) or not isinstance(fast_steps, int) or fast_steps < 0:
            raise ValueError(f"{name}: 'fast_steps' must be an integer >= 0, got {fast_steps!r}")

        own_state = self._unpack_own_state(self._without_own_entries(state_dict.get("state")))
        # In ours, the top-level groups are what users and load hooks see and edit (the
        # base's copy is nested): their hyper-parameters win. Each group keeps its own
        # state_precision, as the base's load keeps it. In the reference's (no slow weights),
        # the base's own groups hold the hyper-parameters it trained with, and the wrapper-level
        # ones may be a scheduler's values that never reached it (lr, betas): the base's win.
        kept = ("params", "param_names", self._SETTINGS_KEY, "state_precision")
        self._check_groups_to_install(state_dict["base_state_dict"], saved_groups, kept)
        self.base_optimizer.load_state_dict(state_dict["base_state_dict"])
        for group, saved in zip(self.param_groups, saved_groups):
            # The reference's: only what its base's groups lack (a scheduler's initial_lr).
            group.update({k: v for k, v in saved.items() if k not in kept and (slow is not None or k not in group)})
        self.state = own_state
        with torch.no_grad():
            source = slow if slow is not None else fast
            self.slow_params, index = [], 0
            for group in self.param_groups:
                count = len(group["params"])
                dtype = _precision_dtype(self.base_optimizer, group)
                self.slow_params.append([
                    t.detach().to(device=p.device, dtype=dtype or p.dtype, copy=True)
                    for t, p in zip(source[index : index + count], group["params"])
                ])
                index += count
        self.fast_steps = fast_steps
        self.defaults.update(self.base_optimizer.defaults)
        self.defaults["sync_period"] = sync_period
        self.defaults["sync_rate"] = sync_rate
        commit_extra()
        self._registered = 0  # the tensors were replaced: entries made anew
        self._stepped = fast_steps > 0
        self._sync_state_entries()
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def _check_groups_to_install(self, base_state_dict: Any, saved_groups: list[dict[str, Any]],
                                 kept: tuple[str, ...]) -> None:
        """The groups this load installs (the base's, with the top-level hyper-parameters over
        them), validated by our base optimizer as its own load validates groups, before anything
        changes. A base of torch's validates nothing at load, as torch.optim does not."""
        base = self.base_optimizer
        while isinstance(base, Lookahead):
            base = base.base_optimizer
        if not isinstance(base, FusedStep):
            return
        nested = base_state_dict.get("param_groups") if isinstance(base_state_dict, dict) else None
        if not isinstance(nested, list) or len(nested) != len(saved_groups):
            return  # the base's load refuses it, naming what is wrong
        candidates = [{**{k: v for k, v in inner.items() if k != self._SETTINGS_KEY},
                       **{k: v for k, v in outer.items() if k not in kept}}
                      for inner, outer in zip(nested, saved_groups)]
        base._check_loaded_groups(candidates)

    def _load_extra(self, state_dict: dict[str, Any], fast: list[torch.Tensor]) -> Callable[[], None]:
        return lambda: None

    def _extra_settings(self) -> dict[str, Any]:
        """A subclass's numbers beside the counter: top-level keys of state_dict(), and in each
        group's `wrapper_settings`, which torch.distributed.checkpoint keeps."""
        return {}

    def _without_own_entries(self, packed: Any) -> Any:
        """The saved `state` less what _sync_state_entries and state_dict put in its entries."""
        if not isinstance(packed, dict):
            return packed
        keys = (*self._OWN_KEYS, self._BASE_KEY)
        out = {}
        for index, entry in packed.items():
            if isinstance(entry, dict) and any(k in entry for k in keys):
                entry = {k: v for k, v in entry.items() if k not in keys}
                if not entry:
                    continue
            out[index] = entry
        return out

    def _from_state_entries(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """Our layout rebuilt from a state dict that kept only `state` and
        `param_groups` (torch.distributed.checkpoint's): the base's state and
        the wrapper's tensors from the per-parameter entries, the counter and
        settings from the groups."""
        name = type(self).__name__
        entries = state_dict["state"]
        groups = state_dict["param_groups"]
        indices = [i for group in groups for i in group["params"]]
        if not groups or not all(isinstance(entries.get(i), dict) and "slow_param" in entries[i] for i in indices):
            raise ValueError(f"{name}: the loaded state dict has no 'base_state_dict'")
        settings = groups[0].get(self._SETTINGS_KEY) or [{}]
        rebuilt = {
            "state": entries,
            "param_groups": groups,
            "base_state_dict": {
                "state": {i: entries[i][self._BASE_KEY] for i in indices if self._BASE_KEY in entries[i]},
                "param_groups": [self._inner_group(g) for g in groups],
            },
            "slow_params": [entries[i]["slow_param"] for i in indices],
            **settings[0],
        }
        rebuilt.update(self._extra_from_entries(entries, indices))
        return rebuilt

    def _inner_group(self, group: dict[str, Any]) -> dict[str, Any]:
        """A saved group as the base saved it: the settings of wrappers inside this one stay."""
        inner = {k: v for k, v in group.items() if k != self._SETTINGS_KEY}
        if len(group.get(self._SETTINGS_KEY) or []) > 1:
            inner[self._SETTINGS_KEY] = group[self._SETTINGS_KEY][1:]
        return inner

    def _extra_from_entries(self, entries: dict[Any, Any], indices: list[int]) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        base = repr(self.base_optimizer).replace("\n", "\n\t")
        args = "".join(f"\n{k}={self.defaults[k]}," for k in ("sync_rate", "sync_period"))
        return f"{type(self).__name__} (\nbase_optimizer={base},{args}\n)"


class Scout(Lookahead):
    """Scout: Lookahead whose sync rate adapts to how consistently the weights moved.

    Holocron's own variant of Lookahead (by the author of Holocron; it has no
    paper of its own), built on Michael R. Zhang, James Lucas, Geoffrey Hinton,
    Jimmy Ba, "Lookahead Optimizer: k steps forward, 1 step back", 2019,
    https://arxiv.org/abs/1907.08610

    At each sync the rate is ``max(1 - coherence, sync_rate)``, the coherence
    being the mean, over parameters, of the mean over elements of
    ``std(u) / max|u - mean(u)|``, ``u`` being the ``sync_period`` successive
    per-step changes of that element (std unbiased, over the steps). The rate
    of the last sync is ``last_sync_rate`` (NaN before the first).

    Args:
        base_optimizer: the optimizer to wrap (any ``torch.optim.Optimizer``:
            torch's, holocron_optim's or another wrapper).
        sync_rate: lower bound of the adaptive rate, in [0, 1]. Default `0.5`.
        sync_period: number of base optimizer steps between syncs, an int >= 1.
            Default `6`.

    State: ``slow_params`` (per group, copies of the parameters, taken at
    construction and in ``add_param_group``) and ``fast_steps`` (base steps
    taken). ``state_dict()`` has the reference's layout (``state``,
    ``param_groups``, ``base_state_dict``) plus the keys ``slow_params``,
    ``fast_steps``, ``sync_rate``, ``sync_period``, ``scout_stats`` and
    ``last_sync_rate``; a reference checkpoint still loads (the slow weights
    then come from the current parameters, the period restarts and
    ``last_sync_rate`` is NaN). ``scout_stats`` holds running
    per-element statistics of the period's changes (``prev``, ``mean``, ``m2``,
    ``max``, ``min``; float32 for half and bfloat16 parameters).

    Differences from the reference (pylocron 0.3.0):
        - running per-element statistics instead of a growing stack of
          parameter copies: fixed memory, one pass per step, the same sync rate;
        - elements whose changes did not vary over the period (0/0) are left
          out of the coherence, so the rate is always in ``[sync_rate, 1]``;
          the reference lets the NaN through and silently resets every fast
          weight to its slow copy;
        - the wrapper's ``param_groups`` are the base's, so an LR scheduler
          attached to the wrapper drives the base optimizer's lr; in the
          reference it changes only the wrapper's own copy;
        - checkpoints hold the slow weights, the step counter and the
          statistics, and a resumed run continues exactly; a run resumed from
          the reference's restarts from wrong slow weights.
    """

    def __init__(self, base_optimizer: Optimizer, sync_rate: float = 0.5, sync_period: int = 6) -> None:
        self.scout_stats: dict[str, list[torch.Tensor]] = {key: [] for key in _SCOUT_STATS}
        self._last_sync_rate = torch.full((), math.nan, dtype=torch.float64)
        super().__init__(base_optimizer, sync_rate, sync_period)

    @property
    def last_sync_rate(self) -> float:
        """The rate of the last sync, ``max(1 - coherence, sync_rate)`` (NaN before the first)."""
        return float(self._last_sync_rate)

    @last_sync_rate.setter
    def last_sync_rate(self, value: float) -> None:
        self._last_sync_rate.fill_(value)

    def _clear_group_states(self) -> None:
        self.scout_stats = {key: [] for key in _SCOUT_STATS}

    def _add_group_state(self, group: dict[str, Any]) -> None:
        for p in group["params"]:
            # The base's state dtype; for its parameters' own, float32 for half and bfloat16 ones.
            dtype = (_precision_dtype(self.base_optimizer, group)
                     or (torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else p.dtype))
            self.scout_stats["prev"].append(p.detach().clone())
            for key in _SCOUT_STATS[1:]:
                self.scout_stats[key].append(torch.zeros_like(p, dtype=dtype))

    def _copies_of(self, group: dict[str, Any], slow: list[torch.Tensor], indices: slice,
                   syncing: bool) -> list[tuple[str, list[torch.Tensor], torch.dtype | None]]:
        # Every step reads the previous weights, of the parameters' own dtype whatever the
        # precision: a parameter converted, moved or resized in place is seen there (the other
        # statistics are made and loaded with their shape and device).
        return [*super()._copies_of(group, slow, indices, syncing),
                ("previous weight (Scout's statistics)", self.scout_stats["prev"][indices], None)]

    _OWN_KEYS = ("slow_param", *(f"scout_{key}" for key in _SCOUT_STATS))

    def _own_tensors(self) -> dict[str, list[torch.Tensor]]:
        return {"slow_param": self._flat_slow(), **{f"scout_{key}": self.scout_stats[key] for key in _SCOUT_STATS}}

    def _extra_from_entries(self, entries: dict[Any, Any], indices: list[int]) -> dict[str, Any]:
        if not all(f"scout_{key}" in entries[i] for i in indices for key in _SCOUT_STATS):
            return {}
        return {"scout_stats": {key: [entries[i][f"scout_{key}"] for i in indices] for key in _SCOUT_STATS}}

    def _advance(self, found_inf: torch.Tensor | None) -> None:
        """Folds the base's step into the statistics; at the end of a period,
        syncs at the rate the coherence gives and restarts them (one op)."""
        fast = self._fast_params()
        self._call(
            ops.scout_step_, fast, slow=self._flat_slow(),
            **{key: self.scout_stats[key] for key in _SCOUT_STATS},
            fast_steps=self._fast_steps, last_sync_rate=self._last_sync_rate,
            sync_period=int(self.defaults["sync_period"]), sync_rate=float(self.defaults["sync_rate"]),
            found_inf=found_inf, shard_groups=distributed.common_shard_groups(fast, "Scout") or None,
        )

    def _check_base(self) -> None:
        # Scout's statistics take the weights' changes from copies in the weights' dtype, which
        # cannot hold a Kahan-compensated weight (p + c): its adaptive rate would see only the
        # rounded moves. Refused before the base steps, so nothing changes.
        base = self.base_optimizer
        while isinstance(base, Lookahead):  # through wrappers too
            base = base.base_optimizer
        if isinstance(base, FusedStep):
            for index, group in enumerate(base.param_groups):
                if base._kahan(group):
                    raise NotImplementedError(
                        f"Scout: group {index} of its base {type(base).__name__} has kahan_summation=True, which "
                        "Scout does not support (its statistics would see only the rounded weights' moves); "
                        "Lookahead does")

    def _extra_state(self, copies: dict[str, list[torch.Tensor]]) -> dict[str, Any]:
        return {"scout_stats": {key: copies[f"scout_{key}"] for key in _SCOUT_STATS}, **self._extra_settings()}

    def _extra_settings(self) -> dict[str, Any]:
        # None before the first sync: a NaN would make two equal state dicts compare unequal.
        rate = self.last_sync_rate
        return {"last_sync_rate": None if math.isnan(rate) else rate}

    def _load_extra(self, state_dict: dict[str, Any], fast: list[torch.Tensor]) -> Callable[[], None]:
        saved = state_dict.get("scout_stats")
        # The rate of the last sync, as the C++ front's checkpoints keep it; NaN where the checkpoint
        # predates it (a reference one, or one of this library's before it was saved).
        last_rate = state_dict.get("last_sync_rate")
        if last_rate is None:
            last_rate = math.nan
        elif isinstance(last_rate, bool) or not isinstance(last_rate, (int, float)) or not 0 <= last_rate <= 1:
            raise ValueError(f"Scout: 'last_sync_rate' must be None or a number in [0, 1], got {last_rate!r:.80}")
        last_rate = float(last_rate)
        if saved is None:
            # A reference checkpoint: the period restarts from the current weights.
            def restart() -> None:
                self.scout_stats = {key: [] for key in _SCOUT_STATS}
                for group in self.param_groups:
                    self._add_group_state(group)
                self.last_sync_rate = last_rate

            return restart
        if not isinstance(saved, dict):
            raise ValueError(f"Scout: 'scout_stats' must be a dict of tensor lists, got {type(saved).__name__}")
        for key in _SCOUT_STATS:
            self._check_tensors(f"scout_stats/{key}", saved.get(key), fast)

        def commit() -> None:
            self.scout_stats = {
                key: [t.detach().to(device=p.device, dtype=cur.dtype).clone() for t, p, cur in zip(saved[key], fast, self.scout_stats[key])]
                for key in _SCOUT_STATS
            }
            self.last_sync_rate = last_rate

        return commit
