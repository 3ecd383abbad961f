"""Options whose definition is a paper's or a peer's formula (no peer class loaded): AdEMAMix's
warm-ups of alpha and beta3 (Pagliardini et al. 2024, arXiv 2409.03137, Algorithm 1; the formulas
bitsandbytes and pytorch-optimizer use) and its cautious update (Liang et al. 2024, arXiv
2411.16085, as pytorch-optimizer rescales it), against a naive float64 implementation written here,
over 25 steps on randomized shapes, options and groups: float64 to 1e-9 and float32 to 1e-4, on
both backends and on the C++ front."""

from __future__ import annotations

import copy
import math
import random
import subprocess

import pytest
import torch

import holocron_optim as ho
from _harness import assert_close_to_oracle
from conftest import BUILD_DIR

STEPS = 25
RUNNER = BUILD_DIR / "tests" / "cpp" / "holocron_parity_runner"


def paper_alpha(t: int, alpha: float, t_alpha: float | None) -> float:
    return alpha if t_alpha is None else min(t * alpha / t_alpha, alpha)


def paper_beta3(t: int, beta1: float, beta3: float, t_beta3: float | None) -> float:
    """The paper's f_beta3, written as what it means: the half-life of the slow average, in
    proportion to 1 / ln(beta), interpolated linearly from beta1's to beta3's over t_beta3 steps
    (the peers write the same as exp(ln b1 ln b3 / ((1 - s) ln b3 + s ln b1))), then beta3."""
    if t_beta3 is None or t >= t_beta3:
        return beta3
    s = t / t_beta3
    inverse_log = (1 - s) / math.log(beta1) + s / math.log(beta3)
    return min(math.exp(1 / inverse_log), beta3)


class NaiveAdEMAMix:
    """Algorithm 1 of the paper with the reference's L2 weight decay (g + wd * p) or, decoupled,
    the paper's own (p *= 1 - lr * wd first), in float64, one parameter at a time, each with its
    own step count."""

    def __init__(self, groups, lr=1e-3, betas=(0.9, 0.999, 0.9999), alpha=5.0, eps=1e-8, weight_decay=0.0,
                 t_alpha=None, t_beta3=None, caution=False, decoupled_weight_decay=False):
        defaults = dict(lr=lr, betas=betas, alpha=alpha, eps=eps, weight_decay=weight_decay, t_alpha=t_alpha,
                        t_beta3=t_beta3, caution=caution, decoupled_weight_decay=decoupled_weight_decay)
        self.param_groups = [{**defaults, **g} for g in groups]
        self.state = {}

    def step(self):
        for group in self.param_groups:
            beta1, beta2, beta3 = group["betas"]
            for p in group["params"]:
                state = self.state.setdefault(p, {})
                if not state:
                    state.update(step=0, exp_avg=torch.zeros_like(p, dtype=torch.float64),
                                 exp_avg_slow=torch.zeros_like(p, dtype=torch.float64),
                                 exp_avg_sq=torch.zeros_like(p, dtype=torch.float64))
                state["step"] += 1
                t = state["step"]
                w = p.detach().double()
                if group["decoupled_weight_decay"]:
                    w = w * (1 - group["lr"] * group["weight_decay"])
                    g = p.grad.double()
                else:
                    g = p.grad.double() + group["weight_decay"] * w
                alpha_t = paper_alpha(t, group["alpha"], group["t_alpha"])
                beta3_t = paper_beta3(t, beta1, beta3, group["t_beta3"])
                m1, m2, nu = state["exp_avg"], state["exp_avg_slow"], state["exp_avg_sq"]
                m1.mul_(beta1).add_((1 - beta1) * g)
                m2.mul_(beta3_t).add_((1 - beta3_t) * g)
                nu.mul_(beta2).add_((1 - beta2) * g * g)
                denom = (nu / (1 - beta2 ** t)).sqrt() + group["eps"]
                fast = m1.clone()
                if group["caution"]:  # pytorch-optimizer's apply_cautious
                    mask = (fast * g > 0).double()
                    fast *= mask * (mask.numel() / (mask.sum() + 1))
                with torch.no_grad():
                    p.copy_(w - group["lr"] * (fast / (1 - beta1 ** t) + alpha_t * m2) / denom)


def _random_case(seed: int):
    rng = random.Random(3000 + seed)
    shapes = [tuple(rng.randint(1, 6) for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(2, 5))]
    options = {
        "lr": rng.choice([1e-3, 1e-2]),
        "betas": rng.choice([(0.9, 0.999, 0.9999), (0.8, 0.99, 0.995), (0.5, 0.9, 0.99), (0.95, 0.99, 0.9)]),
        "alpha": rng.choice([5.0, 2.0, 8.0]),
        "eps": rng.choice([1e-8, 1e-6]),
        "weight_decay": rng.choice([0.0, 0.01]),
        # Shorter and longer than the run: warming up, and past the warm-up.
        "t_alpha": rng.choice([None, 3, 10.0, 40]),
        "t_beta3": rng.choice([None, 4, 15.0, 60]),
        "caution": seed % 3 == 2,
        "decoupled_weight_decay": seed % 2 == 1,
    }
    if seed % 4 == 0:
        options["t_alpha"] = options["t_alpha"] or 7
    if seed % 4 == 1:
        options["t_beta3"] = options["t_beta3"] or 12
    overrides = [{}] if rng.random() < 0.4 else [{}, {"t_alpha": rng.choice([None, 5]), "t_beta3": rng.choice([None, 8])}]
    return shapes, options, overrides


def _groups(params, overrides):
    if len(overrides) == 1:
        return [{"params": params, **overrides[0]}]
    half = max(1, len(params) // 2)
    return [{"params": params[:half], **overrides[0]}, {"params": params[half:], **overrides[1]}]


def _train(make, shapes, overrides, dtype, seed, skip_first=False):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype).requires_grad_() for s in shapes]
    opt = make(_groups(params, overrides))
    for step in range(STEPS):
        for index, p in enumerate(params):
            grad = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype)
            # Parameters that miss steps: their warm-ups count their own steps.
            p.grad = None if skip_first and index == 0 and step % 3 == 1 else grad
        opt.step()
    return [p.detach().clone() for p in params]



class _SkippingNaive(NaiveAdEMAMix):
    def step(self):
        groups = self.param_groups
        self.param_groups = [{**g, "params": [p for p in g["params"] if p.grad is not None]} for g in groups]
        try:
            super().step()
        finally:
            self.param_groups = groups


@pytest.mark.parametrize("capability", ["auto", "reference"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("seed", range(10))
def test_ademamix_warm_ups_match_the_paper(backend, seed, dtype, capability):
    backend(capability)
    shapes, options, overrides = _random_case(seed)
    theirs = _train(lambda g: _SkippingNaive(g, **options), shapes, overrides, torch.float64, seed, skip_first=True)
    ours = _train(lambda g: ho.AdEMAMix(g, **options), shapes, overrides, dtype, seed, skip_first=True)
    assert_close_to_oracle(ours, theirs, dtype, f"{options} {overrides}")


def test_the_schedules_at_known_steps():
    """The two ways of writing f_beta3 (the paper's half-life, the peers' exponent) agree, and the
    warm-ups start and end where the paper says."""
    beta1, beta3 = 0.9, 0.9999
    for t in range(1, 50):
        s = t / 50
        peers = min(math.exp(math.log(beta1) * math.log(beta3) / ((1 - s) * math.log(beta3) + s * math.log(beta1))),
                    beta3)
        assert paper_beta3(t, beta1, beta3, 50) == pytest.approx(peers, rel=1e-14)
    assert paper_beta3(50, beta1, beta3, 50) == beta3
    assert paper_alpha(1, 5.0, 10) == 0.5 and paper_alpha(10, 5.0, 10) == 5.0 and paper_alpha(30, 5.0, 10) == 5.0


def test_each_warm_up_changes_the_numbers():
    shapes, overrides = [(6, 3), (4,)], [{}]
    base = {"lr": 1e-2, "alpha": 5.0}
    reference = _train(lambda g: ho.AdEMAMix(g, **base), shapes, overrides, torch.float64, 5)
    for change in ({"t_alpha": 10}, {"t_beta3": 10}, {"caution": True}):
        changed = _train(lambda g: ho.AdEMAMix(g, **base, **change), shapes, overrides, torch.float64, 5)
        assert not torch.equal(changed[0], reference[0]), change
    # A warm-up shorter than one step is no warm-up.
    done = _train(lambda g: ho.AdEMAMix(g, **base, t_alpha=0.5, t_beta3=1), shapes, overrides, torch.float64, 5)
    assert all(torch.equal(a, b) for a, b in zip(done, reference))


def test_beta1_above_beta3_past_the_warm_up_is_beta3():
    """Past the warm-up, with beta1 > beta3, the peers' capped formula falls below beta3 (towards 0
    at a pole, here t = 22.1) before it is beta3 again: ours is beta3 from the warm-up's end on, as
    the paper's schedule."""
    beta1, beta3, t_beta3 = 0.99, 0.9, 20
    s = 21 / t_beta3
    peers = min(math.exp(math.log(beta1) * math.log(beta3) / ((1 - s) * math.log(beta3) + s * math.log(beta1))),
                beta3)
    assert peers < 0.85
    options = {"lr": 1e-2, "betas": (beta1, 0.999, beta3), "t_beta3": t_beta3}
    plain = _train(lambda g: NaiveAdEMAMix(g, **options), [(3, 2)], [{}], torch.float64, 1)
    ours = _train(lambda g: ho.AdEMAMix(g, **options), [(3, 2)], [{}], torch.float64, 1)
    assert all(torch.isfinite(p).all() for p in ours)
    assert_close_to_oracle(ours, plain, torch.float64, "beta1 > beta3")


@pytest.mark.skipif(not RUNNER.exists(), reason="the C++ tests are not built (make build)")
@pytest.mark.parametrize("seed", range(4))
def test_ademamix_cpp_front_matches_the_paper(seed):
    _, options, _ = _random_case(seed)
    beta1, beta2, beta3 = options["betas"]
    settings = [f"lr={options['lr']!r}", f"beta1={beta1!r}", f"beta2={beta2!r}", f"beta3={beta3!r}",
                f"alpha={options['alpha']!r}", f"eps={options['eps']!r}", f"weight_decay={options['weight_decay']!r}"]
    settings += [f"{key}={float(options[key])!r}" for key in ("t_alpha", "t_beta3") if options[key] is not None]
    settings.append(f"caution={float(options['caution'])!r}")
    settings.append(f"decoupled_weight_decay={float(options['decoupled_weight_decay'])!r}")
    out = subprocess.run([str(RUNNER), "AdEMAMix", str(seed), str(STEPS), *settings],
                         check=True, capture_output=True, text=True).stdout
    cpp = [torch.tensor([float(v) for v in line.split()], dtype=torch.float64) for line in out.splitlines()]
    from test_cpp_front import SHAPES
    torch.manual_seed(seed)
    params = [torch.randn(shape, dtype=torch.float64) for shape in SHAPES]
    opt = NaiveAdEMAMix([{"params": params}], **options)
    for _ in range(STEPS):
        for p in params:
            p.grad = torch.randn(p.shape, dtype=torch.float64)
        opt.step()
    assert_close_to_oracle(cpp, [p.reshape(-1) for p in params], torch.float64, f"C++ AdEMAMix {settings}")


def test_an_ademamix_checkpoint_from_before_the_warm_ups_loads_without_them():
    p = torch.nn.Parameter(torch.randn(4, 3))
    opt = ho.AdEMAMix([p], lr=1e-2)
    p.grad = torch.randn(4, 3)
    opt.step()
    old = copy.deepcopy(opt.state_dict())
    for group in old["param_groups"]:
        del group["t_alpha"], group["t_beta3"]
    fresh = ho.AdEMAMix([p], lr=1e-2, t_alpha=100, t_beta3=100)
    fresh.load_state_dict(old)
    assert (fresh.param_groups[0]["t_alpha"], fresh.param_groups[0]["t_beta3"]) == (None, None)


def test_t_beta3_needs_positive_betas_and_nothing_changes_when_refused():
    p = torch.nn.Parameter(torch.randn(3))
    with pytest.raises(ValueError, match=r"AdEMAMix: t_beta3 needs betas\[0\] > 0 and betas\[2\] > 0, got betas\[0\]=0"):
        ho.AdEMAMix([p], betas=(0.0, 0.999, 0.9999), t_beta3=10)
    opt = ho.AdEMAMix([p], betas=(0.0, 0.999, 0.9999))
    with pytest.raises(ValueError, match="t_beta3 needs"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.randn(2))], "t_beta3": 5})
    assert len(opt.param_groups) == 1
