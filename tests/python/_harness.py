"""Shared test harness: random cases, a lock-step driver for ours and the
reference, and tolerance-aware comparisons."""

from __future__ import annotations

import random
from typing import Any

import torch

import holocron_optim as ho
from conftest import reference
from registry import ALGORITHMS, ALGOS  # noqa: F401 (ALGOS: re-exported for the tests)

SHAPES = ((), (1,), (7,), (3, 5, 2), (8, 3, 3, 3), (4, 6), (13,), (2, 1, 3))
TOL = {torch.float64: 1e-9, torch.float32: 1e-4}


def random_options(name: str, rng: random.Random, seed: int = 0) -> dict[str, Any]:
    """Constructor options (the same for ours and the reference) drawn from rng;
    the switches cycle with the seed so that 4 seeds cover every branch."""
    return ALGORITHMS[name].random_options(rng, seed % 4)


class Case:
    """A random problem: parameter shapes, two groups, options, and per-step
    gradients that depend on the current parameter values."""

    def __init__(self, name: str, seed: int, steps: int = 24, shapes: Any = None, options: Any = None) -> None:
        rng = random.Random(f"{name}-{seed}")
        self.name, self.seed, self.steps = name, seed, steps
        if shapes is None:
            count = rng.randint(4, 6)
            shapes = [rng.choice(SHAPES) for _ in range(count)]
            shapes[0] = (8, 3, 3, 3)  # always a conv weight
            if name == "TAdam":  # the reference fails on 0-d parameters, which ours take: tested separately
                shapes = [s if s != () else (1,) for s in shapes]
        self.shapes = list(shapes)
        self.options = dict(options) if options is not None else random_options(name, rng, seed)
        self.split = rng.randint(1, len(self.shapes) - 1)
        self.lr2 = self.options["lr"] * rng.choice([0.3, 2.0])
        self.wd2 = rng.choice([0.0, 0.05])
        gen = torch.Generator().manual_seed(1000 + seed)
        self.init = [torch.randn(s, generator=gen, dtype=torch.float64) for s in self.shapes]
        self.coef = [float(torch.empty(()).uniform_(-0.5, 0.5, generator=gen)) for _ in self.shapes]
        self.noise = [[torch.randn(s, generator=gen, dtype=torch.float64) for s in self.shapes] for _ in range(steps)]
        # The last parameter of the first group has no gradient every third step.
        self.skip = self.split - 1

    def params(self, dtype: torch.dtype) -> list[torch.Tensor]:
        return [t.clone().to(dtype).requires_grad_() for t in self.init]

    def groups(self, params: list[torch.Tensor]) -> list[dict[str, Any]]:
        return [
            {"params": params[: self.split]},
            {"params": params[self.split :], "lr": self.lr2, "weight_decay": self.wd2},
        ]

    def grads(self, step: int, params: list[torch.Tensor]) -> list[torch.Tensor | None]:
        out = []
        for i, p in enumerate(params):
            if i == self.skip and step % 3 == 1:
                out.append(None)
            else:
                out.append((self.coef[i] * p.detach().double() + self.noise[step][i]).to(p.dtype))
        return out


def ours_options(case: Case) -> dict[str, Any]:
    return dict(case.options)


def ref_options(case: Case) -> dict[str, Any]:
    opts = dict(case.options)
    if case.name == "LARS":
        opts.pop("scale_clip", None)  # the reference ignores it; ours clamps ||p|| (tested separately)
    return opts


class AdanReference:
    """The reference's functional `adan()` with `prev_grad` kept up to date by
    the test (the reference never updates it; ours does, as the paper): prev = g' on a first
    step, then prev = g' after each step."""

    def __init__(self, groups: list[dict[str, Any]], lr: float, betas, eps=1e-8, weight_decay=0.0, amsgrad=False,
                 perturb: float = 1.0) -> None:
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "amsgrad": amsgrad}
        self.param_groups = [{**defaults, **g} for g in groups]
        self.state: dict[torch.Tensor, dict[str, Any]] = {}
        self.perturb = perturb
        self.adan = reference().adan

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            wd = group["weight_decay"]
            lists: dict[str, list] = {k: [] for k in ("p", "g", "prev", "m", "v", "n", "maxn", "steps", "gp")}
            for p in group["params"]:
                if p.grad is None:
                    continue
                gprime = p.grad.add(p, alpha=wd) if wd != 0 else p.grad.clone()
                state = self.state.setdefault(id(p), {})
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                    state["exp_avg_delta"] = torch.zeros_like(p)
                    if group["amsgrad"]:
                        state["max_exp_avg_delta"] = torch.zeros_like(p)
                    state["prev_grad"] = gprime.clone()
                state["step"] += 1
                for key, value in (("p", p), ("g", p.grad), ("prev", state["prev_grad"]), ("m", state["exp_avg"]),
                                   ("v", state["exp_avg_sq"]), ("n", state["exp_avg_delta"]),
                                   ("steps", state["step"]), ("gp", gprime)):
                    lists[key].append(value)
                if group["amsgrad"]:
                    lists["maxn"].append(state["max_exp_avg_delta"])
            b1, b2, b3 = group["betas"]
            self.adan(lists["p"], lists["g"], lists["prev"], lists["m"], lists["v"], lists["n"], lists["maxn"],
                      lists["steps"], group["amsgrad"], b1, b2, b3, group["lr"] * self.perturb, wd, group["eps"])
            for prev, gprime in zip(lists["prev"], lists["gp"]):
                prev.copy_(gprime)

    def state_of(self, p: torch.Tensor) -> dict[str, Any]:
        return self.state.get(id(p), {})


def make_ours(case: Case, params: list[torch.Tensor]):
    return getattr(ho, case.name)(case.groups(params), **ours_options(case))


def make_ref(case: Case, params: list[torch.Tensor], perturb: float = 1.0):
    opts = ref_options(case)
    opts["lr"] = opts["lr"] * perturb
    groups = case.groups(params)
    if perturb != 1.0:
        groups[1]["lr"] = groups[1]["lr"] * perturb
    if case.name == "Adan":
        return AdanReference(groups, **opts)
    return getattr(reference(), case.name)(groups, **opts)


def ref_state(opt, p):
    if isinstance(opt, AdanReference):
        return opt.state_of(p)
    return opt.state.get(p, {})


def step_in_lockstep(case: Case, t: int, ours, ours_p: list[torch.Tensor], ref, ref_p: list[torch.Tensor]) -> None:
    """Step t of both: ours on the case's gradients, the reference on the same values in its
    parameters' dtype."""
    for p, g in zip(ours_p, case.grads(t, ours_p)):
        p.grad = g
    for q, p in zip(ref_p, ours_p):
        q.grad = None if p.grad is None else p.grad.to(q.dtype)
    ours.step()
    ref.step()


def round_reference_state_(ref, q: torch.Tensor, buffers: tuple[str, ...], state_dtype: torch.dtype,
                           param_dtype: torch.dtype) -> None:
    """The reference's per-element state of `q` rounded to `state_dtype`, as a narrower buffer
    holds it, and TAdam's W_t to the parameters' dtype (ours keeps it there)."""
    state = ref_state(ref, q)
    with torch.no_grad():
        for key in buffers:
            if isinstance(state.get(key), torch.Tensor):
                state[key].copy_(state[key].to(state_dtype))
        if q.dtype != param_dtype and isinstance(state.get("W_t"), torch.Tensor):
            state["W_t"].copy_(state["W_t"].to(param_dtype))


def run_lockstep(case: Case, dtype: torch.dtype, perturb: float = 1.0, check_grads: bool = True):
    """Runs ours and the reference on the same case; yields nothing, returns both."""
    ours_p, ref_p = case.params(dtype), case.params(dtype)
    ours, refo = make_ours(case, ours_p), make_ref(case, ref_p, perturb)
    for t in range(case.steps):
        for p, g in zip(ours_p, case.grads(t, ours_p)):
            p.grad = g
        saved = [None if p.grad is None else p.grad.clone() for p in ours_p]
        for p, g in zip(ref_p, case.grads(t, ref_p)):
            p.grad = g  # a fresh tensor: the reference's LARS writes into it (ours never does)
        ours.step()
        refo.step()
        if check_grads:
            for p, g in zip(ours_p, saved):
                assert (p.grad is None) == (g is None)
                if g is not None:
                    assert torch.equal(p.grad, g), "the optimizer wrote into p.grad"
    return ours, ours_p, refo, ref_p


def as_tensor(x: Any, like: torch.Tensor) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    return torch.tensor(float(x), dtype=torch.float64)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, what: str = "") -> None:
    actual, expected = actual.detach(), expected.detach()
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    scale = float(expected.double().abs().max()) if expected.numel() else 0.0
    atol = rtol * max(scale, 1e-6)
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


# The peer-oracle tests' tolerance (test_timm_oracle, test_paper_oracles,
# test_decoupled_weight_decay): over 25 steps, relative to the expected tensor's largest magnitude.
ORACLE_RTOL = {torch.float64: 1e-9, torch.float32: 1e-4}


def assert_close_to_oracle(ours, theirs, dtype: torch.dtype, what: str) -> None:
    """Each tensor of `ours` within ORACLE_RTOL[dtype] of `theirs`' largest magnitude."""
    for a, b in zip(ours, theirs):
        scale = b.abs().max().item() or 1.0
        assert (a.double() - b.double()).abs().max().item() <= ORACLE_RTOL[dtype] * scale, what


def assert_states_close(ours_state: dict, ref_st: dict, rtol: float, what: str = "") -> None:
    assert set(ours_state) == set(ref_st), (what, sorted(ours_state), sorted(ref_st))
    for key, expected in ref_st.items():
        actual = ours_state[key]
        if key == "step":
            assert int(actual) == int(expected), (what, key)
        elif key == "local_lr":
            assert_close(as_tensor(actual, None).reshape(()), as_tensor(expected, None).reshape(()), rtol, f"{what}/{key}")
        else:
            assert actual.dtype == expected.dtype, (what, key)
            assert_close(actual, expected, rtol, f"{what}/{key}")


def assert_same(a: Any, b: Any) -> None:
    """Bit for bit: tensors (shape, dtype, values), and dicts, lists and tuples of them."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert set(a) == set(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b
