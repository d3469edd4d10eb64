"""
Argument checks of the sampler's two ops (mini_dlm/ops.py), the Python side of
csrc/unmask_args.h and csrc/attention_args.h: a bad argument is a ValueError that says what is
wrong, before any kernel or reference runs.
"""

import math

import torch

REMASKING = ("low_confidence", "random", "margin", "entropy")  # how unmask scores its guesses
FACTOR_RULES = ("fastdllm", "strict")  # Fast-dLLM's factor rule as its code does it, or as the paper writes it


def check_remasking(remasking):
    if remasking not in REMASKING:
        raise ValueError(f"remasking must be one of {REMASKING}, got {remasking!r}")


def check_factor(factor, factor_rule):
    """factor: None (off) or > 0; factor_rule: one of FACTOR_RULES."""
    if factor is not None and not factor > 0:
        raise ValueError(f"factor must be > 0, got {factor}")
    if factor_rule not in FACTOR_RULES:
        raise ValueError(f"factor_rule must be one of {FACTOR_RULES}, got {factor_rule!r}")


def _host_checkable(t):
    """Whether a check may read t's values here: on the CPU, outside torch.compile. Reading a
    GPU tensor's values would synchronise with the device (and break CUDA graph capture), and
    under torch.compile it would break the graph; there the compiled ops check the values
    themselves (the CUDA ones with a device-side assert)."""
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


def check_unmask(logits, tokens, eligible, k, threshold, factor, factor_rule, remasking, scores, banned, demote):
    if logits.dim() != 3 or logits.dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        raise ValueError(f"logits must be (B, L, V) float32/bfloat16/float16/float64, got {tuple(logits.shape)} {logits.dtype}")
    B, L, V = logits.shape
    if tokens.shape != (B, L) or tokens.dtype != torch.long:
        raise ValueError(f"tokens must be ({B}, {L}) int64, got {tuple(tokens.shape)} {tokens.dtype}")
    if eligible.shape != (B, L) or eligible.dtype != torch.bool:
        raise ValueError(f"eligible must be ({B}, {L}) bool, got {tuple(eligible.shape)} {eligible.dtype}")
    if sum(a is not None for a in (k, threshold, factor)) != 1:
        raise ValueError("give exactly one of k (schedule), threshold or factor")
    if k is not None and (k.shape != (B,) or k.dtype != torch.long or (_host_checkable(k) and (k < 0).any())):
        raise ValueError(f"k must be ({B},) int64 and >= 0")
    if threshold is not None and math.isnan(threshold):
        raise ValueError("threshold must be a number")
    check_factor(factor, factor_rule)
    check_remasking(remasking)
    if remasking == "random" and (scores is None or scores.shape != (B, L)):
        raise ValueError(f"remasking='random' needs scores of shape ({B}, {L})")
    if len(banned) == 0 or min(banned) < 0 or max(banned) >= V:
        raise ValueError(f"banned must hold at least the mask token, ids in [0, {V}), got {list(banned)}")
    if len(demote) and (min(demote) < 0 or max(demote) >= V):
        raise ValueError(f"demote must hold ids in [0, {V}), got {list(demote)}")


def check_attention(q, k, v, k_prefix, v_prefix, prefix_len, k_suffix, v_suffix):
    if q.dim() != 4 or q.dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        raise ValueError(f"q must be (B, H, b, D) floating point, got {tuple(q.shape)} {q.dtype}")
    B, H, b, D = q.shape
    if b == 0:
        raise ValueError("the block must hold at least one position (q of shape (B, H, 0, D))")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"the block's k and v must have q's shape {tuple(q.shape)}")
    for name, ks, vs in (("prefix", k_prefix, v_prefix), ("suffix", k_suffix, v_suffix)):
        if (ks is None) != (vs is None):
            raise ValueError(f"give both {name} k and v, or neither")
        if ks is not None and (ks.shape != vs.shape or ks.shape[:2] != (B, H) or ks.shape[3] != D or ks.dim() != 4):
            raise ValueError(f"{name} k/v must be ({B}, {H}, n, {D}), got {tuple(ks.shape)} and {tuple(vs.shape)}")
    for t in (k, v, k_prefix, v_prefix, k_suffix, v_suffix):
        if t is not None and t.dtype != q.dtype:
            raise ValueError(f"all of q, k, v must have one dtype, got {q.dtype} and {t.dtype}")
    if k_prefix is not None:
        Lc = k_prefix.shape[2]
        if prefix_len is None or prefix_len.shape != (B,) or prefix_len.dtype != torch.long:
            raise ValueError(f"prefix_len must be ({B},) int64 when a prefix is given")
        if len(prefix_len) and _host_checkable(prefix_len) and (prefix_len.min() < 0 or prefix_len.max() > Lc):
            raise ValueError(f"prefix_len must lie in [0, {Lc}]")
