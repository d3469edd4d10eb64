"""
Counter-based Gumbel noise for temperature sampling (notes/00-spec.md section 3).

Sampling x0 ~ softmax(l / T) is argmax_v(l_v + T * g_v) with g_v ~ Gumbel(0, 1) (the
Gumbel-max trick). The noise does not come from a torch.Generator but from a hash of a counter:
g for logit v of row n (n = b * L + i in a (B, L, V) tensor) depends only on (seed, n * V + v).
So a kernel that reads only some rows, on any device and in any order, draws exactly the
numbers this file draws. csrc/hash.h is the same function in C++.
"""

import torch

_M64 = (1 << 64) - 1


def signed64(c):
    """A uint64 value as the int64 with the same bits (torch has no uint64 arithmetic)."""
    c &= _M64
    return c - (1 << 64) if c >= 1 << 63 else c


def _shr(z, s):
    """Logical right shift of int64 bits (torch's >> is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def splitmix64(z):
    """Steele et al.'s SplitMix64 finaliser on int64 tensors (wrapping arithmetic = uint64 bits)."""
    z = z + signed64(0x9E3779B97F4A7C15)
    z = (z ^ _shr(z, 30)) * signed64(0xBF58476D1CE4E5B9)
    z = (z ^ _shr(z, 27)) * signed64(0x94D049BB133111EB)
    return z ^ _shr(z, 31)


def uniform_hash(seed, index):
    """U(0, 1) float64 numbers keyed by (seed, index): h = splitmix64(splitmix64(seed) ^ index),
    u = ((h >> 12) + 0.5) / 2^52, so 0 < u < 1 strictly. index: int64 tensor of any shape."""
    key = splitmix64(torch.tensor(signed64(seed), dtype=torch.long, device=index.device))
    h = splitmix64(key ^ index)
    return (_shr(h, 12).double() + 0.5) * 2.0 ** -52


def gumbel_noise(seed, rows, V):
    """Gumbel(0, 1) noise (N, V) float64 for the flat row indices rows (N,):
    g = -log(-log(u)), u = uniform_hash(seed, row * V + v)."""
    index = rows[:, None] * V + torch.arange(V, device=rows.device)  # (N, V)
    return -torch.log(-torch.log(uniform_hash(seed, index)))


def sample_x0(logits, temperature=0.0, seed=0):
    """x0 = argmax_v(logits + T * g) in float64, the first (lowest) id on ties: a sample from
    softmax(logits / T); T = 0 is the plain argmax. logits (..., V) -> (...) int64; the noise
    of row n of logits.view(-1, V) is keyed by n."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    V = logits.shape[-1]
    rows = torch.arange(logits.numel() // V, device=logits.device)
    g = gumbel_noise(seed, rows, V).view(logits.shape)
    return (logits.double() + temperature * g).argmax(dim=-1)


def draw_seed(generator):
    """A 62-bit seed for one step's noise, from the caller's torch.Generator (None: the global one)."""
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(2 ** 62, (), generator=generator, device=device))
