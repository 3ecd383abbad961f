"""The test registry: one entry per class of holocron_optim, read by every test.

Adding an algorithm to the tests is adding its `Algorithm` entry here (and its
oracle, when the reference has none); a test that needs something of every
algorithm reads it from here, never from a table of its own.
`test_registry.py` requires an entry for every name of `holocron_optim.__all__`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

import holocron_optim as ho

nan, inf = math.nan, math.inf
Options = dict[str, Any]


@dataclass(frozen=True)
class Algorithm:
    """What the tests know of one optimizer."""

    name: str
    # The file of pylocron 0.3.0's holocron/optim/ holding the class, or None.
    reference: str | None
    # arXiv identifiers the docstring must cite.
    papers: tuple[str, ...]
    # Number of coefficients in `betas` (0: no betas); whether it takes `eps`.
    betas: int
    eps: bool
    # Every option spelled out, every optional buffer and branch on.
    full: Options
    # A training setup (no lr: tests choose it) with its buffers and weight decay on.
    typical: Options
    # Option sets that, together, reach every branch of the update.
    variants: tuple[Options, ...]
    # Options that the constructor refuses (ValueError), beyond the common ones
    # (lr, eps, weight_decay, betas) that `bad_options` derives.
    refused: tuple[Options, ...]
    # (options, steps, max distance to the minimum (1, 1), max loss) on Rosenbrock's function.
    rosenbrock: tuple[Options, int, float, float]
    # random_options(rng, k): options for a parity case; k = seed % 4 cycles the switches
    # so that four seeds reach every branch.
    random_options: Callable[[random.Random, int], Options]
    # The lr that takes a step of about the same size as the others' lr takes (LARS's step is
    # lr * ||p|| / ||g|| per tensor): multiplies lr in `make`.
    lr_scale: float = 1.0
    # Named option sets, one per option value and branch (the samples of torch's generic
    # optimizer tests, test_torch_generic.py).
    samples: tuple[tuple[str, Options], ...] = ()
    # torch's generic tests: the errors of this algorithm's own options, as (what, options,
    # the message's start, whether the options are a group's rather than the constructor's);
    # the common ones (lr, eps, weight_decay, betas, scale_clip) are derived there. With
    # `torch_adam_messages`, lr, eps and betas are refused in torch.optim.Adam's words.
    errors: tuple[tuple[str, Options, str, bool], ...] = ()
    torch_adam_messages: bool = False
    # Group keys that torch's generic tests must not treat as torch.optim's flags of that name.
    not_og_supported_flags: tuple[str, ...] = ()
    # Settings kept as attributes of the optimizer (as in the reference), not group options.
    settings: tuple[str, ...] = ()
    # Options the reference accepts and ignores (a deliberate difference): a case setting them
    # cannot be compared with the reference.
    reference_ignores: tuple[str, ...] = ()
    # Options an option's values other than its default need (AdamP's wd_ratio, timm's variant).
    needs: dict[str, Options] = field(default_factory=dict)
    # Per-parameter state keys after a step with `full`.
    state_keys: frozenset[str] = field(default_factory=frozenset)

    @property
    def cls(self) -> type[torch.optim.Optimizer]:
        return getattr(ho, self.name)

    def make(self, params: Any, **options: Any) -> torch.optim.Optimizer:
        """The optimizer on `params` with `typical` options, overridden by `options`."""
        return self.cls(params, **{**self.typical, **options})

    def make_like_others(self, params: Any, lr: float, **options: Any) -> torch.optim.Optimizer:
        """`make` with lr scaled by `lr_scale`: steps about the size of the others' at `lr`."""
        return self.make(params, lr=lr * self.lr_scale, **options)

    def comparable_variants(self) -> tuple[Options, ...]:
        """The variants that the reference can run as we do."""
        return tuple(v for v in self.variants if not set(v) & set(self.reference_ignores))

    def bad_options(self) -> list[Options]:
        """Every option set the constructor must refuse with a ValueError."""
        cases: list[Options] = [{"lr": value} for value in (-1e-3, nan, inf)]
        cases += [{"weight_decay": value} for value in (nan, inf, -0.1)]
        if self.eps:
            cases += [{"eps": value} for value in (-1.0, nan, inf)]
        n = self.betas
        if n:
            for value in (1.0, 1.5, -0.1, nan, inf):
                for i in range(n):
                    betas = [0.9] * n
                    betas[i] = value
                    cases.append({"betas": tuple(betas)})
            cases.append({"betas": (0.9,) * (5 - n)})  # 2 betas for a 3-beta optimizer and vice versa
            cases.append({"betas": (0.9,)})
        return cases + list(self.refused)


def _lr_wd(rng: random.Random) -> tuple[float, float]:
    wd = rng.choice([0.0, 1e-2, 0.1])
    lr = rng.choice([1e-2, 3e-2, 5e-3])
    return lr, wd


def _adam_draw(rng: random.Random) -> tuple[float, float, tuple[float, float], float]:
    lr, wd = _lr_wd(rng)
    betas = rng.choice([(0.9, 0.999), (0.8, 0.99), (0.5, 0.9)])
    eps = rng.choice([1e-8, 1e-6])
    return lr, wd, betas, eps


def _lars_random(rng: random.Random, k: int) -> Options:
    lr, wd = _lr_wd(rng)
    momentum, nesterov, dampening = [(0.0, False, 0.0), (0.9, True, 0.0), (0.9, False, 0.1), (0.5, False, 0.0)][k]
    return {"lr": lr, "momentum": momentum, "dampening": dampening, "weight_decay": wd, "nesterov": nesterov}


def _lamb_random(rng: random.Random, k: int) -> Options:
    lr, wd, betas, eps = _adam_draw(rng)
    return {"lr": lr, "betas": betas, "eps": eps, "weight_decay": wd,
            "scale_clip": [None, (0.0, 10.0), (0.5, 2.0), (0.0, 1.0)][k]}


def _ralars_random(rng: random.Random, k: int) -> Options:
    return {**_lamb_random(rng, k), "force_adaptive_momentum": k in (1, 2)}


def _tadam_random(rng: random.Random, k: int) -> Options:
    lr, wd, betas, eps = _adam_draw(rng)
    return {"lr": lr, "betas": betas, "eps": eps, "weight_decay": wd, "amsgrad": k % 2 == 1,
            "dof": [None, 1.0, 5.0, None][k]}


def _adabelief_random(rng: random.Random, k: int) -> Options:
    lr, wd, betas, eps = _adam_draw(rng)
    return {"lr": lr, "betas": betas, "eps": eps, "weight_decay": wd, "amsgrad": k % 2 == 1}


def _adamp_random(rng: random.Random, k: int) -> Options:
    return {**_adabelief_random(rng, k), "delta": [0.1, 1.0, 10.0, 0.1][k]}


def _adan_random(rng: random.Random, k: int) -> Options:
    lr, wd, _, eps = _adam_draw(rng)
    return {"lr": lr, "betas": rng.choice([(0.98, 0.92, 0.99), (0.9, 0.8, 0.95)]), "eps": eps,
            "weight_decay": wd, "amsgrad": k % 2 == 0}


def _ademamix_random(rng: random.Random, k: int) -> Options:
    lr, wd, _, eps = _adam_draw(rng)
    return {"lr": lr, "betas": rng.choice([(0.9, 0.999, 0.9999), (0.8, 0.99, 0.995)]),
            "alpha": [5.0, 2.0, 0.0, 5.0][k], "eps": eps, "weight_decay": wd}


# torch.optim.Adam's flags, in the groups of AdaBelief and AdamP (subclasses of it).
_ADAM_FLAGS = ("amsgrad", "maximize", "foreach", "capturable", "differentiable", "fused", "decoupled_weight_decay")
_ADAM_KEYS = frozenset({"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"})

ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (
    Algorithm(
        name="LARS", reference="lars", papers=("1708.03888",), betas=0, eps=True,
        # timm's options at the defaults that give the reference's numbers (variants switch them).
        full={"lr": 0.05, "momentum": 0.9, "dampening": 0.0, "weight_decay": 0.01, "nesterov": True,
              "trust_coeff": 1.0, "eps": 0.0, "trust_clip": False, "always_adapt": True, "trust_on_gradient": False},
        typical={"momentum": 0.9, "weight_decay": 0.01, "scale_clip": (0.0, 5.0)},
        variants=(dict(lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=True),
                  dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.0),
                  dict(lr=0.1, scale_clip=(0.5, 2.0)),
                  dict(lr=0.1, momentum=0.8, dampening=0.1),
                  # timm's Lars and apex's LARC.
                  dict(lr=1.0, momentum=0.9, weight_decay=0.01, trust_coeff=0.02, eps=1e-8, trust_clip=True,
                       trust_on_gradient=True),
                  dict(lr=0.1, momentum=0.9, weight_decay=0.0, trust_coeff=0.5, eps=1e-3, always_adapt=False,
                       trust_on_gradient=True)),
        refused=({"nesterov": True}, {"nesterov": True, "momentum": 0.9, "dampening": 0.1},
                 {"momentum": -0.1}, {"momentum": nan}, {"dampening": nan},
                 {"scale_clip": (2.0, 1.0)}, {"scale_clip": (1.0,)},
                 {"trust_coeff": -1.0}, {"trust_coeff": nan}, {"trust_coeff": inf}),
        rosenbrock=({"lr": 1e-3, "momentum": 0.5}, 1000, 0.4, 0.03),
        samples=(
            ("default", {}),
            ("lr", {"lr": 0.01}),
            ("momentum", {"momentum": 0.9}),
            ("momentum_dampening", {"momentum": 0.9, "dampening": 0.5}),
            ("nesterov", {"momentum": 0.9, "nesterov": True}),
            ("weight_decay", {"weight_decay": 0.1}),
            ("weight_decay_momentum", {"weight_decay": 0.1, "momentum": 0.9}),
            ("scale_clip", {"scale_clip": (0.0, 1.0)}),
            ("scale_clip_unbounded", {"scale_clip": (0.5, inf)}),
            ("tensor_lr", {"lr": torch.tensor(0.01)}),
            ("trust_coeff_eps", {"trust_coeff": 0.02, "eps": 1e-8}),
            ("larc", {"trust_clip": True, "trust_coeff": 0.02}),
            ("no_always_adapt", {"always_adapt": False}),
            ("trust_on_gradient", {"trust_on_gradient": True, "momentum": 0.9}),
        ),
        errors=(
            ("momentum negative", {"momentum": -0.1}, "LARS: invalid momentum value: -0.1", False),
            ("momentum nan", {"momentum": nan}, "Invalid momentum value: nan", False),
            ("momentum inf", {"momentum": inf}, "Invalid momentum value: inf", False),
            ("dampening nan", {"dampening": nan}, "Invalid dampening value: nan", False),
            ("nesterov without momentum", {"nesterov": True},
             "LARS: Nesterov momentum requires a momentum and zero dampening", False),
            ("nesterov with dampening", {"nesterov": True, "momentum": 0.9, "dampening": 0.1},
             "LARS: Nesterov momentum requires a momentum and zero dampening", False),
            ("group nesterov without momentum", {"nesterov": True}, "LARS: Nesterov momentum requires", True),
            ("group momentum negative", {"momentum": -1.0}, "LARS: invalid momentum value: -1", True),
            ("trust_coeff negative", {"trust_coeff": -1.0}, "LARS: invalid trust_coeff value: -1", False),
            ("group trust_coeff negative", {"trust_coeff": -1.0}, "LARS: invalid trust_coeff value: -1", True),
        ),
        not_og_supported_flags=("nesterov",),
        random_options=_lars_random, settings=("scale_clip",), lr_scale=0.1,
        reference_ignores=("scale_clip", "trust_coeff", "eps", "trust_clip", "always_adapt", "trust_on_gradient"),
        state_keys=frozenset({"momentum_buffer"}),
    ),
    Algorithm(
        name="LAMB", reference="lamb", papers=("1904.00962",), betas=2, eps=True,
        # timm's options at the defaults that give the reference's numbers (variants switch them).
        full={"lr": 0.05, "betas": (0.8, 0.99), "eps": 1e-8, "weight_decay": 0.01, "scale_clip": None,
              "bias_correction": False, "grad_averaging": True, "max_grad_norm": None, "trust_clip": False,
              "always_adapt": True, "decoupled_weight_decay": False, "caution": False,
              "corrected_weight_decay": False, "max_lr": None},
        typical={"weight_decay": 0.01},
        variants=(dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1),
                  dict(lr=0.02, eps=1e-6, scale_clip=(0.5, 2.0)),
                  dict(lr=1e-2, scale_clip=(0.0, 1.0)),
                  # timm's and apex's options: clipping that bites (the tests' gradients have norms
                  # of about 5 to 200; dividing by more than 10 leaves float16 second moments
                  # subnormal), bias correction, no grad averaging, LAMBC.
                  dict(lr=0.02, weight_decay=0.05, scale_clip=(0.0, inf), bias_correction=True,
                       grad_averaging=False, max_grad_norm=20.0, trust_clip=True, always_adapt=False),
                  dict(lr=0.01, weight_decay=0.0, bias_correction=True, max_grad_norm=100.0, always_adapt=False),
                  dict(lr=0.02, weight_decay=0.1, decoupled_weight_decay=True, bias_correction=True),
                  dict(lr=0.01, weight_decay=0.05, caution=True, bias_correction=True),
                  dict(lr=0.01, weight_decay=0.05, caution=True, decoupled_weight_decay=True, trust_clip=True),
                  # A schedule's lr below its peak.
                  dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, corrected_weight_decay=True,
                       max_lr=0.04, bias_correction=True)),
        refused=({"scale_clip": (2.0, 1.0)}, {"scale_clip": (0.0, nan)}, {"max_grad_norm": 0.0},
                 {"max_grad_norm": -1.0}, {"max_grad_norm": nan}, {"max_grad_norm": inf}, {"max_lr": 0.0},
                 {"max_lr": nan}),
        rosenbrock=({"lr": 1e-2}, 400, 0.05, 0.01),
        samples=(
            ("default", {}),
            ("lr", {"lr": 0.01}),
            ("betas", {"betas": (0.8, 0.99)}),
            ("betas_zero", {"betas": (0.0, 0.0)}),
            ("eps", {"eps": 1e-6}),
            ("weight_decay", {"weight_decay": 0.1}),
            ("scale_clip", {"scale_clip": (0.5, 2.0)}),
            ("tensor_lr", {"lr": torch.tensor(0.01)}),
            ("bias_correction", {"bias_correction": True}),
            ("no_grad_averaging", {"grad_averaging": False}),
            ("max_grad_norm", {"max_grad_norm": 0.1}),
            ("trust_clip", {"trust_clip": True}),
            ("no_always_adapt", {"always_adapt": False, "weight_decay": 0.0}),
            ("decoupled_weight_decay", {"decoupled_weight_decay": True, "weight_decay": 0.1}),
        ),
        errors=(
            ("max_grad_norm zero", {"max_grad_norm": 0.0}, "LAMB: invalid max_grad_norm value", False),
            ("group max_grad_norm negative", {"max_grad_norm": -1.0}, "LAMB: invalid max_grad_norm value", True),
        ),
        reference_ignores=("bias_correction", "grad_averaging", "max_grad_norm", "trust_clip", "always_adapt",
                           "decoupled_weight_decay", "caution", "corrected_weight_decay", "max_lr"),
        random_options=_lamb_random, settings=("scale_clip",),
        state_keys=frozenset({"step", "exp_avg", "exp_avg_sq", "local_lr"}),
    ),
    Algorithm(
        name="RaLars", reference="ralars", papers=("1908.03265", "1708.03888"), betas=2, eps=True,
        full={"lr": 0.05, "betas": (0.8, 0.99), "eps": 1e-8, "weight_decay": 0.01, "scale_clip": None,
              "force_adaptive_momentum": True},
        # beta2 = 0.9 reaches the rectified update on the 5th step.
        typical={"betas": (0.9, 0.9), "weight_decay": 0.01},
        variants=(dict(lr=0.01, betas=(0.9, 0.9), weight_decay=0.05),
                  dict(lr=0.01, force_adaptive_momentum=True, scale_clip=(0.1, 3.0)),
                  dict(lr=1e-2, betas=(0.9, 0.9), force_adaptive_momentum=True),
                  dict(lr=1e-2, betas=(0.9, 0.5))),
        refused=({"scale_clip": (-1.0, 1.0)},),
        rosenbrock=({"lr": 1e-2}, 400, 0.05, 0.01),
        samples=(
            ("default", {}),
            ("lr", {"lr": 0.01}),
            ("force_adaptive_momentum", {"force_adaptive_momentum": True}),
            # sma_inf = 19: the rectified branch from the 5th step on
            ("rectified_early", {"betas": (0.9, 0.9)}),
            ("rectified_early_forced", {"betas": (0.9, 0.9), "force_adaptive_momentum": True}),
            ("eps", {"eps": 1e-6}),
            ("weight_decay", {"weight_decay": 0.1}),
            ("scale_clip", {"scale_clip": (0.0, 1.0)}),
            ("tensor_lr", {"lr": torch.tensor(0.01)}),
        ),
        not_og_supported_flags=("sma_inf",),  # a group key the reference adds on the first step
        random_options=_ralars_random, settings=("scale_clip", "force_adaptive_momentum"),
        state_keys=frozenset({"step", "exp_avg", "exp_avg_sq", "local_lr"}),
    ),
    Algorithm(
        name="TAdam", reference="tadam", papers=("2003.00179",), betas=2, eps=True,
        full={"lr": 0.05, "betas": (0.8, 0.99), "eps": 1e-8, "weight_decay": 0.01, "amsgrad": True, "dof": None},
        typical={"amsgrad": True, "weight_decay": 0.01},
        variants=(dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1, amsgrad=True),
                  dict(lr=0.02, dof=3.5)),
        refused=({"dof": nan}, {"dof": -1.0}),
        rosenbrock=({"lr": 0.2}, 1000, 0.3, 0.02),
        samples=(
            ("default", {}),
            ("lr", {"lr": 0.01}),
            ("amsgrad", {"amsgrad": True}),
            ("dof", {"dof": 2.0}),
            ("betas", {"betas": (0.8, 0.99)}),
            ("weight_decay", {"weight_decay": 0.1}),
            ("weight_decay_amsgrad", {"weight_decay": 0.1, "amsgrad": True}),
            ("tensor_lr", {"lr": torch.tensor(0.01)}),
        ),
        errors=(
            ("dof negative", {"dof": -1.0}, "TAdam: invalid dof value: -1", False),
            # 0 makes a step whose gradient equals the mean NaN (the reference accepts it)
            ("dof zero", {"dof": 0.0}, "TAdam: invalid dof value: 0", False),
            ("group dof zero", {"dof": 0.0}, "TAdam: invalid dof value: 0", True),
            ("dof nan", {"dof": nan}, "Invalid dof value: nan", False),
            ("dof inf", {"dof": inf}, "Invalid dof value: inf", False),
            ("group dof negative", {"dof": -2.0}, "TAdam: invalid dof value: -2", True),
        ),
        not_og_supported_flags=("amsgrad",),
        random_options=_tadam_random,
        state_keys=_ADAM_KEYS | {"W_t"},
    ),
    Algorithm(
        name="AdaBelief", reference="adabelief", papers=("2010.07468",), betas=2, eps=True,
        # timm's options at the defaults that give the reference's numbers (variants switch them).
        full={"lr": 0.05, "betas": (0.8, 0.99), "eps": 1e-8, "weight_decay": 0.01, "amsgrad": True,
              "rectify": False, "degenerated_to_sgd": True, "fixed_decay": False, "eps_in_variance": False},
        typical={"amsgrad": True, "weight_decay": 0.01},
        variants=(dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1, amsgrad=True),
                  dict(lr=0.02, eps=1e-6),
                  # timm's AdaBelief (beta2 = 0.9: the rectified step from the 5th step on).
                  dict(lr=0.01, betas=(0.9, 0.9), eps=1e-6, weight_decay=0.05, amsgrad=True, rectify=True,
                       eps_in_variance=True, decoupled_weight_decay=True),
                  dict(lr=0.01, betas=(0.9, 0.99), weight_decay=0.01, rectify=True, degenerated_to_sgd=False,
                       decoupled_weight_decay=True, fixed_decay=True)),
        refused=({"fixed_decay": True},),
        rosenbrock=({"lr": 0.2}, 600, 0.1, 0.005),
        samples=(
            ("default", {}),
            ("lr", {"lr": 0.01}),
            ("amsgrad", {"amsgrad": True}),
            ("betas", {"betas": (0.8, 0.99)}),
            ("eps", {"eps": 1e-6}),
            ("weight_decay", {"weight_decay": 0.1}),
            ("weight_decay_amsgrad", {"weight_decay": 0.1, "amsgrad": True}),
            ("tensor_lr", {"lr": torch.tensor(0.01)}),
            ("rectify", {"rectify": True, "betas": (0.9, 0.9)}),
            # No step before rho_t reaches 5 (the 6th step at the earliest): only the decay moves p.
            ("rectify_no_sgd", {"rectify": True, "degenerated_to_sgd": False, "decoupled_weight_decay": True,
                                "weight_decay": 0.05}),
            ("eps_in_variance", {"eps_in_variance": True, "eps": 1e-3}),
            ("fixed_decay", {"fixed_decay": True, "decoupled_weight_decay": True, "weight_decay": 0.05}),
        ),
        errors=(
            ("fixed_decay coupled", {"fixed_decay": True}, "AdaBelief: fixed_decay=True", False),
            ("group fixed_decay coupled", {"fixed_decay": True}, "AdaBelief: fixed_decay=True", True),
        ),
        reference_ignores=("rectify", "degenerated_to_sgd", "fixed_decay", "eps_in_variance"),
        # fixed_decay, newer than decoupled_weight_decay, leaves an older checkpoint with it.
        torch_adam_messages=True, not_og_supported_flags=(*_ADAM_FLAGS, "fixed_decay"),
        random_options=_adabelief_random,
        state_keys=_ADAM_KEYS,
    ),
    Algorithm(
        name="AdamP", reference="adamp", papers=("2006.08217",), betas=2, eps=True,
        # timm's options at the defaults that give the reference's numbers (variants switch them).
        full={"lr": 0.05, "betas": (0.8, 0.99), "eps": 1e-8, "weight_decay": 0.01, "amsgrad": True, "delta": 1.0,
              "nesterov": False, "wd_ratio": 1.0, "channel_projection": False, "caution": False},
        # delta = 1 projects the updates of some parameters, not all.
        typical={"delta": 1.0, "weight_decay": 0.01},
        variants=(dict(lr=0.01, weight_decay=0.1, delta=0.5),
                  dict(lr=0.02, amsgrad=True, delta=2.0),
                  dict(lr=1e-2, weight_decay=0.01, amsgrad=True, delta=10.0),
                  dict(lr=1e-2, delta=0.1),
                  # timm's AdamP, and Nesterov on the flattened projection.
                  dict(lr=1e-2, weight_decay=0.05, delta=2.0, decoupled_weight_decay=True, channel_projection=True,
                       wd_ratio=0.1, nesterov=True),
                  dict(lr=1e-2, weight_decay=0.01, amsgrad=True, delta=10.0, channel_projection=True),
                  dict(lr=1e-2, weight_decay=0.01, delta=2.0, nesterov=True),
                  dict(lr=1e-2, weight_decay=0.01, amsgrad=True, delta=2.0, caution=True),
                  dict(lr=1e-2, weight_decay=0.05, delta=5.0, caution=True, nesterov=True, channel_projection=True,
                       decoupled_weight_decay=True, wd_ratio=0.1)),
        refused=({"delta": nan}, {"wd_ratio": 0.1}, {"wd_ratio": -1.0}, {"wd_ratio": nan}),
        rosenbrock=({"lr": 0.2}, 1000, 0.05, 0.001),
        samples=(
            ("default", {}),
            ("lr", {"lr": 0.01}),
            ("amsgrad", {"amsgrad": True}),
            ("betas", {"betas": (0.8, 0.99)}),
            ("eps", {"eps": 1e-6}),
            ("weight_decay", {"weight_decay": 0.1}),
            ("weight_decay_amsgrad", {"weight_decay": 0.1, "amsgrad": True}),
            ("tensor_lr", {"lr": torch.tensor(0.01)}),
            ("delta_large", {"delta": 5.0}),  # the projection on every step
            ("delta_zero", {"delta": 0.0}),
            ("delta_negative", {"delta": -1.0}),  # never projects
            ("nesterov", {"nesterov": True}),
            ("channel_projection", {"channel_projection": True, "delta": 5.0}),
            ("timm", {"channel_projection": True, "delta": 5.0, "decoupled_weight_decay": True, "wd_ratio": 0.1,
                      "weight_decay": 0.05}),
            ("caution", {"caution": True}),
        ),
        errors=(
            ("delta nan", {"delta": nan}, "Invalid delta value: nan", False),
            ("delta inf", {"delta": inf}, "Invalid delta value: inf", False),
            ("wd_ratio alone", {"wd_ratio": 0.1}, "AdamP: wd_ratio=0.1", False),
            ("group wd_ratio alone", {"wd_ratio": 0.1}, "AdamP: wd_ratio=0.1", True),
            ("wd_ratio negative", {"wd_ratio": -1.0}, "Invalid wd_ratio value: -1", False),
        ),
        reference_ignores=("nesterov", "wd_ratio", "channel_projection", "caution"),
        needs={"wd_ratio": {"channel_projection": True, "decoupled_weight_decay": True}},
        # wd_ratio, newer than decoupled_weight_decay, leaves an older checkpoint with it.
        torch_adam_messages=True, not_og_supported_flags=(*_ADAM_FLAGS, "wd_ratio"),
        random_options=_adamp_random, settings=("delta",),
        state_keys=_ADAM_KEYS,
    ),
    Algorithm(
        name="Adan", reference="adan", papers=("2208.06677",), betas=3, eps=True,
        # The authors' options at the defaults that give the reference's numbers (variants switch them).
        full={"lr": 0.05, "betas": (0.9, 0.8, 0.95), "eps": 1e-8, "weight_decay": 0.01, "amsgrad": True,
              "decoupled_weight_decay": False, "no_prox": False, "max_grad_norm": None, "caution": False},
        typical={"amsgrad": True, "weight_decay": 0.01},
        variants=(dict(lr=0.01, weight_decay=0.05),
                  dict(lr=0.02, betas=(0.9, 0.9, 0.95), amsgrad=True),
                  dict(lr=0.01, weight_decay=0.05, decoupled_weight_decay=True, max_grad_norm=2.0),
                  dict(lr=0.01, weight_decay=0.05, no_prox=True, amsgrad=True),
                  dict(lr=0.01, weight_decay=0.05, decoupled_weight_decay=True, no_prox=True, max_grad_norm=50.0),
                  dict(lr=0.01, weight_decay=0.05, caution=True, amsgrad=True),
                  dict(lr=0.01, decoupled_weight_decay=True, caution=True, max_grad_norm=1.0)),
        refused=({"max_grad_norm": 0.0}, {"max_grad_norm": -1.0}, {"max_grad_norm": nan}, {"max_grad_norm": inf}),
        rosenbrock=({"lr": 0.1}, 600, 0.05, 0.001),
        samples=(
            ("default", {}),
            ("lr", {"lr": 0.01}),
            ("amsgrad", {"amsgrad": True}),
            ("betas", {"betas": (0.9, 0.9, 0.9)}),
            ("eps", {"eps": 1e-6}),
            ("weight_decay", {"weight_decay": 0.02}),
            ("weight_decay_amsgrad", {"weight_decay": 0.02, "amsgrad": True}),
            ("tensor_lr", {"lr": torch.tensor(0.01)}),
            ("decoupled_weight_decay", {"decoupled_weight_decay": True, "weight_decay": 0.02}),
            ("no_prox", {"no_prox": True, "weight_decay": 0.02}),
            ("max_grad_norm", {"max_grad_norm": 0.1}),
            ("caution", {"caution": True}),
        ),
        errors=(
            ("max_grad_norm zero", {"max_grad_norm": 0.0}, "Adan: invalid max_grad_norm value", False),
            ("group max_grad_norm negative", {"max_grad_norm": -1.0}, "Adan: invalid max_grad_norm value", True),
        ),
        reference_ignores=("decoupled_weight_decay", "no_prox", "max_grad_norm", "caution"),
        not_og_supported_flags=("amsgrad",),
        random_options=_adan_random,
        state_keys=frozenset({"step", "exp_avg", "exp_avg_sq", "exp_avg_delta", "max_exp_avg_delta", "prev_grad"}),
    ),
    Algorithm(
        name="AdEMAMix", reference="ademamix", papers=("2409.03137",), betas=3, eps=True,
        # The paper's warm-ups off, as the reference (variants switch them on).
        full={"lr": 0.05, "betas": (0.8, 0.99, 0.995), "alpha": 2.0, "eps": 1e-8, "weight_decay": 0.01,
              "t_alpha": None, "t_beta3": None, "caution": False},
        typical={"weight_decay": 0.01},
        variants=(dict(lr=0.01, weight_decay=0.1, alpha=3.0),
                  dict(lr=0.02, betas=(0.8, 0.99, 0.999)),
                  dict(lr=1e-2, alpha=2.0),
                  dict(lr=1e-2, alpha=4.0, t_alpha=6.0, t_beta3=9.0, weight_decay=0.01),
                  dict(lr=1e-2, betas=(0.5, 0.9, 0.99), t_beta3=2.0),
                  dict(lr=1e-2, weight_decay=0.05, caution=True)),
        refused=({"alpha": nan}, {"alpha": inf}, {"t_alpha": 0.0}, {"t_beta3": -1.0}, {"t_alpha": inf},
                 {"t_beta3": 10.0, "betas": (0.0, 0.999, 0.9999)}),
        rosenbrock=({"lr": 0.1, "alpha": 1.0, "betas": (0.9, 0.999, 0.99)}, 600, 0.05, 0.001),
        samples=(
            ("default", {}),
            ("lr", {"lr": 0.01}),
            ("alpha_zero", {"alpha": 0.0}),
            ("alpha", {"alpha": 8.0}),
            ("betas", {"betas": (0.8, 0.9, 0.99)}),
            ("eps", {"eps": 1e-6}),
            ("weight_decay", {"weight_decay": 0.1}),
            ("tensor_lr", {"lr": torch.tensor(0.01)}),
            ("warm_ups", {"t_alpha": 3, "t_beta3": 4}),
            ("caution", {"caution": True}),
        ),
        errors=(
            ("alpha nan", {"alpha": nan}, "Invalid alpha value: nan", False),
            ("alpha inf", {"alpha": inf}, "Invalid alpha value: inf", False),
            ("t_alpha zero", {"t_alpha": 0}, "AdEMAMix: invalid t_alpha value", False),
            ("group t_beta3 negative", {"t_beta3": -2.0}, "AdEMAMix: invalid t_beta3 value", True),
        ),
        reference_ignores=("t_alpha", "t_beta3", "caution"),
        random_options=_ademamix_random,
        state_keys=frozenset({"step", "exp_avg", "exp_avg_slow", "exp_avg_sq"}),
    ),
)}

# torch.optim's maximize, which all eight take (test_maximize.py holds it to descending on -g):
# spelled out in `full` at its default, a sample for torch's generic tests, and not comparable
# with the reference, which lacks it.
ALGORITHMS = {name: replace(
    a, full={**a.full, "maximize": False}, samples=(*a.samples, ("maximize", {"maximize": True})),
    reference_ignores=(*a.reference_ignores, "maximize"),
    not_og_supported_flags=tuple(f for f in a.not_og_supported_flags if f != "maximize"),
) for name, a in ALGORITHMS.items()}

# torch.optim's decoupled_weight_decay, which all eight take (test_decoupled_weight_decay.py holds
# it to decaying the weights, then the reference's step without weight decay): the same, and a
# variant that reaches the decoupled branches, where an entry has none of its own.
ALGORITHMS = {name: replace(
    a, full={**a.full, "decoupled_weight_decay": False},
    variants=a.variants if any(v.get("decoupled_weight_decay") for v in a.variants) else (
        *a.variants, {**a.typical, "lr": 0.01, "weight_decay": 0.05, "decoupled_weight_decay": True}),
    samples=a.samples if any(n == "decoupled_weight_decay" for n, _ in a.samples) else (
        *a.samples, ("decoupled_weight_decay", {"decoupled_weight_decay": True, "weight_decay": 0.05})),
    reference_ignores=tuple(dict.fromkeys((*a.reference_ignores, "decoupled_weight_decay"))),
) for name, a in ALGORITHMS.items()}

# state_precision, which all eight take (test_state_precision.py holds it to the reference with its
# state rounded): spelled out in `full` at its default, bfloat16 state as a sample for torch's
# generic tests, a refused value, and not given to the reference, which lacks it.
ALGORITHMS = {name: replace(
    a, full={**a.full, "state_precision": "param"},
    samples=(*a.samples, ("state_precision bfloat16", {"state_precision": "bfloat16"})),
    errors=(*a.errors, ("state_precision float16", {"state_precision": "float16"},
                        f"{name}: state_precision must be one of", False)),
    reference_ignores=(*a.reference_ignores, "state_precision"),
) for name, a in ALGORITHMS.items()}

# kahan_summation, which all eight take (test_kahan.py holds it to the reference on compensated
# weights, and checks its refusals: a non-bool is a TypeError, which `errors` does not hold): in
# `full` at its default and as a sample; the reference lacks it.
ALGORITHMS = {name: replace(
    a, full={**a.full, "kahan_summation": False},
    samples=(*a.samples, ("kahan_summation", {**a.typical, "kahan_summation": True})),
    reference_ignores=(*a.reference_ignores, "kahan_summation"),
) for name, a in ALGORITHMS.items()}

ALGOS = tuple(ALGORITHMS)


@dataclass(frozen=True)
class Wrapper:
    """A wrapper of holocron_optim, around one of the algorithms above."""

    name: str
    reference: str | None
    papers: tuple[str, ...]
    # The base it wraps in the tests' factories, and its own options there.
    base: str
    typical: Options

    @property
    def cls(self) -> type:
        return getattr(ho, self.name)

    @property
    def label(self) -> str:
        return f"{self.name}({self.base})"

    def make(self, params: Any, lr: float, base: str | None = None, **options: Any) -> Any:
        inner = ALGORITHMS[base or self.base].make(params, lr=lr)
        return self.cls(inner, **{**self.typical, **options})


WRAPPERS: dict[str, Wrapper] = {w.name: w for w in (
    Wrapper(name="Lookahead", reference="wrapper", papers=("1907.08610",), base="LAMB", typical={"sync_period": 3}),
    # Scout has no paper of its own (Holocron's variant of Lookahead): its docstring cites Lookahead's.
    Wrapper(name="Scout", reference="wrapper", papers=("1907.08610",), base="AdaBelief", typical={"sync_period": 3}),
)}


def factories(lr: float, wrappers: bool = True) -> dict[str, Callable[[Any], Any]]:
    """Name -> `make(params)` at `lr` for every algorithm (typical options), then each wrapper
    around its base: the list of optimizers a test runs over."""
    out: dict[str, Callable[[Any], Any]] = {
        name: (lambda params, a=algorithm: a.make(params, lr=lr)) for name, algorithm in ALGORITHMS.items()
    }
    if wrappers:
        for wrapper in WRAPPERS.values():
            out[wrapper.label] = lambda params, w=wrapper: w.make(params, lr=lr)
    return out


def papers(name: str) -> tuple[str, ...]:
    entry = ALGORITHMS.get(name) or WRAPPERS[name]
    return entry.papers
