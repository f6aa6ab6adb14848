#!/usr/bin/env bash
# The equal-budget QM9 property comparison (EGNN paper, Section 5.3): the
# EGNN regressor, PyG's SchNet and DimeNet++ on the targets homo, alpha and
# mu, each trained for the same wall-clock budget on one thread under
# bfloat16 autocast (Cormorant's split, all 100k training molecules,
# validation on a fixed 2,000-molecule subset 10 times, test MAE on all
# 13,083 test molecules). Every run writes
# docs/source/_static/results/qm9_property_bf16/<model>_<target>.json.
#
#   bash benchmarks/qm9_property.sh                     # one hour per run
#   BUDGET=20 bash benchmarks/qm9_property.sh egnn      # one model only
#
# Process the dataset once first (about a minute) so that runs started in
# parallel do not process it twice:
#   python -c "from torch_enf.datasets.qm9_properties import QM9Properties
#   QM9Properties('data/qm9_properties')"
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python}
budget=${BUDGET:-60}
out=docs/source/_static/results/qm9_property_bf16
models=${*:-egnn schnet dimenet++}
for model in $models; do
    for target in homo alpha mu; do
        "$python" examples/qm9_property.py --model "$model" \
            --target "$target" --budget "$budget" --threads 1 --seed 0 \
            --batch-size 96 --num-valid 2000 --num-evals 10 --bf16 \
            --root data/qm9_properties --no-progress --out "$out"
    done
done
