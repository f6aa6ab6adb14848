#!/usr/bin/env bash
# Creates .venv (if missing), installs torch-enf with its test extras and runs
# the test suite. Usage: bash scripts/run_tests.sh [extra pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet "torch>=2.1,<2.14"
"$VENV/bin/python" -m pip install --quiet -e ".[test]"
exec "$VENV/bin/python" -m pytest test -q "$@"
