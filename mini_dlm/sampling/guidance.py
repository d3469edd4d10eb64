"""
Classifier-free guidance for the mask predictor, as in LLaDA (after SMDM, Nie et al. 2024).

A diffusion LM that was trained on text with masks anywhere has also learnt to predict a
position when the prompt is masked too: that is its unconditional model. Guidance pushes the
conditional prediction away from the unconditional one,

    logits = u + (s + 1) (c - u)        c = f(x),  u = f(x with every fixed token set to M)

with s >= 0 the scale (s = 0 is plain sampling, and mini_dlm then does not run the second
half at all). The fixed tokens are those the canvas held when sampling started: the prompt,
or the text around the blanks when infilling; tokens the sampler commits later stay in both
halves, as in LLaDA's code. Pad columns are fixed too, which changes nothing: no query sees
them.

Both halves run as one forward over 2B rows, rows 0..B-1 conditional and B..2B-1
unconditional: a step costs one forward of twice the batch, and counts as one pass. Guided
does it around any of the sampler's cache strategies (mini_dlm/sampler.py), which simply see
a batch of 2B rows, so a KV cache holds both halves.
"""

import math

import torch


def check_cfg_scale(scale):
    """ValueError unless scale is a finite number >= 0."""
    if not (isinstance(scale, (int, float)) and 0 <= scale < math.inf):
        raise ValueError(f"--cfg-scale must be a finite number >= 0, got {scale}")


def with_unconditional(x, fixed, mask_id):
    """x (B, L), fixed (B, L) bool -> (2B, L): x, then x with every fixed token masked."""
    return torch.cat([x, x.masked_fill(fixed, mask_id)])


def guide(logits, scale, mask_id):
    """logits (2B, ..., V) of with_unconditional's rows -> (B, ..., V) u + (scale + 1)(c - u).
    The mask token's logit stays -inf (the formula would give -inf - -inf = nan there)."""
    c, u = logits.chunk(2)
    out = u + (scale + 1) * (c - u)
    out[..., mask_id] = float("-inf")
    return out


class Guided:
    """A cache strategy that samples with guidance: it runs `strategy` (a sampler.CACHES class)
    on the doubled batch and hands back the combined logits of the B real rows."""

    def __init__(self, strategy, model, x, pad, start, block_len, scale):
        self.scale, self.mask_id = scale, model.config.mask_id
        self.fixed = x != self.mask_id  # (B, L): what the canvas held at the start
        self.inner = strategy(model, self.both(x), torch.cat([pad, pad]), start, block_len)

    def both(self, x):
        return with_unconditional(x, self.fixed, self.mask_id)  # (2B, L)

    @property
    def passes(self):
        return self.inner.passes

    def logits(self, x, lo, hi, i):
        """The block's guided logits (B, hi - lo, V) at its step i: one forward of 2B rows."""
        return guide(self.inner.logits(self.both(x), lo, hi, i), self.scale, self.mask_id)

    def block_done(self, x, lo, hi):
        self.inner.block_done(self.both(x), lo, hi)
