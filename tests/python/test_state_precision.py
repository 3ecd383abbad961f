"""The classes' `state_precision` (issue 17): float32 or bfloat16 per-element state for any
parameter dtype, chosen per group.

The oracle is the reference (pylocron 0.3.0) run in the parameter's dtype with its per-element
state rounded to the chosen dtype after every step (and, for bfloat16 or half parameters, run in
float32 with the parameters and gradients rounded to their dtype): a buffer stored narrower and
loaded into the math type holds exactly such rounded values."""

from __future__ import annotations

import copy
import io

import pytest
import torch

import holocron_optim as ho
from _harness import ALGOS, Case, assert_close, make_ref, ref_state, round_reference_state_, step_in_lockstep
from registry import ALGORITHMS

PRECISION_DTYPE = {"float32": torch.float32, "bfloat16": torch.bfloat16}
STEPS = 16


def _round_(tensor: torch.Tensor, dtype: torch.dtype) -> None:
    tensor.copy_(tensor.to(dtype))


def _lockstep(name, seed, param_dtype, precision, round_to=None):
    """Ours with `state_precision=precision` and the reference with its per-element state rounded
    to `round_to` (the precision's dtype by default) after each step. Parameters of bfloat16 or
    half: the reference runs in float32 on the same values, rounded to param_dtype after each step."""
    case = Case(name, seed, steps=STEPS)
    buffers = getattr(ho, name)._all_buffers
    round_to = round_to or PRECISION_DTYPE[precision]
    ref_dtype = torch.float32 if param_dtype in (torch.bfloat16, torch.float16) else param_dtype
    ours_p, ref_p = case.params(param_dtype), case.params(param_dtype)
    ref_p = [q.detach().to(ref_dtype).requires_grad_() for q in ref_p]
    ours = getattr(ho, name)(case.groups(ours_p), **case.options, state_precision=precision)
    refo = make_ref(case, ref_p)
    for t in range(case.steps):
        step_in_lockstep(case, t, ours, ours_p, refo, ref_p)
        with torch.no_grad():
            for q in ref_p:
                round_reference_state_(refo, q, buffers, round_to, param_dtype)
                if ref_dtype != param_dtype:
                    _round_(q, param_dtype)
    return ours, ours_p, refo, ref_p, buffers


# (parameter dtype, state precision, tolerance relative to each tensor's largest magnitude). In
# float64 only a rounding that lands on the other side of a tie could differ. In float32 the
# reference's own last-bit differences move a few state roundings by one bfloat16 unit (measured:
# at most 1.6e-6 here; state kept in the wrong precision: 3e-6 to 7e-3). Bfloat16 and half
# parameters came out bit for bit equal; the tolerance leaves room for one parameter rounded the
# other way on another instruction set (wrong precision: mostly 2e-4 to 1e-2). The state's own
# tolerance, last, allows one element rounded the other way (a bfloat16 unit: 2**-8).
CASES = [
    (torch.float64, "bfloat16", 1e-9, 1e-9),
    (torch.float64, "float32", 1e-9, 1e-9),
    (torch.float32, "bfloat16", 2e-5, 8e-3),
    (torch.bfloat16, "float32", 1e-2, 1e-2),
    (torch.float16, "float32", 1e-3, 1e-3),
]


@pytest.mark.parametrize("param_dtype,precision,rtol,state_rtol", CASES,
                         ids=[f"{str(d).removeprefix('torch.')}-{p}" for d, p, _, _ in CASES])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("name", ALGOS)
def test_matches_the_reference_with_rounded_state(name, seed, param_dtype, precision, rtol, state_rtol, fused_or_reference):
    ours, ours_p, refo, ref_p, buffers = _lockstep(name, seed, param_dtype, precision)
    want = PRECISION_DTYPE[precision]
    for i, (p, q) in enumerate(zip(ours_p, ref_p)):
        assert p.dtype == param_dtype
        assert_close(p, q, rtol, f"{name} param {i}")
        state, expected = ours.state.get(p, {}), ref_state(refo, q)
        for key in buffers:
            if key in state:
                assert state[key].dtype == want, (key, state[key].dtype)
                assert_close(state[key], expected[key], state_rtol, f"{name} state {i} {key}")
        for key in ("W_t", "local_lr"):
            if isinstance(state.get(key), torch.Tensor):
                assert state[key].dtype == param_dtype, key


@pytest.mark.parametrize("name", ALGOS)
def test_the_comparison_sees_state_kept_wider(name):
    """The float64 comparison fails if the state were not rounded as the precision says (here:
    the oracle keeps float32 state where ours keeps bfloat16)."""
    ours, ours_p, refo, ref_p, _ = _lockstep(name, 1, torch.float64, "bfloat16", round_to=torch.float32)
    with pytest.raises(AssertionError):
        for i, (p, q) in enumerate(zip(ours_p, ref_p)):
            assert_close(p, q, 1e-9, f"param {i}")


def _model(dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=dtype).requires_grad_() for shape in ((6, 5), (5,), (3, 2, 2))]


def _grads(params, step):
    gen = torch.Generator().manual_seed(100 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)


def _run(opt, params, steps, start=0):
    for k in range(start, start + steps):
        _grads(params, k)
        opt.step()


@pytest.mark.parametrize("name", ALGOS)
def test_each_group_keeps_its_own_precision(name):
    algorithm = ALGORITHMS[name]
    params = _model(torch.float64)
    opt = algorithm.make([{"params": params[:1], "state_precision": "bfloat16"},
                          {"params": params[1:2], "state_precision": "float32"},
                          {"params": params[2:]}], **{**algorithm.full, "lr": 1e-2})
    _run(opt, params, 3)
    for p, want in zip(params, (torch.bfloat16, torch.float32, torch.float64)):
        buffers = [opt.state[p][key] for key in opt._all_buffers if key in opt.state[p]]
        assert buffers, name
        assert all(b.dtype == want for b in buffers), (name, [b.dtype for b in buffers])
    assert [g["state_precision"] for g in opt.param_groups] == ["bfloat16", "float32", "param"]


@pytest.mark.parametrize("value", ["8-bit", "float16", "bf16", None, 1, torch.bfloat16])
def test_other_values_are_refused(value):
    params = _model()
    with pytest.raises(ValueError, match="state_precision"):
        ho.LAMB(params, state_precision=value)
    opt = ho.LAMB(params[:1])
    with pytest.raises(ValueError, match="state_precision"):
        opt.add_param_group({"params": params[1:], "state_precision": value})
    assert len(opt.param_groups) == 1
    # Set on a group after the fact: the step refuses it before changing anything.
    _run(opt, params[:1], 1)
    before = (params[0].detach().clone(), copy.deepcopy(opt.state[params[0]]))
    opt.param_groups[0]["state_precision"] = value
    with pytest.raises(ValueError, match="state_precision"):
        _run(opt, params[:1], 1)
    assert torch.equal(params[0], before[0])
    assert torch.equal(opt.state[params[0]]["exp_avg"], before[1]["exp_avg"])


@pytest.mark.parametrize("name", ALGOS)
def test_a_precision_changed_after_steps_is_refused_whole(name):
    """State made under one precision does not silently run under another: the step refuses it
    (after the first group too) and changes nothing; a save and load converts it."""
    algorithm = ALGORITHMS[name]
    params = _model()
    opt = algorithm.make([{"params": params[:2]}, {"params": params[2:]}], **{**algorithm.full, "lr": 1e-2})
    _run(opt, params, 2)
    opt.param_groups[0]["state_precision"] = "bfloat16"  # the first group: its buffers are pinned
    before = [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict())
    with pytest.raises(RuntimeError, match="state_precision"):
        _run(opt, params, 1, start=2)
    assert all(torch.equal(p, b) for p, b in zip(params, before[0]))
    after = opt.state_dict()
    for key, state in before[1]["state"].items():
        for k, v in state.items():
            assert torch.equal(torch.as_tensor(after["state"][key][k]), torch.as_tensor(v)), (key, k)
    opt.load_state_dict(opt.state_dict())
    _run(opt, params, 1, start=2)
    assert all(opt.state[params[0]][k].dtype == torch.bfloat16 for k in opt._all_buffers if k in opt.state[params[0]])
    assert all(opt.state[params[2]][k].dtype == torch.float32 for k in opt._all_buffers if k in opt.state[params[2]])


@pytest.mark.parametrize("name", ALGOS)
def test_a_resumed_run_is_bitwise_the_same(name):
    algorithm = ALGORITHMS[name]
    options = {**algorithm.full, "lr": 1e-2, "state_precision": "bfloat16"}
    full_p, half_p = _model(), _model()
    full, first = algorithm.make(full_p, **options), algorithm.make(half_p, **options)
    _run(full, full_p, 6)
    _run(first, half_p, 3)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = algorithm.make(half_p, **options)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    _run(resumed, half_p, 3, start=3)
    assert all(torch.equal(a, b) for a, b in zip(full_p, half_p)), name


def _buffers(opt, p):
    return {k: v for k, v in opt.state[p].items() if k in opt._all_buffers}


@pytest.mark.parametrize("name", ALGOS)
def test_loads_convert_to_the_optimizers_precision(name):
    """A load keeps each group's precision and converts the checkpoint's buffers to it, from the
    saved values: float32 state of bfloat16 parameters is not rounded through bfloat16 on the
    way (torch.optim's load casts state to the parameter's dtype)."""
    algorithm = ALGORITHMS[name]
    options = {**algorithm.full, "lr": 1e-2}
    params = _model(torch.bfloat16)
    mixed = algorithm.make(params, **{**options, "state_precision": "float32"})
    _run(mixed, params, 3)
    saved = copy.deepcopy(mixed.state_dict())
    again = algorithm.make(params, **{**options, "state_precision": "float32"})
    again.load_state_dict(saved)
    for p in params:
        for key, value in _buffers(mixed, p).items():
            assert value.dtype == torch.float32
            assert torch.equal(_buffers(again, p)[key], value), key
    # Into the parameter's precision: rounded to bfloat16; the group keeps "param".
    plain = algorithm.make(params, **options)
    plain.load_state_dict(saved)
    assert plain.param_groups[0]["state_precision"] == "param"
    for p in params:
        for key, value in _buffers(mixed, p).items():
            assert torch.equal(_buffers(plain, p)[key], value.to(torch.bfloat16)), key
    # And a float32 run's checkpoint into bfloat16 state, and back (exactly: bfloat16 fits float32).
    params32 = _model(torch.float32)
    wide = algorithm.make(params32, **options)
    _run(wide, params32, 3)
    lean = algorithm.make(params32, **{**options, "state_precision": "bfloat16"})
    lean.load_state_dict(wide.state_dict())
    assert lean.param_groups[0]["state_precision"] == "bfloat16"
    for p in params32:
        for key, value in _buffers(wide, p).items():
            assert torch.equal(_buffers(lean, p)[key], value.to(torch.bfloat16)), key
    back = algorithm.make(params32, **options)
    back.load_state_dict(lean.state_dict())
    for p in params32:
        for key, value in _buffers(lean, p).items():
            assert _buffers(back, p)[key].dtype == torch.float32
            assert torch.equal(_buffers(back, p)[key], value.float()), key
    _run(back, params32, 1, start=3)
    _run(lean, params32, 1, start=3)


def test_a_load_of_state_in_another_dtype_is_refused_whole():
    params = _model()
    opt = ho.Adan(params, lr=1e-2, state_precision="bfloat16")
    _run(opt, params, 2)
    good = copy.deepcopy(opt.state_dict())
    bad = copy.deepcopy(good)
    bad["state"][1]["exp_avg"] = bad["state"][1]["exp_avg"].to(torch.int32)
    with pytest.raises(ValueError, match="exp_avg"):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    assert all(torch.equal(after["state"][k]["exp_avg"], good["state"][k]["exp_avg"]) for k in good["state"])
    # A saved group's own precision (even one this build does not know) gives way to the group's.
    other = copy.deepcopy(good)
    other["param_groups"][0]["state_precision"] = "8bit"
    opt.load_state_dict(other)
    assert opt.param_groups[0]["state_precision"] == "bfloat16"


def test_checkpoints_from_before_the_option_load_with_the_parameters_precision():
    params = _model()
    opt = ho.AdaBelief(params, lr=1e-2)
    _run(opt, params, 2)
    saved = opt.state_dict()
    for group in saved["param_groups"]:
        del group["state_precision"]
    fresh = ho.AdaBelief(params, lr=1e-2)
    fresh.load_state_dict(saved)
    assert fresh.param_groups[0]["state_precision"] == "param"
    _run(fresh, params, 1, start=2)


def test_state_bytes_per_parameter():
    """What the option is for: Adam-like state of float32 parameters, 8 bytes per element in
    float32, 4 in bfloat16 (measured from the tensors)."""
    params = [torch.zeros(1000, requires_grad=True)]
    sizes = {}
    for precision in ("param", "bfloat16"):
        opt = ho.AdaBelief(params, state_precision=precision)
        params[0].grad = torch.ones(1000)
        opt.step()
        sizes[precision] = sum(t.numel() * t.element_size() for t in _buffers(opt, params[0]).values()) / 1000
    assert sizes == {"param": 8.0, "bfloat16": 4.0}


def _round_state_of(opt, dtype):
    for state in opt.state.values():
        for key in opt._all_buffers:
            if isinstance(state.get(key), torch.Tensor):
                _round_(state[key], dtype)


@pytest.mark.parametrize("wrapper,base,param_dtype,precision", [
    (wrapper, base, param_dtype, precision)
    for wrapper in ("Lookahead", "Scout") for base in ("LAMB", "Adan")
    for param_dtype, precision in ((torch.float32, "bfloat16"), (torch.float64, "float32"), (torch.bfloat16, "float32"))
    # Scout rounds each change to the parameter's dtype, which a float32 emulation of bfloat16
    # weights does not.
    if not (wrapper == "Scout" and param_dtype == torch.bfloat16)
])
def test_wrappers_keep_their_tensors_in_the_bases_precision(wrapper, base, param_dtype, precision, fused_or_reference):
    """Lookahead's slow weights and Scout's statistics follow the base's state_precision. A run
    equals the run in the math type whose base state, slow weights and statistics are rounded to
    the state's dtype after each step, and whose weights are rounded to theirs (after a sync, the
    weights are the slow ones as stored). Scout syncs at rate 1 here: its coherence reads the
    statistics just stored."""
    dtype = PRECISION_DTYPE[precision]
    math_dtype = torch.float32 if param_dtype == torch.bfloat16 else param_dtype
    period = 3
    options = {"sync_period": period, "sync_rate": 1.0 if wrapper == "Scout" else 0.4}
    lean_p = _model(param_dtype)
    emulated_p = [p.detach().to(math_dtype).requires_grad_() for p in lean_p]
    lean = getattr(ho, wrapper)(getattr(ho, base)(lean_p, lr=1e-2, weight_decay=0.01, state_precision=precision),
                                **options)

    class Rounded(getattr(ho, base)):
        """The base whose weights and state are rounded after each of its steps (before the
        wrapper's sync reads them)."""

        def step(self, closure=None):
            loss = super().step(closure)
            with torch.no_grad():
                for p in emulated_p:
                    _round_(p, param_dtype)
                _round_state_of(self, dtype)
            return loss

    emulated = getattr(ho, wrapper)(Rounded(emulated_p, lr=1e-2, weight_decay=0.01), **options)
    for k in range(2 * period + 1):
        _grads(lean_p, k)
        for p, q in zip(emulated_p, lean_p):
            p.grad = q.grad.to(math_dtype)
        lean.step()
        emulated.step()
        with torch.no_grad():
            for slow in emulated._flat_slow():
                _round_(slow, dtype)
            if wrapper == "Scout":
                for key in ("mean", "m2", "max", "min"):
                    for t in emulated.scout_stats[key]:
                        _round_(t, dtype)
            if emulated.fast_steps % period == 0:
                for p, slow in zip(emulated_p, emulated._flat_slow()):
                    p.copy_(slow)
            for p in emulated_p:
                _round_(p, param_dtype)
        assert all(torch.equal(a, b.to(param_dtype)) for a, b in zip(lean_p, emulated_p)), (
            k, [(a.double() - b.double()).abs().max() for a, b in zip(lean_p, emulated_p)])
    assert all(t.dtype == dtype for t in lean._flat_slow())
    if wrapper == "Scout":
        assert all(t.dtype == dtype for key in ("mean", "m2", "max", "min") for t in lean.scout_stats[key])
        assert all(t.dtype == param_dtype for t in lean.scout_stats["prev"])
    # A checkpoint into a wrapper whose base keeps the parameters' precision: converted to it.
    wide = getattr(ho, wrapper)(getattr(ho, base)(lean_p, lr=1e-2, weight_decay=0.01), **options)
    wide.load_state_dict(lean.state_dict())
    assert wide.param_groups[0]["state_precision"] == "param"
    assert all(a.dtype == param_dtype and torch.equal(a, b.to(param_dtype))
               for a, b in zip(wide._flat_slow(), lean._flat_slow()))
    _grads(lean_p, 99)
    wide.step()


def test_a_wrapper_converts_floating_slow_weights_and_refuses_others():
    """Slow weights of any floating dtype are converted to the base's state precision, as the
    base's load converts its state; integers are refused, leaving everything as it was."""
    params = _model()
    opt = ho.Lookahead(ho.LAMB(params, state_precision="bfloat16"), sync_period=2)
    _run(opt, params, 3)
    saved = opt.state_dict()
    half = copy.deepcopy(saved)
    half["slow_params"][1] = half["slow_params"][1].to(torch.float16)
    bad = copy.deepcopy(saved)
    bad["slow_params"][1] = bad["slow_params"][1].to(torch.int32)
    before = [t.clone() for t in opt._flat_slow()]
    with pytest.raises(ValueError, match="slow"):
        opt.load_state_dict(bad)
    assert all(torch.equal(a, b) for a, b in zip(opt._flat_slow(), before))
    opt.load_state_dict(half)
    assert opt._flat_slow()[1].dtype == torch.bfloat16
    assert torch.equal(opt._flat_slow()[1], saved["slow_params"][1].to(torch.float16).to(torch.bfloat16))


def test_load_hooks_see_what_loads():
    """Pre-hooks run first (what they return is checked, converted and loaded); post-hooks run
    once the buffers are in the group's precision."""
    params = _model(torch.bfloat16)
    opt = ho.AdaBelief(params, lr=1e-2, state_precision="float32")
    _run(opt, params, 2)
    saved = copy.deepcopy(opt.state_dict())
    seen = {}

    def pre_hook(optimizer, state_dict):
        state_dict = copy.deepcopy(state_dict)
        state_dict["state"][0]["exp_avg"].fill_(0.25)
        return state_dict

    def post_hook(optimizer):
        seen["precision"] = optimizer.param_groups[0]["state_precision"]
        seen["exp_avg"] = optimizer.state[params[0]]["exp_avg"].clone()
        seen["exp_avg_sq"] = optimizer.state[params[1]]["exp_avg_sq"].clone()

    fresh = ho.AdaBelief(params, lr=1e-2, state_precision="float32")
    fresh.register_load_state_dict_pre_hook(pre_hook)
    fresh.register_load_state_dict_post_hook(post_hook)
    fresh.load_state_dict(saved)
    assert seen["precision"] == "float32"
    assert seen["exp_avg"].dtype == torch.float32 and bool((seen["exp_avg"] == 0.25).all())
    assert torch.equal(seen["exp_avg_sq"], saved["state"][1]["exp_avg_sq"])  # float32, not rounded


@pytest.mark.parametrize("name", ["LAMB", "Adan", "AdamP"])
def test_grad_scaler_with_lean_state(name):
    """GradScaler's scale (a power of two: unscaling is exact) and a skipped step, with bfloat16
    state: the same bits as unscaled gradients, and nothing changed by the skipped step."""
    algorithm = ALGORITHMS[name]
    options = {**algorithm.full, "lr": 1e-2, "state_precision": "bfloat16"}
    plain_p, scaled_p = _model(), _model()
    plain, scaled = algorithm.make(plain_p, **options), algorithm.make(scaled_p, **options)
    scaled.grad_scale = torch.tensor(1024.0)
    for k in range(3):
        _grads(plain_p, k)
        _grads(scaled_p, k)
        for p in scaled_p:
            p.grad.mul_(1024.0)
        scaled.found_inf = torch.tensor(1.0 if k == 1 else 0.0)
        if k != 1:
            plain.step()
        scaled.step()
    assert all(torch.equal(a, b) for a, b in zip(plain_p, scaled_p))
    assert all(torch.equal(plain.state[a][key], scaled.state[b][key])
               for a, b in zip(plain_p, scaled_p) for key in plain._all_buffers if key in plain.state[a])
