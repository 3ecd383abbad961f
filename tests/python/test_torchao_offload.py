"""torchao's CPUOffloadOptimizer with our classes as its `optimizer_class`.

It refuses machines without CUDA or XPU; here its device calls (streams, events,
pinned memory) are stubbed, so that the "device" tensors are CPU tensors too and
what is tested is its optimizer handling: one of our optimizers per tensor of
at least `minimal_size` elements (stepped in the order their gradients arrived)
and one for the rest. The result must be the bits of one optimizer over all the
parameters: our per-tensor math does not depend on how tensors are grouped into
calls.
"""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch
from torch import nn

import holocron_optim as ho

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    cpu_offload = pytest.importorskip("torchao.optim.cpu_offload", reason="torchao is a test dependency of make test")

CLASSES = {
    "LARS": {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3},
    "LAMB": {"lr": 1e-2, "weight_decay": 1e-2},
    "RaLars": {"lr": 1e-2},
    "TAdam": {"lr": 1e-2},
    "AdaBelief": {"lr": 1e-2, "weight_decay": 1e-2},
    "AdamP": {"lr": 1e-2, "weight_decay": 1e-2},
    "Adan": {"lr": 1e-2},
    "AdEMAMix": {"lr": 1e-2},
}


class _Event:
    def synchronize(self) -> None:
        pass


class _Stream:
    def wait_stream(self, other) -> None:
        pass

    def record_event(self) -> _Event:
        return _Event()

    def synchronize(self) -> None:
        pass


@pytest.fixture
def stubbed_device(monkeypatch):
    """torchao's CUDA calls made no-ops on CPU tensors."""
    empty_like = torch.empty_like
    monkeypatch.setattr(cpu_offload, "get_available_devices", lambda: ["cpu", "cuda"])
    monkeypatch.setattr(torch.cuda, "Stream", _Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a, **k: _Stream())
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch, "empty_like", lambda t, **kw: empty_like(t, **{k: v for k, v in kw.items() if k != "pin_memory"}))


def make_model() -> nn.Module:
    torch.manual_seed(0)
    # Tensors above and below torchao's minimal_size (4096 by default).
    return nn.Sequential(nn.Linear(64, 96), nn.Tanh(), nn.Linear(96, 80), nn.Tanh(), nn.Linear(80, 3))


def train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 6) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(16, 64, generator=generator)
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_cpu_offload_optimizer_steps_as_one_of_ours(stubbed_device, name):
    cls = getattr(ho, name)
    model = make_model()
    offloaded = cpu_offload.CPUOffloadOptimizer(model.parameters(), optimizer_class=cls, **CLASSES[name])
    assert len(offloaded.optim_dict) == 2  # the two large weights; the rest in one on-"device" optimizer
    got = train(model, offloaded)
    reference_model = make_model()
    want = train(reference_model, cls(reference_model.parameters(), **CLASSES[name]))
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    # Its checkpoint holds each of ours' state dicts, and loads back.
    offloaded.load_state_dict(offloaded.state_dict())
