#!/usr/bin/env bash
# Run the test suite (creates .venv with a CPU build of torch on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Exit code 5 means "no tests ran": that must fail CI, never pass silently.
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
