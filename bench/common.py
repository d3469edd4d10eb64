"""
What the benchmarks share: their prompts, their JSON output, their plots and their tables.

  make_prompts   prompts of a fixed length, windows spread evenly over the validation split
  save           the JSON output {"meta", "records", ...}, written atomically
  import_pyplot  matplotlib with the Agg backend, or a one-line error naming the fix
  print_table    a fixed table: one header line, one line per record, a footnote

A table's columns are (title, format, key): the record's value under key, formatted by the
format spec, whose width (the digits before any '.' or ',', after the alignment) the title is
padded to.
"""

import json
import os
import re

from mini_dlm.data import read_text, split_text


def make_prompts(tok, data, n, prompt_len):
    """n prompts of prompt_len tokens, windows spread evenly over the validation split."""
    val = tok.encode(split_text(read_text(data)[0])[1])
    if len(val) < prompt_len + n:
        raise ValueError(f"the validation split of {data} is too short for {n} prompts of {prompt_len} tokens")
    step = (len(val) - prompt_len) // n
    return [val[i * step:i * step + prompt_len] for i in range(n)]


def save(path, meta, records, **extra):
    """The JSON output {"meta", "records", **extra}, written atomically (a temporary file, then
    os.replace)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump({"meta": meta, "records": records, **extra}, f, indent=1)
    os.replace(tmp, path)


def import_pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("the plots need matplotlib: pip install matplotlib (or pass --no-plots)") from None
    return plt


def width(spec):
    """'>9.1%' -> 9, '>10,d' -> 10, '>4d' -> 4."""
    m = re.match(r"[<>^]?(\d+)", spec)
    return int(m.group(1)) if m else 0


def print_table(columns, records, footnote=None):
    """Print records (dicts) as a table of columns [(title, format spec, key)], then the footnote."""
    print(" ".join(f"{title:>{width(spec)}}" for title, spec, _ in columns))
    for r in records:
        print(" ".join(format(r[key], spec) for _, spec, key in columns))
    if footnote:
        print(f"({footnote})")
