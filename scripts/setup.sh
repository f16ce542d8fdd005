#!/usr/bin/env bash
# Create .venv and install deltaguard into it, once. torch is pinned to the local CPU build so that
# a CPU machine never pulls several GB of CUDA wheels; the package metadata keeps torch as a range.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.deltaguard-installed
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then exit 0; fi
python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import deltaguard, torch" && touch "$stamp"
