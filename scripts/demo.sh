#!/usr/bin/env bash
# Run the whole study on the embedded model (creates .venv on first use). Extra arguments go to `deltaguard demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/deltaguard demo "$@"
