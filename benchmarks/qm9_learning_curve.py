r"""Learning curves of the QM9 molecule flows, with the 2.5-hour point
marked.

``sittings``: the validation bound against the optimiser steps of a first
run and of the runs that continued it (``torch-enf train qm9 --init
...``). The first run's validations are read from a JSON file (its run
folder is not kept; ``qm9_learning_curve_first.json`` holds the values its
log printed, documented in ``docs/source/qm9.rst``), the continuations
from their ``history.json``::

    python benchmarks/qm9_learning_curve.py sittings \
        docs/source/_static/results/qm9_learning_curve_first.json \
        runs/qm9-continue --out docs/source/_static/results/qm9_learning_curve

``compare``: the validation NLL of several runs (``history.json`` files or
run folders; a resumed run counts only its checkpointed training time)
against the hours of training, with each run's value at the mark::

    python benchmarks/qm9_learning_curve.py compare \
        docs/source/_static/results/qm9_composition_long_history.json \
        runs/qm9-composition-endpoint --labels velocity endpoint \
        --out docs/source/_static/results/qm9_composition_curves
"""
import argparse
import json
import os.path as osp
from typing import Dict, List, Tuple

from torch_enf.storage import atomic_save


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    modes = parser.add_subparsers(dest='mode', required=True)
    first_and_continued = modes.add_parser(
        'sittings', help='a first run and the runs that continued it')
    first_and_continued.add_argument(
        'first', help='JSON of the first run: steps, valid, hours')
    first_and_continued.add_argument(
        'runs', nargs='*', help='run folders that continued it, in order')
    side_by_side = modes.add_parser(
        'compare', help='several runs against the hours of training')
    side_by_side.add_argument(
        'histories', nargs='+', help='history.json files or run folders')
    side_by_side.add_argument('--labels', nargs='+',
                              help='one name per run (default: file names)')
    side_by_side.add_argument('--mark-hours', type=float, default=2.5,
                              help='training hours to mark (default 2.5)')
    for mode in (first_and_continued, side_by_side):
        mode.add_argument('--out', required=True,
                          help='output path without suffix (.json, .png)')
    args = parser.parse_args()
    if args.mode == 'compare' and args.labels is not None and \
            len(args.labels) != len(args.histories):
        parser.error(f'--labels names {len(args.labels)} runs, but '
                     f'{len(args.histories)} histories were given')
    return args


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


def draw_curves(curves: List[Tuple[str, List[float], List[float]]],
                mark: float, mark_label: str, xlabel: str, ylabel: str,
                path: str) -> None:
    r"""Plots :obj:`(label, x, validation)` curves with a dashed line at
    :obj:`x = mark` and saves the figure to :obj:`path`."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, x, valid in curves:
        ax.plot(x, valid, 'o-', ms=3, label=label)
    ax.axvline(mark, color='gray', ls='--', lw=0.8)
    ax.annotate(mark_label, (mark, ax.get_ylim()[1]), ha='right', va='top',
                fontsize=8, color='gray')
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot(records: List[Dict], path: str) -> None:
    curves = []
    for record in records:
        steps, valid = zip(*record['valid'])
        end = record['hours_before'] + record['hours']
        curves.append((f"{record['name']} ({record['hours_before']:.1f}-"
                       f"{end:.1f} h)", steps, valid))
    draw_curves(curves, records[0]['steps'], '2.5 h',
                'optimiser steps (batch 128)', 'validation NLL bound (nats)',
                path)


def read_history(path: str) -> Dict:
    r"""The training state of :obj:`path`, a run folder or its
    ``history.json``."""
    if osp.isdir(path):
        path = osp.join(path, 'history.json')
    with open(path) as f:
        return json.load(f)


def validation_curve(state: Dict) -> List[List[float]]:
    r"""The validations of a run as :obj:`[step, hours, valid]` rows."""
    return [[record['step'], record['wall_clock_s'] / 3600, record['valid']]
            for record in state['history'] if record.get('valid') is not None]


def compare(histories: List[str], labels: List[str],
            mark_hours: float) -> List[Dict]:
    r"""One record per run: its validations and the best validation NLL
    reached within :obj:`mark_hours` of training (:obj:`None` if the run
    had not validated by then)."""
    records = []
    for path, label in zip(histories, labels):
        curve = validation_curve(read_history(path))
        by_mark = [valid for _, hours, valid in curve if hours <= mark_hours]
        records.append(dict(name=label, source=path, valid=curve,
                            best_by_mark=min(by_mark) if by_mark else None))
    return records


def plot_compare(records: List[Dict], mark_hours: float, path: str) -> None:
    curves = []
    for record in records:
        _, hours, valid = zip(*record['valid'])
        curves.append((record['name'], hours, valid))
    draw_curves(curves, mark_hours, f'{mark_hours:g} h',
                'hours of training (2 CPU threads)', 'validation NLL (nats)',
                path)


def main() -> None:
    args = parse_args()
    description = __doc__.split('\n\n')[0]
    if args.mode == 'sittings':
        with open(args.first) as f:
            first = json.load(f)
        records = sittings(first, args.runs)
        atomic_save(dict(description=description, sittings=records),
                    args.out + '.json')
        plot(records, args.out + '.png')
        for record in records:
            print(record['name'], record['steps'], 'steps',
                  f"{record['hours']:.2f} h", 'best valid',
                  min(v for _, v in record['valid']))
        return
    labels = args.labels or [osp.basename(osp.normpath(path))
                             for path in args.histories]
    records = compare(args.histories, labels, args.mark_hours)
    atomic_save(dict(description=description, mark_hours=args.mark_hours,
                     runs=records), args.out + '.json')
    plot_compare(records, args.mark_hours, args.out + '.png')
    for record in records:
        step, hours, _ = record['valid'][-1]
        print(f"{record['name']}: {step} steps, {hours:.2f} h, best valid "
              f"by {args.mark_hours:g} h: {record['best_by_mark']}, "
              f"overall: {min(v for *_, v in record['valid'])}")


if __name__ == '__main__':
    main()
