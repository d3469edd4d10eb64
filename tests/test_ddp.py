"""torchrun + DistributedDataParallel: 2 CPU processes (gloo) must train the weights that one
process trains on the same global batch (loss shards, full runs, resume, a bad batch size).
python -m pytest -q tests/test_ddp.py"""

import contextlib
import io
import os
import shutil
import subprocess
import sys

import pytest
import torch

import train_tiny
from conftest import ROOT, tiny_model
from mini_dlm.data import prepare_data
from mini_dlm.diffusion import loss_fn
from mini_dlm.model import ModelConfig, Transformer

TINY = ["--device", "cpu", "--seq-len", "32", "--n-layer", "1", "--n-head", "2", "--n-embd", "32",
        "--vocab-size", "300", "--eval-windows", "4", "--warmup-iters", "2", "--dropout", "0", "--batch-size", "4"]
# max |weight difference| of 2 processes vs 1: float rounding, measured 2e-8 (bd3) to 3.4e-7 (ar); the
# 3 steps move weights 2.5e-3 from their initial values, and a batch of 2 rows ends 4.5e-3 to 5e-3 away
TOL = 1e-5
OBJECTIVES = {"mdm": [], "bd3": ["--block-size", "8"], "ar": ["--objective", "ar"]}


@pytest.mark.parametrize("kw", [{}, {"block_size": 8}, {"objective": "ar"}], ids=list(OBJECTIVES))
def test_the_shards_losses_average_to_the_global_batchs(kw):
    """loss_fn's shard: each half of a batch draws its rows of the global noise, and the mean of
    the halves' losses (what DDP's gradient average differentiates) is the whole batch's loss."""
    model = tiny_model(seq_len=32, **kw)
    batch = torch.randint(0, 63, (4, 33), generator=torch.Generator().manual_seed(0))
    whole = loss_fn(model, batch, torch.Generator().manual_seed(1))
    halves = [loss_fn(model, batch[2 * r:2 * r + 2], torch.Generator().manual_seed(1), (r, 2)) for r in (0, 1)]
    assert torch.allclose((halves[0] + halves[1]) / 2, whole, rtol=1e-6, atol=0)
    if "objective" not in kw:  # the second half's own noise (no shard) is not its rows of the global draw
        alone = loss_fn(model, batch[2:], torch.Generator().manual_seed(1))
        assert not torch.allclose((halves[0] + alone) / 2, whole, rtol=1e-3, atol=0)


@pytest.fixture(scope="module")
def out_dir(corpus_file, tmp_path_factory):
    """-> new_out_dir(name): a fresh out-dir holding the token cache of the tiny flags, so that
    no run trains the tokenizer again."""
    cache = str(tmp_path_factory.mktemp("cache"))
    prepare_data(corpus_file, 300, cache, 32)

    def new_out_dir(name):
        path = str(tmp_path_factory.mktemp(name))
        for f in os.listdir(cache):
            shutil.copy(os.path.join(cache, f), path)
        return path
    return new_out_dir


def train(argv):
    """train_tiny.py in this process, as `python train_tiny.py` runs it: its stdout."""
    with contextlib.redirect_stdout(io.StringIO()) as out:
        train_tiny.main(argv)
    return out.getvalue()


def torchrun(argv, out_dir):
    """train_tiny.py under torchrun with 2 CPU processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # 2 processes on 2 cores
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "train_tiny.py", *argv, "--out-dir", out_dir], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def weights(out_dir):
    return torch.load(os.path.join(out_dir, "ckpt.pt"), weights_only=True)["model"]


def max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module", params=["mdm", "bd3"])  # ar: in test_resume_under_torchrun, one launch less
def runs(request, corpus_file, out_dir):
    """The same 3 steps, trained by one process (here) and by two (torchrun): argv, and the
    out-dir and stdout of each."""
    argv = TINY + OBJECTIVES[request.param] + ["--data", corpus_file, "--max-iters", "3", "--eval-interval", "3",
                                               "--log-interval", "1"]
    one, two = out_dir(f"{request.param}-one"), out_dir(f"{request.param}-two")
    one_out = train(argv + ["--out-dir", one])
    r = torchrun(argv, two)
    assert r.returncode == 0, r.stderr
    return argv, (one, one_out), (two, r.stdout)


def losses(stdout):
    return [float(line.split("| loss ")[1].split()[0]) for line in stdout.splitlines() if line.startswith("step ")]


def test_two_processes_train_the_weights_of_one(runs):
    _, (one, one_out), (two, two_out) = runs
    assert max_diff(weights(one), weights(two)) < TOL
    # ... and training moved them: the initial weights (seed 1337, as train_tiny.py makes them) are far
    cfg = torch.load(os.path.join(one, "ckpt.pt"), weights_only=True)["model_config"]
    torch.manual_seed(1337)
    assert max_diff(weights(two), Transformer(ModelConfig(**cfg)).state_dict()) > 100 * TOL
    # rank 0 alone prints, and the loss on its progress lines is the global batch's
    assert two_out.count("config:") == 1 and two_out.count("eval step 00003") == 1 and "ddp: 2 processes" in two_out
    assert len(losses(two_out)) == 3 and losses(two_out) == pytest.approx(losses(one_out), abs=2e-4)


def test_a_different_global_batch_does_not_match(runs, out_dir):
    """The tolerance is tight enough to tell batches apart: one process on a global batch of 2
    rows ends far from the two processes on 4."""
    argv, _, (two, _) = runs
    half = out_dir("half")
    train(argv + ["--batch-size", "2", "--out-dir", half])
    assert max_diff(weights(half), weights(two)) > 100 * TOL


def test_resume_under_torchrun(corpus_file, out_dir):
    """A one-process checkpoint at step 3, resumed to step 5 by one process and by two; of the
    AR objective, which has no other end-to-end run here."""
    argv = TINY + OBJECTIVES["ar"] + ["--data", corpus_file, "--eval-interval", "100"]
    one, two = out_dir("resume-one"), out_dir("resume-two")
    train(argv + ["--out-dir", one, "--max-iters", "3"])
    shutil.copy(os.path.join(one, "ckpt.pt"), two)
    train(argv + ["--out-dir", one, "--max-iters", "5", "--resume"])
    r = torchrun(argv + ["--max-iters", "5", "--resume"], two)
    assert r.returncode == 0, r.stderr
    assert "resuming at step 3" in r.stdout and torch.load(os.path.join(two, "ckpt.pt"), weights_only=True)["step"] == 5
    assert max_diff(weights(one), weights(two)) < TOL


def test_batch_size_must_divide_among_the_processes(corpus_file, out_dir):
    out = out_dir("indivisible")
    r = torchrun(TINY + ["--data", corpus_file, "--batch-size", "5"], out)
    assert r.returncode != 0
    line = "error: --batch-size 5 must be divisible by the number of processes (2): each trains on an equal share of the global batch"
    assert r.stderr.count(line) == 2  # one line from each process
    assert "train_tiny.py\", line" not in r.stderr  # no traceback of ours (torchrun prints its own)
    assert not [f for f in os.listdir(out) if not f.startswith("tokens-")]  # nothing written
