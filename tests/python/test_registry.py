"""The test registry is complete and true to the classes it describes."""

import inspect
import math

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


def _interval(text):
    low, high = (float(x) for x in text[1:-1].split(","))
    return low, text[0] == "[", high, text[-1] == "]"


@pytest.mark.parametrize("name", ALGOS)
def test_declared_ranges_are_what_the_constructor_enforces(name):
    """Each option's declared range (Option.range), probed at and past its bounds."""
    cls = ALGORITHMS[name].cls
    checked = 0
    for option in cls._options:
        if option.range is None:
            continue
        low, low_inclusive, high, high_inclusive = _interval(option.range)
        probes = [((low + high) / 2 if math.isfinite(low + high) else (low + 1 if math.isfinite(low) else 0.5), True)]
        if math.isfinite(low):
            probes += [(low, low_inclusive), (low - 0.5, False)]
        if math.isfinite(high):
            probes += [(high, high_inclusive), (high + 0.5, False)]
        positions = range(len(option.default)) if option.name == "betas" else [None]
        for position in positions:
            for value, accepted in probes:
                if position is None:
                    arg = value
                else:
                    arg = tuple(value if i == position else b for i, b in enumerate(option.default))
                needs = ALGORITHMS[name].needs.get(option.name, {})
                make = lambda: cls([torch.zeros(2, requires_grad=True)], **needs, **{option.name: arg})  # noqa: E731
                if accepted:
                    make()
                else:
                    with pytest.raises(ValueError):
                        make()
                checked += 1
    assert checked
