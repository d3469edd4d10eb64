"""Infilling: templates, the canvas-level sampler (sampler.denoise) on canvases with blanks
anywhere, every cache that applies, and the block model's exact cache.
    python -m pytest -q tests/test_infill.py"""

import pytest
import torch

from conftest import record, spread, tiny_model
from mini_dlm.sampler import Decoding, NoCache, block_spans, denoise, finish, steps_per_block
from mini_dlm.sampling.infill import infill, infill_canvas, parse_template, template_ids

M = 63  # tiny_model's mask id


def canvas(*pieces, rows=1):
    """canvas([1, 2], 3, [4]) -> (rows, 6) ids: fixed ids as given, an int n as n masks."""
    ids = [t for p in pieces for t in ([M] * p if isinstance(p, int) else p)]
    return torch.tensor(ids).repeat(rows, 1)


@pytest.mark.parametrize("text, pieces", [
    ("ROMEO:{24} my lord.", ["ROMEO:", 24, " my lord."]),
    ("{3}{4}", [3, 4]),
    ("{2}middle{05}", [2, "middle", 5]),
    ("a{b}c{x1}{-2}{ 3}{1}", ["a{b}c{x1}{-2}{ 3}", 1]),  # only {digits} is a blank
])
def test_parse_template(text, pieces):
    assert parse_template(text) == pieces


@pytest.mark.parametrize("text, match", [
    ("no blank here", "no blank"), ("", "no blank"), ("{x}", "no blank"), ("a{0}b", "size 0"), ("a{2}b{00}", "size 0")])
def test_bad_templates(text, match):
    with pytest.raises(ValueError, match=match):
        parse_template(text)


def test_template_ids_tokenize_each_fixed_piece_alone(tokenizer):
    ids = template_ids(tokenizer, parse_template("ROMEO:{4} my lord.{2}\nAnd"), tokenizer.mask_id)
    assert ids == (tokenizer.encode("ROMEO:") + [tokenizer.mask_id] * 4 + tokenizer.encode(" my lord.")
                   + [tokenizer.mask_id] * 2 + tokenizer.encode("\nAnd"))


def test_infill_canvas_refusals(tokenizer):
    V = tokenizer.vocab_size
    with pytest.raises(ValueError, match="AR model cannot infill"):
        infill_canvas(tiny_model("ar", vocab_size=V), tokenizer, "a{3}b")
    with pytest.raises(ValueError, match="context of 48"):
        infill_canvas(tiny_model(vocab_size=V), tokenizer, "ROMEO:{20} and{30}")
    x = infill_canvas(tiny_model(vocab_size=V), tokenizer, "ROMEO:{20} and", rows=3)
    assert x.shape == (3, len(tokenizer.encode("ROMEO:")) + 20 + len(tokenizer.encode(" and")))


def test_block_spans_and_steps_per_block():
    masked = canvas([1, 2], 3, [4] * 9, 2, [5]) == M  # masks at 2..4 and 14..15 of 17 columns
    assert block_spans(masked, 4) == [(2, 6), (6, 10), (10, 14), (14, 17)]
    assert block_spans(masked, 16) == [(2, 17)]  # the last block stops at the canvas end
    assert steps_per_block([3, 0, 0, 2], 5) == [3, 0, 0, 2]
    assert steps_per_block([3, 0, 0, 2], 2) == [2, 0, 0, 1]  # ceil(2 * 3 / 5), ceil(2 * 2 / 5)
    assert steps_per_block([8, 8, 8], 12) == [4, 4, 4]  # [prompt, M * G]: steps / (G / b)


CASES = [("none", 0, None), ("prefix", 0, None), ("dual", 0, None), ("prefix", 0, 0.3), ("dual", 0, 0.3),
         ("none", 8, None), ("block", 8, None), ("block", 8, 0.3)]


@pytest.mark.parametrize("cache, block_size, threshold", CASES)
def test_blanks_filled_fixed_text_untouched_blocks_in_order(cache, block_size, threshold):
    """Several blanks (one at the very start): every blank is filled, every fixed token stays,
    only blank positions are committed, block by block from the left."""
    model = tiny_model(seq_len=64, seed=3, block_size=block_size)
    x0 = canvas(2, [5, 6, 7], 5, [8] * 12, 3, [9, 10], rows=2)
    x0[1, 3] = 11  # rows may differ in their fixed text
    history = []
    opts = Decoding(block_len=8, threshold=threshold, cache=cache)
    x, stats = finish(record(denoise(model, x0, opts, generator=torch.Generator().manual_seed(0)), history))
    blank = x0 == M
    assert not (x == M).any() and torch.equal(x[~blank], x0[~blank])
    spans, blocks = block_spans(blank, 8), [b for _, b, _, _ in history]
    assert blocks == sorted(blocks)
    for _, b, _, committed in history:
        lo, hi = spans[b]
        assert not (committed & ~blank).any() and not committed[:, :lo].any() and not committed[:, hi:].any()
    if threshold is None:  # the default: one blank token per step
        assert stats["transfers"].tolist() == [[1, 1]] * int(blank[0].sum())


@pytest.mark.parametrize("threshold", [None, 0.3])
@pytest.mark.parametrize("pieces", [
    ([1, 2, 3], 5, [4, 5], 3, [6] * 7),  # blanks inside and across blocks
    (4, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14], 2, [7]),  # a blank at column 0, a mask-free block
    ([1] * 9, 6),  # a blank at the end
])
def test_block_cache_equals_no_cache_when_infilling(pieces, threshold):
    model = spread(tiny_model(seq_len=64, seed=4, block_size=8), 4.0).double()  # outputs that depend on the context
    x0 = canvas(*pieces, rows=2)
    x0[1, x0[1] != M] += 1
    runs = [finish(denoise(model, x0, Decoding(block_len=8, threshold=threshold, cache=c))) for c in ("none", "block")]
    assert torch.equal(runs[0][0], runs[1][0]) and not (runs[0][0] == M).any()


def test_fewer_steps_are_shared_by_the_blocks():
    model = tiny_model(seq_len=64, seed=2)
    x0 = canvas([1, 2], 6, [3] * 4, 4, [5])  # blocks of 8 from column 2: 6 masks, then 4
    x, stats = finish(denoise(model, x0, Decoding(steps=5, block_len=8)))
    assert stats["forward_passes"] == 3 + 2  # ceil(5 * 6 / 10), ceil(5 * 4 / 10)
    assert stats["transfers"].flatten().tolist() == [2, 2, 2, 2, 2]
    assert not (x == M).any()


def test_a_full_attention_model_sees_the_right_side_a_block_model_only_its_block():
    """Text right of the blank changes the blank's logits under full attention; under
    block-causal attention text beyond the blank's block changes nothing."""
    a, b = canvas([1, 2, 3], 6, [4, 5, 6, 7, 8, 9, 10]), canvas([1, 2, 3], 6, [4, 5, 20, 21, 22, 23, 24])
    pad = torch.zeros(1, dtype=torch.long)
    full = spread(tiny_model(seq_len=64, seed=5)).double()
    la, lb = (NoCache(full, x, pad, 3, 8).logits(x, 3, 11, 0) for x in (a, b))
    assert not torch.allclose(la, lb)
    blk = spread(tiny_model(seq_len=64, seed=5, block_size=8)).double()  # blank's block: columns 3..10
    fills = [finish(denoise(blk, x, Decoding(block_len=8)))[0] for x in (a, b)]
    assert torch.equal(fills[0][:, :11], fills[1][:, :11])


def test_infill_entry_point_fills_a_template(tokenizer):
    model = tiny_model(vocab_size=tokenizer.vocab_size, seq_len=64, seed=1)
    x0 = infill_canvas(model, tokenizer, "ROMEO:{6} my lord.{3}", rows=2)
    x, stats = finish(infill(model, tokenizer, "ROMEO:{6} my lord.{3}", Decoding(block_len=4, threshold=0.5, cache="dual"),
                             rows=2))
    assert x.shape == x0.shape and not (x == tokenizer.mask_id).any()
    assert torch.equal(x[x0 != tokenizer.mask_id], x0[x0 != tokenizer.mask_id])


@pytest.mark.parametrize("x0, kw, match", [
    (canvas([1, 2, 3]), {}, "no mask"),
    (canvas([1], 4), {"steps": 5}, "between 1 and the 4"),
    (canvas([1], 60), {}, "context of 48"),
    (canvas([1], 4), {"block_len": 0}, "block-len must be positive"),
])
def test_bad_canvases(x0, kw, match):
    with pytest.raises(ValueError, match=match):
        finish(denoise(tiny_model(), x0, Decoding(**kw)))
