"""Forward process, ELBO loss, validation bound, training.  python -m pytest -q tests/test_diffusion.py"""

import math

import torch

from conftest import tiny_model
from mini_dlm.data import get_batch, split_text
from mini_dlm.diffusion import EPS, bd3_attention_mask, elbo_loss, evaluate, forward_process, loss_fn, sample_t, x0_logits


def test_elbo_loss_equals_hand_computation():
    # B = 2 sequences of L = 3 tokens, V = 3; hand-picked logits and masks
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [1.0, 3.0, 0.0]],
                           [[0.0, 0.0, 0.0], [-2.0, 1.0, 4.0], [1.0, 1.0, 1.0]]])
    x0 = torch.tensor([[0, 1, 2], [2, 2, 0]])
    masked = torch.tensor([[True, False, True], [False, True, True]])
    p = torch.tensor([0.5, 0.25])

    def ce(row, target):  # -log softmax(row)[target], by hand
        return -(row[target] - math.log(sum(math.exp(v) for v in row)))

    L0 = logits.tolist()
    by_hand = (ce(L0[0][0], 0) / 0.5 + ce(L0[0][2], 2) / 0.5 + ce(L0[1][1], 2) / 0.25 + ce(L0[1][2], 0) / 0.25) / 6
    assert math.isclose(elbo_loss(logits, x0, masked, p).item(), by_hand, rel_tol=1e-6)
    # unmasked positions contribute nothing, whatever their logits
    logits2 = logits.clone()
    logits2[0, 1] = torch.tensor([-9.0, 9.0, 3.0])
    assert elbo_loss(logits2, x0, masked, p).item() == elbo_loss(logits, x0, masked, p).item()


def test_masking_rate_matches_p():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 50, (5, 40_000), generator=g)
    t = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0])
    x_t, masked, p = forward_process(x0, t, mask_id=63, generator=g)
    torch.testing.assert_close(p, (1 - EPS) * t + EPS)
    rate = masked.float().mean(1)
    sigma = (p * (1 - p) / x0.shape[1]).sqrt()
    assert ((rate - p).abs() <= 5 * sigma + 1e-4).all(), (rate, p)
    assert (x_t[masked] == 63).all() and (x_t[~masked] == x0[~masked]).all()


def test_stratified_t_covers_each_stratum_once():
    t = sample_t(16, torch.Generator().manual_seed(3))
    assert ((t >= 0) & (t < 1)).all()
    assert sorted((t * 16).floor().long().tolist()) == list(range(16))


def test_evaluate_is_reproducible_and_ar_is_exact_nll(corpus, tokenizer):
    val = torch.tensor(tokenizer.encode(corpus[:8000]), dtype=torch.int32)
    model = tiny_model(vocab_size=tokenizer.vocab_size, seq_len=32)
    a, b = evaluate(model, val, 32, max_windows=8), evaluate(model, val, 32, max_windows=8)
    assert a == b and math.isclose(a["ppl"], math.exp(a["nats"]))
    # an untrained model predicts ~uniformly: the bound is close to log V
    assert abs(a["nats"] - math.log(tokenizer.vocab_size - 1)) < 0.3


def test_short_training_run_lowers_the_bound(corpus, tokenizer):
    train_text, val_text = split_text(corpus)
    train = torch.tensor(tokenizer.encode(train_text), dtype=torch.int32)
    val = torch.tensor(tokenizer.encode(val_text), dtype=torch.int32)
    model = tiny_model(vocab_size=tokenizer.vocab_size, seq_len=32).train()
    opt = model.configure_optimizer(3e-3, 0.0, (0.9, 0.95), "cpu")
    g = torch.Generator().manual_seed(0)
    before = evaluate(model, val, 32, max_windows=16)["nats"]
    for _ in range(150):
        loss = loss_fn(model, get_batch(train, 16, 33, g, torch.device("cpu")))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = evaluate(model, val, 32, max_windows=16)["nats"]
    assert after < before - 0.8, (before, after)


def test_bd3_attention_mask_follows_the_three_rules():
    L, b = 8, 3  # a last, short block is allowed here
    mask = bd3_attention_mask(L, b)
    for q in range(2 * L):
        for k in range(2 * L):
            bq, bk = (q % L) // b, (k % L) // b
            q_noisy, k_noisy = q < L, k < L
            expected = (bq == bk if k_noisy else bq > bk) if q_noisy else (not k_noisy and bq >= bk)
            assert mask[q, k] == expected, (q, k)


def test_vectorised_block_diffusion_loss_equals_block_by_block():
    """BD3-LM's one-pass [x_t ; x0] trick computes, for every block j, the prediction of block j
    from its noisy self and the clean blocks before it: check it against running each block
    separately on [x0[:, :j b] ; x_t block j] with block-causal attention."""
    model = tiny_model(seq_len=24, seed=3, block_size=8).double()
    b, M = 8, model.config.mask_id
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, M, (3, 24), generator=g)
    t = torch.rand(3, 3, generator=g).repeat_interleave(b, dim=1)  # one t per block
    x_t, masked, p = forward_process(x0, t, M, generator=g)
    with torch.no_grad():
        fast = elbo_loss(x0_logits(model, x_t, x0), x0, masked, p)
        logits = []
        for j in range(3):
            seq = torch.cat([x0[:, :j * b], x_t[:, j * b:(j + 1) * b]], dim=1)
            blk = torch.arange(seq.shape[1]) // b
            logits.append(model(seq, blk[:, None] >= blk[None, :])[:, j * b:])
        slow = elbo_loss(torch.cat(logits, dim=1), x0, masked, p)
    torch.testing.assert_close(fast, slow, atol=1e-12, rtol=0)
    assert fast > 0


def test_block_diffusion_training_loss_and_bound():
    model = tiny_model(seq_len=24, seed=1, block_size=8)
    batch = torch.randint(0, 63, (4, 25))
    loss = loss_fn(model, batch, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert model.wte.weight.grad.abs().sum() > 0
    v = evaluate(model, torch.randint(0, 63, (200,)), 24, max_windows=4, n_t=2)
    assert v["nats"] > 0


def test_complementary_masks_cover_each_window_once():
    """The second copy masks what the first leaves clean (up to a band of width EPS), and each copy
    masks at its own rate: both are samples of the forward process."""
    from mini_dlm.conversion.complementary import complementary
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 50, (64, 40), generator=g)
    t, u = torch.rand(64, generator=g), torch.rand((64, 40), generator=g)
    x2, t2, u2 = complementary(x0, t, u)
    _, masked, p = forward_process(x2, t2, 63, u=u2)
    first, second = masked[:64], masked[64:]
    band = (u - (1 - EPS) * t[:, None]).abs() <= EPS  # where both may mask
    assert torch.equal(x2[64:], x0) and torch.equal(second[~band], ~first[~band])
    assert band.float().mean() < 0.01
    assert torch.allclose(p[64:], (1 - EPS) * (1 - t) + EPS)


def test_complementary_masks_train_a_step(corpus_file, tmp_path, capsys):
    import train_tiny
    from test_cli import TINY
    out = str(tmp_path / "c")
    train_tiny.main(TINY + ["--data", corpus_file, "--out-dir", out, "--max-iters", "2", "--eval-interval", "2",
                            "--complementary-masks"])
    assert torch.load(f"{out}/ckpt.pt", weights_only=True)["train_config"]["complementary_masks"] is True
