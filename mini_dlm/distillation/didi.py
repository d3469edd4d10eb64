"""
Few-step generation by distribution matching, after DiDi-Instruct (Zheng et al. 2025).

The student is a sampler: from a start state z (prompt, masks) it generates x in K steps of
MDLM-style random-order decoding (rollout). DiDi-Instruct trains it to minimise the integral KL
divergence between its noised outputs and the teacher's, over the noise level t:
    IKL = int_0^1 w(t) KL(q_S(z_t) || q_T(z_t)) dt,   z_t = x with each token masked w.p. t.
Neither marginal has a formula, but their ratio can be learnt: a discriminator D trained to
tell noised student samples (label 1) from noised teacher samples (label 0) has, at its
optimum, logit D(z_t) = log q_S(z_t) / q_T(z_t). Sampling x is discrete, so the gradient is a
policy gradient (score function):
    grad IKL = E_x [ r(x) grad log p_S(x) ],   r(x) = E_t logit D(z_t)  (the KL integrand),
where log p_S(x) is the sum, over the rollout's steps, of the log-probabilities of the tokens
each step revealed (the positions revealed are drawn at random, independent of the student,
so they add nothing to the gradient). Two stabilisers from the paper:
  grouped reward normalisation  G samples share a start state; each r is replaced by
                                (r - mean) / std within its group (as GRPO), which removes
                                what the start state alone explains and fixes the step size;
  intermediate-state matching   a group starts from a teacher sample re-masked at a level
                                tau ~ U(tau_min, 1] (tau = 1: the prompt alone) and the student
                                completes it in ceil(tau K) steps, so it learns from every
                                stage of the trajectory, not only from the all-mask start.
distill.py --method didi runs it (notes/10 says what was measured and what is not built).
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from mini_dlm.diffusion import forward_process
from mini_dlm.tasks.rows import keep_prompt
from mini_dlm.ops import descending_rank
from mini_dlm.sampler import num_transfer_tokens


class Discriminator(nn.Module):
    """D(z_t): a Transformer trunk (initialised from the teacher's) and a linear head on the mean
    of its normalised hidden states -> one logit per row, the estimate of log q_S / q_T."""

    def __init__(self, trunk):
        super().__init__()
        self.body = trunk
        self.head = nn.Linear(trunk.config.n_embd, 1)
        nn.init.zeros_(self.head.weight)  # starts at logit 0: "the two are alike"
        nn.init.zeros_(self.head.bias)

    def forward(self, z):
        h = self.body.norm_f(self.body.trunk(z))  # (B, L, C)
        return self.head(h.mean(dim=1)).squeeze(-1)  # (B,)


def rollout(model, z, n_steps, generator=None):
    """Random-order decoding of every mask of z (B, L) in n_steps steps: at each step a uniformly
    random set of the masked positions (LLaDA's count schedule, num_transfer_tokens) takes a
    token drawn from the model at temperature 1. -> x (B, L) and the path [(z_s, revealed_s)],
    what log_prob needs to score x."""
    M = model.config.mask_id
    k = num_transfer_tokens((z == M).sum(dim=1), n_steps)  # (B, n_steps)
    path = []
    with torch.no_grad():
        for s in range(n_steps):
            masked = z == M
            scores = torch.rand(z.shape, generator=generator, device=z.device)
            revealed = masked & (descending_rank(scores, masked) < k[:, s:s + 1])  # the k best-scored masks
            p = model(z).float().softmax(-1)  # (B, L, V)
            y = torch.multinomial(p.flatten(0, 1), 1, generator=generator).view(z.shape)
            path.append((z, revealed))
            z = torch.where(revealed, y, z)
    return z, path


def log_prob(model, x, path, n_sub=None, generator=None):
    """log p(x) (B,) of the student along path, with gradient: sum over steps of log p(x_j | z_s)
    at the positions step s revealed. n_sub: score a random n_sub of the steps and scale by
    steps / n_sub (an unbiased estimate, n_sub forwards instead of all)."""
    steps = list(range(len(path)))
    if n_sub is not None and n_sub < len(steps):
        pick = torch.randperm(len(steps), generator=generator)[:n_sub]
        steps = sorted(pick.tolist())
    total = 0.0
    for s in steps:
        z, revealed = path[s]
        logp = F.log_softmax(model(z).float(), dim=-1).gather(-1, x[..., None]).squeeze(-1)  # (B, L)
        total = total + (logp * revealed).sum(dim=1)
    return total * len(path) / len(steps)


def noised(x, prompt_len, mask_id, generator=None):
    """z_t of each row of x (B, L) at its own t ~ U(0, 1); the prompt stays clean."""
    t = torch.rand(len(x), generator=generator, device=x.device)
    u = keep_prompt(torch.rand(x.shape, generator=generator, device=x.device), prompt_len)
    return forward_process(x, t, mask_id, u=u)[0]


def discriminator_loss(disc, x_student, x_teacher, prompt_len, mask_id, generator=None):
    """Binary cross-entropy: noised student samples are class 1, noised teacher samples class 0."""
    logits = disc(torch.cat([noised(x_student, prompt_len, mask_id, generator),
                             noised(x_teacher, prompt_len, mask_id, generator)]))  # (2B,)
    labels = torch.cat([torch.ones(len(x_student)), torch.zeros(len(x_teacher))]).to(logits.device)
    return F.binary_cross_entropy_with_logits(logits, labels)


@torch.no_grad()
def rewards(disc, x, prompt_len, mask_id, n_t=2, generator=None):
    """r(x) (B,): the mean over n_t noise draws of logit D(z_t), the estimate of log q_S / q_T
    the student lowers."""
    return torch.stack([disc(noised(x, prompt_len, mask_id, generator)) for _ in range(n_t)]).mean(0)


def group_normalise(r, group_size):
    """r (P * G,) -> (r - group mean) / group std, groups of G consecutive rows."""
    g = r.view(-1, group_size)
    return ((g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + 1e-6)).flatten()


def start_states(x_teacher, prompt_len, mask_id, tau_min, group_size, n_steps, generator=None):
    """Intermediate-state matching: tau ~ U(tau_min, 1] for this batch, each teacher sample's
    (P, L) answer re-masked w.p. tau (tau = 1: all of it), each repeated for its group ->
    (P * G, L) start states and the steps the student completes them in, ceil(tau * n_steps)."""
    dev = x_teacher.device  # the generator's device too
    tau = 1 - (1 - tau_min) * float(torch.rand((), generator=generator, device=dev))
    u = keep_prompt(torch.rand(x_teacher.shape, generator=generator, device=dev), prompt_len)
    z = torch.where(u < tau, mask_id, x_teacher)
    return z.repeat_interleave(group_size, dim=0), max(1, math.ceil(tau * n_steps))
