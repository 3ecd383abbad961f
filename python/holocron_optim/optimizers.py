"""The eight algorithms, with holocron.optim's constructor arguments, defaults,
param_groups and state layout; the math runs in torch.ops.holocron."""

from __future__ import annotations

import inspect
import math
from operator import attrgetter
from typing import Any

import torch
from torch.optim import Adam, Optimizer

from ._base import (ABSMAX_SUFFIX, Buffer, FusedStep, Option, betas, check_finite, check_number, check_state_dict_layout, finite, flag,
                    flag_or_none, gather,
                    learning_rate, per_tensor_shape, positive_or_none, state_precision, step_count,
                    types_of)
from . import _base, _distributed as distributed
from ._library import ops

__all__ = ["LARS", "LAMB", "RaLars", "TAdam", "AdaBelief", "AdamP", "Adan", "AdEMAMix"]

# Adam's moments, and the running max of the second with amsgrad.
_ADAM_BUFFERS = (Buffer("exp_avg", signed=True), Buffer("exp_avg_sq", signed=False),
                 Buffer("max_exp_avg_sq", exists=lambda group: group.get("amsgrad", False), signed=False))


def _scale_clip(when_none: tuple[float, float] | None) -> Any:
    """A (low, high) pair for ||p|| in the trust ratio; None means `when_none`."""

    def check(name: str, value: Any, _: Option) -> tuple[float, float] | None:
        if value is None:
            return when_none
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise ValueError(f"{name}: scale_clip must be a (low, high) pair, got {value!r}")
        for bound in value:  # numbers, not what float() would also take ("0.5")
            check_number(name, "scale_clip", bound)
        return float(value[0]), float(value[1])

    return check


def _dof(name: str, value: Any, _: Option) -> float | None:
    if value is not None:
        check_finite("dof", value)
        if value <= 0:  # 0 makes a step whose gradient equals the mean NaN (unlike pylocron)
            raise ValueError(f"{name}: invalid dof value: {value} (expected in (0, inf))")
    return value


# The options most algorithms share, with their defaults and checks.
_LR = Option("lr", 1e-3, learning_rate, range="[0, inf)")
_EPS = Option("eps", 1e-8, finite("epsilon"), range="[0, inf)")
_WEIGHT_DECAY = Option("weight_decay", 0.0, finite("weight_decay", non_negative=True), range="[0, inf)")
_AMSGRAD = Option("amsgrad", False, flag_or_none)
_BETAS2 = Option("betas", (0.9, 0.999), betas(), range="[0, 1)")
# torch.optim's maximize (the ops read -g); added after the reference's options.
_MAXIMIZE = Option("maximize", False, flag, added_later=True)
_DECOUPLED = Option("decoupled_weight_decay", False, flag, added_later=True)
# The dtype of the per-element state (issue 17): the last option of every algorithm.
_STATE_PRECISION = Option("state_precision", "param", state_precision, added_later=True)
_KAHAN = Option("kahan_summation", False, flag, added_later=True)
_DEFAULT_SCALE_CLIP = (0.0, 10.0)


class LARS(FusedStep, Optimizer):
    """LARS: SGD whose step is scaled per tensor by a trust ratio.

    Paper: Yang You, Igor Gitman, Boris Ginsburg, "Large Batch Training of
    Convolutional Networks", 2017, https://arxiv.org/abs/1708.03888

    Per parameter: ``d = g + weight_decay * p``,
    ``local_lr = ||p|| / (||g|| + weight_decay * ||p||)`` (1 when a norm is 0),
    ``p -= lr * local_lr * u`` where ``u`` is ``d`` without momentum, else the
    momentum buffer (or ``d + momentum * buf`` with Nesterov).

    Args:
        params: iterable of parameters to optimize, or of dicts defining parameter
            groups (a group's own options override the defaults below).
        lr: learning rate, >= 0. Default `1e-3`.
        momentum: momentum factor, >= 0; 0 keeps no buffer. Default `0.0`.
        dampening: dampening of the momentum
            (``buf = momentum * buf + (1 - dampening) * d``); must be 0 with
            ``nesterov``. Default `0.0`.
        weight_decay: L2 penalty added to the gradient; it also enters the
            trust ratio's denominator. >= 0. Default `0.0`.
        nesterov: Nesterov momentum; needs ``momentum > 0`` and
            ``dampening == 0``. Default `False`.
        scale_clip: ``(low, high)`` bounds for ``||p||`` in the trust ratio;
            None keeps the norm unclamped. An attribute of the optimizer, not a
            group option, as in the reference. Default `None`.
        trust_coeff: multiplies the trust ratio, >= 0. Default `1.0`.
        eps: added to the trust ratio's denominator, >= 0. Default `0.0`.
        trust_clip: LARC: the ratio becomes ``min(local_lr / lr, 1)``. Default `False`.
        always_adapt: a trust ratio also in groups whose ``weight_decay`` is 0;
            False: a ratio of 1 there (plain SGD). Default `True`.
        trust_on_gradient: the ratio scales ``d`` before it enters the momentum
            (``p -= lr * u``) and is 1 where ``||g||`` is 0; False: it scales the
            step after the momentum, as the reference. The two differ only with
            momentum or a zero gradient. Default `False`.
        maximize: ascend instead of descend, as torch.optim's ``maximize``: each
            gradient is read as ``-g`` (``p.grad`` is not modified). Default `False`.
        decoupled_weight_decay: ``p *= 1 - lr * weight_decay`` before the step instead
            of ``weight_decay * p`` in the direction: the trust ratio's denominator then
            has no ``weight_decay * ||p||``, and its ``||p||`` is the decayed parameter's
            (torch's ``decoupled_weight_decay``). Default `False`.
        state_precision: the dtype of the per-element state (moments, momentum, maxima):
            ``"param"``, the parameter's; ``"float32"`` (mixed precision for bfloat16 and half
            parameters); ``"bfloat16"`` (half the bytes of float32 state); ``"8bit"`` (the
            moments of tensors of 4096 elements or more as 8-bit block-wise codes with a float32
            scale per 256, ``<name>_absmax``; the rest float32). The math runs in the
            parameter's math type; the state is rounded (or encoded) when stored. A load
            converts a checkpoint's state to each group's precision. Default `'param'`.
        kahan_summation: Kahan-compensated bfloat16 and float16 weights: each such parameter
            keeps ``kahan_comp`` (its dtype and shape), and its weight is ``p + kahan_comp``, read
            in float32 by the step, which stores ``p`` rounded and in ``kahan_comp`` what the
            rounding dropped, so that updates smaller than half a unit in the last place of ``p``
            accumulate instead of vanishing. Other parameters are unaffected. Default `False`.

    The five before ``maximize`` are the options of timm's ``Lars`` and apex's ``LARC``, with
    ``local_lr = trust_coeff * ||p|| / (||g|| + weight_decay * ||p|| + eps)``; their
    defaults give the reference's numbers. timm's ``Lars`` is
    ``trust_coeff=0.001, eps=1e-8, always_adapt=False, trust_on_gradient=True``.

    State (per parameter, the reference's key): ``momentum_buffer``, only when
    ``momentum != 0`` (the first step's direction, then the running momentum).

    Differences from the reference (pylocron 0.3.0):
        - gradients are never modified; the reference writes ``d`` into
          ``p.grad``;
        - an explicit ``scale_clip`` clamps ``||p||`` in the trust ratio; the
          reference ignores the argument.
    """

    _options = (
        _LR,
        Option("momentum", 0.0, finite("momentum"), range="[0, inf)"),
        Option("dampening", 0.0, finite("dampening"), range="(-inf, inf)"),
        _WEIGHT_DECAY,
        Option("nesterov", False, flag_or_none),
        Option("scale_clip", None, _scale_clip(None), setting=True),
        Option("trust_coeff", 1.0, finite("trust_coeff"), range="[0, inf)", added_later=True),
        Option("eps", 0.0, finite("epsilon"), range="[0, inf)", added_later=True),
        Option("trust_clip", False, flag, added_later=True),
        Option("always_adapt", True, flag, added_later=True),
        Option("trust_on_gradient", False, flag, added_later=True),
        _MAXIMIZE,
        _DECOUPLED,
        _STATE_PRECISION, _KAHAN,
    )
    _state_buffers = (Buffer("momentum_buffer", exists=lambda group: group["momentum"] != 0, made_by_step=True,
                             signed=True),)
    _counts_steps = False
    # Where a group holds no trust_on_gradient (classes without that option: timm's Lars).
    _trust_on_gradient = False

    def _apply(self, group, params, grads, states) -> None:
        with_momentum = group["momentum"] != 0
        buffers, is_new = [], []
        if with_momentum and "momentum_buffer" in self._lists_now:
            buffers, is_new = self._lists_now["momentum_buffer"], [False] * len(params)
        elif with_momentum:
            for p, state in zip(params, states):
                is_new.append("momentum_buffer" not in state)
                if is_new[-1]:
                    self._make_buffer(state, "momentum_buffer", group, p)
                buffers.append(state["momentum_buffer"])
        try:
            distributed.call(
                ops.lars_, params, grads, momentum_buffers=buffers, buffer_is_new=is_new,
                **self._lr(group), momentum=float(group["momentum"]), dampening=float(group["dampening"]),
                weight_decay=float(group["weight_decay"]), nesterov=bool(group["nesterov"]),
                scale_clip=tuple(self.scale_clip) if self.scale_clip is not None else (),
                trust_coeff=float(group["trust_coeff"]), eps=float(group["eps"]), trust_clip=group["trust_clip"],
                always_adapt=group["always_adapt"],
                trust_on_gradient=group.get("trust_on_gradient", self._trust_on_gradient),
                grad_scale=self._grad_scale_now, found_inf=self._found_inf_now, maximize=bool(group.get("maximize", False)),
                **self._compensation(group, params, states), **self._blockwise_scales(group, params, states),
                decoupled_weight_decay=bool(group.get("decoupled_weight_decay", False)), sums=True,
            )
        except Exception:
            for state, new in zip(states, is_new):
                if new:
                    del state["momentum_buffer"]
                    state.pop("momentum_buffer" + ABSMAX_SUFFIX, None)
            raise


class LAMB(FusedStep, Optimizer):
    """LAMB: Adam moments with one trust ratio per tensor.

    Paper: Yang You, Jing Li, Sashank Reddi, Jonathan Hseu, Sanjiv Kumar, Srinadh
    Bhojanapalli, Xiaodan Song, James Demmel, Kurt Keutzer, Cho-Jui Hsieh, "Large
    Batch Optimization for Deep Learning: Training BERT in 76 minutes", 2019,
    https://arxiv.org/abs/1904.00962

    Per parameter, as the reference: ``m = beta1 * m + (1 - beta1) * g``,
    ``v = beta2 * v + (1 - beta2) * g**2`` (no bias correction),
    ``u = m / (sqrt(v) + eps) + weight_decay * p``,
    ``local_lr = clamp(||p||, *scale_clip) / ||u||`` (1 when either is 0),
    ``p -= lr * local_lr * u``.

    Args:
        params: iterable of parameters to optimize, or of dicts defining parameter
            groups (a group's own options override the defaults below).
        lr: learning rate, >= 0. Default `1e-3`.
        betas: coefficients ``(beta1, beta2)`` of the moving averages of the gradient
            and of its square, each in [0, 1). Default `(0.9, 0.999)`.
        eps: added to the denominator for numerical stability, >= 0. Default `1e-8`.
        weight_decay: added to the direction as ``weight_decay * p``, before the
            trust ratio; >= 0. Default `0.0`.
        scale_clip: ``(low, high)`` bounds for ``||p||`` in the trust ratio; None
            means ``(0, 10)``. An attribute of the optimizer, not a group option,
            as in the reference. Default `None`.
        bias_correction: divide the moments by ``1 - beta**step``:
            ``u = (m / bc1) / (sqrt(v / bc2) + eps) + weight_decay * p``. Default `False`.
        grad_averaging: the gradient enters ``m`` weighted ``1 - beta1``; False: weighted
            1 (``m = beta1 * m + g``). Default `True`.
        max_grad_norm: global gradient-norm clipping: the gradients of every group are
            read divided by ``max(1, norm / max_grad_norm)``, ``norm`` being the one norm of
            all of them (unscaled by GradScaler first, over all shards); ``p.grad`` is not
            modified. Groups holding different values are clipped apart, each by the norm
            over the groups holding its value. None: no clipping. Default `None`.
        trust_clip: cap the trust ratio at 1 (LAMBC). Default `False`.
        always_adapt: a trust ratio also in groups whose ``weight_decay`` is 0; False: a
            ratio of 1 there. Default `True`.
        maximize: ascend instead of descend, as torch.optim's ``maximize``: each
            gradient is read as ``-g`` (``p.grad`` is not modified). Default `False`.
        decoupled_weight_decay: ``p *= 1 - lr * weight_decay`` before the step instead
            of ``weight_decay * p`` in the direction, as timm's ``decoupled_decay``: the
            decay stays outside ``||u||``, and ``||p||`` is the decayed parameter's.
            Default `False`.
        caution: Cautious Optimizers (Liang et al. 2024, timm's ``caution``): the Adam
            step before the weight decay only where it agrees in sign with the gradient,
            rescaled by ``1 / max(fraction kept, 1e-3)`` (of the whole tensor, over all
            shards); the trust ratio is then of the result. Default `False`.
        corrected_weight_decay: with ``decoupled_weight_decay``, ``p *= 1 - lr**2 / max_lr *
            weight_decay``, a decay that follows the schedule's lr relative to its peak (timm's
            ``corrected_weight_decay``). Default `False`.
        max_lr: the peak lr of ``corrected_weight_decay``, > 0; None: the constructor's lr, as
            timm takes it (in the defaults and in the groups given to the constructor; a group
            added later takes the defaults', or must hold its own). Default `None`.
        state_precision: the dtype of the per-element state (moments, momentum, maxima):
            ``"param"``, the parameter's; ``"float32"`` (mixed precision for bfloat16 and half
            parameters); ``"bfloat16"`` (half the bytes of float32 state); ``"8bit"`` (the
            moments of tensors of 4096 elements or more as 8-bit block-wise codes with a float32
            scale per 256, ``<name>_absmax``; the rest float32). The math runs in the
            parameter's math type; the state is rounded (or encoded) when stored. A load
            converts a checkpoint's state to each group's precision. Default `'param'`.
        kahan_summation: Kahan-compensated bfloat16 and float16 weights: each such parameter
            keeps ``kahan_comp`` (its dtype and shape), and its weight is ``p + kahan_comp``, read
            in float32 by the step, which stores ``p`` rounded and in ``kahan_comp`` what the
            rounding dropped, so that updates smaller than half a unit in the last place of ``p``
            accumulate instead of vanishing. Other parameters are unaffected. Default `False`.

    The five before ``maximize`` are the options of timm's ``Lamb`` and apex's ``FusedLAMB``; their
    defaults give the reference's numbers. timm's numbers also need
    ``scale_clip=(0, inf)`` (timm does not bound ``||p||``).

    State (per parameter, the reference's keys): ``step`` (int), ``exp_avg``,
    ``exp_avg_sq`` and ``local_lr`` (the last trust ratio: a 0-d tensor, holding 1 when a norm
    was 0, where the reference holds the int 1).

    Differences from the reference (pylocron 0.3.0):
        - ``weight_decay < 0`` is refused; pylocron accepts it.
    """

    _options = (
        _LR, _BETAS2, _EPS, _WEIGHT_DECAY, Option("scale_clip", None, _scale_clip(_DEFAULT_SCALE_CLIP), setting=True),
        Option("bias_correction", False, flag, added_later=True),
        Option("grad_averaging", True, flag, added_later=True),
        Option("max_grad_norm", None, positive_or_none("max_grad_norm"), range="(0, inf)", added_later=True),
        Option("trust_clip", False, flag, added_later=True),
        Option("always_adapt", True, flag, added_later=True),
        _MAXIMIZE,
        _DECOUPLED,
        Option("caution", False, flag, added_later=True),
        Option("corrected_weight_decay", False, flag, added_later=True),
        Option("max_lr", None, positive_or_none("max_lr"), range="(0, inf)", added_later=True),
        _STATE_PRECISION, _KAHAN,
    )
    _state_buffers = (Buffer("exp_avg", signed=True), Buffer("exp_avg_sq", signed=False))
    _keeps_trust_ratios = True
    # The group keys of decoupled weight decay and of the corrected decay's peak lr (timm's Lamb
    # calls them decoupled_decay and max_lr_snapshot).
    _decoupled_key = "decoupled_weight_decay"
    _max_lr_key = "max_lr"

    def _construct(self, params: Any, defaults: dict[str, Any]) -> None:
        # timm's snapshot: corrected_weight_decay without max_lr follows the constructor's lr, in
        # the defaults and in the groups given now (a group added later must say its max_lr).
        lr = defaults["lr"]
        self._constructor_lr = float(lr.detach()) if isinstance(lr, torch.Tensor) else float(lr)
        if defaults.get("corrected_weight_decay") and defaults.get(self._max_lr_key, 0.0) is None:
            defaults = {**defaults, self._max_lr_key: self._constructor_lr}
        self._constructing = True
        try:
            super()._construct(params, defaults)
        finally:
            self._constructing = False

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if (getattr(self, "_constructing", False) and isinstance(param_group, dict)
                and param_group.get("corrected_weight_decay", self.defaults.get("corrected_weight_decay"))
                and param_group.get(self._max_lr_key, self.defaults.get(self._max_lr_key)) is None):
            param_group = {**param_group, self._max_lr_key: self._constructor_lr}
        super().add_param_group(param_group)

    def _check_group_options(self, group: dict[str, Any]) -> None:
        super()._check_group_options(group)
        if group.get("corrected_weight_decay") and group.get(self._decoupled_key):
            peak = group.get(self._max_lr_key)
            if peak is None or not math.isfinite(float(peak)) or float(peak) <= 0:
                raise ValueError(f"{type(self).__name__}: corrected_weight_decay needs {self._max_lr_key} > 0 (the "
                                 f"peak lr the decay follows), got {peak}")

    def _always_adapt(self, group: dict[str, Any]) -> bool:
        """The op's always_adapt: the trust ratio's gate reads the group's weight decay (timm's),
        not the corrected one handed to the op, which is 0 where lr is."""
        corrected = group.get("corrected_weight_decay") and group.get(self._decoupled_key)
        return bool(group["always_adapt"] or (corrected and float(group["weight_decay"]) != 0))

    def _weight_decay_of(self, group: dict[str, Any]) -> float:
        """The group's weight decay as the op takes it: timm's corrected decay, lr**2 / max_lr *
        weight_decay, is lr * (weight_decay * lr / max_lr)."""
        weight_decay = float(group["weight_decay"])
        if group.get("corrected_weight_decay") and group.get(self._decoupled_key):
            return weight_decay * float(group["lr"]) / float(group[self._max_lr_key])
        return weight_decay

    def _apply(self, group, params, grads, states) -> None:
        beta1, beta2 = group["betas"]
        steps, counters = self._counters(states)
        distributed.call(
            ops.lamb_, params, grads, exp_avgs=self._gather(states, "exp_avg"),
            exp_avg_sqs=self._gather(states, "exp_avg_sq"),
            steps=steps, **self._lr(group), beta1=float(beta1), beta2=float(beta2), eps=float(group["eps"]),
            weight_decay=self._weight_decay_of(group), clip_low=self.scale_clip[0], clip_high=self.scale_clip[1],
            bias_correction=group["bias_correction"], grad_averaging=group["grad_averaging"],
            trust_clip=group["trust_clip"], always_adapt=self._always_adapt(group),
            decoupled_weight_decay=bool(group.get(self._decoupled_key, False)), caution=bool(group["caution"]),
            grad_scale=self._grad_scale_now, found_inf=self._found_inf_now, maximize=bool(group.get("maximize", False)),
            **self._compensation(group, params, states), **self._blockwise_scales(group, params, states), **self._clipping(group),
            **counters, **self._ratio_targets(group, params, states), sums=True,
        )
        if counters:
            return  # compiled: the op advanced the counters and wrote the ratios
        self._commit_steps(states, steps)
        self._settle_ratios(group, states)


class RaLars(FusedStep, Optimizer):
    """RaLars: Rectified Adam (RAdam) with LARS trust ratios.

    Papers: Liyuan Liu, Haoming Jiang, Pengcheng He, Weizhu Chen, Xiaodong Liu,
    Jianfeng Gao, Jiawei Han, "On the Variance of the Adaptive Learning Rate and
    Beyond", 2019, https://arxiv.org/abs/1908.03265 (RAdam), with the layer-wise
    scaling of Yang You, Igor Gitman, Boris Ginsburg, "Large Batch Training of
    Convolutional Networks", 2017, https://arxiv.org/abs/1708.03888 (LARS).

    Per parameter: moments as LAMB's; ``sma_inf = 2 / (1 - beta2) - 1``,
    ``sma_t = sma_inf - 2 * t * beta2**t / (1 - beta2**t)``. When ``sma_t > 4``
    the direction is the rectified Adam step, otherwise the bias-corrected
    momentum (or the unrectified Adam step with ``force_adaptive_momentum``).
    Then ``u += weight_decay * p`` and LAMB's trust ratio and update.

    Args:
        params: iterable of parameters to optimize, or of dicts defining parameter
            groups (a group's own options override the defaults below).
        lr: learning rate, >= 0. Default `1e-3`.
        betas: coefficients ``(beta1, beta2)`` of the moving averages of the gradient
            and of its square, each in [0, 1). Default `(0.9, 0.999)`.
        eps: added to the denominator for numerical stability, >= 0. Default `1e-8`.
        weight_decay: added to the direction as ``weight_decay * p``, before the
            trust ratio; >= 0. Default `0.0`.
        force_adaptive_momentum: while the variance is not tractable
            (``sma_t <= 4``, the first steps), take the unrectified Adam step
            instead of the momentum. Default `False`.
        scale_clip: ``(low, high)`` bounds for ``||p||`` in the trust ratio; None
            means ``(0, 10)``. An attribute of the optimizer, not a group option,
            as in the reference. Default `None`.
        maximize: ascend instead of descend, as torch.optim's ``maximize``: each
            gradient is read as ``-g`` (``p.grad`` is not modified). Default `False`.
        decoupled_weight_decay: ``p *= 1 - lr * weight_decay`` before the step instead
            of ``weight_decay * p`` in the direction, as LAMB's: the decay stays outside
            ``||u||``, and ``||p||`` is the decayed parameter's. Default `False`.
        state_precision: the dtype of the per-element state (moments, momentum, maxima):
            ``"param"``, the parameter's; ``"float32"`` (mixed precision for bfloat16 and half
            parameters); ``"bfloat16"`` (half the bytes of float32 state); ``"8bit"`` (the
            moments of tensors of 4096 elements or more as 8-bit block-wise codes with a float32
            scale per 256, ``<name>_absmax``; the rest float32). The math runs in the
            parameter's math type; the state is rounded (or encoded) when stored. A load
            converts a checkpoint's state to each group's precision. Default `'param'`.
        kahan_summation: Kahan-compensated bfloat16 and float16 weights: each such parameter
            keeps ``kahan_comp`` (its dtype and shape), and its weight is ``p + kahan_comp``, read
            in float32 by the step, which stores ``p`` rounded and in ``kahan_comp`` what the
            rounding dropped, so that updates smaller than half a unit in the last place of ``p``
            accumulate instead of vanishing. Other parameters are unaffected. Default `False`.

    State (per parameter, the reference's keys): ``step`` (int), ``exp_avg``,
    ``exp_avg_sq``, ``local_lr`` (as LAMB's). Each group also gets the key
    ``sma_inf`` on its first step, as in the reference.

    Differences from the reference (pylocron 0.3.0):
        - ``weight_decay < 0`` is refused; pylocron accepts it.
    """

    _options = (
        _LR, _BETAS2, _EPS, _WEIGHT_DECAY,
        Option("force_adaptive_momentum", False, setting=True),
        Option("scale_clip", None, _scale_clip(_DEFAULT_SCALE_CLIP), setting=True),
        _MAXIMIZE,
        _DECOUPLED,
        _STATE_PRECISION, _KAHAN,
    )
    _state_buffers = (Buffer("exp_avg", signed=True), Buffer("exp_avg_sq", signed=False))
    _keeps_trust_ratios = True

    def _check_group_options(self, group: dict[str, Any]) -> None:
        super()._check_group_options(group)
        # Not an option but recorded in the group by the first step, as the reference does: a
        # string put there would reach float() in the step.
        if group.get("sma_inf") is not None:
            check_number("RaLars", "sma_inf", group["sma_inf"])

    def _apply(self, group, params, grads, states) -> None:
        beta1, beta2 = group["betas"]
        sma_inf = group.get("sma_inf")
        record = bool(params) and not isinstance(sma_inf, float)
        if record:
            # The reference records the SMA's maximum length in the group on its
            # first step (here once that step has succeeded).
            sma_inf = 2 / (1 - beta2) - 1
        steps, counters = self._counters(states)
        distributed.call(
            ops.ralars_, params, grads, exp_avgs=self._gather(states, "exp_avg"),
            exp_avg_sqs=self._gather(states, "exp_avg_sq"),
            steps=steps, **self._lr(group), beta1=float(beta1), beta2=float(beta2), eps=float(group["eps"]),
            weight_decay=float(group["weight_decay"]), force_adaptive_momentum=bool(self.force_adaptive_momentum),
            clip_low=self.scale_clip[0], clip_high=self.scale_clip[1],
            sma_inf=None if sma_inf is None else float(sma_inf),
            grad_scale=self._grad_scale_now, found_inf=self._found_inf_now, maximize=bool(group.get("maximize", False)),
            **self._compensation(group, params, states), **self._blockwise_scales(group, params, states), **counters, **self._ratio_targets(group, params, states), sums=True,
            decoupled_weight_decay=bool(group.get("decoupled_weight_decay", False)),
        )
        if record:
            group["sma_inf"] = sma_inf
        if counters:
            return  # compiled: the op advanced the counters and wrote the ratios
        self._commit_steps(states, steps)
        self._settle_ratios(group, states)


def _w_t_size(count: int) -> str:
    # A flat partition (DeepSpeed ZeRO) holds one W_t per model tensor in it.
    return ("a one-element floating-point tensor" if count == 1
            else f"a floating-point tensor of {count} elements (one per model tensor)")


def _describe_w_t(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.numel()} elements of {value.dtype}" + ("" if value.layout == torch.strided else f", {value.layout}")
    return repr(value)[:80]


class TAdam(FusedStep, Optimizer):
    """TAdam: Adam whose first moment is a Student-t estimate, robust to outliers.

    Paper: Wendyam Eric Lionel Ilboudo, Taisuke Kobayashi, Kenji Sugimoto,
    "TAdam: A Robust Stochastic Gradient Optimizer", 2020,
    https://arxiv.org/abs/2003.00179

    Per parameter of ``d`` elements, with ``g = g + weight_decay * p``:
    ``w = (dof + d) / (dof + sum((g - m)**2 / (v + eps)))``,
    ``m = W / (W + w) * m + w / (W + w) * g``,
    ``W = W * (2 * beta1 - 1) / beta1 + w``, ``v = beta2 * v + (1 - beta2) * g**2``,
    then Adam's bias-corrected update.

    Args:
        params: iterable of parameters to optimize, or of dicts defining parameter
            groups (a group's own options override the defaults below).
        lr: learning rate, >= 0. Default `1e-3`.
        betas: coefficients ``(beta1, beta2)`` of the moving averages of the gradient
            and of its square, each in [0, 1). Default `(0.9, 0.999)`.
        eps: added to the denominator of the update and to ``v`` in the
            Student-t weight, >= 0. Default `1e-8`.
        weight_decay: L2 penalty added to the gradient (``g + weight_decay * p``),
            >= 0. Default `0.0`.
        amsgrad: divide by the running maximum of the second moment (kept in
            ``max_exp_avg_sq``). Default `False`.
        dof: degrees of freedom of the Student-t distribution, > 0 (pylocron accepts 0, which turns a step whose gradient equals the mean into NaN); None means
            each parameter's number of elements. Default `None`.
        maximize: ascend instead of descend, as torch.optim's ``maximize``: each
            gradient is read as ``-g`` (``p.grad`` is not modified). Default `False`.
        decoupled_weight_decay: ``p *= 1 - lr * weight_decay`` before the step instead
            of ``weight_decay * p`` in the gradient (torch's ``decoupled_weight_decay``, as
            AdamW): the moments and the Student-t weight see ``g``.
            Default `False`.
        state_precision: the dtype of the per-element state (moments, momentum, maxima):
            ``"param"``, the parameter's; ``"float32"`` (mixed precision for bfloat16 and half
            parameters); ``"bfloat16"`` (half the bytes of float32 state); ``"8bit"`` (the
            moments of tensors of 4096 elements or more as 8-bit block-wise codes with a float32
            scale per 256, ``<name>_absmax``; the rest float32). The math runs in the
            parameter's math type; the state is rounded (or encoded) when stored. A load
            converts a checkpoint's state to each group's precision. Default `'param'`.
        kahan_summation: Kahan-compensated bfloat16 and float16 weights: each such parameter
            keeps ``kahan_comp`` (its dtype and shape), and its weight is ``p + kahan_comp``, read
            in float32 by the step, which stores ``p`` rounded and in ``kahan_comp`` what the
            rounding dropped, so that updates smaller than half a unit in the last place of ``p``
            accumulate instead of vanishing. Other parameters are unaffected. Default `False`.

    State (per parameter, the reference's keys): ``step`` (int), ``exp_avg``,
    ``exp_avg_sq``, ``max_exp_avg_sq`` (with ``amsgrad``) and ``W_t`` (the
    weight ``W``: a one-element tensor of the parameter's dtype, starting at
    ``beta1 / (1 - beta1)``).

    Differences from the reference (pylocron 0.3.0):
        - 0-d (scalar) parameters work, with the result of the same value held in
          a one-element tensor; the reference fails on them;
        - ``dof <= 0`` is refused.
    """

    _options = (_LR, _BETAS2, _EPS, _WEIGHT_DECAY, _AMSGRAD, Option("dof", None, _dof, range="(0, inf)"), _MAXIMIZE,
                _DECOUPLED, _STATE_PRECISION, _KAHAN)
    _state_buffers = _ADAM_BUFFERS
    _scalar_state = ("W_t",)  # the moments' running weight, a one-element tensor

    def _init_state(self, state, p, group) -> None:
        state["step"] = 0
        beta1 = group["betas"][0]
        # full, not a product with ones: the same value, and made for every floating dtype (float8 has no mul).
        state["W_t"] = torch.full(per_tensor_shape(p, (1,)), beta1 / (1 - beta1), dtype=p.dtype, device=p.device)

    def _validate(self, group, params, grads, states, pinned_still=False) -> None:
        super()._validate(group, params, grads, states, pinned_still)
        # In C where every state holds a W_t of its parameters' one dtype and device (past the
        # first step); one by one otherwise, to name the first that does not fit.
        if None not in states and self._hold_all(states, ["W_t"]):
            w_ts = gather(states, "W_t")
            dtypes, devices = set(map(attrgetter("dtype"), params)), set(map(attrgetter("device"), params))
            if (len(dtypes) == 1 and len(devices) == 1 and types_of(w_ts) == {torch.Tensor}
                    and set(map(torch.Tensor.numel, w_ts)) == {1} and set(map(attrgetter("dtype"), w_ts)) == dtypes
                    and set(map(attrgetter("device"), w_ts)) == devices):
                return
        for index, (p, state) in enumerate(zip(params, states)):
            w_t = (state or {}).get("W_t")
            count = per_tensor_shape(p, (1,))[0]
            if w_t is not None and (not isinstance(w_t, torch.Tensor) or w_t.numel() != count
                                    or w_t.dtype != p.dtype or w_t.device != p.device):
                raise RuntimeError(f"TAdam: state 'W_t' of parameter {index} must be {_w_t_size(count)} of dtype "
                                   f"{p.dtype} on {p.device}, got {_describe_w_t(w_t)}")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # W_t is not shaped like its parameter: checked here, before anything changes.
        check_state_dict_layout("TAdam", state_dict)
        ids = [i for group in state_dict["param_groups"] for i in group.get("params", [])]
        params = dict(zip(ids, (p for group in self.param_groups for p in group["params"])))
        for key, state in state_dict["state"].items():
            if not isinstance(key, int) or not isinstance(state, dict):
                continue  # not a parameter's (see the base class)
            w_t = state.get("W_t")
            count = per_tensor_shape(params[key], (1,))[0] if key in params else 1
            # A W_t of integers, bools or complex numbers would be cast to the parameter's dtype
            # by torch.optim's load, silently: 1 for any True, the real part of a complex one.
            if w_t is not None and (not isinstance(w_t, torch.Tensor) or w_t.layout != torch.strided
                                    or w_t.numel() != count or not w_t.is_floating_point()):
                raise ValueError(f"TAdam: state 'W_t' of parameter {key} must be {_w_t_size(count)}, "
                                 f"got {_describe_w_t(w_t)}")
        super().load_state_dict(state_dict)

    def _apply(self, group, params, grads, states) -> None:
        beta1, beta2 = group["betas"]
        steps, counters = self._counters(states)
        dof = group["dof"]
        distributed.call(
            ops.tadam_, params, grads, exp_avgs=self._gather(states, "exp_avg"),
            exp_avg_sqs=self._gather(states, "exp_avg_sq"),
            max_exp_avg_sqs=self._gather(states, "max_exp_avg_sq") if group["amsgrad"] else [],
            W_ts=self._gather(states, "W_t"), steps=steps, **self._lr(group), beta1=float(beta1), beta2=float(beta2),
            eps=float(group["eps"]), weight_decay=float(group["weight_decay"]), amsgrad=bool(group["amsgrad"]),
            dof=None if dof is None else float(dof),
            grad_scale=self._grad_scale_now, found_inf=self._found_inf_now, maximize=bool(group.get("maximize", False)),
            **self._compensation(group, params, states), **self._blockwise_scales(group, params, states), **counters, sums=True,
            decoupled_weight_decay=bool(group.get("decoupled_weight_decay", False)),
        )
        self._commit_steps(states, steps)


class _AdamLike(FusedStep, Adam):
    """torch.optim.Adam's constructor, validation and param_groups, as the reference's."""

    _state_buffers = _ADAM_BUFFERS

    def _construct(self, params: Any, defaults: dict[str, Any]) -> None:
        # Options beyond Adam's join the defaults after Adam's constructor, which takes only its
        # own: until then add_param_group gives its groups their values.
        adam_options = inspect.signature(Adam.__init__).parameters
        self._beyond_adam = {k: v for k, v in defaults.items() if k not in adam_options}
        Adam.__init__(self, params, **{k: v for k, v in defaults.items() if k in adam_options})
        self.defaults.update(self._beyond_adam)
        del self._beyond_adam

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        for key, value in self.__dict__.get("_beyond_adam", {}).items():
            param_group.setdefault(key, value)
        super().add_param_group(param_group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # torch.optim.Adam.__setstate__ turns step counters into float tensors
        # on load; the reference's counters are ints, and ours stay ints so that
        # a loaded optimizer's state_dict equals the one it was saved from.
        Adam.__setstate__(self, state)
        self._fill_options_added_later()
        # Only the parameters' states: an entry of another key (a hook's) is the
        # loaded state dict's own object, which a load must not change.
        for group in self.param_groups:
            for p in group["params"]:
                p_state = self.state.get(p)
                if isinstance(p_state, dict) and isinstance(p_state.get("step"), torch.Tensor):
                    p_state["step"] = step_count(p_state["step"])

    def _adam_lists(self, group, states):
        return {
            "exp_avgs": self._gather(states, "exp_avg"),
            "exp_avg_sqs": self._gather(states, "exp_avg_sq"),
            "max_exp_avg_sqs": self._gather(states, "max_exp_avg_sq") if group.get("amsgrad", False) else [],
        }


class AdaBelief(_AdamLike):
    """AdaBelief: Adam whose second moment tracks the gradient's deviation from its mean.

    Paper: Juntang Zhuang, Tommy Tang, Yifan Ding, Sekhar Tatikonda, Nicha
    Dvornek, Xenophon Papademetris, James S. Duncan, "AdaBelief Optimizer:
    Adapting Stepsizes by the Belief in Observed Gradients", NeurIPS 2020,
    https://arxiv.org/abs/2010.07468

    Per parameter, with ``g = g + weight_decay * p`` (unless ``decoupled_weight_decay``):
    ``m = beta1 * m + (1 - beta1) * g``, ``s = beta2 * s + (1 - beta2) * (g - m)**2``
    (with the updated ``m``; ``eps`` is not added into ``s``, as in the
    reference, unless ``eps_in_variance``), then Adam's bias-corrected update with ``s`` for ``v``. A
    subclass of ``torch.optim.Adam``: its constructor checks and group keys.

    Args:
        params: iterable of parameters to optimize, or of dicts defining parameter
            groups (a group's own options override the defaults below).
        lr: learning rate, >= 0. Default `1e-3`.
        betas: coefficients ``(beta1, beta2)`` of the moving averages of the
            gradient and of its squared deviation, each in [0, 1).
            Default `(0.9, 0.999)`.
        eps: added to the denominator for numerical stability, >= 0. Default `1e-8`.
        weight_decay: L2 penalty added to the gradient (``g + weight_decay * p``),
            >= 0. Default `0.0`.
        amsgrad: divide by the running maximum of ``s`` (kept in
            ``max_exp_avg_sq``). Default `False`.
        maximize: ascend instead of descend, as torch.optim's ``maximize``: each
            gradient is read as ``-g`` (``p.grad`` is not modified). Default `False`.
        decoupled_weight_decay: ``p *= 1 - lr * weight_decay`` before the step instead
            of ``weight_decay * p`` in the gradient (torch's ``decoupled_weight_decay``, as
            AdamW). Default `False`.
        rectify: RAdam's rectification (timm's ``rectify``): while the approximated
            SMA length ``rho_t`` of the second moment is >= 5,
            ``p -= lr * r_t * sqrt(1 - beta2**t) / (1 - beta1**t) * m / (sqrt(s) + eps)``
            (``r_t`` RAdam's factor; ``s`` is not bias-corrected, and is read rather than its
            running maximum even with ``amsgrad``, as timm); below, see
            ``degenerated_to_sgd``. Default `False`.
        degenerated_to_sgd: with ``rectify``, while ``rho_t < 5``:
            ``p -= lr * m / (1 - beta1**t)``; False: no step there (the decay still
            applies). Read only with ``rectify``. Default `True`.
        fixed_decay: with ``decoupled_weight_decay``, ``p *= 1 - weight_decay`` (not
            scaled by ``lr``, timm's); refused without it. Default `False`.
        eps_in_variance: ``s = beta2 * s + (1 - beta2) * (g - m)**2 + eps`` (the paper's
            Algorithm 1, the authors' and timm's code), stored, so that it accumulates.
            Default `False`.
        state_precision: the dtype of the per-element state (moments, momentum, maxima):
            ``"param"``, the parameter's; ``"float32"`` (mixed precision for bfloat16 and half
            parameters); ``"bfloat16"`` (half the bytes of float32 state); ``"8bit"`` (the
            moments of tensors of 4096 elements or more as 8-bit block-wise codes with a float32
            scale per 256, ``<name>_absmax``; the rest float32). The math runs in the
            parameter's math type; the state is rounded (or encoded) when stored. A load
            converts a checkpoint's state to each group's precision. Default `'param'`.
        kahan_summation: Kahan-compensated bfloat16 and float16 weights: each such parameter
            keeps ``kahan_comp`` (its dtype and shape), and its weight is ``p + kahan_comp``, read
            in float32 by the step, which stores ``p`` rounded and in ``kahan_comp`` what the
            rounding dropped, so that updates smaller than half a unit in the last place of ``p``
            accumulate instead of vanishing. Other parameters are unaffected. Default `False`.

    timm's ``AdaBelief`` is ``decoupled_weight_decay``, ``eps_in_variance`` and ``rectify``
    with ``eps=1e-16`` (``holocron_optim.timm.AdaBelief``).

    State (per parameter, the reference's keys): ``step`` (int, 1 after the first
    update), ``exp_avg``, ``exp_avg_sq`` and, with ``amsgrad``, ``max_exp_avg_sq``. ``exp_avg_sq`` holds ``s``.

    No deliberate difference from the reference (pylocron 0.3.0).
    """

    _options = (_LR, _BETAS2, _EPS, _WEIGHT_DECAY, _AMSGRAD, _MAXIMIZE, _DECOUPLED,
                Option("rectify", False, flag, added_later=True),
                Option("degenerated_to_sgd", True, flag, added_later=True),
                Option("fixed_decay", False, flag, added_later=True),
                Option("eps_in_variance", False, flag, added_later=True), _STATE_PRECISION, _KAHAN)
    # The group key of the decoupled decay (timm's AdaBelief names it decoupled_decay).
    _decoupled_key = "decoupled_weight_decay"

    def _apply(self, group, params, grads, states) -> None:
        beta1, beta2 = group["betas"]
        steps, counters = self._counters(states)
        distributed.call(
            ops.adabelief_, params, grads, **self._adam_lists(group, states), steps=steps, **self._lr(group),
            beta1=float(beta1), beta2=float(beta2), eps=float(group["eps"]), weight_decay=float(group["weight_decay"]),
            amsgrad=bool(group.get("amsgrad", False)),
            grad_scale=self._grad_scale_now, found_inf=self._found_inf_now, maximize=bool(group.get("maximize", False)),
            **self._compensation(group, params, states), **self._blockwise_scales(group, params, states), **counters,
            decoupled_weight_decay=bool(group.get(self._decoupled_key, False)),
            rectify=bool(group.get("rectify", False)), degenerated_to_sgd=bool(group.get("degenerated_to_sgd", True)),
            fixed_decay=bool(group.get("fixed_decay", False)), eps_in_variance=bool(group.get("eps_in_variance", False)),
        )
        self._commit_steps(states, steps)


class AdamP(_AdamLike):
    """AdamP: Adam that removes the radial part of updates of scale-invariant weights.

    Paper: Byeongho Heo, Sanghyuk Chun, Seong Joon Oh, Dongyoon Han, Sangdoo Yun,
    Gyuwan Kim, Youngjung Uh, Jung-Woo Ha, "AdamP: Slowing Down the Slowdown for
    Momentum Optimizers on Scale-invariant Weights", ICLR 2021,
    https://arxiv.org/abs/2006.08217

    Per parameter, as the reference: Adam moments of ``g = g + weight_decay * p``,
    ``q = m_hat / (sqrt(v_hat) + eps)``; when the cosine of ``p`` and ``g`` (over
    the flattened tensors) is below ``delta / sqrt(p.numel())``, ``q`` loses its
    component along ``p / (||p|| + eps)``; then ``p -= lr * q``. A subclass of
    ``torch.optim.Adam``: its constructor checks and group keys.

    Args:
        params: iterable of parameters to optimize, or of dicts defining parameter
            groups (a group's own options override the defaults below).
        lr: learning rate, >= 0. Default `1e-3`.
        betas: coefficients ``(beta1, beta2)`` of the moving averages of the gradient
            and of its square, each in [0, 1). Default `(0.9, 0.999)`.
        eps: added to the denominator for numerical stability, >= 0. Default `1e-8`.
        weight_decay: L2 penalty added to the gradient (``g + weight_decay * p``),
            >= 0. Default `0.0`.
        amsgrad: divide by the running maximum of the second moment (kept in
            ``max_exp_avg_sq``). Default `False`.
        delta: threshold of the scale-invariance test (any finite number). An
            attribute of the optimizer, not a group option, as in the
            reference. Default `0.1`.
        maximize: ascend instead of descend, as torch.optim's ``maximize``: each
            gradient is read as ``-g`` (``p.grad`` is not modified). Default `False`.
        decoupled_weight_decay: ``p *= 1 - lr * weight_decay`` before the step instead
            of ``weight_decay * p`` in the gradient (torch's ``decoupled_weight_decay``, as
            AdamW): the moments and the cosine see ``g``, the
            projection is of the decayed parameter (without ``channel_projection``). Default `False`.
        nesterov: Nesterov's direction (timm's, the authors'): ``q`` from
            ``beta1 * m + (1 - beta1) * g`` in place of ``m``. Default `False`.
        wd_ratio: the decoupled decay of a parameter the projection projects becomes
            ``p *= 1 - lr * weight_decay * wd_ratio`` (timm's, the authors'; 0.1 there).
            Other than 1 only with ``channel_projection`` and
            ``decoupled_weight_decay``. >= 0. Default `1.0`.
        channel_projection: timm's and the authors' projection instead of the
            reference's flattened one, for parameters of more than one dimension only: if
            ``|cos|`` of every output channel's ``p`` and ``g`` (the rows of
            ``p.reshape(p.size(0), -1)``) is below ``delta / sqrt(p.numel() / p.size(0))``,
            each channel's ``q`` loses its component along that channel's
            ``p / (||p|| + eps)``; else, if the whole tensor's ``|cos|`` is below
            ``delta / sqrt(p.numel())``, the whole ``q`` loses it; norms in the cosines are
            clamped at ``eps``, and the decision and the projection are of ``p`` before its
            decay. On sharded parameters too (FSDP2, tensor parallelism, DeepSpeed's flat
            partitions): each channel's sums are all-reduced over its shards. Default `False`.
        caution: Cautious Optimizers (Liang et al. 2024), as pytorch-optimizer's
            ``AdamP(cautious=True)``: ``m`` enters ``q`` only where ``m * g > 0``, times
            ``numel / (kept + 1)`` (the whole tensor's count, over all shards), before
            Nesterov's mix and the projection. timm's AdamP ``caution`` is another, spherical,
            rule (not available). Default `False`.
        state_precision: the dtype of the per-element state (moments, momentum, maxima):
            ``"param"``, the parameter's; ``"float32"`` (mixed precision for bfloat16 and half
            parameters); ``"bfloat16"`` (half the bytes of float32 state); ``"8bit"`` (the
            moments of tensors of 4096 elements or more as 8-bit block-wise codes with a float32
            scale per 256, ``<name>_absmax``; the rest float32). The math runs in the
            parameter's math type; the state is rounded (or encoded) when stored. A load
            converts a checkpoint's state to each group's precision. Default `'param'`.
        kahan_summation: Kahan-compensated bfloat16 and float16 weights: each such parameter
            keeps ``kahan_comp`` (its dtype and shape), and its weight is ``p + kahan_comp``, read
            in float32 by the step, which stores ``p`` rounded and in ``kahan_comp`` what the
            rounding dropped, so that updates smaller than half a unit in the last place of ``p``
            accumulate instead of vanishing. Other parameters are unaffected. Default `False`.

    timm's ``AdamP`` is ``decoupled_weight_decay``, ``channel_projection`` and
    ``wd_ratio=0.1`` (``holocron_optim.timm.AdamP``).

    State (per parameter, the reference's keys): ``step`` (int, 1 after the first
    update), ``exp_avg``, ``exp_avg_sq`` and, with ``amsgrad``, ``max_exp_avg_sq``.

    No deliberate difference from the reference (pylocron 0.3.0).
    """

    _options = (_LR, _BETAS2, _EPS, _WEIGHT_DECAY, _AMSGRAD,
                Option("delta", 0.1, finite("delta"), setting=True, range="(-inf, inf)"), _MAXIMIZE, _DECOUPLED,
                Option("nesterov", False, flag_or_none, added_later=True),
                Option("wd_ratio", 1.0, finite("wd_ratio", non_negative=True), range="[0, inf)", added_later=True),
                Option("channel_projection", False, flag, added_later=True),
                Option("caution", False, flag, added_later=True), _STATE_PRECISION, _KAHAN)
    # The group key of the decoupled decay (timm's AdamP decays so always), and whether delta is a
    # group option (timm's) rather than the optimizer's attribute (the reference's).
    _decoupled_key: str | None = "decoupled_weight_decay"
    _delta_in_groups = False
    # timm's group key `caution` names its spherical rule, refused by its option's check.
    _spherical_caution = False

    def _apply(self, group, params, grads, states) -> None:
        beta1, beta2 = group["betas"]
        steps, counters = self._counters(states)
        distributed.call(
            ops.adamp_, params, grads, **self._adam_lists(group, states), steps=steps, **self._lr(group),
            beta1=float(beta1), beta2=float(beta2), eps=float(group["eps"]), weight_decay=float(group["weight_decay"]),
            amsgrad=bool(group.get("amsgrad", False)),
            delta=float(group["delta"] if self._delta_in_groups else self.delta),
            grad_scale=self._grad_scale_now, found_inf=self._found_inf_now, maximize=bool(group.get("maximize", False)),
            **self._compensation(group, params, states), **self._blockwise_scales(group, params, states), **counters, sums=True,
            decoupled_weight_decay=True if self._decoupled_key is None else bool(group.get(self._decoupled_key, False)),
            nesterov=bool(group.get("nesterov", False)), wd_ratio=float(group.get("wd_ratio", 1.0)),
            channel_projection=bool(group.get("channel_projection", False)),
            channels=bool(group.get("channel_projection", False)),
            caution=bool(group.get("caution", False)) and not self._spherical_caution,
        )
        self._commit_steps(states, steps)


class Adan(FusedStep, Optimizer):
    """Adan: adaptive Nesterov momentum, from averages of the gradient and its differences.

    Paper: Xingyu Xie, Pan Zhou, Huan Li, Zhouchen Lin, Shuicheng Yan, "Adan:
    Adaptive Nesterov Momentum Algorithm for Faster Optimizing Deep Models", 2022,
    https://arxiv.org/abs/2208.06677

    Per parameter, with ``g = g + weight_decay * p`` (unless ``decoupled_weight_decay``) and ``diff = g - prev_grad``:
    ``m = beta1 * m + (1 - beta1) * g``, ``v = beta2 * v + (1 - beta2) * diff``,
    ``n = beta3 * n + (1 - beta3) * (g + beta2 * diff)**2``,
    ``p -= lr * (m / bc1 + beta2 * v / bc2) / (sqrt(n / bc3) + eps)`` with
    ``bcK = 1 - betaK**t``, then ``p /= 1 + weight_decay * lr`` when
    ``weight_decay != 0`` (both weight decay terms are the reference's).

    Args:
        params: iterable of parameters to optimize, or of dicts defining parameter
            groups (a group's own options override the defaults below).
        lr: learning rate, >= 0. Default `1e-3`.
        betas: coefficients ``(beta1, beta2, beta3)`` of the moving averages of
            the gradient, of its difference and of the squared Nesterov
            direction, each in [0, 1). Default `(0.98, 0.92, 0.99)`.
        eps: added to the denominator for numerical stability, >= 0. Default `1e-8`.
        weight_decay: added to the gradient as ``weight_decay * p`` (unless
            ``decoupled_weight_decay``), and divides ``p`` by ``1 + weight_decay * lr``
            after the update (unless ``no_prox``); >= 0. Default `0.0`.
        amsgrad: divide by the running maximum of ``n`` (kept in
            ``max_exp_avg_delta``). Default `False`.
        maximize: ascend instead of descend, as torch.optim's ``maximize``: each
            gradient is read as ``-g`` (``p.grad`` is not modified). Default `False`.
        decoupled_weight_decay: no ``weight_decay * p`` in the gradient; the decay is
            then only the division after the update (or ``no_prox``'s product), as in
            the authors' code and timm's ``Adan``. Default `False`.
        no_prox: ``p *= 1 - weight_decay * lr`` before the update instead of
            ``p /= 1 + weight_decay * lr`` after it (the authors' and timm's). Default `False`.
        max_grad_norm: global gradient-norm clipping, as the authors' code: the
            gradients of every group are read multiplied by
            ``min(max_grad_norm / (norm + eps), 1)``, ``norm`` being the one norm of all of
            them (unscaled by GradScaler first, over all shards) and ``eps`` the group's;
            ``p.grad`` is not modified. Groups holding different values are clipped apart.
            None: no clipping. Default `None`.
        caution: Cautious Optimizers (Liang et al. 2024, timm's ``caution``): the first
            moment's term of the update only where ``m * g > 0``, rescaled by
            ``1 / max(fraction kept, 1e-3)`` (the fraction of the whole tensor, over all
            shards). Default `False`.
        state_precision: the dtype of the per-element state (moments, momentum, maxima):
            ``"param"``, the parameter's; ``"float32"`` (mixed precision for bfloat16 and half
            parameters); ``"bfloat16"`` (half the bytes of float32 state); ``"8bit"`` (the
            moments of tensors of 4096 elements or more as 8-bit block-wise codes with a float32
            scale per 256, ``<name>_absmax``; the rest float32). The math runs in the
            parameter's math type; the state is rounded (or encoded) when stored. A load
            converts a checkpoint's state to each group's precision. Default `'param'`.
        kahan_summation: Kahan-compensated bfloat16 and float16 weights: each such parameter
            keeps ``kahan_comp`` (its dtype and shape), and its weight is ``p + kahan_comp``, read
            in float32 by the step, which stores ``p`` rounded and in ``kahan_comp`` what the
            rounding dropped, so that updates smaller than half a unit in the last place of ``p``
            accumulate instead of vanishing. Other parameters are unaffected. Default `False`.

    The authors' and timm's Adan is ``decoupled_weight_decay=True``; their ``adanw`` adds
    ``no_prox=True``.

    State (per parameter, the reference's keys): ``step`` (int), ``exp_avg``
    (``m``), ``exp_avg_sq`` (``v``, an average of differences despite its name),
    ``exp_avg_delta`` (``n``), ``max_exp_avg_delta`` (with ``amsgrad``) and
    ``prev_grad``.

    Differences from the reference (pylocron 0.3.0):
        - ``prev_grad`` holds the previous step's ``g`` (weight decay included)
          and a parameter's first ``diff`` is zero, as in the paper and its
          authors' code; the reference never updates it, so its ``diff`` is
          always the whole gradient.
    """

    _state_buffers = (
        # exp_avg_sq holds the gradients' differences' moment (signed), exp_avg_delta the squares'.
        Buffer("exp_avg", signed=True), Buffer("exp_avg_sq", signed=True), Buffer("exp_avg_delta", signed=False),
        Buffer("max_exp_avg_delta", exists=lambda group: group.get("amsgrad", False), signed=False),
        Buffer("prev_grad"),
    )

    _options = (_LR, Option("betas", (0.98, 0.92, 0.99), betas("three"), range="[0, 1)"), _EPS, _WEIGHT_DECAY, _AMSGRAD,
                _MAXIMIZE, _DECOUPLED,
                Option("no_prox", False, flag, added_later=True),
                Option("max_grad_norm", None, positive_or_none("max_grad_norm"), range="(0, inf)", added_later=True),
                Option("caution", False, flag, added_later=True), _STATE_PRECISION, _KAHAN)
    # Where a group holds no decoupled_weight_decay (timm's Adan, whose decay is always decoupled).
    _decoupled_default = False

    def _apply(self, group, params, grads, states) -> None:
        beta1, beta2, beta3 = group["betas"]
        steps, counters = self._counters(states)
        distributed.call(
            ops.adan_, params, grads, prev_grads=self._gather(states, "prev_grad"),
            exp_avgs=self._gather(states, "exp_avg"), exp_avg_sqs=self._gather(states, "exp_avg_sq"),
            exp_avg_deltas=self._gather(states, "exp_avg_delta"),
            max_exp_avg_deltas=self._gather(states, "max_exp_avg_delta") if group.get("amsgrad", False) else [],
            steps=steps,
            **self._lr(group), beta1=float(beta1), beta2=float(beta2), beta3=float(beta3), eps=float(group["eps"]),
            weight_decay=float(group["weight_decay"]), amsgrad=bool(group.get("amsgrad", False)),
            grad_scale=self._grad_scale_now, found_inf=self._found_inf_now, maximize=bool(group.get("maximize", False)),
            **self._compensation(group, params, states), **self._blockwise_scales(group, params, states), **counters,
            decoupled_weight_decay=bool(group.get("decoupled_weight_decay", self._decoupled_default)),
            no_prox=bool(group["no_prox"]), **self._clipping(group), caution=bool(group["caution"]),
            sums=bool(group["caution"]),
        )
        self._commit_steps(states, steps)


class AdEMAMix(FusedStep, Optimizer):
    """AdEMAMix: Adam with a second, slow moving average of gradients.

    Paper: Matteo Pagliardini, Pierre Ablin, David Grangier, "The AdEMAMix
    Optimizer: Better, Faster, Older", 2024, https://arxiv.org/abs/2409.03137

    Per parameter, with ``g = g + weight_decay * p`` (unless ``decoupled_weight_decay``):
    ``m1 = beta1 * m1 + (1 - beta1) * g``, ``nu = beta2 * nu + (1 - beta2) * g**2``,
    ``m2 = beta3 * m2 + (1 - beta3) * g``,
    ``p -= lr * (m1 / (1 - beta1**t) + alpha * m2) / (sqrt(nu / (1 - beta2**t)) + eps)``.
    As in the reference, weight decay is an L2 term in the gradient; ``alpha`` and
    ``beta3`` warm up as the paper's Algorithm 1 with ``t_alpha`` and ``t_beta3`` (by
    default they do not, as the reference).

    Args:
        params: iterable of parameters to optimize, or of dicts defining parameter
            groups (a group's own options override the defaults below).
        lr: learning rate, >= 0. Default `1e-3`.
        betas: coefficients ``(beta1, beta2, beta3)`` of the fast average of the
            gradient, of the average of its square and of the slow average of the
            gradient, each in [0, 1). Default `(0.9, 0.999, 0.9999)`.
        alpha: weight of the slow average in the update (any finite number).
            Default `5.0`.
        eps: added to the denominator for numerical stability, >= 0. Default `1e-8`.
        weight_decay: L2 penalty added to the gradient (``g + weight_decay * p``),
            >= 0. Default `0.0`.
        maximize: ascend instead of descend, as torch.optim's ``maximize``: each
            gradient is read as ``-g`` (``p.grad`` is not modified). Default `False`.
        t_alpha: warm-up of ``alpha`` over that many steps (the paper's ``T_alpha``,
            bitsandbytes' ``t_alpha``): at a parameter's step ``t``,
            ``alpha_t = min(t * alpha / t_alpha, alpha)``. None: no warm-up; else > 0.
            Default `None`.
        t_beta3: warm-up of ``beta3`` from ``beta1`` over that many steps (the paper's
            ``T_beta3``): for ``t < t_beta3``, ``beta3_t = min(exp(ln(beta1) * ln(beta3) /
            ((1 - t / t_beta3) * ln(beta3) + t / t_beta3 * ln(beta1))), beta3)``, then
            ``beta3``. None: no warm-up; else > 0, with ``beta1 > 0`` and ``beta3 > 0``.
            Default `None`.
        decoupled_weight_decay: ``p *= 1 - lr * weight_decay`` before the step instead
            of ``weight_decay * p`` in the gradient (torch's ``decoupled_weight_decay``, as
            AdamW). Default `False`.
        caution: Cautious Optimizers (Liang et al. 2024, pytorch-optimizer's
            ``cautious``): the fast average's term only where ``m1 * g > 0``, rescaled by
            ``numel / (kept + 1)`` (over the whole tensor, all shards). Default `False`.
        state_precision: the dtype of the per-element state (moments, momentum, maxima):
            ``"param"``, the parameter's; ``"float32"`` (mixed precision for bfloat16 and half
            parameters); ``"bfloat16"`` (half the bytes of float32 state); ``"8bit"`` (the
            moments of tensors of 4096 elements or more as 8-bit block-wise codes with a float32
            scale per 256, ``<name>_absmax``; the rest float32). The math runs in the
            parameter's math type; the state is rounded (or encoded) when stored. A load
            converts a checkpoint's state to each group's precision. Default `'param'`.
        kahan_summation: Kahan-compensated bfloat16 and float16 weights: each such parameter
            keeps ``kahan_comp`` (its dtype and shape), and its weight is ``p + kahan_comp``, read
            in float32 by the step, which stores ``p`` rounded and in ``kahan_comp`` what the
            rounding dropped, so that updates smaller than half a unit in the last place of ``p``
            accumulate instead of vanishing. Other parameters are unaffected. Default `False`.

    State (per parameter, the reference's keys): ``step`` (int), ``exp_avg``
    (``m1``), ``exp_avg_slow`` (``m2``, not bias-corrected) and ``exp_avg_sq``
    (``nu``).

    Differences from the reference (pylocron 0.3.0):
        - ``weight_decay < 0`` is refused; pylocron accepts it.
    """

    _state_buffers = (Buffer("exp_avg", signed=True), Buffer("exp_avg_slow", signed=True),
                      Buffer("exp_avg_sq", signed=False))

    _options = (_LR, Option("betas", (0.9, 0.999, 0.9999), betas(), range="[0, 1)"),
                Option("alpha", 5.0, finite("alpha"), range="(-inf, inf)"), _EPS, _WEIGHT_DECAY, _MAXIMIZE,
                Option("t_alpha", None, positive_or_none("t_alpha"), range="(0, inf)", added_later=True),
                Option("t_beta3", None, positive_or_none("t_beta3"), range="(0, inf)", added_later=True),
                _DECOUPLED, Option("caution", False, flag, added_later=True), _STATE_PRECISION, _KAHAN)

    def _apply(self, group, params, grads, states) -> None:
        beta1, beta2, beta3 = group["betas"]
        steps, counters = self._counters(states)
        distributed.call(
            ops.ademamix_, params, grads, exp_avgs=self._gather(states, "exp_avg"),
            exp_avgs_slow=self._gather(states, "exp_avg_slow"),
            exp_avg_sqs=self._gather(states, "exp_avg_sq"), steps=steps, **self._lr(group), beta1=float(beta1),
            beta2=float(beta2), beta3=float(beta3), alpha=float(group["alpha"]), eps=float(group["eps"]),
            weight_decay=float(group["weight_decay"]),
            grad_scale=self._grad_scale_now, found_inf=self._found_inf_now, maximize=bool(group.get("maximize", False)),
            **self._compensation(group, params, states), **self._blockwise_scales(group, params, states), **counters,
            decoupled_weight_decay=bool(group.get("decoupled_weight_decay", False)),
            t_alpha=group["t_alpha"], t_beta3=group["t_beta3"], caution=bool(group["caution"]),
            sums=bool(group["caution"]),
        )
        self._commit_steps(states, steps)


_base.ALGORITHMS[:] = [LARS, LAMB, RaLars, TAdam, AdaBelief, AdamP, Adan, AdEMAMix]
