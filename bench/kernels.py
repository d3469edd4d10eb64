"""
Kernel benchmark, llm.c style: validate every compiled op against its PyTorch reference, then
time both and print a fixed table.

    python -m bench.kernels                 # the CPU kernels
    python -m bench.kernels --device cuda   # the CUDA kernels (CUDA events for timing)
    python -m bench.kernels --device cuda --json bench-out/kernels.json   # also write the rows as JSON

Bytes each op must move, and GB/s = bytes / time:
  unmask           every eligible row of logits, once: rows_read * V * bytes_per_logit.
  block_attention  q, the block's k and v, each row's valid prefix k/v, the suffix k/v, and the
                   output: B H D bytes_per_elem (2 b + 2 (prefix_len + b + Ls)).
The %-of-peak column needs a measured copy bandwidth: the script measures one (a large tensor
copy, read + write) on the same device and reports GB/s as a fraction of it. Attention is also
timed against what one would write without the op: torch.cat of the cache + SDPA.
"""

import json
import os

import torch
import torch.nn.functional as F

from mini_dlm import ops
from mini_dlm.plumbing import backend
from mini_dlm.plumbing.cli import Parser, positive_int, resolve_device, run

from bench.roofline import copy_bandwidth, device_name, timed

F32, BF16 = torch.float32, torch.bfloat16
UNMASK_SHAPES = {  # (B, L, V, dtype, eligible rows per batch row: "all" or a block of 32)
    "cpu": [(16, 256, 4096, F32, "all"), (16, 256, 4096, F32, 32), (4, 256, 2048, F32, "all"),
            (16, 256, 4096, BF16, "all")],
    "cuda": [(64, 256, 32768, BF16, "all"), (64, 256, 32768, BF16, 32), (16, 256, 32768, F32, "all"),
             (1, 256, 32768, BF16, 32), (64, 256, 50257, BF16, "all")],
}
ATTENTION_SHAPES = {  # (B, H, b, D, Lc, Ls, dtype): every prefix slot valid
    "cpu": [(1, 4, 32, 32, 288, 0, F32), (1, 4, 32, 32, 64, 192, F32), (1, 6, 32, 64, 512, 0, F32),
            (8, 12, 32, 64, 1024, 0, F32), (8, 12, 32, 64, 1024, 0, BF16), (8, 12, 32, 128, 1024, 0, F32)],
    "cuda": [(64, 12, 32, 64, 1024, 0, BF16), (64, 12, 32, 128, 1024, 0, BF16), (64, 12, 32, 64, 512, 480, BF16),
             (1, 12, 32, 64, 1024, 0, BF16), (4, 6, 32, 64, 4096, 0, BF16), (64, 12, 32, 64, 1024, 0, torch.float16),
             (64, 12, 32, 64, 1024, 0, F32)],
}


def get_parser():
    p = Parser(prog="python -m bench.kernels",
               description="Validate, then time the compiled ops against their PyTorch reference.")
    p.add_device_flag(default="cpu")
    p.add_argument("--repeats", type=positive_int, default=10, help="timed calls per measurement (after 2 warm-up calls)")
    p.add_argument("--json", metavar="FILE", help="also write every row as JSON (default: off)")
    return p


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


def bench_unmask(device, peak, repeats, rows_out):
    print("\nunmask, threshold 0.9, low_confidence, temperature 0")
    print(f"{'B':>3} {'L':>4} {'V':>6} {'dtype':>9} {'rows':>5} {'ref us':>10} {'ext us':>10} {'GB/s':>8} "
          f"{'% copy':>7} {'speedup':>8}")
    for B, L, V, dtype, rows in UNMASK_SHAPES[device.type]:
        logits, tokens, eligible = unmask_case(B, L, V, dtype, rows, device)
        rule = ops.Rule(threshold=0.9, banned=(V - 1,))
        # validate first: the same tokens, eligibility and counts as the reference
        t_ref, e_ref, t_ext, e_ext = tokens.clone(), eligible.clone(), tokens.clone(), eligible.clone()
        n_ref = ops.unmask_reference(logits, t_ref, e_ref, rule)
        backend.set_backend("ext")
        n_ext = ops.unmask(logits, t_ext, e_ext, rule)
        backend.set_backend("auto")
        if not (torch.equal(t_ref, t_ext) and torch.equal(e_ref, e_ext) and torch.equal(n_ref, n_ext)):
            raise RuntimeError(f"unmask kernel disagrees with the reference at {(B, L, V, dtype, rows)}")
        # unmask writes its inputs: every timed call gets its own fresh copy, made before the clock runs
        fresh = lambda: iter([(tokens.clone(), eligible.clone()) for _ in range(repeats + 2)])  # noqa: E731
        inputs = fresh()
        us_ref = 1e6 * timed(lambda: ops.unmask_reference(logits, *next(inputs), rule), device, repeats)
        backend.set_backend("ext")
        inputs = fresh()
        us_ext = 1e6 * timed(lambda: ops.unmask(logits, *next(inputs), rule), device, repeats)
        backend.set_backend("auto")
        n_rows = int(eligible.sum())
        gbs = n_rows * V * logits.element_size() / (us_ext * 1e-6) / 1e9
        print(f"{B:>3} {L:>4} {V:>6} {str(dtype).split('.')[-1]:>9} {n_rows:>5} {us_ref:>10.0f} {us_ext:>10.0f} "
              f"{gbs:>8.2f} {100 * gbs / peak:>6.1f}% {us_ref / us_ext:>7.2f}x")
        rows_out.append(dict(op="unmask", B=B, L=L, V=V, dtype=str(dtype).split(".")[-1], rows=n_rows, ref_us=us_ref,
                             ext_us=us_ext, gbs=gbs, pct_copy=100 * gbs / peak, speedup=us_ref / us_ext))


def attention_case(B, H, b, D, Lc, Ls, dtype, device):
    g = torch.Generator().manual_seed(0)
    rnd = lambda n: torch.randn(B, H, n, D, generator=g).to(dtype).to(device)  # noqa: E731
    q, k, v, kp, vp = rnd(b), rnd(b), rnd(b), rnd(Lc), rnd(Lc)
    ks, vs = (rnd(Ls), rnd(Ls)) if Ls else (None, None)
    return q, k, v, kp, vp, torch.full((B,), Lc, device=device), ks, vs


def cat_sdpa(q, k, v, kp, vp, plen, ks, vs):
    """What one writes without the op (every prefix slot valid): copy the cache, then attend."""
    K = torch.cat([t for t in (kp, k, ks) if t is not None], dim=2)
    V = torch.cat([t for t in (vp, v, vs) if t is not None], dim=2)
    return F.scaled_dot_product_attention(q, K, V)


def bench_attention(device, peak, repeats, rows_out):
    print("\nblock_attention, every prefix slot valid (cat+SDPA: torch.cat of the cache, then SDPA)")
    print(f"{'B':>3} {'H':>3} {'b':>3} {'D':>4} {'Lc':>5} {'Ls':>4} {'dtype':>9} {'ref us':>9} {'cat+SDPA':>9} "
          f"{'ext us':>9} {'GB/s':>8} {'% copy':>7} {'vs ref':>7} {'vs cat':>7}")
    for B, H, b, D, Lc, Ls, dtype in ATTENTION_SHAPES[device.type]:
        args = attention_case(B, H, b, D, Lc, Ls, dtype, device)
        # validate first: the reference's values to the dtype's rounding (fp32 sums in another order)
        want, got = ops.block_attention_reference(*args).float(), torch.ops.mini_dlm.block_attention(*args).float()
        tol = 2e-6 if dtype == torch.float32 else 2e-2
        if not torch.allclose(got, want, rtol=tol, atol=tol):
            raise RuntimeError(f"block_attention kernel disagrees with the reference at {(B, H, b, D, Lc, Ls, dtype)}: "
                               f"max error {(got - want).abs().max().item():.3g}")
        us_ref = 1e6 * timed(lambda: ops.block_attention_reference(*args), device, repeats)
        us_cat = 1e6 * timed(lambda: cat_sdpa(*args), device, repeats)
        us_ext = 1e6 * timed(lambda: torch.ops.mini_dlm.block_attention(*args), device, repeats)
        gbs = B * H * D * args[0].element_size() * (2 * b + 2 * (Lc + b + Ls)) / (us_ext * 1e-6) / 1e9
        print(f"{B:>3} {H:>3} {b:>3} {D:>4} {Lc:>5} {Ls:>4} {str(dtype).split('.')[-1]:>9} {us_ref:>9.0f} "
              f"{us_cat:>9.0f} {us_ext:>9.0f} {gbs:>8.2f} {100 * gbs / peak:>6.1f}% {us_ref / us_ext:>6.2f}x "
              f"{us_cat / us_ext:>6.2f}x")
        rows_out.append(dict(op="block_attention", B=B, H=H, b=b, D=D, Lc=Lc, Ls=Ls, dtype=str(dtype).split(".")[-1],
                             ref_us=us_ref, cat_sdpa_us=us_cat, ext_us=us_ext, gbs=gbs, pct_copy=100 * gbs / peak,
                             vs_ref=us_ref / us_ext, vs_cat=us_cat / us_ext))


def main(argv=None):
    args = get_parser().parse_args(argv)
    device = resolve_device(args.device)
    missing = [op for op in ("unmask", "block_attention") if not backend.has_kernel(op, device)]
    if missing:
        why = backend.missing_kernel_reason(device) or "pip install --no-build-isolation -e ."
        raise ValueError(f"mini_dlm._C has no {' / '.join(missing)} kernel for {device.type} ({why})")
    name = device_name(device)
    peak = copy_bandwidth(device, args.repeats) / 1e9  # GB/s
    print(f"device: {device} ({name}), torch {torch.__version__}, measured copy bandwidth {peak:.1f} GB/s")
    rows = []
    with torch.no_grad():
        bench_unmask(device, peak, args.repeats, rows)
        bench_attention(device, peak, args.repeats, rows)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "copy_gbs": peak, "rows": rows}, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    run(main)
