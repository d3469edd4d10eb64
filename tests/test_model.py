"""The Transformer mask predictor.  python -m pytest -q tests/test_model.py"""

import pytest
import torch

from conftest import tiny_model
from mini_dlm.model import ModelConfig


def test_shapes_and_mask_logit():
    model = tiny_model()
    idx = torch.randint(0, 63, (3, 17))
    logits = model(idx)
    assert logits.shape == (3, 17, 64)
    assert torch.isneginf(logits[..., model.config.mask_id]).all()
    assert torch.isfinite(logits[..., :-1]).all()
    assert (logits.argmax(-1) != model.config.mask_id).all()


def test_mdm_is_bidirectional_and_ar_is_causal():
    idx = torch.randint(0, 63, (1, 12))
    later = idx.clone()
    later[0, 8] = (later[0, 8] + 1) % 63  # change one token near the end
    mdm, ar = tiny_model("mdm"), tiny_model("ar")
    with torch.no_grad():
        assert not torch.allclose(mdm(idx)[0, :8], mdm(later)[0, :8])  # earlier positions see it
        torch.testing.assert_close(ar(idx)[0, :8], ar(later)[0, :8])  # causal: they don't
        assert not torch.allclose(ar(idx)[0, 8:], ar(later)[0, 8:])


def test_explicit_attention_mask_matches_builtin_causal():
    model = tiny_model("mdm")
    idx = torch.randint(0, 63, (2, 10))
    causal = torch.ones(10, 10, dtype=torch.bool).tril()
    ar = tiny_model("ar")  # same seed -> same weights
    with torch.no_grad():
        torch.testing.assert_close(model(idx, attn_mask=causal), ar(idx))


def test_rope_positions_are_relative():
    model = tiny_model()
    idx = torch.randint(0, 63, (2, 6))
    with torch.no_grad():
        base = model(idx)[..., :-1]  # drop the -inf column of M
        assert torch.equal(base, model(idx, pos=torch.arange(6))[..., :-1])
        # RoPE scores depend on position differences only: shifting every position changes
        # nothing beyond float rounding, while a gap between positions changes the output
        shifted = (base - model(idx, pos=torch.arange(6).expand(2, 6) + 3)[..., :-1]).abs().max()
        gapped = (base - model(idx, pos=torch.tensor([0, 1, 2, 3, 4, 9]))[..., :-1]).abs().max()
        assert shifted < 1e-6 and gapped > 100 * shifted, (shifted, gapped)


def test_gradients_reach_every_parameter():
    model = tiny_model().train()
    model(torch.randint(0, 63, (2, 8)))[..., :-1].logsumexp(-1).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("kw, msg", [
    (dict(n_embd=30, n_head=4), "divisible"),
    (dict(n_layer=0), "positive"),
    (dict(objective="gpt"), "objective"),
    (dict(vocab_size=10, mask_id=10), "mask_id"),
    (dict(seq_len=48, block_size=7), "divisor"),
    (dict(block_size=-1), "block_size"),
    (dict(objective="ar", block_size=8), "needs objective"),
])
def test_bad_config(kw, msg):
    with pytest.raises(ValueError, match=msg):
        ModelConfig(**kw)


def test_block_model_is_block_causal_by_default():
    """Block diffusion: a position sees its own block and earlier ones, never a later block."""
    model = tiny_model(seq_len=24, block_size=8)
    idx = torch.randint(0, 63, (1, 24))
    changed = idx.clone()
    changed[0, 20] = (idx[0, 20] + 1) % 63  # a token in the last block
    with torch.no_grad():
        a, b = model(idx), model(changed)
    assert torch.equal(a[:, :16], b[:, :16])  # blocks 0 and 1 cannot see block 2
    assert not torch.equal(a[:, 16:], b[:, 16:])  # block 2 sees itself, both directions
    assert not torch.equal(a[:, 16:20], b[:, 16:20])
