"""
Data: read a UTF-8 text file, split it (first 90% train, last 10% validation, cut at a line
break), train the tokenizer on the training text, encode both halves, and cache the result
next to the checkpoints so the second run starts in well under a second.

Two ways to cut the tokens into training rows:
  packed (default)  random windows of the packed token stream (nanoGPT style): text runs on
                    across document boundaries, so the model never learns where text ends;
  documents (--docs) one document per row, followed by end-of-text and padded with
                    end-of-text to the row length, as LLaDA's SFT pads answers with |EOS|, so
                    the model learns to end a document (variable-length generation, notes 07).
                    Documents are cut at a separator: a blank line by default, which for the
                    shipped corpus is one speech (a speaker line and its text). A document
                    longer than a row continues on the next row; only its last row ends.
A generated task (--task) needs no file: mini_dlm/tasks/rows.py makes its rows.
"""

import hashlib
import os

import torch

from mini_dlm.plumbing.files import atomic_save, safe_load
from mini_dlm.tokenizer import Tokenizer

DEFAULT_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "data", "tinyshakespeare.txt")
VAL_FRACTION = 0.1
CACHE_VERSION = 1


def read_text(path):
    """Read a UTF-8 text file; ValueError with one clear line for anything else."""
    if not os.path.exists(path):
        raise ValueError(f"data file not found: {path}")
    if not os.path.isfile(path):
        raise ValueError(f"data path is not a file: {path}")
    with open(path, "rb") as f:
        raw = f.read()
    if b"\x00" in raw:
        raise ValueError(f"data file looks binary (it contains NUL bytes): {path}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"data file is not valid UTF-8 (bad byte at offset {e.start}): {path}") from None
    if not text.strip():
        raise ValueError(f"data file is empty: {path}")
    return text, raw


def split_text(text, val_fraction=VAL_FRACTION):
    """Deterministic split: the validation text starts at the first line break after 90%."""
    cut = int(len(text) * (1 - val_fraction))
    nl = text.find("\n", cut)
    cut = nl + 1 if 0 <= nl < len(text) - 1 else cut
    return text[:cut], text[cut:]


def split_documents(text, sep="\n\n"):
    """Documents of text cut at sep, stripped of surrounding newlines, empty ones dropped."""
    return [d.strip("\n") for d in text.split(sep) if d.strip()]


def document_rows(tokenizer, docs, length):
    """docs -> (N, length) int32 rows: each document's ids, then eot_id, then eot_id padding.
    A document of n >= length tokens fills ceil((n + 1) / length) rows; only the last ends."""
    eot, rows = tokenizer.eot_id, []
    for ids in tokenizer.enc.encode_ordinary_batch(docs):  # special-token text stays plain text
        ids = ids + [eot]
        for i in range(0, len(ids), length):
            piece = ids[i:i + length]
            rows.append(piece + [eot] * (length - len(piece)))
    return torch.tensor(rows, dtype=torch.int32).view(-1, length)


def check_length(train, val, seq_len):
    if min(len(train), len(val)) <= seq_len + 1:
        raise ValueError(f"--seq-len {seq_len} is longer than the data: {len(train)} train / {len(val)} "
                         f"validation tokens; use a smaller --seq-len or a larger --data file")


def prepare_data(path, vocab_size, cache_dir, seq_len, tokenizer_kind="bpe", tokenizer=None, doc_sep=None):
    """-> (tokenizer, train, val) as int32 tensors. Trains the tokenizer unless one is given
    (e.g. from a checkpoint being resumed). Cached in cache_dir, keyed by file content.
    Packed (doc_sep None): train and val are token streams, each longer than seq_len + 1
    tokens (checked before anything is written). Documents (doc_sep a separator string):
    train and val are (N, seq_len + 1) rows from document_rows (recomputed each run, about a
    second for the shipped corpus)."""
    if doc_sep == "":
        raise ValueError("--doc-sep must not be empty")
    text, raw = read_text(path)
    tokenizer, train, val = prepare_tokens(text, raw, vocab_size, cache_dir, seq_len, tokenizer_kind, tokenizer)
    if doc_sep is None:
        return tokenizer, train, val
    rows = [document_rows(tokenizer, split_documents(t, doc_sep), seq_len + 1) for t in split_text(text)]
    if min(len(r) for r in rows) == 0:
        raise ValueError(f"{path} has no document in its train or validation split (separator {doc_sep!r})")
    return tokenizer, rows[0], rows[1]


def prepare_tokens(text, raw, vocab_size, cache_dir, seq_len, tokenizer_kind="bpe", tokenizer=None):
    """prepare_data's packed streams of the file read as (text, raw bytes): (tokenizer,
    train_ids, val_ids), cached."""
    digest = hashlib.sha256(raw).hexdigest()[:16]
    cache = os.path.join(cache_dir, f"tokens-{digest}-{tokenizer_kind}{vocab_size}-v{CACHE_VERSION}.pt")
    c = load_cache(cache)
    if c and (tokenizer is None or c[0].fingerprint() == tokenizer.fingerprint()):
        check_length(c[1], c[2], seq_len)
        return c
    train_text, val_text = split_text(text)
    fresh = tokenizer is None
    if fresh:
        tokenizer = Tokenizer.train(train_text, vocab_size) if tokenizer_kind == "bpe" else Tokenizer(tokenizer_kind)
    train = torch.tensor(tokenizer.encode(train_text), dtype=torch.int32)
    val = torch.tensor(tokenizer.encode(val_text), dtype=torch.int32)
    check_length(train, val, seq_len)
    if fresh:  # a tokenizer handed in may differ from what the key promises: don't cache it
        os.makedirs(cache_dir, exist_ok=True)
        atomic_save({"tokenizer": tokenizer.to_dict(), "train": train, "val": val}, cache)
    return tokenizer, train, val


def load_cache(path):
    """-> (tokenizer, train, val) from a token cache, or None if it is missing or damaged."""
    if not os.path.isfile(path):
        return None
    try:
        c = safe_load(path, "token cache")
        return Tokenizer.from_dict(c["tokenizer"]), c["train"], c["val"]
    except (ValueError, KeyError, TypeError):
        return None  # rebuilt and overwritten


def train_slice(ids, n_tokens, length):
    """The first n_tokens of a token stream ids (1-D), or the first n_tokens // row rows of rows
    (N, row): a fixed slice that training repeats for as many epochs as it runs (a
    data-constrained run). ValueError if it cannot hold one window of length tokens, or is
    more than there is."""
    have = ids.numel()
    if n_tokens > have:
        raise ValueError(f"--train-tokens {n_tokens:,} is more than the {have:,} training tokens there are")
    if ids.dim() == 2:
        if n_tokens < ids.shape[1]:
            raise ValueError(f"--train-tokens {n_tokens} is less than one row of {ids.shape[1]} tokens")
        return ids[:n_tokens // ids.shape[1]]
    if n_tokens < length:
        raise ValueError(f"--train-tokens {n_tokens} is less than one training window of {length} tokens")
    return ids[:n_tokens]


def get_batch(ids, batch_size, length, generator, device):
    """(batch_size, length) int64 on device: random windows of a token stream (ids 1-D), or
    random rows of document rows (ids (N, length), from document_rows)."""
    if ids.dim() == 2:
        x = ids[torch.randint(0, len(ids), (batch_size,), generator=generator)].long()  # (B, length)
    else:
        starts = torch.randint(0, len(ids) - length + 1, (batch_size,), generator=generator)
        x = torch.stack([ids[s:s + length] for s in starts.tolist()]).long()  # (B, length)
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)
