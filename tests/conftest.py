"""Shared fixtures. Run the suite with:  python -m pytest -q tests"""

import os
import sys

import pytest
import torch

# One thread unless OMP_NUM_THREADS says otherwise: the tiny models here gain nothing from more,
# and on a loaded machine torch's default (a thread per core) made the suite 17x slower. Set in
# the environment too, for the scripts the tests run (cli.set_threads) and the processes they start.
if "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # train_tiny.py and sample.py are importable as modules, the benchmarks as bench.*

from mini_dlm.data import DEFAULT_DATA  # noqa: E402
from mini_dlm.model import ModelConfig, Transformer  # noqa: E402
from mini_dlm.plumbing.checkpoint import new_model, save_checkpoint  # noqa: E402
from mini_dlm.tokenizer import Tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def corpus():
    """The first 60k characters of the shipped corpus: enough for every test, fast to tokenize."""
    with open(DEFAULT_DATA, encoding="utf-8") as f:
        return f.read()[:60_000]


@pytest.fixture(scope="session")
def tokenizer(corpus):
    return Tokenizer.train(corpus, 320)


@pytest.fixture(scope="session")
def corpus_file(corpus, tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny.txt"
    path.write_text(corpus, encoding="utf-8")
    return str(path)


@pytest.fixture(scope="session")
def checkpoints(tokenizer, tmp_path_factory):
    """Three tiny checkpoints of one size and tokenizer: AR, full-attention, block diffusion."""
    d = tmp_path_factory.mktemp("ckpt")
    paths = {}
    for name, kw in (("ar", dict(objective="ar")), ("dlm", {}), ("block", dict(block_size=8))):
        torch.manual_seed(0)
        cfg = ModelConfig(vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_id, seq_len=32, n_layer=2,
                          n_head=2, n_embd=32, **kw)
        paths[name] = str(d / f"{name}.pt")
        save_checkpoint(paths[name], Transformer(cfg).eval(), tokenizer, 0)
    return paths


def tiny_model(objective="mdm", vocab_size=64, seq_len=48, seed=0, **kw):
    """A real (randomly initialised) Transformer small enough to run hundreds of times."""
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab_size, seq_len=seq_len, n_layer=2, n_head=2, n_embd=32,
                      mask_id=vocab_size - 1, objective=objective, **kw)
    return new_model(cfg).eval()


def spread(model, scale=12.0):
    """A random net far from uniform (weights x scale), so outputs depend on the context and
    confidences are rarely close: a pin that tells configurations apart."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(scale)
    return model


def record(steps, history):
    """Pass a sampler's steps on, appending (step number, block, x, committed) copies to history."""
    for n, step in enumerate(steps, 1):
        history.append((n, step.block, step.x.clone(), step.committed.clone()))
        yield step


def flat(op, logits, tokens, eligible, k=None, seed=0, scores=None, **rule):
    """op (ops.unmask or ops.unmask_reference) with its Rule's fields given as keywords, as one
    dict of a test's cases can give them (k, seed, scores stay per call)."""
    from mini_dlm.ops import Rule
    return op(logits, tokens, eligible, Rule(**rule), k, seed, scores)
