"""Loads the C++ library that registers the torch.ops.holocron operators."""

from pathlib import Path

import torch

_LIBRARY = Path(__file__).resolve().parent / "lib" / "libholocron_optim.so"


def load() -> None:
    if not hasattr(torch.ops.holocron, "lamb_"):
        if not _LIBRARY.exists():
            raise ImportError(
                f"holocron_optim: the C++ library is missing ({_LIBRARY}); build it with `make build`"
            )
        torch.ops.load_library(str(_LIBRARY))


load()
ops = torch.ops.holocron
