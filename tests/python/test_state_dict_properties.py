"""Property tests (hypothesis) of load_state_dict: a valid state_dict is
mutated (keys dropped or retyped, wrong shapes and dtypes, NaN or negative
steps, extra or missing groups, bad hyper-parameters) and loaded. Each load
either succeeds, and the optimizer then holds exactly what was loaded and its
next step succeeds or refuses with nothing changed, or raises a clear error
(ValueError, RuntimeError, TypeError) with nothing changed."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import holocron_optim as ho
from registry import factories

CLEAR_ERRORS = (ValueError, RuntimeError, TypeError)

FACTORIES = {
    **factories(0.05, wrappers=False),
    "Lookahead": lambda p: ho.Lookahead(ho.LAMB(p, lr=0.05), sync_period=3),
    "Scout": lambda p: ho.Scout(ho.AdaBelief(p, lr=0.05), sync_period=3),
}


def make_params():
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=gen, dtype=torch.float64).requires_grad_() for s in [(3, 2), (4,), ()]]


def set_grads(params, seed):
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)


def trained(name):
    params = make_params()
    opt = FACTORIES[name](params)
    for t in range(4):
        set_grads(params, t)
        opt.step()
    return params, opt


def snapshot(opt, params):
    return [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict())


def same(a, b) -> bool:
    """Deep equality of state dicts and lists, NaN equal to NaN, tensors by dtype, shape and bits."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))
                and torch.equal(a.isnan(), b.isnan()))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def unchanged(opt, params, before) -> bool:
    values, state = before
    return all(torch.equal(p, v) for p, v in zip(params, values)) and same(opt.state_dict(), state)


# -- mutations: each takes a deep-copied state dict and a draw function -----------------------

def _states(sd):
    return (sd.get("base_state_dict") or sd)["state"]


def _pick_state(sd, draw):
    states = _states(sd)
    if not states:
        return None, None
    key = draw(st.sampled_from(sorted(states, key=str)))
    return key, states[key]


def drop_state_key(sd, draw):
    _, state = _pick_state(sd, draw)
    if state:
        state.pop(draw(st.sampled_from(sorted(state))))


def retype_state_value(sd, draw):
    _, state = _pick_state(sd, draw)
    if not state:
        return
    key = draw(st.sampled_from(sorted(state)))
    value = state[key]
    choices = [1.5, "x", None, [1, 2], torch.tensor(7), torch.zeros(5)]
    if isinstance(value, torch.Tensor):
        choices += [value.float(), value.to(torch.int64), value.reshape(-1)[:1], value.unsqueeze(0)]
    state[key] = draw(st.sampled_from(choices))


def bad_step(sd, draw):
    _, state = _pick_state(sd, draw)
    if state is not None:
        state["step"] = draw(st.sampled_from([-1, math.nan, math.inf, -3.0, 2.5, torch.tensor(-2.0), "3"]))


def extra_state_entry(sd, draw):
    key = draw(st.sampled_from([99, -1, "note", 1.5]))
    _states(sd)[key] = draw(st.sampled_from([{"step": 1}, {}, 3, "x"]))


def group_surgery(sd, draw):
    groups = (sd.get("base_state_dict") or sd)["param_groups"]
    kind = draw(st.sampled_from(["extra", "drop", "drop_param", "dup_param", "bad_lr", "bad_betas", "no_params"]))
    if kind == "extra":
        groups.append(copy.deepcopy(groups[0]))
    elif kind == "drop":
        groups.pop()
    elif kind == "drop_param":
        groups[0]["params"] = groups[0]["params"][:-1]
    elif kind == "dup_param":
        groups[0]["params"] = groups[0]["params"] + groups[0]["params"][:1]
    elif kind == "bad_lr":
        groups[0]["lr"] = draw(st.sampled_from([-1.0, math.nan, "fast", None]))
    elif kind == "bad_betas" and "betas" in groups[0]:
        groups[0]["betas"] = draw(st.sampled_from([(0.9,), (1.5, 0.9), (0.9, 0.999, 0.9, 0.1), 0.9]))
    elif kind == "no_params":
        del groups[0]["params"]


def top_level(sd, draw):
    key = draw(st.sampled_from(sorted(sd)))
    if draw(st.booleans()):
        del sd[key]
    else:
        sd[key] = draw(st.sampled_from([None, 3, "x", [], {}]))


def wrapper_surgery(sd, draw):
    if "slow_params" not in sd:
        return
    kind = draw(st.sampled_from(["slow_shape", "slow_dtype", "slow_count", "fast_steps", "stats"]))
    if kind == "slow_shape":
        sd["slow_params"][0] = sd["slow_params"][0].reshape(-1)
    elif kind == "slow_dtype":
        sd["slow_params"][1] = sd["slow_params"][1].float()
    elif kind == "slow_count":
        sd["slow_params"] = sd["slow_params"][:-1]
    elif kind == "fast_steps":
        sd["fast_steps"] = draw(st.sampled_from([-1, 2.5, "3", None]))
    elif "scout_stats" in sd:
        stats = sd["scout_stats"]
        stats.pop(draw(st.sampled_from(sorted(stats))))


MUTATIONS = [drop_state_key, retype_state_value, bad_step, extra_state_entry, group_surgery, top_level,
             wrapper_surgery]


@pytest.mark.parametrize("name", FACTORIES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_mutated_state_dict_loads_exactly_or_is_refused_with_nothing_changed(name, data):
    _, source = trained(name)
    mutated = copy.deepcopy(source.state_dict())
    for mutation in data.draw(st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=3)):
        try:
            mutation(mutated, data.draw)
        except (KeyError, IndexError, TypeError, AttributeError):
            pass  # an earlier mutation removed what this one edits
    given_copy = copy.deepcopy(mutated)

    params, target = trained(name)
    set_grads(params, 10)
    before = snapshot(target, params)
    try:
        target.load_state_dict(mutated)
    except CLEAR_ERRORS:
        assert unchanged(target, params, before), "a refused load changed the optimizer"
        return
    assert same(mutated, given_copy), "load_state_dict changed its argument"

    before = snapshot(target, params)
    try:
        target.step()
    except CLEAR_ERRORS:
        assert unchanged(target, params, before), "a refused step changed the optimizer"
        return
    for p in params:
        assert p.dtype == torch.float64
