"""Light modules stay light: reading a config must not load torch (a notebook or a sweep driver reads many)."""

from __future__ import annotations

import subprocess
import sys

from .conftest import ROOT


def test_config_imports_no_torch():
    code = "import sys, bertcls.config; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
