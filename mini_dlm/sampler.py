"""
Sampling: LLaDA's reverse process (Nie et al. 2025) with Fast-dLLM's parallel decoding and KV
caches (Wu et al. 2025) and BD3-LM's exact block cache (Arriola et al. 2025); plain left-to-right
decoding with an exact KV cache for the AR baseline.

Canvas. x = [prompt, M * gen_len]. The generated part is cut into blocks of block_len, filled
left to right (semi-autoregressive). Prompts of different lengths are left-padded: pad columns
are hidden from attention and RoPE positions start at each row's first real token, so every
row computes what it would alone.

A step, for the current block (mini_dlm/ops.py: unmask does everything after the forward):
  logits = f(x)                          one forward pass (only over the block with a cache)
  x0     = argmax(logits + T * Gumbel)   the model's guess (T = 0: argmax)
  c      = confidence of x0              low_confidence | margin | entropy | random
  commit, among the block's masked positions:
    schedule  (LLaDA)      the k_i best, k_i from the schedule below
    threshold (Fast-dLLM)  {c >= tau} plus the best one
    factor    (Fast-dLLM)  the longest best-first run with c(n) >= 1 - f / (n + 1), at least one
Committed tokens never change again.

Schedule. Each block gets s = steps / n_blocks steps; if it holds n masks, step i commits
k_i = floor(n / s) + (1 if i < n mod s else 0). With a threshold or factor, s only caps the
passes per block: pass s commits whatever is left. Every pass commits at least one token per
row, so with steps = gen_len (s = block_len) the cap never binds.

Caches (mini_dlm/kvcache.py), per block:
  none    every step is a forward over the whole canvas
  prefix  step 1 is a full forward that also caches keys/values before the block; later
          steps run the block and everything after it       (Fast-dLLM; approximate)
  dual    as prefix, but also caches after the block; later steps run only the block
                                                             (Fast-dLLM; approximate)
  block   block-diffusion models: the prompt is cached once, every step runs only the block,
          and a finished block is written to the cache by one more pass (BD3-LM; exact)
  AR      generate_ar: a prefill over the prompt, then every step runs only the newest token
          and appends its keys/values (causal attention; exact)
"""

import torch
import torch.nn.functional as F

from mini_dlm.kvcache import KVCache
from mini_dlm.ops import KINDS, sample_x0, unmask

REMASKING = KINDS
CACHES = ("none", "prefix", "dual", "block")
PAD_ID = 0  # what fills pad columns; they are never attended to, so any id but M would do


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


def num_transfer_tokens(n_masked, s):
    """n_masked (B,) masks in the block, s steps -> (B, s) tokens to commit at each step."""
    base, rem = n_masked[:, None] // s, n_masked[:, None] % s  # (B, 1)
    return base + (torch.arange(s, device=n_masked.device)[None, :] < rem).long()  # (B, s)


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
      full attention: everything;  AR: causal;
      block diffusion: block-causal, blocks of block_len counted from the generation start P
      (so the prompt's first block may be short);
      plus, with padding, no pad column as a key (a pad query sees itself, to stay defined);
      end (B,): no column from end[r] on as a key either (rows right-padded to a common width,
      mini_dlm/dynamic.py)."""
    col = torch.arange(L, device=pad.device)
    pattern = None
    if model.config.objective == "ar":
        pattern = col[:, None] >= col[None, :]
    elif model.config.block_size:
        blk = torch.div(col - P, block_len, rounding_mode="floor")
        pattern = blk[:, None] >= blk[None, :]
    if not pad.any() and end is None:
        return None if model.config.objective == "ar" else pattern
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


def draw_seed(generator):
    """A 62-bit seed for ops.unmask's counter-based Gumbel noise, from the caller's generator."""
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(2 ** 62, (), generator=generator, device=device))


def check_options(model, block_len, remasking, threshold, factor, cache):
    cfg = model.config
    if cfg.objective != "mdm":
        raise ValueError("generate() needs a diffusion checkpoint; use generate_ar() for an AR model")
    if remasking not in REMASKING:
        raise ValueError(f"remasking must be one of {REMASKING}, got {remasking!r}")
    if cache not in CACHES:
        raise ValueError(f"cache must be one of {CACHES}, got {cache!r}")
    if threshold is not None and factor is not None:
        raise ValueError("give --threshold or --factor, not both")
    if factor is not None and not factor > 0:
        raise ValueError(f"--factor must be > 0, got {factor}")
    if cfg.block_size:
        if block_len != cfg.block_size:
            raise ValueError(f"this block-diffusion checkpoint was trained with blocks of {cfg.block_size}: use --block-len {cfg.block_size}")
        if cache in ("prefix", "dual"):
            raise ValueError(f"--cache {cache} is for full-attention checkpoints; a block-diffusion checkpoint uses --cache block (exact)")
    elif cache == "block":
        raise ValueError("--cache block needs a block-diffusion checkpoint (train_tiny.py --block-size N); use prefix or dual")


@torch.no_grad()
def generate(model, prompts, gen_len=128, steps=128, block_len=32, temperature=0.0, remasking="low_confidence",
             threshold=None, factor=None, cache="none", generator=None, on_step=None, stop_at=None):
    """Denoise [prompt, M * gen_len] block by block (see the module docstring).
    prompts: as for make_canvas. threshold / factor: Fast-dLLM's rules instead of the schedule.
    generator: draws the Gumbel seeds and the random-remasking scores.
    Returns x (B, Pmax + gen_len), left-padded, and stats {"forward_passes": int,
    "transfers": (steps taken, B) tokens committed per step, "pad": (B,) pad columns}.
    on_step(step, block, x, committed (B, Pmax + gen_len) bool) runs after every step.
    stop_at: a token id (end-of-text): stop after the first block that leaves every row with it
    among its generated tokens, and return the canvas up to that block. Exact: a finished
    block never changes, and the blocks before it were computed on the same canvas. For a
    block-diffusion model this is growth block by block up to gen_len (variable length)."""
    check_schedule(gen_len, steps, block_len)
    check_options(model, block_len, remasking, threshold, factor, cache)
    x, pad = make_canvas(prompts, gen_len, model)  # (B, L), (B,)
    B, L = x.shape
    P, M = L - gen_len, model.config.mask_id
    mask, pos = canvas_attention(model, pad, L, P, block_len), canvas_positions(pad, L)
    n_blocks, s = gen_len // block_len, steps // (gen_len // block_len)
    mode = {"banned": [M], "kind": remasking, "temperature": temperature}
    kv, passes, step, transfers = None, 0, 0, []

    if cache == "block" and P > 0:  # the prompt's keys/values, once (block-causal, like any clean block)
        kv_out = []
        model(x[:, :P], None if mask is None else mask[..., :P, :P], pos[:, :P], kv_out=kv_out, only=slice(0, 0))
        kv, passes = KVCache.from_forward(kv_out, pad, P, capacity=L), passes + 1

    for j in range(n_blocks):
        lo, hi = P + j * block_len, P + (j + 1) * block_len
        eligible = x[:, lo:hi] == M  # (B, b): masked, in the block
        k = num_transfer_tokens(eligible.sum(dim=1), s)  # (B, s), the LLaDA schedule
        for i in range(s):
            if not eligible.any():
                break  # threshold / factor finished the block early
            # -- one forward pass -> logits of the block (B, b, V)
            if cache == "none":
                logits = model(x, mask, pos, only=slice(lo, hi))
            elif cache in ("prefix", "dual") and i == 0:  # full pass; cache what lies outside the block
                kv_out = []
                logits = model(x, mask, pos, kv_out=kv_out, only=slice(lo, hi))
                kv = KVCache.from_forward(kv_out, pad, lo, suffix_from=hi if cache == "dual" else None)
            elif cache == "prefix":
                logits = model(x[:, lo:], pos=pos[:, lo:], cache=kv, only=slice(0, block_len))
            else:  # dual, block: only the block is recomputed
                logits = model(x[:, lo:hi], pos=pos[:, lo:hi], cache=kv)
            passes += 1
            # -- commit some guesses, in place in x[:, lo:hi] and eligible
            before = eligible.clone() if on_step is not None else None
            if remasking == "random":
                mode["scores"] = torch.rand(eligible.shape, dtype=torch.float64, device=x.device, generator=generator)
            if temperature > 0:
                mode["seed"] = draw_seed(generator)
            if threshold is None and factor is None:
                n = unmask(logits, x[:, lo:hi], eligible, k=k[:, i], **mode)
            elif i == s - 1:  # the steps cap: the last allowed pass commits the rest
                n = unmask(logits, x[:, lo:hi], eligible, k=eligible.sum(dim=1), **mode)
            elif threshold is not None:
                n = unmask(logits, x[:, lo:hi], eligible, tau=threshold, **mode)
            else:
                n = unmask(logits, x[:, lo:hi], eligible, factor=factor, **mode)
            transfers.append(n)
            step += 1
            if on_step is not None:
                on_step(step, j, x, F.pad(before & ~eligible, (lo, L - hi)))
        if stop_at is not None and (x[:, P:hi] == stop_at).any(dim=1).all():
            x = x[:, :hi]  # every row has ended: what later blocks write would be cut off anyway
            break
        if cache == "block" and j < n_blocks - 1:  # the finished block's clean keys/values
            kv_out = []
            model(x[:, lo:hi], pos=pos[:, lo:hi], cache=kv, kv_out=kv_out, only=slice(0, 0))
            passes += 1
            if kv is None:  # empty prompt: this is the first cached block
                kv = KVCache.from_forward(kv_out, pad, block_len, capacity=L)
            else:
                kv.append(kv_out)
    return x, {"forward_passes": passes, "transfers": torch.stack(transfers), "pad": pad}


@torch.no_grad()
def generate_ar(model, prompts, gen_len=128, temperature=0.0, generator=None, on_step=None, kv_cache=True):
    """Left-to-right decoding for an objective="ar" model, one token per forward pass.
    kv_cache=True: the first pass (the prefill) runs over the prompt and caches every layer's
    keys/values; each later pass feeds only the newest token (B, 1), which attends to the cache
    and is then appended to it. A step computes O(1) new positions instead of the O(n) of the
    whole prefix (its attention still reads the n cached keys). Exact: under causal attention
    a token's keys/values never change. kv_cache=False recomputes the whole prefix at every
    step: the specification the cache is tested against (tests/test_ar_cache.py).
    Same return convention as generate()."""
    if gen_len <= 0:
        raise ValueError(f"gen-len must be positive, got {gen_len}")
    x, pad = make_canvas(prompts, gen_len, model)  # (B, L)
    B, L = x.shape
    P = L - gen_len
    if P == 0 or (pad == P).any():
        raise ValueError("an AR model needs a non-empty prompt")
    mask, pos = canvas_attention(model, pad, L, P, 0), canvas_positions(pad, L)
    kv = None
    for step in range(1, gen_len + 1):
        n = P + step - 1  # tokens so far
        kv_out = [] if kv_cache and step < gen_len else None  # the last pass's keys/values would go unread
        if kv is None:  # the whole prefix: every step without a cache, the prefill with one
            m = None if mask is None else mask[..., :n, :n]
            logits = model(x[:, :n], m, pos[:, :n], kv_out=kv_out, only=slice(n - 1, n))  # (B, 1, V)
            if kv_out is not None:
                kv = KVCache.from_forward(kv_out, pad, n, capacity=L)
        else:  # only the newest token, attending to the cache
            logits = model(x[:, n - 1:n], pos=pos[:, n - 1:n], cache=kv, kv_out=kv_out)  # (B, 1, V)
            if kv_out is not None:
                kv.append(kv_out)
        x[:, n] = sample_x0(logits[:, 0], temperature, draw_seed(generator) if temperature > 0 else 0)
        if on_step is not None:
            on_step(step, 0, x, F.pad(torch.ones(B, 1, dtype=torch.bool, device=x.device), (n, L - n - 1)))
    ones = torch.ones(gen_len, B, dtype=torch.long, device=x.device)
    return x, {"forward_passes": gen_len, "transfers": ones, "pad": pad}
