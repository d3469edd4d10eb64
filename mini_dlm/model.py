"""
The mask predictor: a small pre-norm Transformer (RoPE, RMSNorm, SwiGLU, as in LLaDA / LLaMA).

A masked diffusion LM is an ordinary Transformer with two differences from GPT:
  1. no causal mask: every position sees the whole canvas (LLaDA's "mask predictor");
  2. the output logit of the mask token M is -inf, so M is never predicted (MDLM's SUBS
     parameterisation: a masked position must turn into a real token).
With objective="ar" the same network is a causal next-token model: the AR baseline.

Attention takes an optional boolean mask (True = may attend) so other patterns (block-causal
for block diffusion, padding for batched prompts) plug in without touching this file. With a
KV cache (mini_dlm/kvcache.py) the forward reads only the new tokens and attends through
mini_dlm/ops.py: block_attention to the cached keys/values of the rest of the canvas.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from mini_dlm.ops import block_attention

OBJECTIVES = ("mdm", "ar")


@dataclass
class ModelConfig:
    vocab_size: int = 2048  # V, including <|endoftext|> and <|mask|>
    seq_len: int = 512  # context length: the longest canvas the model has seen
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.0
    mask_id: int = 2047  # M: the absorbing "mask" token; its output logit is -inf
    objective: str = "mdm"  # "mdm": bidirectional mask predictor | "ar": causal next-token
    rope_base: float = 10000.0
    block_size: int = 0  # b > 0: block diffusion (BD3-LM), block-causal attention; 0: full attention
    token_shift: bool = False  # Fast-dLLM v2's token shift (mini_dlm/conversion/token_shift.py)

    def __post_init__(self):
        for name in ("vocab_size", "seq_len", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if (self.n_embd // self.n_head) % 2:
            raise ValueError(f"head size n_embd/n_head = {self.n_embd // self.n_head} must be even for RoPE")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if not 0 <= self.mask_id < self.vocab_size:
            raise ValueError(f"mask_id {self.mask_id} outside the vocabulary of {self.vocab_size}")
        if self.block_size < 0 or (self.block_size and self.seq_len % self.block_size):
            raise ValueError(f"block_size ({self.block_size}) must be 0 or a divisor of seq_len ({self.seq_len})")
        if self.block_size and self.objective != "mdm":
            raise ValueError("block_size > 0 (block diffusion) needs objective='mdm'")
        if self.token_shift and self.objective != "mdm":
            raise ValueError("token_shift is for the mask predictor (objective='mdm'); an AR model shifts by its "
                             "targets")


def block_causal(L, b, start=0, device=None):
    """(L, L) bool, True where query q may see key k: blk(q) >= blk(k) for blocks of b columns
    counted from column start (the columns before it form a shorter first block). Inside a
    block attention is full, across blocks causal (BD3-LM); b = 1 is plain causal attention."""
    blk = torch.div(torch.arange(L, device=device) - start, b, rounding_mode="floor")  # (L,)
    return blk[:, None] >= blk[None, :]


def rope_tables(seq_len, head_dim, base):
    """cos, sin of the rotary angles pos * base^(-2i/D) (Su et al. 2021): each (seq_len, D/2)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """Rotate each (x1, x2) pair of halves of the head dimension by its position's angle."""
    x1, x2 = x.to(torch.promote_types(x.dtype, torch.float32)).chunk(2, dim=-1)  # (B, H, T, D/2) each
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


class Attention(nn.Module):
    def __init__(self, cfg, layer):
        super().__init__()
        self.n_head, self.dropout, self.layer = cfg.n_head, cfg.dropout, layer
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x, cos, sin, attn_mask, is_causal, cache=None):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is None or cache.state == "record":
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                               dropout_p=self.dropout if self.training else 0.0)  # (B, H, T, D)
        else:  # the T new tokens see the cached prefix (and suffix) and all of themselves
            y = block_attention(q, k, v, *cache.layer(self.layer))  # (B, H, T, D)
        if cache is not None:
            cache.update(self.layer, k, v)  # records or appends this layer's keys/values, as its state says
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


def swiglu_hidden(n_embd):
    """The SwiGLU hidden width: 8/3 * n_embd (LLaMA's), rounded up to a multiple of 64."""
    return 64 * math.ceil(8 * n_embd / 3 / 64)


class MLP(nn.Module):
    """SwiGLU (Shazeer 2020): w2(silu(w1 x) * w3 x), hidden ~ 8/3 * n_embd, rounded up to 64."""

    def __init__(self, cfg):
        super().__init__()
        hidden = swiglu_hidden(cfg.n_embd)
        self.w1 = nn.Linear(cfg.n_embd, hidden, bias=False)
        self.w3 = nn.Linear(cfg.n_embd, hidden, bias=False)
        self.w2 = nn.Linear(hidden, cfg.n_embd, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg, layer):
        super().__init__()
        self.norm1, self.norm2 = nn.RMSNorm(cfg.n_embd, eps=1e-6), nn.RMSNorm(cfg.n_embd, eps=1e-6)
        self.attn, self.mlp = Attention(cfg, layer), MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, attn_mask, is_causal, cache):
        x = x + self.drop(self.attn(self.norm1(x), cos, sin, attn_mask, is_causal, cache))
        return x + self.drop(self.mlp(self.norm2(x)))


class Transformer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm_f = nn.RMSNorm(cfg.n_embd, eps=1e-6)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        cos, sin = rope_tables(cfg.seq_len, cfg.n_embd // cfg.n_head, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        if cfg.token_shift and type(self).trunk is Transformer.trunk:  # the shift is a subclass's
            raise ValueError("token_shift=True needs mini_dlm/conversion/token_shift.py: TokenShiftTransformer "
                             "(mini_dlm/plumbing/checkpoint.py: new_model picks the class)")
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by depth
            if name.endswith(("attn.proj.weight", "mlp.w2.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def forward(self, idx, attn_mask=None, pos=None, cache=None, only=None):
        """idx (B, T) token ids -> logits (B, T, V), with logits[..., M] = -inf (SUBS).
        attn_mask: None for the model's own pattern (mdm: full; ar: causal; block diffusion:
        block-causal from position 0), or a bool mask broadcastable to (B, H, T, T), True where
        query t may see key s. pos: RoPE positions (T,) or (B, T), default 0..T-1. cache: a
        KVCache (mini_dlm/kvcache.py) that this forward records into or reads from, as its
        state says. only: the positions whose logits are wanted (a sampler needs one block's)."""
        x = self.trunk(idx, attn_mask, pos, cache)  # (B, T, C)
        if only is not None:
            x = x[:, only]  # (B, T', C)
        logits = self.lm_head(self.norm_f(x))  # (B, T, V)
        logits[..., self.config.mask_id] = float("-inf")  # SUBS: never predict M
        return logits

    def trunk(self, idx, attn_mask=None, pos=None, cache=None):
        """forward's arguments -> the last block's hidden states (B, T, C)."""
        B, T = idx.shape
        if pos is None:
            pos = torch.arange(T, device=idx.device)
        reading = cache is not None and cache.state != "record"  # the new tokens attend to the cache
        if attn_mask is None and not reading and self.config.block_size:
            attn_mask = block_causal(T, self.config.block_size, device=idx.device)  # (T, T)
        cos, sin = self.rope_cos[pos], self.rope_sin[pos]  # (T, D/2) or (B, T, D/2)
        if cos.dim() == 3:
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, D/2): broadcast over heads
        is_causal = attn_mask is None and not reading and self.config.objective == "ar"
        x = self.wte(idx)  # (B, T, C)
        for block in self.blocks:
            x = block(x, cos, sin, attn_mask, is_causal, cache)
        return x

    def num_params(self, non_embedding=True):
        n = sum(p.numel() for p in self.parameters())
        return n - self.wte.weight.numel() if non_embedding else n

    def flops_per_token(self, T):
        """Training FLOPs per token (PaLM appendix B, as in nanoGPT): 6N for the matmuls plus
        12 * n_layer * n_embd * T for attention scores and values over a length-T context
        (doubled for block diffusion, whose forward runs over 2T positions; masks not exploited)."""
        c = self.config
        n = 2 if c.block_size else 1  # block diffusion trains on [x_t ; x0]: twice the sequence
        return n * 6 * self.num_params() + 12 * c.n_layer * c.n_embd * n * T

    def configure_optimizer(self, lr, weight_decay, betas, device_type):
        """AdamW with weight decay on matrices and embeddings only (not on norm gains)."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=device_type == "cuda")
