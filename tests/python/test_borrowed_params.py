"""Parameters handed to the ops borrowed (torch.classes.holocron.BorrowedParams, `param_refs`,
FusedStep._params_of): past a group's first step its op takes them without converting the list.
They must be exactly the group's parameters at every step (a parameter replaced, added, removed or
swapped by torch.utils.swap_tensors), hold no reference that the garbage collector or
swap_tensors would see, and change nothing a step computes."""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch

from holocron_optim import _base, _distributed, _library
from holocron_optim._library import ops
from _harness import assert_same
from registry import ALGORITHMS, ALGOS


def _params(seed: int, count: int = 37) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(1 + i % 5, 3, generator=g)) for i in range(count)]


def _set_grads(params: list[torch.Tensor], k: int) -> None:
    g = torch.Generator().manual_seed(100 + k)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)


def _stepped(name: str, params: list[torch.Tensor], steps: int):
    """An optimizer of `name` over `params`, after `steps` steps."""
    opt = ALGORITHMS[name].make(params, lr=1e-2)
    for k in range(steps):
        _set_grads(params, k)
        opt.step()
    return opt


def _never_borrowing(monkeypatch, opt) -> None:
    monkeypatch.setattr(opt, "_params_of", lambda group: list(group["params"]))


def _spy_on_borrowing(monkeypatch) -> list[bool]:
    """Records, for every update op called through distributed.call on parameters (not on the
    empty lists that check a group's options), whether it was handed the borrowed parameters."""
    borrowed = []
    call = _distributed.call

    def spy(op, params, *args, **kwargs):
        if _distributed._takes_pins(op) and params:
            borrowed.append(type(params) is _distributed.BorrowedList)
        return call(op, params, *args, **kwargs)

    monkeypatch.setattr(_distributed, "call", spy)
    return borrowed


def _assert_same(opt, params, twin, twin_params) -> None:
    for a, b in zip(params, twin_params, strict=True):
        assert_same(a, b)
        assert_same(opt.state[a], twin.state[b])


@pytest.mark.parametrize("name", ALGOS)
def test_steps_with_borrowed_params_are_those_without(name, monkeypatch):
    """Twins stepped in turns, one borrowing its parameters past its first step and one never,
    through every change to the group's list that the borrowed parameters must follow."""
    algorithm = ALGORITHMS[name]
    params, plain = _params(0), _params(0)
    opt, twin = algorithm.make(params, lr=1e-2), algorithm.make(plain, lr=1e-2)
    _never_borrowing(monkeypatch, twin)
    borrowed = _spy_on_borrowing(monkeypatch)
    # Per step, whether an update op was handed the borrowed parameters.
    opt_borrowed, twin_borrowed = [], []
    k = 0

    def steps(count: int) -> None:
        nonlocal k
        for _ in range(count):
            _set_grads(params, k), _set_grads(plain, k)
            for o, record in ((opt, opt_borrowed), (twin, twin_borrowed)):
                borrowed.clear()
                o.step()
                record.append(bool(borrowed) and all(borrowed))
            k += 1

    steps(3)
    assert opt_borrowed == [True] * 3 and twin_borrowed == [False] * 3
    # Replaced by another tensor of the same values (an equal clone is not the parameter).
    for group_params in (opt.param_groups[0]["params"], twin.param_groups[0]["params"]):
        group_params[5] = torch.nn.Parameter(group_params[5].detach().clone())
    params[5], plain[5] = opt.param_groups[0]["params"][5], twin.param_groups[0]["params"][5]
    steps(2)
    # A tensor exchanged into a parameter's PyObject by swap_tensors (Module.to, with
    # torch.__future__.set_swap_module_params_on_conversion): the same object, another tensor.
    for p in (params[9], plain[9]):
        torch.utils.swap_tensors(p, torch.nn.Parameter(p.detach() * 2))
    steps(2)
    # The data of a parameter replaced in place (`p.data = ...`): the same tensor.
    for p in (params[11], plain[11]):
        p.data = p.data.clone() + 1
    steps(2)
    # One removed, one added.
    for o, ps in ((opt, params), (twin, plain)):
        del o.param_groups[0]["params"][20]
        o.state.pop(ps.pop(20), None)
        extra = torch.nn.Parameter(torch.ones(2, 3))
        o.param_groups[0]["params"].append(extra)
        ps.append(extra)
    steps(3)
    assert all(opt_borrowed) and not any(twin_borrowed)
    _assert_same(opt, params, twin, plain)


@pytest.mark.parametrize("name", ["AdaBelief", "LAMB", "TAdam", "LARS"])
def test_the_op_is_handed_the_borrowed_params_and_an_empty_list(name, monkeypatch):
    opt = ALGORITHMS[name].make(_params(1), lr=1e-2)
    handed = []
    op_calls = []

    class Recording:
        def __init__(self, op):
            self.op = op

        def __call__(self, *args, **kwargs):
            op_calls.append((args, kwargs))
            return self.op(*args, **kwargs)

    for k in range(3):
        _set_grads(opt.param_groups[0]["params"], k)
        opt.step()
    call = _distributed.call

    def spy(op, params, *args, **kwargs):
        handed.append(params)
        return call(Recording(op) if _distributed._takes_pins(op) else op, params, *args, **kwargs)

    monkeypatch.setattr(_distributed, "_takes_pins", lambda op: True)
    monkeypatch.setattr(_distributed, "call", spy)
    _set_grads(opt.param_groups[0]["params"], 3)
    opt.step()
    args, kwargs = op_calls[-1]
    assert args[0] == [] and kwargs["param_refs"] is opt._borrowed[id(opt.param_groups[0])].refs
    assert len(kwargs["param_refs"]) == len(opt.param_groups[0]["params"])


def test_borrowed_params_hold_no_reference():
    """Neither the garbage collector nor swap_tensors (which refuses a tensor referenced from
    elsewhere) sees a reference from the borrowed parameters; a parameter -> optimizer cycle
    (a hook or an attribute that a framework sets) is collected."""
    params = _params(2, count=8)
    opt = _stepped("AdaBelief", params, 3)
    assert opt._borrowed[id(opt.param_groups[0])].address is not None
    counts = [p._use_count() for p in params]
    refs = torch.classes.holocron.BorrowedParams(params)
    assert [p._use_count() for p in params] == counts
    del refs
    torch.utils.swap_tensors(params[0], torch.nn.Parameter(torch.zeros_like(params[0])))
    for p in params:
        p.optimizer = opt  # the cycle
    alive = weakref.ref(opt), weakref.ref(params[3])
    del opt, params, p
    gc.collect()
    assert alive[0]() is None and alive[1]() is None


def test_params_are_checks_the_objects_and_their_tensors():
    walks = _library.walks
    assert walks is not None
    params = _params(3, count=40)
    refs = torch.classes.holocron.BorrowedParams(params)
    assert refs.usable()
    address = refs.address()
    assert walks.holocron_params_are(params, address) == 1
    assert walks.holocron_params_are(list(params), address) == 1
    assert walks.holocron_params_are(params[:-1], address) == 0
    assert walks.holocron_params_are(params + [params[0]], address) == 0
    assert walks.holocron_params_are([params[1], params[0], *params[2:]], address) == 0
    assert walks.holocron_params_are([*params[:30], params[30].detach(), *params[31:]], address) == 0
    assert walks.holocron_params_are([], torch.classes.holocron.BorrowedParams([]).address()) == 1
    other = torch.nn.Parameter(torch.zeros_like(params[30]))
    torch.utils.swap_tensors(params[30], other)
    assert walks.holocron_params_are(params, address) == 0
    torch.utils.swap_tensors(params[30], other)
    assert walks.holocron_params_are(params, address) == 1


def test_an_op_refuses_borrowed_params_beside_a_list():
    params = _params(4, count=3)
    for p in params:
        p.grad = torch.ones_like(p)
    state = [torch.zeros_like(p) for p in params]
    refs = torch.classes.holocron.BorrowedParams(params)
    kwargs = dict(exp_avgs=state, exp_avg_sqs=[torch.zeros_like(p) for p in params], max_exp_avg_sqs=[],
                  steps=[1, 1, 1], lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, amsgrad=False)
    before = [p.detach().clone() for p in params]
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="params must be an empty list when param_refs is given"):
            ops.adabelief_(params, None, **kwargs, param_refs=refs)
        assert all(torch.equal(a, b) for a, b in zip(params, before))
        ops.adabelief_([], None, **kwargs, param_refs=refs)
    assert not any(torch.equal(a, b) for a, b in zip(params, before))


def test_a_copy_of_the_optimizer_borrows_its_own_params():
    """What is kept to borrow the parameters is not copied, pickled or shared by a deepcopy."""
    params = _params(5, count=6)
    opt = _stepped("Adan", params, 2)
    clone = copy.deepcopy(opt)
    assert "_borrowed" not in clone.__dict__
    for k in range(2, 4):
        _set_grads(params, k)
        _set_grads(clone.param_groups[0]["params"], k)
        opt.step(), clone.step()
    for a, b in zip(params, clone.param_groups[0]["params"]):
        assert torch.equal(a, b)


def test_no_borrowing_without_the_walks(monkeypatch):
    monkeypatch.setattr(_base, "walks", None)
    params = _params(6, count=5)
    opt = _stepped("LAMB", params, 3)
    assert not opt.__dict__.get("_borrowed")


class _Traced(torch.Tensor):
    """A tensor subclass with __torch_function__: every op called with one passes through it."""

    seen = 0

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if getattr(func, "__module__", None) == "torch._ops.holocron" or "holocron" in str(func):
            cls.seen += 1
        return super().__torch_function__(func, types, args, kwargs or {})


def test_subclass_parameters_are_handed_as_lists():
    """An op handed no parameter would not reach a subclass's __torch_function__ (or
    __torch_dispatch__): a group holding one is handed its list, as before."""
    params = [torch.randn(4, 3).as_subclass(_Traced).requires_grad_() for _ in range(5)]
    opt = ALGORITHMS["AdaBelief"].make(params, lr=1e-2)
    _Traced.seen = 0
    for k in range(3):
        _set_grads(params, k)
        opt.step()
    assert _Traced.seen >= 3
    assert opt.__dict__.get("_borrowed", {}).get(id(opt.param_groups[0])) is None


def test_a_class_assigned_anew_is_borrowed_again():
    """`p.__class__ = ...` keeps the tensor but changes the object's type: the check sees it."""
    params = _params(7, count=6)
    refs = torch.classes.holocron.BorrowedParams(params)
    assert _library.walks.holocron_params_are(params, refs.address()) == 1
    params[4].__class__ = torch.Tensor
    assert _library.walks.holocron_params_are(params, refs.address()) == 0
    params[4].__class__ = torch.nn.Parameter
    assert _library.walks.holocron_params_are(params, refs.address()) == 1


def test_the_fake_kernel_counts_borrowed_params():
    """The Meta kernel returns one trust ratio per parameter, handed as a list or borrowed."""
    params = [torch.empty(3, 2, device="meta"), torch.empty(5, device="meta")]
    refs = torch.classes.holocron.BorrowedParams(params)
    lists = dict(exp_avgs=[torch.empty_like(p) for p in params], exp_avg_sqs=[torch.empty_like(p) for p in params],
                 lr=0.01, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.0, clip_low=0.0, clip_high=10.0,
                 steps=[1, 1])
    grads = [torch.empty_like(p) for p in params]
    assert ops.lamb_(params, grads, **lists).shape == (2,)
    assert ops.lamb_([], grads, **lists, param_refs=refs).shape == (2,)


def test_a_w_t_that_is_no_tensor_is_refused_by_name():
    params = _params(8, count=4)
    opt = _stepped("TAdam", params, 2)
    opt.state[params[2]]["W_t"] = 0.5
    before = [p.detach().clone() for p in params]
    with pytest.raises(RuntimeError, match=r"state 'W_t' of parameter 2 must be .*got 0\.5"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(params, before))
