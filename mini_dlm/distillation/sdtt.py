"""
Few-step generation by distillation: self-distillation through time (SDTT, Deschenaux and
Gulcehre 2024), the first stage on the way to DiDi-Instruct's distribution matching (2025).

Why few steps read badly. The ancestral sampler of a masked diffusion model with N steps
(random order, temperature 1: remasking="random", temperature=1.0) reveals, at step i of N
(time t = i / N, step Delta = 1 / N), each still-masked token with probability Delta / t = 1 / i,
drawing its value from the model's marginal p(x0[j] | x_t) independently of the others. With N
small, many tokens are drawn in one step from marginals that know nothing of each other's
draws: "the" and "a" can both win two neighbouring positions.

SDTT trains a student to do in one step of 2 Delta what the teacher does in two steps of
Delta. For a window x0 and a grid time t = i / N (2 <= i <= N):
  1. x_t: every token masked with probability t;
  2. the teacher's first step: draw y ~ p_T(. | x_t) at the masked positions and reveal each
     with probability 1 / i -> x_mid (time t - Delta);
  3. the teacher's second step: p_T(. | x_mid) at the positions still masked;
  4. the target of each position masked in x_t: one-hot(y) where step 1 revealed it, step 3's
     distribution where it did not.
The student reads x_t alone and minimises KL(target || p_S(. | x_t)) over the masked
positions. In two steps a masked token is revealed with probability 1/i + (1 - 1/i) / (i - 1)
= 2 / i, the one-step probability of 2 Delta, and its value distribution is what the target
averages to over the teacher's draws: the student's marginals absorb what the teacher's first
draws told its second step. Rounds halve N, the student of one round the teacher of the
next (distill.py: 256 -> 128 -> 64 -> 32 -> 16 steps).
"""

import torch
import torch.nn.functional as F


@torch.no_grad()
def sdtt_targets(teacher, x0, n_steps, generator=None):
    """One SDTT example per row of x0 (B, L) for a teacher sampling in n_steps -> (x_t (B, L),
    masked (B, L) bool, target (B, L, V): a distribution at every masked position; elsewhere
    unused)."""
    if n_steps < 2:
        raise ValueError(f"a teacher of {n_steps} step(s) has no two steps to distil into one")
    B, L = x0.shape
    dev, M = x0.device, teacher.config.mask_id
    i = torch.randint(2, n_steps + 1, (B, 1), generator=generator, device=dev)  # (B, 1): the grid time t = i / N
    masked = torch.rand((B, L), generator=generator, device=dev) < i / n_steps  # (B, L)
    x_t = torch.where(masked, M, x0)
    p1 = teacher(x_t).float().softmax(-1)  # (B, L, V); the mask token has probability 0
    y = torch.multinomial(p1.flatten(0, 1), 1, generator=generator).view(B, L)  # (B, L): the first step's draws
    revealed = masked & (torch.rand((B, L), generator=generator, device=dev) < 1.0 / i)  # (B, L)
    p2 = teacher(torch.where(revealed, y, x_t)).float().softmax(-1)  # (B, L, V): the second step
    target = torch.where(revealed[..., None], F.one_hot(y, p2.shape[-1]).float(), p2)
    return x_t, masked, target


def sdtt_loss(student, x_t, masked, target):
    """Mean over masked positions of KL(target || p_S(. | x_t)), nats."""
    logp = F.log_softmax(student(x_t).float(), dim=-1)[masked]  # (n, V)
    tgt = target[masked]  # (n, V)
    logp = logp.masked_fill(tgt == 0, 0.0)  # 0 * log 0 = 0, also where p_S is 0 (the mask token)
    return (torch.xlogy(tgt, tgt) - tgt * logp).sum(-1).mean()
