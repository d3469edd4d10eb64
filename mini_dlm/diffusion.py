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

Prompted rows (a generated task, train_tiny.py --task): the first prompt_len columns of a
row are the condition, never masked and never scored; the loss is the bound on the answer's
NLL given them, per answer token (LLaDA's supervised fine-tuning masks only the response).
The AR twin likewise scores only the answer's tokens.

Block diffusion (BD3-LM, Arriola et al. 2025; config.block_size = b > 0). The window is cut
into blocks of b; each block gets its own t and is denoised given the *clean* earlier blocks,
so the bound is a sum over blocks, and a sampler can cache finished blocks exactly. All blocks
train in one forward over the 2L sequence [x_t ; x0] with the attention mask of
bd3_attention_mask; the loss is read off the x_t half.
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


def elbo_loss(logits, x0, masked, p, prompt_len=0):
    """The negative-ELBO estimate above, in nats per token. logits (B, L, V), x0/masked (B, L),
    p (B,) per row or (B, L) per token. prompt_len: columns that are never masked; the tokens
    counted are the other L - prompt_len of each row."""
    B, L = x0.shape
    ce = F.cross_entropy(logits[masked].float(), x0[masked], reduction="none")  # (n_masked,)
    weight = (1.0 / (p[:, None] if p.dim() == 1 else p)).expand(B, L)[masked]  # (n_masked,): 1/p of each
    return (ce * weight).sum() / (B * (L - prompt_len))


def bd3_attention_mask(L, b, device="cpu"):
    """(2L, 2L) bool for the sequence [x_t ; x0] of two length-L windows cut into blocks of b
    (notes/00-spec.md section 2; True = query may see key):
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


def bd3_left(L, b, device="cpu"):
    """Token shift (model.shift_right) over [x_t ; x0]: the column whose hidden state gives each
    column's logits (2L,). Inside a block the noisy column before it; a block's first column
    reads the clean last column of the block before, in x0, as a sampler reads it from its cache."""
    i = torch.arange(L, device=device)
    return torch.cat([torch.where(i % b == 0, L + i - 1, i - 1), L + i - 1])


def denoise(model, x_t, x0):
    """The model's logits (B, L, V) for x0 given x_t. Full attention: f(x_t). Block diffusion:
    one forward over [x_t ; x0] with bd3_attention_mask, both halves at positions 0..L-1,
    keeping the x_t half: every block sees its noisy self and the clean blocks before it."""
    b = model.config.block_size
    if not b:
        return model(x_t)
    L = x_t.shape[1]
    pos = torch.arange(L, device=x_t.device).repeat(2)  # (2L,)
    left = bd3_left(L, b, x_t.device) if model.config.token_shift else None
    return model(torch.cat([x_t, x0], dim=1), bd3_attention_mask(L, b, x_t.device), pos, left=left)[:, :L]


def keep_prompt(u, prompt_len):
    """The mask uniforms u (B, L) with the first prompt_len columns set to 2: above any p, so
    the prompt is never masked. A copy when it changes anything."""
    if not prompt_len:
        return u
    u = u.clone()
    u[:, :prompt_len] = 2.0
    return u


def mdm_loss(model, x0, t, generator=None, u=None, prompt_len=0):
    """One training loss for the mask predictor: noise x0 at times t ((B,) or (B, L)), predict,
    ELBO; the first prompt_len columns stay clean and unscored."""
    if u is None:
        u = torch.rand(x0.shape, generator=generator, device=x0.device)
    x_t, masked, p = forward_process(x0, t, model.config.mask_id, u=keep_prompt(u, prompt_len))
    return elbo_loss(denoise(model, x_t, x0), x0, masked, p, prompt_len)


def ar_loss(model, x, prompt_len=0):
    """Next-token cross-entropy on windows x (B, L+1): predict x[:, 1:] from x[:, :-1]. With a
    prompt, only the targets in columns prompt_len .. L - 1 of x count (the answer; the last
    column, a task row's filler, does not)."""
    logits = model(x[:, :-1])  # (B, L, V), causal
    target = x[:, 1:]  # (B, L): target j is column j + 1 of x
    if prompt_len:
        target = target.clone()
        target[:, :prompt_len - 1] = -100  # the prompt predicts nothing
        target[:, -1] = -100  # column L: past the answer
    return F.cross_entropy(logits.flatten(0, 1).float(), target.flatten(), ignore_index=-100)


def complementary(x0, t, u):
    """Fast-dLLM v2's complementary masks: every window twice, the second time at time 1 - t
    with uniforms 1 - u, so that it masks (up to a band of width EPS) exactly the tokens the
    first leaves clean. Each half is still a sample of the forward process, so the loss stays
    the ELBO estimate; every token of a window is scored once per pair. -> (x0, t, u), 2B rows."""
    return torch.cat([x0, x0]), torch.cat([t, 1 - t]), torch.cat([u, 1 - u])


def loss_fn(model, batch, generator=None, shard=(0, 1), prompt_len=0, complementary_masks=False):
    """The training loss of either objective on a batch of windows (B, seq_len + 1); with
    prompt_len, of the answer given the prompt (see the module docstring); with
    complementary_masks (diffusion only), of each window and its complement (complementary).
    shard = (rank, n) under DDP (train_tiny.py): batch is rows rank*B .. (rank+1)*B - 1 of a
    global batch of n*B rows. The noise (t, masks) is drawn for the global batch and the same
    rows kept, so n ranks together draw exactly what one process would. Each rank's loss is a
    mean over its B rows (elbo_loss's 1 / (B * L), ar_loss's mean), so the mean over the ranks,
    which DDP takes of the gradients, is the global batch's loss."""
    if model.config.objective == "ar":
        return ar_loss(model, batch, prompt_len)
    x0 = batch[:, :-1]
    B, L = x0.shape
    rank, n = shard
    rows = slice(rank * B, (rank + 1) * B)  # this shard's rows of the global draws
    b = model.config.block_size
    if b:  # one t per block (BD3-LM), stratified over all n * B * L / b blocks, spread to its tokens
        t = sample_t(n * B * (L // b), generator, x0.device).view(n * B, L // b)[rows].repeat_interleave(b, dim=1)  # (B, L)
    else:
        t = sample_t(n * B, generator, x0.device)[rows]  # (B,)
    u = torch.rand((n * B, L), generator=generator, device=x0.device)[rows]  # (B, L): decides the masks
    if complementary_masks:
        x0, t, u = complementary(x0, t, u)  # (2B, L), (2B,) or (2B, L), (2B, L)
    return mdm_loss(model, x0, t, generator, u, prompt_len)


@torch.no_grad()
def evaluate(model, val_ids, seq_len, batch_size=32, max_windows=64, n_t=8, seed=1234, prompt_len=0):
    """val_ids: the validation token stream, or document rows (N, seq_len + 1).
    Validation figure that compares across runs: the same windows, t values and masks each time.

    mdm: the ELBO bound at the midpoints t_j = (j + 1/2) / n_t of n_t equal strata (a fixed
         quadrature of E_t), each window masked with a fixed seed -> an upper bound on nats/token.
         For block diffusion every block of a window takes the same t_j: the bound is a sum of
         per-block integrals over t, each approximated by the same quadrature.
    ar:  the exact next-token NLL in nats/token.
    prompt_len: rows are prompt + answer (a task); both figures are per answer token, given the prompt.
    Returns {"nats": ..., "ppl": exp(nats)} (for mdm, ppl is an upper bound on perplexity)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    if val_ids.dim() == 2:  # document rows (mini_dlm/data.py: document_rows): evenly spaced rows
        n_win = min(max_windows, len(val_ids))
        windows = val_ids[torch.linspace(0, len(val_ids) - 1, n_win).long()].long()  # (n_win, seq_len + 1)
    else:
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
            total += ar_loss(model, w.to(device), prompt_len).item() * len(w)
            continue
        x0 = w[:, :-1]
        for j in range(n_t):
            t = torch.full((len(x0),), (j + 0.5) / n_t)
            u = keep_prompt(torch.rand(x0.shape, generator=gen), prompt_len)  # masks drawn on CPU
            x_t, masked, p = forward_process(x0, t, model.config.mask_id, u=u)
            logits = denoise(model, x_t.to(device), x0.to(device))
            total += elbo_loss(logits, x0.to(device), masked.to(device), p.to(device), prompt_len).item() * len(w) / n_t
    model.train(was_training)
    nats = total / n_win
    return {"nats": nats, "ppl": math.exp(min(nats, 700.0))}
