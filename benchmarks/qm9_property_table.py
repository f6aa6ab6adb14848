r"""The results table of the equal-budget QM9 property comparison: one row
per run of ``examples/qm9_property.py`` found in a results folder (its
JSON files), grouped by target, with the CPU each run had and the EGNN
paper's 1,000-epoch errors (Satorras et al., 2021, Table 3) beside them.
This is what the tables of ``docs/source/supervised.rst`` are copied from::

    python benchmarks/qm9_property_table.py \
        docs/source/_static/results/qm9_property_bf16
"""
import argparse
import glob
import json
import os.path as osp
from typing import Dict, List

PAPER_EGNN = {'mu': 0.029, 'alpha': 0.071, 'homo': 29.0}
r"""The EGNN paper's test MAE after 1,000 epochs, in the units of
:obj:`torch_enf.datasets.TARGETS`."""
MODEL_NAMES = {'egnn': 'EGNN (torch-enf ``EGCL``)', 'schnet': 'PyG ``SchNet``',
               'dimenet++': 'PyG ``DimeNetPlusPlus``'}


def read_runs(folder: str) -> List[Dict]:
    r"""Every run's results in :obj:`folder`, by target, then model."""
    runs = []
    for path in sorted(glob.glob(osp.join(folder, '*.json'))):
        with open(path) as f:
            run = json.load(f)
        if 'test_mae' in run and 'target' in run:
            runs.append(run)
    if not runs:
        raise SystemExit(f'no results of examples/qm9_property.py in '
                         f'{folder}')
    order = list(MODEL_NAMES)
    return sorted(runs, key=lambda r: (r['target'], order.index(r['model']),
                                       model_name(r)))


def model_name(run: Dict) -> str:
    r"""The model of a run, with what differs from the paper's recipe: the
    EGNN's radial basis, its readout, the learning rate, the batch size."""
    name = MODEL_NAMES[run['model']]
    if run.get('num_radial'):
        name += f", {run['num_radial']} Gaussians"
    if run.get('readout', 'graph') != 'graph':
        name += f", {run['readout']} readout"
    if run['lr'] != 1e-3:
        name += f", lr {run['lr']:g}"
    if run['batch_size'] != 96:
        name += f", batch {run['batch_size']}"
    return name


def table(runs: List[Dict]) -> str:
    r"""An RST table of :obj:`runs`, with the paper's EGNN row after each
    target's runs."""
    header = ('target', 'model', 'CPU', 'steps', 'epochs', 'valid MAE',
              'test MAE')
    rows = []
    for i, run in enumerate(runs):
        unit = run['unit']
        rows.append((run['target'], model_name(run),
                     run['machine']['cpu'], f"{run['steps']:,}",
                     f"{run['epochs']:.1f}",
                     f"{run['best_valid_mae']:.4g} {unit}",
                     f"{run['test_mae']:.4g} {unit}"))
        last = i + 1 == len(runs) or runs[i + 1]['target'] != run['target']
        if last and run['target'] in PAPER_EGNN:
            rows.append((run['target'], 'EGNN paper, 1,000 epochs', '--',
                         '--', '1,000', '--',
                         f"{PAPER_EGNN[run['target']]:g} {unit}"))
    widths = [max(len(str(row[k])) for row in rows + [header])
              for k in range(len(header))]
    rule = '  '.join('=' * w for w in widths)

    def line(row) -> str:
        return '  '.join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()

    return '\n'.join([rule, line(header), rule, *map(line, rows), rule])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('folder', help='a --out folder of qm9_property.py')
    print(table(read_runs(p.parse_args().folder)))


if __name__ == '__main__':
    main()
