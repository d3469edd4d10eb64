"""
The efficiency model of notes/06 (notes/appendix-spec.md section 6, after "How Efficient Are Diffusion
Language Models?", 2025): what one forward pass costs in FLOPs and bytes, the device's two
roofs measured, and from them the throughput a decoding method can reach at batch B.

One forward of mini_dlm/model.py: Transformer over B rows, T new positions per row, where
row r's queries see keys[r] keys (T itself, plus cached prefix and suffix keys), with logits
for n_out positions per row (the `only` slice):
  FLOPs  2 B T N_blk                      every weight matrix of the blocks, once per position
       + 4 C n_layer T sum_r keys[r]       attention: q k^T and p v, every key each query sees
       + 2 B n_out C V                     the output head, only where logits are wanted
  bytes  weights (the blocks and the head once, plus the embedding rows looked up)
       + 2 C n_layer sum_r (keys[r] - T)   cached K/V read
       + 2 B T C n_layer                   new K/V written, when they go into a cache
       + B n_out V                         logits written
  (elements of `elem` bytes). N_blk = n_layer (4 C^2 + 3 C F), F the SwiGLU width. The bytes
are the compulsory traffic: a lower bound that ignores activations between layers, which a
fused kernel keeps on chip. Intensity = FLOPs / bytes.

Roofline: a forward takes at least max(FLOPs / peak, bytes / bandwidth). The weight bytes do
not grow with B, everything else does; so intensity grows with B*T until the ridge
peak / bandwidth, where the forward turns from memory-bound to compute-bound:
  AR decoding (T = 1)            memory-bound until B nears the ridge;
  DLM without a cache (T = L)    compute-bound already at B = 1.
A cached, threshold-decoding DLM computes w positions per committed token (w = b / tau_avg +
L / b for the dual cache: tau_avg tokens per pass plus one full pass per block); AR computes 1.
Both memory-bound, the DLM wins by its tokens per pass; both compute-bound, AR wins by w. The
crossover, AR memory-bound and the DLM compute-bound, is at B* ~ ridge * (elem / 2) / w
(the spec's ridge / w for bf16). predict_seconds() evaluates the full model instead.
"""

import inspect
import math
import time
from contextlib import contextmanager

import torch

from mini_dlm.model import swiglu_hidden


def forward_cost(cfg, B, T, keys, n_out, kv_written, elem):
    """(FLOPs, weight bytes, row bytes) of one forward (see the module docstring). keys: the sum
    over rows of the keys each row's queries see. Row bytes grow with the batch, weight bytes not."""
    C, V, n = cfg.n_embd, cfg.vocab_size, cfg.n_layer
    F = swiglu_hidden(C)
    n_blk = n * (4 * C * C + 3 * C * F)
    flops = 2 * B * T * n_blk + 4 * C * n * T * keys + 2 * B * n_out * C * V
    weight_bytes = (n_blk + V * C + min(B * T, V) * C) * elem  # blocks, head, embedding rows
    row_bytes = (2 * C * n * (keys - B * T) + (2 * B * T * C * n if kv_written else 0) + B * n_out * V) * elem
    return flops, weight_bytes, row_bytes


class ForwardLog:
    """The cost of every forward pass a model ran inside count_forwards(): lists of FLOPs,
    weight bytes and row bytes, one entry per forward."""

    def __init__(self):
        self.flops, self.weight_bytes, self.row_bytes, self.positions = [], [], [], 0

    def add(self, cfg, B, T, keys, n_out, kv_written, elem):
        """Log one forward (the arguments of forward_cost)."""
        f, w, r = forward_cost(cfg, B, T, keys, n_out, kv_written, elem)
        self.flops.append(f)
        self.weight_bytes.append(w)
        self.row_bytes.append(r)
        self.positions += B * T

    @property
    def total_flops(self):
        return sum(self.flops)

    @property
    def total_bytes(self):
        return sum(self.weight_bytes) + sum(self.row_bytes)

    def predict_seconds(self, peak_flops, bandwidth, scale=1.0):
        """Roofline time of the logged forwards: each takes max(FLOPs / peak, bytes / bandwidth).
        scale multiplies the batch: a log taken at batch B predicts batch scale * B (FLOPs and
        row bytes grow with it, weight bytes do not)."""
        return sum(max(scale * f / peak_flops, (w + scale * r) / bandwidth)
                   for f, w, r in zip(self.flops, self.weight_bytes, self.row_bytes))


@contextmanager
def count_forwards(model):
    """Log the cost of every Transformer.forward call made inside the block. Reads the cache's
    per-row lengths (a device sync), so use it on an untimed run."""
    log, params = ForwardLog(), inspect.signature(model.forward).parameters
    elem = next(model.parameters()).element_size()

    def hook(module, args, kwargs):
        a = dict(zip(params, args), **kwargs)
        B, T = a["idx"].shape
        cache, only = a.get("cache"), a.get("only")
        keys, state = B * T, "none" if cache is None else cache.state
        if state in ("read", "append"):  # the new tokens also attend to the cached keys
            keys += int(cache.length.sum()) + (0 if cache.k_suffix is None else B * cache.k_suffix[0].shape[2])
        n_out = T if only is None else len(range(T)[only])
        log.add(module.config, B, T, keys, n_out, state in ("record", "append"), elem)

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield log
    finally:
        handle.remove()


def passes(config, P, G, b, tau_avg=1.0):
    """The analytical model of each decoding method: the forwards it runs for one row with a
    prompt of P tokens, G generated, blocks of b, tau_avg tokens committed per pass (every block
    then takes ceil(b / tau_avg) passes). -> [(T new positions, keys each sees, n_out logits,
    K/V written to a cache)], in the order mini_dlm/sampler.py runs them."""
    L, n, blocks = P + G, math.ceil(b / tau_avg), G // b
    if config == "ar":  # prefill, then one token per pass; the last token's K/V are never read
        return [(P, P, 1, G > 1)] + [(1, P + s - 1, 1, s < G) for s in range(2, G + 1)]
    if config in ("dlm", "threshold"):  # every pass over the whole canvas
        return [(L, L, b, False)] * (blocks * n)
    if config == "threshold+dual":  # a full pass per block, then the block over prefix + itself + suffix
        return [(L, L, b, True), *[(b, L, b, False)] * (n - 1)] * blocks
    if config == "threshold+block":  # the prompt once; per block its passes, then one that writes its K/V
        out = [(P, P, 0, True)] if P else []
        for j in range(blocks):
            out += [(b, P + (j + 1) * b, b, False)] * n + ([(b, P + (j + 1) * b, 0, True)] if j < blocks - 1 else [])
        return out
    raise ValueError(f"unknown configuration {config!r}")


def analytic_log(cfg, config, B, P, G, b, tau_avg=1.0, elem=2):
    """A ForwardLog of what `config` would run at batch B (every row alike), without running it."""
    log = ForwardLog()
    for T, keys, n_out, kv_written in passes(config, P, G, b, tau_avg):
        log.add(cfg, B, T, B * keys, n_out, kv_written, elem)
    return log


def crossover_closed_form(ridge, elem, w):
    """The spec's B* ~ ridge / w, for elements of elem bytes: ridge (FLOP/byte) * (elem / 2) / w,
    w = positions the DLM computes per committed token (AR: 1)."""
    return ridge * elem / 2 / w


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_call(fn, device):
    """(fn(), seconds it took), the device synchronised before and after."""
    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - t0


def timed(fn, device, repeats, warmup=2):
    """Seconds per call of fn, after warm-up calls: CUDA events on a GPU, a wall clock on a CPU."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(repeats):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / repeats
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def copy_bandwidth(device, repeats=10):
    """Measured memory roof in bytes/s: read + write of a 256 MiB fp32 copy."""
    x = torch.empty(64 * 2 ** 20, device=device)
    y = torch.empty_like(x)
    return 2 * x.numel() * x.element_size() / timed(lambda: y.copy_(x), device, repeats)


def matmul_peak(device, dtype, repeats=10):
    """Measured compute roof in FLOP/s: the best of square matmuls in dtype (sizes 4096 and 8192
    on a GPU, 1024 and 2048 on a CPU)."""
    best = 0.0
    for n in (4096, 8192) if device.type == "cuda" else (1024, 2048):
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        best = max(best, 2 * n ** 3 / timed(lambda: a @ b, device, repeats if device.type == "cuda" else 3))
    return best


def device_name(device):
    """'NVIDIA H200' or 'Intel(R) Xeon(R) ..., 2 threads': what a benchmark table names."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = "CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"
