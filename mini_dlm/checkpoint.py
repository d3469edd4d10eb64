"""
Checkpoints: one file holding everything sample.py needs (weights, model config, tokenizer) and
everything --resume needs (optimizer state, step, the training flags).

Written atomically (write a temporary file beside it, then os.replace), so Ctrl-C or a full disk
never leaves a half-written checkpoint. Loaded with torch.load(weights_only=True): the file holds
only tensors and plain Python values, so loading one cannot run code.
"""

import os
from dataclasses import asdict

import torch

from mini_dlm.model import ModelConfig, Transformer
from mini_dlm.tokenizer import Tokenizer

FORMAT = "mini_dlm/1"


def atomic_save(obj, path):
    """torch.save to path, or leave path untouched if anything (even Ctrl-C) interrupts it."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def safe_load(path, what):
    """torch.load(weights_only=True) with one-line errors for missing or corrupt files."""
    if not os.path.isfile(path):
        raise ValueError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle, random bytes, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot read {what} {path} (truncated or not a torch file): {first}") from None


def save_checkpoint(path, model, tokenizer, step, optimizer=None, train_config=None, val=None):
    atomic_save({
        "format": FORMAT,
        "model": model.state_dict(),
        "model_config": asdict(model.config),
        "tokenizer": tokenizer.to_dict(),
        "step": step,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "train_config": train_config or {},
        "val": val,  # last validation figures, for the record
    }, path)


def load_checkpoint(path, device="cpu"):
    """-> (model in eval mode on device, tokenizer, the raw checkpoint dict)."""
    ckpt = safe_load(path, "checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a mini_dlm checkpoint (expected format {FORMAT!r})")
    try:
        model = Transformer(ModelConfig(**ckpt["model_config"]))
        model.load_state_dict(ckpt["model"])
        tokenizer = Tokenizer.from_dict(ckpt["tokenizer"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise ValueError(f"{path} is a damaged mini_dlm checkpoint: {str(e).splitlines()[0]}") from None
    return model.to(device).eval(), tokenizer, ckpt
