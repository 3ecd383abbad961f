"""The library refuses, at import, a torch other than the one it was built against."""

from __future__ import annotations

import pytest
import torch

import holocron_optim
from holocron_optim import _library


def test_library_records_the_torch_it_was_built_against():
    recorded = _library._BUILT_AGAINST.read_text().strip()
    assert recorded == torch.__version__.split("+")[0]
    _library.check_torch_version(recorded, torch.__version__)


@pytest.mark.parametrize("built, running", [
    ("2.14.1", "2.14.1"),
    ("2.14.1", "2.14.1+cu130"),  # the CPU and CUDA builds of a release share LibTorch's ABI
    ("2.14.1", "2.14.1+cpu"),
    ("2.15.0.dev20261201", "2.15.0.dev20261201+cu130"),
])
def test_same_release_loads(built, running):
    _library.check_torch_version(built, running)


@pytest.mark.parametrize("built, running", [
    ("2.13.0", "2.14.1+cu130"),
    ("2.14.1", "2.13.0+cpu"),
    ("2.14.1", "2.14.0"),
    ("2.15.0.dev20261201", "2.15.0.dev20261202"),
    ("2.15.0.dev20261201", "2.15.0"),
])
def test_other_release_is_refused_naming_both(built, running):
    with pytest.raises(ImportError) as error:
        _library.check_torch_version(built, running)
    message = str(error.value)
    assert f"built against torch {built}" in message
    assert f"torch {running} is installed" in message
    assert "--no-build-isolation" in message


def test_the_package_imports_against_this_torch():
    assert holocron_optim.LAMB is not None
    assert hasattr(torch.ops.holocron, "lamb_")


def test_import_under_another_torch_fails_with_our_message(tmp_path):
    """A copy of the installed package, marked as built against another torch, refuses to import
    before loading the library (which would fail on an undefined symbol)."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    package = Path(holocron_optim.__file__).resolve().parent
    copy = tmp_path / "holocron_optim"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "lib" / "torch_version.txt").write_text("1.13.1\n")
    result = subprocess.run(
        [sys.executable, "-c", "import holocron_optim"], cwd=tmp_path, capture_output=True, text=True,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}, timeout=120,
    )
    assert result.returncode != 0
    assert f"built against torch 1.13.1, but torch {torch.__version__} is installed" in result.stderr
