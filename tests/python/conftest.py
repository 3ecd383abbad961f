"""Shared helpers: the reference implementation (pylocron==0.3.0) loaded as a test oracle.

`import holocron` pulls in torchvision, so the reference's optimizer files are
loaded one by one from the installed package, without running its `__init__`.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path

import pytest

# The CMake build whose programs (parity runner, demo) the tests run: build/,
# or another one's (make test-torch builds against a second torch elsewhere).
BUILD_DIR = Path(os.environ.get("HOLOCRON_OPTIM_BUILD_DIR", Path(__file__).resolve().parents[2] / "build"))

_CACHE: dict[str, types.ModuleType] = {}


def _reference_dir() -> Path:
    spec = importlib.util.find_spec("holocron")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the reference package pylocron==0.3.0 (module holocron) is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "optim"


def load_reference(name: str) -> types.ModuleType:
    """The reference's `holocron/optim/<name>.py`, loaded as a standalone module."""
    if name not in _CACHE:
        path = _reference_dir() / f"{name}.py"
        module_name = f"_holocron_reference_{name}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        assert spec is not None and spec.loader is not None, path
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        _CACHE[name] = module
    return _CACHE[name]


def reference() -> types.SimpleNamespace:
    """Every reference class, by name (LARS, LAMB, ..., Lookahead, Scout: those of the registry
    that have one), and the functional `adan`."""
    from registry import ALGORITHMS, WRAPPERS

    classes = {name: getattr(load_reference(entry.reference), name)
               for name, entry in {**ALGORITHMS, **WRAPPERS}.items() if entry.reference}
    return types.SimpleNamespace(**classes, adan=load_reference("adan").adan)


@pytest.fixture(scope="session")
def ref() -> types.SimpleNamespace:
    return reference()


@pytest.fixture(params=["fused", "reference"])
def fused_or_reference(request):
    """Runs a test on the fused kernels (the best instruction set) and on the reference backend;
    the test sees which as the fixture's value."""
    import torch

    import holocron_optim  # noqa: F401 (registers torch.ops.holocron)

    before = torch.ops.holocron.cpu_capability()
    torch.ops.holocron.set_cpu_capability("auto" if request.param == "fused" else "reference")
    yield request.param
    torch.ops.holocron.set_cpu_capability(before)


@pytest.fixture
def backend():
    """Sets the CPU kernels' instruction set (or "reference") for one test, then restores it."""
    import torch

    import holocron_optim  # noqa: F401 (registers torch.ops.holocron)

    ops = torch.ops.holocron
    capability = ops.cpu_capability()
    yield ops.set_cpu_capability
    ops.set_cpu_capability(capability)
