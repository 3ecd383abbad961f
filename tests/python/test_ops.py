"""The torch.ops.holocron operators: schemas, alias annotations and fake
kernels are honest (torch.library.opcheck), and they refuse bad lists."""

import re

import pytest
import torch

from holocron_optim._library import ops

SHAPES = [(3, 4), (5,), ()]


def _tensors(dtype=torch.float64):
    torch.manual_seed(0)
    return [torch.randn(s, dtype=dtype) for s in SHAPES]


def _zeros(like):
    return [torch.zeros_like(t) for t in like]


def _cases():
    p = _tensors()
    g = [torch.randn_like(t) for t in p]
    steps = [3] * len(p)
    w_t = [torch.full((1,), 9.0, dtype=torch.float64) for _ in p]
    z = _zeros
    # (positional, keyword): the update ops are called as Python calls them, lists of
    # parameters and gradients first and every other argument by name.
    return {
        "lars_": ((p, g), dict(momentum_buffers=z(p), buffer_is_new=[True] * len(p), lr=0.1, momentum=0.9,
                               dampening=0.0, weight_decay=0.01, nesterov=True, scale_clip=[0.0, 5.0])),
        "lamb_": ((p, g), dict(exp_avgs=z(p), exp_avg_sqs=z(p), lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8,
                               weight_decay=0.01, clip_low=0.0, clip_high=10.0)),
        "ralars_": ((p, g), dict(exp_avgs=z(p), exp_avg_sqs=z(p), steps=steps, lr=0.01, beta1=0.9, beta2=0.999,
                                 eps=1e-8, weight_decay=0.0, force_adaptive_momentum=True, clip_low=0.0,
                                 clip_high=10.0, sma_inf=None)),
        "tadam_": ((p, g), dict(exp_avgs=z(p), exp_avg_sqs=z(p), max_exp_avg_sqs=z(p), W_ts=w_t, steps=steps,
                                lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, amsgrad=True, dof=None)),
        "adabelief_": ((p, g), dict(exp_avgs=z(p), exp_avg_sqs=z(p), max_exp_avg_sqs=z(p), steps=steps, lr=0.01,
                                    beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, amsgrad=True)),
        "adamp_": ((p, g), dict(exp_avgs=z(p), exp_avg_sqs=z(p), max_exp_avg_sqs=[], steps=steps, lr=0.01, beta1=0.9,
                                beta2=0.999, eps=1e-8, weight_decay=0.0, amsgrad=False, delta=0.1)),
        "adan_": ((p, g), dict(prev_grads=z(p), exp_avgs=z(p), exp_avg_sqs=z(p), exp_avg_deltas=z(p),
                               max_exp_avg_deltas=[], steps=steps, lr=0.01, beta1=0.98, beta2=0.92, beta3=0.99,
                               eps=1e-8, weight_decay=0.0, amsgrad=False)),
        "ademamix_": ((p, g), dict(exp_avgs=z(p), exp_avgs_slow=z(p), exp_avg_sqs=z(p), steps=steps, lr=0.01,
                                   beta1=0.9, beta2=0.999, beta3=0.9999, alpha=5.0, eps=1e-8, weight_decay=0.0)),
        "lookahead_sync_": ((p, [t.clone() for t in p]), dict(sync_rate=0.5)),
        "write_scalars_": (([torch.zeros((), dtype=torch.float32), torch.zeros(1, dtype=torch.float64)],),
                           dict(values=[0.5, 2.0])),
        "scout_accumulate_": ((p,), dict(prev=z(p), mean=z(p), m2=z(p), max=z(p), min=z(p), count=2)),
    }


@pytest.mark.parametrize("name", sorted(_cases()))
def test_opcheck(name):
    args, kwargs = _cases()[name]
    torch.library.opcheck(getattr(ops, name).default, args, kwargs)


def test_trust_ratios_come_back_per_tensor():
    p = _tensors()
    g = [torch.randn_like(t) for t in p]
    ratios = ops.lamb_(p, g, exp_avgs=_zeros(p), exp_avg_sqs=_zeros(p), lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, clip_low=0.0, clip_high=10.0)
    assert ratios.dtype == torch.float64 and ratios.shape == (len(p),)


def test_mismatched_lists_are_refused_before_any_write():
    p = _tensors()
    before = [t.clone() for t in p]
    g = [torch.randn_like(t) for t in p]
    bad = _zeros(p)
    bad[-1] = torch.zeros(7, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="exp_avg_sqs"):
        ops.adabelief_(p, g, exp_avgs=_zeros(p), exp_avg_sqs=bad, max_exp_avg_sqs=[], steps=[1] * len(p), lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, amsgrad=False)
    assert all(torch.equal(a, b) for a, b in zip(p, before))
    with pytest.raises(RuntimeError, match="steps"):
        ops.adabelief_(p, g, exp_avgs=_zeros(p), exp_avg_sqs=_zeros(p), max_exp_avg_sqs=[], steps=[0] * len(p), lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, amsgrad=False)
    assert all(torch.equal(a, b) for a, b in zip(p, before))


def test_bad_hyper_parameters_raise_value_error_naming_them():
    with pytest.raises(ValueError, match="lr"):
        ops.lamb_([], [], exp_avgs=[], exp_avg_sqs=[], lr=float("nan"), beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, clip_low=0.0, clip_high=10.0)
    with pytest.raises(ValueError, match=r"betas\[2\]"):
        ops.adan_([], [], prev_grads=[], exp_avgs=[], exp_avg_sqs=[], exp_avg_deltas=[], max_exp_avg_deltas=[], steps=[],
                  lr=0.01, beta1=0.9, beta2=0.9, beta3=1.0, eps=1e-8, weight_decay=0.0, amsgrad=False)
    with pytest.raises(ValueError, match="sync_rate"):
        ops.lookahead_sync_([], slow=[], sync_rate=1.5)


def _compiled_cases():
    """The arguments compiled steps use: tensor counters and trust ratios, the wrappers' step ops."""
    p = _tensors()
    g = [torch.randn_like(t) for t in p]
    counters = {"step_tensors": [torch.tensor(2.0) for _ in p]}
    slow = [t.clone() for t in p]
    stats = [[t - 0.1 for t in p], *[_zeros(p) for _ in range(4)]]
    return {
        "lamb_": ((p, g, _zeros(p), _zeros(p), 0.01, 0.9, 0.999, 1e-8, 0.01, 0.0, 10.0),
                  {**counters, "local_lrs": [torch.ones((), dtype=torch.float64) for _ in p]}),
        "ralars_": ((p, g, _zeros(p), _zeros(p), [], 0.01, 0.9, 0.999, 1e-8, 0.0, True, 0.0, 10.0, None),
                    {**counters, "local_lrs": [torch.ones((), dtype=torch.float64) for _ in p],
                     "found_inf": torch.tensor(0.0)}),
        "adan_": ((p, g, _zeros(p), _zeros(p), _zeros(p), _zeros(p), [], [], 0.01, 0.98, 0.92, 0.99, 1e-8, 0.0, False),
                  counters),
        "lookahead_step_": ((p, slow, torch.tensor(1), 2, 0.5), {"found_inf": torch.tensor(0.0)}),
        "scout_step_": ((p, slow, *stats, torch.tensor(1), torch.tensor(float("nan"), dtype=torch.float64), 2, 0.0), {}),
    }


@pytest.mark.parametrize("name", sorted(_compiled_cases()))
def test_opcheck_compiled_arguments(name):
    args, kwargs = _compiled_cases()[name]
    torch.library.opcheck(getattr(ops, name).default, args, kwargs)


def test_tensor_counters_advance_unless_found_inf():
    p = _tensors()
    g = [torch.randn_like(t) for t in p]
    counters = [torch.tensor(4.0) for _ in p]
    ops.adan_(p, g, prev_grads=_zeros(p), exp_avgs=_zeros(p), exp_avg_sqs=_zeros(p), exp_avg_deltas=_zeros(p),
              max_exp_avg_deltas=[], steps=[], lr=0.01, beta1=0.98, beta2=0.92, beta3=0.99, eps=1e-8,
              weight_decay=0.0, amsgrad=False,
              found_inf=torch.tensor(1.0), step_tensors=counters)
    assert all(float(c) == 4.0 for c in counters)
    ops.adan_(p, g, prev_grads=_zeros(p), exp_avgs=_zeros(p), exp_avg_sqs=_zeros(p), exp_avg_deltas=_zeros(p),
              max_exp_avg_deltas=[], steps=[], lr=0.01, beta1=0.98, beta2=0.92, beta3=0.99, eps=1e-8,
              weight_decay=0.0, amsgrad=False,
              step_tensors=counters)
    assert all(float(c) == 5.0 for c in counters)
    with pytest.raises(RuntimeError, match="not both"):
        ops.adan_(p, g, prev_grads=_zeros(p), exp_avgs=_zeros(p), exp_avg_sqs=_zeros(p), exp_avg_deltas=_zeros(p),
                  max_exp_avg_deltas=[], steps=[5] * len(p), lr=0.01, beta1=0.98, beta2=0.92, beta3=0.99, eps=1e-8,
                  weight_decay=0.0, amsgrad=False, step_tensors=counters)


def _kahan_cases():
    """Kahan-compensated bfloat16 weights (`kahan_comps`, a tensor without elements where a weight
    is not compensated): the compensations are declared as written (opcheck's schema test
    mutates-and-compares), and torch's functionalization takes the list."""
    p = [t.to(torch.bfloat16) for t in _tensors()]
    g = [torch.randn_like(t) for t in p]
    comps = [torch.empty(0), *[torch.full_like(t, 1e-3) for t in p[1:]]]
    steps = [3] * len(p)
    z = _zeros
    return {
        "lamb_": ((p, g), dict(exp_avgs=z(p), exp_avg_sqs=z(p), lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8,
                               weight_decay=0.01, clip_low=0.0, clip_high=10.0, kahan_comps=comps)),
        "adan_": ((p, g), dict(prev_grads=z(p), exp_avgs=z(p), exp_avg_sqs=z(p), exp_avg_deltas=z(p),
                               max_exp_avg_deltas=[], steps=steps, lr=0.01, beta1=0.98, beta2=0.92, beta3=0.99,
                               eps=1e-8, weight_decay=0.0, amsgrad=False, kahan_comps=comps)),
        "lookahead_sync_": ((p, [t.float() for t in p]), dict(sync_rate=0.5, kahan_comps=comps)),
    }


@pytest.mark.parametrize("name", sorted(_kahan_cases()))
def test_opcheck_kahan_compensations(name):
    args, kwargs = _kahan_cases()[name]
    torch.library.opcheck(getattr(ops, name).default, args, kwargs)


def _blockwise_cases():
    """8-bit state (`state_absmax`, the scales of the uint8 state tensors in list order): the
    scales are declared as written, and torch's functionalization takes the list."""
    gen = torch.Generator().manual_seed(4)
    p = [torch.randn(600, generator=gen), torch.randn(3, 5, generator=gen)]
    g = [torch.randn(t.shape, generator=gen) for t in p]

    def coded(signed):
        pairs = [ops.quantize_blockwise(torch.rand(t.shape, generator=gen) * (2 if signed else 1)
                                        - (1 if signed else 0), signed) for t in p]
        return [c for c, _ in pairs], [a for _, a in pairs]

    m, m_scales = coded(True)
    v, v_scales = coded(False)
    steps = [3] * len(p)
    return {
        "lamb_": ((p, g), dict(exp_avgs=m, exp_avg_sqs=v, lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8,
                               weight_decay=0.01, clip_low=0.0, clip_high=10.0, state_absmax=m_scales + v_scales)),
        "adabelief_": ((p, g), dict(exp_avgs=m, exp_avg_sqs=v, max_exp_avg_sqs=[], steps=steps, lr=0.01, beta1=0.9,
                                    beta2=0.999, eps=1e-8, weight_decay=0.0, amsgrad=False,
                                    state_absmax=m_scales + v_scales)),
    }


@pytest.mark.parametrize("name", sorted(_blockwise_cases()))
def test_opcheck_8bit_state(name):
    args, kwargs = _blockwise_cases()[name]
    torch.library.opcheck(getattr(ops, name).default, args, kwargs)


def _pinned_call(pinned_lists, pinned_at, given=None, pins="made"):
    """adabelief_ with its state lists taken from pins (HOLOCRON_PINNED)."""
    p = _tensors()
    g = [torch.randn_like(t) for t in p]
    exp_avgs, exp_avg_sqs = _zeros(p), _zeros(p)
    pinned_state = torch.classes.holocron.TensorPins(exp_avgs + exp_avg_sqs) if pins == "made" else pins
    lists = {"exp_avgs": [], "exp_avg_sqs": [], **(given or {})}
    ops.adabelief_(p, g, **lists, max_exp_avg_sqs=[], steps=[1] * len(p), lr=0.01, beta1=0.9, beta2=0.999,
                   eps=1e-8, weight_decay=0.0, amsgrad=False, pinned_state=pinned_state,
                   pinned_lists=pinned_lists, pinned_at=pinned_at)
    return p, exp_avgs, exp_avg_sqs


def test_state_lists_taken_from_pins_equal_lists_given():
    p, exp_avgs, exp_avg_sqs = _pinned_call(["exp_avg_sqs", "exp_avgs"], [3, 0])
    torch.manual_seed(0)  # the draws of _pinned_call
    q = [torch.randn(s, dtype=torch.float64) for s in SHAPES]
    g = [torch.randn_like(t) for t in q]
    m, v = _zeros(q), _zeros(q)
    ops.adabelief_(q, g, exp_avgs=m, exp_avg_sqs=v, max_exp_avg_sqs=[], steps=[1] * len(q), lr=0.01, beta1=0.9,
                   beta2=0.999, eps=1e-8, weight_decay=0.0, amsgrad=False)
    assert all(torch.equal(a, b) for a, b in zip(p + exp_avgs + exp_avg_sqs, q + m + v))
    assert not torch.equal(exp_avgs[0], torch.zeros_like(exp_avgs[0]))


@pytest.mark.parametrize("pinned_lists,pinned_at,given,pins,message", [
    (["exp_avgs", "params"], [0, 3], None, "made", "pinned_lists names 'params'"),
    (["exp_avgs", "bogus"], [0, 3], None, "made", "pinned_lists names 'bogus'"),
    (["exp_avgs", "kahan_comps"], [0, 3], None, "made", "pinned_lists names 'kahan_comps'"),
    (["exp_avgs", "exp_avgs"], [0, 3], None, "made", "names 'exp_avgs' twice"),
    (["exp_avgs", "exp_avg_sqs"], [0], None, "made", "got 1 pinned_at offsets for 2 pinned_lists"),
    (["exp_avgs", "exp_avg_sqs"], [0, 4], None, "made", "exp_avg_sqs at pinned_at 4 takes 3 tensors"),
    (["exp_avgs", "exp_avg_sqs"], [-1, 3], None, "made", "exp_avgs at pinned_at -1"),
    (["exp_avgs", "exp_avg_sqs"], [0, 3], {"exp_avgs": _zeros(_tensors())}, "made", "must be given as an empty list"),
    (["exp_avgs", "exp_avg_sqs"], [0, 3], None, None, "no pinned_state is given"),
])
def test_bad_pinned_lists_are_refused_before_any_write(pinned_lists, pinned_at, given, pins, message):
    p = _tensors()
    with pytest.raises(RuntimeError, match=message):
        _pinned_call(pinned_lists, pinned_at, given, pins)


def _lamb_call(lists):
    """lamb_ on two parameters, its moments and trust ratios (`local_lrs`) taken from one pins."""
    torch.manual_seed(1)
    p = [torch.randn(4, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)]
    g = [torch.randn_like(t) for t in p]
    m, v, ratios = _zeros(p), _zeros(p), [torch.zeros((), dtype=torch.float64) for _ in p]
    out = ops.lamb_(p, g, **{"exp_avgs": m, "exp_avg_sqs": v, **lists(m, v, ratios)}, lr=0.01, beta1=0.9,
                    beta2=0.999, eps=1e-6, weight_decay=0.0, clip_low=0.0, clip_high=10.0, steps=[1, 1])
    return p + m + v + ratios, out


def test_optional_trust_ratio_targets_taken_from_pins_equal_a_list_given():
    pinned, pinned_out = _lamb_call(lambda m, v, ratios: {
        "exp_avgs": [], "exp_avg_sqs": [], "local_lrs": [],
        "pinned_state": torch.classes.holocron.TensorPins(ratios + m + v),
        "pinned_lists": ["local_lrs", "exp_avgs", "exp_avg_sqs"], "pinned_at": [0, 2, 4]})
    given, given_out = _lamb_call(lambda m, v, ratios: {"local_lrs": ratios})
    assert all(torch.equal(a, b) for a, b in zip(pinned, given)) and torch.equal(pinned_out, given_out)
    assert not torch.equal(pinned[-1], torch.zeros_like(pinned[-1]))  # a ratio was written
    with pytest.raises(RuntimeError, match=r"local_lrs is named in pinned_lists, so it must be given as an empty list \(got None\)"):
        _lamb_call(lambda m, v, ratios: {"local_lrs": None, "pinned_state": torch.classes.holocron.TensorPins(ratios),
                                         "pinned_lists": ["local_lrs"], "pinned_at": [0]})


@pytest.mark.parametrize("pinned", [False, True])
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
def test_state_as_param_refuses_state_of_another_dtype_before_any_write(state_dtype, pinned):
    """`state_as_param` (HOLOCRON_PINNED): state of another dtype than its parameter's, which the
    op takes otherwise (lean state), is refused in validate_group's words, from lists or pins."""
    def call(state_as_param):
        torch.manual_seed(0)
        p = [torch.randn(s, dtype=torch.float64) for s in SHAPES]
        g = [torch.randn_like(t) for t in p]
        m = [torch.zeros_like(t, dtype=state_dtype) for t in p]
        v = _zeros(p)
        lists = {"exp_avgs": m, "exp_avg_sqs": v}
        if pinned:
            lists = {"exp_avgs": [], "exp_avg_sqs": [], "pinned_state": torch.classes.holocron.TensorPins(m + v),
                     "pinned_lists": ["exp_avgs", "exp_avg_sqs"], "pinned_at": [0, len(p)]}
        before = [t.clone() for t in p + m + v]
        error = None
        try:
            ops.adabelief_(p, g, **lists, max_exp_avg_sqs=[], steps=[1] * len(p), lr=0.01, beta1=0.9, beta2=0.999,
                           eps=1e-8, weight_decay=0.0, amsgrad=False, state_as_param=state_as_param)
        except RuntimeError as e:
            error = str(e)
        return error, not all(torch.equal(a, b) for a, b in zip(p + m + v, before))

    assert call(False) == (None, True)
    error, written = call(True)
    assert not written
    assert re.match(r"AdaBelief: state\[0\] has dtype (Float|BFloat16) but its group's state_precision "
                    r"\('param'\) keeps the parameter's Double", error), error
