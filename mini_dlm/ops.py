"""
The sampler's two hot ops. unmask_reference and block_attention_reference, in plain PyTorch,
are the *specification*: the compiled kernels in csrc/ must select exactly the same positions
and tokens, and agree with their values to fp32 rounding. Read their docstrings as the
contract. unmask and block_attention are the public entry points.

  unmask           one denoising decision (notes/03-04): guess x0 at the eligible
                   positions, score the guesses, commit some of them in place (LLaDA's top-k,
                   Fast-dLLM's threshold or factor rule).
  block_attention  attention of a block's queries over a cached prefix, the block itself and
                   an optional cached suffix, as if the three were concatenated (notes/04).

Backends. unmask and block_attention validate their arguments, then run the compiled op
torch.ops.mini_dlm.* (csrc/, built by setup.py) or the reference *_reference function here.
MINI_DLM_BACKEND=torch|ext (or set_backend, or sample.py --backend) forces one. The default,
"auto", takes the compiled op on the CPU; on a GPU it takes it only once CUDA_VALIDATED is True,
that is once scripts/gpu_check.sh has passed on a GPU (csrc/README.md records when), and until
then runs the reference there. Inputs a compiled kernel does not take (float64 logits on a GPU, a
head dim it is not built for) go to the reference in every mode. backends_ran() says which
implementation each op actually used.

Random numbers. Gumbel noise for temperature sampling comes from a counter-based hash
(uniform_hash), not from a torch.Generator: noise for logit (b, i, v) depends only on
(seed, (b * L + i) * V + v), so a kernel that reads only the eligible rows, on any device,
draws exactly the same numbers as this reference.
"""

import json
import math
import os

import torch
import torch.nn.functional as F

try:
    import mini_dlm._C  # noqa: F401  registers torch.ops.mini_dlm.* (csrc/)
    HAS_EXT = True
except ImportError:  # not built (e.g. a source checkout without pip install): reference only
    HAS_EXT = False

KINDS = ("low_confidence", "random", "margin", "entropy")
BACKENDS = ("auto", "torch", "ext")
# False until scripts/gpu_check.sh (the CUDA tests, compute-sanitizer) has passed on a GPU
# (csrc/README.md records date, device and command): until then "auto" runs the PyTorch
# reference on CUDA, and the CUDA kernels are opt-in (--backend ext).
CUDA_VALIDATED = False
CUDA_HEAD_DIMS = (32, 64, 128)  # the head dims the CUDA attention kernels are compiled for
MAX_BANNED_CUDA = 16  # banned ids the CUDA unmask takes (they travel as kernel arguments)
_backend = "auto"
_ran = set()  # {(op, "ext" | "torch")} since reset_backends_ran()


def set_backend(name):
    """auto: the compiled op where it exists (on CUDA only once CUDA_VALIDATED), else the
    reference; torch: always the reference; ext: always the compiled op (ValueError where
    there is none)."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    _backend = name


def _build_info():
    """What setup.py recorded about the build (mini_dlm/_build.json), or {} if nothing."""
    try:
        with open(os.path.join(os.path.dirname(__file__), "_build.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _compiled_kernels():
    """{(op, dispatch key)} of the kernels mini_dlm._C registered, e.g. ("unmask", "CPU")."""
    found = set()
    for op in ("unmask", "block_attention"):
        for key in ("CPU", "CUDA"):
            try:
                if HAS_EXT and torch._C._dispatch_has_kernel_for_dispatch_key(f"mini_dlm::{op}", key):
                    found.add((op, key))
            except RuntimeError:  # the op is not in this build at all
                pass
    return found


_KERNELS = _compiled_kernels()  # looked up once: a set lookup is free, and torch.compile traces it


def has_kernel(op, device):
    """Whether the compiled op `op` (e.g. "unmask") has a kernel for this device type."""
    return (op, device.type.upper()) in _KERNELS


def missing_kernel_reason(device):
    """Why mini_dlm._C has no kernels for this device type, in words ("" if none is known)."""
    if not HAS_EXT:
        return "the extension is not built: pip install --no-build-isolation -e ."
    if device.type == "cuda":
        return "built without its CUDA kernels: " + (_build_info().get("why") or "reason unknown (reinstall)")
    return ""


def use_ext(op, device):
    """Whether the backend choice runs the compiled op `op` on this device type."""
    if _backend == "torch":
        return False
    if _backend == "ext" and not has_kernel(op, device):
        why = missing_kernel_reason(device)
        raise ValueError(f"backend 'ext' requested, but mini_dlm._C has no {op} kernel for {device.type}"
                         + (f" ({why})" if why else ""))
    return has_kernel(op, device) and (_backend == "ext" or device.type != "cuda" or CUDA_VALIDATED)


def describe_backend(op, device):
    """What use_ext decides for op on this device, in words (for a run's config print)."""
    if use_ext(op, device):
        return "ext"
    if _backend == "auto" and device.type == "cuda":
        return "torch (" + ("the CUDA kernels are not yet validated on a GPU; --backend ext runs them"
                            if has_kernel(op, device) else "mini_dlm._C " + missing_kernel_reason(device)) + ")"
    return "torch"


def _record(op, ext):
    if not _compiling():  # (a Python side effect torch.compile need not trace)
        _ran.add((op, "ext" if ext else "torch"))


def backends_ran():
    """{op: "ext" | "torch" | "ext+torch"}: what each op ran since reset_backends_ran()."""
    return {op: "+".join(b for b in ("ext", "torch") if (op, b) in _ran)
            for op in ("unmask", "block_attention") if (op, "ext") in _ran or (op, "torch") in _ran}


def reset_backends_ran():
    _ran.clear()


set_backend(os.environ.get("MINI_DLM_BACKEND", "auto"))

_M64 = (1 << 64) - 1


def _signed(c):
    """A uint64 constant as the int64 with the same bits (torch has no uint64 arithmetic)."""
    return c - (1 << 64) if c >= 1 << 63 else c


def _shr(z, s):
    """Logical right shift of int64 bits (torch's >> is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def splitmix64(z):
    """Steele et al.'s SplitMix64 finaliser on int64 tensors (wrapping arithmetic = uint64 bits)."""
    z = z + _signed(0x9E3779B97F4A7C15)
    z = (z ^ _shr(z, 30)) * _signed(0xBF58476D1CE4E5B9)
    z = (z ^ _shr(z, 27)) * _signed(0x94D049BB133111EB)
    return z ^ _shr(z, 31)


def uniform_hash(seed, index):
    """U(0, 1) float64 numbers keyed by (seed, index): h = splitmix64(splitmix64(seed) ^ index),
    u = ((h >> 12) + 0.5) / 2^52, so 0 < u < 1 strictly. index: int64 tensor of any shape."""
    key = splitmix64(torch.tensor(_signed(seed & _M64), dtype=torch.long, device=index.device))
    h = splitmix64(key ^ index)
    return (_shr(h, 12).double() + 0.5) * 2.0 ** -52


def gumbel_noise(seed, rows, V):
    """Gumbel(0, 1) noise (N, V) float64 for the flat row indices rows (N,) = b * L + i:
    g = -log(-log(u)), u = uniform_hash(seed, row * V + v)."""
    index = rows[:, None] * V + torch.arange(V, device=rows.device)  # (N, V)
    return -torch.log(-torch.log(uniform_hash(seed, index)))


def sample_x0(logits, temperature=0.0, seed=0, rows=None):
    """x0 = argmax_v(logits + T * g) in float64, the first (lowest) id on ties: a sample from
    softmax(logits / T) by the Gumbel-max trick; T = 0 is the plain argmax.
    logits (N, V); rows (N,) the flat row indices that key the noise (default 0..N-1)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    rows = torch.arange(len(logits), device=logits.device) if rows is None else rows
    return (logits.double() + temperature * gumbel_noise(seed, rows, logits.shape[-1])).argmax(dim=-1)


def confidence(logits, x0, kind):
    """Scores (N,) float64 of the guesses x0 (N,) under the untempered softmax of logits (N, V),
    from e_v = exp(l_v - max_u l_u) and s = sum_v e_v in float64 (p_v = e_v / s; a kernel
    gets max, s and the sums below in one online pass over the row):
      low_confidence  p[x0] = e[x0] / s                    (LLaDA, Fast-dLLM)
      margin          p(1) - p(2) = (1 - e(2)) / s, with e(2) the runner-up (0 when they tie)
      entropy         sum_v p_v log p_v = sum_v e_v (l_v - max) / s - log s = -H(p)."""
    lg = logits.double()
    z = lg - lg.max(dim=-1, keepdim=True).values  # (N, V): <= 0, -inf for impossible tokens
    e = z.exp()
    s = e.sum(dim=-1)  # (N,) >= 1
    if kind == "low_confidence":
        return e.gather(-1, x0[:, None]).squeeze(-1) / s
    if kind == "margin":
        top2 = e.topk(2, dim=-1).values  # (N, 2): 1 and the runner-up
        return (top2[:, 0] - top2[:, 1]) / s
    return torch.where(e > 0, e * z, torch.zeros_like(e)).sum(dim=-1) / s - s.log()


def descending_rank(c):
    """c (B, L) -> int64 (B, L): 0 for each row's highest score, 1 for the next, ...;
    equal scores rank by position, lowest first (a stable sort)."""
    order = torch.sort(c, dim=1, descending=True, stable=True).indices  # (B, L)
    ar = torch.arange(c.shape[1], device=c.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, ar)


def factor_count(c_sorted, n_eligible, factor):
    """Fast-dLLM's factor rule on each row's eligible scores sorted high to low, c(1) >= c(2) >= ...:
    the longest prefix n with c(j) >= 1 - factor / (j + 1) for every j <= n, and at least 1.
    (Fast-dLLM's code differs in one case: when only the last eligible
    position fails, it commits that one too.) c_sorted (B, L), n_eligible (B,) -> (B,) int64."""
    j = torch.arange(1, c_sorted.shape[1] + 1, device=c_sorted.device, dtype=torch.float64)  # 1-based
    ok = (c_sorted >= 1 - factor / (j + 1)) & (j <= n_eligible[:, None])  # (B, L)
    if ok.shape[1]:  # (L = 0: nothing to commit)
        ok[:, 0] = n_eligible > 0  # c(1) always goes
    return ok.long().cumprod(dim=1).sum(dim=1)


def _rows(t):
    """t with a contiguous last dimension (a copy only if it has none); None stays None.
    The compiled ops read whole rows of the last dimension."""
    return t if t is None or t.stride(-1) == 1 else t.contiguous()


def _compiling():
    return torch.compiler.is_compiling()


def _host_checkable(t):
    """Whether a check may read t's values here: on the CPU, outside torch.compile. Reading a
    GPU tensor's values would synchronise with the device (and break CUDA graph capture), and
    under torch.compile it would break the graph; there the compiled ops check the values
    themselves (the CUDA ones with a device-side assert)."""
    return t.device.type == "cpu" and not _compiling()


def _check_unmask(logits, tokens, eligible, k, tau, factor, kind, scores, banned):
    if logits.dim() != 3 or logits.dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        raise ValueError(f"logits must be (B, L, V) float32/bfloat16/float16/float64, got {tuple(logits.shape)} {logits.dtype}")
    B, L, V = logits.shape
    if tokens.shape != (B, L) or tokens.dtype != torch.long:
        raise ValueError(f"tokens must be ({B}, {L}) int64, got {tuple(tokens.shape)} {tokens.dtype}")
    if eligible.shape != (B, L) or eligible.dtype != torch.bool:
        raise ValueError(f"eligible must be ({B}, {L}) bool, got {tuple(eligible.shape)} {eligible.dtype}")
    if sum(a is not None for a in (k, tau, factor)) != 1:
        raise ValueError("give exactly one of k (schedule), tau (threshold) or factor")
    if k is not None and (k.shape != (B,) or k.dtype != torch.long or (_host_checkable(k) and (k < 0).any())):
        raise ValueError(f"k must be ({B},) int64 and >= 0")
    if tau is not None and math.isnan(tau):
        raise ValueError("tau must be a number")
    if factor is not None and not factor > 0:
        raise ValueError(f"factor must be > 0, got {factor}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "random" and (scores is None or scores.shape != (B, L)):
        raise ValueError(f"kind='random' needs scores of shape ({B}, {L})")
    if len(banned) == 0 or min(banned) < 0 or max(banned) >= V:
        raise ValueError(f"banned must hold at least the mask token, ids in [0, {V}), got {list(banned)}")


def unmask(logits, tokens, eligible, *, k=None, tau=None, factor=None, kind="low_confidence",
           scores=None, temperature=0.0, seed=0, banned=()):
    """Check the arguments (ValueError), then run the compiled op or unmask_reference (the spec)."""
    _check_unmask(logits, tokens, eligible, k, tau, factor, kind, scores, banned)
    ext = use_ext("unmask", logits.device) and _unmask_kernel_takes(logits, banned)
    _record("unmask", ext)
    if not ext:
        return unmask_reference(logits, tokens, eligible, k=k, tau=tau, factor=factor, kind=kind,
                                scores=scores, temperature=temperature, seed=seed, banned=banned)
    rule = "schedule" if k is not None else "threshold" if tau is not None else "factor"
    logits = _rows(logits)  # the kernel reads rows of V
    scores = None if scores is None or kind != "random" else scores.double()
    return torch.ops.mini_dlm.unmask(logits, tokens, eligible, [int(b) for b in banned], k,
                                     0.0 if tau is None else float(tau), 0.0 if factor is None else float(factor),
                                     rule, kind, scores, float(temperature), _signed(int(seed) & _M64))


def _unmask_kernel_takes(logits, banned):
    """The CPU kernel takes every case; the CUDA one float32/bfloat16/float16 logits and at
    most MAX_BANNED_CUDA banned ids. Other cases run the reference."""
    return logits.device.type != "cuda" or (logits.dtype != torch.float64 and len(banned) <= MAX_BANNED_CUDA)


if HAS_EXT:
    @torch.library.register_fake("mini_dlm::unmask")
    def _unmask_fake(logits, tokens, eligible, banned, k, tau, factor, rule, kind, scores, temperature, seed):
        return logits.new_empty((logits.shape[0],), dtype=torch.long)  # tokens, eligible: in place


@torch.no_grad()
def unmask_reference(logits, tokens, eligible, *, k=None, tau=None, factor=None, kind="low_confidence",
                     scores=None, temperature=0.0, seed=0, banned=()):
    """One denoising step's decision, in place. Returns the count committed per row (B,) int64.

    logits    (B, L, V) float32 / bfloat16 / float16: the model's output. Only rows with
              eligible[b, i] are read.
    tokens    (B, L) int64: the canvas. Committed positions get their guess x0, others keep.
    eligible  (B, L) bool: positions that may be committed (masked and inside the current
              block). Committed positions are set to False.
    mode      exactly one of
      k       (B,) int64: schedule (LLaDA): commit the k[b] best eligible positions of row b,
              or all of them if fewer;
      tau     float: threshold (Fast-dLLM): commit {c >= tau} plus the row's best position;
      factor  float > 0: Fast-dLLM's factor rule (see factor_count), at least the best one.
              In every mode a row with no eligible position commits nothing.
    kind      how a guess is scored, the confidence c: low_confidence | margin | entropy
              (see confidence()) | random (c = scores, which the caller draws, e.g. U(0, 1)).
    scores    (B, L) float64: the scores for kind="random"; ignored otherwise.
    temperature, seed: x0 = argmax_v(l_v + T * g_v) in float64 with g from
              gumbel_noise(seed, b * L + i, V); T = 0 is the plain argmax. The confidence
              always uses the untempered softmax of l.
    banned    ids never predicted, the mask token at least: their logits count as -inf in
              the argmax and in the softmax.

    Order: "best" means highest c; equal c go to the lowest position, equal logits to the
    lowest token id. Every eligible row needs at least one finite, non-banned logit.
    tau = 1.0 commits exactly one position per row unless several confidences are exactly
    1.0 in float64 (possible only when one logit leads the rest by about 37 or more)."""
    B, L, V = logits.shape
    rows = eligible.flatten().nonzero().squeeze(1)  # (N,) flat indices b * L + i
    lg = logits.reshape(B * L, V)[rows].double()  # (N, V): ineligible rows are never read
    lg[:, torch.as_tensor(list(banned), device=lg.device)] = float("-inf")
    if len(rows) and (lg.max(dim=-1).values == float("-inf")).any():
        raise ValueError("an eligible position has no finite logit outside the banned ids")
    x0 = sample_x0(lg, temperature, seed, rows)  # (N,)
    c = torch.full((B * L,), float("-inf"), dtype=torch.float64, device=logits.device)
    c[rows] = scores.flatten()[rows].double() if kind == "random" else confidence(lg, x0, kind)
    c = c.view(B, L)  # -inf off the eligible set, so eligible positions rank first

    rank = descending_rank(c)  # (B, L)
    if k is not None:
        commit = rank < k[:, None]
    elif tau is not None:
        commit = (c >= tau) | (rank == 0)
    else:
        c_sorted = c.gather(1, torch.sort(rank, dim=1).indices)  # (B, L) high to low
        commit = rank < factor_count(c_sorted, eligible.sum(dim=1), factor)[:, None]
    commit &= eligible

    guess = tokens.flatten().clone()
    guess[rows] = x0
    tokens.copy_(torch.where(commit, guess.view(B, L), tokens))
    eligible &= ~commit
    return commit.sum(dim=1)


def _check_attention(q, k, v, k_prefix, v_prefix, prefix_len, k_suffix, v_suffix):
    if q.dim() != 4 or q.dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        raise ValueError(f"q must be (B, H, b, D) floating point, got {tuple(q.shape)} {q.dtype}")
    B, H, b, D = q.shape
    if b == 0:
        raise ValueError("the block must hold at least one position (q of shape (B, H, 0, D))")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"the block's k and v must have q's shape {tuple(q.shape)}")
    for name, ks, vs in (("prefix", k_prefix, v_prefix), ("suffix", k_suffix, v_suffix)):
        if (ks is None) != (vs is None):
            raise ValueError(f"give both {name} k and v, or neither")
        if ks is not None and (ks.shape != vs.shape or ks.shape[:2] != (B, H) or ks.shape[3] != D or ks.dim() != 4):
            raise ValueError(f"{name} k/v must be ({B}, {H}, n, {D}), got {tuple(ks.shape)} and {tuple(vs.shape)}")
    for t in (k, v, k_prefix, v_prefix, k_suffix, v_suffix):
        if t is not None and t.dtype != q.dtype:
            raise ValueError(f"all of q, k, v must have one dtype, got {q.dtype} and {t.dtype}")
    if k_prefix is not None:
        Lc = k_prefix.shape[2]
        if prefix_len is None or prefix_len.shape != (B,) or prefix_len.dtype != torch.long:
            raise ValueError(f"prefix_len must be ({B},) int64 when a prefix is given")
        if len(prefix_len) and _host_checkable(prefix_len) and (prefix_len.min() < 0 or prefix_len.max() > Lc):
            raise ValueError(f"prefix_len must lie in [0, {Lc}]")


def block_attention(q, k, v, k_prefix=None, v_prefix=None, prefix_len=None, k_suffix=None, v_suffix=None):
    """Check the arguments (ValueError), then run the compiled op or block_attention_reference
    (the spec)."""
    _check_attention(q, k, v, k_prefix, v_prefix, prefix_len, k_suffix, v_suffix)
    ext = use_ext("block_attention", q.device) and _attention_kernel_takes(q)
    _record("block_attention", ext)
    if not ext:
        return block_attention_reference(q, k, v, k_prefix, v_prefix, prefix_len, k_suffix, v_suffix)
    return torch.ops.mini_dlm.block_attention(_rows(q), _rows(k), _rows(v), _rows(k_prefix), _rows(v_prefix),
                                              None if k_prefix is None else prefix_len, _rows(k_suffix),
                                              _rows(v_suffix))  # the kernels read rows of D


def _attention_kernel_takes(q):
    """The CPU kernel takes every dtype and head dim; the CUDA one float32/bfloat16/float16 and
    CUDA_HEAD_DIMS. Other cases run the reference."""
    return q.device.type != "cuda" or (q.dtype != torch.float64 and q.shape[-1] in CUDA_HEAD_DIMS)


if HAS_EXT:
    @torch.library.register_fake("mini_dlm::block_attention")
    def _block_attention_fake(q, k, v, k_prefix, v_prefix, prefix_len, k_suffix, v_suffix):
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
