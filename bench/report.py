"""
A benchmark's fixed table: one header line, one line per record, a footnote. Each column is
(title, format, key): the record's value under key, formatted by the format spec, whose width
(the digits before any '.' or ',', after the alignment) the title is padded to.
"""

import re


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
