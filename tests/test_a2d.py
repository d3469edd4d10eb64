"""train_tiny.py --init-from (AR-to-diffusion conversion) and --train-tokens (a data slice
repeated for many epochs). python -m pytest -q tests/test_a2d.py"""

import os

import pytest
import torch

import train_tiny
from mini_dlm.data import get_batch, train_slice
from test_cli import TINY, fails_cleanly, trained_ar  # noqa: F401 (trained_ar: a 2-step AR run)


def test_conversion_starts_from_the_ar_weights(trained_ar, corpus_file, tmp_path, capsys):
    """At learning rate 0 one step changes nothing: the converted model is the AR model's
    weights, now with the diffusion objective (and a block size the AR model did not have)."""
    out = str(tmp_path / "a2d")
    train_tiny.main(TINY + ["--data", corpus_file, "--out-dir", out, "--init-from", trained_ar, "--block-size", "8",
                            "--max-iters", "1", "--eval-interval", "1", "--lr", "0", "--min-lr", "0"])
    assert f"initialised from {trained_ar}" in capsys.readouterr().out
    ar, a2d = torch.load(trained_ar, weights_only=True), torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)
    assert (a2d["model_config"]["objective"], a2d["model_config"]["block_size"], a2d["step"]) == ("mdm", 8, 1)
    assert a2d["model"].keys() == ar["model"].keys()
    assert all(torch.equal(a2d["model"][k], ar["model"][k]) for k in ar["model"])


def test_conversion_trains_away_from_the_ar_weights(trained_ar, corpus_file, tmp_path):
    out = str(tmp_path / "a2d")
    train_tiny.main(TINY + ["--data", corpus_file, "--out-dir", out, "--init-from", trained_ar, "--max-iters", "2",
                            "--eval-interval", "2"])
    ar, a2d = torch.load(trained_ar, weights_only=True), torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)
    assert not torch.equal(a2d["model"]["lm_head.weight"], ar["model"]["lm_head.weight"])


@pytest.mark.parametrize("flags, match", [
    (["--n-embd", "64"], "its model is --n-layer 1 --n-head 2 --n-embd 32, this run's --n-layer 1 --n-head 2 --n-embd 64"),
    (["--vocab-size", "280"], "its tokenizer (bpe, 300 tokens) is not this run's (bpe, 280 tokens)"),
    (["--resume"], "give one of them"),
])
def test_init_from_refuses_another_shape_or_tokenizer(trained_ar, corpus_file, tmp_path, capsys, flags, match):
    out = str(tmp_path / "x")
    fails_cleanly(train_tiny.main, TINY + ["--data", corpus_file, "--out-dir", out, "--init-from", trained_ar,
                                           "--max-iters", "1"] + flags, capsys, match)
    assert not os.path.exists(os.path.join(out, "ckpt.pt"))


def test_init_from_a_missing_file_is_one_line(corpus_file, tmp_path, capsys):
    fails_cleanly(train_tiny.main, TINY + ["--data", corpus_file, "--out-dir", str(tmp_path / "x"),
                                           "--init-from", str(tmp_path / "nope.pt")], capsys, "--init-from")


def test_train_slice_keeps_exactly_n_tokens_and_batches_repeat_it():
    ids = torch.arange(1000)
    part = train_slice(ids, 100, 9)
    assert torch.equal(part, torch.arange(100))
    gen = torch.Generator().manual_seed(0)
    seen = torch.cat([get_batch(part, 64, 9, gen, torch.device("cpu")).flatten() for _ in range(20)])
    assert seen.max() < 100 and torch.equal(seen.unique(), torch.arange(100))  # all of it, nothing more, many times
    rows = torch.arange(60).view(10, 6)
    assert torch.equal(train_slice(rows, 20, 6), rows[:3])  # whole rows: 20 // 6
    for n, match in ((1001, "more than the 1,000"), (8, "less than one training window")):
        with pytest.raises(ValueError, match=match):
            train_slice(ids, n, 9)


def test_train_tokens_flag(corpus_file, tmp_path, capsys):
    out = str(tmp_path / "slice")
    train_tiny.main(TINY + ["--data", corpus_file, "--out-dir", out, "--train-tokens", "200", "--max-iters", "2",
                            "--eval-interval", "2"])
    # 2 steps x 4 windows x 32 tokens = 256 tokens read of 200
    assert "--train-tokens keeps 200 training tokens; 2 steps read them 1.3 times (epochs)" in capsys.readouterr().out
    assert torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)["train_config"]["train_tokens"] == 200
