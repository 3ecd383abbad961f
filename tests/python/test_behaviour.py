"""Behaviour shared by the eight optimizers: validation, what a step may and
may not touch, closures, errors, layouts, schedulers, convergence."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import holocron_optim as ho
from _harness import assert_same
from registry import ALGORITHMS, ALGOS

nan, inf = math.nan, math.inf
# Options that make every optional path of the update run.
RICH = {name: algorithm.full for name, algorithm in ALGORITHMS.items()}


def params_(*shapes, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in shapes]


def set_grads(params, seed):
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype) + 0.3 * p.detach()


def snapshot(opt, params):
    return [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict())


# -- Constructor validation ------------------------------------------------------------------


def _bad_kwargs():
    return [(name, options) for name, algorithm in ALGORITHMS.items() for options in algorithm.bad_options()]


@pytest.mark.parametrize("name,kwargs", _bad_kwargs(), ids=lambda v: str(v) if isinstance(v, dict) else v)
def test_constructor_rejects(name, kwargs):
    with pytest.raises(ValueError):
        getattr(ho, name)(params_((3,)), **kwargs)


@pytest.mark.parametrize("name", ["LAMB", "RaLars", "AdEMAMix"])
def test_reference_checkpoint_with_negative_weight_decay_is_refused_at_load(name):
    # The reference accepts weight_decay < 0 for these three; we refuse it, and a load
    # validates the groups it would install as the constructor does, so the
    # checkpoint is refused before anything changes (it could not be stepped).
    from conftest import load_reference

    reference_cls = getattr(load_reference(name.lower()), name)
    ref_params = params_((4, 3), (5,))
    reference = reference_cls(ref_params, lr=0.05, weight_decay=-0.1)
    set_grads(ref_params, 0)
    reference.step()
    params = [p.detach().clone().requires_grad_() for p in ref_params]
    opt = getattr(ho, name)(params, lr=0.05)
    set_grads(params, 1)
    opt.step()
    before = snapshot(opt, params)
    groups_before = [dict(g) for g in opt.param_groups]
    with pytest.raises(ValueError, match=rf"{name}: group 0 of the loaded state dict: invalid weight_decay value: -0.1"):
        opt.load_state_dict(reference.state_dict())
    assert_same(snapshot(opt, params), before)
    assert [dict(g) for g in opt.param_groups] == groups_before
    opt.step()  # still usable


@pytest.mark.parametrize("name", ALGOS)
def test_constructor_defaults_accept(name):
    opt = getattr(ho, name)(params_((3,)))
    assert opt.param_groups[0]["lr"] == 1e-3


@pytest.mark.parametrize("name", ALGOS)
def test_add_param_group_validates_and_works(name):
    a, b = params_((4, 3), (5,))
    opt = getattr(ho, name)([a], **RICH[name])
    with pytest.raises(ValueError):
        opt.add_param_group({"params": [b], "lr": -1.0})
    assert len(opt.param_groups) == 1
    set_grads([a], 0)
    opt.step()
    opt.add_param_group({"params": [b], "lr": 0.02})
    set_grads([a, b], 1)
    opt.step()

    # The same as an optimizer holding both groups from the start, where b had no gradient at first.
    a2, b2 = params_((4, 3), (5,))
    opt2 = getattr(ho, name)([{"params": [a2]}, {"params": [b2], "lr": 0.02}], **RICH[name])
    set_grads([a2], 0)
    b2.grad = None
    opt2.step()
    set_grads([a2, b2], 1)
    opt2.step()
    assert torch.equal(a, a2) and torch.equal(b, b2)
    assert not torch.equal(b.detach(), params_((4, 3), (5,))[1].detach())
    assert_same(opt.state_dict(), opt2.state_dict())


# -- What a step touches ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ALGOS)
def test_step_never_writes_grad_and_skips_params_without_grad(name):
    a, b, c = params_((4, 3), (6,), (2, 2))
    opt = getattr(ho, name)([{"params": [a, b]}, {"params": [c]}], **RICH[name])
    b_before = b.detach().clone()
    for t in range(3):
        set_grads([a, c], t)
        grads = [a.grad.clone(), c.grad.clone()]
        opt.step()
        assert torch.equal(a.grad, grads[0]) and torch.equal(c.grad, grads[1])
        assert b.grad is None
    assert torch.equal(b, b_before)
    assert b not in opt.state or len(opt.state[b]) == 0
    assert 1 not in opt.state_dict()["state"]


@pytest.mark.parametrize("name", ALGOS)
def test_closure_runs_with_grad_enabled_and_its_loss_is_returned(name):
    (p,) = params_((5,))
    opt = getattr(ho, name)([p], **RICH[name])
    calls = []

    def closure():
        calls.append(torch.is_grad_enabled())
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    before = p.detach().clone()
    with torch.no_grad():
        loss = opt.step(closure)
    assert calls == [True]
    assert torch.equal(loss, (before**2).sum())
    assert not torch.equal(p.detach(), before)
    assert opt.step() is None


@pytest.mark.parametrize("name", ALGOS)
def test_sparse_gradient_is_rejected(name):
    (p,) = params_((4, 3))
    opt = getattr(ho, name)([p], **RICH[name])
    before = p.detach().clone()
    p.grad = torch.randn(4, 3, dtype=torch.float64).to_sparse()
    with pytest.raises(RuntimeError, match=name):
        opt.step()
    assert torch.equal(p, before)
    assert len(opt.state) == 0 or all(len(s) == 0 for s in opt.state.values())


@pytest.mark.parametrize("bad", ["shape", "dtype"])
@pytest.mark.parametrize("name", ALGOS)
def test_bad_gradient_of_a_later_param_changes_nothing(name, bad):
    params = params_((4, 3), (6,), (2, 2), (7,))
    opt = getattr(ho, name)([{"params": params[:2]}, {"params": params[2:], "lr": 0.01}], **RICH[name])
    for t in range(3):
        set_grads(params, t)
        opt.step()
    set_grads(params, 10)
    last = params[-1]
    if bad == "shape":
        last.grad.data = torch.zeros(8, dtype=last.dtype)  # `.data` bypasses the setter's shape check
    else:
        last.grad.data = last.grad.data.float()
    before = snapshot(opt, params)
    with pytest.raises(RuntimeError):
        opt.step()
    assert_same(snapshot(opt, params), before)


@pytest.mark.parametrize("group", [0, 1])
@pytest.mark.parametrize(
    "name,bad",
    [(n, b) for n in ALGOS for b in ("shape", "dtype", "step", "W_t")
     if (b != "W_t" or n == "TAdam") and (b != "step" or ALGORITHMS[n].cls._counts_steps)],
)
def test_bad_state_of_either_group_changes_nothing(name, bad, group):
    """A state buffer, counter or TAdam weight of either group replaced by one that does not fit:
    the step refuses it before any group is updated (the second group is checked before the
    first is updated; the first group's op checks it before writing)."""
    params = params_((4, 3), (6,), (2, 2), (7,))
    opt = getattr(ho, name)([{"params": params[:2]}, {"params": params[2:], "lr": 0.01}], **RICH[name])
    for t in range(3):
        set_grads(params, t)
        opt.step()
    state = opt.state[params[-1] if group else params[0]]
    key = "momentum_buffer" if name == "LARS" else "exp_avg"
    if bad == "shape":
        state[key] = torch.zeros(8, dtype=state[key].dtype)
    elif bad == "dtype":
        state[key] = state[key].float()
    elif bad == "W_t":
        state["W_t"] = state["W_t"].float()
    else:
        state["step"] = -3
    set_grads(params, 10)
    before = snapshot(opt, params)
    with pytest.raises(RuntimeError):
        opt.step()
    assert_same(snapshot(opt, params), before)


@pytest.mark.parametrize("name", ALGOS)
def test_non_contiguous_params_match_contiguous(name):
    gen = torch.Generator().manual_seed(4)
    base = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    nc = base.clone().t().requires_grad_()  # a non-contiguous leaf
    c = base.t().contiguous().requires_grad_()
    assert not nc.is_contiguous() and c.is_contiguous()
    o_nc, o_c = getattr(ho, name)([nc], **RICH[name]), getattr(ho, name)([c], **RICH[name])
    for _ in range(5):
        g = torch.randn(4, 5, generator=gen, dtype=torch.float64)
        nc.grad = torch.empty(5, 4, dtype=torch.float64).t().copy_(g)  # a non-contiguous gradient too
        c.grad = g.clone()
        o_nc.step()
        o_c.step()
    assert nc.stride() == (1, 4)
    torch.testing.assert_close(nc.detach(), c.detach(), rtol=1e-12, atol=1e-14)
    for key, value in o_c.state[c].items():
        other = o_nc.state[nc][key]
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(other, value, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ALGOS)
def test_step_lr_scheduler_changes_the_lr_used(name):
    runs = []
    for schedule in ("scheduler", "manual", "none"):
        (p,) = params_((4, 3))
        opt = getattr(ho, name)([p], **RICH[name])
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1) if schedule == "scheduler" else None
        for t in range(3):
            set_grads([p], t)
            opt.step()
            if sched is not None:
                sched.step()
            elif schedule == "manual":
                opt.param_groups[0]["lr"] *= 0.1
        runs.append(p.detach().clone())
        if sched is not None:
            assert math.isclose(opt.param_groups[0]["lr"], RICH[name]["lr"] * 1e-3)
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-13, atol=1e-15)
    assert not torch.allclose(runs[0], runs[2], rtol=1e-6, atol=0)


# -- Convergence -------------------------------------------------------------------------------


def rosenbrock(p):
    return (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2


# name: (options, steps, max distance to the minimum (1, 1), max loss)
ROSENBROCK = {name: algorithm.rosenbrock for name, algorithm in ALGORITHMS.items()}


@pytest.mark.parametrize("name", ALGOS)
def test_rosenbrock(name):
    options, steps, max_distance, max_loss = ROSENBROCK[name]
    p = torch.tensor([1.5, 1.5], dtype=torch.float64, requires_grad=True)
    initial = float(rosenbrock(p.detach()))
    opt = getattr(ho, name)([p], **options)
    # Trust-ratio steps have a size set by lr * ||p||: they need a decaying lr to settle.
    sched = None
    if name == "LARS":
        sched = torch.optim.lr_scheduler.StepLR(opt, 200, 0.5)
    elif name in ("LAMB", "RaLars"):
        sched = torch.optim.lr_scheduler.StepLR(opt, 100, 0.5)
    for _ in range(steps):
        opt.zero_grad()
        rosenbrock(p).backward()
        opt.step()
        if sched is not None:
            sched.step()
    final = p.detach()
    assert float(rosenbrock(final)) < min(max_loss, initial / 1000)
    assert float((final - 1).norm()) < max_distance


@pytest.mark.parametrize("name", ALGOS)
def test_zero_grad_and_repr(name):
    (p,) = params_((3,))
    opt = getattr(ho, name)([p])
    p.grad = torch.ones(3, dtype=torch.float64)
    opt.zero_grad()
    assert p.grad is None
    assert name in repr(opt)


_GROUPS_DIFFER = "group 0 of the loaded state dict"


def _holds(key, source):
    return rf"the state of parameter 0 holds '{key}' \(kept by .*{source}.*is it another optimizer's"


@pytest.mark.parametrize("source, target, message", [
    *((s, t, _GROUPS_DIFFER) for s, t in [
        ("AdaBelief", "LARS"), ("AdaBelief", "Adan"), ("AdaBelief", "AdEMAMix"), ("Adan", "AdaBelief"),
        ("Adan", "LAMB"), ("LARS", "TAdam"), ("AdEMAMix", "AdamP"), ("LAMB", "LARS")]),
    # Groups alike (the options older checkpoints lack filled in), states with another's keys.
    *((s, t, _holds(key, s)) for s, t, key in [
        ("LAMB", "AdamP", "local_lr"), ("RaLars", "AdaBelief", "local_lr"), ("TAdam", "AdaBelief", "W_t"),
        ("TAdam", "LAMB", "W_t"), ("AdEMAMix", "Adan", "exp_avg_slow"), ("LAMB", "AdaBelief", "local_lr")]),
])
def test_another_optimizers_checkpoint_is_refused_at_load(source, target, message):
    """Loading another class's state dict used to be accepted, leaving an optimizer whose next
    step failed (a bare KeyError for LARS), or one that went on with another algorithm's state
    (LAMB's `local_lr` left in AdamP's; AdEMAMix's moments taken by Adan, whose step made
    `exp_avg_delta` and `prev_grad` from zeros); the load now refuses it with nothing changed."""
    src_params = params_((4, 3), (5,))
    src = getattr(ho, source)(src_params, lr=0.01, **({"momentum": 0.9} if source == "LARS" else {}))
    set_grads(src_params, 0)
    src.step()
    params = [p.detach().clone().requires_grad_() for p in src_params]
    opt = getattr(ho, target)(params, lr=0.01)
    set_grads(params, 1)
    opt.step()
    before = snapshot(opt, params)
    with pytest.raises(ValueError, match=rf"{target}: {message}"):
        opt.load_state_dict(src.state_dict())
    assert_same(snapshot(opt, params), before)
    opt.step()


def test_a_wrappers_keys_in_its_bases_state_are_not_another_algorithms():
    params = params_((4, 3), (5,))
    opt = ho.Lookahead(ho.LAMB(params, lr=0.01), sync_period=2)
    for seed in range(3):
        set_grads(params, seed)
        opt.step()
    again = ho.Lookahead(ho.LAMB([p.detach().clone().requires_grad_() for p in params], lr=0.01), sync_period=2)
    again.load_state_dict(copy.deepcopy(opt.state_dict()))


NUMBER_OPTIONS = sorted({(name, option.name) for name, algorithm in ALGORITHMS.items()
                         for option in algorithm.cls._options
                         if option.range is not None and option.name != "betas" and not option.setting
                         and not getattr(option.check, "checks_groups", False)})  # those check groups themselves


@pytest.mark.parametrize("name, option", NUMBER_OPTIONS)
@pytest.mark.parametrize("value", ["0.01", True, 1 + 2j, torch.tensor(True), [0.01]],
                         ids=["str", "bool", "complex", "bool-tensor", "list"])
def test_a_group_number_that_is_not_a_number_is_refused_everywhere(name, option, value):
    """Set on a group after construction, added with a group or loaded, a number that is not one
    is refused by name. A string used to pass (the ops take float(value)) until a scheduler failed
    to multiply it; a bool passed for 1."""
    params = params_((4, 3), (5,))
    opt = ALGORITHMS[name].make(params)
    set_grads(params, 0)
    opt.step()
    before = snapshot(opt, params)
    saved = copy.deepcopy(opt.state_dict())
    kept = opt.param_groups[0].get(option)
    opt.param_groups[0][option] = value
    with pytest.raises(TypeError, match=rf"{name}: {option} must be a real number, got"):
        opt.step()
    opt.param_groups[0][option] = kept
    assert_same(snapshot(opt, params), before)
    with pytest.raises(TypeError, match=rf"{name}: {option} must be a real number"):
        opt.add_param_group({"params": params_((2,), seed=1), option: value})
    assert len(opt.param_groups) == 1
    saved["param_groups"][0][option] = value
    with pytest.raises(ValueError, match=rf"{name}: group 0 of the loaded state dict: {option} must be a real number"):
        opt.load_state_dict(saved)
    assert_same(snapshot(opt, params), before)


@pytest.mark.parametrize("name", ALGOS)
def test_add_param_group_refuses_a_tensor_lr_of_two_elements_in_torchs_words(name):
    params = params_((3,))
    opt = getattr(ho, name)(params)
    with pytest.raises(ValueError, match="^Tensor lr must be 1-element$"):
        opt.add_param_group({"params": params_((2,), seed=1), "lr": torch.tensor([0.1, 0.2])})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": params_((2,), seed=1), "lr": torch.tensor(0.1)})


@pytest.mark.parametrize("name, option", [
    (name, option) for name, algorithm in ALGORITHMS.items() for option in ("amsgrad", "nesterov")
    if any(o.name == option for o in algorithm.cls._options)])
def test_switches_refuse_what_is_not_a_bool(name, option):
    """amsgrad and LARS' nesterov took any value (as torch.optim.Adam's amsgrad does) and kept
    it: "yes" was kept as "yes". They are switches like the others now (True, False, 1 or 0)."""
    with pytest.raises(TypeError, match=rf"{option} must be a bool, got 'yes'"):
        ALGORITHMS[name].make(params_((3,)), **{option: "yes"})
    opt = ALGORITHMS[name].make(params_((3,)), **{option: 1})
    assert opt.param_groups[0][option] is True
    opt = ALGORITHMS[name].make(params_((3,)), **{option: None})  # torch.optim takes None as off
    assert opt.param_groups[0][option] is False


@pytest.mark.parametrize("name", ALGOS)
def test_numbers_of_numpy_and_one_element_tensors_are_numbers_everywhere(name):
    """What torch.optim takes as a number, the constructor, a group and a load take too: numpy's
    scalars (a numpy lr was refused by the constructor, while add_param_group took it), integers,
    0-d and one-element tensors; the step equals the one with the float."""
    np = pytest.importorskip("numpy")
    lr = 2.0**-6  # exact in float32 too
    results = []
    for value in (lr, np.float32(lr), np.float64(lr), np.int64(0), torch.tensor(lr), torch.tensor([lr], dtype=torch.float64)):
        params = params_((4, 3), (5,))
        opt = ALGORITHMS[name].make(params, lr=value, weight_decay=np.float64(0.0))
        opt.add_param_group({"params": params_((2,), seed=1), "lr": value, "eps": np.float32(2.0**-20)})
        set_grads(params, 0)
        opt.step()
        opt.load_state_dict(copy.deepcopy(opt.state_dict()))
        opt.step()
        results.append([p.detach().clone() for p in params])
    for value, result in zip(("np.float32", "np.float64", None, "0-d tensor", "1-element tensor"), results[1:]):
        if value is not None:
            assert_same(result, results[0])


def test_a_tadam_w_t_that_is_not_floating_point_is_refused_at_load():
    params = params_((4, 3))
    opt = ho.TAdam(params)
    set_grads(params, 0)
    opt.step()
    for bad in (torch.tensor([True]), torch.tensor([3]), torch.tensor([1 + 1j])):
        saved = copy.deepcopy(opt.state_dict())
        saved["state"][0]["W_t"] = bad
        with pytest.raises(ValueError, match=rf"W_t' of parameter 0 must be a one-element floating-point tensor, got 1 "
                                             rf"elements of {bad.dtype}"):
            opt.load_state_dict(saved)


def test_a_wrong_count_of_betas_names_what_was_given():
    with pytest.raises(ValueError, match=r"Adan requires three beta parameters, got \(0.9,\)"):
        ho.Adan(params_((3,)), betas=(0.9,))


def test_a_subclass_with_its_own_constructor_loads_its_checkpoints():
    """The options a load requires are the class's own group options: a user's subclass taking
    **kwargs (or extra non-option arguments) still loads what it saved."""

    class Tuned(ho.LAMB):
        def __init__(self, params, scale=2.0, **kwargs):
            self.scale = scale
            super().__init__(params, **kwargs)

    params = params_((4, 3), (5,))
    opt = Tuned(params, lr=0.05, weight_decay=0.01)
    set_grads(params, 0)
    opt.step()
    again = Tuned([p.detach().clone().requires_grad_() for p in params], lr=0.05)
    again.load_state_dict(opt.state_dict())
    assert again.param_groups[0]["weight_decay"] == 0.01
