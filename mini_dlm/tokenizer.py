"""
Byte-level BPE, trained here on the corpus, wrapped in a tiktoken.Encoding.

Training (Sennrich et al. 2016; GPT-2's byte-level variant, Radford et al. 2019):
  1. pre-split the text with GPT-2's regex, so merges never cross word/space/punct borders;
  2. count each distinct chunk once (Shakespeare: ~1M chars, ~25k distinct chunks);
  3. repeatedly merge the most frequent adjacent pair of tokens into a new token.
Only the chunks that hold the merged pair are touched, and a heap with lazy deletion finds the
next best pair, so the default 2048-token vocabulary trains in a few seconds on one core.

Encoding is then done by tiktoken (Rust), which applies merges by rank: it only needs the
`mergeable_ranks` {token bytes: id}. Two special tokens follow the merged ones:
  <|endoftext|>  end of a document (train_tiny.py --docs; variable-length generation)
  <|mask|>       M, the absorbing state of masked diffusion: never produced by encode()
useful_lengths() counts the tokens a generated row keeps: those before its first end-of-text.
"""

import hashlib
import heapq
from collections import Counter, defaultdict

import regex
import tiktoken

# GPT-2's pre-tokenisation pattern: contractions, letters, numbers, other symbols, spaces.
GPT2_SPLIT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"
MASK = "<|mask|>"
N_SPECIAL = 2
MIN_VOCAB = 256 + N_SPECIAL  # the bytes and the specials: a byte-level tokenizer without merges
GPT2_VOCAB = 50257 + N_SPECIAL  # tiktoken's GPT-2 and the specials


def train_bpe(text, vocab_size):
    """Learn merges until the vocabulary (256 bytes + merges + 2 specials) has vocab_size ids.
    Returns merges as a list of (left_id, right_id): new token 256+i is their concatenation.
    Deterministic: the most frequent pair wins, ties go to the smallest (left, right)."""
    if vocab_size < MIN_VOCAB:
        raise ValueError(f"vocab size must be at least {MIN_VOCAB} (256 bytes + 2 special), got {vocab_size}")
    chunks = Counter(regex.findall(GPT2_SPLIT, text))
    words = [list(w.encode("utf-8")) for w in chunks]  # each chunk as a list of token ids
    freqs = list(chunks.values())

    pair_count = defaultdict(int)  # (a, b) -> occurrences in the corpus
    where = defaultdict(set)  # (a, b) -> indices of words that (may) contain it
    for w, (ids, f) in enumerate(zip(words, freqs)):
        for pair in zip(ids, ids[1:]):
            pair_count[pair] += f
            where[pair].add(w)
    heap = [(-c, pair) for pair, c in pair_count.items()]
    heapq.heapify(heap)

    vocab = [bytes([i]) for i in range(256)]  # id -> bytes
    known = {b: i for i, b in enumerate(vocab)}  # bytes -> id
    merges = []
    while len(vocab) < vocab_size - N_SPECIAL and heap:
        neg, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -neg or neg == 0:
            continue  # stale heap entry: the count changed since it was pushed
        new_bytes = vocab[pair[0]] + vocab[pair[1]]
        new = known.get(new_bytes)
        if new is None:  # the same bytes can arise from two different pairs: keep one id
            new = known[new_bytes] = len(vocab)
            vocab.append(new_bytes)
            merges.append(pair)
        changed = set()
        for w in where.pop(pair):
            ids, f = words[w], freqs[w]
            merged, i, hit = [], 0, False
            while i < len(ids):
                if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
                    merged.append(new)
                    i, hit = i + 2, True
                else:
                    merged.append(ids[i])
                    i += 1
            if not hit:
                continue
            for p in zip(ids, ids[1:]):  # retract the word's old pairs, count its new ones
                pair_count[p] -= f
                changed.add(p)
            for p in zip(merged, merged[1:]):
                pair_count[p] += f
                where[p].add(w)
                changed.add(p)
            words[w] = merged
        for p in changed:
            if pair_count[p] > 0:
                heapq.heappush(heap, (-pair_count[p], p))
    return merges


class Tokenizer:
    """A tiktoken.Encoding plus the ids the model needs (eot_id, mask_id) and a way to save it
    inside a checkpoint (to_dict / from_dict: plain ints and strings, so weights_only loads)."""

    def __init__(self, kind, merges=None):
        self.kind, self.merges = kind, merges
        if kind == "bpe":
            vocab = [bytes([i]) for i in range(256)]
            for a, b in merges:
                vocab.append(vocab[a] + vocab[b])
            ranks = {tok: i for i, tok in enumerate(vocab)}
            pattern, name = GPT2_SPLIT, f"mini_dlm_bpe_{len(vocab) + N_SPECIAL}"
        elif kind == "gpt2":  # needs tiktoken's cached GPT-2 files or the network
            try:
                base = tiktoken.get_encoding("gpt2")
            except Exception as e:
                raise ValueError(f"tiktoken's gpt2 encoding is unavailable (it needs the network or a cached "
                                 f"copy; the default --tokenizer bpe needs neither): {type(e).__name__}") from None
            ranks, pattern, name = base._mergeable_ranks, base._pat_str, "gpt2_mask"
        else:
            raise ValueError(f"unknown tokenizer kind {kind!r} (expected 'bpe' or 'gpt2')")
        n = len(ranks)
        self.eot_id, self.mask_id = n, n + 1
        self.enc = tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks,
                                     special_tokens={EOT: self.eot_id, MASK: self.mask_id})
        self.vocab_size = n + N_SPECIAL

    @classmethod
    def train(cls, text, vocab_size):
        """A BPE tokenizer of exactly vocab_size ids trained on text; ValueError if text is too
        small to yield that many."""
        tok = cls("bpe", train_bpe(text, vocab_size))
        if tok.vocab_size != vocab_size:
            raise ValueError(f"the training text yields only {tok.vocab_size} token ids, not the {vocab_size} of "
                             f"--vocab-size: give --vocab-size {tok.vocab_size} or more text")
        return tok

    def encode(self, text, allow_special=False):
        """Text -> ids. By default special-token strings in the text are encoded as plain text,
        so a prompt can never smuggle in a mask or end-of-text token."""
        if allow_special:
            return self.enc.encode(text, allowed_special="all")
        return self.enc.encode_ordinary(text)

    def decode(self, ids):
        return self.enc.decode(list(ids), errors="replace")

    def token_bytes(self, i):
        return self.enc.decode_single_token_bytes(i)

    def to_dict(self):
        return {"kind": self.kind, "merges": [list(p) for p in self.merges or []]}

    @classmethod
    def from_dict(cls, d):
        return cls(d["kind"], [tuple(p) for p in d["merges"]] if d["kind"] == "bpe" else None)

    def fingerprint(self):
        """Short hash that changes whenever the id <-> bytes mapping changes."""
        return hashlib.sha256(repr(self.to_dict()).encode()).hexdigest()[:12]


def useful_lengths(gen, eot_id):
    """gen (B, G) generated ids -> (B,) int64: the position of each row's first eot_id, or G.
    What a user keeps: a fixed canvas filled past the end of the document is not output."""
    before = (gen == eot_id).cumsum(dim=1) == 0  # (B, G): no end-of-text up to here
    return before.sum(dim=1)
