"""The CUDA kernels on a GPU.  python -m pytest -q tests/test_ext_cuda.py

Skipped as a whole without a GPU or without mini_dlm._C's CUDA kernels; tests/test_ext.py has
the tests both backends share (parametrized over the device). Once both files pass on a GPU,
csrc/README.md records it, and mini_dlm/ops.py: CUDA_VALIDATED may make the kernels the
default there."""

import os
import subprocess
import sys

import pytest
import torch

from mini_dlm import ops
from mini_dlm.ops import Rule
from mini_dlm.plumbing import backend
from mini_dlm.kvcache import KVCache
from mini_dlm.model import ModelConfig, Transformer
from test_ext import ATTENTION_SHAPES, CUDA, NO_CUDA, TOL_CUDA, attention_case, case, fuzz_unmask

pytestmark = pytest.mark.skipif(not (CUDA and backend.has_kernel("block_attention", torch.device("cuda"))), reason=NO_CUDA)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def auto_backend():
    yield
    backend.set_backend("auto")


@pytest.mark.parametrize("B, L, V", [(8, 256, 32768), (2, 40, 50257)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_unmask_cuda_matches_reference_at_large_vocabularies(B, L, V, dtype):
    """tests/test_ext.py's fuzz (there on every device) at vocabularies of real models."""
    fuzz_unmask(B, L, V, dtype, "cuda")


def test_unmask_cuda_opcheck():
    logits, tokens, eligible, scores = case(1, 2, 9, 17, torch.float32, 0.6)
    for args in ([[16], [], torch.tensor([2, 3]).cuda(), 0.0, 0.0, "schedule", "low_confidence", None, 0.0, 0],
                 [[16, 3], [5], None, 0.5, 0.0, "threshold", "margin", None, 0.7, 5],
                 [[16], [], None, 0.0, 1.5, "factor", "random", scores.cuda(), 0.0, 1],
                 [[16], [2, 9], None, 0.0, 2.5, "factor_strict", "low_confidence", None, 0.0, 0]):
        torch.library.opcheck(torch.ops.mini_dlm.unmask.default, (logits.cuda(), tokens.cuda(), eligible.cuda(), *args))


CUDA_SHAPES = [s for s in ATTENTION_SHAPES if s[3] in ops.CUDA_HEAD_DIMS] + [
    (64, 12, 32, 64, 1024, None),  # the benchmark's shape
    (1, 2, 32, 128, 3000, 17),     # B H = 2: the keys split across CTAs
    (2, 1, 100, 64, 0, 0),         # a block longer than one query tile
    (3, 2, 1, 32, 50, 7),          # one query
    (2, 3, 17, 128, 33, None),     # a query tile not full; D = 128 (2 warps)
    (1, 1, 48, 32, 4000, 0)]       # long prefix, D = 32


@pytest.mark.parametrize("B, H, b, D, Lc, Ls", CUDA_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_block_attention_cuda_matches_reference(B, H, b, D, Lc, Ls, dtype):
    """The CUDA inputs are built on the GPU: strided views with NaN in unused slots, as on the CPU."""
    for trial in range(2):
        want = ops.block_attention_reference(*attention_case(trial, B, H, b, D, Lc, Ls, dtype))
        got = torch.ops.mini_dlm.block_attention(*attention_case(trial, B, H, b, D, Lc, Ls, dtype, device="cuda"))
        assert got.dtype == dtype and got.shape == (B, H, b, D) and got.is_contiguous()
        torch.testing.assert_close(got.cpu().double(), want.double(), rtol=TOL_CUDA[dtype], atol=TOL_CUDA[dtype])


def test_block_attention_cuda_opcheck():
    for dtype in (torch.float32, torch.bfloat16):
        args = attention_case(0, 2, 2, 5, 64, 7, 3, dtype, device="cuda")
        torch.library.opcheck(torch.ops.mini_dlm.block_attention.default,
                              tuple(None if t is None else t.contiguous() for t in args))


def test_what_the_kernels_do_not_take_runs_the_reference_even_with_backend_ext():
    """float64 logits and q, more banned ids than fit in the kernel's arguments, a head dim the
    kernel is not built for: the public ops run the reference instead of raising."""
    backend.set_backend("ext")
    logits, tokens, eligible, _ = case(3, 2, 7, 40, torch.float64, 0.7)
    for lg, banned in ((logits, [39]), (logits.float(), list(range(20, 40)))):
        t1, e1, t2, e2 = tokens.clone(), eligible.clone(), tokens.cuda(), eligible.cuda()
        n1 = ops.unmask_reference(lg, t1, e1, Rule(threshold=0.3, banned=banned))
        backend.reset_backends_ran()
        n2 = ops.unmask(lg.cuda(), t2, e2, Rule(threshold=0.3, banned=banned))
        assert backend.backends_ran() == {"unmask": "torch"}
        assert torch.equal(t1, t2.cpu()) and torch.equal(n1, n2.cpu())
    for dtype, D in ((torch.float64, 64), (torch.bfloat16, 48)):
        args = attention_case(0, 2, 2, 5, D, 7, 3, dtype, device="cuda")
        backend.reset_backends_ran()
        got = ops.block_attention(*args)
        assert backend.backends_ran() == {"block_attention": "torch"} and got.dtype == dtype


def run_python(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_prefix_len_out_of_range_is_a_device_side_assert():
    """Checking prefix_len on the host would synchronise; the kernel asserts on the device, and
    the next synchronising call raises (in a child process: the assert ends its CUDA context)."""
    r = run_python("import torch, mini_dlm.ops\n"
                   "q = torch.randn(1, 1, 4, 64, device='cuda', dtype=torch.bfloat16)\n"
                   "kp = torch.randn(1, 1, 8, 64, device='cuda', dtype=torch.bfloat16)\n"
                   "torch.ops.mini_dlm.block_attention(q, q, q, kp, kp, torch.tensor([9], device='cuda'), None, None)\n"
                   "torch.cuda.synchronize()\n")
    assert r.returncode != 0 and "prefix_len outside [0, Lc]" in r.stdout + r.stderr, r.stdout + r.stderr


def test_an_eligible_row_with_nothing_allowed_is_a_device_side_assert():
    r = run_python("import torch, mini_dlm.ops\n"
                   "logits = torch.full((1, 3, 8), float('-inf'), device='cuda')\n"
                   "logits[0, 0, 2] = 1.0\n"
                   "tokens = torch.full((1, 3), 7, device='cuda')\n"
                   "eligible = torch.ones(1, 3, dtype=torch.bool, device='cuda')\n"
                   "torch.ops.mini_dlm.unmask(logits, tokens, eligible, [7], [], None, 0.5, 0.0, 'threshold', "
                   "'low_confidence', None, 0.0, 0)\n"
                   "torch.cuda.synchronize()\n")
    assert r.returncode != 0 and "no finite logit outside the banned ids" in r.stdout + r.stderr, r.stdout + r.stderr


def test_a_cached_sampler_step_replays_in_a_cuda_graph():
    """Neither op synchronises with the host: one dual-cache denoising step (the forward over
    the block through block_attention, then unmask) is captured in a CUDA graph, replayed, and
    gives what the same step gives eagerly."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, seq_len=24, n_layer=2, n_head=2, n_embd=64, mask_id=63)  # D = 32
    model = Transformer(cfg).cuda().eval().to(torch.bfloat16)
    x = torch.randint(0, 63, (2, 24), device="cuda")
    x[:, 8:16] = 63
    pad, pos = torch.tensor([0, 3], device="cuda"), torch.arange(24, device="cuda").expand(2, 24)
    backend.set_backend("ext")
    with torch.no_grad():
        cache = KVCache(cfg.n_layer, pad, 8, suffix_from=16)
        model(x, pos=pos, cache=cache)  # records the prefix and the suffix
        cache.start_reading()

        def step(tokens, eligible):
            logits = model(x[:, 8:16], pos=pos[:, 8:16], cache=cache)
            return ops.unmask(logits, tokens, eligible, Rule(threshold=0.2, banned=[63]))

        start = (x[:, 8:16].clone(), torch.ones(2, 8, dtype=torch.bool, device="cuda"))
        t_eager, e_eager = (t.clone() for t in start)
        backend.reset_backends_ran()
        n_eager = step(t_eager, e_eager)
        assert backend.backends_ran() == {"block_attention": "ext", "unmask": "ext"}
        side = torch.cuda.Stream()  # warm up on a side stream, as torch.cuda.graph asks
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step(*(t.clone() for t in start))
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        t_graph, e_graph = (t.clone() for t in start)
        with torch.cuda.graph(graph):
            n_graph = step(t_graph, e_graph)
        t_graph.copy_(start[0]), e_graph.copy_(start[1])
        graph.replay()
        torch.cuda.synchronize()
    assert torch.equal(t_graph, t_eager) and torch.equal(e_graph, e_eager) and torch.equal(n_graph, n_eager)
    assert (n_eager > 0).all()
