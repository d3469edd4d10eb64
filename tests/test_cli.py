"""train_tiny.py and sample.py end to end, checkpoints, and every bad input's one-line error.
python -m pytest -q tests/test_cli.py"""

import os
import subprocess
import sys

import pytest
import torch

import sample
import train_tiny
from conftest import ROOT
from mini_dlm.plumbing.backend import HAS_EXT
from mini_dlm.plumbing.checkpoint import load_checkpoint
from mini_dlm.plumbing.cli import run

TINY = ["--device", "cpu", "--seq-len", "32", "--n-layer", "1", "--n-head", "2", "--n-embd", "32",
        "--batch-size", "4", "--vocab-size", "300", "--eval-windows", "4", "--warmup-iters", "2"]


def fails_cleanly(main, argv, capsys, match):
    """main(argv) must exit non-zero with exactly one line on stderr, containing `match`."""
    with pytest.raises(SystemExit) as e:
        run(main, argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code != 0
    assert len(err.splitlines()) == 1 and err.startswith("error:") and "Traceback" not in err, err
    assert match in err, err


@pytest.fixture(scope="module")
def trained(corpus_file, tmp_path_factory):
    """A 6-step training run: out-dir with ckpt.pt."""
    out = str(tmp_path_factory.mktemp("run"))
    train_tiny.main(TINY + ["--data", corpus_file, "--out-dir", out, "--max-iters", "6", "--eval-interval", "3"])
    return out


def test_train_writes_a_complete_checkpoint(trained, corpus_file):
    ckpt = torch.load(os.path.join(trained, "ckpt.pt"), weights_only=True)
    assert ckpt["step"] == 6 and ckpt["optimizer"] is not None
    assert ckpt["train_config"]["seq_len"] == 32 and ckpt["val"]["nats"] > 0
    assert not [f for f in os.listdir(trained) if ".tmp" in f]  # no temporary files left behind
    model, tok, _ = load_checkpoint(os.path.join(trained, "ckpt.pt"))
    # round trip: the loaded weights are the saved ones, the tokenizer is usable
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt["model"][k])
    assert tok.decode(tok.encode("ROMEO: how now?")) == "ROMEO: how now?"
    assert model.config.mask_id == tok.mask_id and model.config.vocab_size == tok.vocab_size


def test_resume_continues_from_the_saved_step(trained, corpus_file, capsys):
    train_tiny.main(TINY + ["--data", corpus_file, "--out-dir", trained, "--max-iters", "9",
                            "--eval-interval", "100", "--resume"])
    out = capsys.readouterr().out
    assert "resuming at step 6" in out and "step 00009/00009" in out and "step 00001" not in out
    assert torch.load(os.path.join(trained, "ckpt.pt"), weights_only=True)["step"] == 9


def test_resume_restores_the_settings_and_refuses_another_model(corpus_file, tmp_path, capsys):
    """--resume takes the run's settings from its checkpoint as defaults: a flag given may change
    the run's length or learning rate, not the model, its tokenizer or its data."""
    out = str(tmp_path)
    train_tiny.main(TINY + ["--data", corpus_file, "--out-dir", out, "--max-iters", "2", "--eval-interval", "2",
                            "--lr", "0.002"])
    train_tiny.main(["--out-dir", out, "--resume", "--max-iters", "3", "--device", "cpu"])  # no other flag
    ckpt = torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)
    tc = ckpt["train_config"]
    assert ckpt["step"] == 3 and tc["max_iters"] == 3  # given
    assert (tc["lr"], tc["batch_size"], tc["seq_len"], tc["data"]) == (0.002, 4, 32, corpus_file)  # restored
    fails_cleanly(train_tiny.main, ["--out-dir", out, "--resume", "--n-embd", "64", "--seq-len", "48"], capsys,
                  "--resume continues the run as it was trained, with --n-embd 32, --seq-len 32: leave those flags out")


def test_same_seed_same_weights(corpus_file, tmp_path):
    runs = []
    for name in ("a", "b", "a"):  # the third run repeats "a" and reuses its token cache
        out = str(tmp_path / name)
        train_tiny.main(TINY + ["--data", corpus_file, "--out-dir", out, "--max-iters", "3", "--eval-interval", "3"])
        runs.append(torch.load(os.path.join(out, "ckpt.pt"), weights_only=True))
    for r in runs[1:]:
        assert r["val"] == runs[0]["val"]
        assert all(torch.equal(v, r["model"][k]) for k, v in runs[0]["model"].items())
    other = str(tmp_path / "c")
    train_tiny.main(TINY + ["--data", corpus_file, "--out-dir", other, "--max-iters", "3", "--eval-interval", "3", "--seed", "7"])
    assert torch.load(os.path.join(other, "ckpt.pt"), weights_only=True)["val"] != runs[0]["val"]


def test_second_run_uses_the_token_cache(trained, corpus_file, capsys):
    cache = [f for f in os.listdir(trained) if f.startswith("tokens-")]
    assert len(cache) == 1
    mtime = os.path.getmtime(os.path.join(trained, cache[0]))
    train_tiny.main(TINY + ["--data", corpus_file, "--out-dir", trained, "--max-iters", "1", "--eval-interval", "100"])
    assert os.path.getmtime(os.path.join(trained, cache[0])) == mtime


def test_sample_prints_text_and_stats(trained, capsys):
    sample.main(["--ckpt", os.path.join(trained, "ckpt.pt"), "--device", "cpu", "--gen-len", "8",
                 "--steps", "4", "--block-len", "4", "--num-samples", "2", "--show-steps", "--prompt", "ROMEO:"])
    out = capsys.readouterr().out
    assert out.count("--- sample") == 2 and out.count("\nstep ") == 4
    assert "░" in out.split("\nstep ")[1]  # the first step still shows masked positions
    assert "forward passes 4 | 2.00 tokens/forward" in out


def test_cli_end_to_end_in_a_fresh_process(corpus_file, tmp_path):
    """The scripts as a user runs them: a real process, its exit code and output."""
    out = str(tmp_path)
    r = subprocess.run([sys.executable, "train_tiny.py", *TINY, "--data", corpus_file, "--out-dir", out,
                        "--max-iters", "2", "--eval-interval", "2"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "eval step 00002" in r.stdout
    r = subprocess.run([sys.executable, "sample.py", "--ckpt", os.path.join(out, "ckpt.pt"), "--device", "cpu",
                        "--gen-len", "8", "--steps", "5", "--block-len", "4"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: --steps 5 is not a multiple of the number of blocks (2 = gen-len / block-len)"]


# --- bad input: one line, non-zero exit, nothing half-written ----------------------------------

def write(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


@pytest.mark.parametrize("content, match", [
    (None, "not found"),
    (b"", "empty"),
    (b"  \n\n", "empty"),
    (b"\x7fELF\x02\x01\x00\x00binary", "binary"),
    ("caf\u00e9".encode("latin-1") * 100, "not valid UTF-8"),
])
def test_bad_data_files(tmp_path, capsys, content, match):
    data = str(tmp_path / "missing.txt") if content is None else write(tmp_path, "d.txt", content)
    out = tmp_path / "out"
    fails_cleanly(train_tiny.main, TINY + ["--data", data, "--out-dir", str(out)], capsys, match)
    assert not out.exists()


@pytest.mark.parametrize("flags, match", [
    (["--seq-len", "100000"], "longer than the data"),
    (["--n-layer", "0"], "positive integer"),
    (["--batch-size", "-3"], "positive integer"),
    (["--n-embd", "30", "--n-head", "4"], "divisible"),
    (["--lr", "fast"], "expected a finite number >= 0"),
    (["--lr", "1e-3", "--min-lr", "2e-3"], "--min-lr 0.002 is above --lr 0.001"),
    (["--objective", "ar", "--complementary-masks"], "--complementary-masks is for diffusion training"),
])
def test_bad_training_flags(tmp_path, capsys, corpus_file, flags, match):
    out = tmp_path / "out"
    fails_cleanly(train_tiny.main, TINY + ["--data", corpus_file, "--out-dir", str(out)] + flags, capsys, match)
    assert not out.exists() or not os.listdir(out)


def test_train_tokens_too_few_is_one_line(tmp_path, capsys, corpus_file):
    """Checked once the data is tokenized: the token cache stays (a complete file, reused), no checkpoint."""
    out = tmp_path / "out"
    fails_cleanly(train_tiny.main, TINY + ["--data", corpus_file, "--out-dir", str(out), "--train-tokens", "10"], capsys,
                  "--train-tokens 10 is less than one training window of 33 tokens")
    assert not (out / "ckpt.pt").exists()


def test_bad_out_dirs(tmp_path, capsys, corpus_file):
    afile = write(tmp_path, "afile", b"not a directory")
    cases = {afile: f"--out-dir {afile}: is a file, not a directory",
             os.path.join(afile, "sub"): f"--out-dir {afile}/sub: {afile} is a file, not a directory"}
    if os.path.isdir("/proc/self"):  # Linux: /proc refuses new directories, even to root
        cases["/proc/mini_dlm_x"] = "--out-dir /proc/mini_dlm_x: cannot create this directory"
    for out, match in cases.items():
        fails_cleanly(train_tiny.main, TINY + ["--data", corpus_file, "--out-dir", out], capsys, match)


def test_out_dir_check_leaves_nothing_behind(tmp_path):
    from mini_dlm.plumbing.cli import check_out_dir
    check_out_dir(str(tmp_path / "a" / "b"))
    assert os.listdir(tmp_path) == []
    (tmp_path / "kept").mkdir()
    check_out_dir(str(tmp_path / "kept"))
    assert os.listdir(tmp_path / "kept") == []


def test_resume_without_checkpoint(tmp_path, capsys, corpus_file):
    fails_cleanly(train_tiny.main, TINY + ["--data", corpus_file, "--out-dir", str(tmp_path), "--resume"],
                  capsys, f"--resume {tmp_path / 'ckpt.pt'}: checkpoint not found")


@pytest.mark.parametrize("flags, match", [
    (["--gen-len", "30", "--block-len", "8"], "not divisible by --block-len"),
    (["--gen-len", "16", "--block-len", "4", "--steps", "6"], "not a multiple of the number of blocks"),
    (["--gen-len", "8", "--block-len", "4", "--steps", "16"], "larger than --gen-len"),
    (["--gen-len", "16", "--steps", "16", "--block-len", "8", "--prompt", "word " * 40], "context"),
    (["--gen-len", "0"], "positive integer"),
    (["--temperature", "-1"], ">= 0"),
    (["--gen-len", "8", "--block-len", "8", "--cache", "block"], "needs a block-diffusion checkpoint"),
    (["--gen-len", "8", "--block-len", "8", "--threshold", "0.9", "--factor", "1"], "not both"),
    (["--factor", "0"], "> 0"),
    (["--factor", "1", "--factor-rule", "paper"], "--factor-rule: invalid choice: 'paper'"),
    (["--gen-len", "auto", "--logits-eos-inf"], "not with an AR model, --show-steps, --factor, --logits-eos-inf"),
    (["--threshold", "nan"], "--threshold: must be a probability in [0, 1], got nan"),
    (["--threshold", "1.5"], "--threshold: must be a probability in [0, 1]"),
    (["--threshold", "-1"], "--threshold: must be a probability in [0, 1]"),
    (["--gen-len", "auto", "--eot-threshold", "2"], "--eot-threshold: must be a probability in [0, 1]"),
    (["--gen-len", "auto", "--low-threshold", "-0.1"], "--low-threshold: must be a probability in [0, 1]"),
    (["--cache", "kv"], "invalid choice"),
    (["--infill", "no blank"], "the template has no blank"),
    (["--infill", "ROMEO:{0} my lord."], "has size 0"),
    (["--infill", "ROMEO:{20} my lord.{10}"], "more than the model's context of 32"),
    (["--infill", "ROMEO:{3}", "--gen-len", "auto"], "drop --gen-len"),
    (["--infill", "ROMEO:{3}", "--prompt", "JULIET:", "--gen-len", "8"], "drop --prompt and --gen-len"),
    (["--infill", "ROMEO:{3}", "--steps", "4"], "between 1 and the 3 masked tokens"),
    (["--cfg-scale", "-0.5"], "--cfg-scale: must be a finite number >= 0"),
])
def test_bad_sampling_flags(trained, capsys, flags, match):
    fails_cleanly(sample.main, ["--ckpt", os.path.join(trained, "ckpt.pt"), "--device", "cpu"] + flags, capsys, match)


def test_bad_checkpoints(trained, tmp_path, capsys):
    good = open(os.path.join(trained, "ckpt.pt"), "rb").read()
    truncated = write(tmp_path, "truncated.pt", good[: len(good) // 2])
    cases = {
        str(tmp_path / "nope.pt"): "checkpoint not found",
        trained: f"--ckpt {trained}: is a directory, not a checkpoint file",
        truncated: f"--ckpt {truncated}: not a complete checkpoint (truncated or corrupt)",
        write(tmp_path, "text.pt", b"hello, not a checkpoint\n"): "not a mini_dlm checkpoint (not a file torch.save wrote)",
        write(tmp_path, "empty.pt", b""): "empty file",
    }
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    cases[str(tmp_path / "foreign.pt")] = "not a mini_dlm checkpoint (expected format"
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")  # a pickled class: weights_only refuses it
    cases[str(tmp_path / "module.pt")] = "not a mini_dlm checkpoint (it holds Python objects"
    for path, match in cases.items():
        fails_cleanly(sample.main, ["--ckpt", path, "--device", "cpu"], capsys, match)
        with pytest.raises(ValueError) as e:
            load_checkpoint(path)
        assert "weights_only" not in str(e.value) and len(str(e.value)) < 100 + len(path), str(e.value)


def test_ctrl_c_saves_a_checkpoint_and_exits_130(corpus_file, tmp_path):
    """SIGINT a real training process once it has logged a step: it must save, then exit 130."""
    import signal
    proc = subprocess.Popen([sys.executable, "-u", "train_tiny.py", *TINY, "--data", corpus_file,
                             "--out-dir", str(tmp_path), "--max-iters", "100000", "--log-interval", "1",
                             "--eval-interval", "100000"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("step 00003/"):
            proc.send_signal(signal.SIGINT)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted: saved step" in err and "Traceback" not in err
    step = torch.load(tmp_path / "ckpt.pt", weights_only=True)["step"]
    assert 3 <= step < 100000


@pytest.fixture(scope="module")
def trained_blocks(corpus_file, tmp_path_factory):
    """A 4-step block-diffusion run (--block-size 8)."""
    out = str(tmp_path_factory.mktemp("bd3"))
    train_tiny.main(TINY + ["--data", corpus_file, "--out-dir", out, "--max-iters", "4", "--eval-interval", "4",
                            "--block-size", "8"])
    return os.path.join(out, "ckpt.pt")


def test_block_diffusion_checkpoint_samples_the_same_with_and_without_cache(trained_blocks, capsys):
    assert load_checkpoint(trained_blocks)[0].config.block_size == 8
    texts = []
    for cache in ("none", "block"):
        sample.main(["--ckpt", trained_blocks, "--device", "cpu", "--gen-len", "16", "--threshold", "0.5",
                     "--cache", cache, "--prompt", "ROMEO:", "--prompt", "KING: now"])
        out = capsys.readouterr().out
        assert "block_len      = 8" in out  # the checkpoint's block size is the default
        texts.append(out[out.index("--- sample 1/2"):out.index("--- forward passes")])
    assert texts[0] == texts[1] and "KING: now" in texts[0]


@pytest.fixture(scope="module")
def trained_ar(corpus_file, tmp_path_factory):
    """A 2-step AR run."""
    out = str(tmp_path_factory.mktemp("ar"))
    train_tiny.main(TINY + ["--data", corpus_file, "--out-dir", out, "--max-iters", "2", "--objective", "ar"])
    return os.path.join(out, "ckpt.pt")


def printed_config(out):
    """sample.py's 'config:' lines -> {key: value as printed}."""
    lines = out[out.index("config:\n") + 8:].splitlines()
    rows = [line.split(" = ", 1) for line in lines[:next(i for i, l in enumerate(lines) if not l.startswith("  "))]]
    return {k.strip(): v for k, v in rows}


SCHEDULE_FLAGS = {"steps", "block_len", "remasking", "threshold", "factor", "factor_rule", "cache", "logits_eos_inf",
                  "confidence_eos_eot_inf", "show_steps", "cfg_scale"}
CONTINUE = {"prompt", "gen_len"}
MODE_FLAGS = {  # sample.py's flags that one mode uses and another ignores
    "diffusion": CONTINUE | SCHEDULE_FLAGS,
    "block diffusion": CONTINUE | SCHEDULE_FLAGS,
    "block diffusion, auto length": CONTINUE | {"max_len", "remasking", "threshold", "cache", "cfg_scale"},
    "DAEDAL, auto length": CONTINUE | {"init_len", "max_len", "grow", "tail", "eot_threshold", "low_threshold",
                                       "insert", "remasking", "threshold", "confidence_eos_eot_inf", "cfg_scale"},
    "AR": CONTINUE | {"show_steps"},
    "infill": {"infill"} | SCHEDULE_FLAGS,
    "block diffusion, infill": {"infill"} | SCHEDULE_FLAGS,
}


def test_sample_prints_the_flags_of_its_mode_only(trained, trained_blocks, trained_ar, capsys):
    runs = {"diffusion": (os.path.join(trained, "ckpt.pt"), ["--gen-len", "8", "--block-len", "8"]),
            "block diffusion": (trained_blocks, ["--gen-len", "8"]),
            "block diffusion, auto length": (trained_blocks, ["--gen-len", "auto", "--max-len", "16"]),
            "DAEDAL, auto length": (os.path.join(trained, "ckpt.pt"), ["--gen-len", "auto", "--init-len", "8",
                                                                       "--max-len", "16"]),
            "AR": (trained_ar, ["--gen-len", "4"]),
            "infill": (os.path.join(trained, "ckpt.pt"), ["--infill", "ROMEO:{4}", "--block-len", "4"]),
            "block diffusion, infill": (trained_blocks, ["--infill", "ROMEO:{4}"])}
    every_mode = set().union(*MODE_FLAGS.values())
    for mode, (ckpt, flags) in runs.items():
        sample.main(["--ckpt", ckpt, "--device", "cpu"] + flags)
        config = printed_config(capsys.readouterr().out)
        assert config["mode"] == mode
        assert {"ckpt", "temperature", "num_samples", "seed", "threads", "backend"} <= set(config)
        assert set(config) & every_mode == MODE_FLAGS[mode], mode


def test_block_diffusion_checkpoint_refuses_other_block_lengths(trained_blocks, capsys):
    fails_cleanly(sample.main, ["--ckpt", trained_blocks, "--device", "cpu", "--block-len", "16"], capsys,
                  "use --block-len 8")
    fails_cleanly(sample.main, ["--ckpt", trained_blocks, "--device", "cpu", "--cache", "dual"], capsys,
                  "full-attention")


@pytest.mark.parametrize("flags", [[], ["--cache", "dual", "--threshold", "0.5"], ["--cache", "prefix", "--cfg-scale", "1"],
                                   ["--steps", "3", "--show-steps", "--temperature", "1"],
                                   ["--remasking", "margin", "--factor", "1.0"], ["--remasking", "random"]])
def test_sample_infill_keeps_the_text_and_marks_the_fills(trained, capsys, flags):
    sample.main(["--ckpt", os.path.join(trained, "ckpt.pt"), "--device", "cpu", "--infill", "ROMEO:{4} my lord.{2}",
                 "--block-len", "4", "--num-samples", "2"] + flags)
    out = capsys.readouterr().out
    samples = out.split("--- sample ")[1:]
    assert len(samples) == 2 and printed_config(out)["mode"] == "infill"
    for text in samples:
        body = text.split("\n", 1)[1].rsplit("\n--- forward", 1)[0]
        assert body.startswith("ROMEO:⟦") and "⟧ my lord.⟦" in body and body.rstrip("\n").endswith("⟧")
    assert "tokens/forward per sample | 12 tokens" in out  # 6 blank tokens per sample


def test_block_model_infills_the_same_with_and_without_cache(trained_blocks, capsys):
    texts = []
    for cache in ("none", "block"):
        sample.main(["--ckpt", trained_blocks, "--device", "cpu", "--infill", "ROMEO:{6} my lord.{9}", "--cache", cache,
                     "--threshold", "0.5"])
        out = capsys.readouterr().out
        assert printed_config(out)["mode"] == "block diffusion, infill"
        texts.append(out[out.index("--- sample 1/1"):out.index("--- forward passes")])
    assert texts[0] == texts[1] and "my lord." in texts[0]


def test_ar_checkpoints_refuse_infill_and_guidance(trained_ar, capsys):
    fails_cleanly(sample.main, ["--ckpt", trained_ar, "--device", "cpu", "--infill", "ROMEO:{3}"], capsys,
                  "an AR model cannot infill")
    fails_cleanly(sample.main, ["--ckpt", trained_ar, "--device", "cpu", "--cfg-scale", "1"], capsys,
                  "--cfg-scale needs a diffusion checkpoint")


@pytest.mark.parametrize("flags", [["--threshold", "0.9", "--cache", "dual"], ["--factor", "1.0", "--cache", "prefix"],
                                   ["--factor", "2.0", "--factor-rule", "strict"],
                                   ["--remasking", "margin", "--threshold", "0.5"], ["--remasking", "entropy"],
                                   ["--threshold", "0.5", "--logits-eos-inf", "--confidence-eos-eot-inf"]])
def test_fast_sampling_flags(trained, capsys, flags):
    sample.main(["--ckpt", os.path.join(trained, "ckpt.pt"), "--device", "cpu", "--gen-len", "16",
                 "--block-len", "8", "--show-steps"] + flags)
    out = capsys.readouterr().out
    passes = int(out.split("--- forward passes ")[1].split()[0])
    assert 2 <= passes <= 16 and out.count("\nstep ") == passes
    assert "\033[" not in out  # no colour codes when stdout is not a terminal


def test_bench_sampling_validates_then_prints_its_table(trained, trained_blocks, corpus_file, tmp_path, capsys):
    from bench import sampling as bench_sampling
    train_tiny.main(TINY + ["--data", corpus_file, "--out-dir", str(tmp_path), "--max-iters", "2", "--objective", "ar"])
    bench_sampling.main(["--full", os.path.join(trained, "ckpt.pt"), "--block", trained_blocks,
                         "--ar", str(tmp_path / "ckpt.pt"), "--device", "cpu", "--gen-len", "8", "--block-len", "8"])
    out = capsys.readouterr().out
    assert "check: block cache == no cache, token for token: yes" in out
    rows = out[out.index("decoding"):].splitlines()[1:]
    assert [r.split("  ")[0] for r in rows][:2] == ["LLaDA baseline", "threshold 0.9"] and len(rows) == 7
    assert rows[-1].split()[-1] == "100.0%"  # the exact cache agrees with no cache
    fails_cleanly(bench_sampling.main, ["--full", os.path.join(trained, "ckpt.pt"), "--ar", trained_blocks,
                                        "--device", "cpu"], capsys, "AR checkpoint")


def test_backends_give_the_same_text(trained, capsys):
    texts = []
    for backend in ("torch", "auto"):
        sample.main(["--ckpt", os.path.join(trained, "ckpt.pt"), "--device", "cpu", "--gen-len", "16",
                     "--block-len", "8", "--threshold", "0.3", "--temperature", "0.7", "--backend", backend])
        out = capsys.readouterr().out
        texts.append(out[out.index("--- sample"):out.index("--- forward passes")])
        ran = "ext" if backend == "auto" and HAS_EXT else "torch"  # the stats line names what ran
        assert f"tokens/s | ops unmask {ran}\n" in out, out
    assert texts[0] == texts[1]


@pytest.fixture
def keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_threads_flag_sets_and_prints_the_thread_count(trained, capsys, keep_threads):
    sample.main(["--ckpt", os.path.join(trained, "ckpt.pt"), "--device", "cpu", "--gen-len", "4", "--block-len", "4",
                 "--threads", "2"])
    assert "\n  threads        = 2\n" in capsys.readouterr().out and torch.get_num_threads() == 2
    fails_cleanly(sample.main, ["--threads", "0"], capsys, "--threads: must be a positive integer")


@pytest.mark.parametrize("env, cpus, expected", [
    ("3", 16, 3), ("5,2", 16, 5),  # OMP_NUM_THREADS wins (its first level when nested)
    (None, 1, 1), (None, 2, 1), (None, 6, 3), (None, 64, 4), ("many", 6, 3),  # else half the CPUs, 1 to 4
])
def test_default_threads(monkeypatch, env, cpus, expected):
    from mini_dlm.plumbing.cli import default_threads
    if env is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", env)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    assert default_threads() == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
@pytest.mark.parametrize("backend", ["ext", "auto"])
def test_cuda_without_a_gpu_is_one_line(trained, capsys, backend):
    fails_cleanly(sample.main, ["--ckpt", os.path.join(trained, "ckpt.pt"), "--device", "cuda", "--backend", backend],
                  capsys, "no CUDA GPU is available")


def test_comma_lists_and_quick_values():
    """comma_list parses and checks each value; parse_quick fills in --quick's values only for
    the flags not given, even when a flag is given its default value."""
    from mini_dlm.plumbing.cli import Parser, comma_list, one_of, parse_quick, positive_int
    assert comma_list(positive_int)("1, 4,16") == [1, 4, 16]
    assert comma_list(positive_int, empty_ok=True)("") == []
    for bad in ("", "1,0", "1,,2", "x"):
        with pytest.raises(Exception, match="expected|must be"):
            comma_list(positive_int)(bad)
    with pytest.raises(Exception, match="expected one of a,b, got 'c'"):
        comma_list(one_of(("a", "b")))("a,c")
    p = Parser()
    p.add_argument("--n", type=positive_int, default=32)
    p.add_argument("--sizes", type=comma_list(positive_int), default="1,2,4")
    p.add_argument("--quick", action="store_true")
    quick = dict(n=4, sizes=[1])
    assert vars(parse_quick(p, ["--quick"], quick)) == dict(n=4, sizes=[1], quick=True)
    assert vars(parse_quick(p, ["--quick", "--n", "32"], quick)) == dict(n=32, sizes=[1], quick=True)
    assert vars(parse_quick(p, ["--sizes", "8"], quick)) == dict(n=32, sizes=[8], quick=False)
