"""Checks in the style of the optimizer suites of PyTorch and timm: a
weight/bias problem through several constructions (plain, non-contiguous,
param groups, schedulers incl. ReduceLROnPlateau), state_dict round trips
with equal-but-not-identical parameters, and repeated groups."""

from copy import deepcopy

import pytest
import torch
from torch.testing._internal.common_utils import TestCase

import holocron_optim as H
from registry import ALGORITHMS

FACTORIES = {
    **{name: algorithm.make_like_others for name, algorithm in ALGORITHMS.items()},
    "Lookahead(AdaBelief)": lambda params, lr: H.Lookahead(H.AdaBelief(params, lr=lr), sync_period=3),
    "Scout(Adan)": lambda params, lr: H.Scout(H.Adan(params, lr=lr), sync_period=3),
}
LR = 1e-2


def _loss(weight, bias, inputs):
    return (weight.mv(inputs) + bias).pow(2).sum()


def _train(make, weight, bias, steps=40, scheduler=None):
    inputs = torch.randn(5, generator=torch.Generator().manual_seed(7), dtype=weight.dtype)
    opt = make(weight, bias)
    sched = scheduler(opt) if scheduler else None

    def closure():
        opt.zero_grad()
        loss = _loss(weight, bias, inputs)
        loss.backward()
        return loss

    initial = closure().item()
    for _ in range(steps):
        loss = opt.step(closure)
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            sched.step(loss.item())
        elif sched is not None:
            sched.step()
    return initial, closure().item()


def _weights(contiguous=True, dtype=torch.float64):
    torch.manual_seed(0)
    weight = torch.randn(10, 5, dtype=dtype)
    bias = torch.randn(10, dtype=dtype)
    if not contiguous:  # the same values, every other element of a larger buffer
        weight = torch.zeros(10, 5, 2, dtype=dtype)[..., 0].copy_(weight)
        bias = torch.zeros(10, 2, dtype=dtype)[..., 0].copy_(bias)
        assert not weight.is_contiguous() and not bias.is_contiguous()
    return weight.requires_grad_(), bias.requires_grad_()


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize(
    "scheduler",
    [
        None,
        lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5),
        lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=2),
    ],
    ids=["none", "steplr", "plateau"],
)
def test_basic_cases_decrease_the_loss(name, scheduler):
    make = FACTORIES[name]
    for contiguous in (True, False):
        weight, bias = _weights(contiguous)
        initial, final = _train(lambda w, b: make([w, b], LR), weight, bias, scheduler=scheduler)
        assert final < initial, (name, contiguous)
    # Param groups: a second group with its own lr.
    weight, bias = _weights()
    initial, final = _train(lambda w, b: make([{"params": [w]}, {"params": [b], "lr": 3e-3}], LR), weight, bias)
    assert final < initial


def test_non_contiguous_equals_contiguous_through_wrappers():
    for name in ("Lookahead(AdaBelief)", "Scout(Adan)", "LAMB"):
        a = _weights(True)
        b = _weights(False)
        _train(lambda w, bb: FACTORIES[name]([w, bb], LR), *a)
        _train(lambda w, bb: FACTORIES[name]([w, bb], LR), *b)
        # ATen's strided loops may round differently from its vectorized ones.
        torch.testing.assert_close(a[0], b[0], rtol=1e-12, atol=1e-14, msg=name)
        torch.testing.assert_close(a[1], b[1], rtol=1e-12, atol=1e-14, msg=name)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_state_dict_round_trip_with_equal_but_not_identical_params(name):
    make = FACTORIES[name]
    inputs = torch.randn(5, dtype=torch.float64)
    weight, bias = _weights()
    opt = make([weight, bias], LR)

    def closure(w, b, o):
        o.zero_grad()
        loss = _loss(w, b, inputs)
        loss.backward()
        return loss

    for _ in range(7):
        opt.step(lambda: closure(weight, bias, opt))
    weight_c = weight.detach().clone().requires_grad_()
    bias_c = bias.detach().clone().requires_grad_()
    opt_c = make([weight_c, bias_c], LR)
    state_dict = deepcopy(opt.state_dict())
    state_dict_c = deepcopy(opt.state_dict())
    opt_c.load_state_dict(state_dict_c)
    # Loading did not modify its input. torch's and timm's suites compare with TestCase.assertEqual,
    # which also takes the groups' strings (state_precision; torch.testing.assert_close does not).
    TestCase().assertEqual(state_dict, state_dict_c)
    for _ in range(5):
        opt.step(lambda: closure(weight, bias, opt))
        opt_c.step(lambda: closure(weight_c, bias_c, opt_c))
        assert torch.equal(weight, weight_c) and torch.equal(bias, bias_c), name
    TestCase().assertEqual(opt.state_dict(), opt_c.state_dict())


@pytest.mark.parametrize("name", ["LAMB", "TAdam", "AdamP", "LARS"])
def test_repeated_groups_have_identical_representation(name):
    weight, bias = _weights()
    opt = FACTORIES[name]([weight, bias], LR)
    opt_c = FACTORIES[name]([weight, bias], LR)
    opt_c.param_groups.extend(opt_c.param_groups)
    assert opt.state_dict()["param_groups"][-1] == opt_c.state_dict()["param_groups"][-1]
