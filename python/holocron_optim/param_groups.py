"""Parameter groups as timm makes them, for any optimizer of holocron_optim (or torch.optim).

    from holocron_optim.param_groups import param_groups_weight_decay
    optimizer = holocron_optim.LAMB(param_groups_weight_decay(model, weight_decay=0.05), lr=1e-3)

`param_groups_weight_decay` and `param_groups_layer_decay` take timm 1.0.31's arguments with its
defaults and return the groups its functions of the same names return (same order, keys and
parameters): biases and other one-dimensional parameters (norms' scales, for instance) out of
weight decay, names matched by shell-style patterns (`fnmatch`), and, for layer decay, an
`lr_scale` per group of layers (timm's schedulers multiply the learning rate by it; an optimizer
keeps it as a group key and ignores it). A parameter that does not require grad is left out.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import re
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable
from itertools import chain, islice
from typing import Any

from torch import nn

__all__ = ["param_groups_weight_decay", "param_groups_layer_decay", "auto_group_layers", "group_parameters"]

_logger = logging.getLogger(__name__)

# A matcher's suffix that puts a name in the group matched before it (timm's MATCH_PREV_GROUP).
MATCH_PREV_GROUP = (99999,)


def _matches(name: str, patterns: Collection[str]) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


def param_groups_weight_decay(
    model: nn.Module,
    weight_decay: float | None = 1e-5,
    weight_decay_exclude_1d: bool = True,
    no_weight_decay_list: Collection[str] = (),
    fallback_list: Collection[str] = (),
    fallback_no_weight_decay: bool = False,
) -> list[dict[str, Any]]:
    """Two groups, without and with weight decay (in that order, each only when not empty).

    Args:
        model: the module whose named parameters are grouped.
        weight_decay: the decay group's `weight_decay`; 0 or None puts every parameter in the
            group without decay.
        weight_decay_exclude_1d: parameters of at most one dimension, and those whose name ends
            in `.bias`, go without decay.
        no_weight_decay_list: name patterns (`fnmatch`) that go without decay.
        fallback_list: name patterns whose parameters go to separate groups marked
            `use_fallback: True` (for a second optimizer, as timm's Muon uses one).
        fallback_no_weight_decay: the patterns of `no_weight_decay_list` are fallback ones too.
    """
    if fallback_no_weight_decay:
        fallback_list = set(fallback_list) | set(no_weight_decay_list)
    decay_everything_off = not weight_decay
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {
        (False, False): [], (True, False): [], (False, True): [], (True, True): []}  # (decays, fallback)
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decays = not (decay_everything_off or _matches(name, no_weight_decay_list) or (
            weight_decay_exclude_1d and (param.ndim <= 1 or name.endswith(".bias"))))
        buckets[(decays, _matches(name, fallback_list))].append(param)
    groups = []
    for decays, fallback in ((False, False), (True, False), (False, True), (True, True)):
        if buckets[(decays, fallback)]:
            group = {"params": buckets[(decays, fallback)], "weight_decay": weight_decay if decays else 0.0}
            if fallback:
                group["use_fallback"] = True
            groups.append(group)
    return groups


def auto_group_layers(model: nn.Module, layers_per_group: int = 12, num_groups: int | None = None) -> dict[str, int]:
    """Layer ids for models without `group_matcher()`: the parameters in order, `layers_per_group`
    to an id (or split into `num_groups`), and the classifier's (named by
    `model.pretrained_cfg["classifier"]`, a prefix or a list of them) in a last id of their own.
    Without that name every parameter counts as the classifier's: one id for all."""
    head = getattr(model, "pretrained_cfg", {}).get("classifier", None)

    def in_head(name: str) -> bool:
        if not head:
            return True
        prefixes = head if isinstance(head, (tuple, list)) else (head,)
        return any(name.startswith(prefix) for prefix in prefixes)

    names = [name for name, _ in model.named_parameters()]
    trunk = [name for name in names if not in_head(name)]
    if num_groups is not None:
        layers_per_group = -(len(trunk) // -num_groups)
    chunks = iter(lambda it=iter(trunk): tuple(islice(it, layers_per_group)), ())
    layer_of = {name: index for index, chunk in enumerate(chunks) for name in chunk}
    trunk_groups = len(set(layer_of.values()))
    layer_of.update({name: trunk_groups for name in names if in_head(name)})
    return layer_of


def group_parameters(
    module: nn.Module,
    group_matcher: dict[str, Any] | Callable[[str], Any],
    return_values: bool = False,
    reverse: bool = False,
) -> dict[int, list[Any]] | dict[str, int]:
    """The layer id of each parameter from a timm `group_matcher` (a dict of group name ->
    regular expression, or list of (expression, suffix), or a function of the name): names are
    ordered by (group ordinal, the numbers the expression captures, suffix), names no
    expression matches come last, and each distinct key is a new id unless its suffix is
    MATCH_PREV_GROUP. Returns id -> names (id -> parameters with `return_values`), or, with
    `reverse`, name -> id."""
    if reverse and return_values:
        raise ValueError("group_parameters: reverse mapping only sensible for name output")
    if isinstance(group_matcher, dict):
        compiled = []
        for ordinal, spec in enumerate(group_matcher.values()):
            if spec is None:
                continue
            if isinstance(spec, (tuple, list)):
                compiled += [(re.compile(entry[0]), (ordinal,), entry[1]) for entry in spec]
            else:
                compiled.append((re.compile(spec), (ordinal,), None))
        group_matcher = compiled

    def key(name: str) -> tuple[float, ...]:
        if isinstance(group_matcher, (list, tuple)):
            for expression, prefix, suffix in group_matcher:
                match = expression.match(name)
                if match:
                    return tuple(map(float, chain.from_iterable(filter(None, (prefix, match.groups(), suffix)))))
            return (float("inf"),)
        ordinal = group_matcher(name)
        return tuple(ordinal) if isinstance(ordinal, Iterable) else (ordinal,)

    by_key: dict[tuple[float, ...], list[Any]] = defaultdict(list)
    for name, param in module.named_parameters():
        by_key[key(name)].append(param if return_values else name)
    by_layer: dict[int, list[Any]] = defaultdict(list)
    layer = -1
    for k in sorted(by_key):
        if layer < 0 or k[-1] != MATCH_PREV_GROUP[0]:
            layer += 1
        by_layer[layer].extend(by_key[k])
    if reverse:
        return {name: layer for layer, names in by_layer.items() for name in names}
    return by_layer


def param_groups_layer_decay(
    model: nn.Module,
    weight_decay: float = 0.05,
    no_weight_decay_list: Collection[str] = (),
    fallback_list: Collection[str] = (),
    fallback_no_weight_decay: bool = False,
    weight_decay_exclude_1d: bool = True,
    layer_decay: float = 0.75,
    min_scale: float = 0.0,
    no_opt_scale: float | None = None,
    verbose: bool = False,
) -> list[dict[str, Any]]:
    """Groups per layer and weight decay, each with `lr_scale = max(min_scale, layer_decay **
    (last layer - layer))` (BEiT's layer-wise learning-rate decay).

    Layers come from `model.group_matcher(coarse=False)` when the model has one (timm's
    models do), else from `auto_group_layers(model)`. Parameters of at most one dimension (when
    `weight_decay_exclude_1d`) and names matching `no_weight_decay_list` go without decay (here a
    `.bias` name of more dimensions keeps it, as in timm). With `no_opt_scale`, a parameter whose
    scale is below it is left out and its `requires_grad` set to False, as timm does.
    `fallback_list` and `fallback_no_weight_decay` as in param_groups_weight_decay; `verbose`
    logs the groups' parameter names.
    """
    if fallback_no_weight_decay:
        fallback_list = set(fallback_list) | set(no_weight_decay_list)
    if hasattr(model, "group_matcher"):
        layer_of = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    else:
        layer_of = auto_group_layers(model)
    num_layers = max(layer_of.values()) + 1
    if num_layers == 1:
        _logger.warning(
            "Layer-wise lr decay has no effect, all parameters were assigned to one layer. Models without a "
            "group_matcher() need a pretrained_cfg[\"classifier\"] for automatic layer grouping.")
    last = num_layers - 1
    scales = [max(min_scale, layer_decay ** (last - layer)) for layer in range(num_layers)]

    groups: dict[str, dict[str, Any]] = {}
    described: dict[str, dict[str, Any]] = {}  # what `verbose` logs
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        fallback = _matches(name, fallback_list)
        decays = not ((weight_decay_exclude_1d and param.ndim <= 1) or _matches(name, no_weight_decay_list))
        layer = layer_of.get(name, last)
        scale = scales[layer]
        if no_opt_scale and scale < no_opt_scale:
            param.requires_grad = False
            continue
        key = f"layer_{layer}_{'decay' if decays else 'no_decay'}{'_fallback' if fallback else ''}"
        if key not in groups:
            decay = weight_decay if decays else 0.0
            groups[key] = {"lr_scale": scale, "weight_decay": decay, "params": []}
            if fallback:
                groups[key]["use_fallback"] = True
            described[key] = {"lr_scale": scale, "weight_decay": decay, "use_fallback": fallback, "param_names": []}
        groups[key]["params"].append(param)
        described[key]["param_names"].append(name)
    if verbose:
        _logger.info("parameter groups: \n%s", json.dumps(described, indent=2))
    return list(groups.values())
