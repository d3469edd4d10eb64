"""The compiled ops (csrc/) against their PyTorch reference.  python -m pytest -q tests/test_ext.py

Skipped as a whole when mini_dlm._C is not built. The fuzz asks for exact agreement on the
selected positions, the tokens written and the counts (random inputs have no near-ties)."""

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
    for trial in range(12):
        kind = ops.KINDS[trial % 4]
        p = [1.0, 0.0, 0.5][trial % 3]  # all, none or some eligible
        logits, tokens, eligible, scores = case(trial, B, L, V, dtype, p)
        mode = [{"k": torch.randint(0, L + 2, (B,))}, {"tau": [0.2, 0.9, 1.0, -2.0][trial % 4]},
                {"factor": 1.0 + trial % 3}][trial % 3]
        temperature = [0.0, 0.8][trial % 2]
        t1, e1 = tokens.clone(), eligible.clone()
        n1 = ops.unmask_reference(logits, t1, e1, kind=kind, scores=scores, temperature=temperature, seed=trial,
                                  banned=[V - 1], **mode)
        canvas = torch.zeros(B, L + 3, dtype=torch.long)
        t2, e2 = canvas[:, 2:L + 2], eligible.clone()
        t2.copy_(tokens)
        n2 = ext_unmask(logits, t2, e2, [V - 1], kind=kind, scores=scores, temperature=temperature, seed=trial, **mode)
        assert torch.equal(t1, t2) and torch.equal(e1, e2) and torch.equal(n1, n2), (kind, mode, temperature)
        assert (canvas[:, :2] == 0).all() and (canvas[:, L + 2:] == 0).all()  # wrote only inside the view


def test_public_unmask_dispatches_and_the_switch_forces_the_reference():
    cpu = torch.device("cpu")
    try:
        ops.set_backend("auto")
        assert ops.use_ext("unmask", cpu)  # auto: the compiled op
        ops.set_backend("torch")
        assert not ops.use_ext("unmask", cpu)
        ops.set_backend("ext")
        with pytest.raises(ValueError, match="no block_attention kernel"):
            ops.use_ext("block_attention", cpu)
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


CUDA = torch.cuda.is_available() and ops.has_kernel("unmask", torch.device("cuda"))


@pytest.mark.skipif(not CUDA, reason="no GPU, or mini_dlm._C built without CUDA (MINI_DLM_CUDA=1)")
@pytest.mark.parametrize("B, L, V", SHAPES + [(8, 256, 32768)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_unmask_cuda_matches_reference(B, L, V, dtype):
    for trial in range(6):
        kind = ops.KINDS[trial % 4]
        logits, tokens, eligible, scores = case(trial, B, L, V, dtype, [1.0, 0.0, 0.5][trial % 3])
        mode = [{"k": torch.randint(0, L + 2, (B,))}, {"tau": 0.3}, {"factor": 1.5}][trial % 3]
        temperature = [0.0, 0.8][trial % 2]
        t1, e1 = tokens.clone(), eligible.clone()
        n1 = ops.unmask_reference(logits, t1, e1, kind=kind, scores=scores, temperature=temperature, seed=trial,
                                  banned=[V - 1], **mode)
        cuda_mode = {key: (val.cuda() if torch.is_tensor(val) else val) for key, val in mode.items()}
        t2, e2 = tokens.cuda(), eligible.cuda()
        n2 = ext_unmask(logits.cuda(), t2, e2, [V - 1], kind=kind, scores=scores.cuda(), temperature=temperature,
                        seed=trial, **cuda_mode)
        assert torch.equal(t1, t2.cpu()) and torch.equal(e1, e2.cpu()) and torch.equal(n1, n2.cpu()), (kind, mode)


@pytest.mark.skipif(not CUDA, reason="no GPU, or mini_dlm._C built without CUDA (MINI_DLM_CUDA=1)")
def test_unmask_cuda_opcheck():
    logits, tokens, eligible, _ = case(1, 2, 9, 17, torch.float32, 0.6)
    torch.library.opcheck(torch.ops.mini_dlm.unmask.default,
                          (logits.cuda(), tokens.cuda(), eligible.cuda(), [16], None, 0.5, 0.0, "threshold",
                           "margin", None, 0.7, 5))
