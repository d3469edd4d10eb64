"""
The KV cache (notes/appendix-spec.md section 5): the keys/values of the part of the canvas a forward
pass does not recompute, per layer. The model's attention layers read from it and write to it
(mini_dlm/model.py: Attention); callers only create it and say when it should grow.

A cache has three states, one per kind of forward pass it is given to; its owner (a sampler
strategy, mini_dlm/sampler.py) moves it from one to the next between forwards:
  record  it is new: the forward runs the whole input with ordinary attention, and each layer
          stores its keys/values of columns [pad[r], end) of row r, plus, with suffix_from,
          columns [suffix_from, T) as a suffix;
  read    the forward's tokens attend to the cache and to each other
          (mini_dlm/ops.py: block_attention); nothing is stored;
  append  as read, and each layer then writes the new tokens' keys/values after each row's
          cached ones (append_next() asks for this, for the next forward only).
After a forward that recorded or appended, start_reading() puts it in the read state.

How the sampler uses it (mini_dlm/sampler.py):
  prefix (Fast-dLLM)  recorded by one full forward at a block's start: everything before the
                      block; later steps run the block and everything after it. Approximate.
  dual   (Fast-dLLM)  the same, plus everything after the block; steps run only the block.
                      Approximate.
  block  (BD3-LM)     the prompt, then each finished block appended; exact (block-causal).
  AR                  the prompt, then each new token appended; exact (causal).

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
    """Per-layer k, v (B, H, capacity, D), row r valid in slots [0, length[r]), and with a
    suffix per-layer k_suffix, v_suffix (B, H, Ls, D), all valid."""

    def __init__(self, n_layer, pad, end, suffix_from=None, capacity=None):
        """An empty cache that the next forward records: columns [pad[r], end) of each row,
        in capacity slots (default end - 0; more leaves room to append), and with
        suffix_from the columns [suffix_from, T) as the suffix."""
        self.pad, self.end, self.suffix_from = pad, end, suffix_from
        self.capacity = end if capacity is None else capacity
        self.k, self.v = [None] * n_layer, [None] * n_layer
        self.k_suffix, self.v_suffix = (None, None) if suffix_from is None else ([None] * n_layer, [None] * n_layer)
        self.length = end - pad  # (B,) valid slots per row, once recorded
        self.new = 0  # tokens the last forward appended (not yet counted in length)
        self.state = "record"

    def append_next(self):
        """The next forward appends its tokens' keys/values after reading. Returns the cache."""
        self.state = "append"
        return self

    def start_reading(self):
        """After a forward that recorded or appended: later forwards only read the cache, and
        what the last one appended now counts as cached. Returns the cache."""
        self.length, self.new, self.state = self.length + self.new, 0, "read"
        return self

    def layer(self, i):
        """Arguments 4.. of ops.block_attention for layer i."""
        sk = None if self.k_suffix is None else self.k_suffix[i]
        sv = None if self.v_suffix is None else self.v_suffix[i]
        return self.k[i], self.v[i], self.length, sk, sv

    def update(self, i, k, v):
        """Layer i's keys/values k, v (B, H, T, D) of the current forward: stored as the state says."""
        if self.state == "record":
            self.k[i] = compact(k, self.pad, self.end, self.capacity)
            self.v[i] = compact(v, self.pad, self.end, self.capacity)
            if self.suffix_from is not None:
                self.k_suffix[i], self.v_suffix[i] = k[:, :, self.suffix_from:], v[:, :, self.suffix_from:]
        elif self.state == "append":  # into each row's next T slots
            B, H, T, D = k.shape
            slots = self.length[:, None] + torch.arange(T, device=k.device)  # (B, T)
            index = slots[:, None, :, None].expand(B, H, T, D)
            self.k[i].scatter_(2, index, k)
            self.v[i].scatter_(2, index, v)
            self.new = T
