"""scripts/doc_commands.py, doc_pointers.py and check_docs.py on small synthetic pages: what
they extract, substitute and skip, and which code pointers they find broken.
Nothing is run.  python -m pytest -q tests/test_check_docs.py"""

import os
import shlex
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "scripts"))
import check_docs  # noqa: E402
import doc_commands  # noqa: E402
import doc_pointers  # noqa: E402

PAGE = '''# A page

```bash
FLAGS="--device cpu --seq-len 64 \\
  --max-iters 600"
python train_tiny.py $FLAGS --out-dir out-a   # a comment, dropped
# a comment line
python sample.py --ckpt out-a/ckpt.pt --gen-len 32 \\
    --block-len 16
python - <<'EOF'
print("# not a comment")
EOF
```

```
python not_a_bash_block.py
```

```python
print("snippet")
```

<!-- check_docs: skip -->
```bash
python illustration.py
```

<!-- check_docs: slow -->
```bash
python slow.py
```
'''


@pytest.fixture
def commands():
    return doc_commands.page_commands("page.md", PAGE)


def test_extracts_commands_in_order_with_their_lines(commands):
    assert [(c.line, c.python, c.mark) for c in commands] == [
        (6, False, ""), (8, False, ""), (10, False, ""), (20, True, ""), (25, False, "skip"), (30, False, "slow")]
    assert commands[1].text == "python sample.py --ckpt out-a/ckpt.pt --gen-len 32 --block-len 16"
    assert commands[2].text == "python - <<'EOF'\nprint(\"# not a comment\")\nEOF"  # a heredoc stays whole
    assert commands[3].text == 'print("snippet")'


def test_variables_expand_and_flags_shrink(commands):
    assert commands[0].variables == {"FLAGS": "--device cpu --seq-len 64 --max-iters 600"}
    text, why = doc_commands.resolve(commands[0], gpu=False, quick=False, benched=set())
    words = shlex.split(text)
    assert why == "" and "#" not in text
    assert words[:8] == ["python", "train_tiny.py", "--device", "cpu", "--seq-len", "64", "--max-iters", "10"]
    assert words[words.index("--out-dir") + 1] == "out-a"
    for flag, value in (("--batch-size", "4"), ("--n-layer", "2"), ("--n-embd", "64"), ("--eval-windows", "4")):
        assert words[words.index(flag) + 1] == value  # added: the defaults are larger


def plan(command, gpu=False, quick=False):
    """(words to run or None, why skipped) for one command line."""
    return doc_commands.plan(doc_commands.split_words(command), gpu, quick)


def value(words, flag, nth=0):
    return [words[i + 1] for i, w in enumerate(words) if w == flag][nth]


def test_caps_keep_small_values_and_every_occurrence():
    words, _ = plan("python train_tiny.py --max-iters 5 --batch-size 4 --max-iters=3000")
    assert value(words, "--max-iters") == "5" and value(words, "--max-iters", 1) == "10"
    assert value(words, "--batch-size") == "4" and words.count("--batch-size") == 1


@pytest.mark.parametrize("command,gpu,quick,skipped", [
    ("pip install -e .", False, False, "setup"),
    ("python -m pytest -q tests", False, False, "whole suite"),
    ("python -m pytest -q tests/test_ops.py", False, False, ""),
    ("python -m pytest -q tests/test_ops.py", False, True, "--quick"),
    ("scripts/gpu_check.sh gpu-out", False, False, "GPU"),
    ("scripts/gpu_check.sh gpu-out", True, False, ""),
    ("python -m bench.kernels --device cuda", False, False, "GPU"),
    ("python -m bench.efficiency --compile", False, True, "--quick"),
    ("python sample.py --ckpt out/ckpt.pt", False, True, ""),
])
def test_skip_rules(command, gpu, quick, skipped):
    words, why = plan(command, gpu, quick)
    assert (skipped in why and words is None) if skipped else (why == "" and words is not None)


def test_torchrun_and_benchmark_substitutions():
    words, _ = plan("OMP_NUM_THREADS=1 torchrun --nproc_per_node 8 train_tiny.py")
    assert words[:4] == ["OMP_NUM_THREADS=1", "torchrun", "--nproc_per_node", "2"] and "--max-iters" in words
    words, _ = plan("python -m bench.efficiency --batch-sizes 1,8,64 --gen-lens 256,128")
    assert value(words, "--batch-sizes") == "1" and value(words, "--repeats") == "1"
    assert value(words, "--gen-lens") == "128"  # the shortest: it fits the context if any does
    words, _ = plan("python -m bench.efficiency --compile")
    assert value(words, "--gen-lens") == "128" and value(words, "--configs") == "ar"
    assert "--gen-lens" not in plan("python -m bench.efficiency --quick")[0]  # --quick's own
    assert plan("python -m bench.efficiency --replot a.json")[0] == \
        ["python", "-m", "bench.efficiency", "--replot", "a.json"]
    assert value(plan("python -m bench.sampling --gen-len 32")[0], "--gen-len") == "32"
    assert value(plan("python -m bench.sampling")[0], "--gen-len") == "64"
    words, _ = plan("python train_tiny.py --task sudoku6 --task-train 100000")  # the generated task stays small
    assert value(words, "--task-train") == "256" and value(words, "--task-test") == "32"
    assert value(plan("python -m bench.task --quick")[0], "--n") == "16"  # held-out puzzles within --task-test


def test_marked_blocks(commands):
    assert doc_commands.resolve(commands[4], False, False, set()) == (None, "marked skip")
    assert doc_commands.resolve(commands[5], False, False, set()) == ("python slow.py", "")
    assert doc_commands.resolve(commands[5], False, True, set()) == (None, "--quick: marked slow")


def test_quick_runs_a_benchmark_once_per_page():
    runs = [doc_commands.Command(page, 1, f"python -m bench.length --temperature {t}") for page, t in
            (("a.md", 0), ("a.md", 1), ("b.md", 1))]
    for quick, expect in ((False, [True, True, True]), (True, [True, False, True])):
        benched = set()
        assert [doc_commands.resolve(c, False, quick, benched)[0] is not None for c in runs] == expect


def test_checkpoint_producers(commands):
    assert doc_commands.trained_dir(commands[0]) == "out-a"
    assert doc_commands.trained_dir(commands[1]) is None
    assert doc_commands.checkpoints_read(commands[1]) == {"out-a"}
    default = doc_commands.Command("p.md", 1, "python train_tiny.py --device cpu")
    assert doc_commands.trained_dir(default) == "out"
    student = doc_commands.Command("p.md", 1, "python distill.py --teacher out/ckpt.pt")  # distill.py writes one too
    assert doc_commands.trained_dir(student) == "out-distill" and doc_commands.checkpoints_read(student) == {"out"}
    other = doc_commands.Command("q.md", 1, "python train_tiny.py --out-dir out-a")
    checker = check_docs.Checker([other, *commands], "/nonexistent", False, False, 1)
    assert checker.producer("out-a", "page.md") is commands[0]  # the same page's first
    assert checker.producer("out-a", "r.md") is other
    assert checker.producer("out-z", "page.md") is None


CODE = {  # a small synthetic repository for the pointer checks
    "pkg/sampler.py": "from pkg.gumbel import draw_seed\nimport os.path\n\ndef denoise(model, x):\n    pass\n\n"
                      "async def stream():\n    pass\n\nclass Cache:\n    size: int = 3\n    kind = 'x'\n\n"
                      "    def update(self):\n        pass\n\nPRESETS = {}\nA, (B, C) = 1, (2, 3)\nLIMIT: int = 5\n",
    "pkg/gumbel.py": "def draw_seed(generator):\n    pass\n",
    "other/gumbel.py": "def draw_seed(generator):\n    pass\n",
    "tests/test_ops.py": "def fastdllm_factor():\n    pass\n\ndef test_factor():\n    pass\n",
}

POINTERS = """# Pointers

The loop (`pkg/sampler.py: denoise`) and `sampler.py: Cache.update`, `sampler.py: Cache.size,
Cache.kind`; a wrapped one (`tests/test_ops.py:
fastdllm_factor`), `sampler.py: denoise(model, x, ...)`, `sampler.py: stream, PRESETS, A, C, LIMIT`,
`pkg/sampler.py:Cache`, `tests/test_ops.py::test_factor`, and in plain text pkg/sampler.py:denoise.
"""

NOT_POINTERS = """# Not pointers
Line numbers: `pkg/sampler.py:12` and pkg/sampler.py:3. A colon after a span: in `sample.py`: the flags.
## bench/efficiency.py: the method

```bash
python pkg/sampler.py --flag
python - <<'EOF'
print("pkg/sampler.py: nothing")
EOF
```
"""


@pytest.fixture
def repo(tmp_path):
    for path, source in CODE.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(source)
    return str(tmp_path)


def broken(markdown, root):
    """{pointer text: why} of the broken pointers of a page."""
    found = doc_pointers.find_pointers("page.md", markdown)
    return {str(p): why for p, why in doc_pointers.broken_pointers(found, root, sorted(CODE))}


def test_every_pointer_form_is_recognised():
    found = [(p.line, p.path, p.name) for p in doc_pointers.find_pointers("page.md", POINTERS)]
    assert found == [
        (3, "pkg/sampler.py", "denoise"), (3, "sampler.py", "Cache.update"), (3, "sampler.py", "Cache.size"),
        (3, "sampler.py", "Cache.kind"), (4, "tests/test_ops.py", "fastdllm_factor"),
        (5, "sampler.py", "denoise"),  # only the name before the parenthesis
        *[(5, "sampler.py", name) for name in ("stream", "PRESETS", "A", "C", "LIMIT")],  # a, b: both
        (6, "pkg/sampler.py", "Cache"), (6, "tests/test_ops.py", "test_factor"),  # no space; pytest's ::
        (6, "pkg/sampler.py", "denoise")]  # plain text, no space


def test_line_numbers_prose_colons_and_commands_are_not_pointers():
    assert doc_pointers.find_pointers("page.md", NOT_POINTERS) == []


def test_good_pointers_pass(repo):
    assert broken(POINTERS, repo) == {}


@pytest.mark.parametrize("pointer,why", [
    ("`pkg/missing.py: f`", "no such file"),
    ("`missing.py: f`", "no such file"),
    ("`gumbel.py: draw_seed`", "ambiguous: other/gumbel.py, pkg/gumbel.py"),
    ("`pkg/sampler.py: generate`", "not defined (pkg/sampler.py)"),
    ("`sampler.py: draw_seed`", "only imported there, not defined (pkg/sampler.py)"),
    ("`sampler.py: os`", "only imported there, not defined (pkg/sampler.py)"),
    ("`sampler.py: Cache.forward`", "class Cache has no forward (pkg/sampler.py)"),
    ("`sampler.py: denoise.x`", "denoise is not a class (pkg/sampler.py)"),
    ("`sampler.py: Missing.update`", "not defined (pkg/sampler.py)"),
])
def test_broken_pointers_say_why(repo, pointer, why):
    assert list(broken(pointer, repo).values()) == [why]


def test_every_name_of_a_list_is_checked(repo):
    assert broken("`pkg/gumbel.py: draw_seed, f, g`", repo) == {
        "pkg/gumbel.py: f": "not defined (pkg/gumbel.py)", "pkg/gumbel.py: g": "not defined (pkg/gumbel.py)"}


def test_file_tables_give_each_file_its_line_count(repo):
    """A row `| [n |] `path` | lines |` of one file must count its lines; rows of folders or of
    several files are not checked."""
    lines = open(os.path.join(repo, "pkg/sampler.py")).read().count("\n")
    table = (f"| file | lines |\n| `pkg/sampler.py` | {lines} |\n| 2 | `pkg/sampler.py` | {lines + 1} |\n"
             f"| `pkg/` | 7 |\n| `pkg/sampler.py`, `gumbel.py` | 1 |\n| `pkg/gumbel.py` | 1,000 |\n")
    assert doc_pointers.stale_counts("README.md", table, repo) == [
        ("README.md:3", "pkg/sampler.py", lines + 1, lines), ("README.md:6", "pkg/gumbel.py", 1000, 2)]


def test_outside_git_the_files_are_those_of_the_folder(repo):
    """CI's CUDA stage tests a copy of the tree that is no git checkout: the bare paths then
    resolve among the folder's files, hidden and build folders left out."""
    for extra in (".git/sampler.py", "build/sampler.py"):
        os.makedirs(os.path.join(repo, os.path.dirname(extra)), exist_ok=True)
        open(os.path.join(repo, extra), "w").write("def denoise(model, x):\n    pass\n")
    assert doc_pointers.tracked_files(repo) == sorted(CODE)


def test_the_real_docs_have_no_broken_pointers(capsys):
    assert check_docs.check_pointers(check_docs.pages(None)) == 0, capsys.readouterr().out
