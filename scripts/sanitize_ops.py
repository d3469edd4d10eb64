"""
Every path of the two CUDA ops once, on small inputs, checked against the reference: what
scripts/gpu_check.sh runs under compute-sanitizer (memcheck, racecheck, synccheck), where each
kernel launch costs a thousand times its normal time.

    compute-sanitizer --tool memcheck python scripts/sanitize_ops.py

unmask: fp32 / bf16 / fp16 logits, rows that are not 16-byte aligned (V = 1001, and a storage
that starts one element in), banned ids inside, every remasking x rule, with and without a
temperature. block_attention: the fp32 kernel and the tensor-core kernel (bf16, fp16), with
16-byte loads and without (odd strides), one split and several, D = 32, 64, 128.
Exits 1 if any result differs from the reference.
"""

import itertools
import sys

import torch

from mini_dlm import ops
from mini_dlm.plumbing import backend
from mini_dlm.plumbing.checks import REMASKING

torch.manual_seed(0)
cuda = torch.device("cuda")
backend.set_backend("ext")
failures = []

# -- unmask
B, L, V = 2, 24, 1001
for dtype in (torch.float32, torch.bfloat16, torch.float16):
    flat = (torch.randn(B * L * V + 1) * 3).to(dtype)
    logits = flat[1:].view(B, L, V)  # unaligned rows
    modes = ({"k": torch.tensor([3, 30])}, {"threshold": 0.4}, {"factor": 1.5},
             {"factor": 1.5, "factor_rule": "strict", "demote": [3]})
    for remasking, mode, temperature in itertools.product(REMASKING, modes, (0.0, 0.7)):
        eligible = torch.rand(B, L) < 0.6
        tokens = torch.full((B, L), V - 1)
        scores = torch.rand(B, L, dtype=torch.float64)
        rule = ops.Rule(remasking, temperature, mode.get("threshold"), mode.get("factor"),
                        mode.get("factor_rule", "fastdllm"), banned=(V - 1, 7), demote=tuple(mode.get("demote", ())))
        k = mode.get("k")
        t1, e1 = tokens.clone(), eligible.clone()
        n1 = ops.unmask_reference(logits, t1, e1, rule, k, scores=scores)
        t2, e2 = tokens.to(cuda), eligible.to(cuda)
        n2 = ops.unmask(flat.to(cuda)[1:].view(B, L, V), t2, e2, rule, None if k is None else k.to(cuda),
                        scores=scores.to(cuda))
        if not (torch.equal(t1, t2.cpu()) and torch.equal(e1, e2.cpu()) and torch.equal(n1, n2.cpu())):
            failures.append(("unmask", dtype, remasking, mode, temperature))


# -- block_attention
def rows(n, B, H, D, dtype, odd):
    """(B, H, n, D) on the GPU; odd: rows D + 1 apart from a storage that starts one element in."""
    if not odd:
        return torch.randn(B, H, n, D).to(dtype).to(cuda)
    buf = torch.randn(B * H * n * (D + 1) + 1).to(dtype).to(cuda)
    return buf[1:].as_strided((B, H, n, D), (H * n * (D + 1), n * (D + 1), D + 1, 1))


for dtype, D, odd, (Bq, H, b, Lc, Ls) in itertools.product(
        (torch.float32, torch.bfloat16, torch.float16), (32, 64, 128), (False, True),
        ((2, 2, 20, 70, 9), (1, 1, 33, 700, 0))):  # the second has B H = 1: the keys split over CTAs
    q, k, v, kp, vp = (rows(n, Bq, H, D, dtype, odd) for n in (b, b, b, Lc, Lc))
    ks, vs = (rows(Ls, Bq, H, D, dtype, odd) for _ in range(2)) if Ls else (None, None)
    plen = torch.tensor([Lc, Lc // 3][:Bq], device=cuda)
    args = (q, k, v, kp, vp, plen, ks, vs)
    want = ops.block_attention_reference(*(None if t is None else t.cpu() for t in args)).float()
    got = ops.block_attention(*args).float().cpu()
    tol = 2e-6 if dtype == torch.float32 else 2e-2
    if not torch.allclose(got, want, rtol=tol, atol=tol):
        failures.append(("block_attention", dtype, D, odd, (Bq, H, b, Lc, Ls)))

torch.cuda.synchronize()
assert backend.backends_ran() == {"unmask": "ext", "block_attention": "ext"}, backend.backends_ran()
for f in failures:
    print("differs from the reference:", f)
print(f"sanitize_ops: {'FAILED' if failures else 'ok'} ({len(failures)} of the cases differ)")
sys.exit(1 if failures else 0)
