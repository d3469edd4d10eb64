"""bench/cloze.py and bench/cfg.py: their helpers, and both end to end with --quick on tiny
checkpoints.
    python -m pytest -q tests/test_cloze_cfg.py"""

import itertools
import json
import math

import pytest
import torch

from conftest import spread, tiny_model
from mini_dlm.plumbing.cli import run

from bench import cfg as bench_cfg
from bench import cloze


def test_window_starts_spread_evenly_and_fit():
    starts = cloze.window_starts(1000, 5, 100)
    assert starts == [0, 225, 450, 675, 900] and starts[-1] + 100 <= 1000
    assert cloze.window_starts(100, 1, 100) == [0]
    assert len(set(cloze.window_starts(12, 3, 10))) == 3
    with pytest.raises(ValueError, match="too short for 4 windows of 10 tokens"):
        cloze.window_starts(12, 4, 10)


def test_cloze_windows_cut_real_text_around_the_blank():
    ids = torch.arange(100, 200)
    lefts, truths, rights = cloze.cloze_windows(ids, [0, 40], left=3, k=2, right=4)
    assert lefts.tolist() == [[100, 101, 102], [140, 141, 142]]
    assert truths.tolist() == [[103, 104], [143, 144]]
    assert rights.tolist() == [[105, 106, 107, 108], [145, 146, 147, 148]]


def test_dlm_nll_is_the_nll_of_a_proper_distribution():
    """Both orders define a distribution over the blank's k tokens: exp(-NLL) summed over every
    possible blank (the mask token excluded) is 1. For k = 1 the two orders are one."""
    model = spread(tiny_model(vocab_size=6, seq_len=16, seed=3), 3.0).double()
    lefts, rights = torch.tensor([[1, 2, 0]]), torch.tensor([[4, 3]])
    for order in ("1-shot", "l2r"):
        total = sum(math.exp(-cloze.dlm_nll(model, lefts, torch.tensor([blank]), rights, order))
                    for blank in itertools.product(range(5), repeat=2))
        assert total == pytest.approx(1.0, abs=1e-9)
    one = [cloze.dlm_nll(model, lefts, torch.tensor([[2]]), rights, o) for o in ("1-shot", "l2r")]
    assert one[0] == pytest.approx(one[1], abs=1e-12)
    two = [cloze.dlm_nll(model, lefts, torch.tensor([[2, 3]]), rights, o) for o in ("1-shot", "l2r")]
    assert two[0] != pytest.approx(two[1])  # revealing the first token changes the second's prediction


def test_cloze_quick_end_to_end(checkpoints, corpus_file, tmp_path, capsys):
    out = tmp_path / "cloze.json"
    cloze.main(["--dlm", checkpoints["dlm"], "--ar", checkpoints["ar"], "--data", corpus_file, "--quick",
                "--left", "8", "--right", "8", "--k", "1,4", "--device", "cpu", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "windows of validation text" in printed and ", on " in printed
    data = json.loads(out.read_text())
    assert data["meta"]["n"] == cloze.QUICK["n"] and [r["k"] for r in data["records"]] == [1, 4]
    for r in data["records"]:
        assert 0 <= r["dlm_exact"] <= r["dlm_right"] <= 1 and 0 <= r["ar_exact"] <= r["ar_right"] <= 1
        assert r["dlm_nll_1shot"] > 0 and r["dlm_nll_l2r"] > 0 and r["ar_nll"] > 0
    assert data["records"][0]["dlm_nll_1shot"] == pytest.approx(data["records"][0]["dlm_nll_l2r"])  # k = 1


@pytest.mark.parametrize("ckpt, flags", [("dlm", []), ("block", ["--cache", "block", "--threshold", "0.5"])])
def test_cfg_quick_end_to_end(checkpoints, corpus_file, tmp_path, capsys, ckpt, flags):
    out = tmp_path / "cfg.json"
    bench_cfg.main(["--dlm", checkpoints[ckpt], "--ar", checkpoints["ar"], "--data", corpus_file, "--quick",
                    "--prompt-len", "8", "--gen-len", "8", "--block-len", "8", "--device", "cpu", "--out", str(out)]
                   + flags)
    printed = capsys.readouterr().out
    assert "check: batched guided logits == u + (s + 1)(c - u) from two forwards: yes" in printed
    records = json.loads(out.read_text())["records"]
    assert [r["scale"] for r in records] == [0, 0.5, 1, 2]
    plain, guided = records[0], records[1:]
    for r in guided:  # the same passes, each over twice the rows
        assert r["forward_passes"] == plain["forward_passes"] and r["positions"] == 2 * plain["positions"]
    assert all(r["gen_ppl"] > 1 and math.isfinite(r["pmi"]) for r in records)


@pytest.mark.parametrize("script, change, message", [
    (cloze, ["--dlm", "block"], "must be a full-attention diffusion checkpoint"),
    (cloze, ["--left", "30"], "exceeds the DLM's context of 32"),
    (cloze, ["--k", "1,x"], "argument --k: expected a positive integer, got 'x'"),
    (bench_cfg, ["--scales", "0,-1"], "argument --scales: must be a finite number >= 0, got -1"),
    (bench_cfg, ["--dlm", "ar"], "must be a diffusion checkpoint"),
])
def test_bad_input_is_one_line(checkpoints, corpus_file, tmp_path, capsys, script, change, message):
    flag, value = change
    args = ["--dlm", checkpoints["dlm"], "--ar", checkpoints["ar"], "--data", corpus_file, "--quick", "--device", "cpu",
            "--out", str(tmp_path / "o.json"), flag, checkpoints.get(value, value)]
    with pytest.raises(SystemExit) as e:
        run(script.main, args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.json").exists()
