"""State of another dtype than its parameter's (issue 17): float32 or bfloat16 state, lean or
mixed precision, through every update op, on every backend.

The oracle needs no second implementation: a state stored as S and loaded into the math type is
exactly the math-type state holding S's values, so a step with S state equals a step with state
(and parameters) in the math type whose results are then rounded to S (and the parameter's dtype).
Run over several steps, that emulation and the lean run must agree bit for bit."""

import pytest
import torch

import holocron_optim  # noqa: F401 (registers torch.ops.holocron)

ops = torch.ops.holocron
SHAPES = [(3, 37), (17,), (), (5, 4, 3), (300,), (16500,)]  # the last spans two chunks
STEPS = 4


def _math_dtype(dtype):
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


# Per case: its op, its state lists (one tensor per parameter, the parameter's shape) and its
# other arguments at step k (1-based) for n parameters; every branch that keeps state is on, and
# the passes that read state besides the update (the cautious mask's count, AdamP's rows).
CASES = {
    "lars_": ("lars_", ["momentum_buffers"],
              lambda n, k: dict(buffer_is_new=[k == 1] * n, lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.01,
                                nesterov=True, scale_clip=[0.0, 5.0])),
    "lamb_": ("lamb_", ["exp_avgs", "exp_avg_sqs"],
              lambda n, k: dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, clip_low=0.0,
                                clip_high=10.0)),
    "ralars_": ("ralars_", ["exp_avgs", "exp_avg_sqs"],
                lambda n, k: dict(steps=[k] * n, lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01,
                                  force_adaptive_momentum=True, clip_low=0.0, clip_high=10.0, sma_inf=None)),
    "tadam_": ("tadam_", ["exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"],
               lambda n, k: dict(steps=[k] * n, lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01,
                                 amsgrad=True, dof=None)),
    "adabelief_": ("adabelief_", ["exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"],
                   lambda n, k: dict(steps=[k] * n, lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01,
                                     amsgrad=True)),
    "adamp_": ("adamp_", ["exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"],
               lambda n, k: dict(steps=[k] * n, lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01,
                                 amsgrad=True, delta=0.1)),
    "adan_": ("adan_", ["prev_grads", "exp_avgs", "exp_avg_sqs", "exp_avg_deltas", "max_exp_avg_deltas"],
              lambda n, k: dict(steps=[k] * n, lr=0.01, beta1=0.98, beta2=0.92, beta3=0.99, eps=1e-8,
                                weight_decay=0.01, amsgrad=True)),
    "ademamix_": ("ademamix_", ["exp_avgs", "exp_avgs_slow", "exp_avg_sqs"],
                  lambda n, k: dict(steps=[k] * n, lr=0.01, beta1=0.9, beta2=0.999, beta3=0.9999, alpha=5.0,
                                    eps=1e-8, weight_decay=0.01)),
    "adamp_channels": ("adamp_", ["exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"],
                       lambda n, k: dict(steps=[k] * n, lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01,
                                         amsgrad=True, delta=0.1, channel_projection=True, decoupled_weight_decay=True,
                                         wd_ratio=0.1, nesterov=True)),
    "adan_caution": ("adan_", ["prev_grads", "exp_avgs", "exp_avg_sqs", "exp_avg_deltas", "max_exp_avg_deltas"],
                     lambda n, k: dict(steps=[k] * n, lr=0.01, beta1=0.98, beta2=0.92, beta3=0.99, eps=1e-8,
                                       weight_decay=0.01, amsgrad=True, caution=True)),
    "lamb_caution": ("lamb_", ["exp_avgs", "exp_avg_sqs"],
                     lambda n, k: dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, clip_low=0.0,
                                       clip_high=10.0, caution=True)),
}

# (parameter dtype, state dtype): lean state of float32 and float64 parameters, mixed-precision
# state of half and bfloat16 ones, and bfloat16 state of bfloat16 parameters (no change: a
# control of the oracle itself).
PAIRS = [(torch.float32, torch.bfloat16), (torch.float64, torch.float32), (torch.float64, torch.bfloat16),
         (torch.bfloat16, torch.float32), (torch.float16, torch.float32), (torch.float16, torch.bfloat16),
         (torch.bfloat16, torch.bfloat16)]


def _run(name, params, grads, state, state_dtype, param_dtype):
    """STEPS steps of `name` in place; after each, parameters and state are rounded through
    param_dtype and state_dtype (no-ops unless emulating)."""
    op, keys, kwargs_at = CASES[name]
    extra = {}
    if op == "tadam_":
        extra["W_ts"] = [torch.full((1,), 9.0, dtype=p.dtype) for p in params]
    for k in range(1, STEPS + 1):
        ops_kwargs = {key: state[key] for key in keys}
        getattr(ops, op)(params, grads[k - 1], **ops_kwargs, **extra, **kwargs_at(len(params), k))
        for p in params:
            p.copy_(p.to(param_dtype))
        for key in keys:
            for t in state[key]:
                t.copy_(t.to(state_dtype))
        for w in extra.get("W_ts", []):
            w.copy_(w.to(param_dtype))
    return params, state


@pytest.mark.parametrize("pair", PAIRS, ids=lambda pair: f"{pair[0]}-{pair[1]}".replace("torch.", ""))
@pytest.mark.parametrize("name", sorted(CASES))
def test_state_of_another_dtype_is_the_math_type_state_rounded(name, pair, backend):
    param_dtype, state_dtype = pair
    math = _math_dtype(param_dtype)
    torch.manual_seed(len(name) * 31 + PAIRS.index(pair))
    start = [torch.randn(s, dtype=torch.float64).to(param_dtype) for s in SHAPES]
    grads = [[torch.randn(s, dtype=torch.float64).to(param_dtype) for s in SHAPES] for _ in range(STEPS)]
    _, keys, _ = CASES[name]
    for capability in ops.available_cpu_capabilities():
        backend(capability)
        lean_params = [p.clone() for p in start]
        lean_state = {key: [torch.zeros(s, dtype=state_dtype) for s in SHAPES] for key in keys}
        _run(name, lean_params, grads, lean_state, state_dtype, param_dtype)

        emulated_params = [p.to(math) for p in start]
        emulated_state = {key: [torch.zeros(s, dtype=math) for s in SHAPES] for key in keys}
        _run(name, emulated_params, [[g.to(math) for g in step] for step in grads], emulated_state, state_dtype,
             param_dtype)

        for got, expected in zip(lean_params, emulated_params):
            assert got.dtype == param_dtype
            torch.testing.assert_close(got, expected.to(param_dtype), rtol=0, atol=0, msg=capability)
        for key in keys:
            for got, expected in zip(lean_state[key], emulated_state[key]):
                assert got.dtype == state_dtype
                torch.testing.assert_close(got, expected.to(state_dtype), rtol=0, atol=0,
                                           msg=f"{capability}: {key}")


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_group_may_mix_state_dtypes(name, backend):
    """Tensors with float32, bfloat16 and their own dtype's state in one call: each as if alone."""
    op, keys, kwargs_at = CASES[name]
    torch.manual_seed(7)
    params = [torch.randn(s) for s in SHAPES[:3]]
    grads = [torch.randn_like(p) for p in params]
    dtypes = [torch.bfloat16, torch.float32, torch.bfloat16]
    extra = {"W_ts": [torch.full((1,), 9.0) for _ in params]} if op == "tadam_" else {}
    together = [p.clone() for p in params]
    state = {key: [torch.zeros_like(p, dtype=d) for p, d in zip(params, dtypes)] for key in keys}
    getattr(ops, op)(together, grads, **state, **extra, **kwargs_at(len(params), 1))
    for i, p in enumerate(params):
        alone = [p.clone()]
        alone_state = {key: [torch.zeros_like(p, dtype=dtypes[i])] for key in keys}
        alone_extra = {"W_ts": [torch.full((1,), 9.0)]} if op == "tadam_" else {}
        getattr(ops, op)(alone, [grads[i]], **alone_state, **alone_extra, **kwargs_at(1, 1))
        assert torch.equal(together[i], alone[0])
        for key in keys:
            assert torch.equal(state[key][i], alone_state[key][0])


def test_state_of_another_dtype_must_be_float32_or_bfloat16():
    p = [torch.randn(4)]
    g = [torch.randn(4)]
    before = p[0].clone()
    with pytest.raises(RuntimeError, match=r"exp_avgs\[0\] has dtype Half but its parameter has dtype Float "
                                           r"\(state may also be float32 or bfloat16, or uint8 codes"):
        ops.adabelief_(p, g, exp_avgs=[torch.zeros(4, dtype=torch.float16)], exp_avg_sqs=[torch.zeros(4)],
                       max_exp_avg_sqs=[], steps=[1], lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                       amsgrad=False)
    assert torch.equal(p[0], before)
    with pytest.raises(RuntimeError, match="gradients\\[0\\] has dtype BFloat16 but its parameter has dtype Float$"):
        ops.adabelief_(p, [g[0].bfloat16()], exp_avgs=[torch.zeros(4)], exp_avg_sqs=[torch.zeros(4)],
                       max_exp_avg_sqs=[], steps=[1], lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                       amsgrad=False)


def test_mixed_dtype_groups_unscale_every_gradient(backend):
    """A group of float32 and bfloat16 parameters (run by the kernels as one call per dtype) reads
    every gradient unscaled by GradScaler's scale."""
    torch.manual_seed(3)
    params = [torch.randn(40), torch.randn(40).bfloat16()]
    grads = [torch.randn(40), torch.randn(40).bfloat16()]
    scale = torch.tensor(1024.0)
    for capability in ops.available_cpu_capabilities():
        backend(capability)
        scaled = [p.clone() for p in params]
        ops.adan_(scaled, [g * scale for g in grads], prev_grads=[torch.zeros_like(p) for p in params],
                  exp_avgs=[torch.zeros_like(p) for p in params], exp_avg_sqs=[torch.zeros_like(p) for p in params],
                  exp_avg_deltas=[torch.zeros_like(p) for p in params], max_exp_avg_deltas=[], steps=[1, 1], lr=0.01,
                  beta1=0.98, beta2=0.92, beta3=0.99, eps=1e-8, weight_decay=0.0, amsgrad=False, grad_scale=scale)
        plain = [p.clone() for p in params]
        ops.adan_(plain, grads, prev_grads=[torch.zeros_like(p) for p in params],
                  exp_avgs=[torch.zeros_like(p) for p in params], exp_avg_sqs=[torch.zeros_like(p) for p in params],
                  exp_avg_deltas=[torch.zeros_like(p) for p in params], max_exp_avg_deltas=[], steps=[1, 1], lr=0.01,
                  beta1=0.98, beta2=0.92, beta3=0.99, eps=1e-8, weight_decay=0.0, amsgrad=False)
        for got, expected in zip(scaled, plain):
            assert torch.equal(got, expected), capability


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("change", ["parameters", "buffer"])
def test_the_classes_still_refuse_state_of_another_dtype(groups, change):
    """The classes make state in the parameter's dtype (they have no state_precision yet), so a
    buffer or parameter of another dtype is refused before anything is written, whether the
    buffer was replaced or the parameters converted in place (Module.half())."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    params = list(model.parameters())
    split = [{"params": params[:2]}, {"params": params[2:]}] if groups == 2 else params
    opt = holocron_optim.AdaBelief(split, lr=0.01)
    for _ in range(2):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    if change == "parameters":
        model.double()
    else:
        opt.state[params[0]]["exp_avg"] = opt.state[params[0]]["exp_avg"].bfloat16()
    for p in params:
        p.grad = torch.randn_like(p)
    before = [p.clone() for p in params]
    with pytest.raises(RuntimeError, match="has dtype"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(params, before))
