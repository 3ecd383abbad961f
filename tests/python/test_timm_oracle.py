"""The options that follow timm (1.0.31) and apex, against timm's own optimizers: timm is installed
with --no-deps as a test oracle and its timm/optim modules are loaded file by file (its package
__init__ pulls torchvision). Randomized shapes, options and groups over 25 steps, float64 to 1e-9
and float32 to 1e-4, on both backends and on the C++ front."""

from __future__ import annotations

import copy
import importlib
import importlib.util
import math
import random
import subprocess
import sys
import types
from pathlib import Path
from typing import Any, Callable, NamedTuple

import pytest
import torch

import holocron_optim as ho
from _harness import assert_close_to_oracle
from conftest import BUILD_DIR


STEPS = 25
RUNNER = BUILD_DIR / "tests" / "cpp" / "holocron_parity_runner"
# What LAMB's options are called in timm, where ours differ: none (same names).
LAMB_FLAGS = ("bias_correction", "grad_averaging", "trust_clip", "always_adapt", "decoupled_decay", "caution")
# timm's names of ours, where they differ.
OUR_NAMES = {"decoupled_decay": "decoupled_weight_decay"}


@pytest.fixture(scope="module")
def timm_optim():
    """timm/optim as a package of its own name, whose modules import each other relatively."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("timm is not installed (make test installs it)")
    package = types.ModuleType("_timm_optim_oracle")
    package.__path__ = [str(Path(next(iter(spec.submodule_search_locations))) / "optim")]
    sys.modules[package.__name__] = package
    try:
        yield types.SimpleNamespace(**{name: importlib.import_module(f"{package.__name__}.{name}")
                                       for name in ("lamb", "lars", "adan", "adabelief", "adamp")})
    finally:
        for name in [k for k in sys.modules if k == package.__name__ or k.startswith(package.__name__ + ".")]:
            del sys.modules[name]


def _random_lamb_case(seed: int) -> tuple[list[tuple[int, ...]], dict, list[dict]]:
    """Shapes, timm's Lamb options (every switch drawn) and per-group overrides."""
    rng = random.Random(seed)
    shapes = [tuple(rng.randint(1, 6) for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(2, 5))]
    options = {
        "lr": rng.choice([1e-3, 1e-2, 5e-2]),
        "betas": rng.choice([(0.9, 0.999), (0.8, 0.99), (0.5, 0.9)]),
        "eps": rng.choice([1e-6, 1e-8]),
        "weight_decay": rng.choice([0.0, 0.01, 0.1]),
        "max_grad_norm": rng.choice([None, 0.5, 1.0, 50.0]),
        **{name: rng.random() < 0.5 for name in LAMB_FLAGS},
    }
    # Six seeds in a row reach every switch both ways.
    options[LAMB_FLAGS[seed % 6]] = not options[LAMB_FLAGS[(seed + 1) % 6]]
    overrides = [{}] if rng.random() < 0.4 else [{}, {"weight_decay": rng.choice([0.0, 0.05]), "lr": options["lr"] / 2}]
    return shapes, options, overrides


def _groups(params, overrides):
    if len(overrides) == 1:
        return [{"params": params, **overrides[0]}]
    half = max(1, len(params) // 2)
    return [{"params": params[:half], **overrides[0]}, {"params": params[half:], **overrides[1]}]


def _train(make, shapes, overrides, dtype, seed, grad_scale=None, param_scale=1.0, state_key="exp_avg"):
    """Parameters and a state buffer after STEPS steps; gradients of norm about 1 to 30."""
    gen = torch.Generator().manual_seed(seed)
    params = [(torch.randn(s, generator=gen, dtype=torch.float64) * param_scale).to(dtype).requires_grad_()
              for s in shapes]
    opt = make(_groups(params, overrides))
    for _ in range(STEPS):
        grads = [(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 3).to(dtype) for p in params]
        for p, g in zip(params, grads):
            p.grad = g.clone() if grad_scale is None else g * grad_scale
        if grad_scale is not None:  # as GradScaler hands a fused optimizer its scale
            opt.grad_scale, opt.found_inf = torch.tensor(grad_scale, dtype=torch.float32), torch.tensor(0.0)
        opt.step()
        for p, g in zip(params, grads):  # never written, clipped or not
            assert torch.equal(p.grad, g if grad_scale is None else g * grad_scale)
    return [p.detach().clone() for p in params], [opt.state[p][state_key].clone() for p in params
                                                  if state_key in opt.state[p]]



def _ours(options):
    options = {OUR_NAMES.get(k, k): v for k, v in options.items()}
    return lambda groups: ho.LAMB(groups, **options, scale_clip=(0.0, math.inf))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_lamb_clipping_sees_unscaled_gradients(timm_optim, dtype):
    options = {"lr": 1e-2, "eps": 1e-6, "weight_decay": 0.01, "max_grad_norm": 1.0, "bias_correction": True,
               "always_adapt": False}
    shapes, overrides = [(5, 4), (7,)], [{}]
    theirs = _train(lambda g: timm_optim.lamb.Lamb(g, **options), shapes, overrides, dtype, 3)
    ours = _train(_ours(options), shapes, overrides, dtype, 3, grad_scale=1024.0)
    assert_close_to_oracle(ours[0], theirs[0], dtype, "params under a loss scale")


def test_each_lamb_option_changes_the_numbers(timm_optim):
    """The oracle test would catch an option ignored: each one alone moves the result."""
    shapes, overrides = [(6, 3), (4,)], [{}]
    base = {"lr": 1e-2, "weight_decay": 0.01, "max_grad_norm": None, "bias_correction": False,
            "grad_averaging": True, "trust_clip": False, "always_adapt": True}
    # Parameters large enough for trust ratios above 1 (which trust_clip caps).
    reference, _ = _train(_ours(base), shapes, overrides, torch.float64, 5, param_scale=5.0)
    for change in ({"bias_correction": True}, {"grad_averaging": False}, {"max_grad_norm": 1.0},
                   {"trust_clip": True}, {"always_adapt": False, "weight_decay": 0.0},
                   {"decoupled_decay": True}, {"caution": True}):
        changed, _ = _train(_ours({**base, **change}), shapes, overrides, torch.float64, 5, param_scale=5.0)
        if "weight_decay" in change:
            reference_wd0, _ = _train(_ours({**base, "weight_decay": 0.0}), shapes, overrides, torch.float64, 5,
                                      param_scale=5.0)
            assert not torch.equal(changed[0], reference_wd0[0]), change
        else:
            assert not torch.equal(changed[0], reference[0]), change


def _assert_cpp_front_matches(algo: str, settings: list[str], make_timm, seed: int) -> None:
    """The C++ class `algo` with `settings`, through the parity runner, against timm's optimizer
    on the same random numbers (the runner's shapes, drawn in its order)."""
    out = subprocess.run([str(RUNNER), algo, str(seed), str(STEPS), *settings],
                         check=True, capture_output=True, text=True).stdout
    cpp = [torch.tensor([float(v) for v in line.split()], dtype=torch.float64) for line in out.splitlines()]
    from test_cpp_front import SHAPES
    torch.manual_seed(seed)
    params = [torch.randn(shape, dtype=torch.float64) for shape in SHAPES]
    opt = make_timm(params)
    for _ in range(STEPS):
        for p in params:
            p.grad = torch.randn(p.shape, dtype=torch.float64)
        opt.step()
    assert_close_to_oracle(cpp, [p.detach().reshape(-1) for p in params], torch.float64, f"C++ {algo} {settings}")


def _runner_settings(options: dict, flags: tuple[str, ...], reals=("lr", "eps", "weight_decay")) -> list[str]:
    """The parity runner's name=value settings of an Adam-like case: betas, numbers and switches."""
    betas = [f"beta{i + 1}={beta!r}" for i, beta in enumerate(options["betas"])]
    return betas + [f"{key}={options[key]!r}" for key in reals] + [f"{name}={float(options[name])!r}" for name in flags]


@pytest.mark.skipif(not RUNNER.exists(), reason="the C++ tests are not built (make build)")
@pytest.mark.parametrize("seed", range(4))
def test_lamb_cpp_front_matches_timm(timm_optim, seed):
    """LAMBOptions' timm options, through the C++ class, on the parity runner's random numbers."""
    _, options, _ = _random_lamb_case(seed)
    settings = [f"lr={options['lr']!r}", f"beta1={options['betas'][0]!r}", f"beta2={options['betas'][1]!r}",
                f"eps={options['eps']!r}", f"weight_decay={options['weight_decay']!r}", "clip_low=0.0", "clip_high=inf"]
    settings += [f"{OUR_NAMES.get(name, name)}={float(options[name])!r}" for name in LAMB_FLAGS]
    if options["max_grad_norm"] is not None:
        settings.append(f"max_grad_norm={options['max_grad_norm']!r}")
    _assert_cpp_front_matches("LAMB", settings, lambda params: timm_optim.lamb.Lamb(params, **options), seed)


@pytest.mark.skipif(not RUNNER.exists(), reason="the C++ tests are not built (make build)")
@pytest.mark.parametrize("seed", range(2))
def test_lamb_cpp_corrected_weight_decay_matches_timm(timm_optim, seed):
    """LAMBOptions' corrected_weight_decay with max_lr 0.05 and lr 0.01 (a schedule's lr below
    its peak), against timm's Lamb built with lr 0.05 whose groups' lr is then set to 0.01."""
    options = {"lr": 0.01, "betas": (0.9, 0.999), "eps": 1e-6, "weight_decay": 0.1, "max_grad_norm": None,
               "bias_correction": True, "grad_averaging": True, "trust_clip": bool(seed), "always_adapt": False,
               "decoupled_decay": True, "caution": False}
    settings = [f"lr={options['lr']!r}", "beta1=0.9", "beta2=0.999", "eps=1e-06", "weight_decay=0.1",
                "clip_low=0.0", "clip_high=inf", "corrected_weight_decay=1.0", "max_lr=0.05"]
    settings += [f"{OUR_NAMES.get(name, name)}={float(options[name])!r}" for name in LAMB_FLAGS]

    def make_timm(params):
        opt = timm_optim.lamb.Lamb(params, **{**options, "lr": 0.05}, corrected_weight_decay=True)
        for group in opt.param_groups:
            group["lr"] = options["lr"]
        return opt

    _assert_cpp_front_matches("LAMB", settings, make_timm, seed)
    # Without the correction the numbers differ: the test above sees it.
    uncorrected = [s for s in settings if not s.startswith("corrected_weight_decay")]
    with pytest.raises(AssertionError):
        _assert_cpp_front_matches("LAMB", uncorrected, make_timm, seed)


def test_lamb_groups_with_different_max_grad_norms_are_clipped_apart():
    """Each bound clips by the norm over the groups holding it; None does not clip: the same as
    one optimizer per bound."""
    gen = torch.Generator().manual_seed(2)
    init = [torch.randn(s, generator=gen, dtype=torch.float64) for s in [(4, 3), (5,), (2, 2), (3,)]]
    bounds = [1.0, 1.0, 0.5, None]
    together = [t.clone().requires_grad_() for t in init]
    apart = [t.clone().requires_grad_() for t in init]
    opt = ho.LAMB([{"params": [p], "max_grad_norm": b} for p, b in zip(together, bounds)], lr=0.01,
                  bias_correction=True)
    opts = [ho.LAMB(apart[:2], lr=0.01, bias_correction=True, max_grad_norm=1.0),
            ho.LAMB(apart[2:3], lr=0.01, bias_correction=True, max_grad_norm=0.5),
            ho.LAMB(apart[3:], lr=0.01, bias_correction=True)]
    for _ in range(5):
        grads = [torch.randn(t.shape, generator=gen, dtype=torch.float64) * 4 for t in init]
        for a, b, g in zip(together, apart, grads):
            a.grad, b.grad = g.clone(), g.clone()
        opt.step()
        for o in opts:
            o.step()
    for a, b in zip(together, apart):
        assert torch.equal(a, b)


@pytest.mark.parametrize("value", [0.0, -1.0, math.nan, math.inf, "1"])
def test_lamb_bad_max_grad_norm_is_refused_everywhere(value):
    p = torch.nn.Parameter(torch.randn(3))
    with pytest.raises(ValueError, match=f"LAMB: invalid max_grad_norm value: {value!r}"):
        ho.LAMB([p], max_grad_norm=value)
    opt = ho.LAMB([p])
    with pytest.raises(ValueError, match="invalid max_grad_norm"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.randn(2))], "max_grad_norm": value})
    assert len(opt.param_groups) == 1
    saved = opt.state_dict()
    saved["param_groups"][0]["max_grad_norm"] = value
    with pytest.raises(ValueError, match="invalid max_grad_norm"):
        opt.load_state_dict(saved)
    assert opt.param_groups[0]["max_grad_norm"] is None


@pytest.mark.parametrize("name", [OUR_NAMES.get(n, n) for n in LAMB_FLAGS])
def test_lamb_switches_must_be_bools(name):
    with pytest.raises(TypeError, match=f"LAMB: {name} must be a bool, got 'yes'"):
        ho.LAMB([torch.nn.Parameter(torch.randn(3))], **{name: "yes"})


def test_a_lamb_checkpoint_from_before_the_options_loads_with_their_defaults():
    p = torch.nn.Parameter(torch.randn(4, 3))
    opt = ho.LAMB([p], lr=1e-2, weight_decay=0.01)
    p.grad = torch.randn(4, 3)
    opt.step()
    old = copy.deepcopy(opt.state_dict())
    for group in old["param_groups"]:
        for key in ("max_grad_norm", *[OUR_NAMES.get(n, n) for n in LAMB_FLAGS]):
            del group[key]
    fresh = ho.LAMB([p], lr=1e-2, weight_decay=0.01, bias_correction=True, max_grad_norm=1.0)
    fresh.load_state_dict(old)
    group = fresh.param_groups[0]
    assert (group["bias_correction"], group["grad_averaging"], group["max_grad_norm"], group["trust_clip"],
            group["always_adapt"]) == (False, True, None, False, True)


# ---- LARS -------------------------------------------------------------------------------

LARS_FLAGS = ("trust_clip", "always_adapt")


def _random_lars_case(seed: int) -> tuple[list[tuple[int, ...]], dict, list[dict]]:
    """Shapes, timm's Lars options (every switch drawn) and per-group overrides."""
    rng = random.Random(1000 + seed)
    shapes = [tuple(rng.randint(1, 6) for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(2, 5))]
    momentum = rng.choice([0.0, 0.9])
    nesterov = momentum > 0 and rng.random() < 0.5
    options = {
        "lr": rng.choice([0.1, 1.0, 5.0]),
        "momentum": momentum,
        "dampening": 0.0 if nesterov else rng.choice([0.0, 0.1]),
        "weight_decay": rng.choice([0.0, 1e-4, 0.01]),
        "nesterov": nesterov,
        "trust_coeff": rng.choice([0.001, 0.02, 1.0]),
        "eps": rng.choice([1e-8, 0.0, 1e-3]),
        **{name: rng.random() < 0.5 for name in LARS_FLAGS},
    }
    options[LARS_FLAGS[seed % 2]] = not options[LARS_FLAGS[(seed // 2) % 2]]
    overrides = [{}] if rng.random() < 0.4 else [{}, {"weight_decay": 0.0, "lr": options["lr"] / 2}]
    return shapes, options, overrides


def _ours_lars(options):
    return lambda groups: ho.LARS(groups, **options, trust_on_gradient=True)


def test_lars_zero_gradient_keeps_a_ratio_of_one_as_timm(timm_optim):
    """With trust_on_gradient a zero gradient leaves the ratio 1 (timm, apex); the reference's
    placement divides by weight_decay * ||p|| instead."""
    options = {"lr": 0.5, "momentum": 0.9, "weight_decay": 0.01, "trust_coeff": 0.02, "eps": 1e-8}
    results = []
    for make in (lambda g: timm_optim.lars.Lars(g, **options), _ours_lars(options)):
        p = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
        opt = make([p])
        for step in range(4):
            p.grad = torch.zeros_like(p) if step % 2 else torch.ones_like(p)
            opt.step()
        results.append(p.detach().clone())
    assert_close_to_oracle([results[1]], [results[0]], torch.float64, "zero gradients")


def test_each_lars_option_changes_the_numbers():
    shapes, overrides = [(6, 3), (4,)], [{}]
    base = {"lr": 0.5, "momentum": 0.9, "weight_decay": 0.01}
    reference, _ = _train(lambda g: ho.LARS(g, **base), shapes, overrides, torch.float64, 5,
                          state_key="momentum_buffer")
    for change in ({"trust_coeff": 0.5}, {"eps": 0.5}, {"trust_clip": True}, {"trust_on_gradient": True},
                   {"always_adapt": False, "weight_decay": 0.0}):
        options = {**base, **change}
        changed, _ = _train(lambda g: ho.LARS(g, **options), shapes, overrides, torch.float64, 5,
                            state_key="momentum_buffer")
        if "weight_decay" in change:
            without, _ = _train(lambda g: ho.LARS(g, **{**base, "weight_decay": 0.0}), shapes, overrides,
                                torch.float64, 5, state_key="momentum_buffer")
            assert not torch.equal(changed[0], without[0]), change
        else:
            assert not torch.equal(changed[0], reference[0]), change


@pytest.mark.skipif(not RUNNER.exists(), reason="the C++ tests are not built (make build)")
@pytest.mark.parametrize("seed", range(4))
def test_lars_cpp_front_matches_timm(timm_optim, seed):
    _, options, _ = _random_lars_case(seed)
    settings = [f"{key}={float(value)!r}" for key, value in options.items()] + ["trust_on_gradient=1.0"]
    _assert_cpp_front_matches("LARS", settings, lambda params: timm_optim.lars.Lars(params, **options), seed)


def test_a_lars_checkpoint_from_before_the_options_loads_with_their_defaults():
    p = torch.nn.Parameter(torch.randn(4, 3))
    opt = ho.LARS([p], lr=0.1, momentum=0.9)
    p.grad = torch.randn(4, 3)
    opt.step()
    old = copy.deepcopy(opt.state_dict())
    for group in old["param_groups"]:
        for key in ("trust_coeff", "eps", "trust_clip", "always_adapt", "trust_on_gradient"):
            del group[key]
    fresh = ho.LARS([p], lr=0.1, momentum=0.9, trust_coeff=0.001, trust_on_gradient=True)
    fresh.load_state_dict(old)
    group = fresh.param_groups[0]
    assert (group["trust_coeff"], group["eps"], group["trust_clip"], group["always_adapt"],
            group["trust_on_gradient"]) == (1.0, 0.0, False, True, False)


# ---- Adan -------------------------------------------------------------------------------

ADAN_FLAGS = ("decoupled_weight_decay", "no_prox", "caution")


def _random_adan_case(seed: int) -> tuple[list[tuple[int, ...]], dict, list[dict]]:
    """Shapes, Adan's options (both switches drawn, clipping or not) and per-group overrides."""
    rng = random.Random(2000 + seed)
    shapes = [tuple(rng.randint(1, 6) for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(2, 5))]
    options = {
        "lr": rng.choice([1e-3, 1e-2, 5e-2]),
        "betas": rng.choice([(0.98, 0.92, 0.99), (0.9, 0.8, 0.95), (0.5, 0.6, 0.9)]),
        "eps": rng.choice([1e-8, 1e-6, 1e-2]),
        "weight_decay": rng.choice([0.0, 0.02, 0.1]),
        "max_grad_norm": rng.choice([None, 0.5, 5.0, 1e3]),
        **{name: rng.random() < 0.5 for name in ADAN_FLAGS},
    }
    # Six seeds in a row reach every switch both ways.
    options[ADAN_FLAGS[seed % 3]] = not options[ADAN_FLAGS[(seed + 1) % 3]]
    overrides = [{}] if rng.random() < 0.4 else [{}, {"weight_decay": rng.choice([0.0, 0.05]), "lr": options["lr"] / 2}]
    return shapes, options, overrides


class _AdanOracle:
    """timm's Adan with what it lacks written around it from the authors' formulas: their
    gradient-norm clipping (``min(max_grad_norm / (norm + eps), 1)``, the norm over every group's
    gradients, taken in float64) and, unless decoupled, the reference's L2 term ``g + wd * p``."""

    def __init__(self, timm_adan, groups, options):
        options = dict(options)
        self.max_grad_norm = options.pop("max_grad_norm", None)
        self.decoupled = options.pop("decoupled_weight_decay", True)
        self.opt = timm_adan(groups, **options)
        self.state = self.opt.state

    def step(self):
        params = [p for group in self.opt.param_groups for p in group["params"] if p.grad is not None]
        given = [p.grad for p in params]
        factor = 1.0
        if self.max_grad_norm is not None:
            norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in given))
            factor = min(self.max_grad_norm / (norm + self.opt.param_groups[-1]["eps"]), 1.0)
        for group in self.opt.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad * factor
                p.grad = grad if self.decoupled else grad + group["weight_decay"] * p.detach()
        self.opt.step()
        for p, g in zip(params, given):
            p.grad = g


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_adan_clipping_sees_unscaled_gradients(timm_optim, dtype):
    options = {"lr": 1e-2, "weight_decay": 0.02, "max_grad_norm": 1.0, "decoupled_weight_decay": True}
    shapes, overrides = [(5, 4), (7,)], [{}]
    theirs = _train(lambda g: _AdanOracle(timm_optim.adan.Adan, g, options), shapes, overrides, dtype, 3)
    ours = _train(lambda g: ho.Adan(g, **options), shapes, overrides, dtype, 3, grad_scale=1024.0)
    assert_close_to_oracle(ours[0], theirs[0], dtype, "params under a loss scale")


def test_each_adan_option_changes_the_numbers():
    shapes, overrides = [(6, 3), (4,)], [{}]
    base = {"lr": 1e-2, "weight_decay": 0.05}
    reference, _ = _train(lambda g: ho.Adan(g, **base), shapes, overrides, torch.float64, 5)
    for change in ({"decoupled_weight_decay": True}, {"no_prox": True}, {"max_grad_norm": 1.0}, {"caution": True}):
        changed, _ = _train(lambda g: ho.Adan(g, **base, **change), shapes, overrides, torch.float64, 5)
        assert not torch.equal(changed[0], reference[0]), change


@pytest.mark.skipif(not RUNNER.exists(), reason="the C++ tests are not built (make build)")
@pytest.mark.parametrize("seed", range(4))
def test_adan_cpp_front_matches_timm_and_the_authors(timm_optim, seed):
    _, options, _ = _random_adan_case(seed)
    settings = _runner_settings(options, ADAN_FLAGS)
    if options["max_grad_norm"] is not None:
        settings.append(f"max_grad_norm={options['max_grad_norm']!r}")
    _assert_cpp_front_matches("Adan", settings, lambda params: _AdanOracle(timm_optim.adan.Adan, params, options), seed)


def test_adan_groups_with_different_max_grad_norms_are_clipped_apart():
    gen = torch.Generator().manual_seed(4)
    init = [torch.randn(s, generator=gen, dtype=torch.float64) for s in [(4, 3), (5,), (2, 2)]]
    bounds = [1.0, 0.5, None]
    together = [t.clone().requires_grad_() for t in init]
    apart = [t.clone().requires_grad_() for t in init]
    opt = ho.Adan([{"params": [p], "max_grad_norm": b} for p, b in zip(together, bounds)], lr=0.01)
    opts = [ho.Adan([p], lr=0.01, max_grad_norm=b) for p, b in zip(apart, bounds)]
    for _ in range(5):
        grads = [torch.randn(t.shape, generator=gen, dtype=torch.float64) * 4 for t in init]
        for a, b, g in zip(together, apart, grads):
            a.grad, b.grad = g.clone(), g.clone()
        opt.step()
        for o in opts:
            o.step()
    for a, b in zip(together, apart):
        assert torch.equal(a, b)


def test_an_adan_checkpoint_from_before_the_options_loads_with_their_defaults():
    p = torch.nn.Parameter(torch.randn(4, 3))
    opt = ho.Adan([p], lr=1e-2, weight_decay=0.01)
    p.grad = torch.randn(4, 3)
    opt.step()
    old = copy.deepcopy(opt.state_dict())
    for group in old["param_groups"]:
        for key in ("max_grad_norm", *ADAN_FLAGS):
            del group[key]
    fresh = ho.Adan([p], lr=1e-2, weight_decay=0.01, no_prox=True, max_grad_norm=1.0)
    fresh.load_state_dict(old)
    group = fresh.param_groups[0]
    assert (group["decoupled_weight_decay"], group["no_prox"], group["max_grad_norm"]) == (False, False, None)


# ---- AdaBelief ----------------------------------------------------------------------------

ADABELIEF_FLAGS = ("amsgrad", "decoupled_weight_decay", "fixed_decay", "rectify", "degenerated_to_sgd",
                   "eps_in_variance")


def _random_adabelief_case(seed: int) -> tuple[list[tuple[int, ...]], dict, list[dict]]:
    """Shapes, AdaBelief's options (every switch drawn) and per-group overrides. beta2 = 0.9 and
    0.99 cross rho_t = 5 within the 25 steps (0.999 sits on it at the 5th step)."""
    rng = random.Random(3000 + seed)
    shapes = [tuple(rng.randint(1, 6) for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(2, 5))]
    options = {
        "lr": rng.choice([1e-3, 1e-2, 5e-2]),
        "betas": rng.choice([(0.9, 0.999), (0.9, 0.9), (0.5, 0.99), (0.8, 0.9)]),
        "eps": rng.choice([1e-16, 1e-8, 1e-3]),
        "weight_decay": rng.choice([0.0, 0.01, 0.1]),
        **{name: rng.random() < 0.5 for name in ADABELIEF_FLAGS},
    }
    # Six seeds in a row reach every switch both ways.
    options[ADABELIEF_FLAGS[seed % 6]] = not options[ADABELIEF_FLAGS[(seed + 1) % 6]]
    options["fixed_decay"] = options["fixed_decay"] and options["decoupled_weight_decay"]
    overrides = [{}] if rng.random() < 0.4 else [{}, {"weight_decay": rng.choice([0.0, 0.05]), "lr": options["lr"] / 2}]
    return shapes, options, overrides


class _NaiveAdaBelief(torch.optim.Optimizer):
    """AdaBelief written from the paper and timm's rectification, one float64 tensor op at a
    time: the oracle where timm has no switch (eps left out of s)."""

    def __init__(self, params, **options):
        super().__init__(params, options)

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                state = self.state[p]
                if not state:
                    state.update(step=0, m=torch.zeros_like(p, dtype=torch.float64),
                                 s=torch.zeros_like(p, dtype=torch.float64), max_s=torch.zeros_like(p, dtype=torch.float64))
                state["step"] += 1
                t = state["step"]
                w = p.double()
                g = p.grad.double()
                if group["decoupled_weight_decay"]:
                    w = w * (1 - (wd if group["fixed_decay"] else lr * wd))
                else:
                    g = g + wd * w
                m = state["m"] = beta1 * state["m"] + (1 - beta1) * g
                s = state["s"] = beta2 * state["s"] + (1 - beta2) * (g - m) ** 2 + (eps if group["eps_in_variance"] else 0.0)
                state["max_s"] = torch.maximum(state["max_s"], s)
                bc1, bc2 = 1 - beta1 ** t, 1 - beta2 ** t
                if not group["rectify"]:
                    second = state["max_s"] if group["amsgrad"] else s
                    w = w - lr / bc1 * m / (second.sqrt() / math.sqrt(bc2) + eps)
                else:
                    rho_max = 2 / (1 - beta2) - 1
                    rho = rho_max - 2 * t * beta2 ** t / (1 - beta2 ** t)
                    if rho >= 5:
                        r = math.sqrt((rho - 4) * (rho - 2) * rho_max / ((rho_max - 4) * (rho_max - 2) * rho))
                        w = w - lr * r * math.sqrt(bc2) / bc1 * m / (s.sqrt() + eps)
                    elif group["degenerated_to_sgd"]:
                        w = w - lr / bc1 * m
                p.copy_(w)
                state["exp_avg"] = m


def _adabelief_oracle(timm_optim, options):
    """timm's AdaBelief where it has the variant (eps in s), else the naive one."""
    if options["eps_in_variance"]:
        timm_options = {("decoupled_decay" if k == "decoupled_weight_decay" else k): v
                        for k, v in options.items() if k != "eps_in_variance"}
        return lambda groups: timm_optim.adabelief.AdaBelief(groups, **timm_options)
    return lambda groups: _NaiveAdaBelief(groups, **options)


def test_the_naive_adabelief_agrees_with_timm(timm_optim):
    """The naive oracle is itself held to timm where both apply (eps in s)."""
    for seed in range(6):
        shapes, options, overrides = _random_adabelief_case(seed)
        options = {**options, "eps_in_variance": True}
        theirs = _train(_adabelief_oracle(timm_optim, options), shapes, overrides, torch.float64, seed)
        naive = _train(lambda g: _NaiveAdaBelief(g, **options), shapes, overrides, torch.float64, seed)
        assert_close_to_oracle(naive[0], theirs[0], torch.float64, f"naive {options}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_adabelief_sees_unscaled_gradients(timm_optim, dtype):
    options = {"lr": 1e-2, "betas": (0.9, 0.9), "eps": 1e-8, "weight_decay": 0.01, "amsgrad": True,
               "decoupled_weight_decay": True, "fixed_decay": False, "rectify": True, "degenerated_to_sgd": True,
               "eps_in_variance": True}
    shapes, overrides = [(5, 4), (7,)], [{}]
    theirs = _train(_adabelief_oracle(timm_optim, options), shapes, overrides, dtype, 3)
    ours = _train(lambda g: ho.AdaBelief(g, **options), shapes, overrides, dtype, 3, grad_scale=1024.0)
    assert_close_to_oracle(ours[0], theirs[0], dtype, "params under a loss scale")


def test_each_adabelief_option_changes_the_numbers():
    shapes, overrides = [(6, 3), (4,)], [{}]
    base = {"lr": 1e-2, "betas": (0.9, 0.9), "eps": 1e-3, "weight_decay": 0.05}
    reference, _ = _train(lambda g: ho.AdaBelief(g, **base), shapes, overrides, torch.float64, 5)
    for change in ({"rectify": True}, {"eps_in_variance": True}, {"decoupled_weight_decay": True}):
        changed, _ = _train(lambda g: ho.AdaBelief(g, **base, **change), shapes, overrides, torch.float64, 5)
        assert not torch.equal(changed[0], reference[0]), change
    rectified = {**base, "rectify": True, "betas": (0.9, 0.999)}  # rho_t < 5 for the first steps
    reference, _ = _train(lambda g: ho.AdaBelief(g, **rectified), shapes, overrides, torch.float64, 5)
    changed, _ = _train(lambda g: ho.AdaBelief(g, **rectified, degenerated_to_sgd=False), shapes, overrides,
                        torch.float64, 5)
    assert not torch.equal(changed[0], reference[0])
    decoupled = {**base, "decoupled_weight_decay": True}
    reference, _ = _train(lambda g: ho.AdaBelief(g, **decoupled), shapes, overrides, torch.float64, 5)
    changed, _ = _train(lambda g: ho.AdaBelief(g, **decoupled, fixed_decay=True), shapes, overrides, torch.float64, 5)
    assert not torch.equal(changed[0], reference[0])


@pytest.mark.skipif(not RUNNER.exists(), reason="the C++ tests are not built (make build)")
@pytest.mark.parametrize("seed", range(6))
def test_adabelief_cpp_front_matches_timm_and_the_paper(timm_optim, seed):
    _, options, _ = _random_adabelief_case(seed)
    settings = _runner_settings(options, ADABELIEF_FLAGS)
    _assert_cpp_front_matches("AdaBelief", settings, _adabelief_oracle(timm_optim, options), seed)


def test_adabelief_fixed_decay_needs_the_decoupled_decay():
    p = torch.nn.Parameter(torch.randn(3))
    with pytest.raises(ValueError, match="AdaBelief: fixed_decay=True .* needs decoupled_weight_decay=True"):
        ho.AdaBelief([p], fixed_decay=True, weight_decay=0.1)
    opt = ho.AdaBelief([p])
    with pytest.raises(ValueError, match="fixed_decay"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.randn(2))], "fixed_decay": True})
    assert len(opt.param_groups) == 1


def test_an_adabelief_checkpoint_from_before_the_options_loads_with_their_defaults():
    p = torch.nn.Parameter(torch.randn(4, 3))
    opt = ho.AdaBelief([p], lr=1e-2, weight_decay=0.01)
    p.grad = torch.randn(4, 3)
    opt.step()
    old = copy.deepcopy(opt.state_dict())
    for group in old["param_groups"]:
        for key in ("rectify", "degenerated_to_sgd", "fixed_decay", "eps_in_variance"):
            del group[key]
    fresh = ho.AdaBelief([p], lr=1e-2, weight_decay=0.01, rectify=True, eps_in_variance=True)
    fresh.load_state_dict(old)
    group = fresh.param_groups[0]
    assert (group["rectify"], group["degenerated_to_sgd"], group["fixed_decay"], group["eps_in_variance"]) == (
        False, True, False, False)


# ---- AdamP --------------------------------------------------------------------------------

ADAMP_FLAGS = ("amsgrad", "decoupled_weight_decay", "nesterov", "channel_projection", "caution")


def _random_adamp_case(seed: int) -> tuple[list[tuple[int, ...]], dict, list[dict]]:
    """Shapes (1-d to 4-d: timm projects only the others), AdamP's options (every switch drawn)
    and per-group overrides. delta 5 projects (nearly) every update, 1 some, 0.1 few."""
    rng = random.Random(4000 + seed)
    shapes = [tuple(rng.randint(1, 6) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(2, 5))]
    options = {
        "lr": rng.choice([1e-3, 1e-2, 5e-2]),
        "betas": rng.choice([(0.9, 0.999), (0.8, 0.99), (0.5, 0.9)]),
        "eps": rng.choice([1e-8, 1e-3]),
        "weight_decay": rng.choice([0.0, 0.01, 0.1]),
        "delta": rng.choice([0.1, 1.0, 5.0]),
        **{name: rng.random() < 0.5 for name in ADAMP_FLAGS},
    }
    # Ten seeds in a row reach every switch both ways.
    options[ADAMP_FLAGS[seed % 5]] = not options[ADAMP_FLAGS[(seed + 1) % 5]]
    timm_variant = options["channel_projection"] and options["decoupled_weight_decay"]
    options["wd_ratio"] = rng.choice([0.1, 0.5, 1.0]) if timm_variant else 1.0
    overrides = [{}] if rng.random() < 0.4 else [{}, {"weight_decay": rng.choice([0.0, 0.05]), "lr": options["lr"] / 2}]
    return shapes, options, overrides


class _NaiveAdamP(torch.optim.Optimizer):
    """AdamP written from the paper's two projections, one float64 tensor op at a time, with
    pytorch-optimizer's caution (m masked where m * g <= 0 and scaled by numel / (kept + 1), before
    Nesterov's mix): the oracle where neither timm (amsgrad, a coupled decay, the flattened
    projection with Nesterov, caution) nor the reference (Nesterov) has the case."""

    def __init__(self, params, **options):
        super().__init__(params, options)

    @staticmethod
    def _cosines(p, g, eps):
        return (p * g).sum(1) / (p.norm(dim=1).clamp_min(eps) * g.norm(dim=1).clamp_min(eps))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, wd, delta = group["lr"], group["eps"], group["weight_decay"], group["delta"]
            decoupled = group["decoupled_weight_decay"]
            for p in group["params"]:
                state = self.state[p]
                if not state:
                    state.update(step=0, m=torch.zeros_like(p, dtype=torch.float64),
                                 v=torch.zeros_like(p, dtype=torch.float64),
                                 max_v=torch.zeros_like(p, dtype=torch.float64))
                state["step"] += 1
                t = state["step"]
                w = p.double()
                g = p.grad.double() if decoupled else p.grad.double() + wd * p.double()
                m = state["m"] = beta1 * state["m"] + (1 - beta1) * g
                v = state["v"] = beta2 * state["v"] + (1 - beta2) * g * g
                state["max_v"] = torch.maximum(state["max_v"], v)
                second = state["max_v"] if group["amsgrad"] else v
                kept = m
                if group["caution"]:
                    mask = (m * g > 0).double()
                    kept = m * mask * (mask.numel() / (mask.sum() + 1))
                first = beta1 * kept + (1 - beta1) * g if group["nesterov"] else kept
                q = first / (1 - beta1 ** t) / (second.sqrt() / math.sqrt(1 - beta2 ** t) + eps)
                factor = 1 - lr * wd if decoupled else 1.0
                if not group["channel_projection"]:
                    w = w * factor
                    flat_w, flat_g = w.reshape(1, -1), g.reshape(1, -1)
                    if self._cosines(flat_w, flat_g, 1e-8)[0] < delta / math.sqrt(w.numel()):
                        n = w / (w.norm() + eps)
                        q = q - (n * q).sum() * n
                    p.copy_(w - lr * q)
                else:
                    for rows in ((w.shape[0], -1), (1, -1)) if w.dim() > 1 else ():
                        wv, gv, qv = w.reshape(rows), g.reshape(rows), q.reshape(rows)
                        if self._cosines(wv, gv, eps).abs().max() < delta / math.sqrt(wv.shape[1]):
                            n = wv / (wv.norm(dim=1, keepdim=True) + eps)
                            q = (qv - (n * qv).sum(1, keepdim=True) * n).reshape(w.shape)
                            factor = 1 - lr * wd * group["wd_ratio"] if decoupled else 1.0
                            break
                    p.copy_(w * factor - lr * q)
                state["exp_avg"] = m


def _adamp_oracle(timm_optim, options):
    """timm's AdamP where it has the case (its projection, a decoupled decay, no amsgrad), else
    the naive one."""
    if (options["channel_projection"] and options["decoupled_weight_decay"] and not options["amsgrad"]
            and not options["caution"]):
        timm_options = {k: v for k, v in options.items() if k not in ("amsgrad", "decoupled_weight_decay",
                                                                       "channel_projection", "caution")}
        return lambda groups: timm_optim.adamp.AdamP(groups, **timm_options)
    return lambda groups: _NaiveAdamP(groups, **options)


def test_the_naive_adamp_agrees_with_timm(timm_optim):
    """The naive oracle is itself held to timm where both apply."""
    for seed in range(8):
        shapes, options, overrides = _random_adamp_case(seed)
        options = {**options, "channel_projection": True, "decoupled_weight_decay": True, "amsgrad": False,
                   "caution": False}
        theirs = _train(_adamp_oracle(timm_optim, options), shapes, overrides, torch.float64, seed, param_scale=0.2)
        naive = _train(lambda g: _NaiveAdamP(g, **options), shapes, overrides, torch.float64, seed, param_scale=0.2)
        assert_close_to_oracle(naive[0], theirs[0], torch.float64, f"naive {options}")


def test_adamp_timm_projection_reaches_both_views():
    """The oracle cases project by channel and by layer (a test that never projected would
    pass with either view wrong)."""
    views = set()
    for seed in range(20):
        shapes, options, _ = _random_adamp_case(seed)
        if not options["channel_projection"]:
            continue
        gen = torch.Generator().manual_seed(seed)
        for shape in shapes:
            if len(shape) < 2:
                continue
            w = torch.randn(shape, generator=gen, dtype=torch.float64) * 0.2
            g = torch.randn(shape, generator=gen, dtype=torch.float64) * 3
            for name, rows in (("channel", (shape[0], -1)), ("layer", (1, -1))):
                cosines = _NaiveAdamP._cosines(w.reshape(rows), g.reshape(rows), options["eps"]).abs()
                if cosines.max() < options["delta"] / math.sqrt(w.reshape(rows).shape[1]):
                    views.add(name)
                    break
    assert views == {"channel", "layer"}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_adamp_sees_unscaled_gradients(timm_optim, dtype):
    options = {"lr": 1e-2, "eps": 1e-8, "weight_decay": 0.05, "delta": 1.0, "amsgrad": False,
               "decoupled_weight_decay": True, "nesterov": True, "channel_projection": True, "wd_ratio": 0.1,
               "caution": False}
    shapes, overrides = [(5, 4), (7,), (3, 2, 2)], [{}]
    theirs = _train(_adamp_oracle(timm_optim, options), shapes, overrides, dtype, 3, param_scale=0.2)
    ours = _train(lambda g: ho.AdamP(g, **options), shapes, overrides, dtype, 3, grad_scale=1024.0, param_scale=0.2)
    assert_close_to_oracle(ours[0], theirs[0], dtype, "params under a loss scale")


def test_each_adamp_option_changes_the_numbers():
    shapes, overrides = [(6, 3), (4,), (3, 2, 2)], [{}]
    base = {"lr": 1e-2, "weight_decay": 0.05, "delta": 5.0, "decoupled_weight_decay": True}
    reference, _ = _train(lambda g: ho.AdamP(g, **base), shapes, overrides, torch.float64, 5)
    for change in ({"nesterov": True}, {"channel_projection": True}, {"caution": True}):
        changed, _ = _train(lambda g: ho.AdamP(g, **base, **change), shapes, overrides, torch.float64, 5)
        assert not torch.equal(changed[0], reference[0]), change
    timm_variant = {**base, "channel_projection": True}
    reference, _ = _train(lambda g: ho.AdamP(g, **timm_variant), shapes, overrides, torch.float64, 5)
    changed, _ = _train(lambda g: ho.AdamP(g, **timm_variant, wd_ratio=0.1), shapes, overrides, torch.float64, 5)
    assert not torch.equal(changed[0], reference[0])


@pytest.mark.skipif(not RUNNER.exists(), reason="the C++ tests are not built (make build)")
@pytest.mark.parametrize("seed", range(10))
def test_adamp_cpp_front_matches_timm_and_the_paper(timm_optim, seed):
    _, options, _ = _random_adamp_case(seed)
    settings = _runner_settings(options, ADAMP_FLAGS, reals=("lr", "eps", "weight_decay", "delta", "wd_ratio"))
    _assert_cpp_front_matches("AdamP", settings, _adamp_oracle(timm_optim, options), seed)


def test_adamp_wd_ratio_needs_timms_projection_and_decay():
    p = torch.nn.Parameter(torch.randn(3, 2))
    for options in ({"wd_ratio": 0.1}, {"wd_ratio": 0.1, "channel_projection": True},
                    {"wd_ratio": 0.1, "decoupled_weight_decay": True}):
        with pytest.raises(ValueError, match="AdamP: wd_ratio=0.1 .* needs channel_projection=True and "
                                             "decoupled_weight_decay=True"):
            ho.AdamP([p], **options)
    ho.AdamP([p], wd_ratio=0.1, channel_projection=True, decoupled_weight_decay=True)


def test_adamp_channel_projection_is_refused_on_shards():
    p = torch.randn(4, 3)
    with pytest.raises(NotImplementedError, match="channel_projection .* sharded"):
        torch.ops.holocron.adamp_([p], [torch.randn(4, 3)], [torch.zeros(4, 3)], [torch.zeros(4, 3)], [], [1],
                                  1e-3, 0.9, 0.999, 1e-8, 0.0, False, 0.1, numels=[24], channel_projection=True)


@pytest.mark.parametrize("name", ["LARS", "RaLars", "TAdam", "AdaBelief"])
def test_caution_is_refused_where_no_peer_defines_it(name):
    """Neither a constructor argument nor a group key, nor a loaded group, is ignored."""
    cls = getattr(ho, name)
    p = torch.nn.Parameter(torch.randn(3))
    with pytest.raises(TypeError, match=f"{name} has no caution"):
        cls([p], caution=True)
    opt = cls([p])
    with pytest.raises(ValueError, match=f"{name} has no caution"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.randn(2))], "caution": True})
    assert len(opt.param_groups) == 1
    saved = opt.state_dict()
    saved["param_groups"][0]["caution"] = True
    with pytest.raises(ValueError, match="has no caution"):
        opt.load_state_dict(saved)
    assert "caution" not in opt.param_groups[0]


# ---- Each algorithm against its oracle ------------------------------------------------------

class _OracleCase(NamedTuple):
    """An algorithm's randomized case (shapes, options, group overrides) from a seed, its oracle
    and ours from the options (each a `make(groups)`), and how many seeds run."""

    random_case: Callable[[int], tuple[list[tuple[int, ...]], dict, list[dict]]]
    theirs: Callable[[Any, dict], Callable[[Any], Any]]
    ours: Callable[[dict], Callable[[Any], Any]]
    seeds: int
    state_key: str = "exp_avg"
    param_scale: float = 1.0


ORACLE_CASES = {
    "LAMB": _OracleCase(_random_lamb_case, lambda timm, o: lambda g: timm.lamb.Lamb(g, **o), _ours, 15),
    "LARS": _OracleCase(_random_lars_case, lambda timm, o: lambda g: timm.lars.Lars(g, **o), _ours_lars, 12,
                        state_key="momentum_buffer"),
    "Adan": _OracleCase(_random_adan_case, lambda timm, o: lambda g: _AdanOracle(timm.adan.Adan, g, o),
                        lambda o: lambda g: ho.Adan(g, **o), 12),
    "AdaBelief": _OracleCase(_random_adabelief_case, _adabelief_oracle, lambda o: lambda g: ho.AdaBelief(g, **o), 12),
    # Small weights: AdamP's projection then applies to some tensors, by channel or by layer.
    "AdamP": _OracleCase(_random_adamp_case, _adamp_oracle, lambda o: lambda g: ho.AdamP(g, **o), 20, param_scale=0.2),
}


@pytest.mark.parametrize("capability", ["auto", "reference"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name,seed", [(name, seed) for name, case in ORACLE_CASES.items() for seed in range(case.seeds)])
def test_matches_timm_and_the_papers(timm_optim, backend, name, seed, dtype, capability):
    backend(capability)
    case = ORACLE_CASES[name]
    shapes, options, overrides = case.random_case(seed)
    kwargs = {"state_key": case.state_key, "param_scale": case.param_scale}
    theirs = _train(case.theirs(timm_optim, options), shapes, overrides, dtype, seed, **kwargs)
    ours = _train(case.ours(options), shapes, overrides, dtype, seed, **kwargs)
    assert_close_to_oracle(ours[0], theirs[0], dtype, f"{name} params {options} {overrides} {shapes}")
    assert len(ours[1]) == len(theirs[1])
    assert_close_to_oracle(ours[1], theirs[1], dtype, f"{name} {case.state_key} {options} {overrides}")
