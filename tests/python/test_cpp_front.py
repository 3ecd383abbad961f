"""The C++ classes (not only the ops Python uses) against the reference: a
small C++ program drives each class on the same random numbers as the
reference gets here, over many steps, in float64."""

import subprocess

import pytest
import torch

import holocron_optim as ho

from _harness import AdanReference
from conftest import BUILD_DIR, reference
from registry import ALGORITHMS

RUNNER = BUILD_DIR / "tests" / "cpp" / "holocron_parity_runner"
SHAPES = [(4, 3), (7,), (2, 3, 3, 3), (1,)]
STEPS = 25

# Option sets per algorithm that reach the branches the defaults don't.
VARIANTS = {name: algorithm.comparable_variants() for name, algorithm in ALGORITHMS.items()}

pytestmark = pytest.mark.skipif(not RUNNER.exists(), reason="the C++ tests are not built (make build)")


# StatePrecision's values, in its order.
_PRECISION_CODES = {"param": 0, "float32": 1, "bfloat16": 2}


def _settings(options):
    flat = []
    for key, value in options.items():
        if key == "wrapper":
            flat += [f"{k}={float(v)!r}" for k, v in value.items()]
            continue
        if key == "betas":
            flat += [f"beta{i + 1}={v!r}" for i, v in enumerate(value)]
        elif key == "scale_clip":
            flat += [f"clip_low={value[0]!r}", f"clip_high={value[1]!r}"]
        elif key == "state_precision":
            flat.append(f"state_precision={_PRECISION_CODES[value]}")
        else:
            flat.append(f"{key}={float(value)!r}")
    return flat


def _cpp_run(name, seed, options, wrapper=None):
    algo = f"{wrapper}+{name}" if wrapper else name
    out = subprocess.run([str(RUNNER), algo, str(seed), str(STEPS), *_settings(options)],
                         check=True, capture_output=True, text=True).stdout
    return [torch.tensor([float(v) for v in line.split()], dtype=torch.float64) for line in out.splitlines()]


def _reference_run(name, seed, options, wrapper=None):
    """The reference's run; with `state_precision`, its per-element state rounded to that dtype
    after each step (what a narrower buffer holds)."""
    torch.manual_seed(seed)
    params = [torch.randn(shape, dtype=torch.float64) for shape in SHAPES]
    options = dict(options)
    wrapper_options = options.pop("wrapper", {})
    round_to = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(options.pop("state_precision", "param"))
    if name == "Adan":  # the reference with prev_grad kept up to date, as ours keeps it
        opt = AdanReference([{"params": params}], **{"betas": (0.98, 0.92, 0.99), **options})
    else:
        ref_options = {k: v for k, v in options.items() if not (name == "LARS" and k == "scale_clip")}
        opt = getattr(reference(), name)(params, **ref_options)
    if wrapper:
        opt = getattr(reference(), wrapper)(opt, **wrapper_options)
    for _ in range(STEPS):
        for p in params:
            p.grad = torch.randn(p.shape, dtype=torch.float64)
        opt.step()
        if round_to is not None:
            for p in params:
                state = opt.state_of(p) if name == "Adan" else opt.state[p]
                for key in getattr(ho, name)._all_buffers:
                    if isinstance(state.get(key), torch.Tensor):
                        state[key].copy_(state[key].to(round_to))
    return [p.detach().reshape(-1) for p in params]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name,variant", [(name, k) for name, options in VARIANTS.items() for k in range(len(options))])
def test_cpp_class_matches_reference(name, variant, seed):
    options = VARIANTS[name][variant]
    for ours, expected in zip(_cpp_run(name, seed, options), _reference_run(name, seed, options), strict=True):
        scale = expected.abs().max().item() or 1.0
        assert torch.allclose(ours, expected, rtol=1e-9, atol=1e-12 * scale), (name, variant, (ours - expected).abs().max())


@pytest.mark.parametrize("precision", ["bfloat16", "float32"])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_cpp_class_with_lean_state_matches_reference(name, precision):
    """state_precision on the C++ front: float64 parameters, state rounded as the reference's is
    after each step; a run whose state were kept wider would differ far beyond the tolerance."""
    options = {**VARIANTS[name][-1], "state_precision": precision}
    ours = _cpp_run(name, 0, options)
    for a, b in zip(ours, _reference_run(name, 0, options), strict=True):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12 * (b.abs().max().item() or 1.0)), (name, (a - b).abs().max())
    if precision == "bfloat16":
        wide = _reference_run(name, 0, {**options, "state_precision": "float32"})
        assert not all(torch.allclose(a, b, rtol=1e-9, atol=0) for a, b in zip(ours, wide))


def test_cpp_front_comparison_detects_a_wrong_coefficient():
    options = dict(VARIANTS["AdaBelief"][0])
    ours = _cpp_run("AdaBelief", 0, options)
    options["lr"] *= 1.0001
    expected = _reference_run("AdaBelief", 0, options)
    assert not all(torch.allclose(a, b, rtol=1e-9, atol=0) for a, b in zip(ours, expected))


@pytest.mark.parametrize(
    "wrapper,name,sync",
    [
        ("Lookahead", "LAMB", dict(sync_rate=0.3, sync_period=4)),
        ("Lookahead", "AdaBelief", dict(sync_rate=0.7, sync_period=3)),
        ("Scout", "AdEMAMix", dict(sync_rate=0.2, sync_period=3)),
        ("Scout", "TAdam", dict(sync_rate=0.5, sync_period=5)),
    ],
)
def test_cpp_wrappers_match_reference(wrapper, name, sync):
    options = {**VARIANTS[name][0], "wrapper": sync}
    ours = _cpp_run(name, 0, options, wrapper)
    expected = _reference_run(name, 0, options, wrapper)
    for a, b in zip(ours, expected, strict=True):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12 * (b.abs().max().item() or 1.0)), (a - b).abs().max()


def test_both_fronts_have_the_same_defaults():
    """Every option of every class, with its default, read from the C++ options classes and
    from the Python constructors: a default changed on one front alone fails here."""
    import ast
    import inspect

    import holocron_optim as ho

    out = subprocess.run([str(RUNNER), "--defaults"], capture_output=True, text=True, timeout=60, check=True).stdout
    cpp = {}
    for line in out.splitlines():
        name, *fields = line.split(" ")
        cpp[name] = {key: ast.literal_eval(value) for key, value in (f.split("=", 1) for f in fields)}
    assert set(cpp) == set(ho.__all__)
    for name in ho.__all__:
        signature = inspect.signature(getattr(ho, name).__init__)
        python = {key: p.default for key, p in signature.parameters.items()
                  if key not in ("self", "params", "base_optimizer")}
        assert cpp[name] == python, name
