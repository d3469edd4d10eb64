"""The compiled ops (csrc/) against their PyTorch reference.  python -m pytest -q tests/test_ext.py

Skipped as a whole when mini_dlm._C is not built. The fuzz asks for exact agreement on the
selected positions, the tokens written and the counts (random inputs have no near-ties)."""

import itertools

import pytest
import torch

from mini_dlm import ops

pytestmark = pytest.mark.skipif(not ops.HAS_EXT, reason="mini_dlm._C is not built")

INF = float("inf")


def ext_unmask(logits, tokens, eligible, banned, k=None, tau=None, factor=None, kind="low_confidence",
               scores=None, temperature=0.0, seed=0):
    rule = "schedule" if k is not None else "threshold" if tau is not None else "factor"
    return torch.ops.mini_dlm.unmask(logits, tokens, eligible, banned, k, tau or 0.0, factor or 0.0, rule, kind,
                                     scores, temperature, seed)


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


@pytest.mark.parametrize("B, L, V", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_unmask_fuzz_matches_reference(B, L, V, dtype):
    # every kind x rule x eligibility x temperature (not a diagonal through them)
    for trial, (kind, rule, p, temperature) in enumerate(itertools.product(
            ops.KINDS, range(3), [1.0, 0.0, 0.5], [0.0, 0.8])):  # p: all, none or some eligible
        logits, tokens, eligible, scores = case(trial, B, L, V, dtype, p)
        mode = [{"k": torch.randint(0, L + 2, (B,))}, {"tau": [0.2, 0.9, 1.0, -2.0][trial % 4]},
                {"factor": 1.0 + trial % 3}][rule]
        t1, e1 = tokens.clone(), eligible.clone()
        n1 = ops.unmask_reference(logits, t1, e1, kind=kind, scores=scores, temperature=temperature, seed=trial,
                                  banned=[V - 1], **mode)
        canvas = torch.zeros(B, L + 3, dtype=torch.long)
        t2, e2 = canvas[:, 2:L + 2], eligible.clone()
        t2.copy_(tokens)
        n2 = ext_unmask(logits, t2, e2, [V - 1], kind=kind, scores=scores, temperature=temperature, seed=trial, **mode)
        assert torch.equal(t1, t2) and torch.equal(e1, e2) and torch.equal(n1, n2), (kind, mode, temperature)
        assert (canvas[:, :2] == 0).all() and (canvas[:, L + 2:] == 0).all()  # wrote only inside the view


@pytest.mark.parametrize("mode", [{"factor": 1.0}, {"tau": 0.5}, {"k": torch.tensor([1, 1])}])
def test_unmask_empty_canvas_commits_nothing_on_both_backends(mode):
    """L = 0: every rule commits nothing, in the reference and the kernel alike."""
    for fn in (ops.unmask_reference, ext_unmask_public):
        n = fn(torch.randn(2, 0, 5), torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0, dtype=torch.bool),
               banned=[4], **mode)
        assert torch.equal(n, torch.zeros(2, dtype=torch.long))


def ext_unmask_public(*args, **kwargs):
    ops.set_backend("ext")
    try:
        return ops.unmask(*args, **kwargs)
    finally:
        ops.set_backend("auto")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not (torch.cuda.is_available() and ops.has_kernel("unmask", torch.device("cuda"))), reason="no CUDA unmask"))])
@pytest.mark.parametrize("kind", ["low_confidence", "margin"])
def test_unmask_tau_one_on_near_certain_rows(device, kind):
    """Every row leads by 20 nats: c = 1 - 39 e^-20 < 1 in float64, but exactly 1.0 in fp32.
    tau = 1 must commit one position per row, as the float64 reference does (a kernel that
    sums in fp32 commits all eight)."""
    logits = torch.zeros(2, 8, 40)
    logits[:, :, 3] = 20.0
    tokens, eligible = torch.full((2, 8), 39), torch.ones(2, 8, dtype=torch.bool)
    n_ref = ops.unmask_reference(logits, tokens.clone(), eligible.clone(), tau=1.0, kind=kind, banned=[39])
    n_ext = ext_unmask(logits.to(device), tokens.to(device), eligible.to(device), [39], tau=1.0, kind=kind)
    assert n_ref.tolist() == [1, 1] and n_ext.tolist() == [1, 1]


def test_public_unmask_dispatches_and_the_switch_forces_the_reference():
    cpu = torch.device("cpu")
    try:
        ops.set_backend("auto")
        assert ops.use_ext("unmask", cpu)  # auto: the compiled op
        ops.set_backend("torch")
        assert not ops.use_ext("unmask", cpu)
        ops.set_backend("ext")
        with pytest.raises(ValueError, match="no block_attention kernel for mps"):
            ops.use_ext("block_attention", torch.device("mps"))
    finally:
        ops.set_backend("auto")
    with pytest.raises(ValueError, match="backend"):
        ops.set_backend("cuda")


def test_unmask_opcheck():
    logits, tokens, eligible, scores = case(1, 2, 9, 17, torch.float32, 0.6)
    for args in ([[16], torch.tensor([2, 3]), 0.0, 0.0, "schedule", "low_confidence", None, 0.0, 0],
                 [[16, 3], None, 0.5, 0.0, "threshold", "margin", None, 0.7, 5],
                 [[16], None, 0.0, 1.5, "factor", "random", scores, 0.0, 1]):
        torch.library.opcheck(torch.ops.mini_dlm.unmask.default, (logits, tokens.clone(), eligible.clone(), *args))


@pytest.mark.parametrize("change, match", [
    (lambda a: a.update(tokens=a["tokens"].int()), "tokens must be"),
    (lambda a: a.update(eligible=a["eligible"][:, :3]), "eligible must be"),
    (lambda a: a.update(banned=[]), "banned"),
    (lambda a: a.update(banned=[99]), "outside"),
    (lambda a: a.update(rule="topk"), "rule"),
    (lambda a: a.update(kind="greedy"), "kind"),
    (lambda a: a.update(k=None), "schedule mode needs k"),
    (lambda a: a.update(logits=a["logits"].transpose(1, 2).contiguous().transpose(1, 2)), "contiguous in V"),
    (lambda a: a.update(logits=a["logits"][0]), "logits must be"),
])
def test_unmask_bad_inputs_raise_runtime_error(change, match):
    logits, tokens, eligible, _ = case(2, 2, 5, 7, torch.float32, 0.5)
    a = dict(logits=logits, tokens=tokens.clone(), eligible=eligible.clone(), banned=[6], k=torch.tensor([1, 1]),
             tau=0.0, factor=0.0, rule="schedule", kind="low_confidence", scores=None, temperature=0.0, seed=0)
    change(a)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.mini_dlm.unmask(*a.values())


def test_public_unmask_accepts_what_the_reference_accepts():
    """Logits strided in V and float32 random scores go through the compiled op too."""
    logits, tokens, eligible, scores = case(4, 2, 6, 11, torch.float32, 0.7)
    strided = logits.transpose(1, 2).contiguous().transpose(1, 2)  # same values, V not contiguous
    t1, e1, t2, e2 = tokens.clone(), eligible.clone(), tokens.clone(), eligible.clone()
    n1 = ops.unmask_reference(logits, t1, e1, tau=0.3, kind="random", scores=scores, banned=[10])
    ops.set_backend("ext")
    try:
        n2 = ops.unmask(strided, t2, e2, tau=0.3, kind="random", scores=scores.float().double(), banned=[10])
        n3 = ops.unmask(strided, tokens.clone(), eligible.clone(), tau=0.3, kind="random", scores=scores.float(),
                        banned=[10])
    finally:
        ops.set_backend("auto")
    assert torch.equal(t1, t2) and torch.equal(e1, e2) and torch.equal(n1, n2)
    assert n3.shape == n1.shape


def test_torch_compile_fullgraph_traces_the_op():
    """register_fake (mini_dlm/ops.py) lets torch.compile trace through the in-place op."""
    def step(logits, tokens, eligible):
        return torch.ops.mini_dlm.unmask(logits, tokens, eligible, [12], None, 0.3, 0.0, "threshold",
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
        ks, vs = whole[0, :, :, 1:], whole[1, :, :, 1:]  # slices of one tensor, like kv_out[:, :, hi:]
    return q, k, v, kp, vp, plen, ks, vs


ATTENTION_SHAPES = [  # B, H, b, D, Lc, Ls
    (1, 1, 1, 8, None, None), (2, 3, 1, 16, 5, None), (3, 2, 7, 24, 0, 3), (2, 2, 32, 32, 100, None),
    (1, 4, 33, 64, 70, 65), (2, 1, 40, 128, 129, 0), (4, 2, 5, 40, None, 9), (2, 2, 64, 64, 1, 1)]
TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 1e-2, torch.float16: 1e-3}


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
    kv_out = []
    model(x, pos=pos, kv_out=kv_out)
    cache = KVCache.from_forward(kv_out, pad, 8, suffix_from=16)

    def step(x, tokens, eligible):
        logits = model(x[:, 8:16], pos=pos[:, 8:16], cache=cache)
        return ops.unmask(logits, tokens, eligible, tau=0.2, banned=[63])

    with torch.no_grad():
        t1, e1 = x[:, 8:16].clone(), torch.ones(2, 8, dtype=torch.bool)
        t2, e2 = t1.clone(), e1.clone()
        n1 = torch.compile(step, fullgraph=True)(x, t1, e1)
        n2 = step(x, t2, e2)
    assert torch.equal(t1, t2) and torch.equal(e1, e2) and torch.equal(n1, n2) and (n1 > 0).all()


CUDA = torch.cuda.is_available() and ops.has_kernel("unmask", torch.device("cuda"))
NO_CUDA = "no GPU, or mini_dlm._C built without CUDA (USE_CUDA=0 or no CUDA_HOME at install)"


@pytest.mark.skipif(not CUDA, reason=NO_CUDA)
@pytest.mark.parametrize("B, L, V", SHAPES + [(8, 256, 32768)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_unmask_cuda_matches_reference(B, L, V, dtype):
    for trial, (kind, rule, p, temperature) in enumerate(itertools.product(
            ops.KINDS, range(3), [1.0, 0.0, 0.5], [0.0, 0.8])):
        logits, tokens, eligible, scores = case(trial, B, L, V, dtype, p)
        mode = [{"k": torch.randint(0, L + 2, (B,))}, {"tau": [0.3, 1.0][trial % 2]}, {"factor": 1.5}][rule]
        t1, e1 = tokens.clone(), eligible.clone()
        n1 = ops.unmask_reference(logits, t1, e1, kind=kind, scores=scores, temperature=temperature, seed=trial,
                                  banned=[V - 1], **mode)
        cuda_mode = {key: (val.cuda() if torch.is_tensor(val) else val) for key, val in mode.items()}
        t2, e2 = tokens.cuda(), eligible.cuda()
        n2 = ext_unmask(logits.cuda(), t2, e2, [V - 1], kind=kind, scores=scores.cuda(), temperature=temperature,
                        seed=trial, **cuda_mode)
        assert torch.equal(t1, t2.cpu()) and torch.equal(e1, e2.cpu()) and torch.equal(n1, n2.cpu()), (kind, mode)


@pytest.mark.skipif(not CUDA, reason=NO_CUDA)
def test_unmask_cuda_opcheck():
    logits, tokens, eligible, _ = case(1, 2, 9, 17, torch.float32, 0.6)
    torch.library.opcheck(torch.ops.mini_dlm.unmask.default,
                          (logits.cuda(), tokens.cuda(), eligible.cuda(), [16], None, 0.5, 0.0, "threshold",
                           "margin", None, 0.7, 5))


CUDA_ATTENTION = torch.cuda.is_available() and ops.has_kernel("block_attention", torch.device("cuda"))


@pytest.mark.skipif(not CUDA_ATTENTION, reason=NO_CUDA)
@pytest.mark.parametrize("B, H, b, D, Lc, Ls", [s for s in ATTENTION_SHAPES if s[3] in ops.CUDA_HEAD_DIMS]
                         + [(64, 12, 32, 64, 1024, None), (1, 2, 32, 128, 3000, 17), (2, 1, 100, 64, 0, 0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_block_attention_cuda_matches_reference(B, H, b, D, Lc, Ls, dtype):
    """Includes a long prefix with B * H = 2 (split-KV) and a block longer than one query tile.
    The CUDA inputs are built on the GPU: strided views with NaN in unused slots, as on the CPU."""
    for trial in range(2):
        want = ops.block_attention_reference(*attention_case(trial, B, H, b, D, Lc, Ls, dtype))
        got = torch.ops.mini_dlm.block_attention(*attention_case(trial, B, H, b, D, Lc, Ls, dtype, device="cuda"))
        assert got.dtype == dtype and got.shape == (B, H, b, D) and got.is_contiguous()
        torch.testing.assert_close(got.cpu().double(), want.double(), rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.skipif(not CUDA_ATTENTION, reason=NO_CUDA)
def test_block_attention_cuda_opcheck():
    args = attention_case(0, 2, 2, 5, 64, 7, 3, torch.bfloat16, device="cuda")
    torch.library.opcheck(torch.ops.mini_dlm.block_attention.default,
                          tuple(None if t is None else t.contiguous() for t in args))
