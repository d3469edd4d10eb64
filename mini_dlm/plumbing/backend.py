"""
Which implementation the sampler's two ops run: the compiled kernels of mini_dlm._C (csrc/,
built by setup.py) or the PyTorch references in mini_dlm/ops.py.

MINI_DLM_BACKEND=torch|ext (or set_backend, or sample.py --backend) forces one. The default,
"auto", takes the compiled op on the CPU; on a GPU it takes it only once CUDA_VALIDATED is True,
that is once scripts/gpu_check.sh has passed on a GPU (csrc/README.md records when), and until
then runs the reference there. backends_ran() says which implementation each op actually used.
"""

import json
import os

import torch

try:
    import mini_dlm._C  # noqa: F401  registers torch.ops.mini_dlm.* (csrc/)
    HAS_EXT = True
except ImportError:  # not built (e.g. a source checkout without pip install): reference only
    HAS_EXT = False

BACKENDS = ("auto", "torch", "ext")
# False until scripts/gpu_check.sh (the CUDA tests, compute-sanitizer) has passed on a GPU
# (csrc/README.md records date, device and command): until then "auto" runs the PyTorch
# reference on CUDA, and the CUDA kernels are opt-in (--backend ext).
CUDA_VALIDATED = False
_backend = "auto"
_ran = set()  # {(op, "ext" | "torch")} since reset_backends_ran()


def set_backend(name):
    """auto: the compiled op where it exists (on CUDA only once CUDA_VALIDATED), else the
    reference; torch: always the reference; ext: always the compiled op (ValueError where
    there is none)."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    _backend = name


def _build_info():
    """What setup.py recorded about the build (mini_dlm/_build.json), or {} if nothing."""
    try:
        with open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "_build.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _compiled_kernels():
    """{(op, dispatch key)} of the kernels mini_dlm._C registered, e.g. ("unmask", "CPU")."""
    found = set()
    for op in ("unmask", "block_attention"):
        for key in ("CPU", "CUDA"):
            try:
                if HAS_EXT and torch._C._dispatch_has_kernel_for_dispatch_key(f"mini_dlm::{op}", key):
                    found.add((op, key))
            except RuntimeError:  # the op is not in this build at all
                pass
    return found


_KERNELS = _compiled_kernels()  # looked up once: a set lookup is free, and torch.compile traces it


def has_kernel(op, device):
    """Whether the compiled op `op` (e.g. "unmask") has a kernel for this device type."""
    return (op, device.type.upper()) in _KERNELS


def missing_kernel_reason(device):
    """Why mini_dlm._C has no kernels for this device type, in words ("" if none is known)."""
    if not HAS_EXT:
        return "the extension is not built: pip install --no-build-isolation -e ."
    if device.type == "cuda":
        return "built without its CUDA kernels: " + (_build_info().get("why") or "reason unknown (reinstall)")
    return ""


def use_ext(op, device):
    """Whether the backend choice runs the compiled op `op` on this device type."""
    if _backend == "torch":
        return False
    if _backend == "ext" and not has_kernel(op, device):
        why = missing_kernel_reason(device)
        raise ValueError(f"backend 'ext' requested, but mini_dlm._C has no {op} kernel for {device.type}"
                         + (f" ({why})" if why else ""))
    return has_kernel(op, device) and (_backend == "ext" or device.type != "cuda" or CUDA_VALIDATED)


def describe_backend(op, device):
    """What use_ext decides for op on this device, in words (for a run's config print)."""
    if use_ext(op, device):
        return "ext"
    if _backend == "auto" and device.type == "cuda":
        return "torch (" + ("the CUDA kernels are not yet validated on a GPU; --backend ext runs them"
                            if has_kernel(op, device) else "mini_dlm._C " + missing_kernel_reason(device)) + ")"
    return "torch"


def record(op, ext):
    """Note that op ran the compiled kernel (ext) or the reference."""
    if not torch.compiler.is_compiling():  # (a Python side effect torch.compile need not trace)
        _ran.add((op, "ext" if ext else "torch"))


def backends_ran():
    """{op: "ext" | "torch" | "ext+torch"}: what each op ran since reset_backends_ran()."""
    return {op: "+".join(b for b in ("ext", "torch") if (op, b) in _ran)
            for op in ("unmask", "block_attention") if (op, "ext") in _ran or (op, "torch") in _ran}


def reset_backends_ran():
    _ran.clear()


set_backend(os.environ.get("MINI_DLM_BACKEND", "auto"))
