"""The all-reduce of the whole-tensor sums runs on a device the process group's
backend takes: with FSDP2's CPU offload on a GPU mesh, the shards and their sums
are on the CPU while an NCCL group takes CUDA tensors only.

A group whose only backend is for CUDA ("cuda:gloo") stands in for the NCCL
group here. Without a GPU the sums cannot get there, and the error says so
(torch's own: "Torch not compiled with CUDA enabled" from a CPU build, "Found no
NVIDIA driver" from a CUDA build) instead of the group's refusal of CPU tensors;
with one, the step runs and equals the step without a group (one rank).
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

import holocron_optim  # noqa: F401  (loads torch.ops.holocron)

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs gloo")

HYPER = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 1e-2, "clip_low": 0.0, "clip_high": 10.0}


@pytest.fixture(scope="module")
def cuda_only_group(tmp_path_factory):
    store = dist.FileStore(str(tmp_path_factory.mktemp("store") / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield dist.new_group(backend="cuda:gloo")
    finally:
        dist.destroy_process_group()


def went_to_cuda(error: pytest.ExceptionInfo) -> bool:
    """The error of a machine without a GPU when the sums are moved to CUDA, from a CPU or a
    CUDA build of torch."""
    message = str(error.value).lower()
    return "cuda" in message or "nvidia driver" in message


def lamb_tensors():
    generator = torch.Generator().manual_seed(0)
    p, g = torch.randn(3, 5, generator=generator), torch.randn(3, 5, generator=generator)
    return p, g, torch.zeros_like(p), torch.zeros_like(p)


def lamb_step(shard_groups, tensors=None):
    p, g, m, v = tensors or lamb_tensors()
    ratio = torch.ops.holocron.lamb_([p], [g], exp_avgs=[m], exp_avg_sqs=[v], numels=[p.numel()],
                                     shard_groups=shard_groups, **HYPER)
    return p, m, v, ratio


def test_cpu_sums_go_to_the_device_of_a_group_without_a_cpu_backend(cuda_only_group):
    assert [d.type for d in cuda_only_group._device_types] == ["cuda"]
    if torch.cuda.is_available():
        for got, want in zip(lamb_step([cuda_only_group.group_name]), lamb_step(None)):
            assert torch.equal(got, want)
        return
    tensors = lamb_tensors()
    with pytest.raises(RuntimeError) as error:
        lamb_step([cuda_only_group.group_name], tensors)
    assert "No backend type associated with device type cpu" not in str(error.value)
    assert went_to_cuda(error), error.value
    for got, want in zip(tensors, lamb_tensors()):  # a step that throws changes nothing
        assert torch.equal(got, want)


def test_scout_coherence_takes_the_same_way(cuda_only_group):
    stats = [[torch.full((4,), value)] for value in (0.0, 0.5, 1.0, 2.0, -1.0)]  # prev, mean, m2, max, min
    if torch.cuda.is_available():
        got = torch.ops.holocron.scout_coherence(*stats, count=2, shard_groups=[cuda_only_group.group_name])
        assert got == torch.ops.holocron.scout_coherence(*stats, count=2)
        return
    with pytest.raises(RuntimeError) as error:
        torch.ops.holocron.scout_coherence(*stats, count=2, shard_groups=[cuda_only_group.group_name])
    assert "No backend type associated with device type cpu" not in str(error.value)
    assert went_to_cuda(error), error.value


@pytest.mark.usefixtures("cuda_only_group")
def test_an_unknown_group_is_refused_before_anything_changes():
    tensors = lamb_tensors()
    with pytest.raises(RuntimeError, match="no-such-group"):
        lamb_step(["no-such-group"], tensors)
    for got, want in zip(tensors, lamb_tensors()):
        assert torch.equal(got, want)
