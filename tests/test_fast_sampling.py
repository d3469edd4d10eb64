"""Fast-dLLM parallel decoding, KV caches, block diffusion and batching.
    python -m pytest -q tests/test_fast_sampling.py

fastdllm_oracle is a naive transcription of Fast-dLLM's generate(threshold=tau) and
generate(factor=f) (no cache): a full forward per step, confidences from a float64 softmax over
the whole canvas, -inf after the block end, per row the best position always and the others if
c >= tau, or the count its factor rule gives (tests/test_ops.py: fastdllm_factor; or the strict
rule), until the block has no mask. Exactness checks (block cache vs none, batched vs alone) run the model in float64
so that rounding cannot flip a near-tie."""

import pytest
import torch

from conftest import record, tiny_model
from mini_dlm.kvcache import KVCache
from mini_dlm.sampler import Decoding, canvas_positions, finish, generate, generate_ar, make_canvas
from test_ops import fastdllm_factor, strict_factor


def fastdllm_oracle(model, prompt, gen_length, block_length, mask_id, threshold=None, factor=None,
                    factor_rule="fastdllm"):
    x = torch.full((prompt.shape[0], prompt.shape[1] + gen_length), mask_id, dtype=torch.long)
    x[:, :prompt.shape[1]] = prompt
    nfe = 0
    for nb in range(gen_length // block_length):
        end = prompt.shape[1] + (nb + 1) * block_length
        while (x[:, end - block_length:end] == mask_id).any():
            nfe += 1
            logits = model(x)
            x0 = logits.argmax(-1)
            prob = torch.softmax(logits.double(), dim=-1)
            for row in range(x.shape[0]):
                conf = sorted((-prob[row, j, x0[row, j]].item(), j) for j in range(end) if x[row, j] == mask_id)
                if threshold is not None:
                    chosen = [j for n, (c, j) in enumerate(conf) if n == 0 or -c >= threshold]
                elif conf:  # a row with no mask left in the block commits nothing
                    rule = fastdllm_factor if factor_rule == "fastdllm" else strict_factor
                    chosen = [j for _, j in conf[:rule([-c for c, _ in conf], factor)]]
                else:
                    chosen = []
                for j in chosen:
                    x[row, j] = x0[row, j]
    return x, nfe


@pytest.mark.parametrize("threshold, factor, factor_rule", [
    (0.9, None, None), (0.3, None, None), (0.05, None, None),
    (None, 1.0, "fastdllm"), (None, 2.5, "fastdllm"), (None, 1.0, "strict"), (None, 2.5, "strict")])
@pytest.mark.parametrize("gen_len, block_len", [(24, 8), (16, 16)])
def test_threshold_and_factor_match_fastdllm(threshold, factor, factor_rule, gen_len, block_len):
    model = tiny_model(seed=gen_len)
    prompt = torch.randint(0, 63, (2, 5), generator=torch.Generator().manual_seed(block_len))
    rule = {"factor_rule": factor_rule} if factor_rule else {}
    with torch.no_grad():
        expected, nfe = fastdllm_oracle(model, prompt, gen_len, block_len, model.config.mask_id, threshold, factor, **rule)
    x, stats = finish(generate(model, prompt, Decoding(block_len=block_len, threshold=threshold, factor=factor, **rule),
                               gen_len))
    assert torch.equal(x, expected)
    assert stats["forward_passes"] == nfe


def test_tau_above_one_is_one_token_per_step():
    model = tiny_model(seed=1)
    x, stats = finish(generate(model, [[3, 4, 5]] * 2, Decoding(steps=16, block_len=8, threshold=1.01), gen_len=16))
    assert stats["forward_passes"] == 16 and stats["transfers"].tolist() == [[1, 1]] * 16


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
@pytest.mark.parametrize("remasking", ["low_confidence", "margin", "entropy", "random"])
def test_parallel_decoding_invariants(cache, remasking):
    """At least one commit per row and step, committed tokens never change, only the current
    block changes, a block finishes within b passes (and within its steps cap)."""
    model = tiny_model(seed=6)
    M, P, gen_len, block_len = model.config.mask_id, 4, 24, 8
    prompt = torch.randint(0, 63, (3, P), generator=torch.Generator().manual_seed(2))
    history = []
    opts = Decoding(steps=12, block_len=block_len, temperature=0.5, remasking=remasking, threshold=0.4, cache=cache)
    x, stats = finish(record(generate(model, prompt, opts, gen_len, torch.Generator().manual_seed(0)), history))
    assert not (x == M).any() and torch.equal(x[:, :P], prompt)
    prev, passes = torch.cat([prompt, torch.full((3, gen_len), M)], dim=1), [0, 0, 0]
    for _, b, x_s, committed in history:
        lo, hi = P + b * block_len, P + (b + 1) * block_len
        passes[b] += 1
        had_masks = (prev[:, lo:hi] == M).any(dim=1)
        assert (committed.sum(dim=1) >= 1).eq(had_masks).all()  # at least one, unless the row is done
        assert not committed[:, :lo].any() and not committed[:, hi:].any()
        assert (prev[committed] == M).all() and torch.equal(x_s[~committed], prev[~committed])
        prev = x_s
    assert max(passes) <= 4  # the cap: steps 12 / 3 blocks
    assert stats["forward_passes"] == len(history)  # prefix / dual refresh within a step's pass


def test_prefix_and_dual_caches_reproduce_the_full_forward_on_the_same_canvas():
    """The cache plumbing (compaction, RoPE positions, block_attention) is exact: keys/values
    cached from a forward over x give the same logits as that forward."""
    model = tiny_model(seed=3).double()
    x, pad = make_canvas([[1, 2, 3, 4, 5, 6], [7, 8], [9, 10, 11, 12]], 16, model)
    x[:, 8:14] = torch.randint(0, 63, (3, 6))  # some committed tokens, some masks
    L, lo, hi = x.shape[1], 10, 14
    pos = canvas_positions(pad, L)
    keep = (torch.arange(L)[None, None, None, :] >= pad[:, None, None, None]) | torch.eye(L, dtype=torch.bool)
    with torch.no_grad():
        dual_kv, prefix_kv = KVCache(2, pad, lo, suffix_from=hi), KVCache(2, pad, lo)
        full = model(x, keep, pos, cache=dual_kv)  # records the keys/values before and after the block
        model(x, keep, pos, cache=prefix_kv)  # records those before it
        dual_kv.start_reading(), prefix_kv.start_reading()
        dual = model(x[:, lo:hi], pos=pos[:, lo:hi], cache=dual_kv)
        prefix = model(x[:, lo:], pos=pos[:, lo:], cache=prefix_kv)
    torch.testing.assert_close(dual, full[:, lo:hi], atol=1e-10, rtol=0)
    torch.testing.assert_close(prefix, full[:, lo:], atol=1e-10, rtol=0)


@pytest.mark.parametrize("threshold", [None, 0.2])
@pytest.mark.parametrize("prompts", [[[5, 6, 7, 8, 9, 10, 11]], [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12, 13], [14]], [[]]])
def test_block_cache_equals_no_cache(threshold, prompts):
    model = tiny_model(seq_len=64, seed=4, block_size=8).double()
    runs = [finish(generate(model, prompts, Decoding(block_len=8, threshold=threshold, cache=c), gen_len=24))
            for c in ("none", "block")]
    assert torch.equal(runs[0][0], runs[1][0])
    assert not (runs[1][0][:, -24:] == model.config.mask_id).any()


@pytest.mark.parametrize("rule", [{"threshold": 0.3}, {"factor": 1.0}])
@pytest.mark.parametrize("cache, block_size", [("none", 0), ("prefix", 0), ("dual", 0), ("none", 8), ("block", 8)])
def test_batched_prompts_of_different_lengths_equal_one_at_a_time(cache, block_size, rule):
    """Rows finish a block at different passes; each computes what it would alone."""
    model = tiny_model(seq_len=64, seed=9, block_size=block_size).double()
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11], [12, 13, 14, 15, 16]]
    opts = Decoding(steps=16, block_len=8, cache=cache, **rule)
    batched, stats = finish(generate(model, prompts, opts, gen_len=16))
    for r, p in enumerate(prompts):
        alone, _ = finish(generate(model, p, opts, gen_len=16))
        assert torch.equal(batched[r, int(stats["pad"][r]):], alone[0])


def test_ar_batched_prompts_of_different_lengths_equal_one_at_a_time():
    model = tiny_model("ar", seq_len=64, seed=2).double()
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11]]
    batched, stats = finish(generate_ar(model, prompts, gen_len=10))
    for r, p in enumerate(prompts):
        assert torch.equal(batched[r, int(stats["pad"][r]):], finish(generate_ar(model, p, gen_len=10))[0][0])


def test_block_model_forward_pass_count():
    """Prompt prefill + the denoising passes + one cache write per finished block but the last."""
    model = tiny_model(seq_len=64, seed=4, block_size=8)
    x, stats = finish(generate(model, [1, 2, 3], Decoding(steps=24, block_len=8, cache="block"), gen_len=24))
    assert stats["forward_passes"] == 1 + 24 + 2
    x, stats = finish(generate(model, [1, 2, 3], Decoding(steps=24, block_len=8, cache="none"), gen_len=24))
    assert stats["forward_passes"] == 24


@pytest.mark.parametrize("kw, match", [
    ({"cache": "block"}, "block-diffusion checkpoint"), ({"threshold": 0.9, "factor": 1.0}, "not both"),
    ({"factor": 0.0}, "factor"), ({"cache": "bogus"}, "cache"), ({"remasking": "bogus"}, "remasking"),
    ({"factor": 1.0, "factor_rule": "paper"}, "factor_rule must be one of"), ({"eot_id": 63}, "eot_id"),
    ({"eot_id": 64}, "eot_id")])
def test_bad_options_for_a_full_attention_model(kw, match):
    with pytest.raises(ValueError, match=match):
        finish(generate(tiny_model(), [1, 2], Decoding(steps=8, block_len=8, **kw), gen_len=8))


@pytest.mark.parametrize("kw, match", [({"cache": "dual"}, "full-attention"), ({"block_len": 16}, "--block-len 8")])
def test_bad_options_for_a_block_model(kw, match):
    model = tiny_model(seq_len=64, block_size=8)
    with pytest.raises(ValueError, match=match):
        finish(generate(model, [1, 2], Decoding(steps=16, **{"block_len": 8, **kw}), gen_len=16))


@pytest.mark.parametrize("cache, block_size", [("prefix", 0), ("dual", 0), ("block", 8)])
def test_mask_token_never_emitted_with_caches(cache, block_size):
    model = tiny_model(seq_len=64, seed=1, block_size=block_size)
    with torch.no_grad():
        model.lm_head.weight[model.config.mask_id] = 100.0  # the raw logit of M would win everywhere
    x, _ = finish(generate(model, [[1, 2], [3, 4, 5, 6]], Decoding(steps=16, block_len=8, threshold=0.5, cache=cache),
                           gen_len=16))
    assert not (x[:, -16:] == model.config.mask_id).any()


def test_decoding_options_are_checked_once_when_built():
    """A Decoding checks itself before any model is seen, and is frozen, so what was checked
    stays what runs; what depends on the model is checked when denoise starts."""
    import dataclasses
    for kw, match in [({"cache": "bogus"}, "cache must be one of"), ({"block_len": 0}, "block-len must be positive"),
                      ({"temperature": -1.0}, "temperature must be"), ({"steps": 0}, "steps must be positive"),
                      ({"cfg_scale": float("nan")}, "--cfg-scale")]:
        with pytest.raises(ValueError, match=match):
            Decoding(**kw)
    opts = Decoding(threshold=0.9, cache="block")
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.threshold = 2.0
    with pytest.raises(ValueError, match="needs a block-diffusion checkpoint"):
        next(generate(tiny_model(), [1, 2], opts, gen_len=32))
