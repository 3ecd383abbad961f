"""state_dict layout, cross-loading with the reference, refusal of bad
checkpoints, determinism and bitwise resumption."""

from __future__ import annotations

import copy
import io

import pytest
import torch

import holocron_optim as ho
from registry import ALGORITHMS
from _harness import ALGOS, AdanReference, Case, assert_close, assert_states_close, make_ours, ref_state
from conftest import reference

# A case with every optional buffer (amsgrad, momentum) turned on.
FULL = {name: algorithm.full for name, algorithm in ALGORITHMS.items()}
SHAPES = [(8, 3, 3, 3), (7,), (3, 5, 2), (1,), (4, 6)]


def full_case(name: str, steps: int = 12, seed: int = 11) -> Case:
    opts = dict(FULL[name])
    return Case(name, seed, steps=steps, shapes=SHAPES, options=opts)


def ref_class_options(case: Case) -> dict:
    # Options the reference lacks, at defaults that give its numbers.
    opts = {k: v for k, v in case.options.items()
            if not (k in ALGORITHMS[case.name].reference_ignores and k != "scale_clip")}
    if case.name == "LARS":
        opts.pop("scale_clip", None)
    if case.name in ("LAMB", "RaLars") and opts.get("scale_clip") is None:
        opts.pop("scale_clip")
    return opts


def make_ref_class(case: Case, params):
    return getattr(reference(), case.name)(case.groups(params), **ref_class_options(case))


def train(case: Case, opt, params, start: int, stop: int) -> None:
    for t in range(start, stop):
        for p, g in zip(params, case.grads(t, params)):
            p.grad = g
        opt.step()


def snapshot(opt, params):
    return [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict())


def assert_equal_tree(a, b, path="") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), path
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (path, sorted(map(str, a)), sorted(map(str, b)))
        for k in a:
            assert_equal_tree(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal_tree(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


@pytest.mark.parametrize("name", ALGOS)
def test_layout_matches_reference(name):
    case = full_case(name, steps=4)
    ours_p, ref_p = case.params(torch.float64), case.params(torch.float64)
    ours, refo = make_ours(case, ours_p), make_ref_class(case, ref_p)
    train(case, ours, ours_p, 0, 4)
    train(case, refo, ref_p, 0, 4)
    a, b = ours.state_dict(), refo.state_dict()
    assert set(a) == set(b) == {"state", "param_groups"}
    assert len(a["param_groups"]) == len(b["param_groups"]) == 2
    # Ours adds the options the reference lacks, at defaults that keep its numbers.
    added = {o.name: o.default for o in ALGORITHMS[name].cls._options if o.added_later}
    for ga, gb in zip(a["param_groups"], b["param_groups"]):
        assert set(ga) == set(gb) | set(added)
        assert {key: ga[key] for key in added} == added
        assert ga["params"] == gb["params"]
        for key in gb:
            if key != "sma_inf":
                assert ga[key] == gb[key], key
    assert set(a["state"]) == set(b["state"])
    for key in a["state"]:
        assert set(a["state"][key]) == set(b["state"][key]), key
        for buffer, value in b["state"][key].items():
            assert type(a["state"][key][buffer]) is type(value) or buffer == "local_lr", buffer
            if isinstance(value, torch.Tensor):
                assert a["state"][key][buffer].shape == value.shape, buffer
                assert a["state"][key][buffer].dtype == value.dtype, buffer


def _adan_reference_from(case: Case, params, state_dict) -> AdanReference:
    """The test's corrected Adan reference, resumed from a state dict."""
    groups = case.groups(params)
    adan = AdanReference(groups, **ref_class_options(case))
    flat = [p for g in groups for p in g["params"]]
    for key, st in state_dict["state"].items():
        adan.state[id(flat[key])] = {k: (v.clone() if isinstance(v, torch.Tensor) else int(v)) for k, v in st.items()}
    for group, saved in zip(adan.param_groups, state_dict["param_groups"]):
        group.update({k: v for k, v in saved.items() if k != "params"})
    return adan


@pytest.mark.parametrize("name", ALGOS)
def test_reference_checkpoint_loads_into_ours(name):
    case = full_case(name, steps=16)
    ref_p = case.params(torch.float64)
    refo = make_ref_class(case, ref_p)
    train(case, refo, ref_p, 0, 8)
    sd = copy.deepcopy(refo.state_dict())
    ours_p = [p.detach().clone().requires_grad_() for p in ref_p]
    ours = make_ours(case, ours_p)
    ours.load_state_dict(sd)
    for p, q in zip(ours_p, ref_p):
        assert_states_close(ours.state[p], ref_state(refo, q), 0.0, name)
    if name == "Adan":  # the reference class keeps prev_grad at zero: continue with the corrected reference
        refo = _adan_reference_from(case, ref_p, sd)
    train(case, ours, ours_p, 8, 16)
    train(case, refo, ref_p, 8, 16)
    for i, (p, q) in enumerate(zip(ours_p, ref_p)):
        assert_close(p, q, 1e-9, f"{name} param {i}")
        assert_states_close(ours.state[p], ref_state(refo, q), 1e-9, f"{name} state {i}")


@pytest.mark.parametrize("name", ALGOS)
def test_our_checkpoint_loads_into_reference(name):
    case = full_case(name, steps=16)
    ours_p = case.params(torch.float64)
    ours = make_ours(case, ours_p)
    train(case, ours, ours_p, 0, 8)
    sd = copy.deepcopy(ours.state_dict())
    ref_p = [p.detach().clone().requires_grad_() for p in ours_p]
    refo = make_ref_class(case, ref_p)
    refo.load_state_dict(sd)
    for p, q in zip(ours_p, ref_p):
        assert_states_close(ours.state[p], refo.state[q], 0.0, name)
    if name == "Adan":  # continue with the reference whose prev_grad is kept up to date, as ours
        refo = _adan_reference_from(case, ref_p, sd)
    if name in ("AdaBelief", "AdamP"):
        # torch.optim.Adam's __setstate__ turns loaded steps into float32 tensors, with which
        # the reference's AdaBelief/AdamP would compute bias corrections in float32: give the
        # oracle back its int steps.
        for st in refo.state.values():
            st["step"] = int(st["step"])
    train(case, ours, ours_p, 8, 16)
    train(case, refo, ref_p, 8, 16)
    for i, (p, q) in enumerate(zip(ours_p, ref_p)):
        assert_close(p, q, 1e-9, f"{name} param {i}")
        assert_states_close(ours.state[p], ref_state(refo, q), 1e-9, f"{name} state {i}")


def _corrupt(sd, name, how):
    sd = copy.deepcopy(sd)
    last = max(sd["state"])
    st = sd["state"][last]
    key = "momentum_buffer" if name == "LARS" else "exp_avg"
    if how == "shape":
        st[key] = torch.zeros(st[key].numel() + 1, dtype=st[key].dtype)
    elif how == "dtype":  # floating state of any dtype is converted, as torch.optim's load casts it
        st[key] = st[key].to(torch.int32)
    elif how == "W_t":
        st["W_t"] = torch.ones(2, dtype=st["W_t"].dtype)
    elif how == "missing_param":
        sd["param_groups"][1]["params"] = sd["param_groups"][1]["params"][:-1]
    return sd


@pytest.mark.parametrize(
    "name,how",
    [(n, h) for n in ALGOS for h in ("shape", "dtype", "missing_param")] + [("TAdam", "W_t")],
)
def test_bad_checkpoint_is_refused_before_any_change(name, how):
    case = full_case(name, steps=6)
    params = case.params(torch.float64)
    opt = make_ours(case, params)
    train(case, opt, params, 0, 3)
    good = copy.deepcopy(opt.state_dict())
    # Train on, so that the state differs from `good`.
    train(case, opt, params, 3, 6)
    before_p, before_sd = snapshot(opt, params)
    before_groups = copy.deepcopy([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups])
    with pytest.raises((ValueError, RuntimeError)):
        opt.load_state_dict(_corrupt(good, name, how))
    after_p, after_sd = snapshot(opt, params)
    assert_equal_tree(after_p, before_p)
    assert_equal_tree(after_sd, before_sd)
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == before_groups
    # Still usable.
    train(case, opt, params, 0, 1)


@pytest.mark.parametrize("name", ALGOS)
def test_state_dict_is_deterministic(name):
    sds = []
    for _ in range(2):
        case = full_case(name, steps=10)
        params = case.params(torch.float64)
        opt = make_ours(case, params)
        train(case, opt, params, 0, 10)
        sds.append((opt.state_dict(), [p.detach().clone() for p in params]))
    assert_equal_tree(sds[0], sds[1])


@pytest.mark.parametrize("how", ["deepcopy", "torch.save"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", ALGOS)
def test_round_trip_resumes_bitwise(name, dtype, how):
    case = full_case(name, steps=14)
    params = case.params(dtype)
    opt = make_ours(case, params)
    train(case, opt, params, 0, 7)
    if how == "deepcopy":
        sd = copy.deepcopy(opt.state_dict())
    else:
        buffer = io.BytesIO()
        torch.save(opt.state_dict(), buffer)
        buffer.seek(0)
        sd = torch.load(buffer, weights_only=True)
    params2 = [p.detach().clone().requires_grad_() for p in params]
    opt2 = make_ours(case, params2)
    opt2.load_state_dict(sd)
    train(case, opt, params, 7, 14)
    train(case, opt2, params2, 7, 14)
    for p, q in zip(params, params2):
        assert torch.equal(p, q)
    a, b = opt.state_dict(), opt2.state_dict()
    # torch.optim.Adam's __setstate__ turns steps into tensors on load: compare their values.
    for key in a["state"]:
        for k in a["state"][key]:
            x, y = a["state"][key][k], b["state"][key][k]
            if k == "step":
                assert int(x) == int(y)
            elif isinstance(x, torch.Tensor):
                assert torch.equal(x, y), k
            else:
                assert x == y, k


def test_load_state_dict_keeps_tensor_steps_working():
    """A torch.optim.Adam-style checkpoint (tensor steps) resumes in AdaBelief."""
    case = full_case("AdaBelief", steps=6)
    params = case.params(torch.float64)
    opt = make_ours(case, params)
    train(case, opt, params, 0, 3)
    sd = copy.deepcopy(opt.state_dict())
    for st in sd["state"].values():
        st["step"] = torch.tensor(float(st["step"]))
    opt.load_state_dict(sd)
    reference_run = make_ours(case, case.params(torch.float64))
    train(case, reference_run, reference_run.param_groups[0]["params"] + reference_run.param_groups[1]["params"], 0, 6)
    train(case, opt, params, 3, 6)
    expected = reference_run.state_dict()["state"]
    for key, st in opt.state_dict()["state"].items():
        assert int(st["step"]) == int(expected[key]["step"])
        assert torch.equal(st["exp_avg"], expected[key]["exp_avg"])


@pytest.mark.parametrize("name", ALGOS)
def test_a_load_leaves_entries_of_other_keys_as_they_were(name):
    """torch.optim keeps a state entry whose key is not a parameter's (a hook's) as the loaded
    dict's own object: AdaBelief's and AdamP's load (torch.optim.Adam's __setstate__, whose tensor
    counters ours turn back into ints) used to turn its tensor `step` into an int in the caller's
    dict (found by test_state_dict_properties' random mutations)."""
    params = [torch.nn.Parameter(torch.randn(3, 2))]
    opt = ALGORITHMS[name].make(params, lr=1e-2)
    params[0].grad = torch.randn(3, 2)
    opt.step()
    saved = opt.state_dict()
    note = {"step": torch.tensor(7)}
    saved["state"]["note"] = note
    opt.load_state_dict(saved)
    assert saved["state"]["note"] is note and type(note["step"]) is torch.Tensor and note["step"].item() == 7


def _dcp_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))  # LayerNorm's bias starts at zero
    return model.double()


def _dcp_train(model, opt, steps) -> None:
    for step in steps:
        gen = torch.Generator().manual_seed(step)
        opt.zero_grad()
        model(torch.randn(8, 4, generator=gen, dtype=torch.float64)).pow(2).mean().backward()
        opt.step()


@pytest.mark.parametrize("wrap", [None, "Lookahead", "Scout"])
@pytest.mark.parametrize("name", [*ALGOS, "SGD"])
def test_dcp_resume_with_default_options_continues_bitwise(name, wrap, tmp_path):
    """README's torch.distributed.checkpoint recipe, with each class's defaults. get_state_dict
    fills a fresh optimizer's state with one step of zero gradients, where LAMB's norms are zero
    (weight_decay=0): each entry must keep its type from step to step (a trust ratio of 1 is a
    tensor, not the reference's int), or DCP refuses the checkpoint. A wrapper's slow weights are
    per-parameter entries also around a base that keeps no state (SGD, LARS without momentum)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    def make(model):
        opt = (torch.optim.SGD if name == "SGD" else ALGORITHMS[name].cls)(model.parameters(), lr=1e-2)
        return getattr(ho, wrap)(opt, sync_period=3) if wrap else opt

    model = _dcp_model()
    opt = make(model)
    _dcp_train(model, opt, range(2))
    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp_path))
    _dcp_train(model, opt, range(2, 4))

    fresh = _dcp_model()
    fresh_opt = make(fresh)
    msd, osd = get_state_dict(fresh, fresh_opt)
    loaded = {"model": msd, "optim": osd}
    dcp.load(loaded, checkpoint_id=str(tmp_path))
    set_state_dict(fresh, fresh_opt, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"])
    _dcp_train(fresh, fresh_opt, range(2, 4))
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)
