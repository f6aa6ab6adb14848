#!/usr/bin/env bash
# What radius graphs save and cost on the NCI set (28 atoms on average, up
# to 100): two molecule flows trained side by side for the same 10 minutes
# of wall clock on one thread each, one on fully connected graphs and one
# on radius graphs of 5 Angstrom, then judged alike (test NLL bound on 256
# molecules, sample metrics of 500). Needs data/nci5k.sdf
# (python scripts/embed_smiles.py data/nci5k.sdf). Usage:
#   bash benchmarks/nci_graph_switch.sh [extra torch-enf train options]
set -euo pipefail
mkdir -p runs
for graph in full 5; do
    torch-enf train molecules --data data/nci5k.sdf --graph "$graph" \
        --time-budget 0.17 --threads 1 --num-samples 500 --no-progress \
        --out "runs/nci-graph-$graph" "$@" > "runs/nci-graph-$graph.log" 2>&1 &
done
wait
for graph in full 5; do
    echo "graph=$graph: $(tail -n 2 "runs/nci-graph-$graph.log" | head -n 1)"
done
