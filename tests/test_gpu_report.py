"""scripts/gpu_report.py reads what scripts/gpu_check.sh leaves behind: real train_tiny.py
progress lines and a real pytest JUnit file, made here on the CPU (the GPU run itself cannot
be tested without a GPU).  python -m pytest -q tests/test_gpu_report.py"""

import json
import subprocess
import sys

from conftest import ROOT
from test_cli import TINY


def test_the_report_reads_training_lines_test_counts_and_step_status(corpus_file, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    train = subprocess.run([sys.executable, "train_tiny.py", *TINY, "--data", corpus_file, "--max-iters", "40",
                            "--log-interval", "10", "--eval-interval", "100000", "--out-dir", str(tmp_path / "mdm")],
                           cwd=ROOT, capture_output=True, text=True, check=True)
    (work / "train.out").write_text(train.stdout)
    subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/test_tokenizer.py", f"--junitxml={work / 'tests.xml'}"],
                   cwd=ROOT, capture_output=True, check=True)
    (work / "steps.tsv").write_text("build\t0\t12\ntrain\t0\t30\ndecode\tskipped\t0\n")
    r = subprocess.run([sys.executable, "scripts/gpu_report.py", str(work), str(tmp_path / "r.json"), "99"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 1 and "failed or skipped: decode" in r.stdout  # a skipped step fails the check
    report = json.loads((tmp_path / "r.json").read_text())
    logged = [line for line in train.stdout.splitlines() if line.startswith("step ")]
    assert report["train"]["train"]["steps_logged"] == len(logged) - 1 == 3  # the first is warm-up
    assert report["train"]["train"]["last_loss"] == float(logged[-1].split("| loss ")[1].split()[0])
    assert report["train"]["train"]["val_nats"] > 0 and report["train"]["train"]["mfu_pct"] is None  # no MFU on a CPU
    assert report["tests"]["tests"] > 0 and report["tests"]["failures"] == 0
    assert [s["step"] for s in report["steps"]] == ["build", "train", "decode"] and report["seconds"] == 99
