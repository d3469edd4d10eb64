"""train_tiny.py --task end to end, and the two benchmarks on it: bench/task.py (accuracy by
decoder) and bench/efficiency.py --task (tokens/s of solved puzzles).

    python -m pytest -q tests/test_task_bench.py
"""

import json
import os

import pytest
import torch

import train_tiny
from bench import efficiency
from bench import task as task_bench
from mini_dlm.tasks import sudoku as tasks
from mini_dlm.plumbing.checkpoint import load_checkpoint
from mini_dlm.plumbing.cli import run
from mini_dlm.tokenizer import Tokenizer

S6 = tasks.SUDOKUS["sudoku6"]
TINY = ["--task", "sudoku6", "--task-train", "48", "--task-test", "12", "--device", "cpu", "--n-layer", "1",
        "--n-head", "2", "--n-embd", "32", "--batch-size", "8", "--eval-windows", "8", "--warmup-iters", "2",
        "--max-iters", "4", "--eval-interval", "2", "--threads", "1"]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Tiny task checkpoints, 4 steps each: {'mdm': path, 'ar': path, 'seed1': an mdm of another seed}."""
    out = {}
    for name, extra in (("mdm", []), ("ar", ["--objective", "ar"]), ("seed1", ["--task-seed", "1"])):
        d = str(tmp_path_factory.mktemp(name))
        train_tiny.main(TINY + extra + ["--out-dir", d])
        out[name] = os.path.join(d, "ckpt.pt")
    return out


def test_train_task_writes_its_task_into_the_checkpoint(ckpts):
    model, tok, ckpt = load_checkpoint(ckpts["mdm"])
    tc = ckpt["train_config"]
    assert (tc["task"], tc["task_seed"], tc["task_test"], tc["task_train"]) == ("sudoku6", 0, 12, 48)
    assert model.config.seq_len == S6.prompt_len + S6.answer_len == 73  # set by --task
    assert tok.vocab_size == 258 and ckpt["step"] == 4 and ckpt["val"]["nats"] > 0  # bytes + 2 specials
    cache = [f for f in os.listdir(os.path.dirname(ckpts["mdm"])) if f.startswith("task-")]
    rows = torch.load(os.path.join(os.path.dirname(ckpts["mdm"]), cache[0]), weights_only=True)["train"]
    assert rows.shape == (48, 74) and (rows[:, -1] == tok.eot_id).all()
    assert tok.decode(rows[0, :73].tolist()) == tasks.row_text(*tasks.make_splits(S6, 0, 48, 12)["train"][0])


def test_train_task_resumes(ckpts, capsys):
    d = os.path.dirname(ckpts["ar"])
    train_tiny.main(["--out-dir", d, "--resume", "--max-iters", "6", "--threads", "1", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "resuming at step 4" in out and "sudoku6 puzzles" in out
    assert load_checkpoint(ckpts["ar"])[2]["train_config"]["task"] == "sudoku6"


@pytest.mark.parametrize("extra,message", [
    (["--seq-len", "64"], "rows are 73 tokens"),  # the cpu preset's own --seq-len, given: still refused
    (["--docs"], "no --docs"),
    (["--task", "sudoku4"], "invalid choice"),
    (["--vocab-size", "300"], "tokens are bytes (258 ids): leave --vocab-size out"),
    (["--complementary-masks"], "no --docs, --block-size, --complementary-masks"),
])
def test_train_task_bad_flags(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as e:
        run(train_tiny.main, TINY + extra + ["--out-dir", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_check_rows_on_constructed_answers():
    tok = Tokenizer("bpe", [])
    pairs = tasks.puzzles(S6, 0, "test", 3)
    right = [tok.encode(tasks.to_text(s)) for _, s in pairs]
    gen = torch.tensor([right[0], right[2], right[2]])  # row 0 right, row 1 another puzzle's solution, row 2 right
    exact, valid = task_bench.check_rows(tok, S6, pairs, gen)
    assert exact.tolist() == [True, False, True] and valid.tolist() == [True, False, True]
    masked = gen.clone()
    masked[0, 5] = tok.mask_id  # a mask left in the answer
    assert task_bench.check_rows(tok, S6, pairs, masked)[1].tolist() == [False, False, True]


def test_validate_checks_catches_a_broken_check(monkeypatch):
    tok, pairs = Tokenizer("bpe", []), tasks.puzzles(S6, 0, "test", 2)
    task_bench.validate_checks(tok, S6, pairs)  # the real check passes
    monkeypatch.setattr(tasks, "check_answer", lambda *a: (True, True))  # one that accepts anything
    with pytest.raises(ValueError, match="do not tell"):
        task_bench.validate_checks(tok, S6, pairs)


def test_order_agreement():
    depth = torch.tensor([[0, 1, 2, 3, 6]])  # a given, depths 1-3, one cell singles never decide
    assert task_bench.order_agreement(torch.tensor([[0, 1, 2, 3, 0]]), depth) == 1.0  # shallow first
    assert task_bench.order_agreement(torch.tensor([[0, 3, 2, 1, 0]]), depth) == 0.0  # deep first
    assert task_bench.order_agreement(torch.tensor([[0, 5, 5, 5, 0]]), depth) == 0.5  # all in one pass


def test_task_bench_end_to_end(ckpts, tmp_path, capsys):
    out = tmp_path / "t.json"
    task_bench.main(["--dlm", ckpts["mdm"], "--ar", ckpts["ar"], "--n", "6", "--batch-size", "4", "--thresholds", "0.9",
                     "--out", str(out), "--threads", "1", "--device", "cpu"])
    printed = capsys.readouterr().out
    assert "AR KV cache == no cache: yes" in printed
    data = json.loads(out.read_text())
    rows = {r["decoder"]: r for r in data["decoders"]}
    assert set(rows) == {"ar", "llada", "llada-margin", "llada-random", "llada-rows",
                         "t0.9", "t0.9-prefix", "t0.9-dual"}
    for name, r in rows.items():
        assert r["n"] == 6 and 0 <= r["exact"] <= r["valid"] <= 1
        assert r["passes"] * r["tokens_per_pass"] == pytest.approx(36)
        if name in ("ar", "llada", "llada-rows"):
            assert r["passes"] == 36  # one cell per pass
    assert set(data["order_agreement"]) >= {"ar", "llada"}


def test_task_bench_refuses_mismatched_checkpoints(ckpts, tmp_path, capsys):
    for dlm, ar, message in ((ckpts["seed1"], ckpts["ar"], "share task and seed"),
                             (ckpts["ar"], ckpts["ar"], "full-attention diffusion"),
                             (ckpts["mdm"], ckpts["ar"], "held-out puzzles")):
        with pytest.raises(SystemExit) as e:
            run(task_bench.main, ["--dlm", dlm, "--ar", ar, "--n", "13", "--out", str(tmp_path / "t.json")])
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err, err


def test_efficiency_task_counts_solved_puzzles_only(ckpts, tmp_path, monkeypatch):
    """Batch 2 over 4 puzzles; the checker is told that exactly the first and third are solved."""
    monkeypatch.setattr(tasks, "check_answer", lambda p, s, answer, sudoku: (p in solved, True))
    solved = [p for p, _ in task_bench.held_out(("sudoku6", 0, 12), 4)[::2]]
    out = tmp_path / "e.json"
    efficiency.main(["--task", "--ar-ckpt", ckpts["ar"], "--dlm-ckpt", ckpts["mdm"], "--block-ckpt", "",
                     "--batch-sizes", "2,4", "--configs", "ar,threshold+dual", "--ops", "torch", "--repeats", "1",
                     "--device", "cpu", "--no-plots", "--out", str(out)])
    recs = json.loads(out.read_text())["records"]
    assert len(recs) == 4
    for r in recs:
        assert (r["rows"], r["gen_len"], r["prompt_len"]) == (4, 36, 37)
        assert r["useful_tokens"] == 2 * 36 and r["solved"] == 0.5
        assert r["tokens_per_s"] == pytest.approx(4 * 36 / r["seconds"])
        if r["config"] == "ar":
            assert r["forward_passes"] == 36 * 4 // r["batch_size"] and r["tokens_per_forward"] == 1
