"""The fused CPU kernels against the reference (ATen) backend, across the
instruction-set builds this CPU runs and across thread counts.

The reference backend is itself checked against pylocron in test_parity.py;
here every algorithm, dtype and option branch runs through both backends on
shapes that cross the kernels' vector tails and chunk boundaries."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import holocron_optim as ho
from registry import ALGORITHMS

OPS = torch.ops.holocron
CAPABILITIES = [c for c in OPS.available_cpu_capabilities() if c != "reference"]
CHUNK = 1 << 14
# 0-d, a single element, vector tails, two chunks and a tail (so a parallel
# region with several chunks per tensor), a conv weight.
SHAPES = [(), (1,), (7,), (33,), (2 * CHUNK + 37,), (3, 5, 17), (16, 3, 3, 3)]
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
RTOL = {torch.float64: 1e-11, torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}

OPTIONS = {name: algorithm.variants for name, algorithm in ALGORITHMS.items()}
CASES = [(name, k) for name, opts in OPTIONS.items() for k in range(len(opts))]


@pytest.fixture(autouse=True)
def restore_backend():
    capability, threads = OPS.cpu_capability(), torch.get_num_threads()
    yield
    OPS.set_cpu_capability(capability)
    torch.set_num_threads(threads)


def _run(name: str, options: dict, dtype: torch.dtype, capability: str, threads: int = 2, steps: int = 5,
         shapes=SHAPES, wrap: str | None = None, memory_format=None):
    """Parameters and optimizer state after `steps` steps with the given backend."""
    OPS.set_cpu_capability(capability)
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(7)
    params = []
    for shape in shapes:
        p = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
        if memory_format is not None and p.dim() == 4:
            p = p.contiguous(memory_format=memory_format)
        params.append(p.requires_grad_())
    groups = [{"params": params[:3]}, {"params": params[3:], "lr": options["lr"] * 0.5}]
    opt = getattr(ho, name)(groups, **options)
    if wrap is not None:
        opt = getattr(ho, wrap)(opt, sync_rate=0.3, sync_period=2)
    for step in range(steps):
        for i, p in enumerate(params):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            grad = (0.3 * p.detach().double() + noise).to(dtype)
            if memory_format is not None and grad.dim() == 4:
                grad = grad.contiguous(memory_format=memory_format)
            # A parameter without a gradient now and then.
            p.grad = None if (i == 1 and step % 2 == 1) else grad
        opt.step()
    state = opt.state_dict()["state"] if wrap is None else opt.base_optimizer.state_dict()["state"]
    buffers = [t.clone() for s in state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    return [p.detach().clone() for p in params], buffers


def _assert_close(actual, expected, rtol, what):
    for i, (a, e) in enumerate(zip(actual, expected)):
        if a.dtype in (torch.bfloat16, torch.float16):
            # Reduced precision: the reference backend keeps its moments in
            # float between ops, the fused kernels re-read them as stored, so
            # elements whose second moment is (sub)normal-rounded differ; the
            # tensor as a whole must not.
            error = float((a.double() - e.double()).norm()) / max(float(e.double().norm()), 1e-12)
            assert error < rtol, f"{what}[{i}]: relative L2 error {error:.3g} >= {rtol}"
            continue
        scale = max(float(e.double().abs().max()) if e.numel() else 0.0, 1e-6)
        torch.testing.assert_close(a.double(), e.double(), rtol=rtol, atol=rtol * scale, msg=lambda m: f"{what}[{i}]: {m}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name,k", CASES)
def test_fused_matches_reference_backend(name, k, dtype):
    expected = _run(name, OPTIONS[name][k], dtype, "reference")
    actual = _run(name, OPTIONS[name][k], dtype, "auto")
    _assert_close(actual[0], expected[0], RTOL[dtype], "params")
    _assert_close(actual[1], expected[1], RTOL[dtype], "state")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
# Cautious updates are left out: their mask flips wherever m * g rounds to the other sign in half
# precision, a step of the whole rescaled momentum there (their fused and reference paths are
# compared in every dtype above).
@pytest.mark.parametrize("name,k", [(name, k) for name, k in CASES if not OPTIONS[name][k].get("caution")])
def test_reduced_precision_follows_the_float32_path(name, k, dtype):
    wide = _run(name, OPTIONS[name][k], torch.float32, "auto")
    narrow = _run(name, OPTIONS[name][k], dtype, "auto")
    # Over the whole model: a 0-d parameter whose gradient rounds to the other
    # sign in half precision may move the other way, as it would in any
    # implementation with half-precision gradients.
    flat = [torch.cat([p.double().flatten() for p in params]) for params in (narrow[0], wide[0])]
    _assert_close([flat[0].to(dtype)], [flat[1]], RTOL[dtype] * 2, "params")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(OPTIONS))
def test_bitwise_across_threads_and_instruction_sets(name, dtype):
    options = OPTIONS[name][0]
    base = _run(name, options, dtype, CAPABILITIES[0], threads=1)
    runs = [(c, t) for c in CAPABILITIES for t in (1, 2, 4)][1:]
    for capability, threads in runs:
        params, state = _run(name, options, dtype, capability, threads=threads)
        for a, b in zip(params + state, base[0] + base[1]):
            assert torch.equal(a, b), f"{name} {dtype}: {capability} with {threads} threads differs"


@pytest.mark.parametrize("wrap", ["Lookahead", "Scout"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_wrappers_fused_match_reference_and_are_bitwise_stable(wrap, dtype):
    options = OPTIONS["AdaBelief"][1]
    expected = _run("AdaBelief", options, dtype, "reference", wrap=wrap, steps=7)
    actual = _run("AdaBelief", options, dtype, "auto", wrap=wrap, steps=7)
    _assert_close(actual[0], expected[0], RTOL[dtype], f"{wrap} params")
    for capability in CAPABILITIES:
        for threads in (1, 4):
            again = _run("AdaBelief", options, dtype, capability, threads=threads, wrap=wrap, steps=7)
            assert all(torch.equal(a, b) for a, b in zip(again[0], actual[0])), (capability, threads)


def test_scout_coherence_fused_equals_reference():
    gen = torch.Generator().manual_seed(3)
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        wide = torch.float32 if dtype == torch.bfloat16 else dtype
        shapes = [(5,), (2 * CHUNK + 3,), (4, 4)]
        fast = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
        stats = {k: [torch.zeros(s, dtype=wide) for s in shapes] for k in ("mean", "m2", "max", "min")}
        prev = [f.clone() for f in fast]
        # The second tensor's first half never moves: 0/0 there, left out of the coherence (unlike the
        # reference, whose NaN resets every fast weight).
        results = {}
        for backend in ("reference", "auto"):
            OPS.set_cpu_capability(backend)
            f = [t.clone() for t in fast]
            pv = [t.clone() for t in prev]
            st = {k: [t.clone() for t in v] for k, v in stats.items()}
            for count in range(4):
                for t in f:
                    t.add_(torch.randn(t.shape, generator=torch.Generator().manual_seed(count)).to(dtype))
                f[1][: CHUNK].copy_(pv[1][: CHUNK])
                OPS.scout_accumulate_(f, pv, st["mean"], st["m2"], st["max"], st["min"], count)
            results[backend] = OPS.scout_coherence(pv, st["mean"], st["m2"], st["max"], st["min"], 4)
        assert results["auto"] == pytest.approx(results["reference"], rel=1e-6), dtype


def test_dense_non_contiguous_parameters_take_the_fused_path():
    # channels_last weights are dense: the fused kernels take them in memory order. LAMB's
    # norms are then summed in another order than a contiguous tensor's, which can move
    # their last bit (with betas (0.8, 0.99) on these shapes it does); with these options
    # they agree, so a difference here would be the reference backend's (~1e-7 away).
    shapes = [(16, 3, 3, 3), (8, 4, 5, 5)]
    options = dict(lr=1e-2, weight_decay=0.01)
    contiguous = _run("LAMB", options, torch.float32, "auto", shapes=shapes)
    channels_last = _run("LAMB", options, torch.float32, "auto", shapes=shapes, memory_format=torch.channels_last)
    for a, b in zip(contiguous[0], channels_last[0]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["AdaBelief", "Adan", "AdEMAMix"])
def test_channels_last_gives_the_bits_of_contiguous_without_whole_tensor_sums(name):
    shapes = [(16, 3, 3, 3), (8, 4, 5, 5)]
    for options in OPTIONS[name]:
        contiguous = _run(name, options, torch.float32, "auto", shapes=shapes)
        channels_last = _run(name, options, torch.float32, "auto", shapes=shapes, memory_format=torch.channels_last)
        for a, b in zip(contiguous[0] + contiguous[1], channels_last[0] + channels_last[1]):
            assert torch.equal(a, b), options


def test_strided_parameters_fall_back_to_the_reference_backend():
    base = torch.randn(6, 8, dtype=torch.float64)
    p_view = base.t().requires_grad_()  # not contiguous, still dense
    p_sliced = torch.randn(6, 16, dtype=torch.float64)[:, ::2].requires_grad_()  # not dense
    q_view = p_view.detach().contiguous().requires_grad_()
    q_sliced = p_sliced.detach().contiguous().requires_grad_()
    grads = [torch.randn(8, 6, dtype=torch.float64), torch.randn(6, 8, dtype=torch.float64)]
    for params in ([p_view, p_sliced], [q_view, q_sliced]):
        opt = ho.AdamP(params, lr=1e-2, weight_decay=0.1)
        for _ in range(3):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
    torch.testing.assert_close(p_view.detach(), q_view.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(p_sliced.detach(), q_sliced.detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["LAMB", "AdamP", "AdEMAMix"])
def test_groups_mixing_dtypes_run_fused_per_dtype(name):
    # Tensors of several dtypes in one group: each dtype's tensors run through
    # their own kernel; per-tensor results (trust ratios, sums) stay in place.
    results = {}
    for backend in ("reference", "auto"):
        OPS.set_cpu_capability(backend)
        gen = torch.Generator().manual_seed(2)
        dtypes = [torch.float64, torch.float32, torch.float64, torch.bfloat16, torch.float32]
        params = [torch.randn(50 + 300 * i, generator=gen, dtype=torch.float64).to(d).requires_grad_()
                  for i, d in enumerate(dtypes)]
        opt = getattr(ho, name)(params, **OPTIONS[name][0])
        for _ in range(3):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
            opt.step()
        results[backend] = [p.detach().clone() for p in params]
    for fused, ref in zip(results["auto"], results["reference"]):
        _assert_close([fused], [ref], RTOL[fused.dtype], f"{name} {fused.dtype}")


def test_steps_bump_version_counters_as_in_place_ops_do():
    p = torch.randn(100, requires_grad=True)
    p.grad = torch.randn(100)
    opt = ho.LAMB([p])
    before = p._version
    opt.step()
    assert p._version > before
    assert opt.state[p]["exp_avg"]._version > 0


def test_capability_selection():
    available = OPS.available_cpu_capabilities()
    assert "reference" in available and "default" in available
    with pytest.raises((ValueError, RuntimeError), match="unknown CPU capability 'sse9'"):
        OPS.set_cpu_capability("sse9")
    for name in available:
        OPS.set_cpu_capability(name)
        assert OPS.cpu_capability() == name


def test_environment_override():
    code = "import torch, holocron_optim; print(torch.ops.holocron.cpu_capability())"
    for value in ("default", "reference"):
        env = dict(os.environ, HOLOCRON_OPTIM_CPU_CAPABILITY=value)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == value


def test_a_tensor_listed_twice_in_an_op_is_updated_twice_in_order():
    # The classes refuse a parameter listed twice; the ops take such lists (the functional API's
    # callers): the fused kernels must not race on them.
    results = {}
    for backend in ("reference", "auto"):
        OPS.set_cpu_capability(backend)
        torch.set_num_threads(2)
        p = torch.linspace(-1, 1, 3 * CHUNK, dtype=torch.float64)
        m, v = torch.zeros_like(p), torch.zeros_like(p)
        for step in range(1, 4):
            g = torch.cos(p * 3)
            OPS.lamb_([p, p], [g, g], exp_avgs=[m, m], exp_avg_sqs=[v, v], steps=[step, step], lr=1e-2,
                      beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.0, clip_low=0.0, clip_high=10.0,
                      bias_correction=True, grad_averaging=True, trust_clip=False, always_adapt=False)
        results[backend] = p.clone()
    torch.testing.assert_close(results["auto"], results["reference"], rtol=1e-11, atol=1e-12)


def test_ops_under_grad_mode_keep_atens_in_place_checks():
    p = torch.randn(10, dtype=torch.float64, requires_grad=True)
    g, m, v = torch.randn(10, dtype=torch.float64), torch.zeros(10, dtype=torch.float64), torch.zeros(10, dtype=torch.float64)
    before = p.detach().clone()
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        OPS.adabelief_([p], [g], [m], [v], [], [1], 1e-2, 0.9, 0.999, 1e-8, 0.0, False)
    assert torch.equal(p.detach(), before)
    with torch.no_grad():
        OPS.adabelief_([p], [g], [m], [v], [], [1], 1e-2, 0.9, 0.999, 1e-8, 0.0, False)
    assert not torch.equal(p.detach(), before)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_a_failed_single_group_step_changes_nothing(name):
    # One group: the op's own checks run after Python gathered the state; what
    # Python added for the step (new states, buffers, RaLars' sma_inf) is taken back.
    params = [torch.randn(5, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    opt = getattr(ho, name)(params, **OPTIONS[name][0])
    group_before = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
    for p in params:
        p.grad = torch.randn(5, dtype=torch.float64)
    params[-1].grad.data = params[-1].grad.data.float()  # `.data` bypasses the setter's check
    with pytest.raises(RuntimeError):
        opt.step()
    assert len(opt.state) == 0
    assert {k: v for k, v in opt.param_groups[0].items() if k != "params"} == group_before
    if "amsgrad" in opt.param_groups[0]:
        # A buffer added to states that already exist is taken back too.
        params[-1].grad = torch.randn(5, dtype=torch.float64)
        opt.param_groups[0]["amsgrad"] = False
        opt.step()
        keys = {p: set(opt.state[p]) for p in params}
        opt.param_groups[0]["amsgrad"] = True
        params[-1].grad.data = params[-1].grad.data.float()
        with pytest.raises(RuntimeError):
            opt.step()
        assert {p: set(opt.state[p]) for p in params} == keys
