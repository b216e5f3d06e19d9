#!/usr/bin/env bash
# Set up, lint, and run the default test suite (everything except tests marked slow).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
ruff check .
ruff format --check .
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python3 -m pytest -m "not slow" -q "$@"
