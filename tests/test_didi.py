"""Distribution matching after DiDi-Instruct (mini_dlm/distillation/didi.py) and distill.py --method didi.
python -m pytest -q tests/test_didi.py"""

import os

import pytest
import torch
import torch.nn.functional as F

import distill
from conftest import spread, tiny_model
from mini_dlm.plumbing.checkpoint import load_checkpoint
from mini_dlm.distillation.didi import (Discriminator, discriminator_loss, group_normalise, log_prob, rollout,
                                        start_states)
from test_cli import fails_cleanly


def canvas(model, B=4, L=24, prompt_len=4, seed=0):
    z = torch.randint(0, model.config.mask_id, (B, L), generator=torch.Generator().manual_seed(seed))
    z[:, prompt_len:] = model.config.mask_id
    return z


def test_rollout_reveals_every_mask_once_and_keeps_the_rest():
    model = spread(tiny_model())
    z = canvas(model)
    x, path = rollout(model, z, 5, torch.Generator().manual_seed(1))
    M = model.config.mask_id
    assert len(path) == 5 and not (x == M).any() and torch.equal(x[:, :4], z[:, :4])
    revealed = torch.stack([r for _, r in path]).long()  # (steps, B, L)
    assert torch.equal(revealed.sum(0), (z == M).long())  # each mask revealed at exactly one step
    assert revealed.sum(2).tolist() == [[4] * 4] * 5  # 20 masks in 5 steps: 4 a step (LLaDA's schedule)
    for s, (z_s, _) in enumerate(path):  # each state: the start with the earlier steps' tokens filled in
        filled = revealed[:s].sum(0).bool()
        assert torch.equal(z_s, torch.where(filled, x, z))


def test_log_prob_sums_the_revealed_tokens_log_probabilities():
    model = spread(tiny_model())
    x, path = rollout(model, canvas(model), 3, torch.Generator().manual_seed(2))
    want = sum((F.log_softmax(model(z_s).float(), -1).gather(-1, x[..., None]).squeeze(-1) * r).sum(1)
               for z_s, r in path)
    torch.testing.assert_close(log_prob(model, x, path), want)
    torch.testing.assert_close(log_prob(model, x, path, n_sub=3), want)  # all steps: no scaling
    one = log_prob(model, x, path, n_sub=1, generator=torch.Generator().manual_seed(0))
    assert any(torch.allclose(one, 3 * (F.log_softmax(model(z_s).float(), -1).gather(-1, x[..., None]).squeeze(-1)
                                        * r).sum(1)) for z_s, r in path)  # one step, times 3


def test_group_normalise():
    a = group_normalise(torch.tensor([1.0, 3.0, 10.0, 10.5, 11.0, 20.0]), 3)
    g = a.view(2, 3)
    torch.testing.assert_close(g.mean(1), torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(g.std(1), torch.ones(2), atol=1e-4, rtol=0)
    assert a[0] < a[1] < a[2] and a[3] < a[4] < a[5]


def test_the_discriminator_learns_to_tell_two_distributions_apart():
    model = tiny_model()
    disc = Discriminator(model).train()
    opt = torch.optim.AdamW(disc.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(3)
    ones, twos = torch.full((8, 24), 1), torch.full((8, 24), 2)
    losses = []
    for _ in range(30):
        loss = discriminator_loss(disc, ones, twos, 4, model.config.mask_id, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(F.binary_cross_entropy_with_logits(torch.zeros(1), torch.ones(1)).item())
    assert losses[-1] < 0.2  # the prompts alone give the source away
    assert disc(ones[:2]).min() > 0 > disc(twos[:2]).max()  # logit > 0: "the student's"


def test_the_policy_gradient_moves_the_student_away_from_high_rewards():
    """With r = the number of token 7 in a sample (high r: unlike the teacher), group-normalised
    updates on advantage * log p lower the student's probability of 7: the sign DiDi needs."""
    student = tiny_model(seed=1).train()
    opt = torch.optim.AdamW(student.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(4)
    z = canvas(student, B=8)

    def p7():
        with torch.no_grad():
            return F.softmax(student(z).float(), -1)[..., 7][:, 4:].mean().item()
    before = p7()
    for _ in range(15):
        x, path = rollout(student, z, 4, gen)
        advantage = group_normalise((x == 7).sum(1).float(), 4)
        loss = (advantage * log_prob(student, x, path)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert p7() < 0.5 * before


def test_start_states_remask_a_teacher_sample_for_a_group():
    M = 63
    x = torch.arange(40).view(2, 20) % 60
    z, n = start_states(x, 4, M, 0.5, 3, 16, torch.Generator().manual_seed(5))
    assert z.shape == (6, 20) and 8 <= n <= 16
    assert torch.equal(z[0], z[1]) and torch.equal(z[3], z[5])  # a group shares its start
    assert torch.equal(z[:, :4], x.repeat_interleave(3, 0)[:, :4])  # the prompt stays
    kept = z[:, 4:] != M
    assert torch.equal(z[:, 4:][kept], x.repeat_interleave(3, 0)[:, 4:][kept])  # the rest: the sample or masks
    z1, n1 = start_states(x, 4, M, 1.0, 3, 16)
    assert n1 == 16 and (z1[:, 4:] == M).all()  # tau-min 1: from the prompt alone


def test_distill_didi_end_to_end(checkpoints, corpus_file, tmp_path, capsys):
    out = str(tmp_path / "didi")
    argv = ["--teacher", checkpoints["dlm"], "--method", "didi", "--out-dir", out, "--data", corpus_file,
            "--teacher-steps", "4", "--student-steps", "2", "--iters", "2", "--bank", "4", "--prompt-len", "8",
            "--device", "cpu", "--threads", "1"]
    distill.main(argv)
    printed = capsys.readouterr().out
    assert "teacher samples: 4/4 in 4 steps" in printed and "iter    2/2 | discriminator BCE" in printed and ", held out " in printed
    model, _, ckpt = load_checkpoint(os.path.join(out, "ckpt.pt"))
    teacher, _, _ = load_checkpoint(checkpoints["dlm"])
    assert ckpt["train_config"]["distill_steps"] == 2 and ckpt["train_config"]["distill"]["method"] == "didi"
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), teacher.state_dict().values()))
    distill.main(argv)  # again: the teacher samples are read back, not drawn
    assert f"teacher samples: 4 read from {out}" in capsys.readouterr().out


@pytest.mark.parametrize("flags, match", [
    (["--group-size", "1"], "--group-size and --bank must be at least 2"),
    (["--bank", "1"], "--group-size and --bank must be at least 2"),
    (["--prompt-len", "32"], "leaves nothing to generate"),
])
def test_distill_didi_bad_input_is_one_line(checkpoints, corpus_file, tmp_path, capsys, flags, match):
    argv = ["--teacher", checkpoints["dlm"], "--method", "didi", "--out-dir", str(tmp_path / "x"), "--data",
            corpus_file, "--device", "cpu"]
    fails_cleanly(distill.main, argv + flags, capsys, match)
