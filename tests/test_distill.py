"""Few-step distillation: SDTT's targets and loss (mini_dlm/distillation/sdtt.py), distill.py and
bench/few_step.py end to end on tiny models. python -m pytest -q tests/test_distill.py"""

import json
import os

import pytest
import torch
import torch.nn.functional as F

import distill
from bench import few_step
from conftest import spread, tiny_model
from mini_dlm.plumbing.checkpoint import load_checkpoint
from mini_dlm.distillation.sdtt import sdtt_loss, sdtt_targets
from test_cli import fails_cleanly


def batch(model, B=6, L=40, seed=0):
    return torch.randint(0, model.config.mask_id, (B, L), generator=torch.Generator().manual_seed(seed))


def test_targets_are_distributions_at_the_masked_positions():
    teacher = spread(tiny_model())
    x0 = batch(teacher)
    M = teacher.config.mask_id
    x_t, masked, target = sdtt_targets(teacher, x0, 8, torch.Generator().manual_seed(1))
    assert torch.equal(masked, x_t == M) and torch.equal(x_t[~masked], x0[~masked]) and masked.any()
    t = target[masked]  # (n, V)
    assert torch.allclose(t.sum(-1), torch.ones(len(t))) and (t[:, M] == 0).all()
    one_hot = t.max(-1).values == 1  # revealed by the teacher's first step
    assert one_hot.any() and (~one_hot).any()  # with 6 x 40 positions both kinds occur


def test_a_two_step_teacher_masks_everything_and_reveals_half():
    """n_steps = 2: the only grid time is t = 1 (all masked), and step 1 reveals w.p. 1/2."""
    teacher = spread(tiny_model())
    _, masked, target = sdtt_targets(teacher, batch(teacher, 32, 48), 2, torch.Generator().manual_seed(2))
    assert masked.all()
    revealed = (target.max(-1).values == 1).float().mean().item()
    assert 0.45 < revealed < 0.55  # 1536 positions: a binomial's sd is about 0.013


def test_loss_is_zero_for_a_student_that_matches_the_target():
    student = spread(tiny_model(seed=3))
    x0 = batch(student)
    x_t, masked, _ = sdtt_targets(spread(tiny_model()), x0, 8, torch.Generator().manual_seed(4))
    own = F.softmax(student(x_t).float(), -1)
    assert sdtt_loss(student, x_t, masked, own).item() == pytest.approx(0.0, abs=1e-5)
    other = F.softmax(spread(tiny_model(seed=5))(x_t).float(), -1)
    assert sdtt_loss(student, x_t, masked, other).item() > 0.01


def test_distillation_lowers_its_loss_on_a_tiny_model():
    teacher = spread(tiny_model())
    student = spread(tiny_model()).train()
    examples = sdtt_targets(teacher, batch(teacher, 8, 48), 8, torch.Generator().manual_seed(6))
    opt = torch.optim.AdamW(student.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = sdtt_loss(student, *examples)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_halvings():
    assert distill.halvings(256, 16) == [256, 128, 64, 32]
    assert distill.halvings(16, 8) == [16]
    for bad in ((24, 16), (16, 16), (8, 16)):
        with pytest.raises(ValueError, match="must be 2, 4, 8"):
            distill.halvings(*bad)


@pytest.fixture(scope="module")
def student(checkpoints, corpus_file, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("distill"))
    distill.main(["--teacher", checkpoints["dlm"], "--out-dir", out, "--data", corpus_file, "--teacher-steps", "8",
                  "--student-steps", "2", "--iters", "2", "--batch-size", "2", "--device", "cpu", "--threads", "1"])
    return os.path.join(out, "ckpt.pt")


def test_distill_writes_a_student_checkpoint(student, checkpoints, capsys):
    model, _, ckpt = load_checkpoint(student)
    teacher, _, _ = load_checkpoint(checkpoints["dlm"])
    assert ckpt["step"] == 4 and ckpt["train_config"]["distill_steps"] == 2  # 2 rounds (8 -> 4 -> 2) x 2 iters
    assert model.config == teacher.config
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), teacher.state_dict().values()))


@pytest.mark.parametrize("flags, match", [
    (["--teacher-steps", "24"], "must be 2, 4, 8"),
    (["--teacher", "ar"], "must be a full-attention diffusion checkpoint"),
    (["--teacher", "block"], "must be a full-attention diffusion checkpoint"),
])
def test_distill_bad_input_is_one_line(checkpoints, corpus_file, tmp_path, capsys, flags, match):
    argv = ["--teacher", checkpoints["dlm"], "--out-dir", str(tmp_path / "x"), "--data", corpus_file, "--device", "cpu"]
    flags = [checkpoints.get(f, f) for f in flags]
    fails_cleanly(distill.main, argv + flags, capsys, match)


def test_few_step_bench(student, checkpoints, corpus_file, tmp_path, capsys):
    out = tmp_path / "fs.json"
    few_step.main(["--teacher", checkpoints["dlm"], "--student", student, "--ar", checkpoints["ar"], "--data",
                   corpus_file, "--num-prompts", "3", "--prompt-len", "8", "--gen-len", "16", "--teacher-steps", "2,16",
                   "--student-steps", "2", "--device", "cpu", "--threads", "1", "--out", str(out)])
    recs = json.loads(out.read_text())["records"]
    assert [(r["model"], r["steps"], r["tokens_per_pass"]) for r in recs] == [
        ("teacher", 2, 8.0), ("teacher", 16, 1.0), ("student", 2, 8.0)]
    assert all(r["gen_ppl"] > 1 and 0 < r["distinct3"] <= 1 for r in recs)
    assert "   model  steps tok/pass" in capsys.readouterr().out


def test_few_step_refuses_what_does_not_fit(student, checkpoints, corpus_file, tmp_path, capsys):
    argv = ["--teacher", checkpoints["dlm"], "--student", student, "--ar", checkpoints["ar"], "--data", corpus_file,
            "--device", "cpu", "--out", str(tmp_path / "fs.json")]
    fails_cleanly(few_step.main, argv + ["--gen-len", "256"], capsys, "exceeds the context")
    fails_cleanly(few_step.main, argv + ["--student", checkpoints["block"]], capsys, "--student")
