"""Loads the C++ library that registers the torch.ops.holocron operators."""

import ctypes
import os
import re
from pathlib import Path

import torch

_LIB_DIR = Path(__file__).resolve().parent / "lib"
_LIBRARY = _LIB_DIR / "libholocron_optim.so"
# Written by the build: the torch release whose LibTorch the library links.
_BUILT_AGAINST = _LIB_DIR / "torch_version.txt"


def _release(version: str, like: str) -> str:
    """``version`` without its local label ("+cu130"), cut to as many parts as ``like`` has."""
    public = version.split("+", 1)[0]
    if re.fullmatch(r"\d+\.\d+\.\d+", like):
        match = re.match(r"\d+\.\d+\.\d+", public)
        return match.group(0) if match else public
    return public


def check_torch_version(built_against: str, running: str) -> None:
    """Refuses a torch other than the one the library was built against.

    LibTorch's C++ ABI changes with every release: loading the library into
    another torch fails with an undefined symbol, or worse, loads and
    misbehaves. The CPU and CUDA builds of one release share it.
    """
    if _release(running, built_against) != built_against:
        raise ImportError(
            f"holocron_optim was built against torch {built_against}, but torch {running} is "
            f"installed; the library links LibTorch's C++ ABI, which changes with each release. "
            f"Rebuild it against this torch (in its source folder: `pip install "
            f"--no-build-isolation .`; in a checkout: `make build`), or install "
            f"torch=={built_against}."
        )


def load() -> None:
    if not hasattr(torch.ops.holocron, "lamb_"):
        if not _LIBRARY.exists():
            raise ImportError(
                f"holocron_optim: the C++ library is missing ({_LIBRARY}); build it with `make build`"
            )
        if _BUILT_AGAINST.exists():
            check_torch_version(_BUILT_AGAINST.read_text().strip(), torch.__version__)
        torch.ops.load_library(str(_LIBRARY))


load()
ops = torch.ops.holocron


def _state_walks() -> ctypes.PyDLL | None:
    """The library's walks over state dicts (src/python_walks.cpp), called with the GIL held:
    `holocron_entries_are(states, key, expected)`, `holocron_entries_all(states, key, value)` (1
    or 0) and `holocron_set_entries(states, key, value)`, each over a list of dicts, and
    `holocron_params_are(params, address)` (1 or 0: whether a list holds the parameters that the
    BorrowedParams at that address borrowed); None where the library cannot call into this
    interpreter (its CPython functions unresolved)."""
    try:
        # Only the copy load() loaded: where another copy registered the operators first, opening
        # this one would load it beside it, and its registrations would abort the process.
        library = ctypes.PyDLL(str(_LIBRARY), mode=os.RTLD_NOLOAD)
        if not library.holocron_walks_ready():
            return None
    except (OSError, AttributeError):
        return None
    for name in ("holocron_entries_are", "holocron_entries_all", "holocron_set_entries"):
        function = getattr(library, name)
        function.argtypes = (ctypes.py_object, ctypes.py_object, ctypes.py_object)
        function.restype = ctypes.c_int
    library.holocron_params_are.argtypes = (ctypes.py_object, ctypes.c_void_p)
    library.holocron_params_are.restype = ctypes.c_int
    return library


walks = _state_walks()
