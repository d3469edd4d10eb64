"""
What train_tiny.py and sample.py share: flag types, device and thread choice, and the rule that
bad input ends in one line on stderr and a non-zero exit, never a traceback.
"""

import argparse
import os
import sys
import tempfile
from contextlib import nullcontext

import torch


class HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Appends '(default: ...)' to each flag's help, unless the help already says its default
    (flags whose default is None explain it in words: 'default: off', 'default: G')."""

    def _get_help_string(self, action):
        if action.default is None or "default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse with defaults shown in --help and one-line errors."""

    def __init__(self, **kw):
        super().__init__(formatter_class=HelpWithDefaults, **kw)

    def error(self, message):
        die(f"{self.prog}: {message}")

    def add_device_flag(self, group=None, default="auto"):
        """--device, alike in every script (into group, an argument group of this parser, if given)."""
        (group or self).add_argument("--device", default=default, choices=("auto", "cpu", "cuda"),
                                     help="auto: cuda if available")

    def add_threads_flag(self, group=None):
        """--threads: the CPU threads torch may use; set_threads applies it."""
        (group or self).add_argument("--threads", type=positive_int, help="CPU threads torch uses (default: "
                                     f"$OMP_NUM_THREADS if set, else {THREADS_RULE}: {default_threads()} here)")


def parse_quick(parser, argv, quick):
    """parser's flags; with --quick, the values of quick (dest -> value) stand in for the
    defaults, so that a flag given still wins (argparse fills in a default only where the
    namespace it is given has no value)."""
    if parser.parse_known_args(argv)[0].quick:
        return parser.parse_args(argv, argparse.Namespace(**quick))
    return parser.parse_args(argv)


def die(message, code=2):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def number(s, kind, ok, what):
    """Parse a flag value as kind (int or float) and check ok(value); else one-line error."""
    try:
        v = kind(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}") from None
    if not ok(v):
        raise argparse.ArgumentTypeError(f"must be {what}, got {s}")
    return v


def positive_int(s):
    return number(s, int, lambda v: v > 0, "a positive integer")


def non_negative_int(s):
    return number(s, int, lambda v: v >= 0, "an integer >= 0")


def non_negative_float(s):
    return number(s, float, lambda v: 0 <= v < float("inf"), "a finite number >= 0")


def finite_float(s):
    return number(s, float, lambda v: abs(v) < float("inf"), "a finite number")


def positive_float(s):
    return number(s, float, lambda v: 0 < v < float("inf"), "a finite number > 0")


def probability(s):
    return number(s, float, lambda v: 0 <= v <= 1, "a probability in [0, 1]")


def comma_list(kind, empty_ok=False):
    """A flag type: comma-separated values, each parsed and checked by kind (positive_int,
    probability, ...): comma_list(positive_int)("1,4,16") -> [1, 4, 16]; '' -> [] if empty_ok."""
    def parse(s):
        if not s.strip():
            if empty_ok:
                return []
            raise argparse.ArgumentTypeError("expected a comma-separated list, got nothing")
        return [kind(v.strip()) for v in s.split(",")]
    return parse


def one_of(choices):
    """A flag type for comma_list: a value that must be one of choices."""
    def parse(s):
        if s not in choices:
            raise argparse.ArgumentTypeError(f"expected one of {','.join(choices)}, got {s!r}")
        return s
    return parse


def check_out_dir(path, flag="--out-dir"):
    """ValueError naming flag unless path is, or can be made, a directory we can write files in.
    Tried for real (root passes every permission check, /proc refuses even root), then undone:
    the directories it had to make are removed again."""
    made = missing_dirs(path, flag)
    what = "cannot create this directory"
    try:
        os.makedirs(path, exist_ok=True)
        what = "cannot write files in this directory"
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise ValueError(f"{flag} {path}: {what} ({e.strerror or e})") from None
    finally:
        for d in made:
            try:
                os.rmdir(d)
            except OSError:
                pass  # not ours to remove any more (someone wrote in it meanwhile)


def missing_dirs(path, flag):
    """The directories os.makedirs(path) would make, deepest first; ValueError if a file is in the way."""
    made, p = [], os.path.abspath(path)
    while not os.path.exists(p):
        made.append(p)
        p = os.path.dirname(p)
    if not os.path.isdir(p):
        which = "" if p == os.path.abspath(path) else f"{p} "
        raise ValueError(f"{flag} {path}: {which}is a file, not a directory")
    return made


THREADS_RULE = "half the CPUs, 1 to 4"


def default_threads():
    """$OMP_NUM_THREADS if set, else half the CPUs this process may run on, at least 1 and at most 4.
    Small models gain little from more threads, and a thread per core loses much when another
    process wants a core too: torch's threads then wait for the one that is not running."""
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()  # "4" or "4,2" (nested levels)
    if env.isdigit() and int(env) > 0:
        return int(env)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(4, max(1, cpus // 2))


def set_threads(n=None):
    """torch.set_num_threads(n, or default_threads() if n is None) -> the number set."""
    n = n or default_threads()
    torch.set_num_threads(n)
    return n


def resolve_device(name):
    """auto -> cuda if available else cpu. Asking for cuda without one is an error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but no CUDA GPU is available (try --device cpu)")
    return torch.device(name)


def autocast(device):
    """bf16 autocast on a GPU (matmuls in bf16, reductions in fp32); plain fp32 on the CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def print_config(title, cfg):
    """The resolved configuration, one 'key = value' per line, at the start of every run."""
    print(f"{title}:")
    for k, v in cfg.items():
        print(f"  {k:<14} = {v!r}" if isinstance(v, str) and not v.isprintable() else f"  {k:<14} = {v}")


def run(main, argv=None):
    """Call main(argv); user errors (ValueError, OSError) become one line and exit code 2,
    Ctrl-C outside the training loop (which saves first) a short line and exit code 130."""
    try:
        return main(argv)
    except (ValueError, OSError) as e:
        die(str(e).splitlines()[0] if str(e) else type(e).__name__)
    except KeyboardInterrupt:
        die("interrupted", 130)
