r"""Turns a finished training run into a shipped model of
:mod:`torch_enf.pretrained`: its configuration, selected weights and a
model card built from the run's results.json and what is given here.

Usage::

    python scripts/export_pretrained.py runs/qm9-fm qm9 \
        --description "QM9 molecules ..." --command "python examples/..." \
        --revision 1a2b3c4 --machine "2-core AMD EPYC VM, 1 thread" \
        --sampler midpoint:50
"""
import argparse
import json
import os.path as osp

from torch_enf.flows import SolverOptions
from torch_enf.pretrained import WEIGHTS_DIR, load_model
from torch_enf.storage import save_model

CARD_METRICS = ('test_nll', 'test_nll_stderr', 'num_test', 'nfe',
                'published_test_nll', 'js_distances', 'js_energy',
                'atom_stability', 'molecule_stability', 'validity',
                'uniqueness', 'num_samples')
CARD_TRAINING = ('objective', 'n_train', 'epochs_completed', 'steps',
                 'batch_size', 'lr', 'ema', 'time_budget_h',
                 'training_wall_clock_s', 'threads', 'best_epoch',
                 'eval_trace')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('run', help='run folder (checkpoint.pt, best.pt, '
                        'results.json)')
    parser.add_argument('name', help='name of the shipped model')
    parser.add_argument('--description', required=True)
    parser.add_argument('--command', required=True,
                        help='the training command')
    parser.add_argument('--data', required=True,
                        help='data and split it was trained on')
    parser.add_argument('--revision', required=True,
                        help='code revision the run was trained with')
    parser.add_argument('--machine', required=True)
    parser.add_argument('--sampler', default=None,
                        help='recommended sampler, METHOD:STEPS[:EXPONENT], '
                        "e.g. 'midpoint:50' or 'midpoint:10:1.5'")
    parser.add_argument('--extra-metrics', default=None,
                        help='JSON file of further measured metrics')
    args = parser.parse_args()
    with open(osp.join(args.run, 'results.json')) as f:
        results = json.load(f)
    metrics = {key: results[key] for key in CARD_METRICS if key in results}
    if args.extra_metrics:
        with open(args.extra_metrics) as f:
            metrics.update(json.load(f))
    card = dict(name=args.name, description=args.description,
                command=args.command, data=args.data,
                revision=args.revision, machine=args.machine,
                training={key: results[key] for key in CARD_TRAINING
                          if key in results},
                metrics=metrics)
    found = load_model(args.run)
    card['sampler'] = found.sampler.to_dict()
    if args.sampler:
        card['sampler'] = SolverOptions.parse(args.sampler).to_dict()
    path = WEIGHTS_DIR / f'{args.name}.pt'
    save_model(found.model, str(path), found.task.state(), card)
    print(f'{path} ({osp.getsize(path) / 1024:.0f} KiB)')
    print(json.dumps(card, indent=2))


if __name__ == '__main__':
    main()
