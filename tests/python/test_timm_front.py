"""holocron_optim.timm against timm 1.0.31 itself (installed with --no-deps as a test oracle; its
timm/optim package is loaded with stand-ins for the packages whose __init__ pulls torchvision):
the same signatures, defaults, parameter groups and numbers from create_optimizer_v2 on a model,
the same errors, and timm's own checkpoints resumed."""

from __future__ import annotations

import copy
import importlib
import math
import importlib.util
import inspect
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

import holocron_optim.timm as ours
from conftest import BUILD_DIR

STEPS = 12
NAMES = ["lamb", "lambc", "lambw", "lambcw", "clamb", "clambw", "lars", "larc", "nlars", "nlarc", "adan", "adanw",
         "cadan", "cadanw", "adabelief", "radabelief", "adamp", "lookahead_adamp", "lookahead_lamb", "lookahead_lars", "lookahead_radabelief",
         "lookahead_cadanw"]
CLASSES = ["Lamb", "Lars", "Adan", "AdaBelief", "AdamP", "Lookahead"]


@pytest.fixture(scope="module")
def timm():
    """timm.optim (its factory, classes and parameter groups) without timm's package __init__."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("timm is not installed (make test installs it)")
    root = Path(next(iter(spec.submodule_search_locations)))
    names = ("timm", "timm.layers", "timm.models", "timm.optim")
    saved = {k: v for k, v in sys.modules.items() if k == "timm" or k.startswith("timm.")}
    try:
        for name in names:
            sys.modules[name] = types.ModuleType(name)
        sys.modules["timm"].__path__ = [str(root)]
        sys.modules["timm.optim"].__path__ = [str(root / "optim")]
        sys.modules["timm.layers"].use_reentrant_ckpt = lambda: False
        manipulate_spec = importlib.util.spec_from_file_location("timm.models._manipulate", root / "models/_manipulate.py")
        manipulate = importlib.util.module_from_spec(manipulate_spec)
        manipulate_spec.loader.exec_module(manipulate)
        sys.modules["timm.models"].group_parameters = manipulate.group_parameters
        factory = importlib.import_module("timm.optim._optim_factory")
        yield types.SimpleNamespace(
            create_optimizer_v2=factory.create_optimizer_v2, list_optimizers=factory.list_optimizers,
            Lamb=importlib.import_module("timm.optim.lamb").Lamb, Lars=importlib.import_module("timm.optim.lars").Lars,
            Adan=importlib.import_module("timm.optim.adan").Adan,
            AdaBelief=importlib.import_module("timm.optim.adabelief").AdaBelief,
            Lookahead=importlib.import_module("timm.optim.lookahead").Lookahead,
            AdamP=importlib.import_module("timm.optim.adamp").AdamP,
        )
    finally:
        for name in [k for k in sys.modules if k == "timm" or k.startswith("timm.")]:
            del sys.modules[name]
        sys.modules.update(saved)


class Net(nn.Module):
    """Weights, biases, a norm and a parameter named in no_weight_decay()."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 5)
        self.pos = nn.Parameter(torch.randn(2, 4))

    def no_weight_decay(self):
        return {"pos"}


def _model(seed: int, dtype=torch.float64) -> Net:
    torch.manual_seed(seed)
    return Net().to(dtype)


def _train(opt, model: Net, seed: int, steps: int = STEPS):
    gen = torch.Generator().manual_seed(seed)
    params = list(model.parameters())
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype) * 2
        opt.step()
    return [p.detach().clone() for p in params]


def _plain(groups, without=("params",)):
    return [{k: v for k, v in g.items() if k not in without} for g in groups]


# After a step: timm's Lamb and Adan count steps per group (ours per parameter).
AFTER_STEPS = ("params", "step")


@pytest.mark.parametrize("cls", CLASSES)
def test_signatures_and_defaults_are_timms(timm, cls):
    theirs = inspect.signature(getattr(timm, cls).__init__).parameters
    mine = inspect.signature(getattr(ours, cls).__init__).parameters
    assert list(mine) == list(theirs)
    for name, parameter in theirs.items():
        assert mine[name].default == parameter.default, name


@pytest.mark.parametrize("options", [
    {"lr": 0.02, "weight_decay": 0.05},
    {"lr": 0.05, "weight_decay": 0.0, "filter_bias_and_bn": False},
    {"lr": 0.01, "weight_decay": 0.1, "layer_decay": 0.7},
    {"lr": 0.01, "weight_decay": 0.05, "momentum": 0.5, "eps": 1e-6, "betas": (0.8, 0.99), "foreach": False},
], ids=["decay", "no-filter", "layer-decay", "explicit"])
@pytest.mark.parametrize("name", NAMES)
def test_create_optimizer_v2_gives_timms_groups_and_numbers(timm, name, options):
    if "betas" in options and "adan" in name:
        options = {**options, "betas": (0.9, 0.9, 0.95)}
    if name.endswith("adamp"):  # timm's AdamP takes no foreach (timm itself fails)
        options = {k: v for k, v in options.items() if k != "foreach"}
    theirs_model, ours_model = _model(1), _model(1)
    theirs = timm.create_optimizer_v2(theirs_model, name, **options)
    mine = ours.create_optimizer_v2(ours_model, name, **options)
    assert type(mine).__name__ == type(theirs).__name__
    assert _plain(mine.param_groups) == _plain(theirs.param_groups)
    assert [len(g["params"]) for g in mine.param_groups] == [len(g["params"]) for g in theirs.param_groups]
    expected, actual = _train(theirs, theirs_model, 2), _train(mine, ours_model, 2)
    for a, b in zip(actual, expected):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cls", [c for c in CLASSES if c != "Lookahead"])
def test_classes_with_timms_defaults_give_timms_numbers(timm, cls, dtype):
    theirs_model, ours_model = _model(3, dtype), _model(3, dtype)
    lr = {"Lamb": {}, "Lars": {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}, "Adan": {"weight_decay": 0.02},
          "AdaBelief": {"weight_decay": 0.02, "amsgrad": True},
          "AdamP": {"weight_decay": 0.05, "delta": 1.0, "nesterov": True}}[cls]
    expected = _train(getattr(timm, cls)(theirs_model.parameters(), **lr), theirs_model, 4)
    actual = _train(getattr(ours, cls)(ours_model.parameters(), **lr), ours_model, 4)
    tolerance = {torch.float64: 1e-9, torch.float32: 1e-4}[dtype]
    for a, b in zip(actual, expected):
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance * 1e-2)


@pytest.mark.parametrize("cls,options", [("Lamb", {"lr": 0.01}),
                                         ("Adan", {"lr": 0.01, "weight_decay": 0.05, "no_prox": True}),
                                         ("AdaBelief", {"lr": 0.01, "weight_decay": 0.05, "amsgrad": True}),
                                         ("AdamP", {"lr": 0.01, "weight_decay": 0.05, "delta": 1.0})])
def test_a_timm_checkpoint_resumes(timm, cls, options):
    theirs_model, ours_model = _model(5), _model(5)
    theirs = getattr(timm, cls)(theirs_model.parameters(), **options)
    _train(theirs, theirs_model, 7, steps=3)
    ours_model.load_state_dict(theirs_model.state_dict())
    mine = getattr(ours, cls)(ours_model.parameters(), **options)
    mine.load_state_dict(copy.deepcopy(theirs.state_dict()))
    expected, actual = _train(theirs, theirs_model, 8, steps=4), _train(mine, ours_model, 8, steps=4)
    for a, b in zip(actual, expected):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("base,options", [("Lamb", {"lr": 0.01}), ("Adan", {"lr": 0.01, "weight_decay": 0.05}),
                                          ("AdaBelief", {"lr": 0.01, "amsgrad": True}),
                                          ("Lars", {"lr": 0.5, "momentum": 0.9, "weight_decay": 0.01})])
def test_lookahead_gives_timms_numbers_groups_and_checkpoints(timm, base, options):
    """alpha and k of timm's Lookahead, a group added between syncs (its own counter), a parameter
    without a gradient at a sync (not pulled back; only where timm's base counts steps per
    parameter, as ours), and a checkpoint of timm's resumed."""
    theirs_model, ours_model = _model(6), _model(6)
    theirs = timm.Lookahead(getattr(timm, base)(theirs_model.parameters(), **options), alpha=0.3, k=3)
    mine = ours.Lookahead(getattr(ours, base)(ours_model.parameters(), **options), alpha=0.3, k=3)
    assert _plain(mine.param_groups) == _plain(theirs.param_groups)
    for opt, model in ((theirs, theirs_model), (mine, ours_model)):
        _train(opt, model, 9, steps=5)
        if base in ("AdaBelief", "Lars"):
            model.pos.grad = None
        opt.step()  # the 6th: a sync
        opt.add_param_group({"params": [nn.Parameter(torch.ones(3, dtype=torch.float64))]})
    assert _plain(mine.param_groups, AFTER_STEPS) == _plain(theirs.param_groups, AFTER_STEPS)
    for (a, b) in zip(_train(mine, ours_model, 10, steps=5), _train(theirs, theirs_model, 10, steps=5)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    resumed_model = _model(0)
    resumed_model.load_state_dict(theirs_model.state_dict())
    resumed = ours.Lookahead(getattr(ours, base)(resumed_model.parameters(), **options), alpha=0.3, k=3)
    resumed.add_param_group({"params": [nn.Parameter(torch.ones(3, dtype=torch.float64))]})
    resumed.load_state_dict(copy.deepcopy(theirs.state_dict()))
    assert _plain(resumed.param_groups, AFTER_STEPS) == _plain(theirs.param_groups, AFTER_STEPS)
    for (a, b) in zip(_train(resumed, resumed_model, 11, steps=4), _train(theirs, theirs_model, 11, steps=4)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("base,options", [("Lamb", {"lr": 0.01}), ("Lars", {"lr": 0.5, "momentum": 0.9})])
def test_lookahead_synced_before_the_first_step_is_timms(timm, base, options):
    """sync_lookahead() before any step (gradients present) leaves the base's state holding only
    the slow weights; the base's first step then starts its own state there. timm's Lamb raises
    there (its state is not empty, yet lacks its moments): its first step runs with the slow
    weights set aside."""
    theirs_model, ours_model = _model(4), _model(4)
    theirs = timm.Lookahead(getattr(timm, base)(theirs_model.parameters(), **options), alpha=0.5, k=2)
    mine = ours.Lookahead(getattr(ours, base)(ours_model.parameters(), **options), alpha=0.5, k=2)
    for opt, model in ((theirs, theirs_model), (mine, ours_model)):
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        opt.sync_lookahead()
    assert all(set(state) == {"lookahead_slow_buff"} for state in mine._base_optimizer.state.values())
    _train(mine, ours_model, 12, steps=1)
    base_state = theirs._base_optimizer.state
    slow = {p: base_state[p].pop("lookahead_slow_buff") for p in list(base_state)}
    _train(theirs, theirs_model, 12, steps=1)
    for p, buffer in slow.items():
        base_state[p]["lookahead_slow_buff"] = buffer
    for (a, b) in zip(_train(mine, ours_model, 13, steps=4), _train(theirs, theirs_model, 13, steps=4)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_lookahead_synced_before_the_first_step_saves_and_loads():
    """The checkpoint of that state (the base's state: slow weights only) loads back and steps as
    the optimizer it came from."""
    models = [_model(4), _model(4)]
    optimizers = [ours.Lookahead(ours.Lamb(m.parameters(), lr=0.01), alpha=0.5, k=2) for m in models]
    for p in models[0].parameters():
        p.grad = torch.ones_like(p)
    optimizers[0].sync_lookahead()
    optimizers[1].load_state_dict(copy.deepcopy(optimizers[0].state_dict()))
    for (a, b) in zip(_train(optimizers[0], models[0], 14, steps=3), _train(optimizers[1], models[1], 14, steps=3)):
        assert torch.equal(a, b)


def test_lamb_loads_timms_state_dicts_pickled_before_the_snapshot(timm):
    """timm fills max_lr_snapshot from the lr when a saved group lacks it; so does ours."""
    options = {"lr": 0.02, "weight_decay": 0.1, "decoupled_decay": True, "corrected_weight_decay": True}
    theirs_model, ours_model = _model(9), _model(9)
    theirs = timm.Lamb(theirs_model.parameters(), **options)
    _train(theirs, theirs_model, 15, steps=2)
    ours_model.load_state_dict(theirs_model.state_dict())
    saved = copy.deepcopy(theirs.state_dict())
    for group in saved["param_groups"]:
        del group["max_lr_snapshot"]
    reloaded = timm.Lamb(_model(9).parameters(), **options)
    reloaded.load_state_dict(copy.deepcopy(saved))
    mine = ours.Lamb(ours_model.parameters(), **options)
    mine.load_state_dict(copy.deepcopy(saved))
    assert [g["max_lr_snapshot"] for g in mine.param_groups] == [g["max_lr_snapshot"] for g in reloaded.param_groups]
    for (a, b) in zip(_train(mine, ours_model, 16, steps=2), _train(theirs, theirs_model, 16, steps=2)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_lamb_corrected_weight_decay_keeps_the_trust_ratio_at_lr_zero():
    """timm gates the trust ratio on the group's weight decay, not the corrected one (0 at lr 0)."""
    ratios = []
    for corrected in (True, False):
        model = _model(10)
        opt = ours.Lamb(model.parameters(), lr=0.02, weight_decay=0.1, decoupled_decay=True,
                        corrected_weight_decay=corrected)
        for group in opt.param_groups:
            group["lr"] = 0.0
        _train(opt, model, 17, steps=1)
        ratios.append([float(opt.state[p]["local_lr"]) for p in model.parameters()])
    assert ratios[0] == ratios[1] and any(r != 1.0 for r in ratios[0])


def test_lamb_corrected_weight_decay_is_timms(timm):
    """lr**2 / max_lr * weight_decay under a schedule that lowers lr, and timm's refusal of a max lr
    of 0."""
    options = {"lr": 0.02, "weight_decay": 0.1, "decoupled_decay": True, "corrected_weight_decay": True}
    theirs_model, ours_model = _model(8), _model(8)
    theirs, mine = timm.Lamb(theirs_model.parameters(), **options), ours.Lamb(ours_model.parameters(), **options)
    assert _plain(mine.param_groups) == _plain(theirs.param_groups)
    def train(opt, model):
        scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        for _ in range(3):
            _train(opt, model, 8, steps=2)
            scheduler.step()
        return [p.detach().clone() for p in model.parameters()]

    expected, actual = train(theirs, theirs_model), train(mine, ours_model)
    uncorrected = _model(8)
    train(ours.Lamb(uncorrected.parameters(), **{**options, "corrected_weight_decay": False}), uncorrected)
    for a, b, c in zip(actual, expected, uncorrected.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert not all(torch.equal(a, c) for a, c in zip(actual, uncorrected.parameters()))
    p = [nn.Parameter(torch.randn(3))]
    for cls in (timm.Lamb, ours.Lamb):
        with pytest.raises(ValueError, match="Corrected weight decay requires a positive max lr"):
            cls(p, lr=0.0, corrected_weight_decay=True)


def test_adamp_a_nan_channel_cosine_blocks_the_channel_projection_as_timm(timm):
    """A zero output channel with eps = 0 makes its cosine 0 / 0: timm's max over the channels is
    then NaN, the channel test fails and the layer-wise one decides."""
    gen = torch.Generator().manual_seed(0)
    init, grad = torch.randn(3, 4, generator=gen), torch.randn(3, 4, generator=gen)
    init[1] = 0
    results = []
    for cls in (timm.AdamP, ours.AdamP):
        p = nn.Parameter(init.clone())
        opt = cls([p], lr=0.01, eps=0.0, delta=5.0, weight_decay=0.1)
        for _ in range(3):
            p.grad = grad.clone()
            opt.step()
        results.append(p.detach().clone())
    assert torch.isfinite(results[1]).all()
    torch.testing.assert_close(results[1], results[0], rtol=1e-6, atol=1e-7)


def test_a_timm_adabelief_checkpoint_of_bfloat16_parameters_loads(timm):
    """timm keeps the state of a bfloat16 parameter in float32; ours keeps the parameter's dtype."""
    p_theirs = nn.Parameter(torch.randn(4, 3).to(torch.bfloat16))
    p_ours = nn.Parameter(p_theirs.detach().clone())
    theirs = timm.AdaBelief([p_theirs], lr=0.01, amsgrad=True)
    for _ in range(3):
        p_theirs.grad = torch.randn(4, 3).to(torch.bfloat16)
        theirs.step()
    saved = theirs.state_dict()
    assert saved["state"][0]["exp_avg_var"].dtype == torch.float32
    mine = ours.AdaBelief([p_ours], lr=0.01, amsgrad=True)
    mine.load_state_dict(copy.deepcopy(saved))
    state = mine.state[p_ours]
    assert state["exp_avg_sq"].dtype == torch.bfloat16 and state["step"] == 3
    torch.testing.assert_close(state["max_exp_avg_sq"].float(), saved["state"][0]["max_exp_avg_var"], rtol=1e-2,
                               atol=0.0)
    p_ours.grad = torch.randn(4, 3).to(torch.bfloat16)
    mine.step()


def test_lookahead_syncs_complex_parameters_as_timm(timm):
    gen = torch.Generator().manual_seed(1)
    init = torch.randn(3, dtype=torch.complex128, generator=gen)
    grads = [torch.randn(3, dtype=torch.complex128, generator=gen) for _ in range(5)]
    results = []
    for wrapper in (timm.Lookahead, ours.Lookahead):
        p = nn.Parameter(init.clone())
        opt = wrapper(torch.optim.Adam([p], lr=0.1), alpha=0.3, k=2)
        for g in grads:
            p.grad = g.clone()
            opt.step()
        results.append(p.detach().clone())
    torch.testing.assert_close(results[1], results[0], rtol=1e-12, atol=1e-14)


def test_list_optimizers_filters_as_timm(timm):
    mine = set(ours.list_optimizers())
    assert ours.list_optimizers(["la*", "nla*"]) == [n for n in timm.list_optimizers(["la*", "nla*"]) if n in mine]
    assert set(ours.list_optimizers()) >= {n for n in NAMES if "_" not in n} | {"ralars", "tadam", "ademamix"}
    described = dict(ours.list_optimizers("lamb*", with_description=True))
    assert set(described) == {"lamb", "lambc", "lambcw", "lambw"} and all(described.values())
    assert ours.list_optimizers("c*") == ["cadan", "cadanw", "clamb", "clambw"]
    assert ours.list_optimizers("*", exclude_filters=["l*", "n*", "c*"]) == [
        "adabelief", "adamp", "adan", "adanw", "ademamix", "radabelief", "ralars", "tadam"]


def test_our_own_names_and_scout():
    model = _model(0)
    opt = ours.create_optimizer_v2(model, "ralars", lr=0.01, weight_decay=0.05)
    assert type(opt).__name__ == "RaLars" and [g["weight_decay"] for g in opt.param_groups] == [0.0, 0.05]
    scout = ours.create_optimizer_v2(model, "scout_lamb", lr=0.01)
    assert type(scout).__name__ == "Scout" and type(scout.base_optimizer).__name__ == "Lamb"
    _train(scout, model, 0, steps=2)


@pytest.mark.parametrize("name,error,message", [
    ("nope", ValueError, "Optimizer nope not found in registry"),
    ("cadoptw", NotImplementedError, "'cadoptw' .*cautious.* not available yet"),
    ("cadamw", NotImplementedError, "cautious"),
    ("cadamp", NotImplementedError, "spherical cautious"),
    ("lookahead_cadamw", NotImplementedError, "cautious"),
    ("lookahead_scout_lamb", ValueError, "not found in registry"),
    ("foo_lamb", ValueError, "not found in registry"),
])
def test_names_not_reproduced_are_refused(name, error, message):
    with pytest.raises(error, match=message):
        ours.create_optimizer_v2(_model(0), name, lr=0.01)


@pytest.mark.parametrize("cls,option", [("AdamP", "caution")])
def test_options_not_reproduced_are_refused(cls, option):
    model = _model(0)
    with pytest.raises(NotImplementedError, match=f"{option}=True .* not available yet"):
        getattr(ours, cls)(model.parameters(), **{option: True})
    opt = getattr(ours, cls)(model.parameters())
    with pytest.raises(NotImplementedError, match=option):
        opt.add_param_group({"params": [nn.Parameter(torch.randn(2))], option: True})
    assert len(opt.param_groups) == 1


def test_bad_values_are_refused_with_timms_or_clear_errors(timm):
    p = [nn.Parameter(torch.randn(3))]
    for cls, options in (("Lamb", {"lr": -1.0}), ("Lamb", {"eps": -1.0}), ("Lars", {"lr": -1.0}),
                         ("Lars", {"momentum": -1.0}), ("Lars", {"nesterov": True}), ("Adan", {"lr": -1.0}),
                         ("Adan", {"eps": -1.0}), ("Adan", {"betas": (0.9, 1.0, 0.9)}), ("AdaBelief", {"lr": -1.0}),
                         ("AdaBelief", {"eps": -1.0}), ("AdaBelief", {"betas": (0.9, 1.0)})):
        with pytest.raises(ValueError):
            getattr(timm, cls)(p, **options)
        with pytest.raises(ValueError):
            getattr(ours, cls)(p, **options)
    # timm's AdamP checks nothing; ours refuses what its step would.
    for options in ({"lr": -1.0}, {"eps": -1.0}, {"betas": (0.9, 1.0)}, {"delta": math.nan}, {"wd_ratio": -0.1}):
        with pytest.raises(ValueError):
            ours.AdamP(p, **options)
    with pytest.raises(TypeError, match="foreach must be None or a bool"):
        ours.Lamb(p, foreach="yes")


RUNNER = BUILD_DIR / "tests" / "cpp" / "holocron_parity_runner"


@pytest.mark.skipif(not RUNNER.exists(), reason="the C++ tests are not built (make build)")
@pytest.mark.parametrize("name", NAMES)
def test_cpp_create_optimizer_gives_timms_numbers(timm, name):
    """holocron::optim::create_optimizer(name, groups, options) through the parity runner, against
    timm's create_optimizer_v2 over the same parameters (one group) and random numbers."""
    import subprocess

    from test_cpp_front import SHAPES, STEPS as RUNNER_STEPS
    settings = {"lr": 0.05, "weight_decay": 0.01, "momentum": 0.8}
    out = subprocess.run([str(RUNNER), f"timm:{name}", "4", str(RUNNER_STEPS), *[f"{k}={v!r}" for k, v in settings.items()]],
                         check=True, capture_output=True, text=True).stdout
    cpp = [torch.tensor([float(v) for v in line.split()], dtype=torch.float64) for line in out.splitlines()]
    torch.manual_seed(4)
    params = [torch.randn(shape, dtype=torch.float64) for shape in SHAPES]
    opt = timm.create_optimizer_v2(params, name, **settings)
    for _ in range(RUNNER_STEPS):
        for p in params:
            p.grad = torch.randn(p.shape, dtype=torch.float64)
        opt.step()
    for a, b in zip(cpp, params):
        torch.testing.assert_close(a, b.detach().reshape(-1), rtol=1e-9, atol=1e-12)
