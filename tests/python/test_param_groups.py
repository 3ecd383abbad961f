"""holocron_optim.param_groups against timm's own functions (timm 1.0.31, installed with --no-deps
as a test oracle and loaded file by file: its package __init__ pulls torchvision): the same groups,
in the same order, with the same keys and parameters, over models with and without timm's
group_matcher and over every option."""

from __future__ import annotations

import importlib.util
import itertools
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

import holocron_optim as ho
from holocron_optim import param_groups as ours


def _timm_file(relative: str) -> Path:
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("timm is not installed (make test installs it)")
    return Path(next(iter(spec.submodule_search_locations))) / relative


@pytest.fixture(scope="module")
def timm_groups(tmp_path_factory):
    """timm/optim/_param_groups.py, its `from timm.models import group_parameters` served by
    timm/models/_manipulate.py."""
    def load(name: str, path: Path) -> types.ModuleType:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    # Stand-ins for the packages whose __init__ pulls torchvision: _manipulate.py takes one
    # checkpointing switch from timm.layers, which grouping never calls.
    manipulate_file, groups_file = _timm_file("models/_manipulate.py"), _timm_file("optim/_param_groups.py")
    saved = {k: sys.modules.get(k) for k in ("timm", "timm.layers", "timm.models")}
    try:
        for k in saved:
            sys.modules[k] = types.ModuleType(k)
        sys.modules["timm.layers"].use_reentrant_ckpt = lambda: False
        manipulate = load("_timm_manipulate", manipulate_file)
        sys.modules["timm.models"].group_parameters = manipulate.group_parameters
        yield load("_timm_param_groups", groups_file)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


class Affine(nn.Module):
    """A two-dimensional `bias`: out of weight decay by its name, in layer decay's decay group."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(2, 3))
        self.bias = nn.Parameter(torch.zeros(2, 3))


class Block(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim, bias=False))


class TinyViTAuto(nn.Module):
    """The parameter names of timm's VisionTransformer, small; layers found by auto_group_layers."""

    pretrained_cfg = {"classifier": "head"}

    def __init__(self, depth: int = 5, dim: int = 8, frozen: bool = False):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, dim))
        self.patch_embed = nn.Conv2d(3, dim, 2)
        self.blocks = nn.ModuleList(Block(dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.affine = Affine()
        self.head = nn.Linear(dim, 3)
        self.scale = nn.Parameter(torch.ones(()))  # 0-d
        if frozen:
            self.blocks[1].attn.weight.requires_grad_(False)


class TinyViT(TinyViTAuto):
    """With the group_matcher of timm's VisionTransformer."""

    def group_matcher(self, coarse: bool = False):
        return dict(stem=r"^cls_token|pos_embed|patch_embed",
                    blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])


class Plain(nn.Module):
    """No pretrained_cfg and no matcher: one layer for everything."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 2))


MODELS = {"vit": TinyViT, "vit_frozen": lambda: TinyViT(frozen=True), "vit_auto": TinyViTAuto, "plain": Plain}


def _model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    return MODELS[kind]()


def _described(groups: list[dict], model: nn.Module) -> list[dict]:
    """Groups with their parameters as names (identity, not value), for comparison."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    out = []
    for group in groups:
        described = {k: v for k, v in group.items() if k != "params"}
        described["params"] = [name_of[id(p)] for p in group["params"]]
        out.append(described)
    return out


WD_OPTIONS = [dict(zip(("weight_decay", "weight_decay_exclude_1d", "no_weight_decay_list", "fallback_list",
                        "fallback_no_weight_decay"), values))
              for values in itertools.product((0.05, 0.0, None), (True, False), ((), ("pos_embed", "cls_*")),
                                              ((), ("head.*",)), (False, True))]


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("options", WD_OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_weight_decay_groups_equal_timms(timm_groups, kind, options):
    a, b = _model(kind), _model(kind)
    ours_groups = ours.param_groups_weight_decay(a, **options)
    timm_out = timm_groups.param_groups_weight_decay(b, **options)
    assert _described(ours_groups, a) == _described(timm_out, b)


def test_weight_decay_defaults_equal_timms(timm_groups):
    a, b = _model("vit"), _model("vit")
    assert _described(ours.param_groups_weight_decay(a), a) == _described(timm_groups.param_groups_weight_decay(b), b)


LAYER_OPTIONS = [dict(zip(("weight_decay", "weight_decay_exclude_1d", "no_weight_decay_list", "fallback_list",
                           "layer_decay", "min_scale", "no_opt_scale"), values))
                 for values in itertools.product((0.05, 0.0), (True, False), ((), ("pos_embed",)), ((), ("head.*",)),
                                                 (0.75, 0.5), (0.0, 0.2), (None, 0.1))]


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("options", LAYER_OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_layer_decay_groups_equal_timms(timm_groups, kind, options):
    a, b = _model(kind), _model(kind)
    ours_groups = ours.param_groups_layer_decay(a, **options)
    timm_out = timm_groups.param_groups_layer_decay(b, **options)
    assert _described(ours_groups, a) == _described(timm_out, b)
    # no_opt_scale freezes the parameters it leaves out, in both.
    assert [p.requires_grad for p in a.parameters()] == [p.requires_grad for p in b.parameters()]


def test_layer_decay_defaults_and_matchers_equal_timms(timm_groups):
    for kind in MODELS:
        a, b = _model(kind), _model(kind)
        assert _described(ours.param_groups_layer_decay(a), a) == \
            _described(timm_groups.param_groups_layer_decay(b), b), kind
    model = _model("vit")
    for matcher in (model.group_matcher(), lambda name: (len(name) % 3, 1), lambda name: len(name) % 4):
        assert ours.group_parameters(model, matcher, reverse=True) == \
            timm_groups.group_parameters(model, matcher, reverse=True)
    for matcher in (model.group_matcher(), {"all": [(r"^blocks\.(\d+)", None, "ignored")]}):
        assert ours.group_parameters(model, matcher) == timm_groups.group_parameters(model, matcher)
        assert ours.group_parameters(model, matcher, return_values=True) == \
            timm_groups.group_parameters(model, matcher, return_values=True)
        assert ours.group_parameters(model, matcher, False, True) == timm_groups.group_parameters(model, matcher, False, True)
    assert ours.auto_group_layers(model, num_groups=3) == timm_groups.auto_group_layers(model, num_groups=3)
    assert ours.auto_group_layers(model, layers_per_group=4) == timm_groups.auto_group_layers(model, layers_per_group=4)


def test_layer_decay_logs_as_timm(timm_groups, caplog):
    with caplog.at_level("INFO"):
        ours.param_groups_layer_decay(_model("vit"), verbose=True)
        timm_groups.param_groups_layer_decay(_model("vit"), verbose=True)
    ours_message, timm_message = (r.getMessage() for r in caplog.records if "parameter groups" in r.getMessage())
    assert ours_message == timm_message


@pytest.mark.parametrize("name", ["LAMB", "LARS", "AdamP", "Adan"])
def test_our_optimizers_step_save_and_load_such_groups(name):
    """Their extra keys (lr_scale, use_fallback) are kept in param_groups and state dicts."""
    model = _model("vit")
    groups = ours.param_groups_layer_decay(model, fallback_list=("head.*",))
    optimizer = getattr(ho, name)(groups, lr=1e-3)
    for _ in range(2):
        model.zero_grad()
        model.patch_embed(torch.randn(2, 3, 4, 4)).sum().backward()
        for p in model.parameters():
            if p.grad is None:
                p.grad = torch.randn_like(p)
        optimizer.step()
    saved = optimizer.state_dict()
    assert [g["lr_scale"] for g in saved["param_groups"]] == [g["lr_scale"] for g in groups]
    again = getattr(ho, name)(ours.param_groups_layer_decay(model, fallback_list=("head.*",)), lr=1e-3)
    again.load_state_dict(saved)
    assert again.state_dict()["param_groups"] == saved["param_groups"]
    assert any(g.get("use_fallback") for g in again.param_groups)
