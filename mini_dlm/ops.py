"""
The sampler's two hot ops (notes/appendix-spec.md section 8). unmask_reference and
block_attention_reference, in plain PyTorch, are the *specification*: the compiled kernels in
csrc/ must select exactly the same positions and tokens, and agree with their values to fp32
rounding. They are also what runs where no kernel does.

  unmask           one denoising decision (notes/03-04): guess x0 at the eligible positions,
                   score the guesses, commit some of them in place (LLaDA's top-k, Fast-dLLM's
                   threshold or factor rule).
  block_attention  attention of a block's queries over a cached prefix, the block itself and
                   an optional cached suffix, as if the three were concatenated (notes/04).

unmask and block_attention, the entry points, check their arguments
(mini_dlm/plumbing/checks.py), then call torch.ops.mini_dlm.* or the reference, as
mini_dlm/plumbing/backend.py decides.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mini_dlm.plumbing.backend import HAS_EXT, record, use_ext
from mini_dlm.plumbing.checks import check_attention, check_rule, check_unmask

CUDA_HEAD_DIMS = (32, 64, 128)  # the head dims the CUDA attention kernels are compiled for
MAX_BANNED_CUDA = 16  # banned ids, and demoted ids, the CUDA unmask takes (they travel as kernel arguments)
OP_RULES = {"fastdllm": "factor", "strict": "factor_strict"}  # factor_rule -> the op's rule name


@dataclass(frozen=True)
class Rule:
    """How unmask guesses, scores and commits: everything but the tensors and the per-step k,
    seed and scores. Commit by LLaDA's schedule (a k given per call), Fast-dLLM's threshold, or
    its factor rule: exactly one of the three. Checked when built."""
    remasking: str = "low_confidence"  # how a guess is scored: low_confidence | margin | entropy | random
    temperature: float = 0.0  # x0 = argmax(logits + T * Gumbel); 0: the plain argmax
    threshold: float | None = None  # commit every guess with c >= tau, and the best
    factor: float | None = None  # rank n commits if c(n) >= 1 - factor / (n + 1) ...
    factor_rule: str = "fastdllm"  # ... as Fast-dLLM's code ("fastdllm") or the longest run ("strict")
    banned: tuple = ()  # ids never guessed (the mask token at least)
    demote: tuple = ()  # ids whose guesses score -inf: they commit after every other

    def __post_init__(self):
        check_rule(self)


def _rows(t):
    """t with a contiguous last dimension (a copy only if it has none); None stays None.
    The compiled ops read whole rows of the last dimension."""
    return t if t is None or t.stride(-1) == 1 else t.contiguous()


# ---- counter-based Gumbel noise for temperature sampling (unmask's x0) ---------------------
# Sampling x0 ~ softmax(l / T) is argmax_v(l_v + T * g_v) with g_v ~ Gumbel(0, 1) (the Gumbel-max
# trick). The noise does not come from a torch.Generator but from a hash of a counter: g for
# logit v of row n (n = b * L + i in a (B, L, V) tensor) depends only on (seed, n * V + v), so a
# kernel that reads only some rows, on any device and in any order, draws exactly these numbers.
# csrc/hash.h is the same function in C++.

_M64 = (1 << 64) - 1


def signed64(c):
    """A uint64 value as the int64 with the same bits (torch has no uint64 arithmetic)."""
    c &= _M64
    return c - (1 << 64) if c >= 1 << 63 else c


def _shr(z, s):
    """Logical right shift of int64 bits (torch's >> is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def splitmix64(z):
    """Steele et al.'s SplitMix64 finaliser on int64 tensors (wrapping arithmetic = uint64 bits)."""
    z = z + signed64(0x9E3779B97F4A7C15)
    z = (z ^ _shr(z, 30)) * signed64(0xBF58476D1CE4E5B9)
    z = (z ^ _shr(z, 27)) * signed64(0x94D049BB133111EB)
    return z ^ _shr(z, 31)


def uniform_hash(seed, index):
    """U(0, 1) float64 numbers keyed by (seed, index): h = splitmix64(splitmix64(seed) ^ index),
    u = ((h >> 12) + 0.5) / 2^52, so 0 < u < 1 strictly. index: int64 tensor of any shape."""
    key = splitmix64(torch.tensor(signed64(seed), dtype=torch.long, device=index.device))
    h = splitmix64(key ^ index)
    return (_shr(h, 12).double() + 0.5) * 2.0 ** -52


def gumbel_noise(seed, rows, V):
    """Gumbel(0, 1) noise (N, V) float64 for the flat row indices rows (N,):
    g = -log(-log(u)), u = uniform_hash(seed, row * V + v)."""
    index = rows[:, None] * V + torch.arange(V, device=rows.device)  # (N, V)
    return -torch.log(-torch.log(uniform_hash(seed, index)))


def sample_x0(logits, temperature=0.0, seed=0):
    """x0 = argmax_v(logits + T * g) in float64, the first (lowest) id on ties: a sample from
    softmax(logits / T); T = 0 is the plain argmax. logits (..., V) -> (...) int64; the noise
    of row n of logits.view(-1, V) is keyed by n."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    V = logits.shape[-1]
    rows = torch.arange(logits.numel() // V, device=logits.device)
    g = gumbel_noise(seed, rows, V).view(logits.shape)
    return (logits.double() + temperature * g).argmax(dim=-1)


def draw_seed(generator):
    """A 62-bit seed for one step's noise, from the caller's torch.Generator (None: the global one)."""
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(2 ** 62, (), generator=generator, device=device))


# ---- unmask -------------------------------------------------------------------------------

def unmask(logits, tokens, eligible, rule, k=None, seed=0, scores=None):
    """Check the arguments (ValueError), then run the compiled op or unmask_reference (the spec)."""
    check_unmask(logits, tokens, eligible, rule, k, scores)
    cuda_takes = logits.dtype != torch.float64 and max(len(rule.banned), len(rule.demote)) <= MAX_BANNED_CUDA
    ext = use_ext("unmask", logits.device) and (logits.device.type != "cuda" or cuda_takes)  # else: the reference
    record("unmask", ext)
    if not ext:
        return unmask_reference(logits, tokens, eligible, rule, k, seed, scores)
    name = "schedule" if k is not None else "threshold" if rule.threshold is not None else OP_RULES[rule.factor_rule]
    scores = scores.double() if rule.remasking == "random" else None
    return torch.ops.mini_dlm.unmask(_rows(logits), tokens, eligible, [int(b) for b in rule.banned],
                                     [int(d) for d in rule.demote], k, float(rule.threshold or 0.0),
                                     float(rule.factor or 0.0), name, rule.remasking, scores, float(rule.temperature),
                                     signed64(int(seed)))


if HAS_EXT:
    @torch.library.register_fake("mini_dlm::unmask")
    def _unmask_fake(logits, *rest):  # the op's other 12 arguments do not shape its output
        return logits.new_empty((logits.shape[0],), dtype=torch.long)  # tokens, eligible: in place


def confidence(logits, x0, remasking):
    """Scores (...) float64 of the guesses x0 (...) under the untempered softmax of logits (..., V),
    from e_v = exp(l_v - max_u l_u) and s = sum_v e_v in float64 (p_v = e_v / s; a kernel
    gets max, s and the sums below in one online pass over the row):
      low_confidence  p[x0] = e[x0] / s                    (LLaDA, Fast-dLLM)
      margin          p(1) - p(2) = (1 - e(2)) / s, with e(2) the runner-up (0 when they tie)
      entropy         sum_v p_v log p_v = sum_v e_v (l_v - max) / s - log s = -H(p)."""
    lg = logits.double()
    z = lg - lg.max(dim=-1, keepdim=True).values  # (..., V): <= 0, -inf for impossible tokens
    e = z.exp()
    s = e.sum(dim=-1)  # (...) >= 1
    if remasking == "low_confidence":
        return e.gather(-1, x0[..., None]).squeeze(-1) / s
    if remasking == "margin":
        top2 = e.topk(2, dim=-1).values  # (..., 2): 1 and the runner-up
        return (top2[..., 0] - top2[..., 1]) / s
    return torch.where(e > 0, e * z, torch.zeros_like(e)).sum(dim=-1) / s - s.log()


def descending_rank(c, eligible=None):
    """c (B, L) -> int64 (B, L): 0 for each row's highest score, 1 for the next, ...; equal
    scores rank by position, lowest first (a stable sort). With eligible (B, L) bool, the
    eligible positions rank before all others, whatever their scores (a demoted guess scores
    -inf, as an ineligible position does)."""
    order = torch.sort(c, dim=1, descending=True, stable=True).indices  # (B, L): best first
    if eligible is not None:  # then the eligible ones first, in that order
        order = order.gather(1, torch.sort((~eligible).gather(1, order).byte(), dim=1, stable=True).indices)
    return torch.argsort(order, dim=1)  # the inverse permutation: rank of each position


def factor_count(c_sorted, n_eligible, factor, factor_rule="fastdllm"):
    """Fast-dLLM's factor rule: how many of each row's best positions commit. c_sorted (B, L):
    the row's eligible scores high to low, c(1) >= c(2) >= ... >= c(N), then anything;
    n_eligible (B,): N -> (B,) int64.
    Rank n passes when c(n) >= 1 - factor / (n + 1), except rank 1, whose bound is -1 in
    Fast-dLLM's code ("at least one token") and -inf in the strict rule. With `run` the ranks
    that pass before the first that fails (N if none fails):
      strict    commit run: the longest best-first run that passes (at least c(1))
      fastdllm  Fast-dLLM's code: commit run, but one more when the first failing rank is
                rank 1 or the last rank N (so with N = 2 both go, for scores >= -1)."""
    n = torch.arange(1, c_sorted.shape[1] + 1, device=c_sorted.device, dtype=torch.float64)  # ranks, 1-based
    first_bound = -1.0 if factor_rule == "fastdllm" else float("-inf")
    bound = torch.where(n == 1, first_bound, 1 - factor / (n + 1))  # (L,)
    passes = (c_sorted >= bound) & (n <= n_eligible[:, None])  # (B, L)
    run = passes.long().cumprod(dim=1).sum(dim=1)  # (B,) in [0, N]
    if factor_rule == "strict":
        return run
    return run + ((run < n_eligible) & ((run == 0) | (run == n_eligible - 1))).long()


@torch.no_grad()
def unmask_reference(logits, tokens, eligible, rule, k=None, seed=0, scores=None):
    """One denoising step's decision, in place; returns the count committed per row (B,) int64.
    logits (B, L, V): the model's output; tokens (B, L) int64: the canvas; eligible (B, L) bool:
    the positions that may commit (masked, in the current block), cleared where they do.
    What commits, exactly one of: k (B,) int64, LLaDA's schedule: the k[b] best of row b (all
    if fewer); rule.threshold, Fast-dLLM: every c >= threshold, and the best; rule.factor > 0:
    factor_count under rule.factor_rule.
    rule.remasking scores a guess: low_confidence | margin | entropy (confidence()), or random
    (c = scores (B, L), drawn by the caller). x0 = argmax(l + T * Gumbel) (sample_x0,
    seed); rule.banned ids (the mask token at least) count as -inf in the argmax and the softmax;
    a guess that is one of the rule.demote ids scores c = -inf, so it commits after every other
    (LLaDA's confidence_eos_eot_inf). "Best" is the highest c; equal c go to the lowest
    position, equal logits to the lowest id."""
    ids = lambda t: torch.tensor(list(t), dtype=torch.long, device=logits.device)  # noqa: E731
    lg = logits.double().index_fill(-1, ids(rule.banned), float("-inf"))
    if (lg.amax(dim=-1) == float("-inf"))[eligible].any():
        raise ValueError("an eligible position has no finite logit outside the banned ids")
    x0 = sample_x0(lg, rule.temperature, seed)  # (B, L) the guesses
    c = scores.double() if rule.remasking == "random" else confidence(lg, x0, rule.remasking)  # (B, L)
    c = c.masked_fill(torch.isin(x0, ids(rule.demote)) | ~eligible, float("-inf"))  # demoted and ineligible: last
    rank = descending_rank(c, eligible)  # (B, L): 0 = the row's best eligible position
    if k is not None:
        commit = rank < k[:, None]
    elif rule.threshold is not None:
        commit = (c >= rule.threshold) | (rank == 0)
    else:
        n_commit = factor_count(c.sort(dim=1, descending=True).values, eligible.sum(dim=1), rule.factor,
                                rule.factor_rule)
        commit = rank < n_commit[:, None]
    commit &= eligible
    tokens.copy_(torch.where(commit, x0, tokens))
    eligible &= ~commit
    return commit.sum(dim=1)


# ---- block_attention ----------------------------------------------------------------------

def block_attention(q, k, v, k_prefix=None, v_prefix=None, prefix_len=None, k_suffix=None, v_suffix=None):
    """Check the arguments (ValueError), then run the compiled op or block_attention_reference
    (the spec)."""
    check_attention(q, k, v, k_prefix, v_prefix, prefix_len, k_suffix, v_suffix)
    cuda_takes = q.dtype != torch.float64 and q.shape[-1] in CUDA_HEAD_DIMS  # else: the reference
    ext = use_ext("block_attention", q.device) and (q.device.type != "cuda" or cuda_takes)
    record("block_attention", ext)
    if not ext:
        return block_attention_reference(q, k, v, k_prefix, v_prefix, prefix_len, k_suffix, v_suffix)
    return torch.ops.mini_dlm.block_attention(_rows(q), _rows(k), _rows(v), _rows(k_prefix), _rows(v_prefix),
                                              None if k_prefix is None else prefix_len, _rows(k_suffix),
                                              _rows(v_suffix))  # the kernels read rows of D


if HAS_EXT:
    @torch.library.register_fake("mini_dlm::block_attention")
    def _block_attention_fake(q, *rest):  # the output has q's shape
        return torch.empty_like(q, memory_format=torch.contiguous_format)


def block_attention_reference(q, k, v, k_prefix=None, v_prefix=None, prefix_len=None, k_suffix=None, v_suffix=None):
    """Attention of a block over [prefix[:prefix_len] ; block ; suffix], without the caller copying.

    q, k, v             (B, H, b, D): the block's queries, keys and values (the block sees
                        all of itself: bidirectional inside the block).
    k_prefix, v_prefix  (B, H, Lc, D) or None: cached keys/values of earlier positions; row r
                        uses slots 0 .. prefix_len[r] - 1 (left-aligned), the rest is ignored.
    prefix_len          (B,) int64 in [0, Lc].
    k_suffix, v_suffix  (B, H, Ls, D) or None: cached keys/values of later positions, all used
                        (Fast-dLLM's dual cache).
    Returns (B, H, b, D) in q's dtype:
        softmax(q K^T / sqrt(D)) V,  K = [k_prefix[r, :, :prefix_len[r]] ; k ; k_suffix]
    with scores, softmax and the weighted sum in float32 (float64 inputs stay float64).
    Any of Lc, Ls or prefix_len[r] may be 0; the block itself is never empty of keys."""
    acc = torch.promote_types(q.dtype, torch.float32)
    K = torch.cat([t for t in (k_prefix, k, k_suffix) if t is not None], dim=2).to(acc)  # (B, H, Lk, D);
    V_ = torch.cat([t for t in (v_prefix, v, v_suffix) if t is not None], dim=2).to(acc)  # a kernel would not copy
    Lc = 0 if k_prefix is None else k_prefix.shape[2]
    slot = torch.arange(K.shape[2], device=q.device)
    valid = slot >= Lc if k_prefix is None else (slot >= Lc) | (slot < prefix_len[:, None])  # (Lk,) | (B, Lk)
    valid = valid.expand(q.shape[0], -1)[:, None, None, :]  # (B, 1, 1, Lk): which keys exist
    unused = ~valid.transpose(-1, -2)  # (B, 1, Lk, 1); zeroed so that whatever they hold never leaks
    K, V_ = K.masked_fill(unused, 0.0), V_.masked_fill(unused, 0.0)
    y = F.scaled_dot_product_attention(q.to(acc), K, V_, attn_mask=valid)  # softmax(q K^T / sqrt(D)) V
    return y.to(q.dtype)  # (B, H, b, D)
