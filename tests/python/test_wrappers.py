"""Lookahead and Scout: parity with the reference, and where ours differs on purpose: Scout's
running statistics (fixed memory), its coherence without 0/0, checkpoints that resume exactly,
and schedulers on a wrapper driving the base's lr."""

from __future__ import annotations

import copy
from collections import OrderedDict
import io
import math
from itertools import chain

import pytest
import torch

import holocron_optim as ho
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from conftest import reference

SHAPES = [(4, 3), (6,), (2, 3, 2), (1,)]


def make_params(shapes=SHAPES, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in shapes]


def clone_params(params):
    return [p.detach().clone().requires_grad_() for p in params]


def groups(params):
    return [{"params": params[:2]}, {"params": params[2:], "lr": 0.02}]


def make_base(kind: str, params, side: str = "ours"):
    if kind == "adam":
        return torch.optim.Adam(groups(params), lr=0.05)
    if kind == "sgd":
        return torch.optim.SGD(groups(params), lr=0.05, momentum=0.9)
    if kind == "ours":  # our AdaBelief, or the reference's for the reference side
        cls = ho.AdaBelief if side == "ours" else reference().AdaBelief
        return cls(groups(params), lr=0.05, weight_decay=0.01)
    raise KeyError(kind)


def ref_wrapper(cls: str, base, **kwargs):
    """The reference's wrapper. Its __init__ skips torch.optim.Optimizer.__init__,
    so with torch 2.x its state_dict()/load_state_dict() miss the hook tables:
    the test supplies empty ones (no behaviour of the reference changes)."""
    w = getattr(reference(), cls)(base, **kwargs)
    for attr in ("_optimizer_step_pre_hooks", "_optimizer_step_post_hooks",
                 "_optimizer_state_dict_pre_hooks", "_optimizer_state_dict_post_hooks",
                 "_optimizer_load_state_dict_pre_hooks", "_optimizer_load_state_dict_post_hooks"):
        if not hasattr(w, attr):
            setattr(w, attr, OrderedDict())
    return w


def grads_at(step: int, params, frozen=()):
    """Gradients that depend on the step and the current values (every element moves)."""
    gen = torch.Generator().manual_seed(100 + step)
    for i, p in enumerate(params):
        if i in frozen:
            p.grad = None
            continue
        noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        p.grad = noise + 0.5 * p.detach()


def train(wrapper, params, start, stop, frozen=()):
    for t in range(start, stop):
        grads_at(t, params, frozen)
        wrapper.step()


def record_rates(ref_wrapper):
    """Records the rate the reference passes to sync_params."""
    rates = []
    original = ref_wrapper.sync_params

    def spy(sync_rate=0.0):
        rates.append(sync_rate)
        return original(sync_rate)

    ref_wrapper.sync_params = spy
    return rates


def record_our_rates(wrapper):
    """The rate of each sync of a Scout, as it happens."""
    rates = []
    original = wrapper.step

    def spy(*args, **kwargs):
        loss = original(*args, **kwargs)
        if wrapper.fast_steps % wrapper.defaults["sync_period"] == 0:
            rates.append(wrapper.last_sync_rate)
        return loss

    wrapper.step = spy
    return rates


# -- Validation, zero_grad, closure ------------------------------------------------------------


@pytest.mark.parametrize("cls", ["Lookahead", "Scout"])
@pytest.mark.parametrize(
    "kwargs",
    [{"sync_rate": -0.1}, {"sync_rate": 1.1}, {"sync_rate": math.nan}, {"sync_period": 0}, {"sync_period": -2},
     {"sync_period": 2.5}, {"sync_period": 6.0}, {"sync_period": "6"}, {"sync_period": True}],
    ids=str,
)
def test_validation(cls, kwargs):
    base = torch.optim.SGD(make_params(), lr=0.1)
    with pytest.raises(ValueError):
        getattr(ho, cls)(base, **kwargs)


@pytest.mark.parametrize("cls", ["Lookahead", "Scout"])
def test_zero_grad_forwards_and_closure(cls):
    params = make_params()
    wrapper = getattr(ho, cls)(torch.optim.SGD(params, lr=0.1), sync_period=2)
    grads_at(0, params)
    wrapper.zero_grad()
    assert all(p.grad is None for p in params)
    calls = []

    def closure():
        calls.append(torch.is_grad_enabled())
        wrapper.zero_grad()
        loss = sum((p**2).sum() for p in params)
        loss.backward()
        return loss

    with torch.no_grad():
        loss = wrapper.step(closure)
    assert calls == [True] and isinstance(loss, torch.Tensor)
    assert wrapper.fast_steps == 1
    assert cls in repr(wrapper)


# -- Lookahead ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sync_rate", [0.5, 0.0, 1.0, 0.3])
@pytest.mark.parametrize("kind", ["adam", "sgd", "ours"])
def test_lookahead_parity(kind, sync_rate):
    params = make_params()
    ref_params = clone_params(params)
    ours = ho.Lookahead(make_base(kind, params), sync_rate=sync_rate, sync_period=4)
    refw = ref_wrapper("Lookahead", make_base(kind, ref_params, "ref"), sync_rate=sync_rate, sync_period=4)
    initial = [p.detach().clone() for p in params]
    for t in range(14):  # three periods and a half
        grads_at(t, params)
        grads_at(t, ref_params)
        ours.step()
        refw.step()
        for p, q in zip(params, ref_params):
            torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
        if sync_rate == 0.0 and (t + 1) % 4 == 0:  # the fast weights went back to their start
            assert all(torch.equal(p.detach(), i) for p, i in zip(params, initial))
    for slow, ref_slow in zip(ours._flat_slow(), [p for g in refw.param_groups for p in g["params"]]):
        torch.testing.assert_close(slow, ref_slow, rtol=1e-12, atol=1e-14)


def test_lookahead_with_our_optimizers_runs():
    for name in ("LAMB", "LARS", "Adan", "TAdam"):
        params = make_params()
        w = ho.Lookahead(getattr(ho, name)(groups(params), lr=0.01), sync_period=3)
        train(w, params, 0, 7)
        assert w.fast_steps == 7 and all(torch.isfinite(p).all() for p in params)


# -- Scout --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sync_period", [2, 3, 6])
@pytest.mark.parametrize("kind", ["adam", "sgd", "ours"])
def test_scout_parity(kind, sync_period):
    params = make_params()
    ref_params = clone_params(params)
    ours = ho.Scout(make_base(kind, params), sync_rate=0.05, sync_period=sync_period)
    refw = ref_wrapper("Scout", make_base(kind, ref_params, "ref"), sync_rate=0.05, sync_period=sync_period)
    ours_rates, ref_rates = record_our_rates(ours), record_rates(refw)
    for t in range(4 * sync_period + 1):
        grads_at(t, params)
        grads_at(t, ref_params)
        ours.step()
        refw.step()
    assert len(ours_rates) == len(ref_rates) == 4
    for a, b in zip(ours_rates, ref_rates):
        assert math.isfinite(b)
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
        assert 0.05 <= a <= 1.0
    assert math.isclose(ours.last_sync_rate, ours_rates[-1])
    for p, q in zip(params, ref_params):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)


def coherence_oracle(history):
    """The coherence without 0/0 (unlike the reference's) from stacked copies: per parameter, the
    mean over the elements whose ratio is a number; parameters with none are left out."""
    values = []
    for copies in history:
        stack = torch.stack(copies)
        update = stack[1:] - stack[:-1]
        max_dev = (update - update.mean(0)).abs().max(0).values
        ratio = (update.std(0) / max_dev).flatten()
        ratio = ratio[~ratio.isnan()]
        if ratio.numel():
            values.append(float(ratio.mean()))
    return sum(values) / len(values) if values else 0.0


def test_scout_rate_matches_oracle_with_frozen_elements():
    params = make_params([(5, 4), (7,), (3,)])
    masks = [torch.rand(p.shape, generator=torch.Generator().manual_seed(i)) > 0.4 for i, p in enumerate(params)]
    masks[2][:] = False  # a parameter that never moves at all
    period = 5
    ours = ho.Scout(torch.optim.SGD(params, lr=0.1), sync_rate=0.0, sync_period=period)
    history = [[p.detach().clone()] for p in params]
    base_step = ours.base_optimizer.step

    def recording_base_step(*args, **kwargs):  # the fast weights after each base step, before any sync
        loss = base_step(*args, **kwargs)
        for h, p in zip(history, params):
            h.append(p.detach().clone())
        return loss

    ours.base_optimizer.step = recording_base_step
    seen = record_our_rates(ours)
    for t in range(period):
        grads_at(t, params)
        for p, m in zip(params, masks):
            p.grad.mul_(m)
        ours.step()
    expected = max(1 - coherence_oracle(history), 0.0)
    assert len(seen) == 1 and math.isclose(seen[0], expected, rel_tol=1e-9)


@pytest.mark.parametrize("kind", ["adam", "ours"])
def test_scout_frozen_param_fix5(kind):
    """A parameter without gradients: the reference's NaN rate silently resets every
    fast weight to its slow copy; ours leaves it out and equals the reference run
    without that parameter."""
    shapes = SHAPES + [(3, 3)]
    frozen = (len(shapes) - 1,)
    period = 4

    # The reference with the frozen parameter: NaN rate, fast weights reset to the start.
    ref_params = make_params(shapes)
    start = [p.detach().clone() for p in ref_params]
    refw = ref_wrapper("Scout", make_base(kind, ref_params, "ref"), sync_rate=0.5, sync_period=period)
    ref_rates = record_rates(refw)
    train(refw, ref_params, 0, period, frozen)
    assert math.isnan(ref_rates[0])
    for p, s in zip(ref_params, start):
        assert torch.equal(p.detach(), s)

    # Ours with the frozen parameter ...
    params = make_params(shapes)
    ours = ho.Scout(make_base(kind, params), sync_rate=0.5, sync_period=period)
    rates = record_our_rates(ours)
    train(ours, params, 0, 3 * period, frozen)
    # ... equals the reference run on the other parameters only.
    ref_params = make_params(shapes)
    moving = ref_params[: frozen[0]]
    base = make_base(kind, moving, "ref")
    refw = ref_wrapper("Scout", base, sync_rate=0.5, sync_period=period)
    ref_rates = record_rates(refw)
    train(refw, moving, 0, 3 * period)
    assert len(rates) == len(ref_rates) == 3
    for a, b in zip(rates, ref_rates):
        assert 0.5 <= a <= 1.0
        assert math.isclose(a, b, rel_tol=1e-9)
    for p, q in zip(params, moving):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)
    assert torch.equal(params[-1].detach(), ref_params[-1].detach())  # never moved


def test_scout_nothing_moves_gives_rate_one_or_sync_rate():
    params = make_params()
    ours = ho.Scout(torch.optim.SGD(params, lr=0.1), sync_rate=0.25, sync_period=3)
    rates = record_our_rates(ours)
    for _ in range(3):
        for p in params:
            p.grad = torch.zeros_like(p)
        ours.step()
    # Coherence 0 when no element is left: rate max(1 - 0, sync_rate) = 1.
    assert rates == [1.0]


def _tensor_numel(obj, seen=None) -> int:
    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        if id(obj) in seen:
            return 0
        seen.add(id(obj))
        return obj.numel()
    if isinstance(obj, dict):
        return sum(_tensor_numel(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_numel(v, seen) for v in obj)
    return 0


def test_scout_memory_does_not_grow_with_sync_period():
    """Running statistics, not the reference's stack of copies: a fixed number of copies,
    whatever the period."""
    held = {}
    for period in (2, 20):
        params = make_params()
        w = ho.Scout(torch.optim.SGD(params, lr=0.1), sync_period=period)
        train(w, params, 0, 19)  # mid-period for 20
        stats = w.scout_stats
        count = sum(len(v) for v in stats.values())
        own = {k: v for k, v in vars(w).items() if k != "base_optimizer"}
        held[period] = (count, _tensor_numel(stats), _tensor_numel(own))
    assert held[2] == held[20]
    n_params = sum(torch.Size(s).numel() for s in SHAPES)
    assert held[2][1] == 5 * n_params  # prev, mean, m2, max, min


# -- Checkpoints that hold the slow weights and resume exactly (the reference's hold neither) -------


@pytest.mark.parametrize("how", ["deepcopy", "torch.save"])
@pytest.mark.parametrize("kind", ["adam", "ours"])
@pytest.mark.parametrize("cls", ["Lookahead", "Scout"])
def test_resume_mid_period_is_bitwise(cls, kind, how):
    period = 5
    params = make_params()
    w = getattr(ho, cls)(make_base(kind, params), sync_rate=0.3, sync_period=period)
    train(w, params, 0, 7)  # mid-period
    sd = w.state_dict()
    assert {"state", "param_groups", "base_state_dict", "slow_params", "fast_steps"} <= set(sd)
    assert sd["fast_steps"] == 7
    if cls == "Scout":
        assert set(sd["scout_stats"]) == {"prev", "mean", "m2", "max", "min"}
    if how == "deepcopy":
        sd = copy.deepcopy(sd)
    else:
        buffer = io.BytesIO()
        torch.save(sd, buffer)
        buffer.seek(0)
        sd = torch.load(buffer, weights_only=True)
    params2 = clone_params(params)
    w2 = getattr(ho, cls)(make_base(kind, params2), sync_rate=0.3, sync_period=period)
    w2.load_state_dict(sd)
    train(w, params, 7, 18)
    train(w2, params2, 7, 18)
    for p, q in zip(params, params2):
        assert torch.equal(p, q)
    for a, b in zip(w._flat_slow(), w2._flat_slow()):
        assert torch.equal(a, b)
    assert w.fast_steps == w2.fast_steps == 18


@pytest.mark.parametrize("cls", ["Lookahead", "Scout"])
def test_state_dict_layout_contains_the_reference_keys(cls):
    params, ref_params = make_params(), make_params()
    ours = getattr(ho, cls)(make_base("adam", params))
    refw = ref_wrapper(cls, make_base("adam", ref_params))
    train(ours, params, 0, 3)
    train(refw, ref_params, 0, 3)
    a, b = ours.state_dict(), refw.state_dict()
    assert set(b) <= set(a)
    assert b["state"] == {}
    # Ours: one entry per parameter with its slow weights and the base's state
    # (the layout torch.distributed.checkpoint keeps); the reference ignores them.
    base_state = a["base_state_dict"]["state"]
    assert set(a["state"]) == set(range(len(params)))
    for index, entry in a["state"].items():
        assert entry["slow_param"] is a["slow_params"][index]  # one copy, saved once
        assert entry["base_state"] is base_state[index]
    # Ours are the base's groups (torch.optim's layout, every hyper-parameter): a
    # superset of the reference's, which torch's load_state_dict takes as it is.
    assert all(set(g) <= set(h) for g, h in zip(b["param_groups"], a["param_groups"]))
    assert [g["params"] for g in a["param_groups"]] == [g["params"] for g in b["param_groups"]]
    settings = {"fast_steps": 3, "sync_rate": ours.defaults["sync_rate"], "sync_period": ours.defaults["sync_period"],
                **({"last_sync_rate": None} if cls == "Scout" else {})}  # no sync yet
    assert a["param_groups"] == [{**g, "wrapper_settings": [settings]} for g in a["base_state_dict"]["param_groups"]]
    assert set(a["base_state_dict"]) == set(b["base_state_dict"])


@pytest.mark.parametrize("cls", ["Lookahead", "Scout"])
def test_reference_checkpoint_resumes_at_the_lr_its_base_trained_with(cls):
    """A scheduler on the reference's wrapper changes only the wrapper's copy of the groups; its
    base went on at its own lr, and so does ours, resumed from that checkpoint."""
    ref_params = make_params()
    refw = ref_wrapper(cls, make_base("adam", ref_params, "ref"), sync_period=4)
    scheduler = torch.optim.lr_scheduler.StepLR(refw, step_size=1, gamma=0.1)
    for t in range(2):
        grads_at(t, ref_params)
        refw.step()
        scheduler.step()
    sd = copy.deepcopy(refw.state_dict())
    trained = [g["lr"] for g in sd["base_state_dict"]["param_groups"]]
    assert [g["lr"] for g in sd["param_groups"]] != trained
    ref2 = ref_wrapper(cls, make_base("adam", clone_params(ref_params), "ref"), sync_period=4)
    ref2.load_state_dict(copy.deepcopy(sd))
    ours = getattr(ho, cls)(make_base("adam", clone_params(ref_params)), sync_period=4)
    ours.load_state_dict(copy.deepcopy(sd))
    assert [g["lr"] for g in ref2.base_optimizer.param_groups] == trained
    assert [g["lr"] for g in ours.base_optimizer.param_groups] == trained
    assert [g["lr"] for g in ours.param_groups] == trained
    # What only the wrapper's groups held (the scheduler's initial_lr) is taken: it resumes.
    assert [g["initial_lr"] for g in ours.param_groups] == [g["initial_lr"] for g in sd["param_groups"]]
    torch.optim.lr_scheduler.StepLR(ours, step_size=1, gamma=0.1, last_epoch=1)


@pytest.mark.parametrize("cls", ["Lookahead", "Scout"])
def test_sync_options_are_taken_as_the_optimizers_take_numbers(cls):
    """numpy's numbers and one-element tensors, as the optimizers' options (and the reference's
    numpy rate); kept as a float and an int, which a checkpoint loads with weights_only."""
    import numpy as np

    for rate, period in [(np.float32(0.25), np.int64(3)), (torch.tensor(0.25), torch.tensor(3)), (0.25, 3)]:
        wrapper = getattr(ho, cls)(make_base("adam", make_params()), sync_rate=rate, sync_period=period)
        assert (type(wrapper.defaults["sync_rate"]), type(wrapper.defaults["sync_period"])) == (float, int)
        assert (wrapper.defaults["sync_rate"], wrapper.defaults["sync_period"]) == (0.25, 3)
        buffer = io.BytesIO()
        torch.save(wrapper.state_dict(), buffer)
        buffer.seek(0)
        getattr(ho, cls)(make_base("adam", make_params())).load_state_dict(torch.load(buffer, weights_only=True))
    for rate, period in [(torch.tensor([0.5, 0.5]), 3), ("0.5", 3), (True, 3), (0.5, 2.0), (0.5, torch.tensor(2.5)),
                         (0.5, torch.tensor(True)), (0.5, np.bool_(True))]:
        with pytest.raises(ValueError, match="expected positive"):
            getattr(ho, cls)(make_base("adam", make_params()), sync_rate=rate, sync_period=period)


@pytest.mark.parametrize("saved_dtype, dtype", [(torch.float64, torch.float32), (torch.float32, torch.bfloat16)])
@pytest.mark.parametrize("cls", ["Lookahead", "Scout"])
def test_a_checkpoint_of_another_floating_dtype_is_converted_as_the_base_converts_it(cls, saved_dtype, dtype):
    """A float64 run resumed in float32 (and float32 in bfloat16): the slow weights and Scout's
    statistics are converted, as the base's load converts its state; a sparse one is refused."""
    saved_params = make_params(dtype=saved_dtype)
    saved = getattr(ho, cls)(make_base("ours", saved_params), sync_period=3)
    train(saved, saved_params, 0, 2)
    sd = copy.deepcopy(saved.state_dict())
    params = [p.detach().to(dtype).requires_grad_() for p in saved_params]
    loaded = getattr(ho, cls)(make_base("ours", params), sync_period=3)
    loaded.load_state_dict(copy.deepcopy(sd))
    assert loaded.fast_steps == 2
    for mine, theirs in zip(chain.from_iterable(loaded.slow_params), chain.from_iterable(saved.slow_params)):
        assert mine.dtype == dtype and torch.equal(mine, theirs.to(dtype))
    train(loaded, params, 2, 4)
    sd["slow_params"][0] = sd["slow_params"][0].to_sparse()
    with pytest.raises(ValueError, match="sparse"):
        getattr(ho, cls)(make_base("ours", [p.detach().clone().requires_grad_() for p in params]),
                         sync_period=3).load_state_dict(sd)


@pytest.mark.parametrize("kind", ["adam", "ours"])
@pytest.mark.parametrize("cls", ["Lookahead", "Scout"])
def test_reference_checkpoint_loads_into_ours(cls, kind):
    """Slow weights restart from the current parameters, as the reference does."""
    ref_params = make_params()
    refw = ref_wrapper(cls, make_base(kind, ref_params, "ref"), sync_rate=0.3, sync_period=4)
    train(refw, ref_params, 0, 6)
    sd = copy.deepcopy(refw.state_dict())
    # A fresh reference wrapper resumed from it ...
    p_ref = clone_params(ref_params)
    ref2 = ref_wrapper(cls, make_base(kind, p_ref, "ref"), sync_rate=0.3, sync_period=4)
    ref2.load_state_dict(copy.deepcopy(sd))
    # ... and ours resumed from it, continue the same way.
    p_ours = clone_params(ref_params)
    ours = getattr(ho, cls)(make_base(kind, p_ours), sync_rate=0.3, sync_period=4)
    ours.load_state_dict(copy.deepcopy(sd))
    assert ours.fast_steps == 0
    if kind == "ours":
        # Loaded into the reference's AdaBelief, steps become float32 tensors (torch.optim.Adam's
        # __setstate__), and its bias corrections would then be computed in float32: give the
        # oracle back its int steps.
        for st in ref2.base_optimizer.state.values():
            st["step"] = int(st["step"])
    train(ref2, p_ref, 6, 15)
    train(ours, p_ours, 6, 15)
    for p, q in zip(p_ours, p_ref):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("cls", ["Lookahead", "Scout"])
def test_our_checkpoint_loads_into_reference(cls):
    params = make_params()
    ours = getattr(ho, cls)(make_base("adam", params), sync_rate=0.3, sync_period=4)
    train(ours, params, 0, 6)
    sd = copy.deepcopy(ours.state_dict())
    p_ref = clone_params(params)
    refw = ref_wrapper(cls, make_base("adam", p_ref), sync_rate=0.3, sync_period=4)
    refw.load_state_dict(copy.deepcopy(sd))
    base_a, base_b = ours.base_optimizer.state_dict(), refw.base_optimizer.state_dict()
    for key, st in base_a["state"].items():
        for k, v in st.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(base_b["state"][key][k])), k
    # The reference restarts its period from the current weights: so does ours given
    # the same checkpoint without our extra keys.
    stripped = {k: v for k, v in sd.items() if k in ("state", "param_groups", "base_state_dict")}
    p_ours = clone_params(params)
    ours2 = getattr(ho, cls)(make_base("adam", p_ours), sync_rate=0.3, sync_period=4)
    ours2.load_state_dict(stripped)
    train(refw, p_ref, 6, 15)
    train(ours2, p_ours, 6, 15)
    for p, q in zip(p_ours, p_ref):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("cls", ["Lookahead", "Scout"])
def test_bad_checkpoint_is_refused_before_any_change(cls):
    params = make_params()
    w = getattr(ho, cls)(make_base("adam", params), sync_period=4)
    train(w, params, 0, 6)
    good = copy.deepcopy(w.state_dict())
    train(w, params, 6, 7)
    before = (copy.deepcopy(w.state_dict()), [p.detach().clone() for p in params])
    bad = copy.deepcopy(good)
    bad["slow_params"][-1] = torch.zeros(9, dtype=torch.float64)
    with pytest.raises(ValueError):
        w.load_state_dict(bad)
    after = (w.state_dict(), params)
    for p, q in zip(before[1], after[1]):
        assert torch.equal(p, q)
    for a, b in zip(before[0]["slow_params"], after[0]["slow_params"]):
        assert torch.equal(a, b)
    assert before[0]["fast_steps"] == after[0]["fast_steps"] == 7
    for key, st in before[0]["base_state_dict"]["state"].items():
        for k, v in st.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(after[0]["base_state_dict"]["state"][key][k]))


# -- Schedulers on the wrapper drive the base's lr (the reference's change only its own copy) --------


@pytest.mark.parametrize("cls", ["Lookahead", "Scout"])
def test_lr_scheduler_on_the_wrapper_drives_the_base(cls):
    finals = []
    for mode in ("scheduler", "manual"):
        params = make_params()
        base = torch.optim.SGD(groups(params), lr=0.1)
        w = getattr(ho, cls)(base, sync_period=3)
        sched = torch.optim.lr_scheduler.StepLR(w, step_size=2, gamma=0.1) if mode == "scheduler" else None
        for t in range(7):
            grads_at(t, params)
            w.step()
            if sched is not None:
                sched.step()
            elif t % 2 == 1:
                for g in base.param_groups:
                    g["lr"] *= 0.1
        if sched is not None:
            assert math.isclose(base.param_groups[0]["lr"], 0.1 * 0.1**3)
            assert math.isclose(base.param_groups[1]["lr"], 0.02 * 0.1**3)
        finals.append([p.detach().clone() for p in params])
    for a, b in zip(*finals):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)


def test_reference_scheduler_does_not_reach_the_base():
    """Documents why ours differs: the reference's wrapper keeps its own lr copy."""
    base = torch.optim.SGD(make_params(), lr=0.1)
    w = ref_wrapper("Lookahead", base)
    sched = torch.optim.lr_scheduler.StepLR(w, step_size=1, gamma=0.1)
    grads_at(0, base.param_groups[0]["params"])
    w.step()
    sched.step()
    assert math.isclose(w.param_groups[0]["lr"], 0.01) and base.param_groups[0]["lr"] == 0.1


# The reference's Scout.add_param_group does not extend its buffer (IndexError at the next step).
@pytest.mark.parametrize("cls", ["Lookahead"])
def test_add_param_group_matches_reference(cls):
    params = make_params()
    ref_params = clone_params(params)
    ours = getattr(ho, cls)(torch.optim.SGD(params[:2], lr=0.1), sync_rate=0.5, sync_period=3)
    refw = ref_wrapper(cls, torch.optim.SGD(ref_params[:2], lr=0.1), sync_rate=0.5, sync_period=3)
    train(ours, params[:2], 0, 3)
    train(refw, ref_params[:2], 0, 3)
    ours.add_param_group({"params": params[2:], "lr": 0.05})
    refw.add_param_group({"params": ref_params[2:], "lr": 0.05})
    assert len(ours.slow_params) == 2 and len(ours.param_groups) == 2
    train(ours, params, 3, 9)
    train(refw, ref_params, 3, 9)
    for p, q in zip(params, ref_params):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_scout_resume_keeps_the_last_sync_rate():
    """The rate of the last sync is saved (it was NaN after a resume until the next sync); a
    checkpoint without it (older, or the reference's layout) loads with NaN."""
    params = make_params()
    opt = ho.Scout(ho.AdaBelief(params, lr=1e-2), sync_period=2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        opt.step()
    assert not math.isnan(opt.last_sync_rate)
    saved = copy.deepcopy(opt.state_dict())
    resumed = ho.Scout(ho.AdaBelief(clone_params(params), lr=1e-2), sync_period=2)
    resumed.load_state_dict(copy.deepcopy(saved))
    assert resumed.last_sync_rate == opt.last_sync_rate
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    again = ho.Scout(ho.AdaBelief(clone_params(params), lr=1e-2), sync_period=2)
    again.load_state_dict(torch.load(buffer))
    assert again.last_sync_rate == opt.last_sync_rate
    # As torch.distributed.checkpoint keeps it: the groups' wrapper_settings hold it.
    reduced = ho.Scout(ho.AdaBelief(clone_params(params), lr=1e-2), sync_period=2)
    reduced.load_state_dict({key: copy.deepcopy(saved[key]) for key in ("state", "param_groups")})
    assert reduced.last_sync_rate == opt.last_sync_rate
    older = copy.deepcopy(saved)
    del older["last_sync_rate"]
    for group in older["param_groups"]:
        del group["wrapper_settings"][0]["last_sync_rate"]
    resumed.load_state_dict(older)
    assert math.isnan(resumed.last_sync_rate)
    # Before the first sync it is saved as None, so that equal state dicts compare equal.
    fresh = ho.Scout(ho.AdaBelief(clone_params(params), lr=1e-2), sync_period=2)
    assert fresh.state_dict()["last_sync_rate"] is None
    for bad in ("0.5", 5.0, -1.0, math.inf, 2**80):
        older["last_sync_rate"] = bad
        with pytest.raises(ValueError, match=r"last_sync_rate' must be None or a number in \[0, 1\]"):
            resumed.load_state_dict(older)
        assert math.isnan(resumed.last_sync_rate) and resumed.fast_steps == saved["fast_steps"]


def test_scout_add_param_group_later():
    params = make_params()
    w = ho.Scout(torch.optim.SGD(params[:2], lr=0.1), sync_rate=0.0, sync_period=3)
    train(w, params[:2], 0, 3)
    w.add_param_group({"params": params[2:], "lr": 0.05})
    rates = record_our_rates(w)
    train(w, params, 3, 9)
    assert len(rates) == 2 and all(0.0 <= r <= 1.0 for r in rates)
    assert all(len(v) == len(params) for v in w.scout_stats.values())


@pytest.mark.parametrize("cls", ["Lookahead", "Scout"])
def test_bad_base_state_is_refused_before_the_wrapper_changes(cls):
    params = make_params()
    w = getattr(ho, cls)(ho.LAMB(groups(params), lr=0.05), sync_period=4)
    train(w, params, 0, 5)
    before = copy.deepcopy(w.state_dict())
    bad = copy.deepcopy(before)
    bad["base_state_dict"]["state"][0]["exp_avg"] = torch.zeros(5, dtype=torch.float64)
    bad["fast_steps"] = 99
    bad["slow_params"] = [torch.zeros_like(p) for p in bad["slow_params"]]
    with pytest.raises(ValueError):
        w.load_state_dict(bad)
    after = w.state_dict()
    assert after["fast_steps"] == 5
    for a, b in zip(before["slow_params"], after["slow_params"]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_scout_reduced_precision(dtype):
    params = make_params(dtype=dtype)
    w = ho.Scout(ho.AdaBelief(groups(params), lr=0.01), sync_rate=0.1, sync_period=3)
    rates = record_our_rates(w)
    train(w, params, 0, 7)
    assert len(rates) == 2 and all(0.1 <= r <= 1.0 for r in rates)
    assert all(p.dtype == dtype and torch.isfinite(p).all() for p in params)
    assert all(t.dtype == torch.float32 for t in w.scout_stats["mean"])


def test_scout_period_one_gives_rate_one():
    """One change per period: std over one sample is undefined for every element (coherence 0)."""
    params = make_params()
    w = ho.Scout(torch.optim.SGD(params, lr=0.1), sync_rate=0.3, sync_period=1)
    rates = record_our_rates(w)
    train(w, params, 0, 2)
    assert rates == [1.0, 1.0]


@pytest.mark.parametrize("cls", ["Lookahead", "Scout"])
def test_deepcopy_of_the_wrapper_continues_identically(cls):
    params = make_params()
    w = getattr(ho, cls)(ho.AdaBelief(groups(params), lr=0.05), sync_period=4)
    train(w, params, 0, 6)
    w2 = copy.deepcopy(w)
    params2 = [p for g in w2.param_groups for p in g["params"]]
    assert all(p is not q for p, q in zip(params, params2))
    train(w, params, 6, 13)
    train(w2, params2, 6, 13)
    for p, q in zip(params, params2):
        assert torch.equal(p, q)


# -- torch.optim's corners (issue 7) ---------------------------------------------------------


@pytest.mark.parametrize("cls", ["Lookahead", "Scout"])
@pytest.mark.parametrize("base_kind", ["adam", "sgd"])
def test_complex_parameters_step_as_their_real_views(cls, base_kind):
    """Where the base takes complex parameters (torch's Adam and SGD do), the wrapper does too,
    on their real views: the run of the same wrapper on the real views (bitwise with Adam, which
    steps complex weights as real views itself; SGD's complex products round otherwise)."""
    gen = torch.Generator().manual_seed(3)
    z0 = [torch.randn(s, generator=gen, dtype=torch.complex128) for s in [(4, 3), (5,)]]
    real0 = [torch.randn((2, 2), generator=gen, dtype=torch.float64)]
    runs = []
    for as_complex in (True, False):
        zs = [(z.clone() if as_complex else torch.view_as_real(z).clone()).requires_grad_() for z in z0]
        params = zs + [r.clone().requires_grad_() for r in real0]
        base = make_base(base_kind, params)
        wrapper = getattr(ho, cls)(base, sync_rate=0.3, sync_period=3)
        for t in range(8):
            g = torch.Generator().manual_seed(50 + t)
            for p in params:
                noise = torch.randn(torch.view_as_real(p).shape if p.is_complex() else p.shape, generator=g, dtype=torch.float64)
                noise = noise + 0.5 * (torch.view_as_real(p.detach()) if p.is_complex() else p.detach())
                p.grad = torch.view_as_complex(noise.contiguous()) if p.is_complex() else noise
            wrapper.step()
        state = wrapper.state_dict()
        runs.append(([torch.view_as_real(p.detach()) if p.is_complex() else p.detach() for p in params],
                     [torch.view_as_real(t) if t.is_complex() else t for t in state["slow_params"]]))
        if as_complex:  # a checkpoint of complex weights resumes into a new wrapper
            again = getattr(ho, cls)(make_base(base_kind, [p.detach().clone().requires_grad_() for p in params]),
                                     sync_rate=0.3, sync_period=3)
            again.load_state_dict(state)
    for got, want in zip(runs[0][0] + runs[0][1], runs[1][0] + runs[1][1]):
        if base_kind == "adam":
            assert torch.equal(got, want)
        else:
            torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("cls", ["Lookahead", "Scout"])
def test_parameters_that_are_not_floating_point_are_refused_before_the_base_moves_them(cls):
    n = torch.zeros(3, dtype=torch.int64)
    with pytest.raises(RuntimeError, match="only floating-point and complex parameters can be wrapped"):
        getattr(ho, cls)(torch.optim.SGD([n], lr=0.1))
    params = make_params()
    base = make_base("adam", params)
    wrapper = getattr(ho, cls)(base, sync_period=2)
    with pytest.raises(RuntimeError, match="only floating-point and complex parameters can be wrapped"):
        wrapper.add_param_group({"params": [n]})
    assert len(base.param_groups) == len(wrapper.slow_params) == 2
    train(wrapper, params, 0, 4)  # still a working wrapper
    assert wrapper.fast_steps == 4


@pytest.mark.parametrize("cls", ["Lookahead", "Scout"])
def test_complex_parameters_are_refused_where_the_base_refuses_them(cls):
    """Our algorithms refuse complex parameters at their step, before anything moves; so does a
    wrapper around them (its counter does not advance)."""
    z = torch.randn(3, dtype=torch.complex64, requires_grad=True)
    x = torch.randn(3, requires_grad=True)
    wrapper = getattr(ho, cls)(ho.LAMB([x, z], lr=0.1), sync_period=2)
    kept = [x.detach().clone(), z.detach().clone()]
    x.grad, z.grad = torch.randn_like(x), torch.randn_like(z)
    with pytest.raises(RuntimeError, match="only floating-point parameters can be optimized"):
        wrapper.step()
    assert torch.equal(x.detach(), kept[0]) and torch.equal(z.detach(), kept[1])
    assert wrapper.fast_steps == 0


@pytest.mark.parametrize("cls", ["Lookahead", "Scout"])
def test_state_dict_hooks_see_and_shape_what_is_saved_and_loaded(cls):
    params = make_params()
    wrapper = getattr(ho, cls)(make_base("adam", params))
    train(wrapper, params, 0, 3)
    wrapper.register_state_dict_pre_hook(lambda opt: opt.state.__setitem__("test", 1))
    wrapper.register_state_dict_post_hook(lambda opt, sd: {**sd, "extra": 2})
    saved = wrapper.state_dict()
    assert saved["state"]["test"] == 1 and saved["extra"] == 2

    params2 = clone_params(params)
    other = getattr(ho, cls)(make_base("adam", params2))

    def halve_lr(opt, state_dict):
        state_dict = copy.deepcopy(state_dict)
        for group in state_dict["param_groups"]:
            group["lr"] /= 2
        return state_dict

    seen = []
    other.register_load_state_dict_pre_hook(halve_lr)
    other.register_load_state_dict_post_hook(lambda opt: seen.append(opt.state["test"]))
    other.load_state_dict(saved)
    assert [g["lr"] for g in other.base_optimizer.param_groups] == [g["lr"] / 2 for g in saved["param_groups"]]
    assert seen == [1]


@pytest.mark.parametrize("cls", ["Lookahead", "Scout"])
def test_named_parameters_and_repeated_ones_are_numbered_as_torch_does(cls):
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    wrapper = getattr(ho, cls)(torch.optim.Adam(model.named_parameters(), lr=0.1))
    saved = wrapper.state_dict()
    assert saved["param_groups"][0]["param_names"] == [n for n, _ in model.named_parameters()]
    assert [{k: v for k, v in g.items() if k != "wrapper_settings"}
            for g in saved["param_groups"]] == saved["base_state_dict"]["param_groups"]
    restored = getattr(ho, cls)(torch.optim.Adam(model.named_parameters(), lr=0.1))
    restored.load_state_dict(saved)

    p = torch.randn(3, requires_grad=True)
    with pytest.warns(UserWarning, match="duplicate"):
        base = torch.optim.SGD([p, p], lr=0.1)
    saved = getattr(ho, cls)(base).state_dict()
    assert saved["param_groups"][0]["params"] == base.state_dict()["param_groups"][0]["params"]


@pytest.mark.parametrize("make_scheduler", [
    lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10),
    lambda opt: torch.optim.lr_scheduler.CyclicLR(opt, base_lr=0.01, max_lr=0.1, step_size_up=3),
], ids=["OneCycleLR", "CyclicLR"])
@pytest.mark.parametrize("kind", ["adam", "sgd", "ours"])
@pytest.mark.parametrize("cls", ["Lookahead", "Scout"])
def test_momentum_cycling_schedulers_drive_the_base(cls, kind, make_scheduler):
    params = make_params()
    base = make_base(kind, params)
    wrapper = getattr(ho, cls)(base, sync_period=3)
    scheduler = make_scheduler(wrapper)
    key = "momentum" if kind == "sgd" else "betas"
    first = [g[key] for g in base.param_groups]
    for t in range(5):
        grads_at(t, params)
        wrapper.step()
        scheduler.step()
    assert [g[key] for g in base.param_groups] != first  # momentum cycled, on the base
    assert wrapper.param_groups[0]["lr"] == base.param_groups[0]["lr"] == scheduler.get_last_lr()[0]


@pytest.mark.parametrize("cls", ["Lookahead", "Scout"])
@pytest.mark.parametrize("nested", [False, True])
def test_global_step_hooks_fire_once_per_step_through_a_wrapper(cls, nested):
    # As for torch's own optimizers: one step() is one step for the global hooks, seen
    # with the wrapper; the base's instance hooks still run when the wrapper steps it.
    params = make_params()
    base = make_base("adam", params)
    inner = ho.Lookahead(base) if nested else base
    wrapper = getattr(ho, cls)(inner)
    seen, own, base_own = [], [], []
    handles = [register_optimizer_step_pre_hook(lambda opt, a, k: seen.append(("pre", opt))),
               register_optimizer_step_post_hook(lambda opt, a, k: seen.append(("post", opt))),
               wrapper.register_step_pre_hook(lambda opt, a, k: own.append(opt)),
               base.register_step_pre_hook(lambda opt, a, k: base_own.append(opt)),
               base.register_step_post_hook(lambda opt, a, k: base_own.append(opt))]
    try:
        train(wrapper, params, 0, 2)
    finally:
        for handle in handles:
            handle.remove()
    assert seen == [("pre", wrapper), ("post", wrapper)] * 2
    assert own == [wrapper, wrapper]
    assert base_own == [base] * 4


# -- State entries for torch.distributed.checkpoint ----------------------------------------------


def _reduced(state_dict):
    """What torch.distributed.checkpoint keeps of an optimizer's state dict."""
    return copy.deepcopy({"state": state_dict["state"], "param_groups": state_dict["param_groups"]})


@pytest.mark.parametrize("cls", ["Lookahead", "Scout"])
def test_state_is_not_empty_once_the_base_has_state(cls):
    """DCP takes a zero-lr step on an optimizer whose `state` is empty: that would advance
    the counter (and maybe sync) of a trained or freshly loaded wrapper."""
    params = make_params()
    trained_base = make_base("adam", params)
    train(trained_base, params, 0, 2)
    assert len(getattr(ho, cls)(trained_base).state) == len(params)
    fresh = getattr(ho, cls)(make_base("adam", make_params()))
    assert not fresh.state  # DCP makes the state of a fresh pair by a zero-lr step, then loads
    w = getattr(ho, cls)(make_base("adam", params), sync_period=3)
    train(w, params, 0, 4)
    loaded = getattr(ho, cls)(make_base("adam", make_params()), sync_period=3)
    loaded.load_state_dict(w.state_dict())
    assert len(loaded.state) == len(params)


@pytest.mark.parametrize("cls", ["Lookahead", "Scout"])
def test_reduced_state_dict_loads_after_add_param_group(cls):
    params = make_params()
    w = getattr(ho, cls)(make_base("adam", params[:2]), sync_period=3)
    train(w, params[:2], 0, 2)
    w.add_param_group({"params": params[2:]})
    train(w, params, 2, 4)
    fresh_params = [p.detach().clone().requires_grad_() for p in params]
    fresh = getattr(ho, cls)(make_base("adam", fresh_params[:2]), sync_period=3)
    fresh.add_param_group({"params": fresh_params[2:]})
    fresh.load_state_dict(_reduced(w.state_dict()))
    assert fresh.fast_steps == w.fast_steps == 4
    train(w, params, 4, 7)
    train(fresh, fresh_params, 4, 7)
    for p, q in zip(params, fresh_params):
        assert torch.equal(p, q)


def test_nested_wrappers_keep_both_counters_through_a_reduced_state_dict():
    params = make_params()
    outer = ho.Lookahead(ho.Scout(make_base("adam", params), sync_period=3), sync_period=4)
    train(outer, params, 0, 5)
    other = clone_params(params)
    fresh = ho.Lookahead(ho.Scout(make_base("adam", other), sync_period=3), sync_period=4)
    fresh.load_state_dict(_reduced(outer.state_dict()))
    assert fresh.fast_steps == outer.fast_steps == 5
    assert fresh.base_optimizer.fast_steps == outer.base_optimizer.fast_steps == 5
    train(outer, params, 5, 9)
    train(fresh, other, 5, 9)
    for p, q in zip(params, other):
        assert torch.equal(p, q)


@pytest.mark.parametrize("cls", ["Lookahead", "Scout"])
def test_pickles_of_the_earlier_layout_load(cls):
    """Earlier versions pickled the counter as an int attribute and `state` as a plain attribute."""
    params = make_params()
    w = getattr(ho, cls)(make_base("adam", params), sync_period=3)
    train(w, params, 0, 2)
    old = w.__getstate__()
    old["fast_steps"] = int(old.pop("_fast_steps"))
    old["state"] = old.pop("_state")
    if cls == "Scout":
        old["last_sync_rate"] = float(old.pop("_last_sync_rate"))
    restored = getattr(ho, cls).__new__(getattr(ho, cls))
    restored.__setstate__(old)
    assert restored.fast_steps == 2
    train(restored, params, 2, 4)
    assert restored.fast_steps == 4


# -- A parameter converted, moved or resized in place after the copies were taken ---------------------
# The wrapper holds copies of the parameters (slow weights, Scout's statistics). Before the first step,
# copies that no longer fit are taken anew; after it, the step that would read them is refused before
# the base optimizer moves anything (it used to run the base first, then fail, or sync float64
# weights through float32 copies).


def _stateless_base(params):
    return ho.LARS(params, lr=0.1, momentum=0.0)  # no state of its own: nothing refuses before us


@pytest.mark.parametrize("wrapper", ["Lookahead", "Scout"])
@pytest.mark.parametrize("change", ["dtype", "shape"])
def test_a_parameter_changed_after_the_first_step_is_refused_before_the_base_moves(wrapper, change):
    params = make_params(dtype=torch.float32)
    opt = getattr(ho, wrapper)(_stateless_base(params), sync_period=3)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    p = params[0]
    p.data = p.data.double() if change == "dtype" else torch.randn(p.shape[0] + 1, *p.shape[1:])
    p.grad = torch.randn_like(p)
    for q in params[1:]:
        q.grad = torch.randn_like(q)
    if wrapper == "Lookahead":
        opt.step()  # counts only: the copies are read by the sync
    before = [q.detach().clone() for q in params]
    steps = opt.fast_steps
    with pytest.raises(RuntimeError, match=f"parameter 0 of group 0 is now .*{change}|parameter 0 of group 0 is now"):
        opt.step()
    assert opt.fast_steps == steps
    assert all(torch.equal(q, b) for q, b in zip(params, before))


def test_lookahead_does_not_round_float64_weights_through_float32_copies():
    params = make_params(dtype=torch.float32)
    opt = ho.Lookahead(_stateless_base(params), sync_period=2)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    for p in params:
        p.data = p.data.double()
        p.grad = torch.randn_like(p)
    with pytest.raises(RuntimeError, match="slow weight"):
        opt.step()  # the sync


@pytest.mark.parametrize("wrapper", ["Lookahead", "Scout"])
def test_copies_are_taken_anew_for_parameters_converted_before_the_first_step(wrapper):
    params = make_params(dtype=torch.float32)
    opt = getattr(ho, wrapper)(ho.AdaBelief(params, lr=0.1), sync_period=2)
    for p in params:
        p.data = p.data.double()  # model.double() after making the optimizers
    twin = clone_params(params)
    ref = getattr(ho, wrapper)(ho.AdaBelief(twin, lr=0.1), sync_period=2)
    gen = torch.Generator().manual_seed(3)
    for _ in range(4):
        grads = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
        for p, q, g in zip(params, twin, grads):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    assert all(s.dtype == torch.float64 for group in opt.slow_params for s in group)
    assert all(torch.equal(p, q) for p, q in zip(params, twin))


@pytest.mark.parametrize("wrapper", ["Lookahead", "Scout"])
@pytest.mark.parametrize("key, value", [("lr", float("nan")), ("weight_decay", -1.0), ("betas", (0.9, 2.0)),
                                        ("lr", "0.1"), ("eps", None)])
def test_a_wrapper_load_refuses_top_level_options_the_base_would_refuse(wrapper, key, value):
    # The top-level groups win over the base's nested copy: they are checked as the base checks its own.
    params = make_params()
    opt = getattr(ho, wrapper)(ho.LAMB(params, lr=0.1))
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    saved = copy.deepcopy(opt.state_dict())
    saved["param_groups"][0][key] = value
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises((ValueError, TypeError), match=key):
        opt.load_state_dict(saved)
    after = opt.state_dict()
    assert [{k: v for k, v in g.items()} for g in after["param_groups"]] == before["param_groups"]
    assert all(torch.equal(a, b) for a, b in zip(after["slow_params"], before["slow_params"]))


@pytest.mark.parametrize("wrapper", ["Lookahead", "Scout"])
def test_a_state_precision_changed_after_the_first_step_is_refused_by_name(wrapper):
    params = [p.detach().to(torch.bfloat16).requires_grad_() for p in make_params()]
    opt = getattr(ho, wrapper)(ho.AdaBelief(params, lr=0.01), sync_period=2)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    opt.param_groups[0]["state_precision"] = "float32"
    before = [p.detach().clone() for p in params]
    with pytest.raises(RuntimeError, match="state_precision"):
        opt.step()
        opt.step()  # Lookahead reads its copies on the sync
    assert all(torch.equal(p, b) for p, b in zip(params, before))
