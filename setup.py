"""Builds the C++ library with CMake and ships it inside the Python package.

`pip install --no-build-isolation .` (torch must already be installed) runs
CMake against the installed torch; `make build` builds first and installs the
package in editable mode.
"""

import os
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
LIBRARY = "libholocron_optim.so"


class BuildWithCMake(build_py):
    def run(self):
        packaged = ROOT / "python" / "holocron_optim" / "lib" / LIBRARY
        if not packaged.exists():
            import torch

            build_dir = ROOT / "build"
            subprocess.check_call(
                [
                    "cmake", "-S", str(ROOT), "-B", str(build_dir),
                    "-DCMAKE_BUILD_TYPE=Release",
                    f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
                    "-DHOLOCRON_OPTIM_BUILD_TESTS=OFF",
                    "-DHOLOCRON_OPTIM_BUILD_EXAMPLES=OFF",
                ]
            )
            subprocess.check_call(
                ["cmake", "--build", str(build_dir), "--target", "holocron_optim", "-j", str(os.cpu_count() or 1)]
            )
            packaged.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(build_dir / LIBRARY, packaged)
        super().run()


setup(cmdclass={"build_py": BuildWithCMake})
