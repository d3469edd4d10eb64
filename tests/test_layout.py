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
