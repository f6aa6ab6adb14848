#!/usr/bin/env bash
# Creates .venv (if missing), installs torch-enf and trains an E(n)
# equivariant flow on DW4 by flow matching (about 10 minutes on one core,
# the DW4 data generated on first use included): the exact test NLL, samples
# and plots land in runs/dw4-quick. Usage: bash scripts/run_main_job.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet "torch>=2.1,<2.14"
"$VENV/bin/python" -m pip install --quiet -e ".[plot]"
exec "$VENV/bin/python" examples/particles.py --system dw4 --quick \
    --out runs/dw4-quick "$@"
