"""
The code pointers of README.md and notes/*.md, and whether the code still has what they name.

A pointer names a file and one or more things it defines: `mini_dlm/sampler.py: denoise`,
`infill.py: parse_template, template_ids`, `model.py: Transformer.forward`,
`ops.py: block_attention(q, k, v, ...)` (only the identifier before the parenthesis is checked),
`ops.py:unmask`, and pytest's `tests/test_cli.py::test_same_seed_same_weights`. Each name is
one pointer: `a.py: f, g` is two.

Where they are recognised:
  in a code span (`...`), `path.py:` then any whitespace (a line break included: spans wrap)
  then names separated by `, `;
  in plain text, only `path.py:name` with no space and one name, because in prose
  `efficiency.py: the method` is a colon in a sentence (the heading `## bench/efficiency.py:
  the method` of notes/06), and so is "in `sample.py`: the flags" (there the colon is outside
  the span, so it is never a pointer).
Not pointers: `x.py:12` (a line number), anything in a fenced block (commands and code).

Resolving the path: relative to the repository root; a path that is not there (`sampler.py`,
`roofline.py`) is the one tracked file ending in /path, and none or several is a broken pointer.
Defining a name: a top-level def, async def, class or assignment (annotated or a tuple target)
of the file; `A.b`: b is a def, class or assignment in the body of the top-level class A
(dataclass fields included). An import is not a definition: a re-export moves with its source.

Line counts: a table row that names one file and its lines, `| `path` | 211 |` (after an
optional `| 3 |` rank column), must give the file's line count (stale_counts).
"""

import ast
import os
import re
import subprocess
from dataclasses import dataclass

NAME = r"[A-Za-z_]\w*(?:(?:\.|::)[A-Za-z_]\w*)*"  # dotted; pytest's :: as well
PATH = r"(?<![\w./-])([\w./-]*\w\.py)"  # the whole path, not its tail
IN_SPAN = re.compile(rf"{PATH}(?:::|:\s*)({NAME}(?:,\s+{NAME})*)")
IN_PROSE = re.compile(rf"{PATH}::?({NAME})")
SPAN = re.compile(r"`([^`]+)`")


@dataclass
class Pointer:
    page: str
    line: int
    path: str  # as written
    name: str  # dotted: A.b

    def __str__(self):
        return f"{self.path}: {self.name}"


def prose(markdown):
    """The page with the lines of fenced blocks blanked, so that line numbers stay."""
    out, fenced = [], False
    for line in markdown.split("\n"):
        if line.startswith("```"):
            fenced, line = not fenced, ""
        out.append("" if fenced else line)
    return "\n".join(out)


def find_pointers(page, markdown):
    """The pointers of one page, in order."""
    text, found = prose(markdown), []

    def add(pattern, start, end):
        for m in pattern.finditer(text, start, end):
            line = text.count("\n", 0, m.start()) + 1
            for name in re.split(r",\s+", m.group(2)):
                found.append(Pointer(page, line, m.group(1), name.replace("::", ".")))

    prev = 0
    for span in SPAN.finditer(text):  # plain text before each span, then the span
        add(IN_PROSE, prev, span.start())
        add(IN_SPAN, span.start(1), span.end(1))
        prev = span.end()
    add(IN_PROSE, prev, len(text))
    return found


def tracked_files(root):
    """The files git tracks under root: where a bare path (`sampler.py`) is looked for. Outside a
    git checkout (CI's copy of the tree for the CUDA build) the files found there, but in hidden
    and build folders."""
    git = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True)
    if git.returncode == 0:
        return git.stdout.split()
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [d for d in subfolders if not d.startswith(".") and d not in ("build", "dist", "__pycache__")
                         and not d.endswith(".egg-info")]
        found += [os.path.relpath(os.path.join(folder, f), root) for f in files]
    return sorted(found)


def resolve_path(path, root, files):
    """(path relative to root, "") or (None, why): as written, else the one file ending in /path."""
    if os.path.isfile(os.path.join(root, path)):
        return os.path.normpath(path), ""
    found = [f for f in files if f.endswith("/" + path)]
    if len(found) == 1:
        return found[0], ""
    return None, f"ambiguous: {', '.join(sorted(found))}" if found else "no such file"


def bound_names(stmt):
    """The names a def, class or assignment statement defines (imports define none here)."""
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [stmt.name]
    if isinstance(stmt, ast.Assign):
        return [n.id for t in stmt.targets for n in ast.walk(t) if isinstance(n, ast.Name)]  # a, (b, c) = ...
    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):  # dataclass fields too
        return [stmt.target.id]
    return []


def why_undefined(tree, dotted):
    """None if the module defines dotted (A.b: b in the body of class A), else why not."""
    body, parts = tree.body, dotted.split(".")
    for i, part in enumerate(parts):
        found = [s for s in body if part in bound_names(s)]
        if not found and i == 0:
            imported = {(a.asname or a.name).split(".")[0] for s in body
                        if isinstance(s, (ast.Import, ast.ImportFrom)) for a in s.names}
            return "only imported there, not defined" if part in imported else "not defined"
        if not found:
            return f"class {'.'.join(parts[:i])} has no {part}"
        classes = [s for s in found if isinstance(s, ast.ClassDef)]
        if i + 1 < len(parts) and not classes:
            return f"{'.'.join(parts[:i + 1])} is not a class"
        body = [s for c in classes for s in c.body]
    return None


def parse(root, path):
    """The module's ast, or why it cannot be read."""
    try:
        with open(os.path.join(root, path), encoding="utf-8") as f:
            return ast.parse(f.read(), path)
    except (SyntaxError, UnicodeDecodeError) as e:
        return f"cannot parse: {e}"


def broken_pointers(pointers, root, files):
    """[(pointer, why)] for the pointers whose file is missing or does not define the name."""
    out, trees = [], {}
    for p in pointers:
        path, why = resolve_path(p.path, root, files)
        if path is not None:
            if path not in trees:  # each file parsed once: the check takes a fraction of a second
                trees[path] = parse(root, path)
            tree = trees[path]
            why = tree if isinstance(tree, str) else why_undefined(tree, p.name)
            why = why and f"{why} ({path})"
        if why:
            out.append((p, why))
    return out


COUNT_ROW = re.compile(r"^\|(?: \d+ \|)? `([^`,]+)` \| (\d[\d,]*) \|", re.M)


def stale_counts(page, markdown, root):
    """[(page:line, path, written, actual)] for the rows of a page's file tables whose count is
    not the number of lines of the one file they name (rows of folders or of several files
    are not checked)."""
    out = []
    for m in COUNT_ROW.finditer(markdown):
        path, written = m.group(1), int(m.group(2).replace(",", ""))
        if os.path.isfile(os.path.join(root, path)):
            with open(os.path.join(root, path), "rb") as f:
                actual = f.read().count(b"\n")
            if actual != written:
                out.append((f"{page}:{markdown.count(chr(10), 0, m.start()) + 1}", path, written, actual))
    return out
