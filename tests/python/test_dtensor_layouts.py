"""DTensor plumbing in one process (a gloo group of one rank): a group mixing
plain tensors and DTensors of different placements, which the step updates
by one call per layout, gives the bits of the same step on plain tensors.
The sharded runs on two processes are in test_distributed.py."""

from __future__ import annotations

import pytest
import torch

import holocron_optim as ho
import holocron_optim.timm as ho_timm
from holocron_optim._library import ops
from registry import ALGORITHMS, factories

dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is needed", allow_module_level=True)
from torch.distributed.device_mesh import init_device_mesh  # noqa: E402
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor  # noqa: E402

SHAPES = [(5, 3), (3,), (2, 2), (1,), (4,)]
# Per parameter: a placement on the one-rank mesh, or None for a plain tensor.
LAYOUTS = [Shard(0), Replicate(), None, Shard(0), None]

CASES = {
    **factories(0.01, wrappers=False),
    "Lookahead(LAMB)": lambda p: ho.Lookahead(ho.LAMB(p, lr=0.01), sync_period=2),
    # One clipping norm over every layout's gradients.
    "LAMB(timm)": lambda p: ho_timm.Lamb(p, lr=0.01, max_grad_norm=0.5),
    "LAMB(cautious)": lambda p: ho.LAMB(p, lr=0.01, weight_decay=0.01, caution=True),
    "Adan(authors)": lambda p: ho.Adan(p, lr=0.01, decoupled_weight_decay=True, max_grad_norm=0.5, caution=True),
    "AdamP(cautious)": lambda p: ho.AdamP(p, lr=0.01, weight_decay=0.01, delta=2.0, caution=True, nesterov=True),
    # Each output channel's sums (the shards' rows).
    "AdamP(timm)": lambda p: ho_timm.AdamP(p, lr=0.01, weight_decay=0.05, delta=2.0, nesterov=True),
    # Scout refuses parameters laid out differently (see test_scout_refuses_mixed_layouts).
}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    store = dist.FileStore(str(tmp_path_factory.mktemp("store") / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


def as_layout(t, placement, mesh):
    return t if placement is None else distribute_tensor(t, mesh, [placement])


def full(t):
    return t.full_tensor() if isinstance(t, DTensor) else t


@pytest.mark.parametrize("two_groups", [False, True], ids=["one group", "two groups"])
@pytest.mark.parametrize("name", list(CASES))
def test_mixed_layouts_equal_plain_tensors(mesh, name, two_groups):
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    plain = [t.clone().requires_grad_() for t in start]
    mixed = [torch.nn.Parameter(as_layout(t.clone(), pl, mesh)) for t, pl in zip(start, LAYOUTS)]

    def groups(params):
        return [{"params": params[:2]}, {"params": params[2:]}] if two_groups else params

    ours, reference = CASES[name](groups(mixed)), CASES[name](groups(plain))
    for step in range(5):
        grads = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
        for p, g in zip(plain, grads):
            p.grad = g.clone()
        for p, g, pl in zip(mixed, grads, LAYOUTS):
            p.grad = as_layout(g.clone(), pl, mesh)
        reference.step()
        ours.step()
    for p, q in zip(mixed, plain):
        assert torch.equal(full(p).detach(), q.detach())
    base, base_ref = getattr(ours, "base_optimizer", ours), getattr(reference, "base_optimizer", reference)
    for p, q in zip(mixed, plain):
        for key, value in base_ref.state[q].items():
            mine = base.state[p][key]
            if isinstance(value, torch.Tensor) and value.numel() > 1:
                assert torch.equal(full(mine), value), key
            else:
                assert float(mine) == float(value), key


def test_scout_refuses_mixed_layouts(mesh):
    params = [torch.nn.Parameter(as_layout(torch.randn(3, dtype=torch.float64), pl, mesh)) for pl in (Shard(0), None)]
    opt = ho.Scout(ho.LAMB(params, lr=0.01), sync_period=2)
    for p in params:
        p.grad = torch.ones_like(p)
    with pytest.raises(NotImplementedError, match="laid out differently"):
        opt.step()


def _adamp_step_is_refused(params, match):
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer = ho_timm.AdamP(params, lr=0.01, delta=2.0)
    before = [full(p).clone() for p in params]
    with pytest.raises(NotImplementedError, match=match):
        optimizer.step()
    for p, b in zip(params, before):
        assert torch.equal(full(p), b)
    assert all(not state for state in optimizer.state.values())


def test_channel_projection_refuses_a_shard_of_unknown_rows(mesh):
    """A DTensor whose local shard is not what torch's chunking gives its placements: where its
    rows lie is unknown. Refused before anything is written, a plain layout updated first included."""
    plain = distribute_tensor(torch.ones(3, 2, dtype=torch.float64), mesh, [Replicate()])
    odd = DTensor.from_local(torch.ones(3, 2, dtype=torch.float64), mesh, [Shard(0)], shape=torch.Size((4, 2)),
                             stride=(2, 1))
    _adamp_step_is_refused([torch.nn.Parameter(plain), torch.nn.Parameter(odd)], "local shard has shape")


def test_channel_projection_refuses_strided_shards(mesh):
    from torch.distributed.tensor.placement_types import _StridedShard

    plain = distribute_tensor(torch.ones(3, 2, dtype=torch.float64), mesh, [Replicate()])
    strided = DTensor.from_local(torch.ones(4, 2, dtype=torch.float64), mesh, [_StridedShard(0, split_factor=2)])
    _adamp_step_is_refused([torch.nn.Parameter(plain), torch.nn.Parameter(strided)], "strided shard")


# 8-bit state of DTensors: the same bits as on plain tensors on one rank (each local shard is the
# whole tensor), a group of several layouts updated by one call per layout with each call's own
# scales, and the scales a DTensor with a row per rank (the two-rank runs are in
# test_distributed.py). The tensors are large enough to keep codes.
BLOCKWISE_SHAPES = [(80, 64), (30,), (70, 70), (5000,)]
BLOCKWISE_LAYOUTS = {
    "several layouts": [Shard(0), Shard(0), Replicate(), None],
    # Only plain tensors keep codes: the small DTensor's call must still get none of their scales.
    "codes beside small DTensors": [None, Shard(0), None, Replicate()],
}


@pytest.mark.parametrize("layouts", list(BLOCKWISE_LAYOUTS))
@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_8bit_state_of_dtensors_in_several_layouts_equals_plain_tensors(mesh, name, layouts):
    layouts = BLOCKWISE_LAYOUTS[layouts]
    shapes = BLOCKWISE_SHAPES if layouts[-1] is None else [(80, 64), (30,), (5000,), (6,)]
    gen = torch.Generator().manual_seed(3)
    start = [torch.randn(s, generator=gen) for s in shapes]
    grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(3)]
    plain = [torch.nn.Parameter(t.clone()) for t in start]
    sharded = [torch.nn.Parameter(as_layout(t.clone(), layout, mesh)) for t, layout in zip(start, layouts)]
    plain_opt, sharded_opt = (ALGORITHMS[name].make(ps, lr=0.01, state_precision="8bit") for ps in (plain, sharded))
    for step_grads in grads:
        for p, q, g, layout in zip(plain, sharded, step_grads, layouts):
            p.grad, q.grad = g.clone(), as_layout(g.clone(), layout, mesh)
        plain_opt.step()
        sharded_opt.step()
    for p, q in zip(plain, sharded):
        assert torch.equal(p, full(q))
    coded = 0
    for p, q, layout in zip(plain, sharded, layouts):
        assert sorted(plain_opt.state[p]) == sorted(sharded_opt.state[q])
        for key, value in plain_opt.state[p].items():
            other = sharded_opt.state[q][key]
            if key.endswith("_absmax") and layout is not None:
                # A row per rank of each mesh dimension that shards the parameter.
                assert other.placements == ((Shard(0),) if layout.is_shard() else (Replicate(),))
                assert tuple(other.shape) == ((1, value.numel()) if layout.is_shard() else (value.numel(),))
                coded += 1
            elif layout is not None and isinstance(value, torch.Tensor) and value.shape == p.shape:
                assert isinstance(other, DTensor) and other.placements == q.placements, key
            if isinstance(value, torch.Tensor):
                assert torch.equal(full(other).reshape(value.shape), value), key
            coded += key.endswith("_absmax") and layout is None
    assert coded >= 2


def test_8bit_state_of_dtensors_loads_both_ways_and_refuses_plain_codes(mesh):
    """A float32 checkpoint of DTensors loads into 8-bit state (coded per local shard) and back;
    plain codes or floats (saved without FSDP2) are refused for a DTensor's codes, before anything
    changes."""
    gen = torch.Generator().manual_seed(4)
    start = [torch.randn(s, generator=gen) for s in BLOCKWISE_SHAPES[:2]]

    def run(precision, params):
        opt = ho.LAMB(params, lr=0.01, state_precision=precision)
        for p in params:
            g = torch.randn(p.shape, generator=gen)
            p.grad = as_layout(g, p.placements[0], mesh) if isinstance(p, DTensor) else g
        opt.step()
        return opt

    sharded = [torch.nn.Parameter(as_layout(t.clone(), Shard(0), mesh)) for t in start]
    eight = run("8bit", sharded)
    to_float = ho.LAMB(sharded, lr=0.01, state_precision="float32")
    to_float.load_state_dict(eight.state_dict())
    state = to_float.state[sharded[0]]
    assert "exp_avg_absmax" not in state and state["exp_avg"].dtype == torch.float32
    assert isinstance(state["exp_avg"], DTensor) and state["exp_avg"].placements == (Shard(0),)
    back = ho.LAMB(sharded, lr=0.01, state_precision="8bit")
    back.load_state_dict(to_float.state_dict())
    for key, signed in (("exp_avg", True), ("exp_avg_sq", False)):
        # Encoded again from the decoded values (the signed map has no -1: a block whose largest
        # magnitude is negative gets a slightly smaller scale).
        saved = [full(eight.state[sharded[0]][k]) for k in (key, key + "_absmax")]
        codes, absmax = ops.quantize_blockwise(ops.dequantize_blockwise(saved[0], saved[1].view(-1), signed), signed)
        assert torch.equal(full(back.state[sharded[0]][key]), codes), key
        assert torch.equal(full(back.state[sharded[0]][key + "_absmax"]).view(-1), absmax), key

    before = {k: full(v).clone() for k, v in back.state[sharded[0]].items() if isinstance(v, torch.Tensor)}
    for precision, message in (("8bit", "does not fit the parameter"), ("float32", "is not laid out as its parameter")):
        plain = run(precision, [torch.nn.Parameter(t.clone()) for t in start])
        with pytest.raises(ValueError, match=f"{message}.*8-bit state of a sharded parameter loads on the mesh it "
                                             "was saved on"):
            back.load_state_dict(plain.state_dict())
        assert all(torch.equal(full(back.state[sharded[0]][k]), v) for k, v in before.items())


def test_a_strided_shard_shards_and_tags_the_scales(mesh):
    """FSDP2 over tensor parallelism places a weight as (_StridedShard, Shard): the strided mesh
    dimension is summed over (whole-tensor norms) and gets a row of scales per rank, though
    _StridedShard is no Shard in torch 2.13. The scales' shape also tells which dimension each
    mesh dimension splits, so a checkpoint of other placements cannot load beside these codes."""
    from torch.distributed.tensor.placement_types import _StridedShard

    from holocron_optim import _distributed
    from holocron_optim._base import blockwise_blocks

    grid = init_device_mesh("cpu", (1, 1))
    weight = torch.randn(80, 64)
    strided = DTensor.from_local(weight.clone(), grid, [_StridedShard(0, split_factor=2), Shard(0)], run_check=False)
    assert len(_distributed.shard_groups(strided)) == 2
    shape, layout = _distributed.scales_layout(strided, blockwise_blocks)
    assert shape[0] == 1 and shape[-1] == 20 and [type(x) for x in layout] == [Shard, Shard]
    by_dim = [_distributed.scales_layout(as_layout(torch.randn(64, 64), Shard(d), mesh), blockwise_blocks)[0]
              for d in (0, 1)]
    assert by_dim[0] != by_dim[1] and by_dim[0] != shape

    p, q = torch.nn.Parameter(weight.clone()), torch.nn.Parameter(strided)
    plain_opt, strided_opt = (ho.LAMB([x], lr=0.01, state_precision="8bit") for x in (p, q))
    for _ in range(2):
        g = torch.randn(80, 64)
        p.grad = g.clone()
        q.grad = DTensor.from_local(g.clone(), grid, q.placements, run_check=False)
        plain_opt.step()
        strided_opt.step()
    assert torch.equal(p.detach(), q.to_local().detach())
    assert tuple(strided_opt.state[q]["exp_avg_absmax"].shape) == shape
