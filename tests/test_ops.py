"""The ops and their spec.  python -m pytest -q tests/test_ops.py

unmask is checked against a naive per-row Python transcription of notes/appendix-spec.md sections 3-4 and
on hand-made edge cases, through the public function with the backend forced to the
reference ("torch") and, when mini_dlm._C is built, to the compiled op ("ext");
block_attention against torch.cat + scaled_dot_product_attention, one row at a time."""

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import flat
from mini_dlm.ops import Rule, block_attention, gumbel_noise, uniform_hash, unmask
from mini_dlm.plumbing import backend

INF = float("inf")


@pytest.fixture(autouse=True, params=["torch", "ext"] if backend.HAS_EXT else ["torch"])
def op_backend(request):
    """Every test here runs against the reference and, when built, the compiled op."""
    backend.set_backend(request.param)
    yield request.param
    backend.set_backend("auto")


def fastdllm_factor(sorted_confidence, factor):
    """Fast-dLLM's factor rule as its code (get_transfer_index_dynamic) does it, for one row:
    its eligible confidences sorted high to low (at least one) -> how many of the best commit."""
    threshs = [1 - factor / (n + 1) for n in range(1, len(sorted_confidence) + 1)]
    threshs[0] = -1  # "at least one token is transferred"
    for top_i in range(len(threshs)):
        if sorted_confidence[top_i] < threshs[top_i]:
            break
    if top_i == 0 or top_i == len(threshs) - 1:
        top_i += 1
    return top_i


def strict_factor(sorted_confidence, factor):
    """The strict rule (factor_rule="strict"): the longest best-first run with
    c(n) >= 1 - factor / (n + 1) for every 1-based rank n, and at least c(1)."""
    n = 1
    while n < len(sorted_confidence) and sorted_confidence[n] >= 1 - factor / (n + 2):
        n += 1
    return n


def naive_unmask(logits, tokens, eligible, banned, k=None, threshold=None, factor=None, factor_rule="fastdllm",
                 remasking="low_confidence", scores=None, demote=()):
    """Per row, per position, in Python floats: guess, score (-inf for a demoted guess), sort
    (-c, position), select."""
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
            cand.append((INF if x0 in demote else -c, i, x0))
        cand.sort()
        if k is not None:
            chosen = cand[:int(k[b])]
        elif threshold is not None:
            chosen = [e for n, e in enumerate(cand) if n == 0 or -e[0] >= threshold]
        else:
            rule = fastdllm_factor if factor_rule == "fastdllm" else strict_factor
            chosen = cand[:rule([-e[0] for e in cand], factor)] if cand else []
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
    n = flat(unmask, logits, t, e, banned=banned, **mode)
    return t, e, n, expected, count


@pytest.mark.parametrize("remasking", ["low_confidence", "margin", "entropy", "random"])
@pytest.mark.parametrize("mode", [{"k": [2, 0, 5]}, {"threshold": 0.3}, {"threshold": -1.5}, {"factor": 1.0}, {"factor": 3.0},
                                  {"factor": 1.0, "factor_rule": "strict"}, {"factor": 3.0, "factor_rule": "strict"},
                                  {"k": [2, 0, 5], "demote": [2, 5]}, {"threshold": 0.3, "demote": [2, 5]},
                                  {"factor": 1.0, "demote": [2, 5]}])
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


FACTOR_ROWS = [  # (eligible scores, what fastdllm commits, what strict commits) at factor 1, where
    # the bound of 1-based rank n is 1 - 1 / (n + 1): -1 (fastdllm) or -inf (strict), 0.67, 0.75, 0.8, 0.83
    ([0.1], 1, 1),                          # one eligible
    ([0.9, 0.1], 2, 1),                     # two eligible, rank 2 fails: it is the last rank
    ([0.3, 0.2], 2, 1),                     # two eligible, both low
    ([0.99, 0.98, 0.97], 3, 3),             # every rank passes
    ([0.2, 0.1, 0.05], 1, 1),               # nothing passes after rank 1
    ([0.99, 0.99, 0.99, 0.1], 4, 3),        # only the last rank fails
    ([0.95, 0.7, 0.9, 0.72, 0.3], 2, 2),    # rank 3 (0.72) fails first
    ([0.7, 0.7, 0.7, 0.7, 0.7], 2, 2),      # ties: the two lowest positions
    ([], 0, 0),                             # nothing eligible
    ([0.5, 0.999, 0.98, 0.6, 0.9, 0.85], 4, 4),  # sorted: 0.999 0.98 0.9 0.85 | 0.6 < 0.83
]


def factor_case(rows, L=8):
    """Lists of scores -> (logits, tokens, eligible, scores) for remasking="random": row b's
    eligible positions, scoring its list in order, are every other column from b % 2 (the
    first columns for lists longer than L / 2); the other columns score 0.5 and must be ignored."""
    B, V = len(rows), 6
    scores = torch.full((B, L), 0.5, dtype=torch.float64)
    eligible = torch.zeros(B, L, dtype=torch.bool)
    for b, c in enumerate(rows):
        cols = list(range(b % 2, L, 2))[:len(c)] if len(c) <= L // 2 else list(range(len(c)))
        scores[b, cols], eligible[b, cols] = torch.tensor(c, dtype=torch.float64), True
    logits = torch.randn(B, L, V, generator=torch.Generator().manual_seed(B))
    return logits, torch.where(eligible, V - 1, 0), eligible, scores


@pytest.mark.parametrize("factor_rule, column", [("fastdllm", 1), ("strict", 2)])
def test_factor_rules_on_edge_cases(factor_rule, column):
    """Hand-computed counts, and the positions the transcriptions above pick, on both backends."""
    logits, tokens, eligible, scores = factor_case([r[0] for r in FACTOR_ROWS])
    t, e, n, expected, count = run_both(logits, tokens, eligible, [5], factor=1.0, factor_rule=factor_rule,
                                        remasking="random", scores=scores)
    assert n.tolist() == count == [r[column] for r in FACTOR_ROWS]
    assert torch.equal(t, expected) and torch.equal(e, eligible & (t == tokens))


def test_factor_rules_with_scores_below_minus_one():
    """Fast-dLLM's code bounds rank 1 by -1: a row whose best score is below it commits one
    token even with two eligible, where the strict rule runs on (entropy scores go this low)."""
    logits, tokens, eligible, scores = factor_case([[-2.0, -3.0]])
    for factor_rule, want in (("fastdllm", [1]), ("strict", [2])):  # factor 12: rank 2's bound is -3
        t, e, n, expected, count = run_both(logits, tokens, eligible, [5], factor=12.0, factor_rule=factor_rule,
                                            remasking="random", scores=scores)
        assert n.tolist() == count == want and torch.equal(t, expected)


@pytest.mark.parametrize("factor", [0.3, 1.0, 2.0, 4.0])
def test_factor_rules_match_their_transcriptions_on_random_rows(factor):
    """Rows of 0 to 12 eligible positions, scores crowded towards 1 (so that runs of every
    length pass), ties among them, both rules."""
    g = torch.Generator().manual_seed(int(factor * 10))
    B, L, V = 16, 12, 7
    logits = torch.randn(B, L, V, generator=g)
    eligible = torch.rand(B, L, generator=g) < torch.linspace(0, 1, B)[:, None]  # row 0: none, row 15: all
    scores = 1 - torch.rand(B, L, generator=g, dtype=torch.float64) ** 2 * 0.6
    scores[::3, ::2] = scores[::3, 1::2]  # equal pairs
    tokens = torch.where(eligible, V - 1, 0)
    for factor_rule in ("fastdllm", "strict"):
        t, e, n, expected, count = run_both(logits, tokens, eligible, [V - 1], factor=factor, factor_rule=factor_rule,
                                            remasking="random", scores=scores)
        assert n.tolist() == count and torch.equal(t, expected)


def test_demoted_guesses_commit_after_all_others():
    """Guesses of a demoted id score -inf: they commit after every other, lowest position
    first, under every rule; the ineligible position 0 (whose score is -inf too) never takes
    their place."""
    logits = torch.full((1, 5, 5), -2.0)
    logits[0, :, 3] = torch.tensor([9.0, 8.0, 0.0, 9.0, 0.0])  # positions 1 and 3 guess 3, confidently
    logits[0, 2, 1] = logits[0, 4, 2] = 0.5  # positions 2 and 4 guess 1 and 2, unsure (p = 0.57, a tie)
    tokens, eligible = torch.tensor([[0, 4, 4, 4, 4]]), torch.tensor([[False, True, True, True, True]])
    seen = []
    for mode in ({"k": torch.tensor([1])}, {"threshold": 0.99}, {"k": torch.tensor([1])}, {"factor": 1.0}):
        before = eligible.clone()
        flat(unmask, logits, tokens, eligible, banned=[4], demote=[3], **mode)
        seen.append((before & ~eligible)[0].nonzero().flatten().tolist())
    assert seen == [[2], [4], [1], [3]] and tokens.tolist() == [[0, 3, 1, 3, 2]]
    tokens, eligible = torch.tensor([[0, 4, 4, 4, 4]]), torch.tensor([[False, True, True, True, True]])
    unmask(logits, tokens, eligible, Rule(banned=[4]), k=torch.tensor([1]))  # without demote: the most confident
    assert tokens.tolist() == [[0, 4, 4, 3, 4]]


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
    n = unmask(logits, tokens, eligible, Rule(banned=[4]), k=torch.tensor([2]))
    assert n.tolist() == [2] and tokens.tolist() == [[4, 2, 2, 4, 4, 4]]
    n = unmask(logits, tokens, eligible, Rule(threshold=2.0, banned=[4]))  # nothing reaches threshold: the best one only
    assert n.tolist() == [1] and tokens.tolist() == [[4, 2, 2, 2, 4, 4]]


def test_confidence_exactly_tau_is_committed():
    logits = torch.tensor([[[0.0, 0.0, 5.0], [0.0, 1.0, 5.0], [0.0, 0.0, 5.0]]])  # p = 0.5 exactly at 0 and 2
    tokens, eligible = torch.full((1, 3), 2), torch.ones(1, 3, dtype=torch.bool)
    n = unmask(logits, tokens, eligible, Rule(threshold=0.5, banned=[2]))
    assert n.tolist() == [3]  # 0.5 >= 0.5 twice, and position 1 (p = 0.73) is the best
    tokens, eligible = torch.full((1, 3), 2), torch.ones(1, 3, dtype=torch.bool)
    assert unmask(logits, tokens, eligible, Rule(threshold=0.5 + 1e-12, banned=[2])).tolist() == [1]


def test_tau_one_commits_exactly_one_per_row():
    logits, tokens, eligible = random_case(B=4, L=16, seed=3)
    eligible[:, 0] = True
    n = unmask(logits, tokens, eligible.clone(), Rule(threshold=1.0, banned=[11]))
    assert n.tolist() == [1, 1, 1, 1]


def test_k_zero_and_k_above_count():
    logits, tokens, eligible = random_case(B=2, L=6, p_eligible=1.0)
    n = unmask(logits, tokens.clone(), eligible.clone(), Rule(banned=[11]), k=torch.tensor([0, 100]))
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
        unmask(logits, tokens.clone(), eligible.clone(), Rule(banned=[7, 3]), k=torch.tensor([1, 1]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_logits_select_like_their_float32_values(dtype):
    logits, tokens, eligible = random_case(seed=5)
    logits = logits.to(dtype)
    t1, e1 = tokens.clone(), eligible.clone()
    t2, e2 = tokens.clone(), eligible.clone()
    n1 = unmask(logits, t1, e1, Rule(threshold=0.4, banned=[11]))
    n2 = unmask(logits.float(), t2, e2, Rule(threshold=0.4, banned=[11]))
    assert torch.equal(t1, t2) and torch.equal(n1, n2)


def test_temperature_uses_the_counter_based_gumbel_noise():
    logits, tokens, eligible = random_case(seed=7, p_eligible=1.0)
    B, L, V = logits.shape
    t = tokens.clone()
    unmask(logits, t, eligible.clone(), Rule(temperature=0.8, banned=[11]), k=torch.full((B,), L), seed=99)
    g = gumbel_noise(99, torch.arange(B * L), V).view(B, L, V)
    expected = (logits.double().masked_fill(torch.arange(V) == 11, -INF) + 0.8 * g).argmax(-1)
    assert torch.equal(t, expected)


def test_gumbel_max_samples_the_softmax():
    n, row = 20000, torch.tensor([1.0, 0.0, -1.0, 2.0, 9.0])  # token 4 plays the (banned) mask
    tokens = torch.full((1, n), 4)
    unmask(row.expand(1, n, 5).clone(), tokens, torch.ones(1, n, dtype=torch.bool), Rule(temperature=1.0, banned=[4]), k=torch.tensor([n]), seed=5)
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
    ({"remasking": "nope"}, "remasking"), ({"remasking": "random"}, "scores"), ({"banned": []}, "banned"),
    ({"demote": [12]}, "demote"), ({"k": None, "factor": 1.0, "factor_rule": "paper"}, "factor_rule"),
    ({"k": None, "factor": 0.0}, "factor must be > 0")])
def test_unmask_rejects_bad_arguments(bad, match):
    logits, tokens, eligible = random_case()
    args = {"k": torch.tensor([1, 1, 1]), "banned": [11], **bad}
    if args["k"] is None:
        del args["k"]
    with pytest.raises(ValueError, match=match):
        flat(unmask, logits, tokens, eligible, **args)


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
