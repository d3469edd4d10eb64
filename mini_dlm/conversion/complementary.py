"""
Complementary masks (Fast-dLLM v2, Wu et al. 2025; train_tiny.py --complementary-masks,
notes 09): every training window twice, the second time with the complement of its mask, so
that every token of a window is a target once per pair. Each half is still a sample of the
forward process, so the loss stays the ELBO estimate.
"""

import torch

from mini_dlm.diffusion import mdm_loss


def complementary(x0, t, u):
    """Every window twice, the second time at time 1 - t with uniforms 1 - u, so that it masks
    (up to a band of width EPS) exactly the tokens the first leaves clean -> (x0, t, u), 2B rows."""
    return torch.cat([x0, x0]), torch.cat([t, 1 - t]), torch.cat([u, 1 - u])


def complementary_loss(model, batch, t, u):
    """diffusion.loss_at with complementary masks: mdm_loss over each window and its complement."""
    return mdm_loss(model, *complementary(batch[:, :-1], t, u))
