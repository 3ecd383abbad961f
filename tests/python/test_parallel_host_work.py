"""A step over a group of many tensors does its per-tensor host work (checks, reading the
gradients, gathering data pointers, version bumps) on the intra-op threads
(functional::detail::check_each, from 512 tensors): the same bits as on one thread, the first
error in order whatever the threads, nothing written by a step that throws, and the calling
thread's modes (inference mode), 8-bit codes and Kahan compensations still seen."""

from __future__ import annotations

import random

import pytest
import torch

from holocron_optim._library import ops
from registry import ALGORITHMS, ALGOS

MANY = 600  # above kMinParallelTensors (src/functional/common.h)


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def _params(seed, dtype=torch.float32, big=0):
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    # A few of 4096 elements or more: 8-bit codes are kept for those only.
    sizes = [rng.randint(1, 300) for _ in range(MANY - big)] + [rng.randint(4096, 6000) for _ in range(big)]
    return [torch.randn(n, generator=gen).to(dtype) for n in sizes]


SETUPS = {
    "typical": ({}, torch.float32, 0),
    "full": ("full", torch.float32, 0),
    "8bit": ({"state_precision": "8bit"}, torch.float32, 8),
    "kahan": ({"kahan_summation": True}, torch.bfloat16, 0),
}


def _train(name, setup, num_threads, set_threads, steps=3, missing=()):
    options, dtype, big = SETUPS[setup]
    algorithm = ALGORITHMS[name]
    options = {**(algorithm.full if options == "full" else options)}
    options.setdefault("lr", 1e-3 * algorithm.lr_scale)
    set_threads(num_threads)
    params = _params(0, dtype, big)
    opt = algorithm.make(params, **options)
    gen = torch.Generator().manual_seed(1)
    for step in range(steps):
        for i, p in enumerate(params):
            grad = torch.randn(p.shape, generator=gen).to(dtype)
            p.grad = None if (step == steps - 1 and i in missing) else grad
        opt.step()
    return params, opt.state_dict()["state"]


def _assert_same_bits(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        if isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype and x.shape == y.shape
            assert torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8))
        else:
            assert x == y


@pytest.mark.parametrize("setup", SETUPS)
@pytest.mark.parametrize("name", ALGOS)
def test_two_threads_give_the_bits_of_one(name, setup, threads):
    params_1, state_1 = _train(name, setup, 1, threads)
    params_2, state_2 = _train(name, setup, 2, threads)
    _assert_same_bits(params_1, params_2)
    assert state_1.keys() == state_2.keys()
    for key in state_1:
        assert state_1[key].keys() == state_2[key].keys()
        _assert_same_bits(list(state_1[key].values()), list(state_2[key].values()))
    if setup == "8bit":
        assert any(v.dtype == torch.uint8 for s in state_2.values() for v in s.values() if isinstance(v, torch.Tensor))
    if setup == "kahan":
        assert all("kahan_comp" in s for s in state_2.values())


@pytest.mark.parametrize("name", ALGOS)
def test_gradients_gone_missing_are_skipped_on_two_threads_as_on_one(name, threads):
    # The ops read the gradients (grads=None) after a step that found them all: two missing
    # far apart refuse that attempt, and the step is taken again without them.
    missing = (100, 520)
    params_1, state_1 = _train(name, "typical", 1, threads, missing=missing)
    params_2, state_2 = _train(name, "typical", 2, threads, missing=missing)
    _assert_same_bits(params_1, params_2)
    for key in state_1:
        _assert_same_bits(list(state_1[key].values()), list(state_2[key].values()))


def _adabelief(params, grads, exp_avgs, exp_avg_sqs):
    ops.adabelief_(params, grads, exp_avgs=exp_avgs, exp_avg_sqs=exp_avg_sqs, max_exp_avg_sqs=[],
                   steps=[1] * len(params), lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                   amsgrad=False)


@pytest.mark.parametrize("bad", ["gradient shape", "state dtype", "no gradient"])
def test_the_first_bad_tensor_in_order_is_named_and_nothing_is_written(bad, threads):
    threads(2)
    params = _params(3)
    grads = [torch.randn_like(p) for p in params]
    exp_avgs = [torch.full_like(p, 0.5) for p in params]
    exp_avg_sqs = [torch.full_like(p, 0.25) for p in params]
    for i in (290, 305):  # the second on the other thread, which reaches it first
        if bad == "gradient shape":
            grads[i] = torch.randn(params[i].numel() + 1)
        elif bad == "state dtype":
            exp_avg_sqs[i] = exp_avg_sqs[i].to(torch.int32)
        else:
            params[i].grad = None
    if bad == "no gradient":
        for p, g in zip(params, grads):
            if p.grad is None and p is not params[290] and p is not params[305]:
                p.grad = g
    before = [p.clone() for p in params]
    versions = [p._version for p in params]
    for _ in range(5):  # the message names 290, whichever thread fails first
        with pytest.raises(RuntimeError, match=r"\[290\]"):
            _adabelief(params, None if bad == "no gradient" else grads, exp_avgs, exp_avg_sqs)
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    assert [p._version for p in params] == versions
    assert all(bool((m == 0.5).all()) for m in exp_avgs)


def test_inference_tensors_are_updated_in_inference_mode(threads):
    # The intra-op threads are not in the caller's inference mode: their stricter check is
    # taken again on the calling thread, which accepts the tensors.
    threads(2)
    with torch.inference_mode():
        params = _params(4)
        grads = [torch.randn_like(p) for p in params]
        exp_avgs = [torch.zeros_like(p) for p in params]
        exp_avg_sqs = [torch.zeros_like(p) for p in params]
        before = [p.clone() for p in params]
        _adabelief(params, grads, exp_avgs, exp_avg_sqs)
        assert not any(torch.equal(p, b) for p, b in zip(params, before) if p.numel())
    with pytest.raises(RuntimeError, match=r"params\[0\] is an inference tensor"):
        _adabelief(params, grads, exp_avgs, exp_avg_sqs)


def test_versions_are_bumped_once_per_step(threads):
    threads(2)
    params = _params(5)
    grads = [torch.randn_like(p) for p in params]
    exp_avgs = [torch.zeros_like(p) for p in params]
    exp_avg_sqs = [torch.zeros_like(p) for p in params]
    tensors = params + exp_avgs + exp_avg_sqs
    versions = [t._version for t in tensors]
    _adabelief(params, grads, exp_avgs, exp_avg_sqs)
    assert [t._version for t in tensors] == [v + 1 for v in versions]


@pytest.mark.parametrize("name,options", [(name, {}) for name in ALGOS] + [("LARS", {"momentum": 0.0})])
def test_a_step_allocates_no_python_object_per_parameter(name, options):
    # Objects made per parameter and step would run Python's garbage collector every few
    # hundred parameters (700 new objects start a collection), on every step.
    import gc

    params = [torch.randn(20) for _ in range(2000)]
    for p in params:
        p.grad = torch.randn(20)
    opt = ALGORITHMS[name].make(params, lr=1e-3, **options)
    for _ in range(3):
        opt.step()
    collections = []

    def count(phase, info):
        if phase == "start":
            collections.append(info["generation"])

    gc.collect()
    gc.callbacks.append(count)
    try:
        for _ in range(5):
            opt.step()
    finally:
        gc.callbacks.remove(count)
    assert collections == []


def _child_steps(conn):
    import holocron_optim as ho

    params = [torch.randn(8) for _ in range(MANY)]
    for p in params:
        p.grad = torch.randn(8)
    ho.AdaBelief(params, lr=1e-3).step()
    conn.send("stepped")
    conn.close()


def test_a_process_forked_after_a_step_can_step(threads):
    # GNU OpenMP cannot run a parallel region in a child forked after the parent ran one: the
    # host work of a forked child stays on its calling thread (as before it ran in parallel).
    import multiprocessing

    import holocron_optim as ho

    threads(2)
    params = [torch.randn(8) for _ in range(MANY)]  # 4800 elements: the kernels run on one thread
    for p in params:
        p.grad = torch.randn(8)
    ho.AdaBelief(params, lr=1e-3).step()
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child_steps, args=(send,))
    child.start()
    stepped = receive.poll(60) and receive.recv() == "stepped"
    if not stepped:
        child.kill()
    child.join(10)
    assert stepped, "the forked child hung in its step"
    assert child.exitcode == 0


@pytest.mark.parametrize("name", ALGOS)
def test_copy_on_write_tensors_are_updated(name, threads):
    # A copy-on-write storage is materialized by its first write, which ATen forbids inside a
    # parallel region: such a group is gathered on the calling thread.
    threads(2)
    base = _params(6)
    algorithm = ALGORITHMS[name]
    lazy = [torch._lazy_clone(b) for b in base]
    eager = [b.clone() for b in base]
    for params in (lazy, eager):
        opt = algorithm.make(params, lr=1e-3 * algorithm.lr_scale)
        gen = torch.Generator().manual_seed(2)
        for _ in range(2):  # TAdam's first step moves nothing
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
    _assert_same_bits(lazy, eager)
    assert not torch.equal(lazy[0], base[0]) or base[0].numel() == 0
    _assert_same_bits(base, _params(6))  # the originals are not written through their clones


def test_traced_calls_are_given_the_lists_not_the_pins():
    # The tensors written through pinned_state are in no alias annotation of the op's schema.
    from torch.utils._python_dispatch import TorchDispatchMode

    from holocron_optim import _distributed

    pins = torch.classes.holocron.TensorPins([torch.zeros(1)])
    kwargs = {"exp_avgs": _distributed.PinnedList([torch.zeros(1)], pins, 0)}
    assert _distributed._with_pins(ops.adabelief_, kwargs)["pinned_lists"] == ["exp_avgs"]

    class Passing(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    with Passing():
        assert _distributed._with_pins(ops.adabelief_, kwargs) is kwargs
    # The dtype rule the pinned lists carry goes with the lists too (test_pins.py).
    kwargs = {"exp_avgs": _distributed.PinnedList([torch.zeros(1)], pins, 0, as_param=True)}
    with Passing():
        traced = _distributed._with_pins(ops.adabelief_, kwargs)
    assert traced["state_as_param"] is True and "pinned_state" not in traced
    assert traced["exp_avgs"] is kwargs["exp_avgs"]


def test_tadam_w_t_read_on_the_threads_names_the_first_bad_one(threads):
    """TAdam's W_t are read (and checked) on the intra-op threads for large groups: the values
    read are those of one thread, and a bad one is named in order, with nothing written."""
    target = "W_t"
    def make():
        algorithm = ALGORITHMS["TAdam"]
        params = _params(0)
        opt = algorithm.make(params, lr=1e-3 * algorithm.lr_scale)
        gen = torch.Generator().manual_seed(1)
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
        return params, opt

    results = []
    for num_threads in (1, 2):
        threads(num_threads)
        params, opt = make()
        for _ in range(2):
            opt.step()
        results.append(params + [opt.state[p]["W_t"] for p in params])
    _assert_same_bits(*results)
    threads(2)
    params, opt = make()
    for i in (290, 305):  # the second on the other thread, which reaches it first
        # Changed in place, the W_t pinned after the last step are still the states' own: the op
        # reads them, on the threads (a W_t replaced is checked in Python first, in order too).
        opt.state[params[i]][target].data = torch.zeros(2)
    before = [p.clone() for p in params]
    for _ in range(3):
        with pytest.raises((RuntimeError, ValueError), match=r"W_t of parameter 290\b"):
            opt.step()
        assert all(torch.equal(p, b) for p, b in zip(params, before))
    for i in (290, 305):
        opt.state[params[i]][target] = torch.zeros(2)
    with pytest.raises(RuntimeError, match=r"state 'W_t' of parameter 290\b"):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before))


@pytest.mark.parametrize("target", ["local_lrs", "step_tensors"])
def test_one_element_tensors_of_an_op_are_read_on_the_threads_in_order(target, threads):
    """LAMB's local_lr targets and tensor step counters (a compiled step's) are checked, and the
    counters read, on the intra-op threads: the same bits as one thread, the first bad one named."""
    def call(params, tensors):
        grads = [torch.ones_like(p) * 0.1 for p in params]
        ops.lamb_(params, grads, exp_avgs=[torch.zeros_like(p) for p in params],
                  exp_avg_sqs=[torch.zeros_like(p) for p in params], lr=0.01, beta1=0.9, beta2=0.999,
                  eps=1e-6, weight_decay=0.0, clip_low=0.0, clip_high=10.0, bias_correction=True,
                  **({target: tensors} if target == "step_tensors" else {target: tensors, "steps": [1] * len(params)}))

    def counters(params):
        # Counts that differ per parameter: the bias corrections (and so the update) read each.
        return [torch.tensor(float(i % 7)) if target == "step_tensors" else torch.zeros(()) for i in range(len(params))]

    results = []
    for num_threads in (1, 2):
        threads(num_threads)
        params, tensors = _params(0), None
        tensors = counters(params)
        call(params, tensors)
        results.append(params + tensors)
    _assert_same_bits(*results)
    threads(2)
    params = _params(0)
    tensors = counters(params)
    for i in (290, 305):
        tensors[i] = torch.zeros(2)
    before = [p.clone() for p in params]
    what = "local_lr" if target == "local_lrs" else "step"
    for _ in range(3):
        with pytest.raises(RuntimeError, match=rf"LAMB: the {what} tensor of parameter 290 has shape \[2\]"):
            call(params, tensors)
        assert all(torch.equal(p, b) for p, b in zip(params, before))


def test_an_op_called_inside_a_parallel_region_reads_any_step_tensor():
    """An op called inside an OpenMP region (from a user's parallel code) runs its host work in
    order on its own thread, which reads a one-element tensor of any dtype, as outside one."""
    import ctypes
    import os

    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libgomp.so.1")
    if not os.path.exists(path):
        pytest.skip("torch is not built with GNU OpenMP")
    gomp = ctypes.CDLL(path)
    gomp.omp_get_thread_num.restype = ctypes.c_int
    gomp.omp_in_parallel.restype = ctypes.c_int

    def call(dtype):
        counters = [torch.tensor(2, dtype=dtype)]
        ops.lamb_([torch.ones(4)], [torch.ones(4)], exp_avgs=[torch.zeros(4)], exp_avg_sqs=[torch.zeros(4)],
                  lr=0.01, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.0, clip_low=0.0, clip_high=10.0,
                  bias_correction=True, step_tensors=counters)
        return int(counters[0])

    outcomes = []

    def body(_):
        if gomp.omp_get_thread_num() != 0:
            return
        outcomes.append(gomp.omp_in_parallel())
        for dtype in (torch.float32, torch.int32, torch.int64):
            try:
                outcomes.append(call(dtype))
            except Exception as error:  # reported below: an exception must not cross the C frame
                outcomes.append(repr(error))

    callback = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(body)
    gomp.GOMP_parallel(callback, None, 2, 0)
    assert outcomes == [1, 3, 3, 3]
