"""Light modules stay light: reading a config must not load torch (a notebook or a sweep driver reads many)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from .conftest import ROOT


def test_config_imports_no_torch():
    code = "import sys, bertcls.config; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _import_graph_script():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_two_modules_import_each_other():
    script = _import_graph_script()
    found = script.loops(script.import_graph())
    assert found == []


def test_import_graph_sees_imports_inside_functions(tmp_path):
    """The checker itself: a loop closed by an import inside a function is one; a TYPE_CHECKING import is not."""
    package = tmp_path / "bertcls"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from bertcls.sub.b import f\n")
    (package / "sub" / "b.py").write_text("def f():\n    from bertcls import c\n")
    (package / "c.py").write_text("import bertcls.a\n")
    (package / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from bertcls import a\n")
    (package / "e.py").write_text("from . import d\n")
    (package / "sub" / "g.py").write_text("from ..e import x\n")
    script = _import_graph_script()
    graph = script.import_graph(tmp_path)
    assert script.loops(graph) == [["bertcls.a", "bertcls.c", "bertcls.sub.b"]]
    assert (
        graph["bertcls.d"] == set() and graph["bertcls.e"] == {"bertcls.d"} and graph["bertcls.sub.g"] == {"bertcls.e"}
    )
    assert "bertcls.a" in script.import_graph(tmp_path, type_checking=True)["bertcls.d"]
