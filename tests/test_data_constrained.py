"""bench/data_constrained.py: real (tiny) runs on slices, and the summary it reads off them.
python -m pytest -q tests/test_data_constrained.py"""

import json

import pytest

from bench import data_constrained
from mini_dlm.plumbing.cli import run


def test_tiny_study_runs_both_objectives_on_every_slice(corpus_file, tmp_path, capsys):
    out = tmp_path / "dc.json"
    data_constrained.main(["--data", corpus_file, "--quick", "--slices", "300,1200", "--steps", "12", "--evals", "2",
                           "--vocab-size", "300", "--batch-size", "4", "--seq-len", "16", "--threads", "1",
                           "--work-dir", str(tmp_path / "runs"), "--out", str(out)])
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    recs = data["records"]
    assert {(r["objective"], r["slice"]) for r in recs} == {(o, n) for o in ("ar", "mdm") for n in (300, 1200)}
    for r in recs:  # evaluations at step 0 and the log-spaced 10 and 12; epochs = steps x batch x context / slice
        assert r["step"] in (0, 10, 12) and r["epochs"] == pytest.approx(r["step"] * 4 * 16 / r["slice"])
        assert r["flops"] == data["meta"]["flops_per_token"] * r["step"] * 4 * 16 and r["val"] > 0
    assert [row["slice"] for row in data["summary"]] == [300, 1200]
    assert "DLM < AR from epoch on" in printed and (tmp_path / "dc.png").exists()


def test_eval_steps_are_log_spaced():
    assert data_constrained.eval_steps(1000, 4) == [10, 46, 215, 1000]
    assert data_constrained.eval_steps(5, 3) == [5]


def curve(objective, n, vals):
    return [dict(objective=objective, slice=n, step=s, val=v, epochs=s / 10, flops=s) for s, v in
            zip(range(0, 10 * len(vals), 10), vals)]


def test_summary_finds_overfitting_and_where_diffusion_stays_ahead():
    recs = curve("ar", 100, [9, 5, 4, 4.5, 5, 5.5]) + curve("mdm", 100, [9, 4.9, 4.8, 4.6, 4.5, 4.4])
    recs += curve("ar", 500, [9, 5, 4, 3.5, 3.2, 3.0]) + curve("mdm", 500, [9, 4.9, 4.5, 4.0, 3.7, 3.6])
    small, large = data_constrained.summarize(recs)
    assert (small["ar_best"], small["ar_best_epoch"], small["ar_last"]) == (4, 2, 5.5)  # AR overfits after epoch 2
    assert small["mdm_ahead_epoch"] == 4  # 4.8 > 4 and 4.6 > 4.5 at epochs 2 and 3; below from epoch 4 on
    assert large["mdm_ahead_epoch"] is None and large["mdm_best_epoch"] == 5


def test_too_large_a_slice_is_one_line(corpus_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run(data_constrained.main, ["--data", corpus_file, "--quick", "--slices", "100000000", "--vocab-size", "300",
                                    "--work-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "dc.json")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--train-tokens 100,000,000 is more than" in err and len(err.strip().splitlines()) == 1
