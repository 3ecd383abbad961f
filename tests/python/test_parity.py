"""Step-for-step parity of the eight optimizers with the reference (pylocron 0.3.0),
and the deliberate fixes that make them differ (docs/algorithms.md)."""

from __future__ import annotations

import math

import pytest
import torch

import holocron_optim as ho
from _harness import ALGOS, TOL, Case, assert_close, assert_states_close, ref_state, run_lockstep

SEEDS = (0, 1, 2, 3)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", ALGOS)
def test_parity_with_reference(name, seed, dtype, fused_or_reference):
    case = Case(name, seed)
    ours, ours_p, refo, ref_p = run_lockstep(case, dtype)
    rtol = TOL[dtype]
    for i, (p, q) in enumerate(zip(ours_p, ref_p)):
        assert p.dtype == dtype
        assert_close(p, q, rtol, f"{name} param {i} {tuple(p.shape)} {case.options}")
        assert_states_close(ours.state.get(p, {}), ref_state(refo, q), rtol, f"{name} state {i}")
    # The parameters moved, and each group used its own lr.
    assert any(not torch.equal(p.detach(), t.to(dtype)) for p, t in zip(ours_p, case.init))
    assert ours.param_groups[1]["lr"] == case.lr2


@pytest.mark.parametrize("name", ALGOS)
def test_parity_detects_a_perturbed_lr(name):
    """The comparison is sharp enough to see the reference run with lr * (1 + 1e-4)."""
    case = Case(name, 0)
    ours, ours_p, refo, ref_p = run_lockstep(case, torch.float64, perturb=1.0001)
    with pytest.raises(AssertionError):
        for i, (p, q) in enumerate(zip(ours_p, ref_p)):
            assert_close(p, q, TOL[torch.float64], f"param {i}")


# -- Adan's prev_grad, kept up to date (the reference never updates it) ----------


def test_adan_prev_grad_is_the_last_decayed_gradient():
    p = torch.randn(5, dtype=torch.float64, requires_grad=True)
    opt = ho.Adan([p], lr=1e-2, weight_decay=0.1)
    g = torch.randn(5, dtype=torch.float64)
    p.grad = g.clone()
    expected = g + 0.1 * p.detach()
    opt.step()
    state = opt.state[p]
    torch.testing.assert_close(state["prev_grad"], expected, rtol=0, atol=1e-15)
    # The first difference is zero: the v moment is still zero after step one.
    assert torch.count_nonzero(state["exp_avg_sq"]) == 0


def test_adan_differs_from_the_reference_class(ref):
    """The reference class never updates prev_grad: its trajectory differs from ours."""
    torch.manual_seed(0)
    init = torch.randn(6, dtype=torch.float64)
    a, b = init.clone().requires_grad_(), init.clone().requires_grad_()
    oa, ob = ho.Adan([a], lr=1e-2), ref.Adan([b], lr=1e-2)
    for _ in range(3):
        g = torch.randn(6, dtype=torch.float64)
        a.grad, b.grad = g.clone(), g.clone()
        oa.step()
        ob.step()
    assert not torch.allclose(a, b, rtol=1e-6, atol=0)
    assert torch.count_nonzero(ob.state[b]["prev_grad"]) == 0


# -- LARS: p.grad left untouched, an explicit scale_clip applied (unlike the reference) --


def test_lars_reference_writes_grad_ours_does_not(ref):
    torch.manual_seed(1)
    init, g = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    a, b = init.clone().requires_grad_(), init.clone().requires_grad_()
    oa = ho.LARS([a], lr=0.1, weight_decay=0.1, momentum=0.9)
    ob = ref.LARS([b], lr=0.1, weight_decay=0.1, momentum=0.9)
    a.grad, b.grad = g.clone(), g.clone()
    oa.step()
    ob.step()
    assert torch.equal(a.grad, g)
    assert not torch.equal(b.grad, g)  # the reference's defect, fixed by ours
    torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


def _lars_case(norm: float):
    gen = torch.Generator().manual_seed(5)
    p = torch.randn(3, 5, 2, generator=gen, dtype=torch.float64)
    p = p / p.norm() * norm
    grads = [torch.randn(3, 5, 2, generator=gen, dtype=torch.float64) for _ in range(6)]
    return p, grads


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_lars_scale_clip_inside_bounds_matches_reference(ref, momentum):
    """With ||p|| inside the clip, an explicit scale_clip changes nothing: reference parity."""
    init, grads = _lars_case(3.0)
    a, b = init.clone().requires_grad_(), init.clone().requires_grad_()
    oa = ho.LARS([a], lr=0.05, momentum=momentum, weight_decay=0.01, scale_clip=(0.5, 10.0))
    ob = ref.LARS([b], lr=0.05, momentum=momentum, weight_decay=0.01)
    for g in grads:
        a.grad, b.grad = g.clone(), g.clone()
        oa.step()
        ob.step()
        assert 0.5 < float(a.detach().norm()) < 10.0
    torch.testing.assert_close(a, b, rtol=1e-10, atol=0)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_lars_scale_clip_above_bound_clamps_the_numerator(ref, momentum):
    init, grads = _lars_case(5.0)
    high, lr, wd = 2.0, 0.05, 0.01
    a, b = init.clone().requires_grad_(), init.clone().requires_grad_()
    oa = ho.LARS([a], lr=lr, momentum=momentum, weight_decay=wd, scale_clip=(0.0, high))
    ob = ref.LARS([b], lr=lr, momentum=momentum, weight_decay=wd, scale_clip=(0.0, high))
    expected, buf = init.clone(), None
    for g in grads:
        a.grad, b.grad = g.clone(), g.clone()
        oa.step()
        ob.step()
        # Hand computation: phi = min(||p||, high) over the unclamped denominator.
        p_norm = float(expected.norm())
        assert p_norm > high
        local_lr = min(p_norm, high) / (float(g.norm()) + wd * p_norm)
        d = g + wd * expected
        if momentum:
            buf = d.clone() if buf is None else buf * momentum + d
            d = buf
        expected = expected - lr * local_lr * d
        torch.testing.assert_close(a.detach(), expected, rtol=1e-11, atol=1e-13)
    # The reference ignores scale_clip: its result is different.
    assert not torch.allclose(a, b, rtol=1e-3, atol=0)


def test_lars_scale_clip_low_bound_raises_small_norms():
    init, grads = _lars_case(0.1)
    a = init.clone().requires_grad_()
    opt = ho.LARS([a], lr=0.05, scale_clip=(1.0, 10.0))
    g = grads[0]
    a.grad = g.clone()
    opt.step()
    expected = init - 0.05 * (1.0 / float(g.norm())) * g
    torch.testing.assert_close(a.detach(), expected, rtol=1e-12, atol=1e-14)


# -- TAdam on 0-d parameters (the reference fails on them) ----------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_tadam_scalar_param_equals_one_element(ref, dtype, amsgrad):
    gen = torch.Generator().manual_seed(3)
    grads = [torch.randn((), generator=gen, dtype=dtype) for _ in range(15)]
    s = torch.tensor(0.7, dtype=dtype, requires_grad=True)
    v = torch.tensor([0.7], dtype=dtype, requires_grad=True)
    r = torch.tensor([0.7], dtype=dtype, requires_grad=True)
    kwargs = {"lr": 0.05, "weight_decay": 0.01, "amsgrad": amsgrad}
    os_, ov, orf = ho.TAdam([s], **kwargs), ho.TAdam([v], **kwargs), ref.TAdam([r], **kwargs)
    for g in grads:
        s.grad, v.grad, r.grad = g.clone(), g.reshape(1).clone(), g.reshape(1).clone()
        os_.step()
        ov.step()
        orf.step()
    assert s.shape == ()
    assert torch.equal(s.detach().reshape(1), v.detach())
    assert_close(v, r, TOL[dtype], "TAdam (1,)")
    for key in ov.state[v]:
        if key != "step":
            assert torch.equal(os_.state[s][key].reshape(-1), ov.state[v][key].reshape(-1)), key


def test_reference_tadam_fails_on_scalars(ref):
    """Documents why ours differs here: the reference cannot step a 0-d parameter."""
    s = torch.tensor(0.7, requires_grad=True)
    opt = ref.TAdam([s])
    s.grad = torch.tensor(0.1)
    with pytest.raises(RuntimeError):
        opt.step()


# -- Reduced precision ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["LAMB", "AdaBelief", "Adan", "AdEMAMix", "LARS"])
def test_reduced_precision_follows_float32(name, dtype):
    case = Case(name, 7, steps=12)
    case.options["weight_decay"] = 0.0
    if name == "LARS":
        case.options["momentum"] = 0.9
        case.options["nesterov"] = False
    full_p, half_p = case.params(torch.float32), case.params(dtype)
    full = getattr(ho, name)(case.groups(full_p), **case.options)
    half = getattr(ho, name)(case.groups(half_p), **case.options)
    for t in range(case.steps):
        # The same gradients for both runs (rounded to the low precision first).
        for pf, ph, g in zip(full_p, half_p, case.grads(t, full_p)):
            gh = None if g is None else g.to(dtype)
            pf.grad, ph.grad = (None if gh is None else gh.float()), gh
        full.step()
        half.step()
    for pf, ph in zip(full_p, half_p):
        assert ph.dtype == dtype
        assert torch.isfinite(ph).all()
        tol = 0.05 if dtype == torch.bfloat16 else 0.01
        scale = max(1.0, float(pf.detach().abs().max()))
        torch.testing.assert_close(ph.detach().float(), pf.detach(), rtol=tol, atol=tol * scale)
        # And the update is far bigger than the error.
    moved = sum(float((pf.detach() - t.float()).abs().sum()) for pf, t in zip(full_p, case.init))
    assert moved > 0
    for p in half_p:
        for value in half.state.get(p, {}).values():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape == p.shape:
                assert value.dtype == dtype


def test_rtol_constants_are_sane():
    assert math.isclose(TOL[torch.float64], 1e-9) and math.isclose(TOL[torch.float32], 1e-4)
