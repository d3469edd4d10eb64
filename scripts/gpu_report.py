"""
Gathers what scripts/gpu_check.sh left in its work directory into one JSON file and prints a
summary. Usage (gpu_check.sh runs it last):

    python scripts/gpu_report.py WORKDIR OUT.json SECONDS

Reads WORKDIR/steps.tsv (name, exit status, seconds per step), build.json (setup.py's
record), tests.xml (pytest's JUnit XML), the sanitizer outputs (memcheck.out, ...),
kernels.json (python -m bench.kernels --json), train*.out (train_tiny.py's progress lines) and
decode.json (python -m bench.efficiency --out). Exits 1 if a step failed or was skipped.
"""

import json
import os
import re
import statistics
import sys
import xml.etree.ElementTree as ET


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def load_json(path):
    text = read(path)
    return json.loads(text) if text else None


def tests(work):
    """pytest's counts from its JUnit XML: {tests, failures, errors, skipped}."""
    try:
        suite = ET.parse(os.path.join(work, "tests.xml")).getroot()
    except (OSError, ET.ParseError):
        return None
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}


def sanitizer(work, tool):
    """compute-sanitizer's ERROR SUMMARY count, or None if it printed none."""
    m = re.search(r"ERROR SUMMARY: (\d+) error", read(os.path.join(work, f"{tool}.out")) or "")
    return int(m.group(1)) if m else None


STEP = re.compile(r"step (\d+)/\d+ \| loss ([\d.]+) \| lr \S+ \| +([\d.]+) ms \| +([\d,]+) tok/s(?: \| mfu +([\d.]+)%)?")
EVAL = re.compile(r"eval step (\d+) \| val (?:bound|nll) ([\d.]+) nats/token")


def training(work, name):
    """Medians of train_tiny.py's progress lines after the first (warm-up), and the last eval."""
    text = read(os.path.join(work, f"{name}.out")) or ""
    lines = [m.groups() for m in STEP.finditer(text)][1:]
    evals = EVAL.findall(text)
    if not lines:
        return None
    mfu = [float(x[4]) for x in lines if x[4] is not None]
    return {"steps_logged": len(lines), "ms_per_iter": statistics.median(float(x[2]) for x in lines),
            "tok_per_s": statistics.median(float(x[3].replace(",", "")) for x in lines),
            "mfu_pct": statistics.median(mfu) if mfu else None, "last_loss": float(lines[-1][1]),
            "val_nats": float(evals[-1][1]) if evals else None}


def decoding(work):
    data = load_json(os.path.join(work, "decode.json"))
    if not data:
        return None
    keep = ("config", "ops", "gen_len", "batch_size", "forward_passes", "tokens_per_forward", "tokens_per_s",
            "useful_tokens_per_s", "gen_ppl", "seconds")
    return [{k: r.get(k) for k in keep if k in r} for r in data["records"]]


def main(work, out, seconds):
    steps = []
    for line in (read(os.path.join(work, "steps.tsv")) or "").splitlines():
        name, rc, secs = line.split("\t")
        steps.append({"step": name, "exit": rc, "seconds": int(secs)})
    kernels = load_json(os.path.join(work, "kernels.json"))
    report = {
        "seconds": int(seconds),
        "steps": steps,
        "build": load_json(os.path.join(work, "build.json")),
        "tests": tests(work),
        "sanitizer_errors": {t: sanitizer(work, t) for t in ("memcheck", "racecheck", "synccheck")},
        "device": kernels and kernels.get("device"),
        "kernels": kernels,
        "train": {name: training(work, name) for name in ("train", "train_ar", "train_bd3")},
        "decode": decoding(work),
    }
    with open(out, "w") as f:
        json.dump(report, f, indent=1)
    bad = [s["step"] for s in steps if s["exit"] != "0"]
    print(f"gpu_check: {len(steps)} steps in {int(seconds)} s; " + (f"failed or skipped: {', '.join(bad)}" if bad
                                                                      else "all passed") + f"; wrote {out}")
    return 1 if bad or not steps else 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))
