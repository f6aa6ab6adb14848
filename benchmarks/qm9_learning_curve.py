r"""The learning curve of the QM9 molecule flow over several sittings: the
validation bound against the optimiser steps of the first 2.5-hour run and
of the runs that continued it (``torch-enf train qm9 --init ...``), with
the 2.5-hour point marked.

The first run's validations are read from a JSON file (its run folder is
not kept; ``qm9_learning_curve_first.json`` holds the values its log
printed, documented in ``docs/source/qm9.rst``), the continuations from
their ``history.json``::

    python benchmarks/qm9_learning_curve.py \
        docs/source/_static/results/qm9_learning_curve_first.json \
        runs/qm9-continue --out docs/source/_static/results/qm9_learning_curve
"""
import argparse
import json
import os.path as osp
from typing import Dict, List

from torch_enf.storage import atomic_save


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('first', help='JSON of the first run: steps, '
                        'valid, hours')
    parser.add_argument('runs', nargs='*', help='run folders that continued '
                        'it, in order')
    parser.add_argument('--out', required=True,
                        help='output path without suffix (.json, .png)')
    return parser.parse_args()


def sittings(first: Dict, runs: List[str]) -> List[Dict]:
    r"""One record per sitting: its name, the steps and hours before it, and
    its validations as :obj:`(step, bound)` counted from the first run's
    start."""
    records = [dict(name=first['name'], steps_before=0, hours_before=0.0,
                    hours=first['hours'], steps=first['steps'],
                    valid=[list(point) for point in first['valid']])]
    for run in runs:
        with open(osp.join(run, 'history.json')) as f:
            state = json.load(f)
        before = records[-1]
        offset = before['steps_before'] + before['steps']
        hours_before = before['hours_before'] + before['hours']
        records.append(dict(
            name=osp.basename(osp.normpath(run)), steps_before=offset,
            hours_before=hours_before, steps=state['step'],
            hours=state['history'][-1]['wall_clock_s'] / 3600,
            valid=[[offset + record['step'], record['valid']]
                   for record in state['history']
                   if record.get('valid') is not None]))
    return records


def plot(records: List[Dict], path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for record in records:
        steps, valid = zip(*record['valid'])
        ax.plot(steps, valid, 'o-', ms=3, label=f"{record['name']} "
                f"({record['hours_before']:.1f}-"
                f"{record['hours_before'] + record['hours']:.1f} h)")
    end = records[0]['steps']
    ax.axvline(end, color='gray', ls='--', lw=0.8)
    ax.annotate('2.5 h', (end, ax.get_ylim()[1]), ha='right', va='top',
                fontsize=8, color='gray')
    ax.set_xlabel('optimiser steps (batch 128)')
    ax.set_ylabel('validation NLL bound (nats)')
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    args = parse_args()
    with open(args.first) as f:
        first = json.load(f)
    records = sittings(first, args.runs)
    atomic_save(dict(description=__doc__.split('\n\n')[0],
                     sittings=records), args.out + '.json')
    plot(records, args.out + '.png')
    for record in records:
        print(record['name'], record['steps'], 'steps',
              f"{record['hours']:.2f} h", 'best valid',
              min(v for _, v in record['valid']))


if __name__ == '__main__':
    main()
