"""The package's layout: the core (mini_dlm/*.py) never imports what the later chapters add, and
the package map names every module.  python -m pytest -q tests/test_layout.py"""

import glob
import os
import subprocess
import sys

import pytest

from conftest import ROOT

CORE = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "mini_dlm", "*.py"))
              if not p.endswith("__init__.py"))
LATER = ("mini_dlm.sampling", "mini_dlm.tasks", "mini_dlm.conversion", "mini_dlm.distillation")


@pytest.mark.parametrize("module", CORE)
def test_the_core_never_imports_a_later_chapter(module):
    """Imported alone, in a fresh interpreter, a core module loads the core and plumbing only."""
    code = f"import sys, mini_dlm.{module}; print(' '.join(sorted(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.split()
    assert [m for m in loaded if m.startswith(LATER)] == []
    assert f"mini_dlm.{module}" in loaded  # the check can see what was loaded


def test_the_package_map_names_every_module():
    doc = open(os.path.join(ROOT, "mini_dlm", "__init__.py")).read()
    modules = [os.path.relpath(p, os.path.join(ROOT, "mini_dlm")) for p in
               glob.glob(os.path.join(ROOT, "mini_dlm", "**", "*.py"), recursive=True)]
    missing = [m for m in modules if not m.endswith("__init__.py") and os.path.basename(m) not in doc]
    assert missing == [] and len(modules) > len(CORE)


def test_code_stats_counts_parameters_and_lines(tmp_path):
    """scripts/code_stats.py: self and cls do not count, *args and **kw count one each; a
    function's lines run from def to its last line; the top level is the package's own files."""
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import code_stats
    path = tmp_path / "m.py"
    path.write_text("class A:\n    def f(self, a, b=1, *rest, c, **kw):\n        '''doc'''\n        return a\n\n\n"
                    "def g():\n    pass\n")
    assert sorted(code_stats.functions(str(path))) == [(0, 2, "g"), (5, 3, "f")]
    top = code_stats.package_lines("mini_dlm")["top level"]
    assert top == (len(CORE) + 1, sum(code_stats.lines(p) for p in glob.glob(os.path.join(ROOT, "mini_dlm", "*.py"))))
