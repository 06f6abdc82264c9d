"""mtkernels installs as pure Python: its C++ / CUDA kernels are compiled on first use against the
torch that imports them (``mtkernels.jit``), never at install time. This file only ships the C++
sources (csrc/) inside the package, so that a wheel or a non-editable install can build them; an
editable install reads them from the checkout.
"""

import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))


class BuildPyWithSources(build_py):
    def run(self):
        super().run()
        if not self.editable_mode:
            target = os.path.join(self.build_lib, "mtkernels", "csrc")
            shutil.copytree(os.path.join(ROOT, "csrc"), target, dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildPyWithSources})
