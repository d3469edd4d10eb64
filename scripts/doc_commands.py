"""
The commands of README.md and notes/*.md, and what scripts/check_docs.py runs instead.

Reading a page: its fenced ```bash blocks and ```python blocks, in order. In a bash block a
line ending in a backslash continues on the next, a heredoc (<<'EOF' ... EOF) stays whole,
`# ...` comments are dropped, and `NAME=value` lines set variables for the rest of the page
($NAME is expanded before the substitutions below). A python block is one command, run as
`python -`. A block right after the line <!-- check_docs: skip --> is not run (for text
that only illustrates); one after <!-- check_docs: slow --> is left out by quick.

Substitutions, so that the whole check takes minutes on a 2-core CPU; what later commands
depend on (--seq-len, --block-size, --docs, --objective, --out-dir, gen lengths) is kept. The
benchmarks are the modules of the bench package, run as `python -m bench.<name>`:
  train_tiny.py        --max-iters <= 10, --batch-size <= 4, --n-layer <= 2, --n-head <= 2,
                       --n-embd <= 64, --eval-windows <= 4, --task-train <= 256, --task-test <= 32
                       (added where a default is larger)
  torchrun             --nproc_per_node <= 2
  -m bench.efficiency  --batch-sizes 1, --repeats 1, only the shortest of --gen-lens (128 of the
                       default 128,256; --quick's 64 stays), --configs ar with --compile;
                       --replot runs as written
  -m bench.sampling    --gen-len <= 64
  -m bench.length      --num-prompts <= 8
  -m bench.decoding, -m bench.threshold   --num-prompts <= 4
  -m bench.cloze       --n <= 8;  -m bench.cfg  --n <= 4, --repeats <= 1
  -m bench.kernels     --repeats <= 2
  -m bench.task        --n <= 16 (within the capped --task-test)
  -m bench.data_constrained   --steps <= 8, --evals <= 2, a 1 x 32 model, --eval-windows <= 4
  distill.py           --iters <= 2, --batch-size <= 2, --bank <= 4;  -m bench.few_step  --num-prompts <= 4
Skipped, with the reason printed:
  pip ...                      setup: CI's setup stage runs it (the scratch copy has the build)
  python -m pytest -q tests    the whole suite: CI's test stage runs it (single files do run)
  scripts/gpu_check.sh, --device cuda    without a GPU
  with quick (check_docs.py --quick, the CI stage): blocks marked slow, torch.compile runs
  (--compile), single test files (CI's test stage runs them all), and a page's later runs of a
  benchmark it already ran.
"""

import re
import shlex
from dataclasses import dataclass, field

MARK = re.compile(r"<!-- check_docs: (skip|slow) -->")
SHELL_FENCES = ("bash", "sh", "shell")
BENCH = "-m bench."  # what script_of calls a benchmark: "-m bench.efficiency"
CAPS = {  # script (as script_of names it): {flag: (cap, the script's default)}
    "train_tiny.py": {"--max-iters": (10, 5000), "--batch-size": (4, 32), "--n-layer": (2, 6), "--n-head": (2, 6),
                      "--n-embd": (64, 384), "--eval-windows": (4, 64), "--task-train": (256, 50_000),
                      "--task-test": (32, 2000)},
    BENCH + "sampling": {"--gen-len": (64, 256)},
    BENCH + "length": {"--num-prompts": (8, 50)},
    BENCH + "decoding": {"--num-prompts": (4, 16)},
    BENCH + "threshold": {"--num-prompts": (4, 16)},
    BENCH + "cloze": {"--n": (8, 200)},
    BENCH + "cfg": {"--n": (4, 32), "--repeats": (1, 3)},
    BENCH + "kernels": {"--repeats": (2, 10)},
    BENCH + "task": {"--n": (16, 500)},
    BENCH + "data_constrained": {"--steps": (8, 1200), "--evals": (2, 12), "--n-layer": (1, 4), "--n-embd": (32, 128),
                                 "--eval-windows": (4, 64)},
    "distill.py": {"--iters": (2, 300), "--batch-size": (2, 8), "--bank": (4, 64)},
    BENCH + "few_step": {"--num-prompts": (4, 50)},
    "torchrun": {"--nproc_per_node": (2, 1)},
}
SETS = {BENCH + "efficiency": {"--batch-sizes": "1", "--repeats": "1"}}  # script: {flag: value}


@dataclass
class Command:
    page: str
    line: int
    text: str  # shell text, or Python source when python is True
    python: bool = False
    variables: dict = field(default_factory=dict)  # the page's NAME=value lines before it
    mark: str = ""  # "skip" or "slow": its block was marked so


def fenced_blocks(markdown):
    """[(info string, first line number of the body, body lines, mark)] of a page."""
    blocks, lines, i = [], markdown.split("\n"), 0
    while i < len(lines):
        if lines[i].startswith("```"):
            info, start = lines[i][3:].strip(), i + 1
            end = next((j for j in range(start, len(lines)) if lines[j].startswith("```")), len(lines))
            mark = MARK.fullmatch(lines[i - 1].strip()) if i > 0 else None
            blocks.append((info, start + 1, lines[start:end], mark.group(1) if mark else ""))
            i = end
        i += 1
    return blocks


def shell_commands(body, first_line):
    """[(line number, command text)] of a bash block: continuations joined, heredocs kept whole,
    comment and blank lines dropped."""
    out, i = [], 0
    while i < len(body):
        line, start = body[i], first_line + i
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.endswith("\\") and i < len(body):
            line = line[:-1].rstrip() + " " + body[i].strip()
            i += 1
        heredoc = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", line)
        if heredoc:
            end = next((j for j in range(i, len(body)) if body[j].strip() == heredoc.group(1)), len(body) - 1)
            line, i = "\n".join([line] + body[i:end + 1]), end + 1
        out.append((start, line))
    return out


def is_assignment(text):
    """True for a line that only sets shell variables (FLAGS="...")."""
    try:
        words = shlex.split(text, comments=True)
    except ValueError:
        return False
    return bool(words) and all(re.fullmatch(r"[A-Za-z_]\w*=.*", w, re.S) for w in words)


def page_commands(page, markdown):
    """The commands of one page, in order, each with the variables set before it."""
    out, variables = [], {}
    for info, first, body, mark in fenced_blocks(markdown):
        lang = info.split()[0] if info else ""
        if lang == "python":
            out.append(Command(page, first, "\n".join(body), True, dict(variables), mark))
        elif lang in SHELL_FENCES:
            for line, text in shell_commands(body, first):
                if is_assignment(text):
                    for word in shlex.split(text, comments=True):
                        name, value = word.split("=", 1)
                        variables[name] = expand(value, variables)
                else:
                    out.append(Command(page, line, text, False, dict(variables), mark))
    return out


def expand(text, variables):
    """$NAME and ${NAME} of the page's variables replaced by their values (others left to the shell)."""
    return re.sub(r"\$\{?([A-Za-z_]\w*)\}?", lambda m: variables.get(m.group(1), m.group(0)), text)


def split_words(text):
    """A command's words, as the shell splits them (comments dropped), `--flag=value` as two."""
    words = []
    for w in shlex.split(text, comments=True):
        words += w.split("=", 1) if w.startswith("--") and "=" in w else [w]
    return words


def flag_values(words, flag):
    """Indices of the values of every occurrence of flag."""
    return [i + 1 for i, w in enumerate(words[:-1]) if w == flag]


def set_flag(words, flag, value):
    for i in flag_values(words, flag):
        words[i] = value
    if not flag_values(words, flag):
        words += [flag, value]


def cap_flag(words, flag, cap, default):
    found = flag_values(words, flag)
    for i in found:
        if words[i].isdigit() and int(words[i]) > cap:
            words[i] = str(cap)
    if not found and default > cap:
        words += [flag, str(cap)]


def script_of(words):
    """The program a command runs: 'torchrun', the .py script python runs, '-m module', or argv[0]."""
    argv = [w for w in words if not re.fullmatch(r"[A-Za-z_]\w*=.*", w)] or [""]
    if argv[0] in ("python", "python3"):
        rest = argv[1:]
        if rest[:1] == ["-m"]:
            return "-m " + (rest[1] if len(rest) > 1 else "")
        return rest[0] if rest else "python"
    return argv[0]


def plan(words, gpu, quick):
    """(words to run, "") or (None, the reason to skip) for a tokenized shell command."""
    words, script = list(words), script_of(words)
    device = [words[i] for i in flag_values(words, "--device")]
    if script in ("pip", "pip3", "-m pip"):
        return None, "setup: CI's setup stage runs it"
    if not gpu and (script.startswith("scripts/gpu_check") or "cuda" in device):
        return None, "needs a GPU"
    if script == "-m pytest":
        targets = [w for w in words[words.index("pytest") + 1:] if not w.startswith("-")]
        if targets in (["tests"], ["tests/"], []):
            return None, "the whole suite: CI's test stage runs it"
        if quick:
            return None, "--quick: CI's test stage runs every test file"
    if quick and "--compile" in words:
        return None, "--quick: torch.compile takes minutes"
    if script == BENCH + "efficiency":
        if "--replot" in words:
            return words, ""
        lens = flag_values(words, "--gen-lens")  # the shortest generation length still fits the context
        if lens:
            words[lens[-1]] = str(min(int(g) for g in words[lens[-1]].split(",")))
        elif "--quick" not in words:
            words += ["--gen-lens", "128"]
        if "--compile" in words:
            set_flag(words, "--configs", "ar")
    rules = [script] + ([next((w for w in words if w.endswith(".py")), "")] if script == "torchrun" else [])
    for name in rules:
        for flag, (cap, default) in CAPS.get(name, {}).items():
            cap_flag(words, flag, cap, default)
        for flag, value in SETS.get(name, {}).items():
            set_flag(words, flag, value)
    return words, ""


def resolve(cmd, gpu, quick, benched):
    """(shell text to run, "") or (None, why not) for a Command. benched: the (page, benchmark)
    pairs already run, which --quick runs once per page (this adds to it)."""
    if cmd.mark == "skip" or (quick and cmd.mark == "slow"):
        return None, ("--quick: " if quick and cmd.mark == "slow" else "") + f"marked {cmd.mark}"
    if cmd.python:
        return cmd.text, ""
    text = expand(cmd.text, cmd.variables)
    if "\n" in text:  # a heredoc: as written
        return text, ""
    words, why = plan(split_words(text), gpu, quick)
    if words is None:
        return None, why
    bench = (cmd.page, script_of(words))
    if quick and bench[1].startswith(BENCH) and bench in benched:
        return None, f"--quick: {bench[1].removeprefix('-m ')} ran on this page already"
    benched.add(bench)
    return shlex.join(words), ""


def checkpoints_read(cmd):
    """Directories whose ckpt.pt the command reads."""
    return set(re.findall(r"([\w.-]+)/ckpt\.pt", cmd.text))


PRODUCERS = {"train_tiny.py": "out", "distill.py": "out-distill"}  # script: its default --out-dir


def trained_dir(cmd):
    """The --out-dir a train_tiny.py or distill.py command writes its ckpt.pt in, or None."""
    if cmd.python:
        return None
    words = split_words(expand(cmd.text, cmd.variables))
    script = next((s for s in PRODUCERS if s in words), None)
    if script is None or "-h" in words:
        return None
    found = flag_values(words, "--out-dir")
    return words[found[-1]] if found else PRODUCERS[script]
