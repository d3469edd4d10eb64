"""Classifier-free guidance (mini_dlm/sampling/guidance.py): the formula against two separate forwards,
one batched forward per step, scale 0 == no guidance, caches that hold both halves.
    python -m pytest -q tests/test_guidance.py"""

import pytest
import torch

from conftest import spread, tiny_model
from mini_dlm.sampler import (CACHES, Decoding, NoCache, canvas_attention, canvas_positions, denoise, finish, generate,
                              make_canvas)
from mini_dlm.sampling.guidance import Guided, guide, strategy
from mini_dlm.sampling.length import Daedal, forward_region, generate_dynamic

M = 63
PROMPTS = [[3, 4, 5, 6, 7], [8, 9]]


def infill_canvas():
    """A (2, 27) canvas: fixed text around two blanks, its first blank at column 3."""
    x = torch.tensor([[1, 2, 3] + [M] * 6 + [4, 5, 6] + [M] * 4 + list(range(10, 20))] * 2)
    x[1, :3] = torch.tensor([20, 21, 22])
    return x


def guided_generate(model, prompts, gen_len, **kw):
    """generate with the Decoding of kw, guided when kw's cfg_scale is > 0 (guidance.strategy)."""
    opts = Decoding(**kw)
    return generate(model, prompts, opts, gen_len, strategy=strategy(opts))


def guided_denoise(model, x, **kw):
    """denoise with the Decoding of kw, guided when kw's cfg_scale is > 0."""
    opts = Decoding(**kw)
    return denoise(model, x, opts, strategy=strategy(opts))


def separate_forwards(model, x, pad, start, lo, hi, scale):
    """u + (scale + 1)(c - u) from two forwards of B rows: c on x, u on x with its fixed tokens masked."""
    mask, pos = canvas_attention(model, pad, x.shape[1], start, 8), canvas_positions(pad, x.shape[1])
    c = model(x, mask, pos)[:, lo:hi]
    u = model(x.masked_fill(x != M, M), mask, pos)[:, lo:hi]
    return u + (scale + 1) * (c - u)


@pytest.mark.parametrize("cache, block_size", [("none", 0), ("prefix", 0), ("dual", 0), ("none", 8), ("block", 8)])
@pytest.mark.parametrize("kind", ["prompts", "infill"])
def test_guided_logits_follow_the_formula(cache, block_size, kind):
    """The first step of a block (a full forward, or the block against the exact block cache)
    with the batched 2B rows == the formula on two separate forwards."""
    model = spread(tiny_model(seq_len=64, seed=7, block_size=block_size), 3.0).double()
    if kind == "prompts":
        x, pad = make_canvas(PROMPTS, 16, model)  # left-padded rows
        start = x.shape[1] - 16
    else:
        x, pad, start = infill_canvas(), torch.zeros(2, dtype=torch.long), 3
    lo, hi = start, start + 8
    for scale in (0.5, 2.0):
        guided = Guided(CACHES[cache], model, x, pad, start, 8, scale).logits(x, lo, hi, 0)
        expected = separate_forwards(model, x, pad, start, lo, hi, scale)
        real = torch.ones(model.config.vocab_size, dtype=torch.bool)
        real[M] = False
        torch.testing.assert_close(guided[..., real], expected[..., real], atol=1e-9, rtol=1e-9)
        assert (guided[..., M] == float("-inf")).all()
        plain = NoCache(model, x, pad, start, 8).logits(x, lo, hi, 0)
        assert not torch.allclose(guided[..., real], plain[..., real])  # the guidance did something


def test_committed_tokens_stay_in_the_unconditional_half():
    """u masks what the canvas held at the start, not what the sampler committed since (LLaDA)."""
    model = spread(tiny_model(seq_len=64, seed=7), 3.0).double()
    x, pad = infill_canvas(), torch.zeros(2, dtype=torch.long)
    guided = Guided(NoCache, model, x, pad, 3, 8, 1.0)
    x[:, 3:5] = 7  # two committed tokens
    mask, pos = canvas_attention(model, pad, x.shape[1], 3, 8), canvas_positions(pad, x.shape[1])
    c, u = model(x, mask, pos)[:, 3:11], model(x.masked_fill(infill_canvas() != M, M), mask, pos)[:, 3:11]
    torch.testing.assert_close(guided.logits(x, 3, 11, 1)[..., :M], (u + 2 * (c - u))[..., :M], atol=1e-9, rtol=1e-9)


def test_guide_keeps_the_mask_token_impossible():
    logits = torch.randn(4, 3, 8)
    logits[..., 5] = float("-inf")
    out = guide(logits, 1.5, 5)
    assert out.shape == (2, 3, 8) and not out.isnan().any() and (out[..., 5] == float("-inf")).all()
    torch.testing.assert_close(out[..., :5], logits[2:, :, :5] + 2.5 * (logits[:2, :, :5] - logits[2:, :, :5]))


@pytest.mark.parametrize("cache, block_size, threshold", [
    ("none", 0, None), ("prefix", 0, 0.3), ("dual", 0, 0.3), ("none", 8, None), ("block", 8, 0.3)])
def test_scale_zero_is_no_guidance(cache, block_size, threshold):
    model = spread(tiny_model(seq_len=64, seed=1, block_size=block_size))
    kw = dict(steps=16, block_len=8, threshold=threshold, cache=cache)
    plain, guided = (finish(guided_generate(model, PROMPTS, 16, **kw, **s)) for s in ({}, {"cfg_scale": 0.0}))
    assert torch.equal(plain[0], guided[0]) and plain[1]["forward_passes"] == guided[1]["forward_passes"]
    kw = dict(block_len=8, threshold=threshold, cache=cache)
    plain, guided = (finish(guided_denoise(model, infill_canvas(), **kw, **s)) for s in ({}, {"cfg_scale": 0}))
    assert torch.equal(plain[0], guided[0])


def rows_per_forward(model):
    """Register a hook that records the batch rows of every forward -> the list it fills."""
    rows = []
    model.register_forward_pre_hook(lambda m, args, kw: rows.append((args[0] if args else kw["idx"]).shape[0]),
                                    with_kwargs=True)
    return rows


@pytest.mark.parametrize("cache", ["none", "dual"])
def test_one_forward_of_twice_the_batch_per_step(cache):
    model = spread(tiny_model(seq_len=64, seed=2))
    plain, _ = finish(generate(model, PROMPTS, Decoding(steps=16, block_len=8, cache=cache), gen_len=16))
    rows = rows_per_forward(model)
    x, stats = finish(guided_generate(model, PROMPTS, 16, steps=16, block_len=8, cache=cache, cfg_scale=2.0))
    assert stats["forward_passes"] == len(rows) == 16 and set(rows) == {4}
    assert not (x == M).any() and torch.equal(x[:, :5], plain[:, :5])
    assert not torch.equal(x, plain)  # guidance changed the tokens


@pytest.mark.parametrize("threshold", [None, 0.3])
def test_guided_block_cache_equals_guided_no_cache(threshold):
    """The exact block cache stays exact with guidance: it holds both halves of the batch."""
    model = spread(tiny_model(seq_len=64, seed=4, block_size=8), 4.0).double()
    for run in (lambda c: guided_generate(model, PROMPTS, 24, block_len=8, threshold=threshold, cache=c, cfg_scale=1.5),
                lambda c: guided_denoise(model, infill_canvas(), block_len=8, threshold=threshold, cache=c, cfg_scale=1.5)):
        (a, _), (b, _) = finish(run("none")), finish(run("block"))
        assert torch.equal(a, b) and not (a == M).any()


def test_daedal_region_follows_the_formula_and_scale_zero_is_no_guidance():
    model = spread(tiny_model(seq_len=64, seed=3), 3.0).double()
    x, pad = make_canvas(PROMPTS, 8, model)
    P, g = x.shape[1] - 8, torch.tensor([8, 6])
    guided = forward_region(model, x, pad, P, g, cfg_scale=1.0)
    c = forward_region(model, x, pad, P, g)
    u = forward_region(model, torch.cat([torch.full_like(x[:, :P], M), x[:, P:]], dim=1), pad, P, g)
    torch.testing.assert_close(guided[..., :M], (u + 2 * (c - u))[..., :M], atol=1e-9, rtol=1e-9)
    d = Daedal(init_len=8, max_len=16, grow=8, tail=4, eot_threshold=0.05)
    runs = [finish(generate_dynamic(model, PROMPTS, Decoding(threshold=0.6, eot_id=10, **s), d))
            for s in ({}, {"cfg_scale": 0.0}, {"cfg_scale": 2.0})]
    assert torch.equal(runs[0][0], runs[1][0]) and not torch.equal(runs[0][0], runs[2][0])


@pytest.mark.parametrize("scale", [-1.0, float("nan"), float("inf")])
def test_bad_scales(scale):
    model = tiny_model()
    with pytest.raises(ValueError, match="--cfg-scale must be a finite number >= 0"):
        finish(guided_generate(model, [1, 2], 8, steps=8, block_len=8, cfg_scale=scale))
    with pytest.raises(ValueError, match="--cfg-scale must be a finite number >= 0"):
        finish(generate_dynamic(model, [1, 2], Decoding(cfg_scale=scale)))
