"""The import graph: no circles, and every module imports on its own (no hidden import-order dependency)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# One interpreter; before each import every deltaguard module is forgotten, so each module is imported
# as if it were the first (torch and transformers stay loaded: only deltaguard's own order is tested).
ISOLATED_IMPORTS = r"""
import importlib, sys, traceback
names = sys.argv[1:]
failed = []
for name in names:
    for loaded in [m for m in sys.modules if m == "deltaguard" or m.startswith("deltaguard.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ": " + traceback.format_exc().strip().splitlines()[-1])
print("\n".join(failed))
sys.exit(1 if failed else 0)
"""


def _modules() -> list[str]:
    src = ROOT / "src"
    names = []
    for path in sorted((src / "deltaguard").rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__main__":
            continue  # running the CLI is not importing it
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


def test_the_import_graph_has_no_circles():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "import_graph.py"), str(ROOT / "src")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    assert " 0 circle(s)" in result.stdout


def test_every_module_imports_on_its_own():
    modules = _modules()
    assert len(modules) > 100
    result = subprocess.run([sys.executable, "-c", ISOLATED_IMPORTS, *modules], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
