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
"""

import math

import torch
import torch.nn.functional as F

EPS = 1e-3  # smallest mask probability, keeps 1/p finite


def sample_t(batch_size, generator=None, device="cpu"):
    """Stratified ("antithetic") t in (0, 1): one uniform offset u, then t_b = (u + b / B) mod 1.
    Each t is still U(0, 1), but the batch covers [0, 1) evenly, which lowers the variance
    of the loss (MDLM's low-discrepancy sampler)."""
    u = torch.rand((), generator=generator, device=device)
    return (u + torch.arange(batch_size, device=device) / batch_size) % 1.0  # (B,)


def forward_process(x0, t, mask_id, eps=EPS, generator=None):
    """x0 (B, L), t (B,) -> x_t (B, L) with tokens replaced by M w.p. p; masked (B, L) bool; p (B,)."""
    p = (1 - eps) * t + eps  # (B,)
    masked = torch.rand(x0.shape, generator=generator, device=x0.device) < p[:, None]  # (B, L)
    x_t = torch.where(masked, torch.full_like(x0, mask_id), x0)
    return x_t, masked, p


def elbo_loss(logits, x0, masked, p):
    """The negative-ELBO estimate above, in nats per token. logits (B, L, V), x0/masked (B, L), p (B,)."""
    B, L = x0.shape
    ce = F.cross_entropy(logits[masked].float(), x0[masked], reduction="none")  # (n_masked,)
    weight = (1.0 / p)[:, None].expand(B, L)[masked]  # (n_masked,): 1/p of each masked token's row
    return (ce * weight).sum() / (B * L)


def mdm_loss(model, x0, t, generator=None):
    """One training loss for the mask predictor: noise x0 at times t, predict, ELBO."""
    x_t, masked, p = forward_process(x0, t, model.config.mask_id, generator=generator)
    return elbo_loss(model(x_t), x0, masked, p)


def ar_loss(model, x):
    """Next-token cross-entropy on windows x (B, L+1): predict x[:, 1:] from x[:, :-1]."""
    logits = model(x[:, :-1])  # (B, L, V), causal
    return F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten())


def loss_fn(model, batch, generator=None):
    """The training loss of either objective on a batch of windows (B, seq_len + 1)."""
    if model.config.objective == "ar":
        return ar_loss(model, batch)
    x0 = batch[:, :-1]
    return mdm_loss(model, x0, sample_t(len(x0), generator, x0.device), generator)


@torch.no_grad()
def evaluate(model, val_ids, seq_len, batch_size=32, max_windows=64, n_t=8, seed=1234):
    """Validation figure that compares across runs: the same windows, t values and masks each time.

    mdm: the ELBO bound at the midpoints t_j = (j + 1/2) / n_t of n_t equal strata (a fixed
         quadrature of E_t), each window masked with a fixed seed -> an upper bound on nats/token.
    ar:  the exact next-token NLL in nats/token.
    Returns {"nats": ..., "ppl": exp(nats)} (for mdm, ppl is an upper bound on perplexity)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    n_win = min(max_windows, (len(val_ids) - 1) // seq_len)
    if n_win < 1:
        raise ValueError(f"validation split ({len(val_ids)} tokens) is shorter than seq_len + 1 = {seq_len + 1}")
    starts = torch.linspace(0, len(val_ids) - seq_len - 1, n_win).long().tolist()
    windows = torch.stack([val_ids[s:s + seq_len + 1] for s in starts]).long()  # (n_win, seq_len + 1)
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for i in range(0, n_win, batch_size):
        w = windows[i:i + batch_size]
        if model.config.objective == "ar":
            total += ar_loss(model, w.to(device)).item() * len(w)
            continue
        x0 = w[:, :-1]
        for j in range(n_t):
            t = torch.full((len(x0),), (j + 0.5) / n_t)
            x_t, masked, p = forward_process(x0, t, model.config.mask_id, generator=gen)  # masks drawn on CPU
            total += elbo_loss(model(x_t.to(device)), x0.to(device), masked.to(device), p.to(device)).item() * len(w) / n_t
    model.train(was_training)
    nats = total / n_win
    return {"nats": nats, "ppl": math.exp(min(nats, 700.0))}
