"""
Masked diffusion: the forward (noising) process and the ELBO loss (LLaDA, Nie et al. 2025;
MDLM, Sahoo et al. 2024), plus the AR next-token loss of the same model for the baseline.

Forward process. Draw t ~ U(0, 1) per sequence, set p = (1 - eps) t + eps, and replace every
token by M independently with probability p. At t -> 0 the text is clean, at t = 1 all masks.

Loss. The model predicts x0 at masked positions. Weighting each masked cross-entropy by 1/p
turns the average into an upper bound on -log p(x0) (the negative ELBO):
    loss = sum_{masked (b, i)} CE(f(x_t)[b, i], x0[b, i]) / p[b]  /  (B * L)
Why 1/p: if k of the L tokens are masked, integrating over t gives that state the weight
int_0^1 (1/t) C(L,k) t^k (1-t)^(L-k) k dt = 1 for every k, so the loss is the expected cost of
revealing the tokens one at a time in a random order (an any-order AR model), which bounds
the NLL. Without 1/p (a common shortcut) state k gets weight k / (L + 1): heavily masked, hard
states dominate, and the number is no longer a likelihood bound (notes/02 works this out).

Block diffusion (BD3-LM, Arriola et al. 2025; config.block_size = b > 0). The window is cut
into blocks of b; each block gets its own t and is denoised given the *clean* earlier blocks,
so the bound is a sum over blocks, and a sampler can cache finished blocks exactly. All blocks
train in one forward over the 2L sequence [x_t ; x0] with the attention mask of
bd3_attention_mask; the loss is read off the x_t half.

Variants of later chapters plug their own loss(model, batch, t, u) into loss_fn and evaluate:
a task's answer given its prompt (mini_dlm/tasks/rows.py), complementary masks
(mini_dlm/conversion/complementary.py).
"""

import math

import torch
import torch.nn.functional as F

from mini_dlm.model import block_causal

EPS = 1e-3  # smallest mask probability, keeps 1/p finite


def sample_t(batch_size, generator=None, device="cpu"):
    """Stratified ("antithetic") t in (0, 1): one uniform offset u, then t_b = (u + b / B) mod 1.
    Each t is still U(0, 1), but the batch covers [0, 1) evenly, which lowers the variance
    of the loss (MDLM's low-discrepancy sampler)."""
    u = torch.rand((), generator=generator, device=device)
    return (u + torch.arange(batch_size, device=device) / batch_size) % 1.0  # (B,)


def forward_process(x0, t, mask_id, eps=EPS, generator=None, u=None):
    """x0 (B, L), t (B,) per row or (B, L) per token -> x_t (B, L) with tokens replaced by M
    w.p. p; masked (B, L) bool; p = (1 - eps) t + eps, shaped like t. u: the uniforms (B, L)
    that decide the masks (masked where u < p); drawn here when None."""
    p = (1 - eps) * t + eps  # (B,) or (B, L)
    if u is None:
        u = torch.rand(x0.shape, generator=generator, device=x0.device)
    masked = u < (p[:, None] if p.dim() == 1 else p)
    x_t = torch.where(masked, torch.full_like(x0, mask_id), x0)
    return x_t, masked, p


def elbo_loss(logits, x0, masked, p, n_tokens=None):
    """The negative-ELBO estimate above, in nats per token. logits (B, L, V), x0/masked (B, L),
    p (B,) per row or (B, L) per token. n_tokens: the tokens the sum is shared by, default B * L."""
    B, L = x0.shape
    ce = F.cross_entropy(logits[masked].float(), x0[masked], reduction="none")  # (n_masked,)
    weight = (1.0 / (p[:, None] if p.dim() == 1 else p)).expand(B, L)[masked]  # (n_masked,): 1/p of each
    return (ce * weight).sum() / (n_tokens or B * L)


def bd3_attention_mask(L, b, device="cpu"):
    """(2L, 2L) bool for the sequence [x_t ; x0] of two length-L windows cut into blocks of b
    (notes/appendix-spec.md section 2; True = query may see key):
        x_t -> x_t   same block          (a noisy block sees itself)
        x_t -> x0    earlier blocks      (... and the clean blocks before it)
        x0  -> x0    same or earlier     (the clean stream is block-causal)
        x0  -> x_t   never
    The x0 half is what a sampler's cache holds; the x_t half is the block being denoised."""
    causal = block_causal(L, b, device=device)  # (L, L): blk(q) >= blk(k)
    same = causal & causal.T  # blk(q) == blk(k)
    top = torch.cat([same, causal & ~same], dim=1)  # (L, 2L): x_t queries
    bottom = torch.cat([torch.zeros(L, L, dtype=torch.bool, device=device), causal], dim=1)  # x0 queries
    return torch.cat([top, bottom], dim=0)


def x0_logits(model, x_t, x0):
    """The model's logits (B, L, V) for x0 given x_t. Full attention: f(x_t). Block diffusion:
    one forward over [x_t ; x0] with bd3_attention_mask, both halves at positions 0..L-1,
    keeping the x_t half: every block sees its noisy self and the clean blocks before it."""
    b = model.config.block_size
    if not b:
        return model(x_t)
    L = x_t.shape[1]
    pos = torch.arange(L, device=x_t.device).repeat(2)  # (2L,)
    return model(torch.cat([x_t, x0], dim=1), bd3_attention_mask(L, b, x_t.device), pos)[:, :L]


def mdm_loss(model, x0, t, u):
    """The mask predictor's loss on windows x0 (B, L) noised at times t ((B,) or (B, L)), a
    token masked where its uniform u (B, L) < p."""
    x_t, masked, p = forward_process(x0, t, model.config.mask_id, u=u)
    return elbo_loss(x0_logits(model, x_t, x0), x0, masked, p)


def ar_loss(model, x):
    """Next-token cross-entropy on windows x (B, L+1): predict x[:, 1:] from x[:, :-1]."""
    logits = model(x[:, :-1])  # (B, L, V), causal
    return F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten())


def loss_at(model, batch, t, u):
    """The loss of windows batch (B, L + 1) under the noise t, u: mdm_loss of batch[:, :-1], or
    for an AR model (t, u None) its next-token loss."""
    if model.config.objective == "ar":
        return ar_loss(model, batch)
    return mdm_loss(model, batch[:, :-1], t, u)


def draw_noise(model, x0, generator=None, shard=(0, 1)):
    """t and the mask uniforms u of a training batch x0 (B, L): t per row, or per block of
    block_size (BD3-LM), stratified over the batch (sample_t). shard = (rank, n) under DDP
    (train_tiny.py): x0 is rows rank*B .. (rank+1)*B - 1 of a global batch of n*B rows; the noise
    is drawn for the global batch and the same rows kept, so n ranks together draw exactly what
    one process would."""
    B, L = x0.shape
    rank, n = shard
    rows = slice(rank * B, (rank + 1) * B)  # this shard's rows of the global draws
    b = model.config.block_size
    if b:  # one t per block (BD3-LM), stratified over all n * B * L / b blocks, spread to its tokens
        t = sample_t(n * B * (L // b), generator, x0.device).view(n * B, L // b)[rows].repeat_interleave(b, dim=1)  # (B, L)
    else:
        t = sample_t(n * B, generator, x0.device)[rows]  # (B,)
    u = torch.rand((n * B, L), generator=generator, device=x0.device)[rows]  # (B, L): decides the masks
    return t, u


def loss_fn(model, batch, generator=None, shard=(0, 1), loss=loss_at):
    """The training loss of a batch of windows (B, seq_len + 1): fresh noise (draw_noise; none
    for an AR model), then loss(model, batch, t, u). Each rank's loss is a mean over its B rows
    (elbo_loss's 1 / (B * L), ar_loss's mean), so the mean over the ranks, which DDP takes of
    the gradients, is the global batch's loss."""
    if model.config.objective == "ar":
        return loss(model, batch, None, None)
    return loss(model, batch, *draw_noise(model, batch[:, :-1], generator, shard))


def val_windows(val_ids, seq_len, max_windows):
    """The validation windows (N, seq_len + 1), the same every time: evenly spaced windows of
    the token stream val_ids, or evenly spaced rows of document rows (N', seq_len + 1)."""
    if val_ids.dim() == 2:  # document rows (mini_dlm/data.py: document_rows)
        n_win = min(max_windows, len(val_ids))
        return val_ids[torch.linspace(0, len(val_ids) - 1, n_win).long()].long()
    n_win = min(max_windows, (len(val_ids) - 1) // seq_len)
    if n_win < 1:
        raise ValueError(f"validation split ({len(val_ids)} tokens) is shorter than seq_len + 1 = {seq_len + 1}")
    starts = torch.linspace(0, len(val_ids) - seq_len - 1, n_win).long().tolist()
    return torch.stack([val_ids[s:s + seq_len + 1] for s in starts]).long()


@torch.no_grad()
def evaluate(model, val_ids, seq_len, batch_size=32, max_windows=64, n_t=8, seed=1234, loss=loss_at):
    """A validation figure that compares across runs: the same windows (val_windows), t values
    and masks each time, loss(model, windows, t, u) as in loss_fn.
    mdm: the ELBO bound at the midpoints t_j = (j + 1/2) / n_t of n_t equal strata (a fixed
         quadrature of E_t), each window masked with a fixed seed -> an upper bound on nats/token.
         For block diffusion every block of a window takes the same t_j.
    ar:  the exact next-token NLL in nats/token.
    Returns {"nats": ..., "ppl": exp(nats)} (for mdm, ppl is an upper bound on perplexity)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    windows = val_windows(val_ids, seq_len, max_windows)  # (N, seq_len + 1)
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for i in range(0, len(windows), batch_size):
        w = windows[i:i + batch_size].to(device)
        if model.config.objective == "ar":
            total += loss(model, w, None, None).item() * len(w)
            continue
        for j in range(n_t):
            t = torch.full((len(w),), (j + 0.5) / n_t)
            u = torch.rand((len(w), w.shape[1] - 1), generator=gen)  # masks drawn on the CPU
            total += loss(model, w, t.to(device), u.to(device)).item() * len(w) / n_t
    model.train(was_training)
    nats = total / len(windows)
    return {"nats": nats, "ppl": math.exp(min(nats, 700.0))}
