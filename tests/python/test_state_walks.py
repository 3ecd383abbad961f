"""The library's walks over the Python classes' state dicts (src/python_walks.cpp, through
`_library.walks`): the checks and stores a step makes on every parameter's state, in C. They
must answer as the Python walks they replace do, fall back to them wherever they cannot answer,
and change nothing a step computes."""

from __future__ import annotations

import types
from collections import UserDict

import pytest
import torch

from holocron_optim import _base, _library
from _harness import assert_same
from registry import ALGORITHMS, ALGOS

walks = _library.walks


def test_the_walks_are_there_in_cpython():
    # Were the interpreter's functions left unresolved, every step would fall back to Python.
    assert walks is not None
    assert walks.holocron_walks_ready() == 1


def _states(n: int = 40) -> tuple[list[dict], list[torch.Tensor]]:
    buffers = [torch.zeros(3) for _ in range(n)]
    return [{"exp_avg": b, "step": 7} for b in buffers], buffers


def test_entries_are_holds_only_for_the_very_objects():
    states, buffers = _states()
    assert walks.holocron_entries_are(states, "exp_avg", buffers) == 1
    assert walks.holocron_entries_are([], "exp_avg", []) == 1
    # An equal tensor is not the same buffer (a comparison by == would take it for one).
    states[25]["exp_avg"] = buffers[25].clone()
    assert walks.holocron_entries_are(states, "exp_avg", buffers) == 0
    states[25]["exp_avg"] = buffers[25]
    del states[39]["exp_avg"]
    assert walks.holocron_entries_are(states, "exp_avg", buffers) == 0
    states[39]["exp_avg"] = buffers[39]
    assert walks.holocron_entries_are(states, "exp_avg", buffers[:-1]) == 0
    assert walks.holocron_entries_are(states[:-1], "exp_avg", buffers) == 0
    # A state that is not a dict (a mapping of another type) is not answered for: the caller walks.
    states[3] = UserDict(states[3])
    assert walks.holocron_entries_are(states, "exp_avg", buffers) == 0
    states[3] = types.MappingProxyType({"exp_avg": buffers[3]})
    assert walks.holocron_entries_are(states, "exp_avg", buffers) == 0


def test_entries_all_holds_only_for_one_object():
    states, _ = _states()
    shared = states[0]["step"]
    assert walks.holocron_entries_all(states, "step", shared) == 1
    states[30]["step"] = 2**40  # an int object of its own
    assert walks.holocron_entries_all(states, "step", 2**40) == 0
    assert walks.holocron_entries_all(states, "step", shared) == 0
    del states[30]["step"]
    assert walks.holocron_entries_all(states, "step", shared) == 0

    # A dict subclass may answer otherwise than its storage: not answered for (the caller walks).
    class Doubling(dict):
        def __getitem__(self, key):
            return 2 * super().__getitem__(key)

    states, _ = _states()
    states[12] = Doubling(states[12])
    assert walks.holocron_entries_all(states, "step", states[0]["step"]) == 0


def test_set_entries_stores_in_order_and_raises_as_python_would():
    states, _ = _states()
    states[5] = UserDict(states[5])  # any mapping that takes item assignment
    value = 2**40
    walks.holocron_set_entries(states, "step", value)
    assert all(s["step"] is value for s in states)
    states[10] = types.MappingProxyType(dict(states[10]))
    with pytest.raises(TypeError):
        walks.holocron_set_entries(states, "step", 3)
    # Those before the failing one are stored, as the loop in Python stores them.
    assert all(s["step"] == 3 for s in states[:10]) and all(s["step"] is value for s in states[11:])


def _params(seed: int, count: int = 37) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(1 + i % 5, 3, generator=g)) for i in range(count)]


@pytest.mark.parametrize("name", ALGOS)
def test_steps_with_and_without_the_walks_are_identical(name, monkeypatch):
    """Twins stepped in turns, one with the walks and one without, through what makes the walks
    answer no: a buffer replaced by an equal copy, a counter set to an int of its own, and a load."""
    algorithm = ALGORITHMS[name]
    with_walks, without = _params(0), _params(0)
    fast = algorithm.make(with_walks, lr=1e-2)
    slow = algorithm.make(without, lr=1e-2)

    def step(k: int) -> None:
        g = torch.Generator().manual_seed(100 + k)
        for a, b in zip(with_walks, without):
            a.grad = torch.randn(a.shape, generator=g)
            b.grad = a.grad.clone()
        fast.step()
        monkeypatch.setattr(_base, "walks", None)
        slow.step()
        monkeypatch.setattr(_base, "walks", walks)

    for k in range(3):
        step(k)
    keys = fast._state_keys(fast.param_groups[0])
    for opt, params in ((fast, with_walks), (slow, without)):
        state = opt.state[params[20]]
        if keys:
            state[keys[0]] = state[keys[0]].clone()
        if "step" in state:
            state["step"] += 1000  # its own count, in an int object of its own
    for k in range(3, 6):
        step(k)
    slow.load_state_dict(slow.state_dict())
    fast.load_state_dict(fast.state_dict())
    for k in range(6, 8):
        step(k)
    for a, b in zip(with_walks, without):
        assert_same(a, b)
        assert_same(fast.state[a], slow.state[b])
