"""
Installs the mini_dlm package and builds its compiled extension mini_dlm._C:

    pip install --no-build-isolation -e .

--no-build-isolation builds against the torch already installed (the CPU wheel on a laptop,
your CUDA build on a GPU box) instead of downloading another one. torch picks the C++
standard its headers need. What gets built:

  CPU kernels   csrc/*.cpp, always.
  CUDA kernels  csrc/*_cuda.cu and their torch glue csrc/*_cuda_glue.cpp, when torch is a
                CUDA build, nvcc is found (CUDA_HOME) and torch sees a GPU. USE_CUDA=0 skips
                them. MINI_DLM_FORCE_CUDA=1 builds them without a GPU (CI does), for
                TORCH_CUDA_ARCH_LIST (default 9.0, the H100/H200). If only the CUDA part fails
                to compile, the install goes on with the CPU kernels and says why, once.

The outcome (CUDA built or not, and why) is written to mini_dlm/_build.json beside the
library; mini_dlm/ops.py reads it to explain a missing CUDA kernel. If the extension is
missing altogether, mini_dlm/ops.py falls back to its PyTorch reference.
"""

import glob
import json
import os
import re
import sys
import tempfile
from contextlib import contextmanager

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
LINUX = sys.platform.startswith("linux")
CPU_SOURCES = [f for f in sorted(glob.glob("csrc/*.cpp")) if "_cuda" not in f]
CUDA_SOURCES = sorted(glob.glob("csrc/*_cuda.cu") + glob.glob("csrc/*_cuda_glue.cpp"))
# at::parallel_for is OpenMP inside ATen's headers: without -fopenmp it silently runs on one
# thread. -march=native (as llm.c builds): the extension is compiled on the machine that runs
# it, so the attention kernel's SIMD vectors become AVX2/AVX-512 instead of baseline SSE2.
# (Apple's clang has no -fopenmp; there the kernels run single-threaded.)
OMP = ["-fopenmp"] if LINUX else []
CXX_FLAGS = ["-O3"] + (["-march=native"] if LINUX else []) + OMP
# -lineinfo: compute-sanitizer and ncu point at source lines, at no cost in speed.
NVCC_FLAGS = ["-O3", "-lineinfo"]


def cuda_plan():
    """(build the CUDA kernels?, why not). Decided before compiling."""
    force = os.environ.get("MINI_DLM_FORCE_CUDA") == "1"
    if os.environ.get("USE_CUDA") == "0":
        why = "USE_CUDA=0"
    elif torch.version.cuda is None:
        why = f"torch {torch.__version__} is a CPU build"
    elif CUDA_HOME is None:
        why = "nvcc not found (set CUDA_HOME)"
    elif not (force or torch.cuda.is_available()):
        why = "torch sees no GPU (MINI_DLM_FORCE_CUDA=1 builds them anyway)"
    else:
        if force and not torch.cuda.is_available():
            os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")  # no GPU to ask for its arch
        return True, None
    if force and why != "USE_CUDA=0":
        sys.exit(f"error: MINI_DLM_FORCE_CUDA=1, but {why}")
    return False, why


def extension(with_cuda):
    if with_cuda:
        return CUDAExtension("mini_dlm._C", CPU_SOURCES + CUDA_SOURCES, include_dirs=[os.path.join(ROOT, "csrc")],
                             extra_compile_args={"cxx": CXX_FLAGS, "nvcc": NVCC_FLAGS}, extra_link_args=OMP)
    return CppExtension("mini_dlm._C", CPU_SOURCES, include_dirs=[os.path.join(ROOT, "csrc")],
                        extra_compile_args={"cxx": CXX_FLAGS}, extra_link_args=OMP)


@contextmanager
def stdout_to(path):
    """Send file descriptor 1 (where ninja and the compilers print) to path for a while."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(path, "w") as f:
        os.dup2(f.fileno(), 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


class Build(BuildExtension):
    """torch's BuildExtension, plus: a CUDA build that fails falls back to the CPU kernels, and
    the outcome is recorded in mini_dlm/_build.json."""

    def build_extension(self, ext):
        with_cuda, why = PLAN
        info = {"torch": torch.__version__, "cuda": False, "why": why}
        if with_cuda:
            info.update(cuda=True, why=None, arch=os.environ.get("TORCH_CUDA_ARCH_LIST", "this machine's GPU"))
            log = os.path.join(tempfile.mkdtemp(), "cuda_build.log")
            try:
                with stdout_to(log):
                    super().build_extension(ext)
            except Exception as e:
                with open(log, errors="replace") as f:
                    text = f.read() + "\n" + str(e)
                print(text)
                first = next((line.strip() for line in text.splitlines() if re.search(r"\berror\b", line)), "")
                info.update(cuda=False, why=f"compiling them failed: {first[:300] or 'see the build log'}")
                print(f"\nmini_dlm: the CUDA kernels are skipped, {info['why']}\nmini_dlm: building the CPU kernels "
                      "only; on a GPU the sampler uses the PyTorch reference ops (pip install -v shows the whole "
                      "compiler output)\n")
                ext.sources = [s for s in ext.sources if s not in CUDA_SOURCES]
                super().build_extension(ext)
            else:
                with open(log, errors="replace") as f:
                    print(f.read())
        else:
            super().build_extension(ext)
        # beside the built library (it goes into a wheel) and in the source tree (editable installs)
        for folder in (os.path.dirname(self.get_ext_fullpath(ext.name)), os.path.join(ROOT, "mini_dlm")):
            with open(os.path.join(folder, "_build.json"), "w") as f:
                json.dump(info, f, indent=1)


PLAN = cuda_plan()
if PLAN[1]:
    print(f"mini_dlm: CUDA kernels not built: {PLAN[1]}")

setup(
    name="mini_dlm",
    version="0.1.0",
    description="A minimal, educational masked diffusion language model",
    packages=find_packages(include=["mini_dlm", "mini_dlm.*"]),
    ext_modules=[extension(PLAN[0])],
    cmdclass={"build_ext": Build},
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "tiktoken>=0.7", "regex"],
    extras_require={"test": ["pytest", "matplotlib"], "bench": ["matplotlib"]},  # bench/efficiency.py plots; tests draw them
)
