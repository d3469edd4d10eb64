"""
Kernel benchmark, llm.c style: validate every compiled op against its PyTorch reference, then
time both and print a fixed table.

    python bench_kernels.py                 # the CPU unmask kernel (the only one built so far)
    python bench_kernels.py --device cuda   # when CUDA kernels exist

Bytes moved by unmask: it must read every eligible row of logits once, so
bytes = rows_read * V * bytes_per_logit, and GB/s = bytes / time. The %-of-peak column
needs a measured copy bandwidth: the script measures one (a large tensor copy, read + write)
on the same device and reports GB/s as a fraction of it.
"""

import time

import torch

from mini_dlm import ops
from mini_dlm.cli import Parser, positive_int, resolve_device, run

SHAPES = [  # (B, L, V, dtype, eligible rows per batch row: "all" or a block of 32)
    (16, 256, 4096, torch.float32, "all"),
    (16, 256, 4096, torch.float32, 32),
    (4, 256, 2048, torch.float32, "all"),
    (16, 256, 4096, torch.bfloat16, "all"),
]


def get_parser():
    p = Parser(description="Validate, then time the compiled ops against their PyTorch reference.")
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"), help="where to run")
    p.add_argument("--repeats", type=positive_int, default=10, help="timed calls per measurement (after 2 warm-up calls)")
    return p


def timed(fn, device, repeats):
    for _ in range(2):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats


def copy_bandwidth(device, repeats):
    """Measured copy bandwidth in GB/s (bytes read + written) of a 256 MiB fp32 tensor."""
    x = torch.empty(64 * 2 ** 20, device=device)
    y = torch.empty_like(x)
    t = timed(lambda: y.copy_(x), device, repeats)
    return 2 * x.numel() * x.element_size() / t / 1e9


def unmask_case(B, L, V, dtype, eligible_rows, device):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(B, L, V, generator=g) * 3).to(dtype).to(device)
    eligible = torch.zeros(B, L, dtype=torch.bool)
    if eligible_rows == "all":
        eligible[:] = True
    else:
        eligible[:, L // 2:L // 2 + eligible_rows] = True  # one block in the middle of the canvas
    tokens = torch.full((B, L), V - 1)
    return logits, tokens.to(device), eligible.to(device)


def main(argv=None):
    args = get_parser().parse_args(argv)
    device = resolve_device(args.device)
    if not ops.has_kernel("unmask", device):
        raise ValueError(f"mini_dlm._C has no unmask kernel for {device.type} (pip install --no-build-isolation -e .)")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    peak = copy_bandwidth(device, args.repeats)
    print(f"device: {device} ({name}), torch {torch.__version__}, measured copy bandwidth {peak:.1f} GB/s")

    print(f"\nunmask, threshold 0.9, low_confidence, temperature 0")
    print(f"{'B':>3} {'L':>4} {'V':>6} {'dtype':>9} {'rows':>5} {'ref us':>10} {'ext us':>10} {'GB/s':>7} "
          f"{'% copy':>7} {'speedup':>8}")
    for B, L, V, dtype, rows in SHAPES:
        logits, tokens, eligible = unmask_case(B, L, V, dtype, rows, device)
        call = dict(tau=0.9, banned=[V - 1])
        # validate first: the same tokens, eligibility and counts as the reference
        t_ref, e_ref, t_ext, e_ext = tokens.clone(), eligible.clone(), tokens.clone(), eligible.clone()
        n_ref = ops.unmask_reference(logits, t_ref, e_ref, **call)
        ops.set_backend("ext")
        n_ext = ops.unmask(logits, t_ext, e_ext, **call)
        ops.set_backend("auto")
        if not (torch.equal(t_ref, t_ext) and torch.equal(e_ref, e_ext) and torch.equal(n_ref, n_ext)):
            raise RuntimeError(f"unmask kernel disagrees with the reference at {(B, L, V, dtype, rows)}")
        us_ref = 1e6 * timed(lambda: ops.unmask_reference(logits, tokens.clone(), eligible.clone(), **call),
                             device, args.repeats)
        ops.set_backend("ext")
        us_ext = 1e6 * timed(lambda: ops.unmask(logits, tokens.clone(), eligible.clone(), **call), device, args.repeats)
        ops.set_backend("auto")
        n_rows = int(eligible.sum())
        gbs = n_rows * V * logits.element_size() / (us_ext * 1e-6) / 1e9
        print(f"{B:>3} {L:>4} {V:>6} {str(dtype).split('.')[-1]:>9} {n_rows:>5} {us_ref:>10.0f} {us_ext:>10.0f} "
              f"{gbs:>7.2f} {100 * gbs / peak:>6.1f}% {us_ref / us_ext:>7.2f}x")


if __name__ == "__main__":
    run(main)
