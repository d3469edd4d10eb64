"""
Check what the docs show against the code: every code pointer (`sampler.py: denoise`) names a
file that defines it, and every command runs as written.

    python scripts/check_docs.py                     # every page: README.md, then notes/*.md
    python scripts/check_docs.py --page notes/04-parallel-decoding-and-caches.md
    python scripts/check_docs.py --list              # print the commands as they would run; run nothing
    python scripts/check_docs.py --quick             # the CI subset (.ci/run)
    python scripts/check_docs.py --pointers-only     # the code pointers only (a fraction of a second)

Code pointers (which forms count, how a path and a name resolve: scripts/doc_pointers.py) are
checked first, in every mode but --list, on the pages chosen: one line `page:line: pointer: why`
per broken one, then a count. They take well under a second, so a stale name shows before
minutes of commands.

Which commands, and the small flags they run with: scripts/doc_commands.py. They run in page
order (README.md, then notes/*.md) in a scratch copy of the repository (its tracked and
untracked-but-not-ignored files plus the compiled mini_dlm/_C*.so), so nothing tracked
changes and earlier commands' checkpoints are there for later ones. Each runs with
PYTHONPATH=<scratch copy>, so the scratch copy's mini_dlm is the one imported, and with
OMP_NUM_THREADS=1 unless the environment sets it (on a busy 2-core machine two-thread torch
ran 5x slower). One line per command: ok / FAIL / skip, seconds, page:line, the command as run.
Checkpoints: a command that reads DIR/ckpt.pt when the scratch copy has none first runs the
docs' own command that trains it (train_tiny.py ... --out-dir DIR; one on the same page
first), so one --page runs on its own. A checkpoint no page trains is a failure of the docs.
Exit status 1 if any command failed or any pointer is broken. On the 2-core development
machine the whole check took 625 s, --quick about 420 s (the sum of the same run's times for
the commands it keeps).
"""

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time

from doc_commands import checkpoints_read, page_commands, resolve, trained_dir
from doc_pointers import broken_pointers, find_pointers, stale_counts, tracked_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def scratch_copy(dest):
    """Copy the working tree (tracked and untracked-but-not-ignored files) and the build into dest."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    built = [os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "mini_dlm", "_C*.so"))]
    for rel in [p for p in listed if p] + built + ["mini_dlm/_build.json"]:
        src = os.path.join(ROOT, rel)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, rel))


def run_one(text, python, scratch, timeout):
    """(exit status, output) of one command run in scratch."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([scratch] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
               MPLBACKEND="Agg", PYTHONUNBUFFERED="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    argv, stdin = ([sys.executable, "-"], text) if python else (["bash", "-c", text], None)
    try:
        p = subprocess.run(argv, cwd=scratch, env=env, input=stdin, capture_output=True, text=True, timeout=timeout)
        return p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"") + (e.stderr or b"")
        return 124, (out.decode(errors="replace") if isinstance(out, bytes) else out) + f"\ntimed out after {timeout} s"


def show(status, seconds, cmd, text, note=""):
    where = f"{cmd.page}:{cmd.line}"
    first = (text or cmd.text).split("\n")[0] + (" ..." if "\n" in (text or cmd.text) else "")
    print(f"{status:<5} {seconds:6.1f} s  {where:<42} {note}{'python snippet: ' if cmd.python else ''}{first}",
          flush=True)


class Checker:
    def __init__(self, commands, scratch, gpu, quick, timeout):
        self.commands, self.scratch, self.gpu, self.quick, self.timeout = commands, scratch, gpu, quick, timeout
        self.failed, self.benched = 0, set()

    def producer(self, d, page):
        """The command that trains checkpoint directory d: one on the same page first."""
        found = [c for c in self.commands if trained_dir(c) == d]
        return next((c for c in found if c.page == page), found[0] if found else None)

    def ensure_checkpoints(self, cmd):
        for d in sorted(checkpoints_read(cmd)):
            prod = self.producer(d, cmd.page)
            if prod is not None and prod is not cmd and not os.path.exists(os.path.join(self.scratch, d, "ckpt.pt")):
                self.run(prod, note=f"(for {cmd.page}:{cmd.line}) ")

    def run(self, cmd, note=""):
        text, why = resolve(cmd, self.gpu, self.quick, self.benched)
        if text is None:
            show("skip", 0, cmd, None, note + f"[{why}] ")
            return
        self.ensure_checkpoints(cmd)
        t0 = time.time()
        code, output = run_one(text, cmd.python, self.scratch, self.timeout)
        show("ok" if code == 0 else "FAIL", time.time() - t0, cmd, text, note)
        if code:
            self.failed += 1
            print("\n".join("      | " + line for line in output.rstrip().split("\n")[-15:]), flush=True)


def pages(selected):
    found = ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "notes", "*.md")))
    for p in selected or []:
        if os.path.normpath(p) not in found:
            sys.exit(f"error: {p} is not README.md or a page of notes/")
    return [p for p in found if not selected or p in [os.path.normpath(s) for s in selected]]


def check_pointers(chosen):
    """Print the broken code pointers and stale line counts of the chosen pages and a count;
    the number broken."""
    texts = {page: open(os.path.join(ROOT, page)).read() for page in chosen}
    found = [p for page, text in texts.items() for p in find_pointers(page, text)]
    broken = broken_pointers(found, ROOT, tracked_files(ROOT))
    for p, why in broken:
        print(f"{p.page}:{p.line}: {p}: {why}")
    counts = [row for page, text in texts.items() for row in stale_counts(page, text, ROOT)]
    for where, path, written, actual in counts:
        print(f"{where}: {path} has {actual} lines, the table says {written}")
    print(f"check_docs: {len(found)} code pointers in {len(chosen)} pages, {len(broken)} broken; "
          f"{len(counts)} stale line counts", flush=True)
    return len(broken) + len(counts)


def main(argv=None):
    p = argparse.ArgumentParser(description="Run the commands of README.md and notes/*.md in a scratch copy.")
    p.add_argument("--page", action="append", help="only this page (repeatable); checkpoints from other pages are "
                   "trained as needed")
    p.add_argument("--list", action="store_true", help="print the commands as they would run, run nothing")
    p.add_argument("--quick", action="store_true", help="skip blocks marked slow, --compile runs, single test "
                   "files and a page's repeated runs of one benchmark (scripts/doc_commands.py)")
    p.add_argument("--pointers-only", action="store_true", help="check the code pointers only, run nothing")
    p.add_argument("--timeout", type=int, default=600, help="seconds one command may take")
    p.add_argument("--scratch", help="use (and keep) this directory instead of a fresh temporary one")
    args = p.parse_args(argv)
    broken = 0 if args.list else check_pointers(pages(args.page))  # cheap, so before any command
    if args.pointers_only:
        return 1 if broken else 0
    every = [c for page in pages(None) for c in page_commands(page, open(os.path.join(ROOT, page)).read())]
    chosen = [c for c in every if c.page in pages(args.page)]
    gpu = shutil.which("nvidia-smi") is not None and subprocess.run(
        [sys.executable, "-c", "import torch, sys; sys.exit(not torch.cuda.is_available())"]).returncode == 0
    if args.list:
        benched = set()
        for c in chosen:
            text, why = resolve(c, gpu, args.quick, benched)
            print(f"{c.page}:{c.line}: " + (f"[skip: {why}] {c.text}" if text is None else text))
        return 0
    scratch = args.scratch or tempfile.mkdtemp(prefix="check_docs-")
    try:
        scratch_copy(scratch)
        print(f"check_docs: {len(chosen)} commands in {scratch} ({'GPU' if gpu else 'no GPU'})", flush=True)
        checker, t0 = Checker(every, scratch, gpu, args.quick, args.timeout), time.time()
        for c in chosen:
            checker.run(c)
        print(f"check_docs: {checker.failed} failed, {time.time() - t0:.0f} s")
        return 1 if checker.failed or broken else 0
    finally:
        if not args.scratch:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
