"""The compiled ops (csrc/) against their PyTorch reference.  python -m pytest -q tests/test_ext.py

Skipped as a whole when mini_dlm._C is not built. The fuzz asks for exact agreement on the
selected positions, the tokens written and the counts. Tests parametrized over DEVICES run the
CPU kernel here and the CUDA kernel too on a GPU; tests/test_ext_cuda.py has the GPU-only ones."""

import itertools
import re

import pytest
import torch

from conftest import flat
from mini_dlm import ops
from mini_dlm.ops import Rule
from mini_dlm.plumbing import backend
from mini_dlm.plumbing.checks import REMASKING

pytestmark = pytest.mark.skipif(not backend.HAS_EXT, reason="mini_dlm._C is not built")

INF = float("inf")
CUDA = torch.cuda.is_available() and backend.has_kernel("unmask", torch.device("cuda"))
NO_CUDA = "no GPU, or mini_dlm._C built without its CUDA kernels"
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason=NO_CUDA))]


def ext_unmask(logits, tokens, eligible, banned, k=None, threshold=None, factor=None, factor_rule="fastdllm",
               remasking="low_confidence", scores=None, temperature=0.0, seed=0, demote=()):
    rule = "schedule" if k is not None else "threshold" if threshold is not None else ops.OP_RULES[factor_rule]
    return torch.ops.mini_dlm.unmask(logits, tokens, eligible, banned, list(demote), k, threshold or 0.0, factor or 0.0,
                                     rule, remasking, scores, temperature, seed)


def case(seed, B, L, V, dtype, p_eligible):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, L, V, generator=g) * 4).to(dtype)
    if seed % 3 == 0:
        logits[..., :V // 3] = -INF  # a third of the vocabulary impossible
    eligible = torch.rand(B, L, generator=g) < p_eligible
    canvas = torch.randint(0, V - 1, (B, L + 3), generator=g)  # tokens: a strided view into it
    tokens = canvas[:, 2:L + 2]
    tokens[eligible] = V - 1
    scores = torch.rand(B, L, dtype=torch.float64, generator=g)
    return logits, tokens, eligible, scores


SHAPES = [(1, 1, 2), (2, 1, 13), (3, 7, 13), (2, 33, 257), (4, 16, 1001), (1, 64, 2048)]


def fuzz_unmask(B, L, V, dtype, device):
    """The compiled op on `device` against the reference on the CPU, for every remasking x rule x
    eligibility x temperature (not a diagonal through them); tokens are a view into a wider
    canvas, and nothing outside the view may change. Two trials in five (5 is prime to every
    axis of the product) demote the most frequent argmax guess."""
    for trial, (remasking, rule, p, temperature) in enumerate(itertools.product(
            REMASKING, range(4), [1.0, 0.0, 0.5], [0.0, 0.8])):  # p: all, none or some eligible
        logits, tokens, eligible, scores = case(trial, B, L, V, dtype, p)
        mode = [{"k": torch.randint(0, L + 2, (B,))}, {"threshold": [0.2, 0.9, 1.0, -2.0][trial % 4]},
                {"factor": 1.0 + trial % 3}, {"factor": 1.0 + trial % 3, "factor_rule": "strict"}][rule]
        mode["demote"] = [int(logits.argmax(-1).flatten().mode().values)] if trial % 5 < 2 else []
        t1, e1 = tokens.clone(), eligible.clone()
        n1 = flat(ops.unmask_reference, logits, t1, e1, remasking=remasking, scores=scores, temperature=temperature,
                  seed=trial, banned=[V - 1], **mode)
        canvas = torch.zeros(B, L + 3, dtype=torch.long, device=device)
        t2, e2 = canvas[:, 2:L + 2], eligible.to(device)
        t2.copy_(tokens)
        mode = {key: (val.to(device) if torch.is_tensor(val) else val) for key, val in mode.items()}
        n2 = ext_unmask(logits.to(device), t2, e2, [V - 1], remasking=remasking, scores=scores.to(device),
                        temperature=temperature, seed=trial, **mode)
        assert torch.equal(t1, t2.cpu()) and torch.equal(e1, e2.cpu()) and torch.equal(n1, n2.cpu()), \
            (remasking, mode, temperature)
        assert (canvas[:, :2] == 0).all() and (canvas[:, L + 2:] == 0).all()  # wrote only inside the view


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B, L, V", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_unmask_fuzz_matches_reference(B, L, V, dtype, device):
    fuzz_unmask(B, L, V, dtype, device)


@pytest.mark.parametrize("mode", [{"factor": 1.0}, {"threshold": 0.5}, {"k": torch.tensor([1, 1])}])
def test_unmask_empty_canvas_commits_nothing_on_both_backends(mode):
    """L = 0: every rule commits nothing, in the reference and the kernel alike."""
    for fn in (ops.unmask_reference, ext_unmask_public):
        n = flat(fn, torch.randn(2, 0, 5), torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0, dtype=torch.bool),
                 banned=[4], **mode)
        assert torch.equal(n, torch.zeros(2, dtype=torch.long))


def ext_unmask_public(*args, **kwargs):
    backend.set_backend("ext")
    try:
        return ops.unmask(*args, **kwargs)
    finally:
        backend.set_backend("auto")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("remasking", ["low_confidence", "margin"])
def test_unmask_tau_one_on_near_certain_rows(device, remasking):
    """Every row leads by 20 nats: c = 1 - 39 e^-20 < 1 in float64, but exactly 1.0 in fp32.
    threshold = 1 must commit one position per row, as the float64 reference does (a kernel that
    sums in fp32 commits all eight)."""
    logits = torch.zeros(2, 8, 40)
    logits[:, :, 3] = 20.0
    tokens, eligible = torch.full((2, 8), 39), torch.ones(2, 8, dtype=torch.bool)
    n_ref = ops.unmask_reference(logits, tokens.clone(), eligible.clone(), Rule(threshold=1.0, remasking=remasking, banned=[39]))
    n_ext = ext_unmask(logits.to(device), tokens.to(device), eligible.to(device), [39], threshold=1.0, remasking=remasking)
    assert n_ref.tolist() == [1, 1] and n_ext.tolist() == [1, 1]


HAS_CUDA_KERNELS = backend.has_kernel("unmask", torch.device("cuda"))


@pytest.mark.skipif(not HAS_CUDA_KERNELS, reason="mini_dlm._C has no CUDA kernels (a CPU build)")
def test_auto_runs_the_reference_on_cuda_until_the_kernels_are_validated():
    """Deciding needs no GPU, only a build with CUDA kernels (CI builds one against torch's CUDA
    build): auto takes them only once backend.CUDA_VALIDATED, ext always."""
    cuda = torch.device("cuda")
    try:
        backend.set_backend("auto")
        assert backend.use_ext("unmask", cuda) == backend.use_ext("block_attention", cuda) == backend.CUDA_VALIDATED
        assert backend.describe_backend("unmask", cuda) == ("ext" if backend.CUDA_VALIDATED else
                                                       "torch (the CUDA kernels are not yet validated on a GPU; "
                                                       "--backend ext runs them)")
        backend.set_backend("ext")
        assert backend.use_ext("unmask", cuda) and backend.use_ext("block_attention", cuda)
    finally:
        backend.set_backend("auto")


@pytest.mark.skipif(HAS_CUDA_KERNELS, reason="mini_dlm._C has CUDA kernels")
def test_backend_ext_without_cuda_kernels_says_why():
    """A build without CUDA kernels: 'ext' on a CUDA device is one error that names the reason
    setup.py recorded (here: torch is a CPU build, or no GPU was seen at install)."""
    why = backend._build_info().get("why")
    assert why  # setup.py wrote it
    try:
        backend.set_backend("ext")
        with pytest.raises(ValueError, match=re.escape(f"no unmask kernel for cuda (built without its CUDA kernels: {why})")):
            backend.use_ext("unmask", torch.device("cuda"))
    finally:
        backend.set_backend("auto")


def test_public_unmask_dispatches_and_the_switch_forces_the_reference():
    cpu = torch.device("cpu")
    try:
        backend.set_backend("auto")
        assert backend.use_ext("unmask", cpu)  # auto: the compiled op
        backend.set_backend("torch")
        assert not backend.use_ext("unmask", cpu)
        backend.set_backend("ext")
        with pytest.raises(ValueError, match="no block_attention kernel for mps"):
            backend.use_ext("block_attention", torch.device("mps"))
    finally:
        backend.set_backend("auto")
    with pytest.raises(ValueError, match="backend"):
        backend.set_backend("cuda")


def test_unmask_opcheck():
    logits, tokens, eligible, scores = case(1, 2, 9, 17, torch.float32, 0.6)
    for args in ([[16], [], torch.tensor([2, 3]), 0.0, 0.0, "schedule", "low_confidence", None, 0.0, 0],
                 [[16, 3], [5], None, 0.5, 0.0, "threshold", "margin", None, 0.7, 5],
                 [[16], [], None, 0.0, 1.5, "factor", "random", scores, 0.0, 1],
                 [[16], [2, 9], None, 0.0, 2.5, "factor_strict", "low_confidence", None, 0.0, 0]):
        torch.library.opcheck(torch.ops.mini_dlm.unmask.default, (logits, tokens.clone(), eligible.clone(), *args))


@pytest.mark.parametrize("change, match", [
    (lambda a: a.update(tokens=a["tokens"].int()), "tokens must be"),
    (lambda a: a.update(eligible=a["eligible"][:, :3]), "eligible must be"),
    (lambda a: a.update(banned=[]), "banned"),
    (lambda a: a.update(banned=[99]), "outside"),
    (lambda a: a.update(demote=[-1]), "demoted id -1 outside"),
    (lambda a: a.update(rule="topk"), "rule"),
    (lambda a: a.update(rule="factor_strict"), "factor must be > 0"),
    (lambda a: a.update(remasking="greedy"), "kind"),
    (lambda a: a.update(k=None), "schedule mode needs k"),
    (lambda a: a.update(logits=a["logits"].transpose(1, 2).contiguous().transpose(1, 2)), "contiguous in V"),
    (lambda a: a.update(logits=a["logits"][0]), "logits must be"),
])
def test_unmask_bad_inputs_raise_runtime_error(change, match):
    logits, tokens, eligible, _ = case(2, 2, 5, 7, torch.float32, 0.5)
    a = dict(logits=logits, tokens=tokens.clone(), eligible=eligible.clone(), banned=[6], demote=[], k=torch.tensor([1, 1]),
             threshold=0.0, factor=0.0, rule="schedule", remasking="low_confidence", scores=None, temperature=0.0, seed=0)
    change(a)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.mini_dlm.unmask(*a.values())


def test_public_unmask_accepts_what_the_reference_accepts():
    """Logits strided in V and float32 random scores go through the compiled op too."""
    logits, tokens, eligible, scores = case(4, 2, 6, 11, torch.float32, 0.7)
    strided = logits.transpose(1, 2).contiguous().transpose(1, 2)  # same values, V not contiguous
    t1, e1, t2, e2 = tokens.clone(), eligible.clone(), tokens.clone(), eligible.clone()
    n1 = ops.unmask_reference(logits, t1, e1, Rule(threshold=0.3, remasking="random", banned=[10]), scores=scores)
    backend.set_backend("ext")
    try:
        n2 = ops.unmask(strided, t2, e2, Rule(threshold=0.3, remasking="random", banned=[10]), scores=scores.float().double())
        n3 = ops.unmask(strided, tokens.clone(), eligible.clone(), Rule(threshold=0.3, remasking="random", banned=[10]), scores=scores.float())
    finally:
        backend.set_backend("auto")
    assert torch.equal(t1, t2) and torch.equal(e1, e2) and torch.equal(n1, n2)
    assert n3.shape == n1.shape


def test_torch_compile_fullgraph_traces_the_op():
    """register_fake (mini_dlm/ops.py) lets torch.compile trace through the in-place op."""
    def step(logits, tokens, eligible):
        return torch.ops.mini_dlm.unmask(logits, tokens, eligible, [12], [], None, 0.3, 0.0, "threshold",
                                         "low_confidence", None, 0.0, 0)

    logits, tokens, eligible, _ = case(5, 2, 8, 13, torch.float32, 0.5)
    t1, e1, t2, e2 = tokens.clone(), eligible.clone(), tokens.clone(), eligible.clone()
    n1 = torch.compile(step, fullgraph=True)(logits, t1, e1)
    n2 = step(logits, t2, e2)
    assert torch.equal(t1, t2) and torch.equal(e1, e2) and torch.equal(n1, n2) and n1.sum() > 0


# ---- block_attention ------------------------------------------------------------------------

def attention_case(seed, B, H, b, D, Lc, Ls, dtype, device="cpu"):
    """Random q/k/v and caches laid out like mini_dlm/kvcache.py makes them: the prefix a view
    into a larger buffer with NaN in every unused slot, the suffix a strided slice."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g).to(dtype).to(device)  # noqa: E731
    q, k, v = rnd(B, H, b, D), rnd(B, H, b, D), rnd(B, H, b, D)
    kp = vp = plen = ks = vs = None
    if Lc is not None:
        kp, vp = rnd(B, H, Lc + 3, D)[:, :, :Lc], rnd(B, H, Lc + 3, D)[:, :, :Lc]
        plen = torch.randint(0, Lc + 1, (B,), generator=g)
        plen[0], plen[-1] = 0, Lc  # an empty and a full prefix
        for r in range(B):
            kp[r, :, plen[r]:], vp[r, :, plen[r]:] = float("nan"), float("inf")
        plen = plen.to(device)
    if Ls is not None:
        whole = rnd(2, B, H, Ls + 1, D)
        ks, vs = whole[0, :, :, 1:], whole[1, :, :, 1:]  # slices of one tensor, like a recorded suffix k[:, :, hi:]
    return q, k, v, kp, vp, plen, ks, vs


ATTENTION_SHAPES = [  # B, H, b, D, Lc, Ls
    (1, 1, 1, 8, None, None), (2, 3, 1, 16, 5, None), (3, 2, 7, 24, 0, 3), (2, 2, 32, 32, 100, None),
    (1, 4, 33, 64, 70, 65), (2, 1, 40, 128, 129, 0), (4, 2, 5, 40, None, 9), (2, 2, 64, 64, 1, 1)]
TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 1e-2, torch.float16: 1e-3}
# CUDA: bf16 / fp16 run on tensor cores, where P is rounded to the input dtype before P V (as in
# FlashAttention): one more rounding than the CPU kernel's fp32 P.
TOL_CUDA = {torch.float32: 2e-6, torch.bfloat16: 1e-2, torch.float16: 2e-3}


@pytest.mark.parametrize("B, H, b, D, Lc, Ls", ATTENTION_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_block_attention_fuzz_matches_reference(B, H, b, D, Lc, Ls, dtype):
    """Values agree to the rounding of the dtype: fp32 sums in another order, then one rounding
    to bf16/fp16 that may land one ulp apart."""
    for trial in range(3):
        args = attention_case(trial, B, H, b, D, Lc, Ls, dtype)
        want = ops.block_attention_reference(*args)
        got = torch.ops.mini_dlm.block_attention(*args)
        assert got.dtype == dtype and got.shape == (B, H, b, D) and got.is_contiguous()
        torch.testing.assert_close(got.double(), want.double(), rtol=TOL[dtype], atol=TOL[dtype])


def test_block_attention_opcheck():
    for case_args in ((2, 2, 5, 16, 7, 3), (1, 3, 4, 8, None, None), (2, 1, 3, 32, 6, None)):
        args = attention_case(0, *case_args, torch.float32)
        args = tuple(None if t is None else t.contiguous() for t in args)  # opcheck compares strides too
        torch.library.opcheck(torch.ops.mini_dlm.block_attention.default, args)


@pytest.mark.parametrize("change, match", [
    (lambda a: a.update(q=a["q"][0]), "q must be"),
    (lambda a: a.update(q=a["q"][:, :, :0], k=a["k"][:, :, :0], v=a["v"][:, :, :0]), "at least one position"),
    (lambda a: a.update(k=a["k"].double()), "dtype"),
    (lambda a: a.update(v=a["v"][:, :1]), "v must be"),
    (lambda a: a.update(k_prefix=a["k_prefix"].transpose(2, 3).contiguous().transpose(2, 3)), "contiguous in D"),
    (lambda a: a.update(prefix_len=None), "together"),
    (lambda a: a.update(prefix_len=a["prefix_len"].int()), "prefix_len must be"),
    (lambda a: a.update(prefix_len=a["prefix_len"] + 100), "outside"),
    (lambda a: a.update(v_suffix=None), "together"),
    (lambda a: a.update(k_suffix=a["k_suffix"][:, :, :1]), "v_suffix|k_suffix"),
])
def test_block_attention_bad_inputs_raise_runtime_error(change, match):
    names = ("q", "k", "v", "k_prefix", "v_prefix", "prefix_len", "k_suffix", "v_suffix")
    a = dict(zip(names, attention_case(3, 2, 2, 4, 8, 6, 3, torch.float32)))
    change(a)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.mini_dlm.block_attention(*a.values())


def test_torch_compile_fullgraph_traces_a_cached_sampler_step():
    """One dual-cache denoising step (forward over the block through block_attention, then
    unmask) traced whole by torch.compile, thanks to register_fake for both ops."""
    from conftest import tiny_model
    from mini_dlm.kvcache import KVCache

    model = tiny_model(seq_len=24)
    x = torch.randint(0, 63, (2, 24))
    x[:, 8:16] = 63  # the block: 8 masked positions
    pad, pos = torch.tensor([0, 3]), torch.arange(24).expand(2, 24)
    cache = KVCache(model.config.n_layer, pad, 8, suffix_from=16)
    model(x, pos=pos, cache=cache)  # records the prefix and the suffix
    cache.start_reading()

    def step(x, tokens, eligible):
        logits = model(x[:, 8:16], pos=pos[:, 8:16], cache=cache)
        return ops.unmask(logits, tokens, eligible, Rule(threshold=0.2, banned=[63]))

    with torch.no_grad():
        t1, e1 = x[:, 8:16].clone(), torch.ones(2, 8, dtype=torch.bool)
        t2, e2 = t1.clone(), e1.clone()
        n1 = torch.compile(step, fullgraph=True)(x, t1, e1)
        n2 = step(x, t2, e2)
    assert torch.equal(t1, t2) and torch.equal(e1, e2) and torch.equal(n1, n2) and (n1 > 0).all()




# ---- inputs kernels get wrong: unaligned rows, a GPT-2 vocabulary, odd strides, near-ties ----

def unmask_both(logits, tokens, eligible, banned, mode, remasking="low_confidence", scores=None, temperature=0.0,
                seed=0):
    """The reference on CPU copies, then the compiled op on the given tensors (any device, any
    strides, updated in place). -> (reference (tokens, eligible, counts), op's, on the CPU)."""
    cpu = {key: (val.cpu() if torch.is_tensor(val) else val) for key, val in mode.items()}
    t1, e1 = tokens.cpu().clone(), eligible.cpu().clone()
    n1 = flat(ops.unmask_reference, logits.cpu(), t1, e1, remasking=remasking,
              scores=None if scores is None else scores.cpu(), temperature=temperature, seed=seed, banned=banned, **cpu)
    n2 = ext_unmask(logits, tokens, eligible, banned, remasking=remasking, scores=scores, temperature=temperature, seed=seed,
                    **mode)
    return (t1, e1, n1), (tokens.cpu(), eligible.cpu(), n2.cpu())


def assert_same(ref, got, what):
    for a, b, name in zip(ref, got, ("tokens", "eligible", "counts")):
        assert torch.equal(a, b), f"{name} differ: {what}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_unmask_unaligned_rows_of_a_gpt2_vocabulary(device, dtype):
    """V = 50257 (GPT-2's vocabulary, so rows start at every alignment) in a tensor whose storage
    starts one element in: no row begins where a 16-byte load wants it. Banned ids sit at the
    start, inside and at the end of the rows, and some rows would pick them if they were not
    banned. Every remasking x rule x temperature."""
    B, L, V = 2, 6, 50257
    g = torch.Generator().manual_seed(0)
    flat = (torch.randn(B * L * V + 1, generator=g) * 3).to(dtype)
    banned = [V - 1, 0, 5, 4097, 25000]
    rows = flat[1:].view(B, L, V)
    rows[0, :3, 4097] = 30.0  # the best logit of these rows is banned
    rows[1, 2:, 5] = 30.0
    logits = flat.to(device)[1:].view(B, L, V)
    assert logits.storage_offset() == 1
    for trial, (remasking, mode, temperature) in enumerate(itertools.product(
            REMASKING, [{"k": torch.tensor([2, 4])}, {"threshold": 0.5}, {"factor": 1.5}], [0.0, 1.0])):
        eligible = torch.rand(B, L, generator=g) < 0.7
        eligible[:, 1] = True
        scores = torch.rand(B, L, dtype=torch.float64, generator=g)
        ref, got = unmask_both(logits, torch.full((B, L), V - 1, device=device), eligible.to(device), banned,
                               {key: (val.to(device) if torch.is_tensor(val) else val) for key, val in mode.items()},
                               remasking, scores.to(device), temperature, seed=trial)
        assert_same(ref, got, (remasking, mode, temperature))
        assert not set(ref[0].flatten().tolist()) & set(banned[1:])  # (the test can see a banned pick)


@pytest.mark.parametrize("device", DEVICES)
def test_unmask_reads_and_writes_strided_tensors(device):
    """tokens a slice of a wider canvas, eligible and scores transposed views, k every other
    element: the op reads and writes them where they lie, and nothing around them."""
    B, L, V = 3, 10, 37
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(B, L, V, generator=g) * 2).to(device)
    for remasking, mode in itertools.product(["low_confidence", "random"], ["k", "threshold", "factor"]):
        canvas = torch.zeros(B, L + 5, dtype=torch.long, device=device)
        tokens = canvas[:, 3:L + 3]
        tokens.fill_(V - 1)
        eligible = (torch.rand(L, B, generator=g) < 0.8).to(device).t()  # strides (1, B)
        scores = torch.rand(L, B, dtype=torch.float64, generator=g).to(device).t()
        k = torch.tensor([3, 0, 1, 2, 9, 9], device=device)[::2]  # (3,), stride 2
        arg = {"k": {"k": k}, "threshold": {"threshold": 0.4}, "factor": {"factor": 2.0}}[mode]
        ref, got = unmask_both(logits, tokens, eligible, [V - 1], arg, remasking, scores)
        assert_same(ref, got, (remasking, mode))
        assert (canvas[:, :3] == 0).all() and (canvas[:, L + 3:] == 0).all()


def bump(x, ulps):
    """x (positive, any float dtype) moved up by `ulps` units in its last place: the integer
    view of a positive float counts its representable values."""
    ints = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}[x.dtype]
    return (x.view(ints) + ulps).view(x.dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("remasking", REMASKING)
def test_unmask_near_ties_select_like_the_float64_reference(device, dtype, remasking):
    """Each batch row repeats 4 base rows: positions 0-3 and 4-7 are exact copies (ties, which go
    to the lower position), and at positions 8-15 the runner-up logit moves up by about 1e-4 of
    its value (1 ulp in bf16 and fp16, 1000 in fp32), so confidences differ by about 1e-5. The
    CUDA kernel's exps are fp32 (about 1e-7 relative): gaps this small it must still order as
    float64 does; gaps below ~1e-6 are beyond it (csrc/unmask_cuda.cu, "Precision")."""
    B, L, V = 2, 16, 300
    g = torch.Generator().manual_seed(2)
    base = torch.randn(B, 4, V, generator=g)
    base[:, :, 7] = 3.0 + torch.rand(B, 4, generator=g)  # the max
    base[:, :, 9] = 2.0 + torch.rand(B, 4, generator=g)  # the runner-up, positive
    logits = base.to(dtype).repeat(1, 4, 1)  # (B, 16, V): position i is base row i % 4
    logits[:, 8:, 9] = bump(logits[:, 8:, 9].contiguous(), 1000 if dtype == torch.float32 else 1)
    scores = torch.rand(B, 4, dtype=torch.float64, generator=g).repeat(1, 4)
    scores[:, 8:] = torch.nextafter(scores[:, 8:], torch.tensor(2.0, dtype=torch.float64))
    for mode in ({"k": torch.tensor([1, 5])}, {"k": torch.tensor([9, 15])}, {"threshold": 0.5}, {"factor": 2.0}):
        ref, got = unmask_both(logits.to(device), torch.full((B, L), V - 1, device=device),
                               torch.ones(B, L, dtype=torch.bool, device=device), [V - 1],
                               {key: (val.to(device) if torch.is_tensor(val) else val) for key, val in mode.items()},
                               remasking, scores.to(device))
        assert_same(ref, got, mode)


def strided_rows(n, B, H, D, dtype, device, g):
    """(B, H, n, D) whose rows are D + 1 elements apart in a storage that starts one element in:
    no row is 16-byte aligned."""
    buf = torch.randn(B * H * n * (D + 1) + 1, generator=g).to(dtype).to(device)
    return buf[1:].as_strided((B, H, n, D), (H * n * (D + 1), n * (D + 1), D + 1, 1))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("D", [32, 64, 128])
def test_block_attention_rows_with_odd_strides(device, dtype, D):
    B, H, b, Lc, Ls = 2, 3, 20, 37, 5
    g = torch.Generator().manual_seed(D)
    q, k, v, kp, vp, ks, vs = (strided_rows(n, B, H, D, dtype, device, g) for n in (b, b, b, Lc, Lc, Ls, Ls))
    plen = torch.tensor([37, 11], device=device)
    args = (q, k, v, kp, vp, plen, ks, vs)
    want = ops.block_attention_reference(*(t.cpu() for t in args))
    got = torch.ops.mini_dlm.block_attention(*args)
    tol = (TOL_CUDA if device == "cuda" else TOL)[dtype]
    torch.testing.assert_close(got.cpu().double(), want.double(), rtol=tol, atol=tol)
