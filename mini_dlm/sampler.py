"""
Sampling: LLaDA's reverse process (Nie et al. 2025) with Fast-dLLM's parallel decoding and KV
caches (Wu et al. 2025) and BD3-LM's exact block cache (Arriola et al. 2025); plain left-to-right
decoding with an exact KV cache for the AR baseline. The exact rules: notes/00-spec.md 3-5.

Canvas. x = [prompt, M * gen_len] (generate), or any canvas with masks where text is wanted
(denoise; mini_dlm/sampling/infill.py builds one from a template with blanks). From the first masked
column until the last mask, the canvas is cut into blocks of block_len, filled left to right
(semi-autoregressive); only masked positions are eligible, so every other token stays. Prompts
of different lengths are left-padded: pad columns are hidden from attention and RoPE positions
start at each row's first real token, so every row computes what it would alone.

A step, for the current block (mini_dlm/ops.py: unmask does everything after the forward):
  logits = f(x)                          one forward pass (only over the block with a cache)
  x0     = argmax(logits + T * Gumbel)   the model's guess (T = 0: argmax)
  c      = confidence of x0              low_confidence | margin | entropy | random
  commit, among the block's masked positions, best first (c(1) >= c(2) >= ...):
    schedule  (LLaDA)      the k_i best, k_i from the schedule below
    threshold (Fast-dLLM)  {c >= tau} plus the best one
    factor    (Fast-dLLM)  rank n passes if c(n) >= 1 - f / (n + 1); factor_rule picks
       "fastdllm" (default)  as Fast-dLLM's code: the ranks before the first that fails, plus
                             that one if it is rank 1 or the last rank (two masks left: both go)
       "strict"              the longest run that passes, at least c(1)
Committed tokens never change again. LLaDA's two end-of-text switches: logits_eos_inf bans
end-of-text from the guesses, confidence_eos_eot_inf scores its guesses -inf (they go last).

Schedule. Block j, holding n_j masks, gets s_j = ceil(steps * n_j / sum(n)) steps (for
[prompt, M * gen_len], steps / n_blocks); step i commits k_i = floor(n_j / s_j) + (1 if
i < n_j mod s_j else 0). With a threshold or factor, s_j only caps the passes per block: pass
s_j commits whatever is left. Every pass commits at least one token per row, so with steps =
the number of masks (one per step, the default) the cap never binds. With cfg_scale > 0 each
forward also runs an unconditional half of the batch (mini_dlm/sampling/guidance.py).

How a step gets the block's logits is a strategy (CACHES, mini_dlm/kvcache.py):
  none    every step is a forward over the whole canvas
  prefix  step 1 is a full forward that also caches keys/values before the block; later
          steps run the block and everything after it       (Fast-dLLM; approximate)
  dual    as prefix, but also caches after the block; later steps run only the block
                                                             (Fast-dLLM; approximate)
  block   block-diffusion models: the prompt is cached once, every step runs only the block,
          and a finished block is written to the cache by one more pass (BD3-LM; exact)

generate, denoise and generate_ar are generators: they yield a Step after every forward pass that
commits tokens, so a caller can watch (sample.py --show-steps) or stop early (at end-of-text);
finish() runs one to the end and returns the canvas and its statistics.
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from mini_dlm.gumbel import draw_seed, sample_x0
from mini_dlm.sampling.guidance import Guided, check_cfg_scale
from mini_dlm.kvcache import KVCache
from mini_dlm.model import block_causal
from mini_dlm.plumbing.checks import check_factor, check_remasking
from mini_dlm.ops import unmask

PAD_ID = 0  # what fills pad columns; they are never attended to, so any id but M would do


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


def stop_at(steps, token, start):
    """Pass a sampler's steps on until a block finishes that leaves every row with `token` (an
    end-of-text) among its generated tokens (columns start ..); that last Step's canvas is cut
    after the block. Exact: a finished block never changes, and the blocks before it were
    computed on the same canvas. For a block-diffusion model this is growth block by block."""
    for step in steps:
        end = step.block_end
        if step.block_done and (step.x[:, start:end] == token).any(dim=1).all():
            yield Step(step.x[:, :end], step.committed[:, :end], step.block, step.passes, step.pad, end, True, step.info)
            return
        yield step


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

    def block_done(self, x, lo, hi):
        pass


class PrefixCache(NoCache):
    """Fast-dLLM's prefix cache: the block's first step is a full forward that records the keys/
    values before the block; later steps run the block and everything after it."""
    suffix = False

    def logits(self, x, lo, hi, i):
        if i == 0:
            self.kv = KVCache(self.model.config.n_layer, self.pad, lo, suffix_from=hi if self.suffix else None)
            return self.forward(x, 0, x.shape[1], attn_mask=self.mask, cache=self.kv, only=slice(lo, hi))
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

    def logits(self, x, lo, hi, i):
        return self.forward(x, lo, hi, cache=self.kv)

    def block_done(self, x, lo, hi):
        """The block is finished (and is not the last): append its clean keys/values."""
        if self.kv is None:  # an empty prompt: the first block starts the cache
            self.kv = KVCache(self.model.config.n_layer, self.pad, hi - lo, capacity=x.shape[1])
        else:
            self.kv.append_next()
        self.forward(x, lo, hi, cache=self.kv, only=slice(0, 0))


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


def commit_rule(k_i, eligible, last, threshold, factor, factor_rule):
    """unmask's rule for one step: LLaDA's schedule (k_i (B,)), or Fast-dLLM's threshold or
    factor (under factor_rule), whose last allowed pass (the steps cap) commits whatever is left."""
    if threshold is None and factor is None:
        return {"k": k_i}
    if last:
        return {"k": eligible.sum(dim=1)}
    return {"threshold": threshold} if threshold is not None else {"factor": factor, "factor_rule": factor_rule}


def step_noise(remasking, temperature, generator, eligible):
    """The random inputs of one unmask call: the scores of remasking="random" and the Gumbel seed."""
    noise = {}
    if remasking == "random":
        noise["scores"] = torch.rand(eligible.shape, dtype=torch.float64, device=eligible.device, generator=generator)
    if temperature > 0:
        noise["seed"] = draw_seed(generator)
    return noise


def strategy(cache, model, x, pad, start, block_len, cfg_scale):
    """How each step gets the block's logits: the cache's strategy, run on a doubled batch when
    guided (mini_dlm/sampling/guidance.py)."""
    if cfg_scale:
        return Guided(CACHES[cache], model, x, pad, start, block_len, cfg_scale)
    return CACHES[cache](model, x, pad, start, block_len)


def end_of_text(model, eot_id=None):
    """The end-of-text id: eot_id, or by default the id just below the mask token (as in
    mini_dlm's tokenizer). ValueError unless it is a token id other than the mask token."""
    cfg = model.config
    eot = cfg.mask_id - 1 if eot_id is None else eot_id
    if not 0 <= eot < cfg.vocab_size or eot == cfg.mask_id:
        raise ValueError(f"eot_id must be a token id in [0, {cfg.vocab_size}) other than the mask token, got {eot}")
    return eot


@torch.no_grad()
def generate(model, prompts, *, gen_len=128, steps=None, block_len=32, **options):
    """Denoise [prompt, M * gen_len] block by block, yielding a Step after every step (see the
    module docstring). prompts: as for make_canvas. steps: default gen_len. options (temperature,
    remasking, threshold, factor, ...): as for denoise, which runs the canvas."""
    steps = steps or gen_len
    check_schedule(gen_len, steps, block_len)
    x, pad = make_canvas(prompts, gen_len, model)  # (B, L), (B,)
    yield from denoise(model, x, pad, steps=steps, block_len=block_len, **options)


@torch.no_grad()
def denoise(model, x, pad=None, *, steps=None, block_len=32, temperature=0.0, remasking="low_confidence",
            threshold=None, factor=None, factor_rule="fastdllm", cache="none", cfg_scale=0.0, generator=None,
            logits_eos_inf=False, confidence_eos_eot_inf=False, eot_id=None):
    """Fill every mask of the canvas x (B, L) (a copy, on the model's device; pad (B,): its
    left-pad columns, default none), yielding a Step after every step. The blocks (block_spans)
    run left to right from the first masked column; only masked positions are eligible, every
    other token stays as it is. steps: the total, default the number of masks (one per step),
    shared by the blocks in proportion to their masks, rounded up (steps_per_block). threshold / factor:
    Fast-dLLM's rules instead of the schedule; factor_rule: "fastdllm" (its code) or "strict".
    cfg_scale: classifier-free guidance (mini_dlm/sampling/guidance.py). generator: draws the Gumbel seeds
    and the random remasking scores. LLaDA's switches, for the end-of-text id (end_of_text(model,
    eot_id)): logits_eos_inf bans it from the guesses; confidence_eos_eot_inf scores a guess of
    it -inf, so it commits after the block's others."""
    check_options(model, block_len, remasking, threshold, factor, factor_rule, cache, cfg_scale)
    device, M, L = next(model.parameters()).device, model.config.mask_id, x.shape[1]
    eot = end_of_text(model, eot_id)
    banned, demote = ([M, eot] if logits_eos_inf else [M]), ([eot] if confidence_eos_eot_inf else [])
    x = x.to(device, copy=True)
    pad = torch.zeros(x.shape[0], dtype=torch.long, device=device) if pad is None else pad.to(device)
    spans = check_canvas(model, x, block_len)
    n = [int((x[:, lo:hi] == M).sum(dim=1).max()) for lo, hi in spans]  # masks per block
    per_block = steps_per_block(n, check_steps(steps or sum(n), sum(n)))
    blocks = strategy(cache, model, x, pad, spans[0][0], block_len, cfg_scale)  # how a step gets the logits
    for j, ((lo, hi), s) in enumerate(zip(spans, per_block)):
        eligible = x[:, lo:hi] == M  # (B, hi - lo): masked, in the block
        k = num_transfer_tokens(eligible.sum(dim=1), max(s, 1))  # (B, s): LLaDA's schedule (s = 0: no masks)
        for i in range(s):
            if not eligible.any():
                break  # threshold / factor finished the block early
            logits = blocks.logits(x, lo, hi, i)  # (B, hi - lo, V): one forward pass
            before = eligible.clone()
            rule = commit_rule(k[:, i], eligible, i == s - 1, threshold, factor, factor_rule)
            unmask(logits, x[:, lo:hi], eligible, **rule, remasking=remasking, temperature=temperature, banned=banned,
                   demote=demote, **step_noise(remasking, temperature, generator, eligible))  # guess, score, commit
            yield Step(x, F.pad(before & ~eligible, (lo, L - hi)), j, blocks.passes, pad, hi, not eligible.any())
        if j < len(spans) - 1:  # the last block: nothing reads its keys/values
            blocks.block_done(x, lo, hi)


def check_schedule(gen_len, steps, block_len):
    """ValueError unless the LLaDA schedule is well defined."""
    if min(gen_len, steps, block_len) <= 0:
        raise ValueError(f"gen-len, steps and block-len must be positive, got {gen_len}, {steps}, {block_len}")
    if gen_len % block_len:
        raise ValueError(f"--gen-len {gen_len} is not divisible by --block-len {block_len}")
    n_blocks = gen_len // block_len
    if steps % n_blocks:
        raise ValueError(f"--steps {steps} is not a multiple of the number of blocks ({n_blocks} = gen-len / block-len)")
    if steps > gen_len:
        raise ValueError(f"--steps {steps} is larger than --gen-len {gen_len}: some steps would commit nothing")


def check_canvas(model, x, block_len):
    """ValueError unless x (B, L) fits the context and has a mask -> block_spans(x == M)."""
    ctx, M = model.config.seq_len, model.config.mask_id
    if x.shape[1] > ctx:
        raise ValueError(f"the canvas ({x.shape[1]} tokens) exceeds the model's context of {ctx} tokens")
    if not (x == M).any():
        raise ValueError("the canvas has no mask token: nothing to fill")
    return block_spans(x == M, block_len)


def check_steps(steps, n_masks):
    """ValueError unless 1 <= steps <= n_masks (a step that commits nothing is no step) -> steps."""
    if not 0 < steps <= n_masks:
        raise ValueError(f"--steps must be between 1 and the {n_masks} masked tokens, got {steps}")
    return steps


def check_options(model, block_len, remasking, threshold, factor, factor_rule, cache, cfg_scale):
    """ValueError unless the sampler's options fit each other and the model."""
    cfg = model.config
    if cfg.objective != "mdm":
        raise ValueError("generate() needs a diffusion checkpoint; use generate_ar() for an AR model")
    if block_len <= 0:
        raise ValueError(f"block-len must be positive, got {block_len}")
    check_remasking(remasking)
    check_cfg_scale(cfg_scale)
    if cache not in CACHES:
        raise ValueError(f"cache must be one of {tuple(CACHES)}, got {cache!r}")
    if threshold is not None and factor is not None:
        raise ValueError("give --threshold or --factor, not both")
    check_factor(factor, factor_rule)
    if cfg.block_size and block_len != cfg.block_size:
        raise ValueError(f"this block-diffusion checkpoint was trained with blocks of {cfg.block_size}: use --block-len {cfg.block_size}")
    if cfg.block_size and cache in ("prefix", "dual"):
        raise ValueError(f"--cache {cache} is for full-attention checkpoints; a block-diffusion checkpoint uses --cache block (exact)")
    if not cfg.block_size and cache == "block":
        raise ValueError("--cache block needs a block-diffusion checkpoint (train_tiny.py --block-size N); use prefix or dual")


# ---- the AR baseline --------------------------------------------------------------------------

@torch.no_grad()
def generate_ar(model, prompts, *, gen_len=128, temperature=0.0, generator=None, kv_cache=True):
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
        x[:, n] = sample_x0(logits[:, 0], temperature, draw_seed(generator) if temperature > 0 else 0)  # (B,)
        yield Step(x, F.pad(torch.ones_like(pad, dtype=torch.bool)[:, None], (n, L - n - 1)), 0, step, pad, n + 1)
