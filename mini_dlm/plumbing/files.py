"""
Files written atomically and read safely: what checkpoints (checkpoint.py) and the token cache
(mini_dlm/data.py) are stored with.

Written atomically (write a temporary file beside it, then os.replace), so Ctrl-C or a full disk
never leaves a half-written file. Loaded with torch.load(weights_only=True): the file holds only
tensors and plain Python values, so loading one cannot run code.
"""

import os
import pickle
import warnings

import torch


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
