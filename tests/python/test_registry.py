"""The test registry is complete and true to the classes it describes."""

import inspect

import pytest
import torch

import holocron_optim as ho
from registry import ALGORITHMS, ALGOS, WRAPPERS


def test_every_public_class_has_an_entry():
    assert set(ALGORITHMS) | set(WRAPPERS) == set(ho.__all__)
    assert ALGOS == tuple(name for name in ho.__all__ if name in ALGORITHMS)


@pytest.mark.parametrize("name", ALGOS)
def test_entry_matches_its_class(name):
    algorithm = ALGORITHMS[name]
    signature = inspect.signature(algorithm.cls.__init__).parameters
    assert ("betas" in signature) == bool(algorithm.betas)
    if algorithm.betas:
        assert len(signature["betas"].default) == algorithm.betas
    assert ("eps" in signature) == algorithm.eps
    for options in (algorithm.full, algorithm.typical, *algorithm.variants, algorithm.rosenbrock[0]):
        assert set(options) <= set(signature), options
    assert set(algorithm.full) == set(signature) - {"self", "params"} - ({"scale_clip"} if name == "LARS" else set())
    assert set(algorithm.settings) == set(algorithm.cls._settings)


@pytest.mark.parametrize("name", ALGOS)
def test_full_options_make_every_state_key(name):
    algorithm = ALGORITHMS[name]
    p = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    opt = algorithm.cls([p], **algorithm.full)
    for _ in range(2):
        p.grad = torch.randn_like(p)
        opt.step()
    assert set(opt.state[p]) == algorithm.state_keys


@pytest.mark.parametrize("name", ALGOS)
def test_variants_differ_and_are_accepted(name):
    variants = ALGORITHMS[name].variants
    assert len({repr(sorted(v.items())) for v in variants}) == len(variants)
    for options in variants:
        ALGORITHMS[name].cls([torch.zeros(2, requires_grad=True)], **options)
