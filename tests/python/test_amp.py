"""Mixed precision: torch.amp.GradScaler with every class.

Our classes take GradScaler's scale and found_inf (as torch's fused Adam
does): the kernels read g / scale in registers and a step with an inf or NaN
gradient is skipped before anything is touched. The results must be those of
GradScaler's own path (unscale the gradients in place, then a plain step),
bit for bit, on both backends; and the gradients are left as they were.
"""

from __future__ import annotations

import copy

import pytest
import torch

import holocron_optim as ho
from registry import ALGOS, factories
from holocron_optim._library import ops

CLASSES = {
    **factories(0.05, wrappers=False),
    "Lookahead(LAMB)": lambda p: ho.Lookahead(ho.LAMB(p, lr=0.05), sync_period=2),
    "Scout(Adan)": lambda p: ho.Scout(ho.Adan(p, lr=0.05), sync_period=2),
    "Lookahead(torch Adam)": lambda p: ho.Lookahead(torch.optim.Adam(p, lr=0.05), sync_period=2),
}


def make_params(dtype):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in [(4, 3), (70,), (1,), ()]]


def loss_of(params, step):
    gen = torch.Generator().manual_seed(step)
    return sum((torch.randn(p.shape, generator=gen, dtype=p.dtype) * p).sum() + (p**2).sum() for p in params)


def run(make, dtype, *, amp_path, init_scale=2.0**10, inf_at=(2,), steps=6):
    params = make_params(dtype)
    opt = make(params)
    if not amp_path:  # GradScaler's own path: it unscales the gradients itself
        inner = opt.base_optimizer if isinstance(opt, ho.Lookahead) else opt
        inner._step_supports_amp_scaling = False
    assert getattr(opt, "_step_supports_amp_scaling", False) == (amp_path and not isinstance(
        getattr(opt, "base_optimizer", None), torch.optim.Adam))
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=2)
    scales, grads_after = [], []
    for step in range(steps):
        opt.zero_grad()
        scaler.scale(loss_of(params, step)).backward()
        if step in inf_at:
            params[0].grad.view(-1)[0] = float("inf")
        before = [p.grad.clone() for p in params]
        scaler.step(opt)
        grads_after.append(all(torch.equal(a, p.grad) for a, p in zip(before, params)))
        scaler.update()
        scales.append(scaler.get_scale())
    return params, opt, scales, grads_after


@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("init_scale", [2.0**10, 1000.0])
@pytest.mark.parametrize("name", CLASSES)
def test_scaler_gives_the_bits_of_its_own_unscaling_path(name, init_scale, dtype, backend):
    previous = ops.cpu_capability()
    if backend == "reference":
        ops.set_cpu_capability("reference")
    try:
        ours, opt, scales, untouched = run(CLASSES[name], dtype, amp_path=True, init_scale=init_scale)
        theirs, ref_opt, ref_scales, _ = run(CLASSES[name], dtype, amp_path=False, init_scale=init_scale)
    finally:
        ops.set_cpu_capability(previous)
    assert scales == ref_scales and scales[2] == scales[1] / 2  # the inf step backed the scale off
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    assert str(opt.state_dict()) == str(ref_opt.state_dict())
    if opt._step_supports_amp_scaling:
        assert all(untouched), "the scale is taken in registers: gradients are not written"


@pytest.mark.parametrize("name", CLASSES)
def test_an_inf_gradient_skips_the_step_and_changes_nothing(name):
    params = make_params(torch.float32)
    opt = CLASSES[name](params)
    scaler = torch.amp.GradScaler("cpu")
    for step in range(3):
        opt.zero_grad()
        scaler.scale(loss_of(params, step)).backward()
        scaler.step(opt)
        scaler.update()
    values, state = [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict())
    opt.zero_grad()
    scaler.scale(loss_of(params, 3)).backward()
    params[1].grad[5] = float("nan")
    scaler.step(opt)
    assert all(torch.equal(a, p) for a, p in zip(values, params))
    assert str(opt.state_dict()) == str(state)


@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_ops_take_grad_scale_and_found_inf(backend):
    previous = ops.cpu_capability()
    if backend == "reference":
        ops.set_cpu_capability("reference")
    try:
        gen = torch.Generator().manual_seed(1)
        p = torch.randn(50, generator=gen)
        g = torch.randn(50, generator=gen)
        m, v = torch.zeros(50), torch.zeros(50)
        state = [t.clone() for t in (p, m, v)]
        hyper = dict(steps=[1], lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, amsgrad=False)
        out = ops.adabelief_([p], [g * 8], exp_avgs=[m], exp_avg_sqs=[v], max_exp_avg_sqs=[], **hyper,
                             grad_scale=torch.tensor(8.0), found_inf=torch.tensor(1.0))
        assert all(torch.equal(a, b) for a, b in zip(state, (p, m, v))), "found_inf: nothing written"
        for bad in (torch.tensor(0.0), torch.tensor(-2.0), torch.tensor(float("nan")), torch.ones(2)):
            with pytest.raises(ValueError, match="grad_scale"):
                ops.adabelief_([p], [g * 8], exp_avgs=[m], exp_avg_sqs=[v], max_exp_avg_sqs=[], **hyper, grad_scale=bad)
            assert all(torch.equal(a, b) for a, b in zip(state, (p, m, v)))
        scaled = g * 8
        ops.adabelief_([p], [scaled], exp_avgs=[m], exp_avg_sqs=[v], max_exp_avg_sqs=[], **hyper,
                       grad_scale=torch.tensor(8.0), found_inf=torch.tensor(0.0))
        p2, m2, v2 = state
        ops.adabelief_([p2], [g], exp_avgs=[m2], exp_avg_sqs=[v2], max_exp_avg_sqs=[], **hyper)
        assert torch.equal(p, p2) and torch.equal(m, m2) and torch.equal(v, v2)
        assert torch.equal(scaled, g * 8)
    finally:
        ops.set_cpu_capability(previous)


# Without a scaler a non-finite gradient is applied as given, as torch.optim
# does: it reaches its own parameter (the whole tensor where the update uses a
# per-tensor norm or sum: LARS, LAMB, RaLars, TAdam; that one element
# otherwise) and never another parameter. Use GradScaler, or check the
# gradients, to skip such steps.
WHOLE_TENSOR = {"LARS": {"nan"}, "LAMB": {"nan", "inf"}, "RaLars": {"nan"}, "TAdam": {"nan"}}


@pytest.mark.parametrize("bad", ["nan", "inf"])
@pytest.mark.parametrize("name", ALGOS)
def test_without_a_scaler_a_non_finite_gradient_reaches_only_its_parameter(name, bad):
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(5, generator=gen).requires_grad_(), torch.randn(3, generator=gen).requires_grad_()]
    opt = getattr(ho, name)(params, lr=0.1)
    for step in range(2):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        if step == 1:
            params[0].grad[0] = float(bad)
        opt.step()
    finite = torch.isfinite(params[0]).tolist()
    assert not finite[0]
    assert all(finite[1:]) == (bad not in WHOLE_TENSOR.get(name, set()))
    assert torch.isfinite(params[1]).all()
