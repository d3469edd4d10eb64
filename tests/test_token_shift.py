"""Token shift (Fast-dLLM v2, mini_dlm/conversion/token_shift.py): a column's logits come from
the hidden state of the column before it. python -m pytest -q tests/test_token_shift.py"""

import pytest
import torch

from conftest import tiny_model
from mini_dlm.conversion.token_shift import bd3_left
from mini_dlm.diffusion import mdm_loss
from mini_dlm.kvcache import KVCache
from mini_dlm.sampler import Decoding, canvas_positions, finish, generate, make_canvas
from mini_dlm.sampling import guidance


def twins(**kw):
    """The same weights with and without token shift."""
    plain, shifted = tiny_model(seed=5, **kw).double(), tiny_model(seed=5, token_shift=True, **kw).double()
    shifted.load_state_dict(plain.state_dict())
    return plain, shifted


def test_logits_of_a_column_are_the_plain_logits_of_the_column_before():
    plain, shifted = twins()
    x = torch.randint(0, 63, (3, 20))
    with torch.no_grad():
        a, b = plain(x), shifted(x)
    torch.testing.assert_close(b[:, 1:], a[:, :-1], atol=1e-12, rtol=0)
    torch.testing.assert_close(b[:, 0], a[:, 0], atol=1e-12, rtol=0)  # column 0: nothing to its left


def test_a_left_padded_row_starts_at_its_first_real_token():
    """Padding columns never feed a real token: the first real column keeps its own state."""
    plain, shifted = twins()
    x, pad = make_canvas([[1, 2, 3, 4, 5, 6], [7, 8]], 6, shifted)
    pos = canvas_positions(pad, x.shape[1])
    with torch.no_grad():
        a, b = plain(x, pos=pos), shifted(x, pos=pos)
    torch.testing.assert_close(b[1, 4], a[1, 4], atol=1e-12, rtol=0)  # row 1's first real column (pad 4)
    torch.testing.assert_close(b[1, 5:], a[1, 4:-1], atol=1e-12, rtol=0)


def test_block_training_reads_the_clean_column_before_a_block():
    """Over [x_t ; x0] a block's first column reads x0's last column of the block before; others
    the noisy column before them (token_shift.bd3_left)."""
    assert bd3_left(8, 4).tolist() == [7, 0, 1, 2, 11, 4, 5, 6] + [7, 8, 9, 10, 11, 12, 13, 14]
    _, shifted = twins(seq_len=16, block_size=4)
    x0 = torch.randint(0, 63, (2, 16))
    loss = mdm_loss(shifted, x0, torch.full((2,), 0.5), torch.rand(x0.shape, generator=torch.Generator().manual_seed(0)))
    assert torch.isfinite(loss) and loss > 0


def test_caches_carry_the_hidden_state_left_of_their_new_tokens():
    """A cache recorded from a forward over x gives the same shifted logits as that forward."""
    _, model = twins()
    x, pad = make_canvas([[1, 2, 3, 4, 5, 6], [7, 8], [9, 10, 11, 12]], 16, model)
    x[:, 8:14] = torch.randint(0, 63, (3, 6))
    L, lo, hi = x.shape[1], 10, 14
    pos = canvas_positions(pad, L)
    keep = (torch.arange(L)[None, None, None, :] >= pad[:, None, None, None]) | torch.eye(L, dtype=torch.bool)
    with torch.no_grad():
        dual_kv, prefix_kv = KVCache(2, pad, lo, suffix_from=hi), KVCache(2, pad, lo)
        full = model(x, keep, pos, cache=dual_kv)
        model(x, keep, pos, cache=prefix_kv)
        dual_kv.start_reading(), prefix_kv.start_reading()
        dual = model(x[:, lo:hi], pos=pos[:, lo:hi], cache=dual_kv)
        prefix = model(x[:, lo:], pos=pos[:, lo:], cache=prefix_kv)
    torch.testing.assert_close(dual, full[:, lo:hi], atol=1e-10, rtol=0)
    torch.testing.assert_close(prefix, full[:, lo:], atol=1e-10, rtol=0)


@pytest.mark.parametrize("cfg_scale", [0.0, 1.0])
@pytest.mark.parametrize("prompts", [[[5, 6, 7, 8, 9, 10, 11]], [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12, 13], [14]], [[]]])
def test_block_cache_stays_exact_with_token_shift(prompts, cfg_scale):
    """Each block's first token is predicted from the finished block before it, which the cache
    keeps: cached and uncached decoding give the same tokens (with guidance's doubled batch too)."""
    _, model = twins(seq_len=64, block_size=8)
    opts = [Decoding(block_len=8, threshold=0.2, cache=c, cfg_scale=cfg_scale) for c in ("none", "block")]
    runs = [finish(generate(model, prompts, o, gen_len=24, strategy=guidance.strategy(o)))[0] for o in opts]
    assert torch.equal(runs[0], runs[1])
    plain = finish(generate(twins(seq_len=64, block_size=8)[0], prompts, Decoding(block_len=8, threshold=0.2), 24))[0]
    assert not torch.equal(runs[0], plain)  # the shift changed what was decoded


def test_an_ar_model_cannot_shift():
    with pytest.raises(ValueError, match="token_shift is for the mask predictor"):
        tiny_model("ar", token_shift=True)
