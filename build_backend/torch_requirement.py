"""scikit-build-core metadata provider: the wheel requires the torch it is built against.

The library links LibTorch's C++ ABI, which changes with each torch release, so
the wheel's ``Requires-Dist`` pins the release of the torch that the building
Python imports (the one CMake builds against: CMakeLists.txt asks the same
Python). The local label (``+cpu``, ``+cu130``) is left out: the CPU and CUDA
builds of a release share the ABI, and the library calls only their CPU parts.
"""

from __future__ import annotations

from typing import Any


def dynamic_metadata(field: str, settings: dict[str, Any], project: Any = None) -> list[str]:
    if field != "dependencies":
        raise RuntimeError(f"torch_requirement provides 'dependencies', not {field!r}")
    if settings:
        raise RuntimeError(f"torch_requirement takes no settings, got {sorted(settings)}")
    import torch

    return [f"torch=={torch.__version__.split('+', 1)[0]}"]
