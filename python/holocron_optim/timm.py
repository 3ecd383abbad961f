"""timm's optimizers on holocron-optim's kernels: change one import, keep the numbers.

``from holocron_optim.timm import create_optimizer_v2`` in place of
``from timm.optim import create_optimizer_v2`` (and the same for ``Lamb``, ``Lars``, ``Adan``, ``AdaBelief``, ``AdamP``,
``Lookahead``,
``list_optimizers``, ``param_groups_weight_decay`` and ``param_groups_layer_decay``)
gives timm 1.0.31's numbers (to rounding) with the step in this library's fused kernels.
The classes take timm's arguments with timm's defaults and keep timm's group keys; they
are this library's ``LAMB``, ``LARS``, ``Adan``, ``AdaBelief`` and ``AdamP`` with timm's options set
(``Lookahead`` is timm's wrapper, its sync in this library's kernel).

What is not reproduced is refused, never ignored: an option or a name of timm's that
maps onto nothing here raises ``NotImplementedError`` naming it (AdamP's spherical
``caution``), an unknown name a ``ValueError`` as
timm's own. ``foreach`` selects an implementation in timm: accepted, it changes nothing
here.

Differences from timm that a training run may notice:
    - LAMB's and Adan's bias corrections count each parameter's steps (``state['step']``),
      timm's each group's (``group['step']``): the same while every parameter has a gradient
      at each step. Loading a timm ``Lamb`` or ``Adan`` state dict takes the group's count.
    - Groups holding different ``max_grad_norm`` values are clipped apart (timm uses the
      constructor's value for every group).
    - ``p.grad`` is never written (timm's ``Lars`` and ``Lamb`` do not write it either).
"""

from __future__ import annotations

import copy
import fnmatch
from collections import defaultdict
import math
from typing import Any, Callable, Collection, NamedTuple

import torch
from torch import nn

from ._base import KAHAN_DTYPES, FusedStep, Option, compensation_list, betas, finite, flag, flag_or_none, learning_rate, positive_or_none
from torch.optim import Optimizer

from ._library import ops
from .optimizers import LAMB, LARS, AdEMAMix, RaLars, TAdam
from .optimizers import AdaBelief as _AdaBelief
from .optimizers import AdamP as _AdamP
from .optimizers import Adan as _Adan
from .param_groups import param_groups_layer_decay, param_groups_weight_decay
from .wrapper import Scout

__all__ = ["Lamb", "Lars", "Adan", "AdaBelief", "AdamP", "Lookahead", "create_optimizer_v2", "list_optimizers", "param_groups_weight_decay",
           "param_groups_layer_decay"]


def _not_available(what: str) -> Callable[[str, Any, Option], Any]:
    """An option of timm's that this library does not compute yet: its default only."""

    def check(name: str, value: Any, option: Option) -> Any:
        if value != option.default:
            raise NotImplementedError(f"holocron_optim.timm.{name}: {option.name}={value!r} ({what}) is not "
                                      f"available yet; only its default, {option.default!r}, is")
        return value

    check.checks_groups = True  # type: ignore[attr-defined]
    return check


def _foreach(name: str, value: Any, option: Option) -> Any:
    """timm's implementation switch: None, True or False, none of which changes anything here."""
    if value is not None and value not in (True, False):
        raise TypeError(f"{name}: foreach must be None or a bool, got {value!r}")
    return value


_foreach.checks_groups = True  # type: ignore[attr-defined]


def _from_timm_layout(state_dict: dict[str, Any],
                      translate: Callable[[dict[str, Any], int], dict[str, Any]]) -> dict[str, Any]:
    """A state dict of timm's (whose step count is the group's ``step``) in this library's
    layout: ``translate(entry, count)`` makes each parameter's state; a state dict without a
    group ``step`` is already ours and is returned as it is."""
    if not any("step" in group for group in state_dict.get("param_groups", ())):
        return state_dict
    state_dict = copy.copy(state_dict)
    state = dict(state_dict["state"])
    for group in state_dict["param_groups"]:
        count = group.get("step")
        if count is None:
            continue
        count = int(count.item()) if isinstance(count, torch.Tensor) else int(count)
        for index in group["params"]:
            if index in state:
                state[index] = translate(dict(state[index]), count)
    state_dict["state"] = state
    state_dict["param_groups"] = [{k: v for k, v in g.items() if k != "step"} for g in state_dict["param_groups"]]
    return state_dict


class Lamb(LAMB):
    """timm's ``Lamb`` (apex's ``FusedLAMB``), with timm 1.0.31's arguments and defaults.

    This library's ``LAMB`` with bias correction, gradient averaging, global gradient-norm
    clipping at 1, no trust ratio where a group's weight decay is 0, and ``||p||``
    unbounded in the ratio: per parameter ``m = beta1 * m + (1 - beta1) * g``,
    ``v = beta2 * v + (1 - beta2) * g**2``,
    ``u = (m / (1 - beta1**t)) / (sqrt(v / (1 - beta2**t)) + eps) + weight_decay * p``,
    ``p -= lr * (||p|| / ||u||) * u``, with ``g`` the gradient divided by
    ``max(1, ||all gradients|| / max_grad_norm)``.

    Paper: Yang You et al., "Large Batch Optimization for Deep Learning: Training BERT in
    76 minutes", 2019, https://arxiv.org/abs/1904.00962

    Args:
        params: iterable of parameters to optimize, or of dicts defining parameter groups.
        lr: learning rate. Default `0.001`.
        bias_correction: divide the moments by ``1 - beta**t``. Default `True`.
        betas: coefficients of the moving averages. Default `(0.9, 0.999)`.
        eps: added to the denominator. Default `1e-06`.
        weight_decay: added to the direction as ``weight_decay * p``. Default `0.01`.
        grad_averaging: weight the gradient ``1 - beta1`` in ``m``. Default `True`.
        max_grad_norm: bound of the global gradient norm; None: no clipping. Default `1.0`.
        trust_clip: cap the trust ratio at 1 (LAMBC). Default `False`.
        always_adapt: a trust ratio also where ``weight_decay`` is 0. Default `False`.
        caution: Cautious Optimizers: the Adam step only where it agrees in sign with the
            gradient, rescaled by ``1 / max(fraction kept, 1e-3)``, before the decay and the
            trust ratio. Default `False`.
        decoupled_decay: ``p *= 1 - lr * weight_decay`` before the step, outside the
            trust ratio (``||p||`` is the decayed parameter's). Default `False`.
        corrected_weight_decay: with ``decoupled_decay``, ``p *= 1 - lr**2 / max_lr * weight_decay``,
            ``max_lr`` the constructor's lr (the group key ``max_lr_snapshot``), which must then be
            > 0. Default `False`.
        foreach: timm's implementation switch; changes nothing here. Default `None`.
    """

    _options = (
        Option("lr", 1e-3, learning_rate, range="[0, inf)"),
        Option("bias_correction", True, flag),
        Option("betas", (0.9, 0.999), betas(), range="[0, 1)"),
        Option("eps", 1e-6, finite("epsilon"), range="[0, inf)"),
        Option("weight_decay", 0.01, finite("weight_decay", non_negative=True), range="[0, inf)"),
        Option("grad_averaging", True, flag),
        Option("max_grad_norm", 1.0, positive_or_none("max_grad_norm"), range="(0, inf)"),
        Option("trust_clip", False, flag),
        Option("always_adapt", False, flag),
        Option("caution", False, flag),
        Option("decoupled_decay", False, flag),
        Option("corrected_weight_decay", False, flag),
        Option("foreach", None, _foreach),
    )
    # timm bounds nothing in the trust ratio.
    scale_clip = (0.0, math.inf)
    _decoupled_key = "decoupled_decay"
    _max_lr_key = "max_lr_snapshot"

    def _construct(self, params: Any, defaults: dict[str, Any]) -> None:
        # timm keeps the constructor's lr in every group (LAMB's corrected decay reads it).
        lr = defaults["lr"]
        max_lr = float(lr.detach()) if isinstance(lr, torch.Tensor) else float(lr)
        if defaults["corrected_weight_decay"] and max_lr <= 0:
            raise ValueError(f"Corrected weight decay requires a positive max lr, got {max_lr}. Construct the "
                             "optimizer with the peak lr.")
        super()._construct(params, {**defaults, "max_lr_snapshot": max_lr})

    def _fill_options_added_later(self) -> None:
        # As timm's __setstate__: a state dict pickled before the snapshot existed takes the lr.
        super()._fill_options_added_later()
        lr = self.defaults["lr"]
        self.defaults.setdefault("max_lr_snapshot", float(lr.detach()) if isinstance(lr, torch.Tensor) else float(lr))
        for group in self.param_groups:
            group.setdefault("max_lr_snapshot", self.defaults["max_lr_snapshot"])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Also loads timm's own ``Lamb`` state dicts: their step count is the group's."""

        def from_timm(entry: dict[str, Any], count: int) -> dict[str, Any]:
            return {"step": count, "local_lr": 1, **entry}

        super().load_state_dict(_from_timm_layout(state_dict, from_timm))


class Lars(LARS):
    """timm's ``Lars`` (apex's ``LARC`` with ``trust_clip``), with timm 1.0.31's arguments and
    defaults.

    This library's ``LARS`` with the trust ratio scaling the gradient before the momentum:
    where ``weight_decay`` is not 0 (or with ``always_adapt``),
    ``d = (g + weight_decay * p) * r`` with
    ``r = trust_coeff * ||p|| / (||g|| + weight_decay * ||p|| + eps)`` (1 where a norm is 0;
    ``min(r / lr, 1)`` with ``trust_clip``), then SGD with momentum on ``d``.

    Paper: Yang You, Igor Gitman, Boris Ginsburg, "Large Batch Training of Convolutional
    Networks", 2017, https://arxiv.org/abs/1708.03888

    Args:
        params: iterable of parameters to optimize, or of dicts defining parameter groups.
        lr: learning rate. Default `1.0`.
        momentum: momentum factor. Default `0`.
        dampening: dampening of the momentum. Default `0`.
        weight_decay: L2 penalty, inside the trust ratio. Default `0`.
        nesterov: Nesterov momentum. Default `False`.
        trust_coeff: multiplies the trust ratio. Default `0.001`.
        eps: added to the ratio's denominator. Default `1e-08`.
        trust_clip: LARC: the ratio becomes ``min(r / lr, 1)``. Default `False`.
        always_adapt: a trust ratio also where ``weight_decay`` is 0. Default `False`.
        foreach: timm's implementation switch; changes nothing here. Default `None`.
    """

    _options = (
        Option("lr", 1.0, learning_rate, range="[0, inf)"),
        Option("momentum", 0, finite("momentum"), range="[0, inf)"),
        Option("dampening", 0, finite("dampening"), range="(-inf, inf)"),
        Option("weight_decay", 0, finite("weight_decay", non_negative=True), range="[0, inf)"),
        Option("nesterov", False, flag_or_none),
        Option("trust_coeff", 0.001, finite("trust_coeff"), range="[0, inf)"),
        Option("eps", 1e-8, finite("epsilon"), range="[0, inf)"),
        Option("trust_clip", False, flag),
        Option("always_adapt", False, flag),
        Option("foreach", None, _foreach),
    )
    # Fixed in timm's algorithm: not a group option (timm's groups do not hold it).
    _trust_on_gradient = True
    scale_clip = None


class Adan(_Adan):
    """timm's ``Adan`` (the authors' code without its gradient clipping), with timm 1.0.31's
    arguments and defaults.

    This library's ``Adan`` with the weight decay decoupled from the gradient: per parameter,
    with ``diff = g - prev_g`` (0 on the first step), ``m = beta1 * m + (1 - beta1) * g``,
    ``v = beta2 * v + (1 - beta2) * diff``, ``n = beta3 * n + (1 - beta3) * (g + beta2 * diff)**2``,
    ``p -= lr * (m / bc1 + beta2 * v / bc2) / (sqrt(n / bc3) + eps)`` with ``bcK = 1 - betaK**t``,
    then ``p /= 1 + lr * weight_decay`` (or, with ``no_prox``, ``p *= 1 - lr * weight_decay``
    before the update).

    Paper: Xingyu Xie, Pan Zhou, Huan Li, Zhouchen Lin, Shuicheng Yan, "Adan: Adaptive Nesterov
    Momentum Algorithm for Faster Optimizing Deep Models", 2022, https://arxiv.org/abs/2208.06677

    Args:
        params: iterable of parameters to optimize, or of dicts defining parameter groups.
        lr: learning rate. Default `0.001`.
        betas: coefficients of the averages of the gradient, of its difference and of the
            squared Nesterov direction. Default `(0.98, 0.92, 0.99)`.
        eps: added to the denominator. Default `1e-08`.
        weight_decay: decoupled weight decay. Default `0.0`.
        no_prox: ``p *= 1 - lr * weight_decay`` before the update instead of the proximal
            division after it. Default `False`.
        caution: Cautious Optimizers: the first moment's term only where it agrees in sign
            with the gradient, rescaled by ``1 / max(fraction kept, 1e-3)``. Default `False`.
        foreach: timm's implementation switch; changes nothing here. Default `None`.

    The state keeps this library's layout (``exp_avg``; ``exp_avg_sq`` is timm's
    ``exp_avg_diff``, ``exp_avg_delta`` timm's ``exp_avg_sq``, ``prev_grad`` minus timm's
    ``neg_pre_grad``; a step count per parameter); ``load_state_dict`` also takes timm's.
    """

    _options = (
        Option("lr", 1e-3, learning_rate, range="[0, inf)"),
        Option("betas", (0.98, 0.92, 0.99), betas("three"), range="[0, 1)"),
        Option("eps", 1e-8, finite("epsilon"), range="[0, inf)"),
        Option("weight_decay", 0.0, finite("weight_decay", non_negative=True), range="[0, inf)"),
        Option("no_prox", False, flag),
        Option("caution", False, flag),
        Option("foreach", None, _foreach),
    )
    # Fixed in timm's algorithm: not a group option (timm's groups do not hold it).
    _decoupled_default = True

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Also loads timm's own ``Adan`` state dicts (see the class)."""

        def from_timm(entry: dict[str, Any], count: int) -> dict[str, Any]:
            if "exp_avg_diff" not in entry:
                return {"step": count, **entry}
            # Other keys (timm's Lookahead's slow weights) stay as they are.
            others = {k: v for k, v in entry.items() if k not in ("exp_avg_diff", "exp_avg_sq", "neg_pre_grad")}
            return {"step": count, **others, "exp_avg_sq": entry["exp_avg_diff"],
                    "exp_avg_delta": entry["exp_avg_sq"], "prev_grad": -entry["neg_pre_grad"]}

        super().load_state_dict(_from_timm_layout(state_dict, from_timm))


class _TimmGroups:
    """For timm's classes built on this library's torch.optim.Adam subclasses (AdaBelief, AdamP):
    timm's group keys only, none of torch.optim.Adam's, at construction and on load."""

    def _construct(self, params: Any, defaults: dict[str, Any]) -> None:
        Optimizer.__init__(self, params, defaults)  # type: ignore[arg-type]

    def __setstate__(self, state: dict[str, Any]) -> None:
        Optimizer.__setstate__(self, state)  # type: ignore[arg-type]
        self._fill_options_added_later()  # type: ignore[attr-defined]


class AdaBelief(_TimmGroups, _AdaBelief):
    """timm's ``AdaBelief``, with timm 1.0.31's arguments and defaults.

    This library's ``AdaBelief`` with ``eps`` added into the second moment and, by default,
    the weight decay decoupled and RAdam's rectification: per parameter
    ``m = beta1 * m + (1 - beta1) * g``, ``s = beta2 * s + (1 - beta2) * (g - m)**2 + eps``
    (stored), and, while RAdam's approximated SMA length ``rho_t`` is >= 5,
    ``p -= lr * r_t * sqrt(1 - beta2**t) / (1 - beta1**t) * m / (sqrt(s) + eps)``; below it,
    ``p -= lr * m / (1 - beta1**t)`` (``degenerated_to_sgd``) or nothing. Without
    ``rectify``, Adam's bias-corrected step with ``s`` (or its running maximum with
    ``amsgrad``).

    Paper: Juntang Zhuang et al., "AdaBelief Optimizer: Adapting Stepsizes by the Belief in
    Observed Gradients", NeurIPS 2020, https://arxiv.org/abs/2010.07468

    Args:
        params: iterable of parameters to optimize, or of dicts defining parameter groups.
        lr: learning rate. Default `0.001`.
        betas: coefficients of the moving averages. Default `(0.9, 0.999)`.
        eps: added to the second moment and to the denominator. Default `1e-16`.
        weight_decay: weight decay. Default `0`.
        amsgrad: divide by the running maximum of ``s`` (not in the rectified step, as timm).
            Default `False`.
        decoupled_decay: ``p *= 1 - lr * weight_decay`` before the step; False: the L2 term
            ``g + weight_decay * p``. Default `True`.
        fixed_decay: with ``decoupled_decay``, ``p *= 1 - weight_decay`` (ignored without it, as
            timm ignores it). Default `False`.
        rectify: RAdam's rectification. Default `True`.
        degenerated_to_sgd: with ``rectify``, a momentum step while the rectification is
            undefined. Default `True`.
        foreach: timm's implementation switch; changes nothing here. Default `None`.

    The state keeps this library's keys (``exp_avg_sq`` is timm's ``exp_avg_var``,
    ``max_exp_avg_sq`` its ``max_exp_avg_var``; a step count per parameter, as timm's);
    ``load_state_dict`` also takes timm's.
    """

    _options = (
        Option("lr", 1e-3, learning_rate, range="[0, inf)"),
        Option("betas", (0.9, 0.999), betas(), range="[0, 1)"),
        Option("eps", 1e-16, finite("epsilon"), range="[0, inf)"),
        Option("weight_decay", 0, finite("weight_decay", non_negative=True), range="[0, inf)"),
        Option("amsgrad", False, flag_or_none),
        Option("decoupled_decay", True, flag),
        Option("fixed_decay", False, flag),
        Option("rectify", True, flag),
        Option("degenerated_to_sgd", True, flag),
        Option("foreach", None, _foreach),
    )
    _decoupled_key = "decoupled_decay"

    def _apply(self, group, params, grads, states) -> None:
        # The variant's constants, timm's: eps in s, the maximize of torch.optim absent, and
        # fixed_decay read only with the decoupled decay.
        group = {**group, "eps_in_variance": True, "fixed_decay": bool(group["fixed_decay"]) and bool(group["decoupled_decay"])}
        super()._apply(group, params, grads, states)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Also loads timm's own ``AdaBelief`` state dicts (see the class); timm's float32 state of
        a bfloat16 or float16 parameter is cast to the parameter's dtype, in which this library
        keeps it."""
        renamed = {"exp_avg_var": "exp_avg_sq", "max_exp_avg_var": "max_exp_avg_sq"}
        state = state_dict.get("state", {})
        if any(isinstance(entry, dict) and "exp_avg_var" in entry for entry in state.values()):
            params = {index: p for saved, group in zip(state_dict.get("param_groups", ()), self.param_groups)
                      for index, p in zip(saved.get("params", ()), group["params"])}

            def ours(index: Any, key: str, value: Any) -> Any:
                p = params.get(index)
                if p is None or key == "step" or not isinstance(value, torch.Tensor) or not value.is_floating_point():
                    return value
                return value.to(p.dtype)

            state_dict = {**state_dict, "state": {
                index: {renamed.get(k, k): ours(index, k, v) for k, v in entry.items()}
                for index, entry in state.items()}}
        super().load_state_dict(state_dict)


class AdamP(_TimmGroups, _AdamP):
    """timm's ``AdamP`` (the authors' code), with timm 1.0.31's arguments and defaults.

    This library's ``AdamP`` with the authors' projection and a decoupled weight decay: per
    parameter ``m = beta1 * m + (1 - beta1) * g``, ``v = beta2 * v + (1 - beta2) * g**2``,
    ``q = (m or, with nesterov, beta1 * m + (1 - beta1) * g) / (1 - beta1**t) /
    (sqrt(v / (1 - beta2**t)) + eps)``; for a parameter of more than one dimension, if every
    output channel's ``|cos(p, g)|`` is below ``delta / sqrt(channel size)``, each channel's
    ``q`` loses its component along ``p / (||p|| + eps)``, else the whole tensor's if its
    ``|cos|`` is below ``delta / sqrt(numel)``; then ``p *= 1 - lr * weight_decay`` (times
    ``wd_ratio`` where projected) and ``p -= lr * q``.

    Paper: Byeongho Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on
    Scale-invariant Weights", ICLR 2021, https://arxiv.org/abs/2006.08217

    Args:
        params: iterable of parameters to optimize, or of dicts defining parameter groups.
        lr: learning rate. Default `0.001`.
        betas: coefficients of the moving averages. Default `(0.9, 0.999)`.
        eps: added to the denominator and to the norms of the projection. Default `1e-08`.
        weight_decay: decoupled weight decay. Default `0`.
        delta: threshold of the scale-invariance test. Default `0.1`.
        wd_ratio: multiplies the weight decay of projected parameters. Default `0.1`.
        nesterov: Nesterov's direction. Default `False`.
        caution: timm's spherical caution; not available yet (only False). Default `False`.

    The state keys are timm's (``step``, ``exp_avg``, ``exp_avg_sq``). On sharded parameters
    too (FSDP2, tensor parallelism, DeepSpeed): each channel's sums over its shards.
    """

    _options = (
        Option("lr", 1e-3, learning_rate, range="[0, inf)"),
        Option("betas", (0.9, 0.999), betas(), range="[0, 1)"),
        Option("eps", 1e-8, finite("epsilon"), range="[0, inf)"),
        Option("weight_decay", 0, finite("weight_decay", non_negative=True), range="[0, inf)"),
        Option("delta", 0.1, finite("delta"), range="(-inf, inf)"),
        Option("wd_ratio", 0.1, finite("wd_ratio", non_negative=True), range="[0, inf)"),
        Option("nesterov", False, flag_or_none),
        Option("caution", False, _not_available("timm's spherical caution")),
    )
    _decoupled_key = None
    _delta_in_groups = True
    _spherical_caution = True

    def _apply(self, group, params, grads, states) -> None:
        super()._apply({**group, "channel_projection": True}, params, grads, states)


class Lookahead(Optimizer):
    """timm's ``Lookahead`` wrapper, with timm 1.0.31's arguments, group keys and state layout;
    the sync runs in this library's kernel.

    Every ``k`` steps of a group, each of its parameters that has a gradient is pulled back:
    ``slow += alpha * (fast - slow)``, then ``fast = slow``. The slow weights are taken from the
    parameters at a parameter's first sync (timm's), so the first sync leaves them as they are;
    holocron's ``Lookahead`` (``holocron_optim.Lookahead``) takes them at construction instead.

    Paper: Michael R. Zhang, James Lucas, Geoffrey Hinton, Jimmy Ba, "Lookahead Optimizer: k steps
    forward, 1 step back", NeurIPS 2019, https://arxiv.org/abs/1907.08610

    Args:
        base_optimizer: the optimizer to wrap (this library's or any torch.optim optimizer).
        alpha: how far the slow weights move toward the fast ones, in [0, 1]. Default `0.5`.
        k: steps between syncs, >= 1. Default `6`.

    As timm's: the groups are the base's, with ``lookahead_alpha``, ``lookahead_k`` and
    ``lookahead_step`` added; the slow weights are the base's per-parameter state
    ``lookahead_slow_buff``; ``state_dict()`` is the base's, and loading one without the
    Lookahead keys gives them their defaults.
    """

    def __init__(self, base_optimizer: Optimizer, alpha: float = 0.5, k: int = 6) -> None:
        # As timm, torch.optim.Optimizer's constructor is not called: the groups are the base's.
        self._optimizer_step_pre_hooks: dict[int, Callable[..., Any]] = {}
        self._optimizer_step_post_hooks: dict[int, Callable[..., Any]] = {}
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"Invalid slow update rate: {alpha}")
        if not 1 <= k:
            raise ValueError(f"Invalid lookahead steps: {k}")
        defaults = {"lookahead_alpha": alpha, "lookahead_k": k, "lookahead_step": 0}
        self._base_optimizer = base_optimizer
        self.param_groups = base_optimizer.param_groups
        self.defaults = base_optimizer.defaults
        self.defaults.update(defaults)
        self.state: dict[Any, Any] = defaultdict(dict)
        for name, default in defaults.items():
            for group in self._base_optimizer.param_groups:
                group.setdefault(name, default)

    @property
    def is_second_order(self) -> bool:
        return getattr(self._base_optimizer, "is_second_order", False)

    @torch.no_grad()
    def update_slow(self, group: dict[str, Any]) -> None:
        """Pulls the group's parameters that have a gradient back toward their slow weights."""
        fast, slow, comps = [], [], []
        kahan = isinstance(self._base_optimizer, FusedStep) and self._base_optimizer._kahan(group)
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self._base_optimizer.state[p]
            if "lookahead_slow_buff" not in state:
                state["lookahead_slow_buff"] = p.detach().clone(memory_format=torch.preserve_format)
            buffer = state["lookahead_slow_buff"]
            # A complex weight is synced as its real and imaginary parts.
            fast.append(torch.view_as_real(p.detach()) if p.is_complex() else p)
            slow.append(torch.view_as_real(buffer) if buffer.is_complex() else buffer)
            # Kahan-compensated weights (holocron's kahan_summation): the sync reads p + c.
            comps.append(state.get("kahan_comp") if kahan and p.dtype in KAHAN_DTYPES else None)
        # One call per device and dtype, as the op takes them.
        batches: dict[tuple[Any, Any], tuple[list[torch.Tensor], list[torch.Tensor], list[Any]]] = {}
        for f, s, c in zip(fast, slow, comps):
            batch = batches.setdefault((f.device, f.dtype), ([], [], []))
            batch[0].append(f)
            batch[1].append(s)
            batch[2].append(c)
        for f, s, c in batches.values():
            extra = {"kahan_comps": compensation_list(f, c)} if any(t is not None for t in c) else {}
            ops.lookahead_sync_(f, slow=s, sync_rate=float(group["lookahead_alpha"]), **extra)

    def sync_lookahead(self) -> None:
        """Syncs every group now."""
        for group in self._base_optimizer.param_groups:
            self.update_slow(group)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        loss = self._base_optimizer.step(closure)
        for group in self._base_optimizer.param_groups:
            group["lookahead_step"] += 1
            if group["lookahead_step"] % group["lookahead_k"] == 0:
                self.update_slow(group)
        return loss

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return self._base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        self._base_optimizer.load_state_dict(state_dict)
        self.param_groups = self._base_optimizer.param_groups
        # A base optimizer's state dict without Lookahead's keys gets their defaults.
        for name in ("lookahead_alpha", "lookahead_k", "lookahead_step"):
            for group in self.param_groups:
                group.setdefault(name, self.defaults[name])


# ---- The factory ----------------------------------------------------------------------------

class _Entry(NamedTuple):
    """A name create_optimizer_v2 takes: its class, the defaults the name sets, and which of
    timm's common arguments the class takes (timm's OptimInfo)."""

    cls: type
    description: str
    defaults: dict[str, Any]
    has_betas: bool = False
    has_momentum: bool = False
    has_eps: bool = True


_REGISTRY: dict[str, _Entry] = {
    "lamb": _Entry(Lamb, "Layer-wise Adaptive Moments for batch optimization", {}, has_betas=True),
    "lambc": _Entry(Lamb, "LAMB with trust ratio clipping for stability", {"trust_clip": True}, has_betas=True),
    "lambw": _Entry(Lamb, "LAMB with decoupled weight decay", {"decoupled_decay": True}, has_betas=True),
    "lambcw": _Entry(Lamb, "LAMB with trust ratio clipping for stability and decoupled decay",
                     {"trust_clip": True, "decoupled_decay": True}, has_betas=True),
    "adan": _Entry(Adan, "Adaptive Nesterov Momentum Algorithm", {"no_prox": False}, has_betas=True),
    "adanw": _Entry(Adan, "Adaptive Nesterov Momentum with decoupled weight decay", {"no_prox": True},
                    has_betas=True),
    "cadan": _Entry(Adan, "Cautious Adaptive Nesterov Momentum Algorithm", {"caution": True, "no_prox": False},
                    has_betas=True),
    "cadanw": _Entry(Adan, "Cautious Adaptive Nesterov Momentum with decoupled weight decay",
                     {"caution": True, "no_prox": True}, has_betas=True),
    "clamb": _Entry(Lamb, "Cautious LAMB", {"caution": True}, has_betas=True),
    "clambw": _Entry(Lamb, "Cautious LAMB with decoupled weight decay", {"caution": True, "decoupled_decay": True},
                     has_betas=True),
    "adabelief": _Entry(AdaBelief, "Adapts learning rate based on gradient prediction error", {"rectify": False},
                        has_betas=True),
    "radabelief": _Entry(AdaBelief, "Rectified AdaBelief with variance adaptation", {"rectify": True},
                         has_betas=True),
    "adamp": _Entry(AdamP, "Adam with built-in projection to unit norm sphere", {"wd_ratio": 0.01, "nesterov": True},
                    has_betas=True),
    "lars": _Entry(Lars, "Layer-wise Adaptive Rate Scaling", {}, has_momentum=True),
    "larc": _Entry(Lars, "LARS with trust ratio clipping for stability", {"trust_clip": True}, has_momentum=True),
    "nlars": _Entry(Lars, "LARS with Nesterov momentum", {"nesterov": True}, has_momentum=True),
    "nlarc": _Entry(Lars, "LARS with Nesterov momentum & trust ratio clipping",
                    {"nesterov": True, "trust_clip": True}, has_momentum=True),
    # holocron's own, with holocron.optim's numbers.
    "ralars": _Entry(RaLars, "holocron's RaLars: rectified Adam moments with LARS trust ratios", {},
                     has_betas=True),
    "tadam": _Entry(TAdam, "holocron's TAdam: Adam with Student-t weighted moments", {}, has_betas=True),
    "ademamix": _Entry(AdEMAMix, "holocron's AdEMAMix: Adam with a second, slow first moment", {},
                       has_betas=True),
}

# timm's names that this library does not reproduce yet, and why.
_NOT_YET = {
    **{name: "cautious updates" for name in ("cadamw", "cadopt", "cadoptw",
                                             "clion", "cmars", "cnadamw", "crmsproptf", "csgdw")},
    "cadamp": "timm's spherical cautious updates",
}


def list_optimizers(filter: str | list[str] = "", exclude_filters: list[str] | None = None,
                    with_description: bool = False) -> list[str] | list[tuple[str, str]]:
    """The names create_optimizer_v2 takes, as timm's ``list_optimizers`` (wildcard filters)."""
    names = sorted(_REGISTRY)
    if filter:
        patterns = [filter] if isinstance(filter, str) else list(filter)
        names = [n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns)]
    for pattern in exclude_filters or ():
        names = [n for n in names if not fnmatch.fnmatch(n, pattern)]
    if with_description:
        return [(n, _REGISTRY[n].description) for n in names]
    return names


def create_optimizer_v2(
        model_or_params: nn.Module | Any,
        opt: str = "sgd",
        lr: float | None = None,
        weight_decay: float = 0.,
        momentum: float = 0.9,
        foreach: bool | None = None,
        filter_bias_and_bn: bool = True,
        fallback_list: Collection[str] = (),
        fallback_no_weight_decay: bool = False,
        layer_decay: float | None = None,
        layer_decay_min_scale: float = 0.0,
        layer_decay_no_opt_scale: float | None = None,
        param_group_fn: Callable[[nn.Module], Any] | None = None,
        **kwargs: Any,
) -> torch.optim.Optimizer:
    """timm's ``create_optimizer_v2``, for the names of ``list_optimizers()`` and
    ``scout_<name>`` (holocron's Scout around that optimizer).

    From a model, parameter groups are made as timm makes them: by
    ``param_group_fn``, else with layer decay when ``layer_decay`` is set, else with
    biases, norms and the model's ``no_weight_decay()`` out of weight decay (1-d
    parameters too with ``filter_bias_and_bn``). Then ``weight_decay``, ``lr``, the
    name's defaults, ``momentum`` (for the names that take one) and ``kwargs`` make the
    optimizer's arguments; ``betas`` and ``eps`` are dropped for optimizers without them,
    as timm does. ``sgd`` is timm's default name but not one of ours: pass a name.

    Raises:
        ValueError: an unknown name (timm's message).
        NotImplementedError: one of timm's names this library does not reproduce yet.
    """
    parts = opt.lower().split("_")
    name = parts[-1]
    wrapper = parts[0] if len(parts) > 1 else None
    if wrapper is not None and (wrapper not in ("scout", "lookahead") or len(parts) > 2):
        raise ValueError(f"Optimizer {opt} not found in registry")
    if name in _NOT_YET:
        raise NotImplementedError(f"holocron_optim.timm: {name!r} ({_NOT_YET[name]}) is not available yet")
    entry = _REGISTRY.get(name)
    if entry is None:
        raise ValueError(f"Optimizer {name} not found in registry")

    if isinstance(model_or_params, nn.Module):
        model = model_or_params
        no_weight_decay = getattr(model, "no_weight_decay", lambda: set())()
        if param_group_fn:
            params = param_group_fn(model)
        elif layer_decay is not None:
            params = param_groups_layer_decay(
                model, weight_decay=weight_decay, layer_decay=layer_decay, no_weight_decay_list=no_weight_decay,
                fallback_list=fallback_list, fallback_no_weight_decay=fallback_no_weight_decay,
                weight_decay_exclude_1d=filter_bias_and_bn, min_scale=layer_decay_min_scale,
                no_opt_scale=layer_decay_no_opt_scale,
            )
            weight_decay = 0.
        else:
            params = param_groups_weight_decay(
                model, weight_decay=weight_decay, weight_decay_exclude_1d=filter_bias_and_bn,
                no_weight_decay_list=no_weight_decay, fallback_list=fallback_list,
                fallback_no_weight_decay=fallback_no_weight_decay,
            )
            weight_decay = 0.
    else:
        params = model_or_params

    args: dict[str, Any] = {"weight_decay": weight_decay, **kwargs}
    if lr is not None:
        args["lr"] = lr
    for key, value in entry.defaults.items():
        args.setdefault(key, value)
    if entry.has_momentum:
        args.setdefault("momentum", momentum)
    if not entry.has_eps:
        args.pop("eps", None)
    if not entry.has_betas:
        args.pop("betas", None)
    if foreach is not None:
        if "foreach" not in {o.name for o in entry.cls._options}:
            raise ValueError(f"holocron_optim.timm: {name!r} takes no foreach")
        args.setdefault("foreach", foreach)
    optimizer = entry.cls(params, **args)
    if wrapper == "lookahead":
        return Lookahead(optimizer)
    return Scout(optimizer) if wrapper == "scout" else optimizer
