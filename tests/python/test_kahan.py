"""`kahan_summation` (issue 17): Kahan-compensated bfloat16 and float16 weights on every class.

A compensated weight is `p + kahan_comp`: the step reads that sum in float32 and stores `p`
rounded and in `kahan_comp` what the rounding dropped. The oracle is the reference (pylocron
0.3.0, Adan's from the harness) run in float32 on the weights `p + c`, its state rounded to the
state's dtype after every step, and its weights then split the same way into a rounded `p` and a
rounded `c`. A run without compensation stalls where updates are below half a unit in the last
place of the weights; with it, the weights move as float32 weights do."""

from __future__ import annotations

import copy
import io

import pytest
import torch

import holocron_optim as ho
from _harness import ALGOS, Case, assert_close, assert_same, make_ref, round_reference_state_, step_in_lockstep
from registry import ALGORITHMS

STEPS = 16
LOW = (torch.bfloat16, torch.float16)


def _split(weight: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A float32 weight as a compensated one: `p` rounded to dtype, `c` what that dropped."""
    p = weight.to(dtype)
    return p, (weight - p.float()).to(dtype)


def _lockstep(name, seed, dtype, precision, compensate_oracle=True, steps=STEPS):
    case = Case(name, seed, steps=steps)
    buffers = getattr(ho, name)._all_buffers
    state_dtype = {"param": dtype, "float32": torch.float32, "bfloat16": torch.bfloat16}[precision]
    ours_p = case.params(dtype)
    ref_p = [q.detach().float().requires_grad_() for q in ours_p]
    ours = getattr(ho, name)(case.groups(ours_p), **case.options, state_precision=precision, kahan_summation=True)
    refo = make_ref(case, ref_p)
    for t in range(case.steps):
        step_in_lockstep(case, t, ours, ours_p, refo, ref_p)
        with torch.no_grad():
            for q in ref_p:
                round_reference_state_(refo, q, buffers, state_dtype, dtype)
                if compensate_oracle:
                    p, c = _split(q, dtype)
                    q.copy_(p.float() + c.float())
                else:
                    q.copy_(q.to(dtype))
    return ours, ours_p, refo, ref_p


def _weights(optimizer, params):
    """Each parameter's compensated weight in float32."""
    out = []
    for p in params:
        c = optimizer.state.get(p, {}).get("kahan_comp")
        out.append(p.detach().float() + (c.float() if c is not None else 0.0))
    return out


# The weights p + c agree to the float32 reference's own last-bit differences, which move a
# rounding of p or c by one unit now and then (measured below 1e-4 of each tensor's largest weight).
@pytest.mark.parametrize("precision", ["param", "float32"])
@pytest.mark.parametrize("dtype", LOW, ids=["bfloat16", "float16"])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", ALGOS)
def test_matches_the_reference_on_compensated_weights(name, seed, dtype, precision, fused_or_reference):
    ours, ours_p, refo, ref_p = _lockstep(name, seed, dtype, precision)
    for i, (w, q) in enumerate(zip(_weights(ours, ours_p), ref_p)):
        assert_close(w, q, 2e-3 if dtype == torch.bfloat16 and precision == "param" else 5e-4, f"{name} weight {i}")
    for p in ours_p:
        state = ours.state.get(p)
        if state:
            assert state["kahan_comp"].dtype == dtype and state["kahan_comp"].shape == p.shape


@pytest.mark.parametrize("name", ALGOS)
def test_the_comparison_sees_the_compensation(name):
    """The comparison above fails against an oracle that rounds its weights without compensation."""
    ours, ours_p, refo, ref_p = _lockstep(name, 1, torch.bfloat16, "float32", compensate_oracle=False)
    with pytest.raises(AssertionError):
        for i, (w, q) in enumerate(zip(_weights(ours, ours_p), ref_p)):
            assert_close(w, q, 5e-4, f"weight {i}")


def _fine_tune(name, dtype, kahan, lr, steps=400):
    """Weights in [1, 1.5) pulled 0.3 away by the gradients of a quadratic: the loss fallen after
    `steps` steps at `lr`, its value at the weights the model holds (`p`)."""
    gen = torch.Generator().manual_seed(0)
    start = (1.0 + 0.5 * torch.rand(64, 33, generator=gen)).to(torch.bfloat16).float()
    target = start + 0.3 * torch.randn(64, 33, generator=gen).sign()
    p = start.to(dtype, copy=True).requires_grad_()
    options = {**ALGORITHMS[name].typical, "lr": lr, "weight_decay": 0.0}
    opt = getattr(ho, name)([p], **options, **({"kahan_summation": True} if kahan else {}))

    def loss():
        return 0.5 * (p.detach().float() - target).pow(2).sum().item()

    before = loss()
    for _ in range(steps):
        p.grad = (p.detach().float() - target).to(dtype)
        opt.step()
    return before - loss(), (p.detach().float() - start).abs().mean().item()


@pytest.mark.parametrize("name", ALGOS)
def test_recovers_updates_below_the_unit_in_the_last_place(name):
    """The issue's fine-tuning target: with updates about 1/20 of a bfloat16 unit at 1 (the
    learning rate set so that float32 weights move 0.15, 19 units, on average in 400 steps), plain
    bfloat16 weights stall, and compensated ones make the loss fall at least 0.9 as far as float32
    weights."""
    _, moved = _fine_tune(name, torch.float32, False, 1e-4)
    lr = 1e-4 * 0.15 / moved
    exact, moved = _fine_tune(name, torch.float32, False, lr)
    stalled, _ = _fine_tune(name, torch.bfloat16, False, lr)
    compensated, _ = _fine_tune(name, torch.bfloat16, True, lr)
    assert exact > 0 and 0.1 < moved < 0.2, (exact, moved)
    assert stalled < 0.1 * exact, (stalled, exact)
    assert 0.9 * exact <= compensated <= 1.1 * exact, (compensated, exact)


def test_float32_weights_and_others_are_untouched():
    """In a group mixing float32 and bfloat16 parameters, the float32 ones keep no compensation
    and take the bits of a run without it."""
    torch.manual_seed(0)
    init = [torch.randn(5, 4), torch.randn(7)]
    runs = []
    for kahan in (False, True):
        params = [init[0].clone().requires_grad_(), init[1].to(torch.bfloat16).requires_grad_()]
        opt = ho.LAMB(params, lr=1e-2, weight_decay=0.01, kahan_summation=kahan)
        for step in range(5):
            for p in params:
                p.grad = torch.sin(p.detach().float() * (step + 1)).to(p.dtype)
            opt.step()
        runs.append((params, opt))
    (plain, _), (kahan, opt) = runs
    assert "kahan_comp" not in opt.state[kahan[0]]
    assert opt.state[kahan[1]]["kahan_comp"].dtype == torch.bfloat16
    # LAMB's trust ratio is per tensor: the float32 tensor's own update is the same.
    assert torch.equal(plain[0], kahan[0])


@pytest.mark.parametrize("name", ALGOS)
def test_fused_and_reference_backends_agree(name, backend):
    results = {}
    for capability in ("auto", "reference"):
        backend(capability)
        ours, ours_p, _, _ = _lockstep(name, 2, torch.bfloat16, "float32", steps=6)
        results[capability] = _weights(ours, ours_p)
    for i, (a, b) in enumerate(zip(results["auto"], results["reference"])):
        assert_close(a, b, 1e-4, f"{name} weight {i}")


def test_bitwise_across_instruction_sets_and_threads(backend):
    outputs = []
    capabilities = [c for c in torch.ops.holocron.available_cpu_capabilities() if c != "reference"]
    threads = torch.get_num_threads()
    try:
        for capability in capabilities:
            backend(capability)
            for n in sorted({1, max(threads, 2)}):
                torch.set_num_threads(n)
                gen = torch.Generator().manual_seed(3)
                p = (1 + 0.01 * torch.randn(70000, generator=gen)).to(torch.bfloat16).requires_grad_()
                opt = ho.Adan([p], lr=1e-4, kahan_summation=True)
                for _ in range(4):
                    p.grad = torch.randn(70000, generator=gen).to(torch.bfloat16)
                    opt.step()
                outputs.append((p.detach().clone(), opt.state[p]["kahan_comp"].clone()))
    finally:
        torch.set_num_threads(threads)
    for p, c in outputs[1:]:
        assert torch.equal(p, outputs[0][0]) and torch.equal(c, outputs[0][1])


@pytest.mark.parametrize("name", ALGOS)
def test_checkpoints_resume_bitwise(name):
    case = Case(name, 4, steps=8)
    params = case.params(torch.bfloat16)
    opt = getattr(ho, name)(case.groups(params), **case.options, kahan_summation=True)

    def run(optimizer, ps, steps):
        for t in steps:
            for p, g in zip(ps, case.grads(t, ps)):
                p.grad = g
            optimizer.step()

    run(opt, params, range(4))
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    assert any("kahan_comp" in s for s in opt.state_dict()["state"].values())
    resumed_params = [p.detach().clone().requires_grad_() for p in params]
    resumed = getattr(ho, name)(case.groups(resumed_params), **case.options, kahan_summation=True)
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer))
    run(opt, params, range(4, 8))
    run(resumed, resumed_params, range(4, 8))
    for a, b in zip(params, resumed_params):
        assert torch.equal(a, b)
        assert torch.equal(opt.state[a]["kahan_comp"], resumed.state[b]["kahan_comp"])


def test_bad_compensation_is_refused_with_nothing_changed():
    params = [torch.randn(4, 3).to(torch.bfloat16).requires_grad_() for _ in range(2)]
    opt = ho.AdaBelief(params, lr=1e-3, kahan_summation=True)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    opt.state[params[1]]["kahan_comp"] = torch.zeros(3, 4, dtype=torch.bfloat16)
    before = [p.detach().clone() for p in params]
    state_before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match="kahan_comp of parameter 1"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, params))
    assert opt.state[params[0]]["step"] == state_before["state"][0]["step"]
    # And at load.
    saved = copy.deepcopy(state_before)
    saved["state"][0]["kahan_comp"] = torch.zeros(2)
    with pytest.raises(ValueError, match="kahan_comp"):
        opt.load_state_dict(saved)
    # Of another floating dtype, torch.optim's load would cast it (rounding float32 residues).
    for dtype in (torch.float32, torch.float64, torch.float16):
        saved = copy.deepcopy(state_before)
        saved["state"][0]["kahan_comp"] = torch.full((4, 3), 1e-3, dtype=dtype)
        with pytest.raises(ValueError, match="a compensation has its weight's shape and dtype"):
            opt.load_state_dict(saved)
    assert_same(opt.state_dict(), state_before)
    # A float32 weight reads none: a bfloat16 model turned float32 since resumes from it.
    widened = [p.detach().float().requires_grad_() for p in params]
    resumed = ho.AdaBelief(widened, lr=1e-3, kahan_summation=True)
    saved = copy.deepcopy(state_before)
    saved["state"][1]["kahan_comp"] = torch.zeros(4, 3, dtype=torch.bfloat16)  # the one broken above
    resumed.load_state_dict(saved)
    for p in widened:
        p.grad = torch.ones_like(p)
    resumed.step()
    with pytest.raises(TypeError, match="kahan_summation must be a bool"):
        ho.LAMB(params, kahan_summation="yes")
    # The op names the mismatch too.
    with pytest.raises(RuntimeError, match="Kahan compensation"):
        torch.ops.holocron.adan_(
            [params[0]], [torch.ones_like(params[0])], [torch.zeros_like(params[0])], [torch.zeros_like(params[0])],
            [torch.zeros_like(params[0])], [torch.zeros_like(params[0])], [], steps=[1], lr=1e-3, beta1=0.9,
            beta2=0.9, beta3=0.9, eps=1e-8, weight_decay=0.0, amsgrad=False,
            kahan_comps=[torch.zeros(3, dtype=torch.bfloat16)])


def test_turned_on_after_steps_and_off_again():
    """A group switched to kahan_summation gets its compensations at its next step (zeros);
    switched off, its weights go on from p alone, and its compensations are dropped."""
    p = torch.ones(300, dtype=torch.bfloat16, requires_grad=True)
    opt = ho.AdEMAMix([p], lr=1e-4)
    for step in range(3):
        p.grad = torch.full_like(p, 0.5)
        opt.step()
    assert torch.equal(p, torch.ones_like(p))  # stalled: lr far below half a unit at 1
    opt.param_groups[0]["kahan_summation"] = True
    for step in range(3):
        p.grad = torch.full_like(p, 0.5)
        opt.step()
    assert (opt.state[p]["kahan_comp"] != 0).all()
    opt.param_groups[0]["kahan_summation"] = False
    p.grad = torch.full_like(p, 0.5)
    opt.step()
    # Turned off, the compensation goes with the option: turned on again, it starts from zeros
    # (as a twin whose key was deleted by hand), not from the residue of before.
    assert "kahan_comp" not in opt.state[p]
    twin_p = p.detach().clone().requires_grad_(True)
    twin = ho.AdEMAMix([twin_p], lr=1e-4, kahan_summation=True)
    twin.load_state_dict(copy.deepcopy(opt.state_dict()))  # torch.optim's load keeps the tensors it is given
    twin.state[twin_p].pop("kahan_comp", None)
    opt.param_groups[0]["kahan_summation"] = twin.param_groups[0]["kahan_summation"] = True
    for _ in range(2):
        p.grad, twin_p.grad = torch.full_like(p, 0.5), torch.full_like(p, 0.5)
        opt.step()
        twin.step()
    assert torch.equal(p, twin_p) and torch.equal(opt.state[p]["kahan_comp"], twin.state[twin_p]["kahan_comp"])


@pytest.mark.parametrize("wrapper", ["Lookahead", "timm.Lookahead"])
def test_wrappers_sync_the_compensated_weights(wrapper, fused_or_reference):
    """A sync reads the fast weights as p + c and leaves p + c equal to the slow weights (float32
    state: float32 slow weights), so that the weights' sub-unit progress is kept across syncs: the
    run equals, to float32's last bits, one with float32 weights split after each step."""
    from holocron_optim import timm as ho_timm

    def make(params, kahan):
        base = ho.Adan(params, lr=3e-3, state_precision="float32", kahan_summation=kahan)
        if wrapper == "timm.Lookahead":
            return ho_timm.Lookahead(base, alpha=0.5, k=3), base
        return ho.Lookahead(base, sync_rate=0.5, sync_period=3), base

    gen = torch.Generator().manual_seed(5)
    start = (1 + 0.3 * torch.rand(300, generator=gen)).to(torch.bfloat16)
    low, wide, plain = start.clone().requires_grad_(), start.float().requires_grad_(), start.clone().requires_grad_()
    low_opt, low_base = make([low], True)
    wide_opt, _ = make([wide], False)
    plain_opt, _ = make([plain], False)
    for step in range(9):
        g = torch.randn(300, generator=gen).to(torch.bfloat16)
        low.grad, wide.grad, plain.grad = g, g.float(), g
        for opt in (low_opt, wide_opt, plain_opt):
            opt.step()
        with torch.no_grad():
            p, c = _split(wide, torch.bfloat16)
            wide.copy_(p.float() + c.float())
    weight = low.detach().float() + low_base.state[low]["kahan_comp"].float()
    if wrapper == "timm.Lookahead":
        # timm's layout keeps the slow weights in the weights' dtype: after the sync of step 9,
        # p + c is exactly the bfloat16 slow weight.
        assert torch.equal(weight, low_base.state[low]["lookahead_slow_buff"].float())
        assert (low_base.state[low]["kahan_comp"] == 0).all()
        return
    torch.testing.assert_close(weight, wide.detach(), rtol=0, atol=5e-5)
    # Without compensation the weights end elsewhere, beyond that tolerance.
    assert (plain.detach().float() - wide.detach()).abs().max() > 1e-3


@pytest.mark.parametrize("nested", [False, True], ids=["direct", "through_lookahead"])
def test_scout_refuses_a_compensated_base_with_nothing_changed(nested):
    """Scout's statistics take the changes from copies in the weights' dtype, which cannot hold
    p + c: refused, through a Lookahead too (Lookahead alone takes such a base)."""
    p = torch.ones(10, dtype=torch.bfloat16, requires_grad=True)
    base = ho.Adan([p], lr=1e-3, kahan_summation=True)
    opt = ho.Scout(ho.Lookahead(base) if nested else base)
    p.grad = torch.ones_like(p)
    with pytest.raises(NotImplementedError, match="kahan_summation"):
        opt.step()
    assert torch.equal(p, torch.ones_like(p)) and not base.state


def test_adamp_channel_projection_compensates_every_row(backend):
    """AdamP's channel-wise projection runs its passes row by row: each row's compensation is its
    own (fused and reference backends agree, and every row holds residues)."""
    results = {}
    for capability in ("auto", "reference"):
        backend(capability)
        gen = torch.Generator().manual_seed(8)
        p = (1 + 0.3 * torch.rand(8, 64, generator=gen)).to(torch.bfloat16).requires_grad_()
        opt = ho.AdamP([p], lr=1e-3, delta=5.0, channel_projection=True, kahan_summation=True)
        for _ in range(6):
            p.grad = torch.randn(8, 64, generator=gen).to(torch.bfloat16)
            opt.step()
        results[capability] = (p.detach().float() + opt.state[p]["kahan_comp"].float(),
                               opt.state[p]["kahan_comp"].clone())
    torch.testing.assert_close(results["auto"][0], results["reference"][0], rtol=0, atol=1e-4)
    assert (results["auto"][1] != 0).any(dim=1).all()


def test_compiled_step_with_a_mixed_group():
    """torch.compile (aot_eager: functionalization) over a group mixing bfloat16 weights, which are
    compensated, and float32 ones, which are not (placeholders in the op's list): eager's bits."""
    runs = []
    for compiled in (False, True):
        torch._dynamo.reset()
        gen = torch.Generator().manual_seed(11)
        params = [(1 + 0.3 * torch.rand(40, generator=gen)).to(torch.bfloat16).requires_grad_(),
                  torch.randn(7, generator=gen).requires_grad_()]
        opt = ho.AdEMAMix(params, lr=1e-3, kahan_summation=True)
        step = torch.compile(lambda: opt.step(), backend="aot_eager", fullgraph=True) if compiled else opt.step
        for _ in range(4):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)
            step()
        runs.append((params, opt.state[params[0]]["kahan_comp"].clone(), "kahan_comp" in opt.state[params[1]]))
    torch._dynamo.reset()
    (eager, eager_comp, eager_f32), (compiled, compiled_comp, compiled_f32) = runs
    assert all(torch.equal(a, b) for a, b in zip(eager, compiled))
    assert torch.equal(eager_comp, compiled_comp) and (eager_comp != 0).any()
    assert not eager_f32 and not compiled_f32


@pytest.mark.parametrize("name", ["LAMB", "AdaBelief"])
def test_grad_scaler_with_compensated_weights(name):
    """GradScaler's scale (a power of two: unscaling is exact) and a skipped step: the bits of
    unscaled gradients, weights and compensations, and nothing changed by the skipped step."""
    runs = []
    for scale in (None, 1024.0):
        gen = torch.Generator().manual_seed(12)
        params = [(1 + 0.3 * torch.rand(50, generator=gen)).to(torch.bfloat16).requires_grad_()]
        opt = getattr(ho, name)(params, lr=1e-3, kahan_summation=True)
        if scale:
            opt.grad_scale = torch.tensor(scale)
        for k in range(4):
            g = torch.randn(50, generator=gen).to(torch.bfloat16)
            params[0].grad = g * scale if scale else g
            if scale:
                opt.found_inf = torch.tensor(1.0 if k == 2 else 0.0)
            elif k == 2:
                continue  # the step the scaled run skips
            opt.step()
        runs.append((params[0].detach().clone(), opt.state[params[0]]["kahan_comp"].clone()))
    (p, c), (scaled_p, scaled_c) = runs
    assert torch.equal(p, scaled_p) and torch.equal(c, scaled_c) and (c != 0).any()
