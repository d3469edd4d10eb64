"""Forward process, ELBO loss, validation bound, training.  python -m pytest -q tests/test_diffusion.py"""

import math

import torch

from conftest import tiny_model
from mini_dlm.data import get_batch, split_text
from mini_dlm.diffusion import EPS, elbo_loss, evaluate, forward_process, loss_fn, sample_t


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
