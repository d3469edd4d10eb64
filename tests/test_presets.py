"""train_tiny.py --preset: the workshop presets resolve, give way to flags, and train.
python -m pytest -q tests/test_presets.py"""

import os

import pytest
import torch

import train_tiny
from test_cli import fails_cleanly


@pytest.mark.parametrize("name", list(train_tiny.PRESETS))
def test_preset_values_are_used(name):
    args = train_tiny.parse_args(["--preset", name, "--device", "cpu"])[0]
    assert args.preset == name
    for key, value in train_tiny.PRESETS[name].items():
        assert getattr(args, key) == value, key


def test_flags_given_win_over_the_preset():
    preset = train_tiny.PRESETS["cpu"]
    args = train_tiny.parse_args(["--preset", "cpu", "--device", "cpu", "--n-layer", "7", "--lr", "0.0123"])[0]
    assert (args.n_layer, args.lr) == (7, 0.0123)
    assert (args.n_embd, args.seq_len, args.max_iters) == (preset["n_embd"], preset["seq_len"], preset["max_iters"])


def test_a_flag_given_its_default_value_still_wins():
    """--seq-len 512 is the parser's default, but given on the command line it beats the preset's 64;
    --task sets --seq-len to the row length only where --seq-len is not given."""
    assert train_tiny.parse_args(["--preset", "cpu", "--device", "cpu", "--seq-len", "512"])[0].seq_len == 512
    row = train_tiny.SUDOKUS["sudoku6"].prompt_len + train_tiny.SUDOKUS["sudoku6"].answer_len
    assert train_tiny.parse_args(["--preset", "cpu", "--device", "cpu", "--task", "sudoku6"])[0].seq_len == row
    given = train_tiny.parse_args(["--preset", "cpu", "--device", "cpu", "--task", "sudoku6", "--seq-len", "64"])[0]
    assert given.seq_len == 64  # kept, so that check_flags can refuse it


def test_auto_picks_the_device_preset_and_none_keeps_the_defaults():
    auto = train_tiny.parse_args(["--device", "cpu"])[0]
    assert auto.preset == "cpu" and auto.max_iters == train_tiny.PRESETS["cpu"]["max_iters"]
    none = train_tiny.parse_args(["--preset", "none", "--device", "cpu"])[0]
    defaults = train_tiny.get_parser().parse_args([])
    assert none.preset == "none" and none.max_iters == defaults.max_iters and none.n_embd == defaults.n_embd
    if not torch.cuda.is_available():
        assert train_tiny.parse_args([])[0].preset == "cpu"


def test_unknown_preset_is_one_line(capsys):
    fails_cleanly(train_tiny.main, ["--preset", "tpu"], capsys, "--preset")


@pytest.mark.parametrize("name", list(train_tiny.PRESETS))
def test_presets_train_a_few_steps(name, corpus_file, tmp_path, capsys):
    """Each preset's model shape, trained two steps on this CPU (a smaller batch for speed)."""
    out = str(tmp_path / name)
    train_tiny.main(["--preset", name, "--device", "cpu", "--data", corpus_file, "--out-dir", out, "--vocab-size", "300",
                     "--max-iters", "2", "--eval-interval", "2", "--eval-windows", "1", "--batch-size", "2"])
    printed = capsys.readouterr().out
    assert f"preset         = {name}\n" in printed
    cfg = torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)["model_config"]
    for key in ("n_layer", "n_embd", "n_head", "seq_len"):
        assert cfg[key] == train_tiny.PRESETS[name][key], key
