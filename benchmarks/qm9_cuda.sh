#!/usr/bin/env bash
# The QM9 flow-matching experiment on one GPU, recorded next to the CPU
# runs (nothing else depends on a GPU): the CUDA tests, then examples/qm9.py
# on CUDA for a fixed number of minutes of training, then its evaluation.
#
# Usage: bash benchmarks/qm9_cuda.sh OUT MINUTES [examples/qm9.py options]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?output folder}
minutes=${2:?minutes of training}
shift 2
python=${PYTHON:-python3}
"$python" -m pytest test/test_cuda.py test/test_objectives.py -q
"$python" examples/qm9.py --device cuda --bf16 \
    --time-budget "$("$python" -c "print($minutes / 60)")" --epochs 1000 \
    --lr 1e-3 --lr-schedule cosine --time-exponent 2 --eval-every 2 \
    --num-valid 256 --valid-tol 1e-4 --num-test 1000 --num-samples 1000 \
    --no-progress --out "$out" "$@"
