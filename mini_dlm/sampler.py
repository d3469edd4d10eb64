"""
Sampling: LLaDA's reverse process (Nie et al. 2025) with Fast-dLLM's parallel decoding and KV
caches (Wu et al. 2025) and BD3-LM's exact block cache (Arriola et al. 2025); plain left-to-right
decoding with an exact KV cache for the AR baseline. The exact rules: notes/appendix-spec.md 3-5.

The canvas x = [prompt, M * gen_len] is filled block by block, left to right; only masked
positions are eligible, so the prompt stays. A step, for the current block:
  logits = f(x)                          one forward pass (only over the block with a cache)
  x0     = argmax(logits + T * Gumbel)   the model's guess (T = 0: argmax)
  c      = confidence of x0              low_confidence | margin | entropy | random
  commit, among the block's masked positions, the best: the k_i of LLaDA's schedule, or
  Fast-dLLM's {c >= tau} plus the best one, or its factor rule.
mini_dlm/ops.py: unmask does everything after the forward. Committed tokens never change again.

Schedule. Block j, holding n_j masks, gets s_j = ceil(steps * n_j / sum(n)) steps (steps /
n_blocks for [prompt, M * gen_len]); step i commits k_i = floor(n_j / s_j) + (1 if i < n_j mod
s_j else 0). With a threshold or factor, s_j only caps the passes: pass s_j commits what is left.

How a step gets the block's logits is a strategy, one per cache (CACHES):
  none    every step is a forward over the whole canvas
  prefix  step 1 is a full forward that also caches keys/values before the block; later
          steps run the block and everything after it       (Fast-dLLM; approximate)
  dual    as prefix, but also caches after the block; later steps run only the block
                                                             (Fast-dLLM; approximate)
  block   block-diffusion models: the prompt is cached once, every step runs only the block,
          and a finished block is written to the cache by one more pass (BD3-LM; exact)

Prompts of different lengths are left-padded: pad columns are hidden from attention and RoPE
positions start at each row's first real token, so every row computes what it would alone.
generate, denoise and generate_ar are generators: they yield a Step after every forward pass,
so a caller can watch (sample.py --show-steps) or stop early; finish() runs one to the end.
"""

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from mini_dlm.kvcache import KVCache
from mini_dlm.model import block_causal
from mini_dlm.ops import Rule, draw_seed, sample_x0, unmask
from mini_dlm.plumbing.checks import check_canvas, check_decoding, check_model, check_schedule, check_steps

PAD_ID = 0  # what fills pad columns; they are never attended to, so any id but M would do


@dataclass(frozen=True)
class Decoding:
    """The decoding options, checked when built (mini_dlm/plumbing/checks.py: check_decoding);
    denoise checks them against the model. The defaults are LLaDA's generate() at T = 0."""
    steps: int | None = None  # S, forward passes in all; default one per mask. A cap with threshold/factor
    block_len: int = 32  # b, the semi-autoregressive block (a block-diffusion model's own)
    temperature: float = 0.0  # Gumbel temperature T; 0: argmax
    remasking: str = "low_confidence"  # how a guess is scored: low_confidence | margin | entropy | random
    threshold: float | None = None  # Fast-dLLM: commit every c >= tau, and the best
    factor: float | None = None  # Fast-dLLM's factor rule: rank n commits if c(n) >= 1 - f / (n + 1)
    factor_rule: str = "fastdllm"  # "fastdllm" (its code) or "strict" (the longest passing run)
    cache: str = "none"  # none | prefix | dual (Fast-dLLM) | block (BD3-LM)
    cfg_scale: float = 0.0  # classifier-free guidance s (mini_dlm/sampling/guidance.py); 0: off
    logits_eos_inf: bool = False  # LLaDA's switch: end-of-text is never guessed
    confidence_eos_eot_inf: bool = False  # LLaDA's switch: end-of-text guesses commit last
    eot_id: int | None = None  # the end-of-text id; default the id below the mask token

    def __post_init__(self):
        check_decoding(self, tuple(CACHES))

    def rule(self, mask_id, eot):
        """The ops.Rule of every step: the mask token banned, LLaDA's end-of-text switches as ids."""
        return Rule(self.remasking, self.temperature, self.threshold, self.factor, self.factor_rule,
                    banned=(mask_id, eot) if self.logits_eos_inf else (mask_id,),
                    demote=(eot,) if self.confidence_eos_eot_inf else ())


@dataclass
class Step:
    """What one sampler step did. x is the live canvas (B, L): later steps change it in place,
    so clone it to keep it."""
    x: torch.Tensor  # (B, L) int64
    committed: torch.Tensor  # (B, L) bool: the positions this step committed
    block: int  # the block being denoised (0 for AR)
    passes: int  # forward passes so far
    pad: torch.Tensor  # (B,) pad columns of each row
    block_end: int = 0  # the column where the block ends
    block_done: bool = True  # whether the block has no mask left
    info: dict = field(default_factory=dict)  # what else a sampler reports (mini_dlm/sampling/length.py)


def finish(steps):
    """Run a sampler to the end -> (x, stats), stats = {"forward_passes": int, "transfers":
    (steps, B) tokens committed per step, "pad": (B,), and the last step's info}."""
    transfers = []
    for step in steps:
        transfers.append(step.committed.sum(dim=1))
    return step.x, {"forward_passes": step.passes, "transfers": torch.stack(transfers), "pad": step.pad, **step.info}


# ---- the canvas -------------------------------------------------------------------------------

def make_canvas(prompts, gen_len, model):
    """prompts: ids (P,), a (B, P) tensor, or a list of id lists of any lengths ->
    x (B, Pmax + gen_len) int64 = [pad, prompt, M * gen_len] on the model's device, and
    pad (B,) the pad columns of each row. ValueError if the canvas exceeds the model's
    context or a prompt contains M."""
    device = next(model.parameters()).device
    if torch.is_tensor(prompts):
        rows = list(prompts.long().cpu()[None] if prompts.dim() == 1 else prompts.long().cpu())
    elif len(prompts) and (isinstance(prompts[0], (list, tuple)) or torch.is_tensor(prompts[0])):
        rows = [torch.as_tensor(r, dtype=torch.long).flatten().cpu() for r in prompts]
    else:
        rows = [torch.as_tensor(prompts, dtype=torch.long)]
    B, P = len(rows), max(len(r) for r in rows)
    ctx, M = model.config.seq_len, model.config.mask_id
    if P + gen_len > ctx:
        raise ValueError(f"prompt ({P} tokens) + gen-len ({gen_len}) = {P + gen_len} exceeds the model's context of {ctx} tokens")
    if any((r == M).any() for r in rows):
        raise ValueError(f"the prompt contains the mask token (id {M}); only the generated part is masked")
    x = torch.full((B, P + gen_len), M, dtype=torch.long)
    x[:, :P] = PAD_ID
    for r, ids in enumerate(rows):
        x[r, P - len(ids):P] = ids
    pad = torch.tensor([P - len(r) for r in rows], dtype=torch.long)
    return x.to(device), pad.to(device)


def canvas_attention(model, pad, L, P, block_len, end=None):
    """Attention pattern for a forward over the whole canvas (B, L): None (the model's default)
    or a bool mask (L, L) / (B, 1, L, L), True where query q may see key k.
      full attention: everything;  AR: causal (block_causal with blocks of 1);
      block diffusion: block-causal, blocks of block_len counted from column P, the first to
      fill (so the prompt's first block may be short);
      plus, with padding, no pad column as a key (a pad query sees itself, to stay defined);
      end (B,): no column from end[r] on as a key either (rows right-padded to a common width,
      mini_dlm/sampling/length.py)."""
    ar = model.config.objective == "ar"
    pattern = block_causal(L, 1, device=pad.device) if ar else \
        block_causal(L, block_len, P, pad.device) if model.config.block_size else None
    if not pad.any() and end is None:
        return None if ar else pattern
    col = torch.arange(L, device=pad.device)
    keep = col[None, :] >= pad[:, None]  # (B, L)
    if end is not None:
        keep = keep & (col[None, :] < end[:, None])
    keep = keep[:, None, None, :]  # (B, 1, 1, L)
    if pattern is not None:
        keep = keep & pattern
    return keep | torch.eye(L, dtype=torch.bool, device=pad.device)  # (B, 1, L, L)


def canvas_positions(pad, L):
    """RoPE positions (B, L): each row counts from its first real token."""
    return (torch.arange(L, device=pad.device)[None, :] - pad[:, None]).clamp(min=0)


# ---- how a step gets the block's logits: one strategy per cache -------------------------------

class NoCache:
    """Every step is a forward over the whole canvas (LLaDA). A strategy is made for a canvas
    x (B, L) with left pads pad (B,) whose blocks start at column start (all fixed before it)."""

    def __init__(self, model, x, pad, start, block_len):
        self.model, self.pad, self.passes = model, pad, 0
        self.mask = canvas_attention(model, pad, x.shape[1], start, block_len)
        self.pos = canvas_positions(pad, x.shape[1])

    def forward(self, x, lo, hi, **kw):
        """One counted forward over canvas columns [lo, hi)."""
        self.passes += 1
        return self.model(x[:, lo:hi], pos=self.pos[:, lo:hi], **kw)

    def logits(self, x, lo, hi, i):
        """The block's logits (B, hi - lo, V) at its step i."""
        return self.forward(x, 0, x.shape[1], attn_mask=self.mask, only=slice(lo, hi))

    def after_block(self, x, lo, hi):
        """The block [lo, hi) is finished, and another follows (nothing to do without a cache)."""


class PrefixCache(NoCache):
    """Fast-dLLM's prefix cache: the block's first step is a full forward that records the keys/
    values before the block; later steps run the block and everything after it."""
    suffix = False

    def logits(self, x, lo, hi, i):
        if i == 0:
            self.kv = KVCache(self.model.config.n_layer, self.pad, lo, suffix_from=hi if self.suffix else None)
            out = self.forward(x, 0, x.shape[1], attn_mask=self.mask, cache=self.kv, only=slice(lo, hi))
            self.kv.start_reading()  # the block's later steps read what this forward recorded
            return out
        return self.forward(x, lo, x.shape[1], cache=self.kv, only=slice(0, hi - lo))


class DualCache(PrefixCache):
    """Fast-dLLM's dual cache: as PrefixCache, but also the keys/values after the block are
    recorded, and later steps run the block alone."""
    suffix = True

    def logits(self, x, lo, hi, i):
        return super().logits(x, lo, hi, i) if i == 0 else self.forward(x, lo, hi, cache=self.kv)


class BlockCache(NoCache):
    """BD3-LM's exact block cache: the prompt is recorded once, every step runs the block alone,
    and a finished block is appended by one more pass over it, now clean."""

    def __init__(self, model, x, pad, start, block_len):
        super().__init__(model, x, pad, start, block_len)
        self.kv = None
        if start:  # the prompt (block-causal, like any clean block)
            self.kv = KVCache(model.config.n_layer, pad, start, capacity=x.shape[1])
            self.forward(x, 0, start, attn_mask=self.mask[..., :start, :start], cache=self.kv, only=slice(0, 0))
            self.kv.start_reading()

    def logits(self, x, lo, hi, i):
        return self.forward(x, lo, hi, cache=self.kv)

    def after_block(self, x, lo, hi):
        """Append the finished block's clean keys/values: one more pass over it."""
        if self.kv is None:  # an empty prompt: the first block starts the cache
            self.kv = KVCache(self.model.config.n_layer, self.pad, hi - lo, capacity=x.shape[1])
        else:
            self.kv.append_next()
        self.forward(x, lo, hi, cache=self.kv, only=slice(0, 0))
        self.kv.start_reading()


CACHES = {"none": NoCache, "prefix": PrefixCache, "dual": DualCache, "block": BlockCache}


# ---- the reverse process ----------------------------------------------------------------------

def num_transfer_tokens(n_masked, s):
    """n_masked (B,) masks in the block, s steps -> (B, s) tokens to commit at each step."""
    base, rem = n_masked[:, None] // s, n_masked[:, None] % s  # (B, 1)
    return base + (torch.arange(s, device=n_masked.device)[None, :] < rem).long()  # (B, s)


def block_spans(masked, block_len):
    """masked (B, L) bool -> the blocks [(lo, hi), ...]: block_len columns each, from the first
    masked column until the last masked one is covered (the last block stops at the canvas end)."""
    cols = masked.any(dim=0).nonzero().flatten()
    start, end, L = int(cols[0]), int(cols[-1]) + 1, masked.shape[1]
    return [(lo, min(lo + block_len, L)) for lo in range(start, end, block_len)]


def steps_per_block(n, steps):
    """n: the masks of each block (of the row with the most) -> the steps each block gets, its
    share in proportion to its masks, rounded up: s_j = ceil(steps * n_j / sum(n)). With
    [prompt, M * G] every block holds b masks, and this is steps / (G / b)."""
    total = sum(n)
    return [-(-steps * n_j // total) for n_j in n]


def step_noise(rule, generator, eligible):
    """The random inputs of one unmask call: (Gumbel seed, scores of remasking="random"), drawn
    from generator in the order scores, seed."""
    scores = None
    if rule.remasking == "random":
        scores = torch.rand(eligible.shape, dtype=torch.float64, device=eligible.device, generator=generator)
    return draw_seed(generator) if rule.temperature > 0 else 0, scores


@torch.no_grad()
def generate(model, prompts, opts=Decoding(), gen_len=128, generator=None, strategy=None):
    """Denoise [prompt, M * gen_len] block by block, yielding a Step after every step. prompts:
    as for make_canvas; opts: a Decoding (steps: default gen_len); the rest as for denoise."""
    check_schedule(gen_len, opts.steps or gen_len, opts.block_len)
    x, pad = make_canvas(prompts, gen_len, model)  # (B, L), (B,)
    yield from denoise(model, x, opts, pad, generator, strategy)


@torch.no_grad()
def denoise(model, x, opts=Decoding(), pad=None, generator=None, strategy=None):
    """Fill every mask of the canvas x (B, L) (a copy, on the model's device; pad (B,): its
    left-pad columns, default none), yielding a Step after every step. The blocks (block_spans)
    run left to right from the first masked column; opts.steps (default: one per mask) are
    shared by the blocks in proportion to their masks. generator draws the Gumbel seeds and
    random remasking's scores. strategy: how a step gets the block's logits, a class like
    CACHES[opts.cache] (the default), or a wrapper around one (mini_dlm/sampling/guidance.py)."""
    rule = opts.rule(model.config.mask_id, check_model(model, opts, guided=strategy is not None))
    check_canvas(model, x)
    M, L, device = model.config.mask_id, x.shape[1], next(model.parameters()).device
    x = x.to(device, copy=True)
    pad = torch.zeros(x.shape[0], dtype=torch.long, device=device) if pad is None else pad.to(device)
    spans = block_spans(x == M, opts.block_len)
    n = [int((x[:, lo:hi] == M).sum(dim=1).max()) for lo, hi in spans]  # masks per block
    per_block = steps_per_block(n, check_steps(opts.steps or sum(n), sum(n)))
    cache = (strategy or CACHES[opts.cache])(model, x, pad, spans[0][0], opts.block_len)
    for j, ((lo, hi), s) in enumerate(zip(spans, per_block)):
        eligible = x[:, lo:hi] == M  # (B, hi - lo): masked, in the block
        k = num_transfer_tokens(eligible.sum(dim=1), max(s, 1))  # (B, s): LLaDA's schedule (s = 0: no masks)
        for i in range(s):
            if not eligible.any():
                break  # threshold / factor finished the block early
            logits = cache.logits(x, lo, hi, i)  # (B, hi - lo, V): one forward pass
            before = eligible.clone()
            step_rule, k_i = commit_rule(rule, k[:, i], eligible, last=i == s - 1)
            unmask(logits, x[:, lo:hi], eligible, step_rule, k_i, *step_noise(rule, generator, eligible))
            yield Step(x, F.pad(before & ~eligible, (lo, L - hi)), j, cache.passes, pad, hi, not eligible.any())
        if j < len(spans) - 1:  # the last block: nothing reads its keys/values
            cache.after_block(x, lo, hi)


def commit_rule(rule, k_i, eligible, last):
    """(rule, k) of one unmask call: LLaDA's schedule commits its k_i (B,); Fast-dLLM's
    threshold or factor decides by itself, except on the block's last allowed pass (the steps
    cap), which commits whatever is left."""
    if rule.threshold is None and rule.factor is None:
        return rule, k_i
    if last:
        return replace(rule, threshold=None, factor=None), eligible.sum(dim=1)
    return rule, None


# ---- the AR baseline --------------------------------------------------------------------------

@torch.no_grad()
def generate_ar(model, prompts, gen_len=128, temperature=0.0, generator=None, kv_cache=True):
    """Left-to-right decoding for an objective="ar" model, one token per forward pass, yielding
    a Step after each. kv_cache=True: the first pass (the prefill) runs over the prompt and
    records every layer's keys/values; each later pass feeds only the newest token (B, 1), which
    attends to the cache and is then appended to it. A step computes O(1) new positions instead
    of the O(n) of the whole prefix (its attention still reads the n cached keys). Exact: under
    causal attention a token's keys/values never change. kv_cache=False recomputes the whole
    prefix at every step: the specification the cache is tested against (tests/test_ar_cache.py)."""
    if gen_len <= 0:
        raise ValueError(f"gen-len must be positive, got {gen_len}")
    x, pad = make_canvas(prompts, gen_len, model)  # (B, L)
    P, L = x.shape[1] - gen_len, x.shape[1]
    if P == 0 or (pad == P).any():
        raise ValueError("an AR model needs a non-empty prompt")
    mask, pos = canvas_attention(model, pad, L, P, 0), canvas_positions(pad, L)
    kv = KVCache(model.config.n_layer, pad, P, capacity=L) if kv_cache and gen_len > 1 else None
    for step in range(1, gen_len + 1):
        n = P + step - 1  # tokens so far
        if kv is None or step == 1:  # the whole prefix: every step without a cache, the prefill with one
            logits = model(x[:, :n], None if mask is None else mask[..., :n, :n], pos[:, :n], kv, only=slice(n - 1, n))
        else:  # only the newest token, attending to the cache (appended, unless no later step reads it)
            logits = model(x[:, n - 1:n], pos=pos[:, n - 1:n], cache=kv.append_next() if step < gen_len else kv)
        if kv is not None:
            kv.start_reading()
        x[:, n] = sample_x0(logits[:, 0], temperature, draw_seed(generator) if temperature > 0 else 0)  # (B,)
        yield Step(x, F.pad(torch.ones_like(pad, dtype=torch.bool)[:, None], (n, L - n - 1)), 0, step, pad, n + 1)
