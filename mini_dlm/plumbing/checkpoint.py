"""
Checkpoints: one file holding everything sample.py needs (weights, model config, tokenizer) and
everything --resume needs (optimizer state, step, the training flags).

Written atomically (write a temporary file beside it, then os.replace), so Ctrl-C or a full disk
never leaves a half-written checkpoint. Loaded with torch.load(weights_only=True): the file holds
only tensors and plain Python values, so loading one cannot run code.
"""

import os
import pickle
import warnings
from dataclasses import asdict

import torch

from mini_dlm.conversion.token_shift import TokenShiftTransformer
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


def safe_load(path, what="checkpoint", flag=None):
    """torch.load(weights_only=True), or a ValueError of one short line that names flag (the
    command-line flag path came from) and path, and says what is wrong with the file."""
    who = f"{flag} {path}" if flag else path
    if os.path.isdir(path):
        raise ValueError(f"{who}: is a directory, not a {what} file")
    if not os.path.isfile(path):
        raise ValueError(f"{who}: {what} not found")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise ValueError(f"{who}: cannot read it ({e.strerror})") from None
    if not head:
        raise ValueError(f"{who}: empty file, not a {what}")
    try:
        with warnings.catch_warnings():  # e.g. a foreign pickle's protocol: the error below says it all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch's own messages run to hundreds of characters
        raise ValueError(f"{who}: {load_failure(head, e, what)}") from None


def load_failure(head, error, what):
    """Why torch.load(weights_only=True) failed on a file beginning with bytes head, in a few words."""
    if head != b"PK\x03\x04":  # how a file torch.save wrote begins (a zip archive)
        return f"not a mini_dlm {what} (not a file torch.save wrote)"
    if isinstance(error, pickle.UnpicklingError):  # refused by weights_only: a pickled class, function, ...
        return f"not a mini_dlm {what} (it holds Python objects, not only tensors and plain values)"
    return f"not a complete {what} (truncated or corrupt)"


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


def new_model(cfg):
    """A freshly initialised model of config cfg: the Transformer, or its token-shift subclass."""
    return (TokenShiftTransformer if cfg.token_shift else Transformer)(cfg)


def load_checkpoint(path, device="cpu", flag=None):
    """-> (model in eval mode on device, tokenizer, the raw checkpoint dict). Errors name flag,
    the command-line flag path came from, if given."""
    who = f"{flag} {path}" if flag else path
    ckpt = safe_load(path, "checkpoint", flag)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{who}: not a mini_dlm checkpoint (expected format {FORMAT!r})")
    try:
        model = new_model(ModelConfig(**ckpt["model_config"]))
        model.load_state_dict(ckpt["model"])
        tokenizer = Tokenizer.from_dict(ckpt["tokenizer"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise ValueError(f"{who}: a damaged mini_dlm checkpoint ({str(e).splitlines()[0][:100]})") from None
    return model.to(device).eval(), tokenizer, ckpt
