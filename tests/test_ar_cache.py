"""The AR baseline's KV cache.  python -m pytest -q tests/test_ar_cache.py

finish(generate_ar(kv_cache=False)) recomputes the whole prefix at every step: it is the spec. The
cached run must give the same tokens, on the reference attention ("torch") and, when
mini_dlm._C is built, the compiled one ("ext"). The models run in float64 so that rounding
cannot flip a near-tie. At tiny_model's initialisation attention is almost uniform, so the
next token hardly depends on the prefix or on positions (a cache that stored nothing passed
for one seed); sharp_model makes attention peaked, and test_a_broken_cache_is_caught checks
that broken caches change the tokens."""

import pytest
import torch

from conftest import record, tiny_model
from mini_dlm.plumbing import backend
from mini_dlm.kvcache import KVCache
from mini_dlm.sampler import finish, generate_ar

PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11]]  # left-padded to 7 in a batch


def sharp_model(seed=2):
    """A float64 AR tiny_model with q, k, v scaled by 10: attention scores 100x larger, so which
    keys a token sees, and at which RoPE positions, decides its next token."""
    model = tiny_model("ar", seq_len=48, seed=seed).double()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.mul_(10.0)
    return model


@pytest.fixture(autouse=True, params=["torch", "ext"] if backend.HAS_EXT else ["torch"])
def op_backend(request):
    backend.set_backend(request.param)
    yield request.param
    backend.set_backend("auto")


def run(model, prompts, gen_len, kv_cache, temperature=0.0):
    """generate_ar with a fixed seed -> (x, stats, [(step, x, committed)] of every step)."""
    history = []
    x, stats = finish(record(generate_ar(model, prompts, gen_len=gen_len, temperature=temperature,
                                         generator=torch.Generator().manual_seed(7), kv_cache=kv_cache), history))
    return x, stats, [(n, xs, c) for n, _, xs, c in history]


@pytest.mark.parametrize("temperature", [0.0, 0.8])
@pytest.mark.parametrize("prompts, gen_len", [([5, 6, 7], 1), ([5, 6, 7], 2), ([5, 6, 7], 20), (PROMPTS, 20),
                                              (PROMPTS, 48 - 7)])  # the last: prompt + generation = the context
def test_cache_equals_recompute(temperature, prompts, gen_len):
    model = sharp_model()
    x, stats, history = run(model, prompts, gen_len, True, temperature)
    x_ref, stats_ref, history_ref = run(model, prompts, gen_len, False, temperature)
    assert torch.equal(x, x_ref)
    assert stats["forward_passes"] == gen_len and torch.equal(stats["transfers"], stats_ref["transfers"])
    for (s, xs, c), (s_ref, xs_ref, c_ref) in zip(history, history_ref, strict=True):
        assert s == s_ref and torch.equal(xs, xs_ref) and torch.equal(c, c_ref)
    if gen_len >= 20:  # the model is not stuck on one token or a 2-cycle: the prefix matters
        assert len(set(x[:, -gen_len:].flatten().tolist())) >= 4


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_batched_prompts_equal_one_at_a_time(temperature):
    model = sharp_model()
    batched, stats, _ = run(model, PROMPTS, 16, True, temperature)
    for r, p in enumerate(PROMPTS):  # the Gumbel noise is keyed by batch row: alone, a prompt is row 0
        if temperature == 0 or r == 0:
            alone, _, _ = run(model, p, 16, True, temperature)
            assert torch.equal(batched[r, int(stats["pad"][r]):], alone[0])


def test_each_cached_step_feeds_one_token(monkeypatch):
    """One prefill over the prompt, then (B, 1) per step; the last token's keys/values are not
    written, since no later step reads them."""
    model = tiny_model("ar", seq_len=48, seed=1)
    widths, appended = [], []  # tokens per forward, per append
    model.register_forward_pre_hook(lambda mod, args: widths.append(args[0].shape[1]))
    update = KVCache.update

    def counting_update(self, i, k, v):
        if self.state == "append" and i == 0:
            appended.append(k.shape[2])
        update(self, i, k, v)

    monkeypatch.setattr(KVCache, "update", counting_update)
    x, stats = finish(generate_ar(model, PROMPTS, gen_len=12))
    assert widths == [7] + [1] * 11 and stats["forward_passes"] == 12
    assert appended == [1] * 10  # steps 2 .. 11; step 12's token is never read


@pytest.mark.parametrize("broken", ["no append", "RoPE position + 1"])
def test_a_broken_cache_is_caught(broken, monkeypatch):
    """The comparisons above have teeth: a cache that never stores the new tokens' keys/values,
    or a new token rotated to the wrong position, changes the tokens of every row."""
    model = sharp_model()
    x_ref, _, _ = run(model, PROMPTS, 20, False)
    if broken == "no append":
        monkeypatch.setattr(KVCache, "append_next", lambda self: self)  # stays in the read state
    else:
        forward = model.forward
        monkeypatch.setattr(model, "forward", lambda idx, attn_mask=None, pos=None, cache=None, **kw:
                            forward(idx, attn_mask, pos if cache is None or cache.state == "record" else pos + 1, cache,
                                    **kw))
    x, _, _ = run(model, PROMPTS, 20, True)
    assert (x != x_ref).any(dim=1).all()
