"""
How big the code a reader opens is: lines of the package's top level (the core) and of each
subpackage, and the functions with the most parameters and the most lines.

    python scripts/code_stats.py                              # mini_dlm/ and train_tiny.py
    python scripts/code_stats.py --files sample.py bench/efficiency.py --top 5

A function's parameters are its arguments, self and cls left out, *args and **kw counting one
each; its lines run from `def` to its last line, docstring included.
"""

import argparse
import ast
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def lines(path):
    with open(path, "rb") as f:
        return f.read().count(b"\n")


def functions(path):
    """[(parameters, lines, name)] of every function and method defined in the file."""
    out = []
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
            n = len(names) - (names[:1] in (["self"], ["cls"])) + bool(a.vararg) + bool(a.kwarg)
            out.append((n, node.end_lineno - node.lineno + 1, node.name))
    return out


def package_lines(package):
    """{"top level" or a subpackage's folder: (files, lines)} of package (a folder of ROOT)."""
    out = {}
    for path in sorted(glob.glob(os.path.join(ROOT, package, "**", "*.py"), recursive=True)):
        folder = os.path.relpath(os.path.dirname(path), ROOT)
        key = "top level" if folder == package else folder
        files, n = out.get(key, (0, 0))
        out[key] = (files + 1, n + lines(path))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description="Lines per package level, the functions with the most parameters and "
                                "lines.")
    p.add_argument("--package", default="mini_dlm", help="the package folder (default: mini_dlm)")
    p.add_argument("--files", nargs="*", default=["train_tiny.py"], help="scripts whose longest functions are listed "
                   "too (default: train_tiny.py)")
    p.add_argument("--top", type=int, default=3, help="functions per list (default: 3)")
    args = p.parse_args(argv)
    for key, (files, n) in package_lines(args.package).items():
        print(f"{key:<28} {files:3d} files {n:6d} lines")
    top = sorted(glob.glob(os.path.join(ROOT, args.package, "*.py")))
    for title, paths in ((f"{args.package}/*.py", top), *((f, [os.path.join(ROOT, f)]) for f in args.files)):
        found = [(n, length, f"{os.path.relpath(path, ROOT)}: {name}") for path in paths
                 for n, length, name in functions(path)]
        most = ", ".join(f"{name} ({n})" for n, _, name in sorted(found, reverse=True)[:args.top])
        longest = ", ".join(f"{name} ({length})" for _, length, name in
                            sorted(found, key=lambda r: (-r[1], r[2]))[:args.top])
        print(f"{title}: most parameters {most}; longest {longest}")


if __name__ == "__main__":
    main()
