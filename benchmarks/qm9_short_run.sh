#!/usr/bin/env bash
# One short QM9 flow-matching run of the ablations in docs/source/qm9.rst:
# 4 epochs (3,124 steps of 128 molecules) on one thread with the shared
# options below, then the test bound on 100 test molecules and 500 samples
# (10 midpoint steps). Extra options select the arm, e.g.
#
#   bash benchmarks/qm9_short_run.sh runs/short-lr2e-3 --class-margin 2 \
#       --time-exponent 2 --lr 2e-3
#
# Two such runs share the 2-core VM in about 30 minutes each.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?output folder}
shift
python=${PYTHON:-python}
"$python" examples/qm9.py --objective fm --dequantizer argmax \
    --batch-size 128 --lr 1e-3 --lr-schedule cosine --ema 0.999 --bf16 \
    --num-radial 16 --epochs 4 --eval-every 2 --num-valid 256 \
    --valid-tol 1e-4 --ode-reg 0 --trace hutchinson --threads 1 \
    --num-test 100 --num-samples 500 --solver midpoint \
    --num-steps 10 --no-progress --out "$out" "$@"
