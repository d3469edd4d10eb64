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
a batch of 2B rows, so a KV cache holds both halves. The sampler takes it as its strategy:

    generate(model, prompts, opts, strategy=guidance.strategy(opts))   # opts.cfg_scale > 0
"""

from functools import partial

import torch

from mini_dlm.sampler import CACHES


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

    def after_block(self, x, lo, hi):
        self.inner.after_block(self.both(x), lo, hi)


def strategy(opts):
    """What sampler.denoise needs as its strategy for the Decoding opts: Guided around the cache
    opts names when opts.cfg_scale > 0, else None (the cache's own strategy)."""
    return partial(Guided, CACHES[opts.cache], scale=opts.cfg_scale) if opts.cfg_scale else None
