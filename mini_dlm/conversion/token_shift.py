"""
Token shift (Fast-dLLM v2, Wu et al. 2025): the logits of column t come from the final hidden
state of the column left of t, as in the AR model a mask predictor is converted from
(train_tiny.py --init-from ... --token-shift, notes 09). An AR model predicts token t from
position t - 1; a converted model that keeps this keeps the meaning of its output head.

TokenShiftTransformer is the core Transformer (mini_dlm/model.py) with the shift after its
last block; ModelConfig.token_shift says which class a checkpoint holds
(mini_dlm/plumbing/checkpoint.py: new_model). "The column left of t" is t - 1 in a canvas;
over block diffusion's training input [x_t ; x0] (mini_dlm/diffusion.py: x0_logits) a block's
first noisy column sees no noisy column before it and reads the clean one (bd3_left), as a
sampler reads it from its cache. A column at position 0 has nothing to its left and keeps its
own state.
A KV cache's new tokens have their left column in the cache: the model keeps its hidden state
on the cache (cache.shift_left) when it records or appends, so the caches stay what they were.
"""

import torch

from mini_dlm.model import Transformer


def bd3_left(L, b, device="cpu"):
    """Over block diffusion's training input [x_t ; x0] (two windows of L): the column whose
    hidden state gives each column's logits (2L,). Inside a block the noisy column before it; a
    block's first column reads the clean last column of the block before, in x0, as a sampler
    reads it from its cache."""
    i = torch.arange(L, device=device)
    return torch.cat([torch.where(i % b == 0, L + i - 1, i - 1), L + i - 1])


def left_columns(pos, block_size):
    """(T,): the column left of each column of a forward at positions pos: t - 1, except over
    block diffusion's [x_t ; x0] (mini_dlm/diffusion.py: x0_logits), the one forward whose
    positions run 0..L-1 twice, where it is bd3_left."""
    T = pos.shape[-1]
    twice = pos.dim() == 1 and T % 2 == 0 and torch.equal(pos, torch.arange(T // 2, device=pos.device).repeat(2))
    if block_size and twice:
        return bd3_left(T // 2, block_size, pos.device)
    return torch.arange(T, device=pos.device) - 1


def shift_right(h, pos, left=None, first=None):
    """h (B, T, C) final hidden states -> (B, T, C) whose column t is the hidden state of
    column left[t] (default t - 1); first (B, C): the hidden state left of column 0 when it is
    not in h (a KV cache's). Where pos == 0 a column keeps its own state."""
    if first is not None:
        prev = torch.cat([first[:, None], h[:, :-1]], dim=1)
    else:
        left = torch.arange(h.shape[1], device=h.device) - 1 if left is None else left
        prev = h[:, left.clamp(min=0)]
    start = (pos == 0).unsqueeze(-1)  # (T, 1) or (B, T, 1): a row's first position
    return torch.where(start, h, prev)


class TokenShiftTransformer(Transformer):
    """The mask predictor with token shift: trunk's hidden states shifted one column right."""

    def trunk(self, idx, attn_mask=None, pos=None, cache=None):
        state = None if cache is None else cache.state
        pos = torch.arange(idx.shape[1], device=idx.device) if pos is None else pos
        h = super().trunk(idx, attn_mask, pos, cache)  # (B, T, C)
        if state in ("read", "append"):  # the new tokens' left column is the cache's last
            x = shift_right(h, pos, first=cache.shift_left)
        else:
            x = shift_right(h, pos, left_columns(pos, self.config.block_size))
        if state == "record":  # keep the state left of the next new token: the last recorded column
            cache.shift_left = h[:, cache.end - 1] if cache.end else None
        elif state == "append":
            cache.shift_left = h[:, -1]
        return x
