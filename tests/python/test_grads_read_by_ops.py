"""Steps whose gradients the ops read themselves (grads=None: each parameter's .grad, read in
C++), which the Python classes take once a step found every gradient. A gradient that went
missing since must be found before anything is written and the step taken again as torch.optim
takes it (that parameter skipped): the numbers, counters and state exactly those of an optimizer
that gathers every gradient in Python."""

from __future__ import annotations

import pytest
import torch

from holocron_optim import _base, _distributed
from registry import ALGORITHMS, ALGOS

NO_GRAD_TO_READ = r"grads=None takes each parameter's \.grad"

SHAPES = ((3, 4), (5,), (2, 3, 2), (7,))


@pytest.fixture(autouse=True)
def _no_flat_partitions(monkeypatch):
    """As in a process that never made a DeepSpeed flat partition (an earlier test may have: then
    every step gathers the gradients in Python, which could hold such pieces)."""
    monkeypatch.setattr(_distributed, "flat_layouts_exist", False)


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=g, dtype=torch.float64)) for shape in SHAPES]


def _groups(params: list[torch.Tensor]) -> list[dict]:
    return [{"params": params[:2]}, {"params": params[2:], "lr": 3e-3}]


def _set_grads(params: list[torch.Tensor], step: int, missing: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(100 + step)
    for index, p in enumerate(params):
        grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
        p.grad = None if index in missing else grad


def _reads_and_twin(name: str):
    """An optimizer whose ops read the gradients (with a record of each group's choice), and its
    twin over equal parameters, which gathers them in Python at every step."""
    algorithm = ALGORITHMS[name]
    ours, plain = _params(), _params()
    opt = algorithm.make(_groups(ours), lr=1e-2)
    twin = algorithm.make(_groups(plain), lr=1e-2)
    twin._ops_can_read_grads = lambda group, params: False
    read_by_ops = []
    can_read = opt._ops_can_read_grads

    def recorded(group, params):
        read_by_ops.append(can_read(group, params))
        return read_by_ops[-1]

    opt._ops_can_read_grads = recorded
    return ours, opt, plain, twin, read_by_ops


def _assert_same(ours, opt, plain, twin) -> None:
    for a, b in zip(ours, plain):
        assert torch.equal(a, b)
        assert opt.state[a].keys() == twin.state[b].keys() if b in twin.state else a not in opt.state
        for key, value in opt.state.get(a, {}).items():
            other = twin.state[b][key]
            assert type(value) is type(other), key
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other, key


# Which parameters lack a gradient at each step: a first step with all (after which the ops read
# them), one missing from the first group (its op finds it), from the second (validate_group
# finds it before the first group is updated), all again, all missing (zero_grad, no backward).
PATTERN = ((), (), (1,), (), (2,), (3,), (), (0, 1, 2, 3), (), ())


@pytest.mark.parametrize("name", ALGOS)
def test_gradients_read_by_the_ops_give_what_gathered_ones_give(name, monkeypatch):
    # Every step after one that found every gradient is an attempt (none gather after a miss).
    monkeypatch.setattr(_base, "_GATHERING_STEPS_AFTER_A_MISS", 0)
    ours, opt, plain, twin, read_by_ops = _reads_and_twin(name)
    for step, missing in enumerate(PATTERN):
        _set_grads(ours, step, missing), _set_grads(plain, step, missing)
        read_by_ops.clear()
        opt.step(), twin.step()
        _assert_same(ours, opt, plain, twin)
        # After a step that found every gradient, the ops are handed none.
        assert bool(read_by_ops) == (step > 0 and not PATTERN[step - 1])
        if read_by_ops:
            assert read_by_ops[:2] == [True, True]
        assert opt._every_grad_was_there == (not missing)
    if "step" in opt.state[ours[0]]:
        assert [int(opt.state[p]["step"]) for p in ours] == [
            sum(i not in missing for missing in PATTERN) for i in range(len(ours))]


@pytest.mark.parametrize("edit", ["buffer of another shape", "counter below zero"])
@pytest.mark.parametrize("name", ALGOS)
def test_a_parameter_whose_gradient_went_missing_is_not_checked(name, edit):
    """torch.optim skips a parameter without a gradient, state and all: a state the step would
    refuse (edited, or kept in a form its group no longer keeps) is not read either."""
    ours, opt, plain, twin, _ = _reads_and_twin(name)
    for step in range(3):
        _set_grads(ours, step, ()), _set_grads(plain, step, ())
        opt.step(), twin.step()
    for o, params in ((opt, ours), (twin, plain)):
        state = o.state[params[1]]
        if edit == "counter below zero":
            if "step" not in state:
                pytest.skip("keeps no counter")
            state["step"] = -1
        else:
            key = o._state_keys(o.param_groups[0])[0]
            state[key] = torch.zeros(3, dtype=state[key].dtype)
    for step in range(3, 6):
        _set_grads(ours, step, (1,)), _set_grads(plain, step, (1,))
        opt.step(), twin.step()
        _assert_same(ours, opt, plain, twin)


@pytest.mark.parametrize("name", ["LARS", "AdaBelief"])
def test_gradients_missing_every_other_step_cost_an_attempt_in_seventeen(name):
    ours, opt, plain, twin, _ = _reads_and_twin(name)
    attempts = []
    step_groups = opt._step_groups_reading_grads

    def recorded(in_ops):
        try:
            step_groups(in_ops)
        except Exception:
            attempts.append("refused")
            raise
        attempts.append("in ops" if in_ops else "gathered")

    opt._step_groups_reading_grads = recorded
    for step in range(40):
        missing = (1,) if step % 2 else ()
        _set_grads(ours, step, missing), _set_grads(plain, step, missing)
        opt.step(), twin.step()
    _assert_same(ours, opt, plain, twin)
    # Steps 1, 19 and 37 find gradient 1 missing (after steps that found all), each taken again.
    assert attempts.count("refused") == 3
    assert attempts.count("in ops") == 0
    assert attempts.count("gathered") == 40


@pytest.mark.parametrize("group_missing", [0, 1])
@pytest.mark.parametrize("name", ALGOS)
def test_a_missing_gradient_is_refused_before_anything_is_written(name, group_missing):
    """What the step takes again rests on: the op (first group) or validate_group (a later
    group, before the first is updated) refuses the missing gradient with nothing written."""
    ours, opt, _, _, _ = _reads_and_twin(name)
    for step in range(3):
        _set_grads(ours, step, ())
        opt.step()
    _set_grads(ours, 3, (1,) if group_missing == 0 else (3,))
    before = [p.detach().clone() for p in ours]
    state_before = {id(p): {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in opt.state[p].items()}
                    for p in ours}
    with pytest.raises(RuntimeError, match=NO_GRAD_TO_READ):
        opt._step_groups_reading_grads(in_ops=True)
    for p, old in zip(ours, before):
        assert torch.equal(p, old)
        assert opt.state[p].keys() == state_before[id(p)].keys()
        for key, value in opt.state[p].items():
            old_value = state_before[id(p)][key]
            assert torch.equal(value, old_value) if isinstance(value, torch.Tensor) else value == old_value, key


def test_the_ops_do_not_read_gradients_that_clipping_or_dtensors_need():
    """Global clipping takes its norm over the gradients before the update: its groups gather
    them in Python (as do groups of DTensors, whose gradients are reshaped)."""
    params = _params()
    opt = ALGORITHMS["LAMB"].make(_groups(params), lr=1e-2, max_grad_norm=1.0)
    for step in range(2):
        _set_grads(params, step, ())
        opt.step()
    assert not any(opt._ops_can_read_grads(group, group["params"]) for group in opt.param_groups)
    opt.param_groups[1]["max_grad_norm"] = None
    assert [opt._ops_can_read_grads(group, group["params"]) for group in opt.param_groups] == [False, True]


@torch.no_grad()
def test_an_op_handed_no_gradients_reads_each_parameters_own():
    """The op itself: grads=None is each parameter's .grad; one without any is named."""
    from holocron_optim._library import ops

    params = _params()
    _set_grads(params, 0, ())
    twins = [p.detach().clone() for p in params]
    grads = [p.grad.clone() for p in params]
    kwargs = dict(lr=0.1, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, scale_clip=(),
                  trust_coeff=1.0, eps=1e-8, trust_clip=False, always_adapt=False, trust_on_gradient=False)
    ops.lars_(params, None, momentum_buffers=[], buffer_is_new=[], **kwargs)
    ops.lars_(twins, grads, momentum_buffers=[], buffer_is_new=[], **kwargs)
    for a, b in zip(params, twins):
        assert torch.equal(a, b)
    params[2].grad = None
    before = [p.detach().clone() for p in params]
    with pytest.raises(RuntimeError, match=r"LARS: grads=None takes each parameter's \.grad, and params\[2\] has none"):
        ops.lars_(params, None, momentum_buffers=[], buffer_is_new=[], **kwargs)
    for a, b in zip(params, before):
        assert torch.equal(a, b)
