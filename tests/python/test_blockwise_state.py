"""8-bit block-wise state (issue 17) through every update op, on every backend.

The oracle is the format's definition and float32 state: a step with 8-bit state must equal, bit
for bit, the step with float32 state holding the decoded values, whose new state is then encoded
(`quantize_blockwise` on the reference backend, the ATen definition). Which state is signed is
written here independently of the library (first moments and momentum signed, second moments
and their maxima unsigned; Adan's previous gradient is never coded), so a list given the wrong
map fails."""

import pytest
import torch

import holocron_optim  # noqa: F401 (registers torch.ops.holocron)

ops = torch.ops.holocron
# One element, a partial block, two blocks, a 3-D tensor, two chunks with a partial last block.
SHAPES = [(), (3, 37), (300,), (5, 4, 13), (16500,)]
STEPS = 4

# Per case: its op, its state lists with their map (True: signed; None: kept float32), and its
# other arguments at step k (1-based) for n parameters; every branch that keeps state is on.
CASES = {
    "lars_": ("lars_", {"momentum_buffers": True},
              lambda n, k: dict(buffer_is_new=[k == 1] * n, lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.01,
                                nesterov=True, scale_clip=[0.0, 5.0])),
    "lamb_": ("lamb_", {"exp_avgs": True, "exp_avg_sqs": False},
              lambda n, k: dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, clip_low=0.0,
                                clip_high=10.0)),
    "lamb_caution": ("lamb_", {"exp_avgs": True, "exp_avg_sqs": False},
                     lambda n, k: dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, clip_low=0.0,
                                       clip_high=10.0, caution=True)),
    "ralars_": ("ralars_", {"exp_avgs": True, "exp_avg_sqs": False},
                lambda n, k: dict(steps=[k] * n, lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01,
                                  force_adaptive_momentum=True, clip_low=0.0, clip_high=10.0, sma_inf=None)),
    "tadam_": ("tadam_", {"exp_avgs": True, "exp_avg_sqs": False, "max_exp_avg_sqs": False},
               lambda n, k: dict(steps=[k] * n, lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01,
                                 amsgrad=True, dof=None)),
    "adabelief_": ("adabelief_", {"exp_avgs": True, "exp_avg_sqs": False, "max_exp_avg_sqs": False},
                   lambda n, k: dict(steps=[k] * n, lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01,
                                     amsgrad=True)),
    "adabelief_rectify": ("adabelief_", {"exp_avgs": True, "exp_avg_sqs": False, "max_exp_avg_sqs": False},
                          lambda n, k: dict(steps=[k + 5] * n, lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8,
                                            weight_decay=0.01, amsgrad=True, rectify=True,
                                            decoupled_weight_decay=True)),
    "adamp_": ("adamp_", {"exp_avgs": True, "exp_avg_sqs": False, "max_exp_avg_sqs": False},
               lambda n, k: dict(steps=[k] * n, lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01,
                                 amsgrad=True, delta=0.1)),
    "adamp_channels": ("adamp_", {"exp_avgs": True, "exp_avg_sqs": False, "max_exp_avg_sqs": False},
                       lambda n, k: dict(steps=[k] * n, lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01,
                                         amsgrad=True, delta=0.1, channel_projection=True, decoupled_weight_decay=True,
                                         wd_ratio=0.1, nesterov=True)),
    "adan_": ("adan_", {"prev_grads": None, "exp_avgs": True, "exp_avg_sqs": True, "exp_avg_deltas": False,
                        "max_exp_avg_deltas": False},
              lambda n, k: dict(steps=[k] * n, lr=0.01, beta1=0.98, beta2=0.92, beta3=0.99, eps=1e-8,
                                weight_decay=0.01, amsgrad=True)),
    "adan_caution": ("adan_", {"prev_grads": None, "exp_avgs": True, "exp_avg_sqs": True, "exp_avg_deltas": False,
                               "max_exp_avg_deltas": False},
                     lambda n, k: dict(steps=[k] * n, lr=0.01, beta1=0.98, beta2=0.92, beta3=0.99, eps=1e-8,
                                       weight_decay=0.01, amsgrad=True, caution=True)),
    "ademamix_": ("ademamix_", {"exp_avgs": True, "exp_avgs_slow": True, "exp_avg_sqs": False},
                  lambda n, k: dict(steps=[k] * n, lr=0.01, beta1=0.9, beta2=0.999, beta3=0.9999, alpha=5.0,
                                    eps=1e-8, weight_decay=0.01, caution=True)),
}
PARAM_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def _math(dtype):
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def _encode(values, signed):
    """The definition's codes and scales (the ATen path)."""
    before = ops.cpu_capability()
    ops.set_cpu_capability("reference")
    try:
        return ops.quantize_blockwise(values, signed)
    finally:
        ops.set_cpu_capability(before)


def _decode(codes, absmax, signed):
    before = ops.cpu_capability()
    ops.set_cpu_capability("reference")
    try:
        return ops.dequantize_blockwise(codes, absmax, signed)
    finally:
        ops.set_cpu_capability(before)


def _step(name, params, grads, state, absmax, k, extra):
    op, maps, kwargs_at = CASES[name]
    absmax_list = [a for key in maps for a in absmax.get(key, [])]
    getattr(ops, op)(params, grads, **state, **extra, **kwargs_at(len(params), k),
                     **({"state_absmax": absmax_list} if absmax_list else {}))


def _first_state(name, shapes, seed):
    """Nonzero moments to start from (second moments positive), so that every block has a scale."""
    _, maps, _ = CASES[name]
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, signed in maps.items():
        values = [torch.randn(s, generator=gen, dtype=torch.float64).float() * 0.1 for s in shapes]
        state[key] = values if signed in (True, None) else [v.abs() for v in values]
    return state


@pytest.mark.parametrize("param_dtype", PARAM_DTYPES, ids=str)
@pytest.mark.parametrize("name", sorted(CASES))
def test_8bit_state_is_float32_state_decoded_then_encoded(name, param_dtype, backend):
    op, maps, _ = CASES[name]
    math = _math(param_dtype)
    seed = len(name) * 31 + PARAM_DTYPES.index(param_dtype)
    torch.manual_seed(seed)
    start = [torch.randn(s, dtype=torch.float64).to(param_dtype) for s in SHAPES]
    grads = [[torch.randn(s, dtype=torch.float64).to(param_dtype) for s in SHAPES] for _ in range(STEPS)]
    first = _first_state(name, SHAPES, seed)
    capabilities = ops.available_cpu_capabilities()
    results = {}
    for capability in capabilities:
        backend(capability)
        params = [p.clone() for p in start]
        state, absmax = {}, {}
        for key, signed in maps.items():
            if signed is None:
                state[key] = [v.clone() for v in first[key]]
                continue
            coded = [_encode(v, signed) for v in first[key]]
            state[key] = [c for c, _ in coded]
            absmax[key] = [a for _, a in coded]
        extra = {"W_ts": [torch.full((1,), 9.0, dtype=param_dtype) for _ in params]} if op == "tadam_" else {}
        for k in range(1, STEPS + 1):
            # TAdam's W_t: this step's, in the math type (the emulation's new one is not compared).
            emulated_extra = {"W_ts": [w.to(math, copy=True) for w in extra["W_ts"]]} if extra else {}
            # The oracle: this step from the decoded state in float32 (parameters in the math type).
            decoded = {key: [t.clone() if maps[key] is None else _decode(t, a, maps[key])
                             for t, a in zip(state[key], absmax.get(key, state[key]))] for key in maps}
            expected_params = [p.to(math, copy=True) for p in params]
            # Float64 parameters with 8-bit state have no fused build, and AdamP's per-channel rows do
            # not start on the blocks: they take the ATen path.
            backend("reference" if param_dtype == torch.float64 or name == "adamp_channels" else capability)
            _step(name, expected_params, [g.to(math) for g in grads[k - 1]], decoded, {}, k, emulated_extra)
            backend(capability)
            _step(name, params, grads[k - 1], state, absmax, k, extra)

            for got, expected in zip(params, expected_params):
                assert got.dtype == param_dtype
                torch.testing.assert_close(got, expected.to(param_dtype), rtol=0, atol=0,
                                           msg=lambda m: f"{capability}, step {k}: {m}")
            for key, signed in maps.items():
                for i, expected in enumerate(decoded[key]):
                    if signed is None:
                        assert state[key][i].dtype == torch.float32
                        assert torch.equal(state[key][i], expected), f"{capability}, step {k}: {key}[{i}]"
                        continue
                    codes, scales = _encode(expected, signed)
                    assert state[key][i].dtype == torch.uint8
                    assert torch.equal(absmax[key][i], scales), f"{capability}, step {k}: {key}[{i}] scales"
                    assert torch.equal(state[key][i], codes), f"{capability}, step {k}: {key}[{i}] codes"
        results[capability] = [p.clone() for p in params]
    # Every instruction set: the same bits. The ATen path rounds its float32 math differently
    # (as it does with float32 state), so it is held to float32 closeness.
    fused = [c for c in capabilities if c != "reference"]
    for capability in fused[1:]:
        for got, expected in zip(results[capability], results[fused[0]]):
            assert torch.equal(got, expected), capability
    for got, expected in zip(results["reference"], results[fused[0]]):
        reduced = param_dtype in (torch.float16, torch.bfloat16)
        torch.testing.assert_close(got, expected, rtol=2**-7 if reduced else 1e-4, atol=1e-3 if reduced else 1e-5)


@pytest.mark.parametrize("name", ["lamb_", "adan_", "adabelief_"])
def test_a_group_mixes_codes_with_float32_and_bfloat16_state(name, backend):
    """Tensors with codes, float32 and bfloat16 state in one call: each as if alone."""
    op, maps, kwargs_at = CASES[name]
    torch.manual_seed(11)
    shapes = [(600,), (7, 9), (300,), (40,)]
    kinds = ["8bit", torch.float32, "8bit", torch.bfloat16]
    params = [torch.randn(s) for s in shapes]
    grads = [torch.randn_like(p) for p in params]
    extra_of = (lambda n: {"W_ts": [torch.full((1,), 9.0) for _ in range(n)]}) if op == "tadam_" else (lambda n: {})

    def state_for(indices):
        state, absmax = {}, {}
        for key, signed in maps.items():
            state[key], absmax[key] = [], []
            for i in indices:
                if kinds[i] == "8bit" and signed is not None:
                    codes, scales = _encode(torch.zeros(shapes[i]), signed)
                    state[key].append(codes)
                    absmax[key].append(scales)
                else:
                    dtype = torch.float32 if kinds[i] == "8bit" else kinds[i]
                    state[key].append(torch.zeros(shapes[i], dtype=dtype))
        return state, absmax

    for capability in ["auto", "reference"]:
        backend(capability)
        together = [p.clone() for p in params]
        state, absmax = state_for(range(len(params)))
        _step(name, together, grads, state, absmax, 1, extra_of(len(params)))
        for i in range(len(params)):
            alone = [params[i].clone()]
            alone_state, alone_absmax = state_for([i])
            _step(name, alone, [grads[i]], alone_state, alone_absmax, 1, extra_of(1))
            assert torch.equal(together[i], alone[0]), (capability, i)
            for key in maps:
                assert torch.equal(state[key][i], alone_state[key][0]), (capability, key, i)
            for key in absmax:
                position = sum(1 for j in range(i) if kinds[j] == "8bit")
                if kinds[i] == "8bit" and maps[key] is not None:
                    assert torch.equal(absmax[key][position], alone_absmax[key][0]), (capability, key, i)


def _lamb_call(params, exp_avgs, exp_avg_sqs, **kwargs):
    return ops.lamb_(params, [torch.ones_like(p) for p in params], exp_avgs=exp_avgs, exp_avg_sqs=exp_avg_sqs,
                     lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, clip_low=0.0, clip_high=10.0,
                     **kwargs)


@pytest.mark.parametrize("damage, message", [
    ("missing", r"exp_avgs\[0\] holds 8-bit codes \(uint8\) but state_absmax has 0 scale tensors"),
    ("extra", r"got 3 state_absmax tensors for 2 uint8 state tensors"),
    ("short", r"the scales of exp_avg_sqs\[0\] \(state_absmax\[1\]: Float \[1\]\) must be a contiguous float32 "
              r"tensor of 2 elements"),
    ("double", r"the scales of exp_avgs\[0\] \(state_absmax\[0\]: Double \[2\]\) must be"),
    ("strided", r"the 8-bit codes exp_avg_sqs\[0\] must be contiguous"),
    ("shape", r"exp_avgs\[0\] has shape \[300\] but its parameter has shape \[3, 100\]"),
])
def test_damaged_8bit_state_is_refused_with_nothing_changed(damage, message, fused_or_reference):
    p = [torch.randn(3, 100)]
    m, m_scales = _encode(torch.randn(3, 100), True)
    v, v_scales = _encode(torch.rand(3, 100), False)
    absmax = [m_scales, v_scales]
    if damage == "missing":
        absmax = None
    elif damage == "extra":
        absmax = absmax + [v_scales.clone()]
    elif damage == "short":
        absmax = [m_scales, v_scales[:1].clone()]
    elif damage == "double":
        absmax = [m_scales.double(), v_scales]
    elif damage == "strided":
        v = v.t().contiguous().t()
    elif damage == "shape":
        m = m.reshape(300)
    before = [t.clone() for t in (p[0], m, v, m_scales, v_scales)]
    with pytest.raises(RuntimeError, match=message):
        _lamb_call(p, [m], [v], **({} if absmax is None else {"state_absmax": absmax}))
    for got, expected in zip((p[0], m, v, m_scales, v_scales), before):
        assert torch.equal(got, expected)


def test_codes_are_taken_only_where_the_algorithm_keeps_moments():
    """Adan's previous gradient is not a moment: uint8 there is refused, naming the rule."""
    p = [torch.randn(300)]
    codes, scales = _encode(torch.randn(300), True)
    zeros = [torch.zeros(300)]
    with pytest.raises(RuntimeError, match=r"prev_grads\[0\] has dtype Byte but its parameter has dtype Float "
                                           r"\(state may also be float32 or bfloat16, or uint8 codes"):
        ops.adan_(p, [torch.randn(300)], prev_grads=[codes], exp_avgs=zeros, exp_avg_sqs=[torch.zeros(300)],
                  exp_avg_deltas=[torch.zeros(300)], max_exp_avg_deltas=[], steps=[1], lr=0.01, beta1=0.98,
                  beta2=0.92, beta3=0.99, eps=1e-8, weight_decay=0.0, amsgrad=False)
    # With its scales given, they are one more than the codes the lists that take codes hold.
    with pytest.raises(RuntimeError, match=r"Adan: got 1 state_absmax tensors for 0 uint8 state tensors"):
        ops.adan_(p, [torch.randn(300)], prev_grads=[codes], exp_avgs=zeros, exp_avg_sqs=[torch.zeros(300)],
                  exp_avg_deltas=[torch.zeros(300)], max_exp_avg_deltas=[], steps=[1], lr=0.01, beta1=0.98,
                  beta2=0.92, beta3=0.99, eps=1e-8, weight_decay=0.0, amsgrad=False, state_absmax=[scales])


def test_a_moment_that_overflows_poisons_its_block(fused_or_reference):
    """An inf gradient makes the moments of its block inf: the block's scale becomes NaN and the
    whole block decodes to NaN, while the other blocks keep their numbers."""
    p = [torch.randn(600)]
    g = torch.randn(600)
    g[3] = float("inf")
    m, m_scales = _encode(torch.zeros(600), True)
    v, v_scales = _encode(torch.zeros(600), False)
    ops.lamb_(p, [g], exp_avgs=[m], exp_avg_sqs=[v], lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
              clip_low=0.0, clip_high=10.0, state_absmax=[m_scales, v_scales])
    assert torch.isnan(m_scales[0]) and torch.isnan(v_scales[0])
    assert torch.isfinite(m_scales[1:]).all() and torch.isfinite(v_scales[1:]).all()
    assert torch.isnan(_decode(m, m_scales, True)[:256]).all()
    assert torch.isfinite(_decode(m, m_scales, True)[256:]).all()


# ---- The classes: state_precision="8bit" ------------------------------------------------------

import copy  # noqa: E402
import io  # noqa: E402

import holocron_optim as ho  # noqa: E402
from registry import ALGORITHMS  # noqa: E402

# The buffers each class keeps as codes under "8bit" and their maps, written here from the
# algorithms' definitions (a first moment or momentum is signed; Adan's exp_avg_sq is the
# moment of gradient differences, signed; second moments and their maxima are unsigned).
CODED = {
    "LARS": {"momentum_buffer": True},
    "LAMB": {"exp_avg": True, "exp_avg_sq": False},
    "RaLars": {"exp_avg": True, "exp_avg_sq": False},
    "TAdam": {"exp_avg": True, "exp_avg_sq": False, "max_exp_avg_sq": False},
    "AdaBelief": {"exp_avg": True, "exp_avg_sq": False, "max_exp_avg_sq": False},
    "AdamP": {"exp_avg": True, "exp_avg_sq": False, "max_exp_avg_sq": False},
    "Adan": {"exp_avg": True, "exp_avg_sq": True, "exp_avg_delta": False, "max_exp_avg_delta": False},
    "AdEMAMix": {"exp_avg": True, "exp_avg_slow": True, "exp_avg_sq": False},
}
# A conv weight and a linear weight large enough for codes (>= 4096 elements), a small one and a
# bias that keep float32, and one whose last block is partial.
CLASS_SHAPES = [(64, 16, 3, 3), (130, 40), (30, 20), (130,), (4100,)]


def _class_run(name, precision, steps, seed=0, round_coded=False, dtype=torch.float32, **extra):
    """`steps` steps of class `name` (its `full` options, two groups) on CLASS_SHAPES, gradients
    that depend on the weights. With round_coded, after each step each buffer that "8bit" would
    keep as codes is replaced by its decoded codes (the emulation of 8-bit state)."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen).to(dtype).requires_grad_() for s in CLASS_SHAPES]
    noise = [[torch.randn(s, generator=gen).to(dtype) for s in CLASS_SHAPES] for _ in range(steps)]
    options = {**ALGORITHMS[name].full, "lr": 1e-2, "state_precision": precision, **extra}
    opt = getattr(ho, name)([{"params": params[:2]}, {"params": params[2:], "weight_decay": 0.0}], **options)
    for t in range(steps):
        for p, n in zip(params, noise[t]):
            p.grad = (0.3 * p.detach() + n).to(dtype)
        opt.step()
        if round_coded:
            for p in params:
                if p.numel() < 4096:
                    continue
                for key, signed in CODED[name].items():
                    if key in opt.state[p]:
                        buffer = opt.state[p][key]
                        codes, absmax = _encode(buffer, signed)
                        buffer.copy_(_decode(codes, absmax, signed))
    return opt, params


@pytest.mark.parametrize("name", sorted(CODED))
def test_8bit_classes_keep_codes_of_moments_of_large_tensors(name):
    opt, params = _class_run(name, "8bit", 2)
    for p in params:
        state = opt.state[p]
        for key in opt._all_buffers:
            if key not in state:
                continue
            coded = p.numel() >= 4096 and key in CODED[name]
            assert state[key].dtype == (torch.uint8 if coded else torch.float32), (key, p.shape)
            assert state[key].shape == p.shape
            if coded:
                assert state[key + "_absmax"].dtype == torch.float32
                assert state[key + "_absmax"].shape == ((p.numel() + 255) // 256,)
            else:
                assert key + "_absmax" not in state
    # Every moment the class keeps is coded on the large tensors: none is forgotten in CODED.
    assert set(CODED[name]) >= {k for k in opt.state[params[0]] if not k.endswith("_absmax")
                                and isinstance(opt.state[params[0]][k], torch.Tensor)
                                and opt.state[params[0]][k].shape == params[0].shape} - {"prev_grad"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", sorted(CODED))
def test_8bit_class_is_float32_state_rounded_through_codes(name, dtype, fused_or_reference):
    """The class with 8-bit state equals, bit for bit, the class with float32 state whose coded
    buffers are replaced by their decoded codes after every step."""
    steps = 6
    eight, eight_params = _class_run(name, "8bit", steps, dtype=dtype)
    emulated, emulated_params = _class_run(name, "float32", steps, round_coded=True, dtype=dtype)
    for got, expected in zip(eight_params, emulated_params):
        assert torch.equal(got, expected), (name, got.shape)
    for p, q in zip(eight_params, emulated_params):
        for key, signed in CODED[name].items():
            if key in eight.state[p] and p.numel() >= 4096:
                decoded = _decode(eight.state[p][key], eight.state[p][key + "_absmax"], signed)
                assert torch.equal(decoded, emulated.state[q][key]), (name, key)


@pytest.mark.parametrize("name", sorted(CODED))
def test_8bit_state_fails_without_the_right_maps(name):
    """The emulation above with each coded buffer rounded through the other map: the comparison
    must fail (it sees which map each buffer takes)."""
    global CODED
    eight, eight_params = _class_run(name, "8bit", 4)
    saved = CODED[name]
    try:
        CODED = {**CODED, name: {key: not signed for key, signed in saved.items()}}
        _, emulated_params = _class_run(name, "float32", 4, round_coded=True)
    finally:
        CODED = {**CODED, name: saved}
    assert any(not torch.equal(a, b) for a, b in zip(eight_params, emulated_params))


@pytest.mark.parametrize("name", sorted(CODED))
def test_8bit_checkpoints_resume_and_convert(name):
    opt, params = _class_run(name, "8bit", 3)
    saved = copy.deepcopy(opt.state_dict())
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    loaded_dict = torch.load(buffer, weights_only=True)

    def fresh(precision):
        twin = [p.detach().clone().requires_grad_() for p in params]
        options = {**ALGORITHMS[name].full, "lr": 1e-2, "state_precision": precision}
        return getattr(ho, name)([{"params": twin[:2]}, {"params": twin[2:], "weight_decay": 0.0}], **options), twin

    # 8-bit into 8-bit: the same codes and scales, and the next steps the same bits.
    resumed, twin = fresh("8bit")
    resumed.load_state_dict(loaded_dict)
    for p, q in zip(params, twin):
        for key, value in opt.state[p].items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(resumed.state[q][key], value), key
    gen = torch.Generator().manual_seed(5)
    for _ in range(2):
        for p, q in zip(params, twin):
            g = torch.randn(p.shape, generator=gen)
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        resumed.step()
    assert all(torch.equal(p, q) for p, q in zip(params, twin))

    # 8-bit into float32: decoded; and back into 8-bit: encoded again from those values.
    wide, twin = fresh("float32")
    wide.load_state_dict(opt.state_dict())
    for p, q in zip(params, twin):
        for key, signed in CODED[name].items():
            if key not in opt.state[p]:
                continue
            got = wide.state[q][key]
            assert got.dtype == torch.float32 and key + "_absmax" not in wide.state[q]
            if p.numel() >= 4096:
                assert torch.equal(got, _decode(opt.state[p][key], opt.state[p][key + "_absmax"], signed))
            else:
                assert torch.equal(got, opt.state[p][key])
    narrow, twin = fresh("8bit")
    narrow.load_state_dict(wide.state_dict())
    for p, q in zip(params, twin):
        for key, signed in CODED[name].items():
            if key in wide.state[q] and p.numel() >= 4096:
                codes, absmax = _encode(wide.state[q][key], signed)
                assert torch.equal(narrow.state[q][key], codes) and torch.equal(narrow.state[q][key + "_absmax"], absmax)


@pytest.mark.parametrize("damage", ["no scales", "short scales", "float64 scales", "codes of another shape"])
def test_damaged_8bit_checkpoints_are_refused_with_nothing_changed(damage):
    opt, params = _class_run("LAMB", "8bit", 2)
    state_dict = copy.deepcopy(opt.state_dict())
    entry = state_dict["state"][0]
    if damage == "no scales":
        del entry["exp_avg_absmax"]
    elif damage == "short scales":
        entry["exp_avg_absmax"] = entry["exp_avg_absmax"][:-1]
    elif damage == "float64 scales":
        entry["exp_avg_absmax"] = entry["exp_avg_absmax"].double()
    else:
        entry["exp_avg"] = entry["exp_avg"].reshape(-1)
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match="exp_avg"):
        opt.load_state_dict(state_dict)
    after = opt.state_dict()
    for key, state in before["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(after["state"][key][name], value)


def test_8bit_state_replaced_by_another_format_is_refused_before_the_step():
    opt, params = _class_run("AdEMAMix", "8bit", 1)
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.ones_like(p)
    opt.state[params[0]]["exp_avg_slow"] = torch.zeros(params[0].shape)
    with pytest.raises(ValueError, match=r"state 'exp_avg_slow' of parameter 0 of its group has dtype torch.float32, "
                                         r"but its group's state_precision '8bit' keeps it as uint8 codes"):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    opt.state[params[0]]["exp_avg_slow"], _ = _encode(torch.zeros(params[0].shape), True)
    opt.state[params[0]]["exp_avg_slow_absmax"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"its scales 'exp_avg_slow_absmax' \(torch.float32 \(3,\)\) must be a "
                                         r"contiguous float32 tensor of 36 elements"):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before))


@pytest.mark.parametrize("name", sorted(CODED))
def test_8bit_state_bytes_per_parameter(name):
    """The issue's target: at most 2.1 bytes per parameter for Adam-like moments (scales
    included), measured from the tensors of the large ones."""
    opt, params = _class_run(name, "8bit", 1)
    p = params[0]
    coded = [k for k in CODED[name] if k in opt.state[p]]
    total = sum(opt.state[p][k].numel() * opt.state[p][k].element_size()
                + opt.state[p][k + "_absmax"].numel() * 4 for k in coded)
    assert total / p.numel() <= 1.02 * len(coded)  # 1 byte of code + 4/256 of scale per moment


@pytest.mark.parametrize("wrapper", ["Lookahead", "Scout"])
def test_wrappers_over_8bit_state_keep_float32_slow_weights(wrapper):
    """The base's 8-bit choice gives the wrappers float32 slow weights and statistics (codes of
    weights would lose the weights); the base's step is its 8-bit step."""
    gen = torch.Generator().manual_seed(3)
    params = [torch.randn(s, generator=gen).requires_grad_() for s in CLASS_SHAPES]
    twin = [p.detach().clone().requires_grad_() for p in params]
    base = ho.AdamP(params, lr=1e-2, state_precision="8bit")
    opt = getattr(ho, wrapper)(base, sync_period=2)
    plain = ho.AdamP(twin, lr=1e-2, state_precision="8bit")
    for t in range(3):
        for p, q in zip(params, twin):
            g = torch.randn(p.shape, generator=gen)
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        plain.step()
        if t == 0:  # before the first sync, the base's step alone
            assert all(torch.equal(p, q) for p, q in zip(params, twin))
    assert base.state[params[0]]["exp_avg"].dtype == torch.uint8
    saved = opt.state_dict()
    wrapper_held = [v for state in saved["state"].values() for v in state.values()
                    if isinstance(v, torch.Tensor) and v.shape == params[0].shape]
    assert wrapper_held and all(v.dtype == torch.float32 for v in wrapper_held)
    resumed = getattr(ho, wrapper)(ho.AdamP([p.detach().clone() for p in params], lr=1e-2, state_precision="8bit"),
                                   sync_period=2)
    resumed.load_state_dict(saved)
    assert torch.equal(resumed.base_optimizer.state[resumed.base_optimizer.param_groups[0]["params"][0]]["exp_avg"],
                       base.state[params[0]]["exp_avg"])


@pytest.mark.parametrize("name", ["LAMB", "RaLars", "TAdam", "AdaBelief", "AdamP", "Adan", "AdEMAMix"])
def test_a_rare_gradient_does_not_make_8bit_steps_jump(name):
    """A weight whose gradient is small once and zero after, in a block whose other gradients are
    about 1e4 times larger (an input that is almost always zero): its second moment, 1e-9 of the
    block's largest, would round to 0 under its first moment, and the update become m / eps. The
    unsigned map keeps it positive, so 8-bit steps move that weight about as far as float32 ones."""
    moved = {}
    for precision in ("float32", "8bit"):
        gen = torch.Generator().manual_seed(0)
        p = torch.zeros(64, 128, requires_grad=True)
        opt = getattr(ho, name)([p], lr=1e-3, state_precision=precision)
        for step in range(6):
            g = torch.randn(64, 128, generator=gen)
            g[0, 0] = 1e-4 if step == 0 else 0.0
            p.grad = g
            opt.step()
        moved[precision] = p.detach()[0, 0].abs().item()
    assert moved["8bit"] <= 2 * moved["float32"] + 1e-6, moved


def test_adamp_channel_projection_with_codes_is_the_aten_step(backend):
    """timm's per-channel projection splits a tensor into rows, which do not start on the
    tensor's blocks: such tensors with 8-bit codes take the ATen path, so the fused and reference
    backends agree where projections happen. (Reading rows' blocks from the row's start wiped the
    scales and moved the weights 2.5e-2 away.) Both are ATen's math here, whose reductions may
    round differently with the threads it gets: compared to float32's last bits."""
    results = {}
    for capability in ("auto", "reference"):
        backend(capability)
        gen = torch.Generator().manual_seed(2)
        p = torch.randn(64, 100, generator=gen).requires_grad_()
        opt = ho.AdamP([p], lr=1e-2, delta=10.0, channel_projection=True, decoupled_weight_decay=True,
                       weight_decay=0.01, state_precision="8bit")
        for _ in range(4):
            p.grad = torch.randn(64, 100, generator=gen) + 0.5 * p.detach()
            opt.step()
        state = opt.state[p]
        results[capability] = (p.detach().clone(), _decode(state["exp_avg"], state["exp_avg_absmax"], True),
                               state["exp_avg_absmax"].clone())
    (fused, moment, scales), (reference, reference_moment, reference_scales) = results["auto"], results["reference"]
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(scales, reference_scales, rtol=1e-5, atol=0)
    torch.testing.assert_close(moment, reference_moment, rtol=0, atol=2e-2 * float(reference_scales.max()))


@pytest.mark.parametrize("name", ["TAdam", "AdaBelief", "AdamP", "Adan"])
def test_amsgrad_switched_off_after_8bit_steps(name):
    """The running maximum's codes stay in the state, unused: later steps take neither them nor
    their scales, as with float32 state."""
    runs = {}
    for precision in ("float32", "8bit"):
        gen = torch.Generator().manual_seed(6)
        a, b = (torch.randn(8192, generator=gen).requires_grad_() for _ in range(2))
        opt = getattr(ho, name)([{"params": [a]}, {"params": [b]}], lr=1e-3, amsgrad=True, state_precision=precision)
        for step in range(4):
            if step == 2:
                opt.param_groups[1]["amsgrad"] = False
            a.grad, b.grad = torch.randn(8192, generator=gen), torch.randn(8192, generator=gen)
            opt.step()
        runs[precision] = (a.detach(), b.detach())
    for got, expected in zip(runs["8bit"], runs["float32"]):
        torch.testing.assert_close(got, expected, rtol=0, atol=2e-3)


@pytest.mark.parametrize("name", ["LAMB", "RaLars"])
def test_8bit_trust_ratios_are_the_32bit_ones_within_the_quantization_error(name):
    """8-bit LAMB and RaLars keep their per-tensor trust ratios (bitsandbytes' 8-bit LAMB drops
    them): taken from the decoded moments, they stay within the codes' error of the float32-state
    run's over many steps. (LARS' ratio reads the weights and gradients only, not its momentum.)"""
    ratios = {}
    for precision in ("float32", "8bit"):
        gen = torch.Generator().manual_seed(9)
        params = [torch.randn(s, generator=gen).requires_grad_() for s in [(96, 64), (64, 80)]]
        opt = getattr(ho, name)(params, lr=1e-3, weight_decay=0.01, state_precision=precision)
        history = []
        for _ in range(20):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen) + 0.2 * p.detach()
            opt.step()
            history.append([float(opt.state[p]["local_lr"]) for p in params])
        ratios[precision] = torch.tensor(history, dtype=torch.float64)
        assert opt.state[params[0]][opt._coded_keys[0]].dtype == torch.uint8 or precision == "float32"
    assert not torch.equal(ratios["8bit"], ratios["float32"])  # the codes do round the moments
    torch.testing.assert_close(ratios["8bit"], ratios["float32"], rtol=1e-2, atol=0)


def _thresholds(signed):
    """The map's thresholds as the definition makes them: the smallest float32 above each
    midpoint of two neighbouring values."""
    values = _decode(torch.arange(256, dtype=torch.uint8), torch.ones(1), signed).double()
    midpoints = (values[:-1] + values[1:]) / 2
    above = midpoints.float()
    return torch.where(above.double() <= midpoints, torch.nextafter(above, torch.tensor(float("inf"))), above)


def _around(targets, ulps=3):
    """Each target and the floats up to `ulps` away on either side."""
    out = [targets]
    for direction in (float("inf"), float("-inf")):
        t = targets
        for _ in range(ulps):
            t = torch.nextafter(t, torch.full_like(t, direction))
            out.append(t)
    return torch.cat(out)


@pytest.mark.parametrize("scale", [3.0, 0.7, 1.1e-3, 12345.678])
def test_the_fused_encoder_agrees_with_the_definition_next_to_every_threshold(scale, backend):
    """The vector encoders multiply by the scale's inverse, within an ulp of the definition's
    quotient, and fall back to it near a threshold or a bucket's edge: values a few ulps from
    every threshold times the scale (and from the buckets' edges), coded by an op whose new
    moments are its gradients (AdEMAMix with beta1 = beta2 = 0: m = g, v = g * g), give the
    definition's codes on every instruction set, as does a block of zeros."""
    signed_targets = _around((_thresholds(True) * scale).float())
    # v = g * g near the unsigned map's thresholds times the scale.
    unsigned_targets = _around((_thresholds(False).double() * scale).sqrt().float())
    edges = _around(torch.tensor([2.0 ** -k for k in range(1, 25)]) * scale)
    grads = torch.cat([signed_targets, -signed_targets, unsigned_targets, edges, -edges])
    grads = grads[grads.abs() <= scale]
    # Each block starts with the scale itself (its largest magnitude), then the values.
    per_block = 256 - 1
    blocks = -(-grads.numel() // per_block)
    grads = torch.cat([grads, torch.zeros(blocks * per_block - grads.numel())]).view(blocks, per_block)
    grads = torch.cat([torch.full((blocks, 1), scale), grads], dim=1).reshape(-1)
    # And a block of zeros (-0.0 among them): no largest magnitude, every code that of 0.
    zeros = torch.zeros(256)
    zeros[::3] = -0.0
    grads = torch.cat([grads, zeros])
    for capability in ops.available_cpu_capabilities():
        backend(capability)
        params = [torch.zeros_like(grads)]
        codes = {key: _encode(torch.zeros_like(grads), signed) for key, signed in
                 (("exp_avgs", True), ("exp_avgs_slow", True), ("exp_avg_sqs", False))}
        ops.ademamix_(params, [grads], [codes["exp_avgs"][0]], [codes["exp_avgs_slow"][0]], [codes["exp_avg_sqs"][0]],
                      [1], lr=0.0, beta1=0.0, beta2=0.0, beta3=0.9, alpha=1.0, eps=1e-8, weight_decay=0.0,
                      state_absmax=[codes[k][1] for k in ("exp_avgs", "exp_avgs_slow", "exp_avg_sqs")])
        for key, expected in (("exp_avgs", _encode(grads, True)), ("exp_avg_sqs", _encode(grads * grads, False))):
            assert torch.equal(codes[key][1], expected[1]), f"{capability}: {key} scales"
            wrong = (codes[key][0] != expected[0]).nonzero().flatten()
            assert wrong.numel() == 0, f"{capability}: {key}: {wrong.numel()} codes differ, first at {wrong[:5].tolist()}"
