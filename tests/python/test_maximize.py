"""torch.optim's `maximize` on every algorithm: ascending on g gives the bits of descending on -g
(every read of the gradient is negated: whole-tensor sums, stored previous gradients and the
global clipping norm included), on both backends and every dtype; p.grad is not written."""

from __future__ import annotations

import copy

import pytest
import torch

from registry import ALGORITHMS

OPS = torch.ops.holocron
NAMES = list(ALGORITHMS)
SHAPES = [(6, 5), (7,), (1,), (2, 3, 4)]


@pytest.fixture
def capability():
    saved = OPS.cpu_capability()
    yield OPS.set_cpu_capability
    OPS.set_cpu_capability(saved)


def _run(name: str, options: dict, dtype: torch.dtype, negate: bool, maximize: bool):
    gen = torch.Generator().manual_seed(3)
    params = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype).requires_grad_() for s in SHAPES]
    options = {"lr": 0.01 * ALGORITHMS[name].lr_scale, **options, "maximize": maximize}
    opt = ALGORITHMS[name].make(params, **options)
    # Seven steps: RAdam's rectification (AdaBelief's rectify) steps from the 6th at the earliest.
    for _ in range(7):
        for p in params:
            g = (torch.randn(p.shape, generator=gen, dtype=torch.float64) + 0.3 * p.detach().double()).to(dtype)
            p.grad = -g if negate else g
        grads = [p.grad.clone() for p in params]
        opt.step()
        assert all(torch.equal(p.grad, g) for p, g in zip(params, grads))
    return [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict()["state"])


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_maximize_descends_the_negated_gradient(capability, name, dtype, backend):
    capability(backend)
    for options in (ALGORITHMS[name].typical, *ALGORITHMS[name].variants[-1:]):
        ascend = _run(name, options, dtype, negate=False, maximize=True)
        descend = _run(name, options, dtype, negate=True, maximize=False)
        for a, b in zip(ascend[0], descend[0]):
            assert torch.equal(a, b), options
        if dtype != torch.bfloat16:  # where a few steps may round to no change at all
            plain = _run(name, options, dtype, negate=False, maximize=False)
            assert not all(torch.equal(a, b) for a, b in zip(ascend[0], plain[0])), options


@pytest.mark.parametrize("name", NAMES)
def test_maximize_is_a_checked_group_option_that_old_checkpoints_lack(name):
    p = torch.nn.Parameter(torch.randn(3, 2))
    cls = ALGORITHMS[name].cls
    with pytest.raises(TypeError, match=f"{name}: maximize must be a bool, got 'yes'"):
        cls([p], maximize="yes")
    opt = cls([p])
    with pytest.raises(TypeError, match="maximize must be a bool"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.randn(2))], "maximize": "yes"})
    assert len(opt.param_groups) == 1
    p.grad = torch.randn(3, 2)
    opt.step()
    old = copy.deepcopy(opt.state_dict())
    del old["param_groups"][0]["maximize"]
    fresh = cls([p], maximize=True)
    fresh.load_state_dict(old)
    assert fresh.param_groups[0]["maximize"] is False
