"""
What train_tiny.py and sample.py share: flag types, device choice, and the rule that bad input
ends in one line on stderr and a non-zero exit, never a traceback.
"""

import argparse
import sys

import torch


class Parser(argparse.ArgumentParser):
    """argparse with defaults shown in --help and one-line errors."""

    def __init__(self, **kw):
        super().__init__(formatter_class=argparse.ArgumentDefaultsHelpFormatter, **kw)

    def error(self, message):
        die(f"{self.prog}: {message}")


def die(message, code=2):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def positive_int(s):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


def non_negative_int(s):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {v}")
    return v


def non_negative_float(s):
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not v >= 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {s}")
    return v


def resolve_device(name):
    """auto -> cuda if available else cpu. Asking for cuda without one is an error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but no CUDA GPU is available (try --device cpu)")
    return torch.device(name)


def print_config(title, cfg):
    """The resolved configuration, one 'key = value' per line, at the start of every run."""
    print(f"{title}:")
    for k, v in cfg.items():
        print(f"  {k:<14} = {v}")


def run(main, argv=None):
    """Call main(argv); user errors (ValueError, OSError) become one line and exit code 2."""
    try:
        return main(argv)
    except (ValueError, OSError) as e:
        die(str(e).splitlines()[0] if str(e) else type(e).__name__)
