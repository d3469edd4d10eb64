"""
Installs the mini_dlm package and builds its compiled extension mini_dlm._C:

    pip install --no-build-isolation -e .

--no-build-isolation builds against the torch already installed (the CPU wheel on a laptop,
your CUDA build on a GPU box) instead of downloading another one. The C++ CPU kernels in
csrc/*.cpp are always built (torch.utils.cpp_extension + ninja). The CUDA kernels (csrc/*.cu
and their glue csrc/*_cuda.cpp) are built too when torch sees a GPU and CUDA_HOME is set;
USE_CUDA=0 forces a CPU-only build. If the extension is missing, mini_dlm/ops.py falls back to
its PyTorch reference.
"""

import glob
import os
import sys

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def extension():
    cpp = [f for f in sorted(glob.glob(os.path.join("csrc", "*.cpp"))) if not f.endswith("_cuda.cpp")]
    # at::parallel_for is OpenMP inside ATen's headers: without -fopenmp it silently runs on one
    # thread. (Apple's clang has no -fopenmp; there the kernels run single-threaded.)
    linux = sys.platform.startswith("linux")
    omp = ["-fopenmp"] if linux else []
    # -march=native (as llm.c builds): the extension is compiled on the machine that runs it, and
    # the attention kernel's SIMD vectors become AVX2/AVX-512 instead of baseline SSE2.
    cxx = ["-O3", "-std=c++17"] + (["-march=native"] if linux else []) + omp
    cuda = os.environ.get("USE_CUDA", "1") != "0" and torch.cuda.is_available() and CUDA_HOME is not None
    if cuda:
        sources = cpp + sorted(glob.glob(os.path.join("csrc", "*_cuda.cpp")) + glob.glob(os.path.join("csrc", "*.cu")))
        return CUDAExtension("mini_dlm._C", sources, include_dirs=[os.path.join(ROOT, "csrc")], extra_link_args=omp,
                             extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-std=c++17"]})
    return CppExtension("mini_dlm._C", cpp, include_dirs=[os.path.join(ROOT, "csrc")],
                        extra_compile_args={"cxx": cxx}, extra_link_args=omp)


setup(
    name="mini_dlm",
    version="0.1.0",
    description="A minimal, educational masked diffusion language model",
    packages=find_packages(include=["mini_dlm", "mini_dlm.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "tiktoken>=0.7", "regex"],
    extras_require={"test": ["pytest", "matplotlib"], "bench": ["matplotlib"]},  # bench.py plots; tests draw them
)
