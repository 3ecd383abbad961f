"""Flat partitions (what holocron_optim.deepspeed.zero_aware sets up) in one
process: a 1-D tensor holding several model tensors, stepped as those tensors,
against the same optimizer on the tensors themselves. test_deepspeed.py runs the
real thing under DeepSpeed."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist

import holocron_optim as ho
from holocron_optim import _distributed

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs gloo")

SHAPES = ((5, 3), (7,), (4, 2, 3), (1,))
PADDING = 3  # elements between the tensors in the partition, as DeepSpeed's alignment leaves
FACTORIES = {
    "LARS": lambda p: ho.LARS(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
    "LAMB": lambda p: ho.LAMB(p, lr=1e-2, weight_decay=1e-2),
    "RaLars": lambda p: ho.RaLars(p, lr=1e-2, weight_decay=1e-2),
    "TAdam": lambda p: ho.TAdam(p, lr=1e-2, weight_decay=1e-2),
    "AdamP": lambda p: ho.AdamP(p, lr=1e-2, weight_decay=1e-2, delta=0.9),
    "Adan": lambda p: ho.Adan(p, lr=1e-2, weight_decay=1e-2),
    "Scout(LAMB)": lambda p: ho.Scout(ho.LAMB(p, lr=1e-2), sync_period=2),
    # Each output channel of each piece's model tensor on its own (delta 5: every step projects).
    "AdamP(channels)": lambda p: ho.AdamP(p, lr=1e-2, weight_decay=1e-2, delta=5.0, channel_projection=True),
}


@pytest.fixture(scope="module")
def group_name(tmp_path_factory):
    store = dist.FileStore(str(tmp_path_factory.mktemp("store") / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield dist.group.WORLD.group_name
    finally:
        dist.destroy_process_group()


def layout_of(group_name: str, channels: bool = True) -> _distributed.FlatLayout:
    numels = [math.prod(s) for s in SHAPES]
    starts = [sum(numels[:i]) + PADDING * i for i in range(len(numels))]
    if not channels:
        return _distributed.FlatLayout(tuple(starts), tuple(numels), tuple(numels), group_name)
    return _distributed.FlatLayout(tuple(starts), tuple(numels), tuple(numels), group_name, (0,) * len(SHAPES),
                                   tuple(s[0] if len(s) > 1 else 0 for s in SHAPES))


def flat_of(tensors: list[torch.Tensor], layout: _distributed.FlatLayout) -> torch.Tensor:
    flat = torch.zeros(layout.starts[-1] + layout.lengths[-1], dtype=torch.float64)
    for t, start in zip(tensors, layout.starts):
        flat[start:start + t.numel()] = t.reshape(-1)
    setattr(flat, _distributed.FLAT_LAYOUT, layout)
    _distributed.flat_layouts_exist = True
    return flat


def pieces(flat: torch.Tensor, layout: _distributed.FlatLayout) -> list[torch.Tensor]:
    return [flat[s:s + n].view(shape) for s, n, shape in zip(layout.starts, layout.lengths, SHAPES)]


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_a_flat_partition_steps_as_its_tensors(group_name, name):
    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(s, generator=generator, dtype=torch.float64) for s in SHAPES]
    layout = layout_of(group_name)
    flat = flat_of(weights, layout).requires_grad_(True)
    whole = [w.clone().requires_grad_(True) for w in weights]
    ours, oracle = FACTORIES[name]([flat]), FACTORIES[name](whole)
    for step in range(6):
        grads = [torch.randn(s, generator=generator, dtype=torch.float64) for s in SHAPES]
        flat.grad = flat_of(grads, layout)  # a new gradient tensor each step, as ZeRO stage 2 makes
        for w, g in zip(whole, grads):
            w.grad = g
        if step == 3:  # the partition's storage replaced: views made earlier must not be reused
            flat.data = flat.data.clone()
        ours.step()
        oracle.step()
    for got, want in zip(pieces(flat.detach(), layout), whole):
        torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=1e-12)


def test_per_tensor_state_holds_one_element_per_model_tensor(group_name):
    layout = layout_of(group_name)
    flat = flat_of([torch.ones(s, dtype=torch.float64) for s in SHAPES], layout).requires_grad_(True)
    flat.grad = torch.ones_like(flat)
    lamb, tadam = ho.LAMB([flat]), ho.TAdam([flat])
    lamb.step()
    tadam.step()
    assert lamb.state[flat]["local_lr"].shape == (len(SHAPES),)
    assert tadam.state[flat]["W_t"].shape == (len(SHAPES),)
    state = tadam.state_dict()
    state["state"][0]["W_t"] = torch.ones(1, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"W_t' of parameter 0 must be a floating-point tensor of 4 elements"):
        tadam.load_state_dict(state)


def test_a_flat_partition_with_other_parameters_in_one_group_is_refused(group_name):
    layout = layout_of(group_name)
    flat = flat_of([torch.ones(s, dtype=torch.float64) for s in SHAPES], layout).requires_grad_(True)
    other = torch.ones(3, dtype=torch.float64, requires_grad=True)
    flat.grad, other.grad = torch.ones_like(flat), torch.ones_like(other)
    optimizer = ho.LAMB([flat, other])
    before = flat.detach().clone()
    with pytest.raises(NotImplementedError, match="flat partitions"):
        optimizer.step()
    assert torch.equal(flat.detach(), before)


def test_8bit_state_on_a_flat_partition_is_refused_before_any_group_steps(group_name):
    """A flat partition's pieces of model tensors would need blocks of their own: refused by
    name, whatever its size, before an earlier group's plain tensor is updated."""
    layout = layout_of(group_name)
    flat = flat_of([torch.ones(s, dtype=torch.float64) for s in SHAPES], layout).requires_grad_(True)
    first = torch.ones(5000, dtype=torch.float64, requires_grad=True)
    flat.grad, first.grad = torch.ones_like(flat), torch.ones_like(first)
    optimizer = ho.LAMB([{"params": [first]}, {"params": [flat]}], state_precision="8bit")
    before = [flat.detach().clone(), first.detach().clone()]
    with pytest.raises(NotImplementedError, match="state_precision='8bit' on DeepSpeed's flat partitions"):
        optimizer.step()
    assert torch.equal(flat.detach(), before[0]) and torch.equal(first.detach(), before[1])
    assert not any(optimizer.state.values())


def test_channel_projection_on_a_layout_that_does_not_place_its_pieces_is_refused(group_name):
    layout = layout_of(group_name, channels=False)
    flat = flat_of([torch.ones(s, dtype=torch.float64) for s in SHAPES], layout).requires_grad_(True)
    flat.grad = torch.ones_like(flat)
    optimizer = FACTORIES["AdamP(channels)"]([flat])
    before = flat.detach().clone()
    with pytest.raises(NotImplementedError, match="firsts and channels"):
        optimizer.step()
    assert torch.equal(flat.detach(), before)


def test_channel_projection_on_a_partition_holding_an_empty_tensor(group_name):
    """A (4, 0) model tensor has channels but no elements: no row of it is summed."""
    shapes = ((3, 2), (4, 0), (2, 2))
    numels = [math.prod(s) for s in shapes]
    starts = [sum(numels[:i]) for i in range(len(shapes))]
    layout = _distributed.FlatLayout(tuple(starts), tuple(numels), tuple(numels), group_name, (0, 0, 0),
                                     tuple(s[0] for s in shapes))
    generator = torch.Generator().manual_seed(3)
    weights = [torch.randn(s, generator=generator, dtype=torch.float64) for s in shapes]
    flat = torch.cat([w.reshape(-1) for w in weights]).requires_grad_(True)
    setattr(flat, _distributed.FLAT_LAYOUT, layout)
    _distributed.flat_layouts_exist = True
    whole = [w.clone().requires_grad_(True) for w in weights]
    ours, oracle = FACTORIES["AdamP(channels)"]([flat]), FACTORIES["AdamP(channels)"](whole)
    for _ in range(3):
        grads = [torch.randn(s, generator=generator, dtype=torch.float64) for s in shapes]
        flat.grad = torch.cat([g.reshape(-1) for g in grads])
        for w, g in zip(whole, grads):
            w.grad = g
        ours.step()
        oracle.step()
    torch.testing.assert_close(flat.detach(), torch.cat([w.detach().reshape(-1) for w in whole]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_a_flat_partition_converted_in_place_is_refused_as_a_tensor_is(group_name, name):
    """A step past the first walks no parameter's dtype: the op is asked to refuse state of
    another dtype (`state_as_param`), for the pieces of a flat partition as for whole tensors,
    so a partition converted in place (Module.float()) after some steps is refused, not stepped
    with its float64 state."""
    generator = torch.Generator().manual_seed(0)
    layout = layout_of(group_name)
    flat = flat_of([torch.randn(s, generator=generator, dtype=torch.float64) for s in SHAPES], layout)
    flat.requires_grad_(True)
    opt = FACTORIES[name]([flat])
    for _ in range(3):
        flat.grad = flat_of([torch.randn(s, generator=generator, dtype=torch.float64) for s in SHAPES], layout)
        opt.step()
    flat.data = flat.data.float()
    flat.grad = flat.grad.float()
    before = flat.detach().clone()
    with pytest.raises(RuntimeError, match="has dtype Double but its group.s state_precision|W_t|wrapper.s first step"):
        opt.step()
    assert torch.equal(flat.detach(), before)
