"""The ops and their spec.  python -m pytest -q tests/test_ops.py

unmask is checked against a naive per-row Python transcription of notes/00-spec.md sections 3-4 and
on hand-made edge cases, through the public function with the backend forced to the
reference ("torch") and, when mini_dlm._C is built, to the compiled op ("ext");
block_attention against torch.cat + scaled_dot_product_attention, one row at a time."""

import math

import pytest
import torch
import torch.nn.functional as F

from mini_dlm import backend
from mini_dlm.gumbel import gumbel_noise, uniform_hash
from mini_dlm.ops import block_attention, unmask

INF = float("inf")


@pytest.fixture(autouse=True, params=["torch", "ext"] if backend.HAS_EXT else ["torch"])
def op_backend(request):
    """Every test here runs against the reference and, when built, the compiled op."""
    backend.set_backend(request.param)
    yield request.param
    backend.set_backend("auto")


def naive_unmask(logits, tokens, eligible, banned, k=None, threshold=None, factor=None, remasking="low_confidence", scores=None):
    """Per row, per position, in Python floats: guess, score, sort (-c, position), select."""
    B, L, V = logits.shape
    tokens, committed = tokens.clone(), []
    for b in range(B):
        cand = []
        for i in range(L):
            if not eligible[b, i]:
                continue
            row = [(-INF if v in banned else float(logits[b, i, v])) for v in range(V)]
            x0 = max(range(V), key=lambda v: (row[v], -v))  # highest logit, lowest id on ties
            m = max(row)
            z = sum(math.exp(l - m) for l in row)
            p = sorted((math.exp(l - m) / z for l in row), reverse=True)
            c = {"low_confidence": math.exp(row[x0] - m) / z, "margin": p[0] - p[1],
                 "entropy": sum(q * math.log(q) for q in p if q > 0),
                 "random": None if scores is None else float(scores[b, i])}[remasking]
            cand.append((-c, i, x0))
        cand.sort()
        if k is not None:
            chosen = cand[:int(k[b])]
        elif threshold is not None:
            chosen = [e for n, e in enumerate(cand) if n == 0 or -e[0] >= threshold]
        else:
            n = 0
            while n < len(cand) and (n == 0 or -cand[n][0] >= 1 - factor / (n + 2)):
                n += 1
            chosen = cand[:n]
        for _, i, x0 in chosen:
            tokens[b, i] = x0
        committed.append(len(chosen))
    return tokens, committed


def random_case(B=3, L=10, V=12, seed=0, scale=3.0, p_eligible=0.6):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, L, V, generator=g) * scale
    eligible = torch.rand(B, L, generator=g) < p_eligible
    tokens = torch.where(eligible, torch.full((B, L), V - 1), torch.randint(0, V - 1, (B, L), generator=g))
    return logits, tokens, eligible


def run_both(logits, tokens, eligible, banned, **mode):
    expected, count = naive_unmask(logits, tokens, eligible, banned, **mode)
    t, e = tokens.clone(), eligible.clone()
    n = unmask(logits, t, e, banned=banned, **mode)
    return t, e, n, expected, count


@pytest.mark.parametrize("remasking", ["low_confidence", "margin", "entropy", "random"])
@pytest.mark.parametrize("mode", [{"k": [2, 0, 5]}, {"threshold": 0.3}, {"threshold": -1.5}, {"factor": 1.0}, {"factor": 3.0}])
def test_unmask_matches_naive_spec(remasking, mode):
    for seed in range(4):
        logits, tokens, eligible = random_case(seed=seed)
        mode_ = {"k": torch.tensor(mode["k"])} if "k" in mode else mode
        scores = torch.rand(tokens.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        t, e, n, expected, count = run_both(logits, tokens, eligible, [11], remasking=remasking, scores=scores, **mode_)
        assert torch.equal(t, expected)
        assert n.tolist() == count
        assert torch.equal(e, eligible & (t == tokens))  # committed positions leave the eligible set
        assert ((t != tokens) <= eligible).all()  # nothing outside the eligible set changes


def test_all_eligible_and_rows_with_none_eligible():
    logits, tokens, _ = random_case(B=3, L=8)
    eligible = torch.tensor([[True] * 8, [False] * 8, [True] * 8])
    logits[1] = float("nan")  # a row with nothing eligible is never read
    t, e, n, expected, count = run_both(logits, tokens, eligible, [11], threshold=0.5)
    assert torch.equal(t, expected) and n[1] == 0 and torch.equal(t[1], tokens[1])
    assert n[0] >= 1 and n[2] >= 1  # the at-least-one rule


def test_ties_go_to_lowest_position_and_lowest_token_id():
    logits = torch.zeros(1, 6, 5)
    logits[0, :, 2] = logits[0, :, 3] = 1.0  # tokens 2 and 3 tie everywhere; all positions tie
    tokens, eligible = torch.full((1, 6), 4), torch.tensor([[False, True, True, True, True, False]])
    n = unmask(logits, tokens, eligible, k=torch.tensor([2]), banned=[4])
    assert n.tolist() == [2] and tokens.tolist() == [[4, 2, 2, 4, 4, 4]]
    n = unmask(logits, tokens, eligible, threshold=2.0, banned=[4])  # nothing reaches threshold: the best one only
    assert n.tolist() == [1] and tokens.tolist() == [[4, 2, 2, 2, 4, 4]]


def test_confidence_exactly_tau_is_committed():
    logits = torch.tensor([[[0.0, 0.0, 5.0], [0.0, 1.0, 5.0], [0.0, 0.0, 5.0]]])  # p = 0.5 exactly at 0 and 2
    tokens, eligible = torch.full((1, 3), 2), torch.ones(1, 3, dtype=torch.bool)
    n = unmask(logits, tokens, eligible, threshold=0.5, banned=[2])
    assert n.tolist() == [3]  # 0.5 >= 0.5 twice, and position 1 (p = 0.73) is the best
    tokens, eligible = torch.full((1, 3), 2), torch.ones(1, 3, dtype=torch.bool)
    assert unmask(logits, tokens, eligible, threshold=0.5 + 1e-12, banned=[2]).tolist() == [1]


def test_tau_one_commits_exactly_one_per_row():
    logits, tokens, eligible = random_case(B=4, L=16, seed=3)
    eligible[:, 0] = True
    n = unmask(logits, tokens, eligible.clone(), threshold=1.0, banned=[11])
    assert n.tolist() == [1, 1, 1, 1]


def test_k_zero_and_k_above_count():
    logits, tokens, eligible = random_case(B=2, L=6, p_eligible=1.0)
    n = unmask(logits, tokens.clone(), eligible.clone(), k=torch.tensor([0, 100]), banned=[11])
    assert n.tolist() == [0, 6]


def test_banned_ids_and_minus_inf_logits():
    logits, tokens, eligible = random_case(B=2, L=6, V=8, p_eligible=1.0)
    logits[..., 7] = 50.0  # the mask token would win everywhere
    logits[..., 3] = 40.0  # and so would token 3, banned too
    logits[0, :, 5] = -INF  # -inf entries are just impossible tokens
    logits[1, 2, :] = -INF
    logits[1, 2, 6] = 0.0  # the only possible token at (1, 2)
    t, e, n, expected, count = run_both(logits, tokens, eligible, [7, 3], k=torch.tensor([6, 6]))
    assert torch.equal(t, expected) and not ((t == 7) | (t == 3) | (t[0] == 5)).any() and t[1, 2] == 6
    logits[1, 2, 6] = -INF  # nothing left to predict there
    with pytest.raises((ValueError, RuntimeError), match="no finite logit"):  # reference | compiled op
        unmask(logits, tokens.clone(), eligible.clone(), k=torch.tensor([1, 1]), banned=[7, 3])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_logits_select_like_their_float32_values(dtype):
    logits, tokens, eligible = random_case(seed=5)
    logits = logits.to(dtype)
    t1, e1 = tokens.clone(), eligible.clone()
    t2, e2 = tokens.clone(), eligible.clone()
    n1 = unmask(logits, t1, e1, threshold=0.4, banned=[11])
    n2 = unmask(logits.float(), t2, e2, threshold=0.4, banned=[11])
    assert torch.equal(t1, t2) and torch.equal(n1, n2)


def test_temperature_uses_the_counter_based_gumbel_noise():
    logits, tokens, eligible = random_case(seed=7, p_eligible=1.0)
    B, L, V = logits.shape
    t = tokens.clone()
    unmask(logits, t, eligible.clone(), k=torch.full((B,), L), temperature=0.8, seed=99, banned=[11])
    g = gumbel_noise(99, torch.arange(B * L), V).view(B, L, V)
    expected = (logits.double().masked_fill(torch.arange(V) == 11, -INF) + 0.8 * g).argmax(-1)
    assert torch.equal(t, expected)


def test_gumbel_max_samples_the_softmax():
    n, row = 20000, torch.tensor([1.0, 0.0, -1.0, 2.0, 9.0])  # token 4 plays the (banned) mask
    tokens = torch.full((1, n), 4)
    unmask(row.expand(1, n, 5).clone(), tokens, torch.ones(1, n, dtype=torch.bool), k=torch.tensor([n]),
           temperature=1.0, seed=5, banned=[4])
    freq = torch.bincount(tokens[0], minlength=5).double() / n
    assert freq[4] == 0
    assert torch.allclose(freq[:4], torch.softmax(row[:4].double(), -1), atol=0.012)


def test_uniform_hash_is_splitmix64():
    M = (1 << 64) - 1

    def sm(z):
        z = (z + 0x9E3779B97F4A7C15) & M
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
        return z ^ (z >> 31)

    index = torch.tensor([0, 1, 77, 2 ** 40 + 3, 2 ** 62 - 1])
    for seed in (0, 1, 2 ** 62 - 7):
        expected = [((sm(sm(seed) ^ i) >> 12) + 0.5) / 2 ** 52 for i in index.tolist()]
        assert uniform_hash(seed, index).tolist() == expected
    u = uniform_hash(3, torch.arange(100_000))
    assert 0 < u.min() and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.005


@pytest.mark.parametrize("bad, match", [
    ({"k": None}, "exactly one"), ({"threshold": 0.5}, "exactly one"), ({"k": torch.tensor([1])}, "k must"),
    ({"remasking": "nope"}, "remasking"), ({"remasking": "random"}, "scores"), ({"banned": []}, "banned")])
def test_unmask_rejects_bad_arguments(bad, match):
    logits, tokens, eligible = random_case()
    args = {"k": torch.tensor([1, 1, 1]), "banned": [11], **bad}
    if args["k"] is None:
        del args["k"]
    with pytest.raises(ValueError, match=match):
        unmask(logits, tokens, eligible, **args)


# ---- block_attention ------------------------------------------------------------------------

def sdpa_rows(q, k, v, kp, vp, plen, ks, vs):
    """Oracle: per row, concatenate exactly the valid keys and call SDPA."""
    out = []
    for r in range(q.shape[0]):
        K = [kp[r:r + 1, :, :plen[r]]] if kp is not None else []
        V = [vp[r:r + 1, :, :plen[r]]] if vp is not None else []
        K, V = K + [k[r:r + 1]], V + [v[r:r + 1]]
        if ks is not None:
            K, V = K + [ks[r:r + 1]], V + [vs[r:r + 1]]
        out.append(F.scaled_dot_product_attention(q[r:r + 1].double(), torch.cat(K, 2).double(), torch.cat(V, 2).double()))
    return torch.cat(out)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.bfloat16, 2e-2),
                                        (torch.float16, 2e-3)])
@pytest.mark.parametrize("Lc, Ls", [(0, 0), (9, 0), (9, 5), (0, 5), (13, None), (None, 4), (None, None)])
def test_block_attention_equals_concatenation(dtype, tol, Lc, Ls, op_backend):
    g = torch.Generator().manual_seed(Lc or 0)
    B, H, b, D = 3, 2, 4, 16
    rnd = lambda n: torch.randn(B, H, n, D, generator=g).to(dtype)
    q, k, v = rnd(b), rnd(b), rnd(b)
    kp = vp = plen = ks = vs = None
    if Lc is not None:
        kp, vp = rnd(Lc), rnd(Lc)
        plen = torch.randint(0, Lc + 1, (B,), generator=g)
        plen[0] = 0  # an empty prefix in one row
        for r in range(B):  # garbage in unused slots must not leak
            kp[r, :, plen[r]:] = float("nan")
            vp[r, :, plen[r]:] = float("inf")
    if Ls is not None:
        ks, vs = rnd(Ls), rnd(Ls)
    out = block_attention(q, k, v, kp, vp, plen, ks, vs)
    assert out.dtype == dtype and out.shape == q.shape
    torch.testing.assert_close(out.double(), sdpa_rows(q, k, v, kp, vp, plen, ks, vs), atol=tol, rtol=tol)


def test_block_attention_rejects_bad_arguments(op_backend):
    q = torch.randn(2, 2, 4, 8)
    with pytest.raises(ValueError, match="prefix_len"):
        block_attention(q, q, q, torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8), torch.tensor([1, 6]))
    with pytest.raises(ValueError, match="both"):
        block_attention(q, q, q, torch.randn(2, 2, 5, 8), None, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="shape"):
        block_attention(q, q[:, :, :2], q)
