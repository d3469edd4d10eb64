"""
Sampling: LLaDA's reverse process (Nie et al. 2025, Algorithm "low-confidence remasking" with
semi-autoregressive blocks), exactly as its reference generate(); and plain AR decoding for the
baseline model.

The canvas x = [prompt, M * gen_len] is cut into gen_len / block_len blocks, filled left to
right. Each block gets s = steps / n_blocks steps; if it holds n masks, step i commits
k_i = floor(n / s) + (1 if i < n mod s else 0) tokens. A step:
  logits = f(x)                                   one forward pass over the whole canvas
  x0     = argmax(logits + T * Gumbel)            the model's guess everywhere (T = 0: argmax)
  c      = softmax(logits)[x0] | U(0, 1)          confidence: low_confidence | random
  c      = -inf where x is not M or lies outside the current block
           (so x0 and c are only computed for the block: the rest would be discarded)
  commit the k_i positions of highest c (ties: lowest position first): x <- x0 there.
Committed tokens are never changed again ("remasking" keeps the rest masked).
"""

import torch
import torch.nn.functional as F

REMASKING = ("low_confidence", "random")


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


def sample_tokens(logits, temperature, generator=None):
    """argmax(logits + T * g), g ~ Gumbel(0, 1) drawn in float64: a sample from softmax(logits / T)
    (the Gumbel-max trick); T = 0 is the plain argmax (first index on ties)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    u = torch.rand(logits.shape, dtype=torch.float64, device=logits.device, generator=generator)
    return (logits.double() - temperature * torch.log(-torch.log(u))).argmax(dim=-1)


def confidence(logits, x0, remasking, generator=None):
    """Score of each position's guess x0 (B, L): higher = commit sooner."""
    if remasking == "low_confidence":
        p = F.softmax(logits.double(), dim=-1)  # untempered, float64 as in LLaDA
        return p.gather(-1, x0[..., None]).squeeze(-1)  # (B, L)
    if remasking == "random":
        return torch.rand(x0.shape, dtype=torch.float64, device=x0.device, generator=generator)
    raise ValueError(f"remasking must be one of {REMASKING}, got {remasking!r}")


def top_k_mask(c, k):
    """c (B, L) scores, k (B,) counts -> bool (B, L), True at each row's k highest scores.
    A stable descending sort puts the lowest position first among equal scores."""
    order = torch.sort(c, dim=1, descending=True, stable=True).indices  # (B, L)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(c.shape[1], device=c.device).expand_as(order))
    return rank < k[:, None]


def as_batch(prompt_ids, gen_len, model):
    """A list of ids, a list of equal-length lists, or a (P,) / (B, P) tensor -> (B, P) int64 on
    the model's device; ValueError unless prompt + gen_len fits the model's context."""
    x = torch.as_tensor(prompt_ids, dtype=torch.long, device=next(model.parameters()).device)
    x = x[None] if x.dim() == 1 else x
    P, ctx = x.shape[1], model.config.seq_len
    if P + gen_len > ctx:
        raise ValueError(f"prompt ({P} tokens) + gen-len ({gen_len}) = {P + gen_len} exceeds the model's context of {ctx} tokens")
    return x


@torch.no_grad()
def generate(model, prompt_ids, gen_len=128, steps=128, block_len=32, temperature=0.0,
             remasking="low_confidence", generator=None, on_step=None):
    """LLaDA reverse process. prompt_ids: (P,) or (B, P) ids without M.
    Returns x (B, P + gen_len) and stats {"forward_passes": int, "transfers": (S, B) tokens
    committed per step}. on_step(step, block, x, committed) is called after every step."""
    check_schedule(gen_len, steps, block_len)
    if remasking not in REMASKING:
        raise ValueError(f"remasking must be one of {REMASKING}, got {remasking!r}")
    prompt = as_batch(prompt_ids, gen_len, model)  # (B, P)
    B, P = prompt.shape
    M = model.config.mask_id
    if (prompt == M).any():
        raise ValueError(f"the prompt contains the mask token (id {M}); only the generated part is masked")
    x = torch.cat([prompt, torch.full((B, gen_len), M, dtype=torch.long, device=prompt.device)], dim=1)  # (B, L)
    n_blocks, s = gen_len // block_len, steps // (gen_len // block_len)
    transfers, step = [], 0
    for b in range(n_blocks):
        lo, hi = P + b * block_len, P + (b + 1) * block_len
        k = num_transfer_tokens((x[:, lo:hi] == M).sum(dim=1), s)  # (B, s)
        for i in range(s):
            logits = model(x)[:, lo:hi]  # (B, b, V): the model reads the whole canvas;
            xb = x[:, lo:hi]             # only the current block can be committed
            x0 = sample_tokens(logits, temperature, generator)  # (B, b)
            c = confidence(logits, x0, remasking, generator).masked_fill(xb != M, float("-inf"))
            commit = top_k_mask(c, k[:, i])  # (B, b)
            x[:, lo:hi] = torch.where(commit, x0, xb)
            transfers.append(commit.sum(dim=1))
            step += 1
            if on_step is not None:
                on_step(step, b, x, F.pad(commit, (lo, x.shape[1] - hi)))
    return x, {"forward_passes": step, "transfers": torch.stack(transfers)}


@torch.no_grad()
def generate_ar(model, prompt_ids, gen_len=128, temperature=0.0, generator=None, on_step=None):
    """Left-to-right decoding for an objective="ar" model, one token per forward pass.
    No KV cache yet: every step re-reads the whole prefix. Same return convention as generate()."""
    if gen_len <= 0:
        raise ValueError(f"gen-len must be positive, got {gen_len}")
    x = as_batch(prompt_ids, gen_len, model)  # (B, P)
    if x.shape[1] == 0:
        raise ValueError("an AR model needs a non-empty prompt")
    for step in range(1, gen_len + 1):
        nxt = sample_tokens(model(x)[:, -1], temperature, generator)  # (B,)
        x = torch.cat([x, nxt[:, None]], dim=1)
        if on_step is not None:
            on_step(step, 0, x, None)
    ones = torch.ones(gen_len, x.shape[0], dtype=torch.long, device=x.device)
    return x, {"forward_passes": gen_len, "transfers": ones}
