"""PyTorch's generic optimizer checks, run on our ten classes.

In the spirit of PyTorch's ``test/test_optim.py`` (``TestOptimRenewed``): each
class is described by an ``OptimizerInfo`` of ``torch.testing._internal.common_optimizers``
whose ``optim_inputs_func`` gives sample constructor arguments over every option
and branch, and whose ``optim_error_inputs_func`` gives invalid arguments with the
error each must raise. The tests below are parametrized over those infos and
samples (CPU; float32, and float64 where numbers are compared) and check what
torch checks of its own optimizers: errors, the loss going the right way (with LR
schedulers too), parameter groups, tensor learning rates, state_dict determinism,
hooks, named parameters, older checkpoints, step hooks, deepcopy, zero_grad,
steps without gradients, add_param_group, momentum-cycling schedulers,
``torch.amp.GradScaler`` and complex parameters.

The wrappers (Lookahead, Scout) take a base optimizer, not parameters: their
sample inputs name the base in ``kwargs["base"]`` (a ``Base``: a class and its
arguments, ours or torch's, possibly another wrapper), and ``make`` builds the
base on the parameters, then the wrapper. Arguments a test adds (``lr``, ...)
go to the innermost base.

The four findings this suite first made (a base that is not an optimizer,
state entries that are not a parameter's, a group's betas count, TAdam's
dof=0) are fixed; their tests now assert the fixed behaviour.

Needs ``expecttest`` (imported by torch's testing helpers; in requirements-dev.txt).
"""

from __future__ import annotations

import copy
import io
import math
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.nn import Parameter
from torch.optim.lr_scheduler import CyclicLR, OneCycleLR, ReduceLROnPlateau
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

try:
    from torch.testing._internal.common_optimizers import (
        ErrorOptimizerInput,
        OptimizerErrorEnum,
        OptimizerInfo,
        OptimizerInput,
        get_error_inputs_for_all_optims,
    )
except ModuleNotFoundError as error:  # torch's testing helpers import expecttest
    raise ImportError(
        f"torch.testing._internal.common_optimizers needs {error.name!r}: pip install -r requirements-dev.txt"
    ) from error

import holocron_optim as H
from registry import ALGORITHMS

WRAPPERS = (H.Lookahead, H.Scout)
INF, NAN = math.inf, math.nan
CONSTRUCTION, STEP = OptimizerErrorEnum.CONSTRUCTION_ERROR, OptimizerErrorEnum.STEP_ERROR

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tensors here are tiny: intra-op threads only add latency (much of it on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------
# Building optimizers, wrappers included
# ---------------------------------------------------------------------------
class Base:
    """A wrapper's base optimizer in a sample input: its class and arguments.

    Printable (sample ids) and deep-copyable (a tensor lr is copied per test)."""

    def __init__(self, cls: type, **kwargs: Any) -> None:
        self.cls, self.kwargs = cls, kwargs

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{self.cls.__name__}({args})"

    def build(self, params: Any, **overrides: Any) -> torch.optim.Optimizer:
        kwargs = {**self.kwargs, **overrides}
        if self.cls in WRAPPERS:
            return _wrap(self.cls, params, kwargs)
        return self.cls(params, **kwargs)


def _wrap(cls: type, params: Any, kwargs: dict[str, Any]) -> torch.optim.Optimizer:
    kwargs = dict(kwargs)
    base = kwargs.pop("base")
    own = {k: kwargs.pop(k) for k in ("sync_rate", "sync_period") if k in kwargs}
    if isinstance(base, Base):
        base = base.build(params, **kwargs)  # what is left goes to the base
    return cls(base, **own)


def is_wrapper(info: OptimizerInfo) -> bool:
    return info.optim_cls in WRAPPERS


def make(info: OptimizerInfo, params: Any, kwargs: dict[str, Any], **overrides: Any) -> torch.optim.Optimizer:
    """The optimizer of `info` on `params` with a copy of `kwargs` (plus `overrides`)."""
    kwargs = {**copy.deepcopy(kwargs), **overrides}
    if is_wrapper(info):
        return _wrap(info.optim_cls, params, kwargs)
    return info.optim_cls(params, **kwargs)


def chain(opt: torch.optim.Optimizer) -> list[torch.optim.Optimizer]:
    """The optimizer, then each base inside it."""
    out = [opt]
    while isinstance(out[-1], WRAPPERS):
        out.append(out[-1].base_optimizer)
    return out


# Settings kept as attributes of the optimizer, not as group options.
CONSTRUCTOR_ONLY = {name: algorithm.settings for name, algorithm in ALGORITHMS.items() if algorithm.settings}


def split_kwargs(info: OptimizerInfo, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(constructor-only arguments, group options) of a sample. A wrapper's
    arguments all go to its constructor (its groups are its base's)."""
    kwargs = copy.deepcopy(kwargs)
    if is_wrapper(info):
        return kwargs, {}
    own = CONSTRUCTOR_ONLY.get(info.name, ())
    return {k: v for k, v in kwargs.items() if k in own}, {k: v for k, v in kwargs.items() if k not in own}


def has_weight_decay(kwargs: dict[str, Any]) -> bool:
    if kwargs.get("weight_decay", 0) != 0:
        return True
    base = kwargs.get("base")
    return isinstance(base, Base) and has_weight_decay(base.kwargs)


# ---------------------------------------------------------------------------
# Sample inputs: every option value and branch
# ---------------------------------------------------------------------------
def _inputs(*specs: tuple[str, dict[str, Any]]) -> list[OptimizerInput]:
    return [OptimizerInput(params=None, kwargs=kwargs, desc=desc) for desc, kwargs in specs]


def _wrapper_inputs(extra: tuple[tuple[str, dict[str, Any]], ...]) -> list[OptimizerInput]:
    return _inputs(
        ("default", {"base": Base(torch.optim.Adam)}),
        ("torch_sgd_momentum", {"base": Base(torch.optim.SGD, lr=0.01, momentum=0.9), "sync_period": 3}),
        ("lamb", {"base": Base(H.LAMB, lr=0.01), "sync_rate": 0.8, "sync_period": 2}),
        ("adabelief_amsgrad_every_step", {"base": Base(H.AdaBelief, amsgrad=True), "sync_period": 1}),
        ("rate_one", {"base": Base(torch.optim.Adam), "sync_rate": 1.0, "sync_period": 4}),
        ("rate_zero", {"base": Base(torch.optim.Adam), "sync_rate": 0.0, "sync_period": 3}),
        ("adan_weight_decay", {"base": Base(H.Adan, weight_decay=0.02), "sync_period": 5}),
        ("tensor_lr", {"base": Base(torch.optim.Adam, lr=torch.tensor(0.01)), "sync_period": 2}),
        *extra,
    )


def inputs_lookahead(device=None, dtype=None):
    return _wrapper_inputs((("lars_nesterov", {"base": Base(H.LARS, momentum=0.9, nesterov=True)}),))


def inputs_scout(device=None, dtype=None):
    return _wrapper_inputs(
        (("over_lookahead", {"base": Base(H.Lookahead, base=Base(torch.optim.SGD, lr=0.01), sync_period=2),
                             "sync_period": 3}),)
    )


# ---------------------------------------------------------------------------
# Error inputs: every invalid argument
# ---------------------------------------------------------------------------
def _param(dtype=torch.float32) -> Parameter:
    return Parameter(torch.randn(2, 2, dtype=dtype))


def _err(desc, kwargs, regex, error_type=ValueError, params=None, on=CONSTRUCTION) -> ErrorOptimizerInput:
    return ErrorOptimizerInput(OptimizerInput(params=params, kwargs=kwargs, desc=desc), error_on=on,
                               error_type=error_type, error_regex=regex)


def _torch_generic_errors(device, dtype) -> list[ErrorOptimizerInput]:
    """torch.optim.Optimizer's own checks (params type, duplicates, names, tensor lr size)."""
    return get_error_inputs_for_all_optims(device, dtype)


def _sparse_grad_param(dtype) -> list[Parameter]:
    p = _param(dtype)
    p.grad = torch.randn(2, 2, dtype=dtype).to_sparse()
    return [p]


def _complex_param() -> list[Parameter]:
    p = Parameter(torch.randn(2, 2, dtype=torch.complex64))
    p.grad = torch.randn_like(p)
    return [p]


def _common_errors(name: str, dtype, *, adam_messages: bool = False, eps: bool = True,
                   betas: int | None = 2) -> list[ErrorOptimizerInput]:
    """The checks every one of our eight makes; AdaBelief and AdamP word a few as torch's Adam."""
    esc = re.escape
    errors = [
        _err("lr negative", {"lr": -1e-3},
             esc("Invalid learning rate: -0.001") if adam_messages else esc(f"{name}: invalid lr value: -0.001")),
        _err("lr nan", {"lr": NAN}, esc("Invalid learning rate value: nan")),
        _err("lr inf", {"lr": INF}, esc("Invalid learning rate value: inf")),
        _err("lr not a number", {"lr": "0.1"}, esc("Invalid learning rate value: 0.1")),
        _err("weight_decay negative", {"weight_decay": -0.01}, esc("Invalid weight_decay value: -0.01")),
        _err("weight_decay nan", {"weight_decay": NAN}, esc("Invalid weight_decay value: nan")),
        _err("weight_decay inf", {"weight_decay": INF}, esc("Invalid weight_decay value: inf")),
        _err("group lr negative", {}, esc(f"{name}: invalid lr value: -1"), params=[{"params": [_param(dtype)], "lr": -1.0}]),
        _err("group lr nan", {}, esc(f"{name}: invalid lr value: nan"), params=[{"params": [_param(dtype)], "lr": NAN}]),
        _err("group weight_decay negative", {}, esc(f"{name}: invalid weight_decay value: -0.5"),
             params=[{"params": [_param(dtype)], "weight_decay": -0.5}]),
        _err("sparse gradient", {}, esc(f"{name} does not support sparse gradients"), RuntimeError,
             params=_sparse_grad_param(dtype), on=STEP),
        _err("complex parameter", {}, "only floating-point parameters can be optimized", RuntimeError,
             params=_complex_param(), on=STEP),
    ]
    if eps:
        errors += [
            _err("eps negative", {"eps": -1e-8},
                 esc("Invalid epsilon value: -1e-08") if adam_messages else esc(f"{name}: invalid eps value: -1e-08")),
            _err("eps nan", {"eps": NAN}, esc("Invalid epsilon value: nan")),
            _err("group eps negative", {}, esc(f"{name}: invalid eps value: -1"),
                 params=[{"params": [_param(dtype)], "eps": -1.0}]),
        ]
    if betas:
        good = (0.9, 0.99, 0.999)[:betas]
        for i in range(betas):
            for bad in (1.0, -0.1):
                value = tuple(bad if j == i else b for j, b in enumerate(good))
                regex = (esc(f"Invalid beta parameter at index {i}: {bad}") if adam_messages
                         else esc(f"{name}: invalid betas[{i}] value: {bad:g}"))
                errors.append(_err(f"betas[{i}]={bad}", {"betas": value}, regex))
            value = tuple(NAN if j == i else b for j, b in enumerate(good))
            errors.append(_err(f"betas[{i}] nan", {"betas": value}, esc(f"Invalid beta parameter at index {i} value: nan")))
        count = "three" if name == "Adan" else str(betas)
        errors += [
            _err("betas too few", {"betas": good[:-1]}, f"{name} requires {count} beta parameters"),
            _err("betas too many", {"betas": good + (0.9,)}, f"{name} requires {count} beta parameters"),
            _err("betas not a sequence", {"betas": 0.9}, f"{name} requires {count} beta parameters"),
            _err("group betas out of range", {}, esc(f"{name}: invalid betas[1] value: 1"),
                 params=[{"params": [_param(dtype)], "betas": good[:1] + (1.0,) + good[2:]}]),
            _err("group betas too few", {}, f"{name} requires ({count}|{len(good)}) beta parameters",
                 params=[{"params": [_param(dtype)], "betas": good[:-1]}]),
        ]
    return errors


def _scale_clip_errors(name: str) -> list[ErrorOptimizerInput]:
    esc = re.escape
    return [
        _err("scale_clip reversed", {"scale_clip": (2.0, 1.0)}, esc(f"{name}: invalid scale_clip[1] value: 1 (expected in [2, inf]")),
        _err("scale_clip low negative", {"scale_clip": (-1.0, 1.0)}, esc(f"{name}: invalid scale_clip[0] value: -1")),
        _err("scale_clip nan", {"scale_clip": (NAN, 1.0)}, esc(f"{name}: invalid scale_clip[0] value: nan")),
        _err("scale_clip one value", {"scale_clip": (1.0,)}, esc(f"{name}: scale_clip must be a (low, high) pair")),
        _err("scale_clip not a pair", {"scale_clip": 3.0}, esc(f"{name}: scale_clip must be a (low, high) pair")),
    ]


def _algorithm_inputs(algorithm) -> Callable[..., list[OptimizerInput]]:
    def inputs(device=None, dtype=None):
        return _inputs(*algorithm.samples)

    return inputs


def _algorithm_errors(algorithm) -> Callable[..., list[ErrorOptimizerInput]]:
    """torch's own checks, the common options' (from what the algorithm takes), then its own."""

    def errors(device, dtype):
        name = algorithm.name
        out = _torch_generic_errors(device, dtype) + _common_errors(
            name, dtype, adam_messages=algorithm.torch_adam_messages, eps=algorithm.eps,
            betas=algorithm.betas or None)
        if "scale_clip" in algorithm.cls._settings:
            out += _scale_clip_errors(name)
        for desc, options, message, in_group in algorithm.errors:
            if in_group:
                out.append(_err(desc, {}, re.escape(message), params=[{"params": [_param(dtype)], **options}]))
            else:
                out.append(_err(desc, options, re.escape(message)))
        return out

    return errors


def _wrapper_errors(device, dtype):
    rate = "expected positive float lower than 1 as sync_rate, received: "
    period = "expected positive integer as sync_period, received: "
    base = Base(torch.optim.SGD, lr=0.1)
    errors = [
        _err(f"sync_rate {value!r}", {"base": base, "sync_rate": value}, re.escape(rate + str(value)))
        for value in (-0.1, 1.5, NAN, INF, True, "0.5")
    ]
    errors += [
        _err(f"sync_period {value!r}", {"base": base, "sync_period": value}, re.escape(period + str(value)))
        for value in (0, -1, 2.5, 2.0, True, "6")
    ]
    errors += [
        _err("complex parameter of a base that refuses it", {"base": Base(H.LAMB, lr=0.1)},
             "only floating-point parameters can be optimized", RuntimeError, params=_complex_param(), on=STEP),
        _err("integer parameter", {"base": Base(torch.optim.SGD, lr=0.1)},
             "only floating-point and complex parameters can be wrapped", RuntimeError,
             params=[{"params": [_param(dtype)]}, {"params": [torch.zeros(2, dtype=torch.int64)]}]),
        _err("base is not an optimizer (a tensor)", {"base": torch.zeros(2)}, "Optimizer", TypeError),
        _err("base is not an optimizer (a list of parameters)", {"base": [_param(dtype)]}, "Optimizer", TypeError),
    ]
    return errors


# ---------------------------------------------------------------------------
# The infos
# ---------------------------------------------------------------------------
def _info(cls, inputs, errors, **kwargs) -> OptimizerInfo:
    return OptimizerInfo(
        cls,
        optim_inputs_func=inputs,
        optim_error_inputs_func=errors,
        supported_impls=(),  # no foreach / fused / differentiable flags
        supports_sparse=False,
        supports_complex=False,
        **kwargs,
    )


OPTIM_DB: list[OptimizerInfo] = [
    *(_info(a.cls, _algorithm_inputs(a), _algorithm_errors(a), not_og_supported_flags=a.not_og_supported_flags)
      for a in ALGORITHMS.values()),
    # Wrappers: their own checkpoint keys are top-level ones (WRAPPER_KEYS), not group flags.
    _info(H.Lookahead, inputs_lookahead, _wrapper_errors, not_og_supported_flags=()),
    _info(H.Scout, inputs_scout, _wrapper_errors, not_og_supported_flags=()),
]
# What our wrappers add to the reference's checkpoint layout (slow weights, the period's counter,
# Scout's statistics), so that a resumed run continues exactly.
WRAPPER_KEYS = ("slow_params", "fast_steps", "sync_rate", "sync_period", "scout_stats")

DTYPES = (torch.float32, torch.float64)


def _dtype_id(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def per_info(marks: Callable[[OptimizerInfo], list] | None = None, infos: list[OptimizerInfo] | None = None):
    params = [pytest.param(info, id=info.name, marks=marks(info) if marks else ()) for info in infos or OPTIM_DB]
    return pytest.mark.parametrize("info", params)


def per_input(dtypes=(torch.float32,), marks: Callable[[OptimizerInfo, OptimizerInput], list] | None = None):
    params = []
    for info in OPTIM_DB:
        for sample in info.optim_inputs_func(device="cpu"):
            for dtype in dtypes:
                ident = f"{info.name}-{sample.desc}" + (f"-{_dtype_id(dtype)}" if len(dtypes) > 1 else "")
                params.append(pytest.param(info, sample, dtype, id=ident, marks=marks(info, sample) if marks else ()))
    return pytest.mark.parametrize("info,sample,dtype", params)


def default_kwargs(info: OptimizerInfo) -> dict[str, Any]:
    return copy.deepcopy(info.optim_inputs_func(device="cpu")[0].kwargs)


# ---------------------------------------------------------------------------
# Helpers: the small problem, comparisons
# ---------------------------------------------------------------------------
def problem(dtype=torch.float32, contiguous=True, seed=0):
    """weight (10, 5), bias (10), input (5): loss = ||weight @ input + bias||^2."""
    gen = torch.Generator().manual_seed(seed)
    if contiguous:
        weight = torch.randn(10, 5, generator=gen, dtype=dtype)
        bias = torch.randn(10, generator=gen, dtype=dtype)
    else:
        weight = torch.randn(10, 5, 2, generator=gen, dtype=dtype)[..., 0]
        bias = torch.randn(10, 2, generator=gen, dtype=dtype)[..., 0]
    x = torch.randn(5, generator=gen, dtype=dtype)
    return Parameter(weight), Parameter(bias), x


def twin(*params: torch.Tensor) -> list[Parameter]:
    """Equal but not identical parameters."""
    with torch.no_grad():
        return [Parameter(p.clone()) for p in params]


def closure_for(opt, weight, bias, x):
    def closure():
        opt.zero_grad()
        loss = (weight.mv(x) + bias).pow(2).sum()
        loss.backward()
        return loss

    return closure


def assert_same(a: Any, b: Any, path: str = "") -> None:
    """Exact, recursive equality of state dicts (tensors: dtype, shape and values; NaN == NaN)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor), f"{path}: {type(a)} vs {type(b)}"
        assert a.dtype == b.dtype and a.shape == b.shape, f"{path}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
        assert torch.equal(a, b) or torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num()), \
            f"{path}: {a} vs {b}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys {sorted(map(str, a))} vs {sorted(map(str, b))}"
        for key in a:
            assert_same(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{path}: {a!r} vs {b!r}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        assert math.isnan(b), f"{path}: {a} vs {b}"
    else:
        assert type(a) is type(b) and a == b, f"{path}: {a!r} ({type(a).__name__}) vs {b!r} ({type(b).__name__})"


def without_param_names(state_dict: Any) -> Any:
    """A copy without 'param_names' at any level (a wrapper nests its base's groups)."""
    if isinstance(state_dict, dict):
        return {k: without_param_names(v) for k, v in state_dict.items() if k != "param_names"}
    if isinstance(state_dict, list):
        return [without_param_names(v) for v in state_dict]
    return state_dict


def params_of(opt) -> list[torch.Tensor]:
    return [p for group in opt.param_groups for p in group["params"]]


def snapshot(opt) -> tuple[list[torch.Tensor], dict[str, Any]]:
    return [p.detach().clone() for p in params_of(opt)], copy.deepcopy(opt.state_dict())


def momentum_of(group: dict[str, Any]) -> float:
    return group["betas"][0] if "betas" in group else group["momentum"]


# ---------------------------------------------------------------------------
# The infos themselves
# ---------------------------------------------------------------------------
@per_info()
def test_optim_infos_do_not_specify_global_cliquey_kwargs(info):
    for sample in info.optim_inputs_func(device="cpu"):
        assert not {"foreach", "fused", "differentiable"} & set(sample.kwargs)
    assert info.supported_impls == () and not info.supports_sparse and not info.supports_complex


@per_info()
@pytest.mark.parametrize("flag", ["foreach", "fused", "differentiable"])
def test_global_cliquey_flags_are_refused(info, flag):
    # supported_impls=(): none of our classes takes these arguments.
    weight, bias, _ = problem()
    if is_wrapper(info):
        base = torch.optim.SGD([weight, bias], lr=0.1)
        with pytest.raises(TypeError, match=flag):
            info.optim_cls(base, **{flag: True})
    else:
        with pytest.raises(TypeError, match=flag):
            info.optim_cls([weight, bias], **{flag: True})


@per_input()
def test_sample_inputs_build_and_print(info, sample, dtype):
    weight, bias, _ = problem(dtype)
    opt = make(info, [weight, bias], sample.kwargs)
    text = repr(opt)
    assert text.startswith(info.name)
    if is_wrapper(info):
        assert "base_optimizer=" in text and f"sync_rate={opt.defaults['sync_rate']}" in text


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------
def _error_cases():
    out = []
    for info in OPTIM_DB:
        for error in info.optim_error_inputs_func(device="cpu", dtype=torch.float32):
            desc = error.optimizer_error_input.desc
            marks = []
            out.append(pytest.param(info, error, id=f"{info.name}-{desc}", marks=marks))
    return out


@pytest.mark.parametrize("info,error", _error_cases())
def test_errors(info, error):
    sample = error.optimizer_error_input
    params = sample.params if sample.params is not None else [_param()]
    if issubclass(error.error_type, Warning):
        expect = pytest.warns(error.error_type, match=error.error_regex)
    else:
        expect = pytest.raises(error.error_type, match=error.error_regex)
    if error.error_on == CONSTRUCTION:
        with expect:
            make(info, params, sample.kwargs)
    else:
        opt = make(info, params, sample.kwargs)
        before = snapshot(opt)
        with expect:
            opt.step()
        # refused before anything changed
        for p, old in zip(params_of(opt), before[0]):
            assert torch.equal(p.detach(), old)
        assert_same(opt.state_dict(), before[1])


def went_right(kwargs, initial: float, final: float) -> bool:
    """torch's own tests' direction: a maximizing sample goes up."""
    return math.isfinite(final) and (final > initial if kwargs.get("maximize", False) else final < initial)


# ---------------------------------------------------------------------------
# The loss goes the right way
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "noncontiguous"])
@pytest.mark.parametrize("with_lrsched", [False, True], ids=["no_sched", "with_sched"])
@per_input(dtypes=DTYPES)
def test_forloop_goes_right_direction(info, sample, dtype, contiguous, with_lrsched):
    scheduler_sets = info.scheduler_inputs if with_lrsched else [[]]
    for make_schedulers in scheduler_sets:
        weight, bias, x = problem(dtype, contiguous)
        assert weight.is_contiguous() == contiguous
        opt = make(info, [weight, bias], sample.kwargs)
        schedulers = [s(opt) for s in make_schedulers]
        closure = closure_for(opt, weight, bias, x)
        initial = closure().item()
        for _ in range(20):
            loss = opt.step(closure)
            for scheduler in schedulers:
                if isinstance(scheduler, ReduceLROnPlateau):
                    scheduler.step(loss.detach())
                else:
                    scheduler.step()
        final = closure().item()
        assert went_right(sample.kwargs, initial, final)


@per_info()
@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
def test_param_group_with_lrscheduler_goes_right_direction(info, dtype):
    for make_schedulers in info.scheduler_inputs:
        weight, bias, x = problem(dtype)
        opt = make(info, [{"params": [weight]}, {"params": [bias], "lr": 0.01}], default_kwargs(info))
        schedulers = [s(opt) for s in make_schedulers]
        closure = closure_for(opt, weight, bias, x)
        initial = closure().item()
        for _ in range(20):
            loss = opt.step(closure)
            for scheduler in schedulers:
                scheduler.step(loss.detach()) if isinstance(scheduler, ReduceLROnPlateau) else scheduler.step()
        assert closure().item() < initial


# ---------------------------------------------------------------------------
# Parameter groups with different options
# ---------------------------------------------------------------------------
@per_input()
def test_param_groups_weight_decay(info, sample, dtype):
    own, group = split_kwargs(info, sample.kwargs)
    weight, bias, x = problem(dtype)
    opt = make(info, [{"params": [weight], **group}, {"params": [bias], **group, "weight_decay": 0.0}], own)
    assert opt.param_groups[1]["weight_decay"] == 0.0
    closure = closure_for(opt, weight, bias, x)
    initial = closure().item()
    for _ in range(20):
        opt.step(closure)
    assert went_right(sample.kwargs, initial, closure().item())


@per_input()
def test_param_groups_lr(info, sample, dtype):
    own, group = split_kwargs(info, sample.kwargs)
    group.setdefault("lr", 1e-3)
    weight, bias, x = problem(dtype)
    irrelevant = Parameter(torch.randn(2, dtype=dtype))
    kept = irrelevant.detach().clone()
    if is_wrapper(info):
        # the groups' lr, the outer one (1e-28) to the innermost base
        opt = make(info, [{"params": [weight, bias], "lr": 1e-3}, {"params": [irrelevant]}], own, lr=1e-28)
    else:
        opt = make(info, [{"params": [weight, bias], **group}, {"params": [irrelevant]}], own, lr=1e-28)
    closure = closure_for(opt, weight, bias, x)
    initial = closure().item()
    for _ in range(20):
        opt.zero_grad()
        loss = (weight.mv(x) + bias).pow(2).sum()
        loss.backward()
        irrelevant.grad = torch.rand_like(irrelevant)
        opt.step()
    assert went_right(sample.kwargs, initial, closure().item())
    assert torch.equal(irrelevant.detach(), kept)  # lr 1e-28: no visible step


@per_input(dtypes=DTYPES)
def test_tensor_lr(info, sample, dtype):
    kwargs = {k: v for k, v in sample.kwargs.items() if k != "lr"}  # a wrapper's base gets the lr below
    weight, bias, x = problem(dtype)
    weight_c, bias_c = twin(weight, bias)
    float_opt = make(info, [weight, bias], kwargs, lr=1e-3)
    # a float64 tensor holds 1e-3 exactly: the same numbers as the float lr
    tensor_opt = make(info, [weight_c, bias_c], kwargs, lr=torch.tensor(1e-3, dtype=torch.float64))
    for _ in range(5):
        float_opt.step(closure_for(float_opt, weight, bias, x))
        tensor_opt.step(closure_for(tensor_opt, weight_c, bias_c, x))
        torch.testing.assert_close(weight_c, weight)
        torch.testing.assert_close(bias_c, bias)
    assert isinstance(tensor_opt.param_groups[0]["lr"], torch.Tensor)


# ---------------------------------------------------------------------------
# Steps without gradients
# ---------------------------------------------------------------------------
@per_input()
def test_step_is_noop_when_params_have_no_grad(info, sample, dtype):
    # parameters that do not require grad, and a closure that gives none
    params = [torch.randn(2, 3, dtype=dtype) for _ in range(2)]
    old = [p.clone() for p in params]
    opt = make(info, params, sample.kwargs)
    opt.step(lambda: torch.tensor([1.0], dtype=dtype))
    for p, q in zip(params, old):
        assert torch.equal(p, q)
    assert all(len(chain(opt)[-1].state.get(p, {})) == 0 for p in params)


@per_input()
def test_step_with_all_none_grads_changes_nothing(info, sample, dtype):
    weight, bias, x = problem(dtype)
    opt = make(info, [weight, bias], sample.kwargs)
    closure = closure_for(opt, weight, bias, x)

    # fresh: no state is made, nothing moves
    params, state_dict = snapshot(opt)
    opt.step()
    for p, old in zip(params_of(opt), params):
        assert torch.equal(p.detach(), old)
    innermost = chain(opt)[-1]
    assert len(innermost.state) == 0

    # primed, then a step whose gradients are all None
    for _ in range(3):
        opt.step(closure)
    opt.zero_grad()  # set_to_none
    assert weight.grad is None and bias.grad is None
    params, state_dict = snapshot(opt)
    inner_state = copy.deepcopy(innermost.state_dict())
    opt.step()
    assert_same(innermost.state_dict(), inner_state)  # the base optimizer's state is untouched
    synced = any(w.fast_steps % w.defaults["sync_period"] == 0 for w in chain(opt)[:-1])
    if not synced:
        # (a wrapper counts every step(), gradients or not, as the reference does: one that
        # completes a period still syncs; only the innermost state is compared then)
        for p, old in zip(params_of(opt), params):
            assert torch.equal(p.detach(), old)
    if not is_wrapper(info):
        assert_same(opt.state_dict(), state_dict)


@per_input()
def test_step_is_noop_for_zero_grads(info, sample, dtype):
    if has_weight_decay(sample.kwargs):
        pytest.skip("weight decay moves the parameters even when the gradients are zero")
    param = Parameter(torch.randn(5, 1, dtype=dtype))
    old = param.detach().clone()
    opt = make(info, [param], sample.kwargs)
    param.grad = torch.zeros_like(param)
    opt.step(lambda: torch.tensor([1.0], dtype=dtype))
    assert torch.equal(param.detach(), old)


@per_input()
def test_non_empty_state(info, sample, dtype):
    model = torch.nn.Linear(5, 5).to(dtype)
    opt = make(info, model.parameters(), sample.kwargs)
    opt.zero_grad()
    model(torch.rand(2, 5, dtype=dtype)).sum().backward()
    opt.step()
    for state in chain(opt)[-1].state.values():
        assert len(state) > 0


# ---------------------------------------------------------------------------
# state_dict
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("named0,named1", [(False, False), (True, False), (False, True), (True, True)],
                         ids=["plain", "named_to_plain", "plain_to_named", "named"])
@per_input(dtypes=DTYPES)
def test_state_dict_deterministic(info, sample, dtype, named0, named1):
    def named(params, yes):
        return [(f"name{i}", p) for i, p in enumerate(params)] if yes else params

    weight, bias, x = problem(dtype)
    opt = make(info, named([weight, bias], named0), sample.kwargs)
    closure = closure_for(opt, weight, bias, x)
    for _ in range(10):
        opt.step(closure)

    weight_c, bias_c = twin(weight, bias)
    opt_c = make(info, named([weight_c, bias_c], named1), sample.kwargs)
    closure_c = closure_for(opt_c, weight_c, bias_c, x)
    saved = copy.deepcopy(opt.state_dict())
    loaded = copy.deepcopy(saved)
    opt_c.load_state_dict(loaded)
    assert_same(loaded, saved)  # loading leaves the dict it was given as it was

    for _ in range(10):
        opt.step(closure)
        opt_c.step(closure_c)
        assert torch.equal(weight, weight_c) and torch.equal(bias, bias_c)
    # equal, not identical, parameters: the same state dict (names are optional)
    assert_same(without_param_names(opt_c.state_dict()), without_param_names(opt.state_dict()))


@per_info()
def test_state_dict_repeated_params_have_one_index(info):
    weight, bias, x = problem()
    opt = make(info, [weight, bias], default_kwargs(info))
    opt.step(closure_for(opt, weight, bias, x))
    last = opt.state_dict()["param_groups"][-1]
    opt.param_groups.extend(opt.param_groups)  # the same parameters again (see torch #36831)
    assert_same(opt.state_dict()["param_groups"][-1], last)


@per_input()
def test_save_load_equality_with_weights_only(info, sample, dtype):
    weight, bias, x = problem(dtype)
    opt = make(info, [weight, bias], sample.kwargs)
    for _ in range(3):
        opt.step(closure_for(opt, weight, bias, x))
    saved = opt.state_dict()
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    assert_same(torch.load(buffer), saved)
    buffer.seek(0)
    assert_same(torch.load(buffer, weights_only=True), saved)


def _small_model(dtype=torch.float32):
    """Four named parameters of two modules (torch's tests use a Conv2d and a BatchNorm2d)."""
    gen = torch.Generator().manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3)).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=dtype))
    return model, torch.rand(5, 4, generator=gen, dtype=dtype)


def _fwd_bwd(opt, model, x):
    opt.zero_grad()
    loss = model(x).pow(2).sum()
    loss.backward()
    return loss


@per_input()
def test_can_load_older_state_dict(info, sample, dtype):
    model, x = _small_model(dtype)
    opt = make(info, model.parameters(), sample.kwargs)
    for _ in range(3):
        opt.step(lambda: _fwd_bwd(opt, model, x))
    older = copy.deepcopy(opt.state_dict())
    if is_wrapper(info):
        for key in WRAPPER_KEYS:  # the reference's layout: slow weights restart from the parameters
            older.pop(key, None)
    else:
        for group in older["param_groups"]:
            for flag in info.not_og_supported_flags:
                group.pop(flag, None)
    opt.load_state_dict(older)
    if not is_wrapper(info):
        for group in opt.param_groups:  # torch's __setstate__ (or the step) restores the defaults
            assert all(flag in group for flag in info.not_og_supported_flags if flag != "sma_inf")
    opt.step(lambda: _fwd_bwd(opt, model, x))
    if info.optim_cls is H.RaLars:
        assert all("sma_inf" in group for group in opt.param_groups)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _flip_steps(state_dict: Any) -> Any:
    """int step counters as tensors (torch.optim's layout) and tensor ones as floats (older torch)."""
    if isinstance(state_dict, dict):
        out = {}
        for key, value in state_dict.items():
            if key == "step" and isinstance(value, int):
                out[key] = torch.tensor(float(value))
            elif key == "step" and isinstance(value, torch.Tensor):
                out[key] = value.item()
            else:
                out[key] = _flip_steps(value)
        return out
    if isinstance(state_dict, list):
        return [_flip_steps(v) for v in state_dict]
    return state_dict


@per_input()
def test_load_state_dict_with_other_step_types(info, sample, dtype):
    weight, bias, x = problem(dtype)
    opt = make(info, [weight, bias], sample.kwargs)
    for _ in range(3):
        opt.step(closure_for(opt, weight, bias, x))
    saved = copy.deepcopy(opt.state_dict())
    runs = []
    for state_dict in (saved, _flip_steps(saved)):
        w, b = twin(weight, bias)
        other = make(info, [w, b], sample.kwargs)
        other.load_state_dict(copy.deepcopy(state_dict))
        for _ in range(3):
            other.step(closure_for(other, w, b, x))
        runs.append((w, b))
    (w1, b1), (w2, b2) = runs
    torch.testing.assert_close(w2, w1, rtol=0, atol=0)
    torch.testing.assert_close(b2, b1, rtol=0, atol=0)


@pytest.mark.parametrize("named0,named1", [(False, False), (True, False), (False, True), (True, True)],
                         ids=["plain", "named_to_plain", "plain_to_named", "named"])
@per_input()
def test_can_load_from_to_named_state_dict(info, sample, dtype, named0, named1):
    model, x = _small_model(dtype)
    names = [name for name, _ in model.named_parameters()]

    def run(build):
        """param_names after a named/plain optimizer loads a named/plain one's state dict."""
        first = build(model.named_parameters() if named0 else model.parameters())
        for _ in range(3):
            first.step(lambda: _fwd_bwd(first, model, x))
        saved = copy.deepcopy(first.state_dict())
        if named0:
            assert saved["param_groups"][0]["param_names"] == names
        second = build(model.named_parameters() if named1 else model.parameters())
        second.load_state_dict(saved)
        second.step(lambda: _fwd_bwd(second, model, x))
        state_dict = second.state_dict()
        names_now = [group.get("param_names") for group in state_dict["param_groups"]]
        nested = state_dict
        while "base_state_dict" in nested:  # a wrapper's base (and its base) say the same
            nested = nested["base_state_dict"]
            assert [group.get("param_names") for group in nested["param_groups"]] == names_now
        return names_now

    # what torch.optim.Adam does is what ours must do
    expected = run(lambda params: torch.optim.Adam(params, lr=1e-3))
    ours = run(lambda params: make(info, params, sample.kwargs))
    assert ours == expected
    assert expected == ([names] if named0 or named1 else [None])


# ---------------------------------------------------------------------------
# state_dict hooks
# ---------------------------------------------------------------------------
def _pre_hook(opt) -> None:
    opt.state["test"] = 1


def _post_hook(opt, state_dict):
    state_dict["ran_state_dict_pre_hook"] = state_dict["state"].pop("test", None) == 1
    return state_dict


def _sd_opt(info, dtype=torch.float32):
    weight, bias, x = problem(dtype)
    opt = make(info, [weight, bias], default_kwargs(info))
    opt.step(closure_for(opt, weight, bias, x))
    return opt


@per_info()
def test_state_dict_pre_hook(info):
    opt = _sd_opt(info)
    opt.register_state_dict_pre_hook(_pre_hook)
    assert opt.state_dict()["state"]["test"] == 1


@per_info()
def test_state_dict_post_hook(info):
    opt = _sd_opt(info)
    opt.register_state_dict_post_hook(_post_hook)
    saved = opt.state_dict()
    assert saved["ran_state_dict_pre_hook"] is False  # what the post hook adds is kept
    # a post hook may also return a new dict, which is then the state dict
    opt.register_state_dict_post_hook(lambda o, sd: {**sd, "extra": [1, 2]})
    saved = opt.state_dict()
    assert saved["extra"] == [1, 2] and "ran_state_dict_pre_hook" in saved


@per_info()
def test_state_dict_pre_post_hook(info):
    opt = _sd_opt(info)
    opt.register_state_dict_pre_hook(_pre_hook)
    opt.register_state_dict_post_hook(_post_hook)
    saved = opt.state_dict()
    assert "test" not in saved["state"] and saved["ran_state_dict_pre_hook"] is True


@per_info()
def test_state_dict_round_trip_with_non_parameter_state(info):
    # torch.optim.Optimizer keeps 'state' entries that are not parameters (see its load_state_dict)
    opt = _sd_opt(info)
    opt.register_state_dict_pre_hook(_pre_hook)
    saved = opt.state_dict()
    fresh = _sd_opt(info)
    fresh.load_state_dict(saved)
    assert fresh.state["test"] == 1
    opt.load_state_dict(saved)  # the round trip
    assert opt.state["test"] == 1


def _set_lr(value):
    def hook(opt, state_dict):
        state_dict["param_groups"][0]["lr"] = value

    return hook


def _replace_lr(value):
    def hook(opt, state_dict):
        new = copy.deepcopy(state_dict)
        new["param_groups"][0]["lr"] = value
        return new

    return hook


def _load_post_hook(opt) -> None:
    opt.state["ran_load_post_hook_with_lr"] = opt.param_groups[0]["lr"]


@per_info()
def test_load_state_dict_pre_hook_and_prepend(info):
    opt = _sd_opt(info)
    saved = opt.state_dict()
    opt.register_load_state_dict_pre_hook(_set_lr(0.002))
    opt.load_state_dict(saved)
    assert opt.param_groups[0]["lr"] == 0.002  # the pre hook's change is applied
    for inner in chain(opt)[1:]:
        assert inner.param_groups[0]["lr"] == 0.002  # and reaches a wrapper's base
    opt.register_load_state_dict_pre_hook(_replace_lr(0.003), prepend=True)
    opt.load_state_dict(saved)
    assert opt.param_groups[0]["lr"] == 0.002  # prepended: the other hook runs last


@per_info()
def test_load_state_dict_post_hook(info):
    opt = _sd_opt(info)
    opt.register_load_state_dict_post_hook(_load_post_hook)
    opt.load_state_dict(opt.state_dict())
    assert opt.state["ran_load_post_hook_with_lr"] == 1e-3


@per_info()
def test_load_state_dict_pre_post_hook(info):
    opt = _sd_opt(info)
    opt.register_load_state_dict_pre_hook(_replace_lr(0.003))
    opt.register_load_state_dict_post_hook(_load_post_hook)
    opt.load_state_dict(opt.state_dict())
    assert opt.state["ran_load_post_hook_with_lr"] == 0.003


# ---------------------------------------------------------------------------
# Step hooks
# ---------------------------------------------------------------------------
def _hook_opt(info):
    params = [torch.tensor([1.0, 1.0])]  # no grad: the step is a no-op, the hooks still run
    return make(info, params, default_kwargs(info))


@per_info()
def test_step_post_hook(info):
    opt = _hook_opt(info)
    data = [2]
    handle = opt.register_step_post_hook(lambda o, args, kwargs: data.append(data[-1] + 2))
    opt.step()
    opt.step()
    assert data[-1] == 6
    handle.remove()
    opt.step()
    assert data[-1] == 6


@per_info()
def test_step_pre_hook(info):
    opt = _hook_opt(info)
    data = [5]
    handle = opt.register_step_pre_hook(lambda o, args, kwargs: data.append(data[-1] + 2))
    opt.step()
    opt.step()
    assert data[-1] == 9
    handle.remove()
    opt.step()
    assert data[-1] == 9


def _base_sequence(opt) -> list[int]:
    """What one step of `opt`'s base chain adds to `data` inside the wrapper's own hooks:
    nothing: global hooks fire once per step, for the outermost optimizer."""
    return []


@per_info()
def test_step_all_hooks(info):
    opt = _hook_opt(info)
    other = torch.optim.SGD([torch.tensor([1.0, 1.0])], lr=0.1)
    data: list[int] = []
    handles = [
        register_optimizer_step_pre_hook(lambda o, a, k: data.append(0)),
        register_optimizer_step_post_hook(lambda o, a, k: data.append(5)),
        opt.register_step_pre_hook(lambda o, a, k: data.append(1)),
        opt.register_step_post_hook(lambda o, a, k: data.append(2)),
        other.register_step_pre_hook(lambda o, a, k: data.append(1)),
        other.register_step_post_hook(lambda o, a, k: data.append(2)),
    ]
    one_step = [0, 1, *_base_sequence(opt), 2, 5]
    try:
        opt.step()
        assert data == one_step
        other.step()
        assert data == one_step + [0, 1, 2, 5]
        opt.step()
        assert data == one_step + [0, 1, 2, 5] + one_step
    finally:
        for handle in handles:
            handle.remove()
    opt.step()
    other.step()
    assert data == one_step + [0, 1, 2, 5] + one_step


@per_input()
def test_global_step_hooks_count(info, sample, dtype):
    weight, bias, x = problem(dtype)
    opt = make(info, [weight, bias], sample.kwargs)
    base_hooks: list[Any] = []
    for inner in chain(opt)[1:]:
        inner.register_step_pre_hook(lambda o, a, k: base_hooks.append(o))
    pre, post = [], []
    handles = [register_optimizer_step_pre_hook(lambda o, a, k: pre.append(o)),
               register_optimizer_step_post_hook(lambda o, a, k: post.append(o))]
    try:
        for _ in range(3):
            opt.step(closure_for(opt, weight, bias, x))
    finally:
        for handle in handles:
            handle.remove()
    optimizers = chain(opt)
    # once per step() (as torch's own optimizers), seen with the outermost optimizer
    assert pre == post == [opt] * 3
    assert len(base_hooks) == 3 * (len(optimizers) - 1)  # a base's own hooks run when the wrapper steps it


# ---------------------------------------------------------------------------
# deepcopy, zero_grad, no_grad
# ---------------------------------------------------------------------------
@per_input()
def test_deepcopy_copies_all_public_attrs(info, sample, dtype):
    weight, bias, x = problem(dtype)
    opt = make(info, [weight, bias], sample.kwargs)
    for _ in range(3):
        opt.step(closure_for(opt, weight, bias, x))

    def public(obj):
        return {k for k in obj.__dict__ if not k.startswith("_")}

    copied = copy.deepcopy(opt)
    assert public(copied) == public(opt)
    for key in public(opt) - {"state", "param_groups", "base_optimizer", "defaults"}:
        assert_same(getattr(copied, key), getattr(opt, key), key)
    # (torch.optim.Optimizer.__setstate__ adds 'differentiable' to the copy's defaults)
    assert_same({k: v for k, v in copied.defaults.items() if k != "differentiable"},
                {k: v for k, v in opt.defaults.items() if k != "differentiable"}, "defaults")
    # the copy is independent: stepping it moves its own parameters only
    saved = copy.deepcopy(opt.state_dict())
    w_c, b_c = copied.param_groups[0]["params"][0], copied.param_groups[0]["params"][1]
    assert w_c is not weight
    copied.step(closure_for(copied, w_c, b_c, x))
    assert_same(opt.state_dict(), saved)
    assert not torch.equal(w_c, weight)


@per_info()
def test_zero_grad(info):
    weight, bias, x = problem()
    opt = make(info, [weight, bias], default_kwargs(info))
    closure_for(opt, weight, bias, x)()
    assert weight.grad is not None
    opt.zero_grad()  # set_to_none=True by default
    assert weight.grad is None and bias.grad is None
    closure_for(opt, weight, bias, x)()
    grad = weight.grad
    opt.zero_grad(set_to_none=False)
    assert weight.grad is grad and torch.count_nonzero(weight.grad) == 0 and torch.count_nonzero(bias.grad) == 0


@per_input()
def test_step_under_no_grad(info, sample, dtype):
    weight, bias, x = problem(dtype)
    weight_c, bias_c = twin(weight, bias)
    opt = make(info, [weight, bias], sample.kwargs)
    opt_c = make(info, [weight_c, bias_c], sample.kwargs)
    for _ in range(3):
        with torch.no_grad():  # the closure still gets gradients
            loss = opt.step(closure_for(opt, weight, bias, x))
        loss_c = opt_c.step(closure_for(opt_c, weight_c, bias_c, x))
        assert loss.item() == loss_c.item()
        assert torch.equal(weight, weight_c) and torch.equal(bias, bias_c)
    assert torch.is_grad_enabled()  # the mode is restored


# ---------------------------------------------------------------------------
# add_param_group
# ---------------------------------------------------------------------------
@per_input()
def test_add_param_group(info, sample, dtype):
    weight, bias, x = problem(dtype)
    opt = make(info, [weight], sample.kwargs)
    groups = len(opt.param_groups)

    # refused: a parameter already there, an invalid option (ours check a new
    # group's options; torch's Adam and SGD only check their constructor's); nothing is added
    with pytest.raises(ValueError, match="some parameters appear in more than one parameter group"):
        opt.add_param_group({"params": [weight]})
    if type(chain(opt)[-1]).__module__.startswith("holocron_optim"):
        with pytest.raises(ValueError, match="weight_decay"):
            opt.add_param_group({"params": [bias], "weight_decay": -1.0})
        with pytest.raises(ValueError, match="lr"):
            opt.add_param_group({"params": [bias], "lr": -1.0})
    assert len(opt.param_groups) == groups
    if is_wrapper(info):
        assert len(opt.slow_params) == groups

    opt.add_param_group({"params": [bias], "lr": 0.01, "weight_decay": 0.0})
    assert len(opt.param_groups) == groups + 1 and opt.param_groups[-1]["lr"] == 0.01
    if is_wrapper(info):
        assert len(opt.slow_params) == groups + 1
    old_bias = bias.detach().clone()
    closure = closure_for(opt, weight, bias, x)
    initial = closure().item()
    for _ in range(14):  # not a multiple of a sync period: a wrapper with sync_rate=0 has fast weights ahead
        opt.step(closure)
    assert not torch.equal(bias.detach(), old_bias)  # the new group is optimized
    assert went_right(sample.kwargs, initial, closure().item())


# ---------------------------------------------------------------------------
# Schedulers that cycle the momentum
# ---------------------------------------------------------------------------
MOMENTUM_SCHEDULERS = {
    "OneCycleLR": lambda opt: OneCycleLR(opt, max_lr=0.01, total_steps=12),
    "CyclicLR": lambda opt: CyclicLR(opt, base_lr=1e-3, max_lr=0.01, step_size_up=4),
}


@pytest.mark.parametrize("scheduler_name", list(MOMENTUM_SCHEDULERS))
@per_input()
def test_momentum_cycling_schedulers(info, sample, dtype, scheduler_name):
    # cycle_momentum=True (the default): betas[0] or momentum follows the scheduler
    weight, bias, x = problem(dtype)
    opt = make(info, [weight, bias], sample.kwargs)
    scheduler = MOMENTUM_SCHEDULERS[scheduler_name](opt)
    innermost = chain(opt)[-1]
    seen = [momentum_of(innermost.param_groups[0])]
    closure = closure_for(opt, weight, bias, x)
    initial = closure().item()
    for _ in range(8):
        opt.step(closure)
        scheduler.step()
        seen.append(momentum_of(innermost.param_groups[0]))
        assert float(innermost.param_groups[0]["lr"]) == pytest.approx(float(scheduler.get_last_lr()[0]))
    assert len(set(seen)) > 2  # cycled, in the optimizer that uses it
    assert went_right(sample.kwargs, initial, closure().item())


# ---------------------------------------------------------------------------
# GradScaler
# ---------------------------------------------------------------------------
@per_input(dtypes=DTYPES)
def test_grad_scaler(info, sample, dtype):
    weight, bias, x = problem(dtype)
    weight_c, bias_c = twin(weight, bias)
    opt = make(info, [weight, bias], sample.kwargs)
    plain = make(info, [weight_c, bias_c], sample.kwargs)
    scaler = torch.amp.GradScaler("cpu")
    for _ in range(3):
        opt.zero_grad()
        scaler.scale((weight.mv(x) + bias).pow(2).sum()).backward()
        scaler.step(opt)
        scaler.update()
        plain.step(closure_for(plain, weight_c, bias_c, x))
    # a power-of-two scale is undone exactly: the same steps as without the scaler
    assert torch.equal(weight, weight_c) and torch.equal(bias, bias_c)
    assert_same(opt.state_dict(), plain.state_dict())

    # an inf gradient: the step is skipped, nothing changes, the scale backs off
    scale = scaler.get_scale()
    params, state_dict = snapshot(opt)
    opt.zero_grad()
    scaler.scale((weight.mv(x) + bias).pow(2).sum()).backward()
    with torch.no_grad():
        bias.grad[0] = INF
    scaler.step(opt)
    scaler.update()
    for p, old in zip(params_of(opt), params):
        assert torch.equal(p.detach(), old)
    assert_same(opt.state_dict(), state_dict)
    assert scaler.get_scale() == scale * 0.5


# ---------------------------------------------------------------------------
# Complex parameters: our eight refuse them at the step, with nothing changed;
# a wrapper takes them where its base does (torch's Adam: as real views).
# ---------------------------------------------------------------------------
@per_info()
def test_complex_params_are_refused(info):
    assert not info.supports_complex
    complex_param = Parameter(torch.randn(10, 5, dtype=torch.complex64))
    real_param = Parameter(torch.randn(10, 5))
    kept = real_param.detach().clone()
    if is_wrapper(info):
        runs = []
        for as_complex in (True, False):
            z = Parameter(complex_param.detach().clone() if as_complex else torch.view_as_real(complex_param.detach()).clone())
            r = Parameter(real_param.detach().clone())
            opt = make(info, [r, z], {"base": Base(torch.optim.Adam, lr=0.01)})
            for t in range(7):
                g = torch.Generator().manual_seed(t)
                r.grad = torch.randn(r.shape, generator=g)
                grad = torch.randn(torch.view_as_real(complex_param).shape, generator=g)
                z.grad = torch.view_as_complex(grad) if as_complex else grad
                opt.step()
            runs.append([r.detach(), torch.view_as_real(z.detach()) if as_complex else z.detach()])
        assert all(torch.equal(a, b) for a, b in zip(*runs))
        opt = make(info, [real_param, complex_param], {"base": Base(H.LAMB, lr=0.1)})
        real_param.grad, complex_param.grad = torch.randn_like(real_param), torch.randn_like(complex_param)
        with pytest.raises(RuntimeError, match="only floating-point parameters can be optimized"):
            opt.step()
        assert torch.equal(real_param.detach(), kept)
        return
    opt = make(info, [real_param, complex_param], default_kwargs(info))
    for p in (real_param, complex_param):
        p.grad = torch.randn_like(p)
    with pytest.raises(RuntimeError, match="only floating-point parameters can be optimized"):
        opt.step()
    assert torch.equal(real_param.detach(), kept) and len(opt.state) == 0
