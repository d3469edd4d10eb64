"""
Installs the mini_dlm package:  pip install --no-build-isolation -e .

--no-build-isolation builds against the torch already installed (the CPU wheel on a laptop,
your CUDA build on a GPU box) instead of downloading another one. The compiled extension
mini_dlm._C (csrc/) joins this file in a later step; for now the package is pure Python.
"""

from setuptools import find_packages, setup

setup(
    name="mini_dlm",
    version="0.1.0",
    description="A minimal, educational masked diffusion language model",
    packages=find_packages(include=["mini_dlm", "mini_dlm.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "tiktoken>=0.7", "regex"],
    extras_require={"test": ["pytest"]},
)
