"""
Installs the mini_dlm package and builds its compiled extension mini_dlm._C:

    pip install --no-build-isolation -e .

--no-build-isolation builds against the torch already installed (the CPU wheel on a laptop,
your CUDA build on a GPU box) instead of downloading another one. The C++ CPU kernels in
csrc/ are always built (torch.utils.cpp_extension + ninja); CUDA kernels join them when torch
sees CUDA and CUDA_HOME is set (USE_CUDA=0 forces a CPU-only build). If the extension is
missing, mini_dlm/ops.py falls back to its PyTorch reference.
"""

import glob
import os
import sys

from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def extension():
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    # at::parallel_for is OpenMP inside ATen's headers: without -fopenmp it silently runs on one
    # thread. (Apple's clang has no -fopenmp; there the kernels run single-threaded.)
    omp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    return CppExtension("mini_dlm._C", sources, include_dirs=[os.path.join(ROOT, "csrc")],
                        extra_compile_args={"cxx": ["-O3", "-std=c++17"] + omp}, extra_link_args=omp)


setup(
    name="mini_dlm",
    version="0.1.0",
    description="A minimal, educational masked diffusion language model",
    packages=find_packages(include=["mini_dlm", "mini_dlm.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "tiktoken>=0.7", "regex"],
    extras_require={"test": ["pytest"]},
)
