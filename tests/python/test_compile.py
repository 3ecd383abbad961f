"""torch.compile of a step: one graph without breaks (fullgraph=True), no
recompilation after the first steps, and the eager step's numbers, for every
class and both wrappers; GradScaler's skipped steps too, and state handed
between eager and compiled steps both ways."""

from __future__ import annotations

import copy

import pytest
import torch

import holocron_optim as ho
from registry import factories

WARMUP = 3  # steps after which nothing may recompile
STEPS = 8

CASES = {
    **factories(0.01, wrappers=False),
    "Lookahead(LAMB)": lambda p: ho.Lookahead(ho.LAMB(p, lr=0.01), sync_period=3),
    "Scout(AdamP)": lambda p: ho.Scout(ho.AdamP(p, lr=0.01, delta=1.0), sync_rate=0.0, sync_period=3),
    # timm's LAMB options, with a global gradient norm (about 5 here) that clipping divides by.
    "LAMB(timm)": lambda p: ho.LAMB(p, lr=0.01, weight_decay=0.01, bias_correction=True, grad_averaging=False,
                                   max_grad_norm=1.0, trust_clip=True, always_adapt=False),
    "Adan(authors)": lambda p: ho.Adan(p, lr=0.01, weight_decay=0.02, decoupled_weight_decay=True, no_prox=True,
                                       max_grad_norm=1.0, caution=True),
    # state_precision: bfloat16 moments and slow weights, made by the compiled step too.
    "Lookahead(LAMB, bfloat16 state)": lambda p: ho.Lookahead(ho.LAMB(p, lr=0.01, state_precision="bfloat16"),
                                                              sync_period=3),
    # kahan_summation on bfloat16 weights (CASE_DTYPES): compensations made by the compiled step,
    # written by the update and by the sync.
    "Lookahead(AdEMAMix, Kahan)": lambda p: ho.Lookahead(
        ho.AdEMAMix(p, lr=0.01, state_precision="float32", kahan_summation=True), sync_period=3),
    # 8-bit state (a tensor large enough for codes, CASE_SHAPES): codes and scales made by the
    # compiled step and written by the op; float32 slow weights.
    "Lookahead(Adan, 8bit)": lambda p: ho.Lookahead(ho.Adan(p, lr=0.01, state_precision="8bit", amsgrad=True),
                                                    sync_period=3),
}
# The weights' dtype of a case, when not float64.
CASE_DTYPES = {"Lookahead(AdEMAMix, Kahan)": torch.bfloat16, "Lookahead(Adan, 8bit)": torch.float32}
# The weights' shapes of a case, when not make_params' own.
CASE_SHAPES = {"Lookahead(Adan, 8bit)": [(5, 3), (70, 70), (3,)]}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def make_params(dtype=torch.float64, shapes=((5, 3), (3,), (1,), (4, 2, 2))):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]


def grads_at(step: int, params):
    gen = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]


class CountingBackend:
    """Counts compilations (each recompilation compiles a new graph)."""

    def __init__(self, backend: str):
        self.backend = torch._dynamo.lookup_backend(backend)
        self.compiles = 0

    def __call__(self, gm, example_inputs):
        self.compiles += 1
        return self.backend(gm, example_inputs)


def base_of(opt):
    return getattr(opt, "base_optimizer", opt)


def assert_same_state(eager, compiled):
    """Equal values; compiled counters and trust ratios are tensors."""
    for p_e, p_c in zip(
        [p for g in base_of(eager).param_groups for p in g["params"]],
        [p for g in base_of(compiled).param_groups for p in g["params"]],
    ):
        s_e, s_c = base_of(eager).state[p_e], base_of(compiled).state[p_c]
        assert s_e.keys() == s_c.keys()
        for key, value in s_e.items():
            other = s_c[key]
            if isinstance(value, torch.Tensor) and value.numel() > 1:
                assert torch.equal(value, other), key
            else:
                assert float(value) == float(other), (key, value, other)


def run_pair(name: str, backend: str, found_inf_steps=(), eager_steps_first: int = 0):
    start = make_params(CASE_DTYPES.get(name, torch.float64), *([CASE_SHAPES[name]] if name in CASE_SHAPES else []))
    eager_params = [p.clone().requires_grad_() for p in start]
    compiled_params = [p.clone().requires_grad_() for p in start]
    eager, compiled = CASES[name](eager_params), CASES[name](compiled_params)
    counting = CountingBackend(backend)
    compiled_step = torch.compile(lambda: compiled.step(), backend=counting, fullgraph=True)
    for step in range(STEPS):
        for params in (eager_params, compiled_params):
            for p, g in zip(params, grads_at(step, start)):
                p.grad = g
        inf = torch.tensor(1.0 if step in found_inf_steps else 0.0)
        for opt in (eager, compiled):
            opt.found_inf = inf
        eager.step()
        if step < eager_steps_first:
            compiled.step()  # state made in eager (int counters), then compiled
            continue
        with torch._dynamo.config.patch(error_on_recompile=step >= eager_steps_first + WARMUP):
            compiled_step()
    return eager, compiled, eager_params, compiled_params, counting


@pytest.mark.parametrize("name", list(CASES))
def test_compiled_step_equals_eager_without_recompiling(name):
    eager, compiled, eager_params, compiled_params, counting = run_pair(name, "aot_eager")
    assert counting.compiles <= WARMUP
    for a, b in zip(eager_params, compiled_params):
        assert torch.equal(a, b)
    assert_same_state(eager, compiled)
    if hasattr(eager, "fast_steps"):
        assert eager.fast_steps == compiled.fast_steps == STEPS
        if hasattr(eager, "last_sync_rate"):
            assert eager.last_sync_rate == compiled.last_sync_rate and 0.0 < compiled.last_sync_rate <= 1.0


TENSOR_LR_CASES = [*factories(0.01, wrappers=False), "Lookahead(LAMB)", "Scout(AdamP)"]


@pytest.mark.parametrize("name", TENSOR_LR_CASES)
def test_a_tensor_lr_changed_between_compiled_steps_neither_breaks_nor_recompiles(name):
    """torch's way to change the lr of a compiled optimizer: a tensor lr, changed in place. The ops
    took only a float lr, so with fullgraph=True the first compiled step failed (a data-dependent
    float), and without it every step broke the graph and each new value recompiled."""
    start = make_params()
    eager_params = [p.clone().requires_grad_() for p in start]
    compiled_params = [p.clone().requires_grad_() for p in start]
    eager, compiled = CASES[name](eager_params), CASES[name](compiled_params)
    for opt in (eager, compiled):
        for group in opt.param_groups:
            group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float64)
    counting = CountingBackend("aot_eager")
    compiled_step = torch.compile(lambda: compiled.step(), backend=counting, fullgraph=True)
    for step in range(STEPS):
        for params in (eager_params, compiled_params):
            for p, g in zip(params, grads_at(step, start)):
                p.grad = g
        for opt in (eager, compiled):
            for group in opt.param_groups:
                group["lr"].fill_(0.01 * 0.8**step)  # a scheduler's decay
        eager.step()
        with torch._dynamo.config.patch(error_on_recompile=step >= WARMUP):
            compiled_step()
        if step == WARMUP:
            graphs = counting.compiles
    assert counting.compiles == graphs  # none after the first steps, whatever the lr's values
    for a, b in zip(eager_params, compiled_params):
        assert torch.equal(a, b)
    # A bad value is refused when the op reads it, with nothing changed.
    before = [p.detach().clone() for p in compiled_params]
    for group in compiled.param_groups:
        group["lr"].fill_(-1.0)
    with pytest.raises(Exception, match="lr"):
        compiled_step()
    assert all(torch.equal(a, b) for a, b in zip(before, compiled_params))


@pytest.mark.parametrize("name", ["LAMB", "Adan", "Scout(AdamP)", "LAMB(timm)"])
def test_inductor_compiled_step_equals_eager(name):
    _, _, eager_params, compiled_params, counting = run_pair(name, "inductor")
    assert counting.compiles <= WARMUP
    for a, b in zip(eager_params, compiled_params):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", list(CASES))
def test_compiled_step_skips_where_found_inf(name):
    """GradScaler's found_inf reaches the ops, which skip the update and the counters."""
    eager, compiled, eager_params, compiled_params, _ = run_pair(name, "aot_eager", found_inf_steps=(1, 5))
    for a, b in zip(eager_params, compiled_params):
        assert torch.equal(a, b)
    assert_same_state(eager, compiled)
    if hasattr(eager, "fast_steps"):
        assert compiled.fast_steps == STEPS - 2


@pytest.mark.parametrize("name", ["LAMB", "TAdam", "RaLars", "Scout(AdamP)"])
def test_compiled_steps_continue_an_eager_state(name):
    """Int counters from eager steps (or a reference checkpoint) become tensors."""
    eager, compiled, eager_params, compiled_params, counting = run_pair(name, "aot_eager", eager_steps_first=2)
    assert counting.compiles <= WARMUP
    for a, b in zip(eager_params, compiled_params):
        assert torch.equal(a, b)
    assert_same_state(eager, compiled)


@pytest.mark.parametrize("name", ["LAMB", "AdamP", "Lookahead(LAMB)"])
def test_eager_steps_continue_a_compiled_state(name):
    eager, compiled, eager_params, compiled_params, _ = run_pair(name, "aot_eager")
    resumed_params = [p.detach().clone().requires_grad_() for p in compiled_params]
    resumed = CASES[name](resumed_params)
    resumed.load_state_dict(copy.deepcopy(compiled.state_dict()))
    for step in range(STEPS, STEPS + 3):
        for params in (eager_params, resumed_params):
            for p, g in zip(params, grads_at(step, eager_params)):
                p.grad = g.detach()
        eager.found_inf = resumed.found_inf = torch.tensor(0.0)
        eager.step()
        resumed.step()
    for a, b in zip(eager_params, resumed_params):
        assert torch.equal(a, b)


def test_compiled_step_refuses_floats_where_its_group_now_keeps_codes():
    """A group switched to "8bit" after float32 steps holds float moments: the compiled step
    refuses them as the eager step does (a checkpoint load converts them), with nothing changed."""
    params = [p.requires_grad_() for p in make_params(torch.float32, ((70, 70), (3,)))]
    opt = ho.Adan(params, lr=0.01, state_precision="float32")
    for p, g in zip(params, grads_at(0, params)):
        p.grad = g
    opt.step()
    opt.param_groups[0]["state_precision"] = "8bit"
    before = [p.detach().clone() for p in params]
    compiled_step = torch.compile(lambda: opt.step(), backend="eager", fullgraph=True)
    with pytest.raises(Exception, match="has dtype torch.float32, but its group's state_precision '8bit' keeps it "
                                        "as uint8 codes"):
        compiled_step()
    assert all(torch.equal(p.detach(), b) for p, b in zip(params, before))


@pytest.mark.parametrize("fullgraph, error", [(False, ValueError), (True, RuntimeError)])
def test_a_parameter_listed_twice_is_refused_by_a_compiled_step(fullgraph, error):
    """As by an eager step (it would be updated twice with one state); with fullgraph, dynamo
    hands the ValueError on as its own error, with the message."""
    a, b = (p.requires_grad_() for p in make_params(shapes=((3,), (2,))))
    with pytest.warns(UserWarning, match="duplicate"):
        opt = ho.LAMB([a, b, a], lr=0.1)
    a.grad, b.grad = torch.ones_like(a), torch.ones_like(b)
    before = (a.detach().clone(), b.detach().clone())
    with pytest.raises(error, match="parameter 2 of group 0 is also parameter 0 of group 0"):
        torch.compile(opt.step, backend="eager", fullgraph=fullgraph)()
    assert torch.equal(a, before[0]) and torch.equal(b, before[1]) and not opt.state
