"""
Quality figures for generated text (notes/04, notes/06).

  generative NLL       mean negative log-likelihood of the generated tokens under an AR model,
                       given the prompt; exp of it is the generative perplexity (MDLM's
                       "gen PPL"). Lower reads more like the training text to that model, but
                       it also rewards loops, so read it beside distinct3.
  distinct3            distinct token trigrams / all trigrams: 1.0 for text that never repeats
                       itself, near 0 for a loop.
"""

import math

import torch
import torch.nn.functional as F

from mini_dlm.plumbing.checkpoint import load_checkpoint
from mini_dlm.plumbing.cli import autocast
from mini_dlm.sampler import finish, generate

from bench.roofline import timed_call


def load_judge(path, tokenizer, device):
    """The AR checkpoint that scores generations; ValueError unless it is AR with the same tokenizer."""
    ar, tok, _ = load_checkpoint(path, device)
    if ar.config.objective != "ar" or tok.fingerprint() != tokenizer.fingerprint():
        raise ValueError(f"{path} must be an AR checkpoint with the same tokenizer as the model it scores")
    return ar


def load_with_judge(dlm_path, ar_path, device):
    """(diffusion model, its tokenizer, the AR judge) from --dlm and --ar; ValueError unless
    --dlm is a diffusion checkpoint and --ar an AR one with the same tokenizer."""
    dlm, tok, _ = load_checkpoint(dlm_path, device, "--dlm")
    if dlm.config.objective != "mdm":
        raise ValueError(f"--dlm {dlm_path} must be a diffusion checkpoint")
    return dlm, tok, load_judge(ar_path, tok, device)


@torch.no_grad()
def generative_nll(ar, prompts, gens, batch_size=64):
    """Mean NLL (nats/token, over all generated tokens) of each gens[r] given prompts[r] (lists
    of ids) under the causal model ar. Rows are right-padded, which a causal model never sees."""
    device = next(ar.parameters()).device
    total, count = 0.0, 0
    pairs = [(p, g) for p, g in zip(prompts, gens) if g]  # rows with nothing generated score nothing
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        T = max(len(p) + len(g) for p, g in chunk)
        x = torch.zeros(len(chunk), T, dtype=torch.long)
        target = torch.full((len(chunk), T - 1), -100, dtype=torch.long)  # -100: not scored
        for r, (p, g) in enumerate(chunk):
            x[r, :len(p) + len(g)] = torch.tensor(p + g)
            target[r, len(p) - 1:len(p) + len(g) - 1] = torch.tensor(g)
        logits = ar(x[:, :-1].to(device))  # (b, T - 1, V): the prediction of each next token
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        total += F.cross_entropy(logits.flatten(0, 1), target.flatten().to(device), reduction="sum").item()
        count += int((target != -100).sum())
    return total / max(count, 1)


def distinct3(ids):
    """Distinct token trigrams / all trigrams of one row of ids."""
    grams = list(zip(ids, ids[1:], ids[2:]))
    return len(set(grams)) / max(1, len(grams))


def decode_each(model, prompts, device, opts, gen_len, generator=None):
    """Generate gen_len tokens for each prompt alone (batch 1) with generate(model, p, opts,
    gen_len, generator), opts a sampler.Decoding -> (outs, seconds, passes): the generated ids
    of each row, and the summed seconds and forward passes."""
    outs, seconds, passes = [], 0.0, 0
    with autocast(device):
        for p in prompts:
            (x, stats), dt = timed_call(lambda: finish(generate(model, p, opts, gen_len, generator)), device)
            outs.append(x[0, len(p):].tolist())
            seconds, passes = seconds + dt, passes + stats["forward_passes"]
    return outs, seconds, passes


def quality(ar, prompts, outs):
    """(generative perplexity, mean distinct3) of outs given prompts under the AR judge ar."""
    return math.exp(generative_nll(ar, prompts, outs)), sum(distinct3(o) for o in outs) / len(outs)
