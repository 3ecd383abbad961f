"""Pickling, deep copies and malformed checkpoints."""

import copy
import io
import pickle

import pytest
import torch

import holocron_optim as H


def _param(seed=0, shape=(4, 3)):
    torch.manual_seed(seed)
    return torch.nn.Parameter(torch.randn(shape, dtype=torch.float64))


def _run(opt, params, steps, seed=1):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        opt.step()


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: H.LARS(ps, lr=0.1, momentum=0.9, scale_clip=(0.0, 1.0)),
        lambda ps: H.LAMB(ps, lr=0.1, scale_clip=(0.0, 1.0)),
        lambda ps: H.RaLars(ps, lr=0.1, force_adaptive_momentum=True, scale_clip=(0.0, 1.0)),
        lambda ps: H.AdamP(ps, lr=0.1, delta=0.5),
    ],
)
def test_deepcopy_keeps_settings_outside_param_groups(make):
    p = _param()
    opt = make([p])
    _run(opt, [p], 3)
    twin_p = copy.deepcopy(p)
    twin = make([twin_p])
    twin.load_state_dict(opt.state_dict())
    copied = copy.deepcopy(opt)
    copied_p = copied.param_groups[0]["params"][0]
    _run(copied, [copied_p], 3, seed=2)
    _run(twin, [twin_p], 3, seed=2)
    assert torch.equal(copied_p, twin_p)


@pytest.mark.parametrize("wrapper", [H.Lookahead, H.Scout])
def test_wrapper_with_scheduler_pickles_and_copies_independently(wrapper):
    p = _param()
    opt = wrapper(H.LAMB([p], lr=0.1), sync_period=2)
    torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)
    _run(opt, [p], 3)
    buffer = io.BytesIO()
    torch.save(opt, buffer)
    assert pickle.loads(pickle.dumps(opt)).fast_steps == 3
    copied = copy.deepcopy(opt)
    copied_p = copied.param_groups[0]["params"][0]
    _run(copied, [copied_p], 1)
    assert copied.fast_steps == 4 and opt.fast_steps == 3


@pytest.mark.parametrize("key,value", [("sync_period", 0), ("sync_rate", float("nan")), ("fast_steps", -3)])
def test_wrapper_refuses_bad_counters_and_options(key, value):
    p = _param()
    opt = H.Lookahead(H.AdaBelief([p], lr=0.1), sync_period=3)
    _run(opt, [p], 2)
    state_dict = opt.state_dict()
    state_dict[key] = value
    fresh = H.Lookahead(H.AdaBelief([p], lr=0.1), sync_period=3)
    with pytest.raises(ValueError):
        fresh.load_state_dict(state_dict)
    assert fresh.fast_steps == 0 and len(fresh.base_optimizer.state) == 0


def test_negative_step_counter_is_refused():
    p = _param()
    opt = H.AdaBelief([p], lr=0.1)
    _run(opt, [p], 2)
    state_dict = opt.state_dict()
    state_dict["state"][0]["step"] = -1
    fresh = H.AdaBelief([_param()], lr=0.1)
    with pytest.raises(ValueError, match="step"):
        fresh.load_state_dict(state_dict)
    assert len(fresh.state) == 0


def test_invalid_group_options_fail_before_any_state_is_made():
    p = _param()
    opt = H.LAMB([p], lr=0.1)
    opt.param_groups[0]["lr"] = -1.0
    p.grad = torch.ones_like(p)
    before = p.detach().clone()
    with pytest.raises(ValueError, match="lr"):
        opt.step()
    assert len(opt.state) == 0 and torch.equal(p, before)


def test_ralars_uses_the_sma_length_recorded_in_its_group():
    # The reference fixes sma_inf on the group's first step; changing beta2 later keeps it.
    p, q = _param(), _param()
    a, b = H.RaLars([p], lr=0.1), H.RaLars([q], lr=0.1)
    _run(a, [p], 1)
    _run(b, [q], 1)
    b.param_groups[0]["sma_inf"] = 3.0  # rectification off from now on (sma_t <= 4)
    _run(a, [p], 8, seed=3)
    _run(b, [q], 8, seed=3)
    assert not torch.equal(p, q)


# -- Group options changed between steps ---------------------------------------------------------
# A step checks every group's options before it updates any group; a group whose options have not
# changed since their last check is not checked again (_validate_options). Each change below must be
# seen, in place or not, by the step after it: it raises before anything is written.


def _two_group_optimizer(name, **group_options):
    from registry import ALGORITHMS

    algo = ALGORITHMS[name]
    first, second = _param(0), _param(1)
    opt = algo.make([{"params": [first]}, {"params": [second], **group_options}], lr=0.01)
    _run(opt, [first, second], 2)
    for p in (first, second):
        p.grad = torch.ones_like(p)
    return opt, first, second


def _refuses_whole(opt, params, error, match):
    before = [p.detach().clone() for p in params]
    states = copy.deepcopy(opt.state_dict()["state"])
    with pytest.raises(error, match=match):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    after = opt.state_dict()["state"]
    assert all(torch.equal(torch.as_tensor(states[i][k]), torch.as_tensor(after[i][k]))
               for i in states for k in states[i])


@pytest.mark.parametrize("name", list(H.__all__[:8]))
def test_an_option_set_between_steps_is_checked_before_any_group_steps(name):
    opt, first, second = _two_group_optimizer(name)
    opt.param_groups[1]["lr"] = -1.0
    _refuses_whole(opt, [first, second], ValueError, "lr")
    opt.param_groups[1]["lr"] = 0.01
    opt.param_groups[1]["weight_decay"] = float("nan")
    _refuses_whole(opt, [first, second], ValueError, "weight_decay")
    opt.param_groups[1]["weight_decay"] = 0.0
    opt.step()


@pytest.mark.parametrize("name", [n for n in H.__all__[:8] if n != "LARS"])
def test_betas_changed_in_place_are_checked_again(name):
    from registry import ALGORITHMS

    betas = [0.9] * ALGORITHMS[name].betas
    opt, first, second = _two_group_optimizer(name, betas=betas)
    assert opt.param_groups[1]["betas"] is betas
    betas[0] = 1.5  # the same list: a check keyed on identity would miss it
    _refuses_whole(opt, [first, second], ValueError, "beta")
    betas[0] = 0.9
    opt.step()


@pytest.mark.parametrize("name", list(H.__all__[:8]))
def test_a_tensor_lr_written_in_place_is_checked_every_step(name):
    lr = torch.tensor(0.01, dtype=torch.float64)
    opt, first, second = _two_group_optimizer(name, lr=lr)
    lr.fill_(-1.0)  # as a scheduler writes a tensor lr
    _refuses_whole(opt, [first, second], ValueError, "lr")
    lr.fill_(0.01)
    opt.step()


def test_a_setting_changed_between_steps_is_refused_before_any_group_steps():
    opt, first, second = _two_group_optimizer("AdamP")
    opt.delta = float("nan")
    _refuses_whole(opt, [first, second], ValueError, "delta")


def test_a_bool_set_where_an_equal_number_was_is_refused():
    # 1 == True: the check must see the bool, which a learning rate cannot be.
    opt, first, second = _two_group_optimizer("AdaBelief", lr=1)
    opt.param_groups[1]["lr"] = True
    _refuses_whole(opt, [first, second], TypeError, "lr")


# -- Checkpoints whose state has another floating dtype ---------------------------------------------


@pytest.mark.parametrize("name", list(H.__all__[:8]))
@pytest.mark.parametrize("saved_dtype, dtype", [(torch.float64, torch.float32), (torch.float16, torch.float32),
                                                (torch.float64, torch.bfloat16), (torch.float32, torch.float64)])
def test_state_of_any_floating_dtype_loads_cast_as_torch_casts_it(name, saved_dtype, dtype):
    from registry import ALGORITHMS

    algo = ALGORITHMS[name]
    source = [_param(0).detach().to(saved_dtype).requires_grad_()]
    opt = algo.make(source, lr=0.01)
    _run(opt, source, 2)
    saved = opt.state_dict()
    target = [_param(0).detach().to(dtype).requires_grad_()]
    fresh = algo.make(target, lr=0.01)
    fresh.load_state_dict(copy.deepcopy(saved))
    # As torch.optim's load: every floating tensor of a state but its counter cast to its parameter's dtype.
    for key, value in saved["state"][0].items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and key != "step":
            loaded = fresh.state[target[0]][key]
            assert loaded.dtype == dtype and torch.equal(loaded, value.to(dtype)), key
    _run(fresh, target, 1)
    assert torch.isfinite(target[0]).all()


@pytest.mark.parametrize("counter", [2**63 - 1, 2**63, 10**30, 1e30])
def test_a_counter_past_int64_is_refused_by_name(counter):
    p = _param()
    opt = H.AdaBelief([p], lr=0.1)
    _run(opt, [p], 1)
    saved = copy.deepcopy(opt.state_dict())
    saved["state"][0]["step"] = counter
    with pytest.raises(ValueError, match="state 'step' of parameter 0 must be an integer from 0 to"):
        opt.load_state_dict(saved)
    # Set in place: the step refuses it before it writes anything.
    opt.state[p]["step"] = 2**63 - 1
    before = p.detach().clone()
    p.grad = torch.ones_like(p)
    with pytest.raises(RuntimeError, match="cannot pass"):
        opt.step()
    assert torch.equal(p, before)


@pytest.mark.parametrize("name", ["LARS", "LAMB", "RaLars"])
@pytest.mark.parametrize("bounds", [("0", "10"), ("a", "b"), (0.0, None)])
def test_scale_clip_bounds_that_are_not_numbers_are_refused_by_name(name, bounds):
    with pytest.raises(TypeError, match=f"{name}: scale_clip must be a real number"):
        getattr(H, name)([_param()], scale_clip=bounds)


@pytest.mark.parametrize("name", list(H.__all__[:8]))
def test_a_parameter_listed_twice_is_refused_before_anything_changes(name):
    """Its op would update it twice with one state, the counter advanced once (torch.optim only
    warns about such a group; the reference steps it twice, counting two steps)."""
    from registry import ALGORITHMS

    first, second = _param(0), _param(1)
    with pytest.warns(UserWarning, match="duplicate"):
        opt = ALGORITHMS[name].make([first, second, first], lr=0.01)
    for p in (first, second):
        p.grad = torch.ones_like(p)
    _refuses_whole(opt, [first, second], ValueError, "parameter 2 of group 0 is also parameter 0 of group 0")
    assert not opt.state
    # Listed twice after some steps, in two groups (past add_param_group's check).
    opt = ALGORITHMS[name].make([{"params": [first]}, {"params": [second]}], lr=0.01)
    _run(opt, [first, second], 2)
    opt.param_groups[1]["params"].append(first)
    _refuses_whole(opt, [first, second], ValueError, "parameter 1 of group 1 is also parameter 0 of group 0")


def _expanded():
    return torch.empty_strided((4, 3), (0, 0), dtype=torch.float64).fill_(1.0).requires_grad_()


def _inference():
    with torch.inference_mode():
        return torch.ones(4, 3, dtype=torch.float64)


@pytest.mark.parametrize("name", list(H.__all__[:8]))
@pytest.mark.parametrize("make_bad, words", [(_expanded, "share memory"), (_inference, "inference tensor")],
                         ids=["expanded", "inference"])
def test_a_parameter_that_cannot_be_written_in_place_is_refused_before_any_group_steps(name, make_bad, words):
    """ATen refuses it only in the middle of an update, after other groups were written."""
    opt, first, second = _two_group_optimizer(name)
    bad = make_bad()
    opt.add_param_group({"params": [bad]})
    bad.grad = torch.ones(4, 3, dtype=torch.float64)
    _refuses_whole(opt, [first, second], RuntimeError, words)


def test_a_state_that_fails_to_be_made_is_taken_back():
    """An exception while a first step makes its state leaves no half-made state behind."""
    first, second = _param(0), _param(1)
    opt = H.TAdam([first, second], lr=0.01)
    make = opt._init_state

    def failing(state, p, group):
        if p is second:
            raise RuntimeError("no state for you")
        make(state, p, group)

    opt._init_state = failing
    for p in (first, second):
        p.grad = torch.ones_like(p)
    with pytest.raises(RuntimeError, match="no state for you"):
        opt.step()
    assert not opt.state


def test_tadam_makes_its_state_for_every_floating_dtype():
    """W_t starts at beta1 / (1 - beta1) in the parameter's dtype, float8 included, whose
    tensors have no product: the other algorithms step float8 parameters too."""
    p = torch.nn.Parameter(torch.randn(5).to(torch.float8_e4m3fn))
    p.grad = torch.ones(5).to(torch.float8_e4m3fn)
    opt = H.TAdam([p], lr=0.01)
    opt.step()
    assert opt.state[p]["W_t"].dtype == torch.float8_e4m3fn
    for dtype in (torch.float64, torch.float32, torch.bfloat16, torch.float16):
        q = torch.nn.Parameter(torch.randn(5, dtype=dtype))
        opt = H.TAdam([q], lr=0.01, betas=(0.8, 0.99))
        state = {}
        opt._init_state(state, q, opt.param_groups[0])
        # The value the product with ones gave, bit for bit.
        assert torch.equal(state["W_t"], 0.8 / (1 - 0.8) * torch.ones(1, dtype=dtype))


@pytest.mark.parametrize("name", list(H.__all__[:8]))
def test_a_sparse_state_buffer_is_refused_by_the_load(name):
    """Accepted, it would fail every step after the load."""
    from registry import ALGORITHMS

    p = _param(0)
    opt = ALGORITHMS[name].make([p], lr=0.01)
    _run(opt, [p], 2)
    sd = copy.deepcopy(opt.state_dict())
    before = copy.deepcopy(opt.state_dict())
    key = next(k for k, v in sd["state"][0].items() if isinstance(v, torch.Tensor) and v.dim() > 0 and k != "W_t")
    sd["state"][0][key] = sd["state"][0][key].to_sparse()
    with pytest.raises(ValueError, match="sparse"):
        opt.load_state_dict(sd)
    after = opt.state_dict()
    assert all(torch.equal(torch.as_tensor(before["state"][0][k]), torch.as_tensor(after["state"][0][k]))
               for k in before["state"][0])
    _run(opt, [p], 1)


def test_ralars_sma_inf_that_is_not_a_number_is_refused_by_name():
    p = _param(0)
    opt = H.RaLars([p], lr=0.01)
    _run(opt, [p], 1)
    opt.param_groups[0]["sma_inf"] = "x"
    with pytest.raises(TypeError, match="RaLars: sma_inf must be a real number, got 'x'"):
        opt.step()


@pytest.mark.parametrize("name", ["LAMB", "Adan"])
@pytest.mark.parametrize("make_grad", [lambda: torch.ones(1, dtype=torch.float64).expand(4, 3), lambda: _inference()],
                         ids=["expanded", "inference"])
def test_a_gradient_that_cannot_be_written_is_read_by_global_clipping(name, make_grad):
    """Gradients are only read, also by max_grad_norm's norm: nothing refuses them as unwritable."""
    from registry import ALGORITHMS

    p, q = _param(0), _param(0)
    clipped = ALGORITHMS[name].make([p], lr=0.01, max_grad_norm=0.5)
    plain = ALGORITHMS[name].make([q], lr=0.01, max_grad_norm=0.5)
    p.grad = make_grad()
    q.grad = torch.ones(4, 3, dtype=torch.float64)
    clipped.step()
    plain.step()
    torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-15)  # a strided gradient takes another loop
