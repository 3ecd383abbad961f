"""Pickling, deep copies and malformed checkpoints."""

import copy
import io
import pickle

import pytest
import torch

import holocron_optim as H


def _param(seed=0, shape=(4, 3)):
    torch.manual_seed(seed)
    return torch.nn.Parameter(torch.randn(shape, dtype=torch.float64))


def _run(opt, params, steps, seed=1):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        opt.step()


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: H.LARS(ps, lr=0.1, momentum=0.9, scale_clip=(0.0, 1.0)),
        lambda ps: H.LAMB(ps, lr=0.1, scale_clip=(0.0, 1.0)),
        lambda ps: H.RaLars(ps, lr=0.1, force_adaptive_momentum=True, scale_clip=(0.0, 1.0)),
        lambda ps: H.AdamP(ps, lr=0.1, delta=0.5),
    ],
)
def test_deepcopy_keeps_settings_outside_param_groups(make):
    p = _param()
    opt = make([p])
    _run(opt, [p], 3)
    twin_p = copy.deepcopy(p)
    twin = make([twin_p])
    twin.load_state_dict(opt.state_dict())
    copied = copy.deepcopy(opt)
    copied_p = copied.param_groups[0]["params"][0]
    _run(copied, [copied_p], 3, seed=2)
    _run(twin, [twin_p], 3, seed=2)
    assert torch.equal(copied_p, twin_p)


@pytest.mark.parametrize("wrapper", [H.Lookahead, H.Scout])
def test_wrapper_with_scheduler_pickles_and_copies_independently(wrapper):
    p = _param()
    opt = wrapper(H.LAMB([p], lr=0.1), sync_period=2)
    torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)
    _run(opt, [p], 3)
    buffer = io.BytesIO()
    torch.save(opt, buffer)
    assert pickle.loads(pickle.dumps(opt)).fast_steps == 3
    copied = copy.deepcopy(opt)
    copied_p = copied.param_groups[0]["params"][0]
    _run(copied, [copied_p], 1)
    assert copied.fast_steps == 4 and opt.fast_steps == 3


@pytest.mark.parametrize("key,value", [("sync_period", 0), ("sync_rate", float("nan")), ("fast_steps", -3)])
def test_wrapper_refuses_bad_counters_and_options(key, value):
    p = _param()
    opt = H.Lookahead(H.AdaBelief([p], lr=0.1), sync_period=3)
    _run(opt, [p], 2)
    state_dict = opt.state_dict()
    state_dict[key] = value
    fresh = H.Lookahead(H.AdaBelief([p], lr=0.1), sync_period=3)
    with pytest.raises(ValueError):
        fresh.load_state_dict(state_dict)
    assert fresh.fast_steps == 0 and len(fresh.base_optimizer.state) == 0


def test_negative_step_counter_is_refused():
    p = _param()
    opt = H.AdaBelief([p], lr=0.1)
    _run(opt, [p], 2)
    state_dict = opt.state_dict()
    state_dict["state"][0]["step"] = -1
    fresh = H.AdaBelief([_param()], lr=0.1)
    with pytest.raises(ValueError, match="step"):
        fresh.load_state_dict(state_dict)
    assert len(fresh.state) == 0


def test_invalid_group_options_fail_before_any_state_is_made():
    p = _param()
    opt = H.LAMB([p], lr=0.1)
    opt.param_groups[0]["lr"] = -1.0
    p.grad = torch.ones_like(p)
    before = p.detach().clone()
    with pytest.raises(ValueError, match="lr"):
        opt.step()
    assert len(opt.state) == 0 and torch.equal(p, before)


def test_ralars_uses_the_sma_length_recorded_in_its_group():
    # The reference fixes sma_inf on the group's first step; changing beta2 later keeps it.
    p, q = _param(), _param()
    a, b = H.RaLars([p], lr=0.1), H.RaLars([q], lr=0.1)
    _run(a, [p], 1)
    _run(b, [q], 1)
    b.param_groups[0]["sma_inf"] = 3.0  # rectification off from now on (sma_t <= 4)
    _run(a, [p], 8, seed=3)
    _run(b, [q], 8, seed=3)
    assert not torch.equal(p, q)
