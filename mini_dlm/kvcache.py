"""
KV caches for the sampler (DESIGN.md section 5): the keys/values of the part of the canvas a
denoising step does not recompute, per layer, handed to mini_dlm/ops.py: block_attention.

  prefix (Fast-dLLM)  keys/values of everything before the current block, from one full
                      forward at the block's start; the other steps recompute the block and
                      everything after it. Approximate for full-attention models.
  dual   (Fast-dLLM)  also keeps the keys/values after the block; steps recompute only the
                      block. Approximate for full-attention models.
  block  (BD3-LM)     keys/values of the prompt and of each finished block, appended when the
                      block is done; exact for block-diffusion models (block-causal attention).
  AR                  sampler.generate_ar: keys/values of the prompt, then of each new token,
                      appended one at a time; exact (causal attention).

Rows of a batch may have prompts of different lengths. The canvas is left-padded; the cache
stores each row's real keys from slot 0 ("compacted") with a per-row valid length, which is
the layout block_attention reads.
"""

import torch


def compact(t, pad, end, capacity):
    """t (B, H, T, D) from a forward over canvas columns 0..T-1 -> (B, H, capacity, D) whose row r
    holds columns pad[r] .. end - 1 in slots 0 .. end - pad[r] - 1 (later slots: don't care)."""
    if capacity == end and not pad.any():
        return t[:, :, :end]  # no padding: a view, no copy
    B, H, T, D = t.shape
    cols = (pad[:, None] + torch.arange(capacity, device=t.device)).clamp(max=T - 1)  # (B, capacity)
    return t.gather(2, cols[:, None, :, None].expand(B, H, capacity, D))


class KVCache:
    """Per-layer k, v (B, H, capacity, D), row r valid in slots [0, length[r]), and optionally
    per-layer suffix k, v (B, H, Ls, D), all valid."""

    def __init__(self, k, v, length, k_suffix=None, v_suffix=None):
        self.k, self.v, self.length = k, v, length
        self.k_suffix, self.v_suffix = k_suffix, v_suffix

    @classmethod
    def from_forward(cls, kv_out, pad, end, suffix_from=None, capacity=None):
        """Cache columns [pad[r], end) of a forward over the whole canvas (kv_out from
        Transformer.forward), and with suffix_from also columns [suffix_from, T) as the suffix.
        capacity (default end) leaves room to append() later."""
        capacity = end if capacity is None else capacity
        k = [compact(lk, pad, end, capacity) for lk, _ in kv_out]
        v = [compact(lv, pad, end, capacity) for _, lv in kv_out]
        ks = vs = None
        if suffix_from is not None:
            ks, vs = [lk[:, :, suffix_from:] for lk, _ in kv_out], [lv[:, :, suffix_from:] for _, lv in kv_out]
        return cls(k, v, end - pad, ks, vs)

    def layer(self, i):
        """Arguments 4.. of ops.block_attention for layer i."""
        sk = None if self.k_suffix is None else self.k_suffix[i]
        sv = None if self.v_suffix is None else self.v_suffix[i]
        return self.k[i], self.v[i], self.length, sk, sv

    def append(self, kv_out):
        """Write the keys/values of T new tokens (kv_out of a forward over them, each
        (B, H, T, D)) into each row's next T slots."""
        B, H, T, D = kv_out[0][0].shape
        slots = self.length[:, None] + torch.arange(T, device=self.length.device)  # (B, T)
        index = slots[:, None, :, None].expand(B, H, T, D)
        for i, (k, v) in enumerate(kv_out):
            self.k[i].scatter_(2, index, k)
            self.v[i].scatter_(2, index, v)
        self.length = self.length + T
