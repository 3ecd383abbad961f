"""torch.optim's ``decoupled_weight_decay`` on all eight, against an oracle built from the reference
(pylocron 0.3.0): each step multiplies every parameter by ``1 - lr * weight_decay`` (its group's),
then takes the reference's own step without weight decay. That is the option's definition for
every algorithm: the Adam-likes as AdamW, and for LARS, LAMB and RaLars the decay outside the
trust ratio, whose ``||p||`` is the decayed parameter's (timm's ``decoupled_decay``). Randomized
shapes, options and groups over 25 steps, float64 to 1e-9 and float32 to 1e-4, both backends and
the C++ front. (Adan's reference has another defect, so Adan is held to timm's Adan instead, in
test_timm_oracle.py.)"""

from __future__ import annotations

import random
import subprocess

import pytest
import torch

import holocron_optim as ho
from _harness import assert_close_to_oracle
from conftest import BUILD_DIR
from registry import ALGORITHMS

STEPS = 25
RUNNER = BUILD_DIR / "tests" / "cpp" / "holocron_parity_runner"
NAMES = [name for name, entry in ALGORITHMS.items() if name != "Adan"]


class DecayThenReference:
    """The reference optimizer without weight decay, each step preceded by the decay."""

    def __init__(self, reference_cls, groups, options):
        self.decays = [(g["params"], {**options, **g}) for g in groups]
        bare = [{**{k: v for k, v in g.items() if k != "weight_decay"}, "weight_decay": 0.0} for g in groups]
        self.opt = reference_cls(bare, **{**options, "weight_decay": 0.0})
        self.state = self.opt.state

    def step(self):
        given = [(p, p.grad) for params, _ in self.decays for p in params]
        with torch.no_grad():
            for params, options in self.decays:
                for p in params:
                    if p.grad is not None:
                        p.mul_(1 - options["lr"] * options["weight_decay"])
        self.opt.step()
        for p, g in given:  # the reference's LARS writes into p.grad
            p.grad = g


def _case(name: str, seed: int):
    rng = random.Random(4000 + seed)
    entry = ALGORITHMS[name]
    shapes = [tuple(rng.randint(1, 6) for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(2, 5))]
    options = {k: v for k, v in entry.random_options(rng, seed % 4).items() if k not in entry.reference_ignores}
    options["weight_decay"] = rng.choice([0.01, 0.1, 0.5])
    overrides = [{}] if rng.random() < 0.4 else [{}, {"weight_decay": rng.choice([0.0, 0.05]),
                                                       "lr": options["lr"] / 2}]
    return shapes, options, overrides


def _train(make, shapes, overrides, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype).requires_grad_() for s in shapes]
    half = max(1, len(params) // 2)
    groups = ([{"params": params, **overrides[0]}] if len(overrides) == 1 else
              [{"params": params[:half], **overrides[0]}, {"params": params[half:], **overrides[1]}])
    opt = make(groups)
    for _ in range(STEPS):
        grads = [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype) for p in params]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        for p, g in zip(params, grads):
            assert torch.equal(p.grad, g)
    return [p.detach().clone() for p in params]



@pytest.mark.parametrize("capability", ["auto", "reference"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("name", NAMES)
def test_decoupled_weight_decay_is_decay_then_the_step_without_it(ref, backend, name, seed, dtype, capability):
    backend(capability)
    shapes, options, overrides = _case(name, seed)
    theirs = _train(lambda g: DecayThenReference(getattr(ref, name), g, options), shapes, overrides, dtype, seed)
    ours = _train(lambda g: getattr(ho, name)(g, **options, decoupled_weight_decay=True), shapes, overrides,
                  dtype, seed)
    assert_close_to_oracle(ours, theirs, dtype, f"{name} {options} {overrides}")


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_decoupled_weight_decay_changes_the_numbers(name):
    shapes, options, overrides = _case(name, 1)
    coupled = _train(lambda g: getattr(ho, name)(g, **options), shapes, overrides, torch.float64, 1)
    decoupled = _train(lambda g: getattr(ho, name)(g, **options, decoupled_weight_decay=True), shapes, overrides,
                       torch.float64, 1)
    assert not all(torch.equal(a, b) for a, b in zip(coupled, decoupled))


@pytest.mark.skipif(not RUNNER.exists(), reason="the C++ tests are not built (make build)")
@pytest.mark.parametrize("name", NAMES)
def test_cpp_front_decoupled_weight_decay(ref, name):
    """The C++ class with decoupled_weight_decay, through the parity runner, against the oracle on
    the runner's random numbers."""
    from test_cpp_front import SHAPES
    options = {"lr": 0.01, "weight_decay": 0.1}
    if name == "LARS":
        options["momentum"] = 0.9
    settings = [f"{k}={v!r}" for k, v in options.items()] + ["decoupled_weight_decay=1.0"]
    out = subprocess.run([str(RUNNER), name, "3", str(STEPS), *settings], check=True, capture_output=True,
                         text=True).stdout
    cpp = [torch.tensor([float(v) for v in line.split()], dtype=torch.float64) for line in out.splitlines()]
    torch.manual_seed(3)
    params = [torch.randn(shape, dtype=torch.float64) for shape in SHAPES]
    opt = DecayThenReference(getattr(ref, name), [{"params": params}], options)
    for _ in range(STEPS):
        for p in params:
            p.grad = torch.randn(p.shape, dtype=torch.float64)
        opt.step()
    assert_close_to_oracle(cpp, [p.reshape(-1) for p in params], torch.float64, f"C++ {name}")
