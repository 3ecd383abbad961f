"""The C++ references the Python classes keep to their state buffers (TensorPins,
FusedStep._pin): they make passing the buffers to an op cheap, and must change
nothing else: not the numbers, not what a load frees, not what the garbage
collector can collect."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from registry import ALGORITHMS, ALGOS


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=g)) for shape in ((3, 4), (5,), (2, 3, 2))]


def _set_grads(params: list[torch.Tensor], step: int) -> None:
    g = torch.Generator().manual_seed(100 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)


def _buffers(opt) -> list[torch.Tensor]:
    """The state entries pinned: the per-element buffers and TAdam's W_t (not LAMB's local_lr,
    which its ratio targets hold)."""
    keys = opt._pinned_keys(opt.param_groups[0])
    return [v for state in opt.state.values() for k, v in state.items() if k in keys]


def _pinned_and_twin(name: str):
    """An optimizer over some parameters, and its twin over equal ones, which pins nothing (and
    so walks every state at every step)."""
    algorithm = ALGORITHMS[name]
    pinned, plain = _params(), _params()
    opt = algorithm.make(pinned, lr=1e-2)
    twin = algorithm.make(plain, lr=1e-2)
    twin._pin = lambda *args: None
    return pinned, opt, plain, twin


@pytest.mark.parametrize("name", ALGOS)
def test_buffers_are_pinned_and_repinned_when_replaced(name):
    pinned, opt, plain, twin = _pinned_and_twin(name)
    for step in range(3):
        _set_grads(pinned, step), _set_grads(plain, step)
        opt.step(), twin.step()
    (held,) = opt._pinned.values()
    assert len(held.pins) == len(_buffers(opt)) > 0
    assert {id(t) for values in held.lists for t in values} == {id(t) for t in _buffers(opt)}
    del held

    # A buffer replaced by the user is pinned at the next step; the old one is let go.
    state = opt.state[pinned[0]]
    key = opt._state_keys(opt.param_groups[0])[0]
    old = weakref.ref(state[key])
    state[key] = state[key].clone()
    twin.state[plain[0]][key] = twin.state[plain[0]][key].clone()
    for step in range(3, 5):
        _set_grads(pinned, step), _set_grads(plain, step)
        opt.step(), twin.step()
    assert any(t is state[key] for values in opt._pinned[id(opt.param_groups[0])].lists for t in values)
    gc.collect()
    assert old() is None
    for a, b in zip(pinned, plain):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ALGOS)
def test_a_load_lets_the_old_buffers_go(name):
    algorithm = ALGORITHMS[name]
    params = _params()
    opt = algorithm.make(params, lr=1e-2)
    _set_grads(params, 0)
    opt.step()
    saved = {k: v for k, v in opt.state_dict().items()}
    saved = {"state": {i: {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in s.items()}
                       for i, s in saved["state"].items()},
             "param_groups": saved["param_groups"]}
    old = [weakref.ref(t) for t in _buffers(opt)]
    assert old
    opt.load_state_dict(saved)
    gc.collect()
    assert all(ref() is None for ref in old)


@pytest.mark.parametrize("name", ALGOS)
def test_parameters_that_reference_their_optimizer_are_collected(name):
    """Each parameter with an optimizer of its own, which it references (as an attribute
    here; a post-accumulate-grad hook that steps it makes the same cycle, which torch 2.13
    itself never collects, for torch.optim.Adam too). Were parameters pinned, the cycle
    would pass through C++, out of the collector's sight, and never be collected."""
    algorithm = ALGORITHMS[name]

    def train() -> list[weakref.ref]:
        model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 1))
        for p in model.parameters():
            p.optimizer = algorithm.make([p], lr=1e-2)
        for _ in range(2):
            model(torch.randn(8, 4)).square().mean().backward()
            for p in model.parameters():
                p.optimizer.step()
        refs = [weakref.ref(p) for p in model.parameters()]
        refs += [weakref.ref(p.optimizer) for p in model.parameters()]
        refs += [weakref.ref(t) for p in model.parameters() for t in _buffers(p.optimizer)]
        return refs

    refs = train()
    gc.collect()
    assert all(ref() is None for ref in refs), sum(ref() is not None for ref in refs)


@pytest.mark.parametrize("name", ALGOS)
def test_a_removed_group_lets_its_buffers_go(name):
    algorithm = ALGORITHMS[name]
    kept, removed = _params(0), _params(1)
    opt = algorithm.make([{"params": kept}, {"params": removed}], lr=1e-2)
    for step in range(2):
        _set_grads(kept + removed, step)
        opt.step()
    refs = [weakref.ref(v) for p in removed for v in opt.state[p].values() if isinstance(v, torch.Tensor)]
    assert refs
    opt.param_groups.pop()
    for p in removed:
        del opt.state[p]
    _set_grads(kept, 2)
    opt.step()
    gc.collect()
    assert all(ref() is None for ref in refs)


@pytest.mark.parametrize("name", ALGOS)
def test_a_failed_first_step_pins_nothing(name):
    """The buffers a failed step made are taken back; nothing may keep them alive."""
    algorithm = ALGORITHMS[name]
    params = _params()
    opt = algorithm.make(params, lr=1e-2)
    _set_grads(params, 0)
    params[-1].grad = params[-1].grad.to_sparse()  # refused before any write
    with pytest.raises((RuntimeError, ValueError)):
        opt.step()
    assert not opt.__dict__.get("_pinned")
    assert not any(opt.state.values())


def _edit(opt, params, edit: str) -> None:
    """One change a user may make to the state between steps."""
    key = opt._state_keys(opt.param_groups[0])[0]
    state = opt.state[params[1]]
    if edit == "buffer replaced":
        state[key] = state[key] * 2 + 1
    elif edit == "buffer removed":
        del state[key]
    elif edit == "one counter behind" and "step" in state:
        state["step"] -= 1
    elif edit == "one tensor counter" and "step" in state:
        state["step"] = torch.tensor(float(state["step"]))
    elif edit == "every counter a tensor":
        for p in params:
            if "step" in opt.state[p]:
                opt.state[p]["step"] = torch.tensor(float(opt.state[p]["step"]))


@pytest.mark.parametrize("edit", ["buffer replaced", "buffer removed", "one counter behind",
                                  "one tensor counter", "every counter a tensor"])
@pytest.mark.parametrize("name", ALGOS)
def test_a_step_reads_the_state_as_edited_since_the_last(name, edit):
    """Past the first steps, a step hands its op the lists pinned after the last (and a shared
    counter is advanced once): an edit of the state between steps must be read as it is,
    exactly as by an optimizer that pins nothing and walks every state."""
    pinned, opt, plain, twin = _pinned_and_twin(name)
    for step in range(6):
        if step == 3:
            _edit(opt, pinned, edit), _edit(twin, plain, edit)
        _set_grads(pinned, step), _set_grads(plain, step)
        opt.step(), twin.step()
    for a, b in zip(pinned, plain):
        assert torch.equal(a, b)
    # The twin shares the counters' code: they are checked against what they must be.
    if "step" in opt.state[pinned[0]]:
        behind = 1 if edit == "one counter behind" else 0
        assert [int(opt.state[p]["step"]) for p in pinned] == [6, 6 - behind, 6]
        # A tensor counter (torch.optim.Adam's load makes them) is advanced in place.
        assert isinstance(opt.state[pinned[1]]["step"], torch.Tensor) == ("tensor" in edit)
    for a, b in zip(pinned, plain):
        assert opt.state[a].keys() == twin.state[b].keys()
        for key, value in opt.state[a].items():
            other = twin.state[b][key]
            assert type(value) is type(other), key
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other, key


@pytest.mark.parametrize("name", ALGOS)
def test_the_op_takes_the_pinned_lists_from_the_pins(name, monkeypatch):
    """Past the first steps the op is handed the pins themselves (`pinned_state`) for every
    state list each state holds, not lists converted tensor by tensor from Python."""
    from holocron_optim import _distributed

    calls = []
    with_pins = _distributed._with_pins

    def spy(op, kwargs):
        out = with_pins(op, kwargs)
        calls.append(out)
        return out

    pinned, opt, plain, twin = _pinned_and_twin(name)
    for step in range(4):
        _set_grads(plain, step)
        twin.step()
    monkeypatch.setattr(_distributed, "_with_pins", spy)
    for step in range(4):
        _set_grads(pinned, step)
        opt.step()
    handed = [call for call in calls if "pinned_state" in call]
    assert len(handed) >= 2  # every step but the first, which pins
    keys = opt._pinned_keys(opt.param_groups[0])  # TAdam's W_t too
    assert len(handed[-1]["pinned_lists"]) == len(keys) > 0
    assert handed[-1]["pinned_state"] is opt._pinned[id(opt.param_groups[0])].pins
    assert all(handed[-1][list_name] == [] for list_name in handed[-1]["pinned_lists"])
    assert sorted(handed[-1]["pinned_at"]) == [k * len(pinned) for k in range(len(keys))]
    for a, b in zip(pinned, plain):
        assert torch.equal(a, b)


def _set_grads_of(params: list[torch.Tensor], step: int, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(100 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g).to(dtype)


@pytest.mark.parametrize("precision", ["param", "float32", "bfloat16"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ALGOS)
def test_parameters_converted_in_place_are_taken_as_by_a_step_that_walks_them(name, dtype, precision):
    """Past the first steps a step walks no parameter's dtype: parameters converted in place
    since (Module.to) leave a "param" group's pinned buffers of the old dtype, which its op then
    refuses (`state_as_param`) with the error the walk would give, writing nothing; under a
    float32 or bfloat16 precision the buffers still fit and the step goes on as the twin's (TAdam's
    W_t keeps the parameter's dtype whatever the precision: both refuse it)."""
    algorithm = ALGORITHMS[name]
    pinned, plain = _params(), _params()
    opt = algorithm.make(pinned, lr=1e-2, state_precision=precision)
    twin = algorithm.make(plain, lr=1e-2, state_precision=precision)
    twin._pin = lambda *args: None
    for step in range(3):
        _set_grads(pinned, step), _set_grads(plain, step)
        opt.step(), twin.step()
    for params in (pinned, plain):
        for p in params:
            p.data = p.data.to(dtype)
        _set_grads_of(params, 3, dtype)
    before = [p.clone() for p in pinned]
    errors = []
    for o in (twin, opt):
        try:
            o.step()
            errors.append(None)
        except RuntimeError as error:
            errors.append(str(error).splitlines()[0])
    twin_error, error = errors
    assert (error is None) == (twin_error is None), (error, twin_error)
    assert (error is not None) == (precision == "param" or name == "TAdam")
    if error is not None:
        assert all(torch.equal(a, b) for a, b in zip(pinned, before))
        assert {torch.float64: "double", torch.bfloat16: "bfloat16", torch.float16: "half"}[dtype] in error.lower()
        if name == "TAdam":
            # Its op reads W_t before the buffers, in its own words; the twin checks W_t in Python,
            # after validate_group's check of the buffers.
            assert "W_t" in error
            assert ("state_precision ('param')" if precision == "param" else "W_t") in twin_error
        else:
            assert error == twin_error
        return
    for step in range(4, 6):
        opt.step(), twin.step()
        _set_grads_of(pinned, step, dtype), _set_grads_of(plain, step, dtype)
    for a, b in zip(pinned, plain):
        assert a.dtype == dtype and torch.equal(a, b)
        # LAMB's and RaLars' trust ratios, pinned too: the same tensors of the same dtype as the
        # twin's (which keep the dtype their parameters had when they were made).
        if "local_lr" in twin.state[b]:
            ratio, twin_ratio = opt.state[a]["local_lr"], twin.state[b]["local_lr"]
            assert ratio.dtype == twin_ratio.dtype and torch.equal(ratio, twin_ratio)
