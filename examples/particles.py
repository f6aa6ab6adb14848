r"""Train an E(n) equivariant normalizing flow on DW4, LJ13 or LJ55.

The many-body experiments of Satorras, Hoogeboom et al., "E(n) Equivariant
Normalizing Flows" (NeurIPS 2021), Table 1. The flow is trained by flow
matching (``--objective fm``, the default: one vector-field evaluation per
step) or by maximum likelihood as in the paper (``--objective ml``: an ODE
solve per step), selected by validation NLL, and judged by the exact test
NLL (nats per configuration on the centred subspace).

Examples::

    python examples/particles.py --system dw4 --quick     # ~10 min, 1 core
    python examples/particles.py --system lj13 --n-train 100 --epochs 4000
    python examples/particles.py --system dw4 --objective ml --quick
    python examples/particles.py --system dw4 --sweep     # Table 1 sizes

This is ``torch-enf train SYSTEM [options]``; ``--sweep`` runs the
training-set sizes of Table 1 one after the other (finished sizes are kept
with ``--resume``). Every run writes ``OUT/results.json``, ``OUT/model.pt``,
``OUT/checkpoint.pt``, ``OUT/best.pt`` and pictures, and prints
``test_nll=<value>`` last. ``--help`` lists all options.
"""
import argparse
import os.path as osp
import sys

from torch_enf.cli import main

SWEEPS = {  # (n_train, epochs, batch size) of Table 1, per objective
    'ml': {
        'dw4': [(100, 1000, 100), (1000, 300, 100), (10000, 50, 100),
                (100000, 6, 100)],
        'lj13': [(10, 500, 10), (100, 1000, 100), (1000, 300, 100),
                 (10000, 50, 100)],
    },
    'fm': {
        'dw4': [(100, 4000, 100), (1000, 6000, 100), (10000, 600, 100),
                (100000, 60, 100)],
        'lj13': [(10, 4000, 10), (100, 4000, 100), (1000, 1000, 100),
                 (10000, 100, 100)],
    },
}


def sweep(system: str, objective: str, out: str, rest: list) -> int:
    for n_train, epochs, batch_size in SWEEPS[objective][system]:
        folder = osp.join(out, f'n_train={n_train}')
        if '--resume' in rest and osp.exists(osp.join(folder,
                                                      'results.json')):
            continue
        status = main(['train', system, '--objective', objective,
                       '--n-train', str(n_train), '--epochs', str(epochs),
                       '--batch-size', str(batch_size), '--out', folder,
                       *rest])
        if status:
            return status
    return 0


if __name__ == '__main__':
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument('--system', default='dw4',
                        choices=['dw4', 'lj13', 'lj13-halved', 'lj55'])
    parser.add_argument('--sweep', action='store_true')
    parser.add_argument('--objective', default='fm')
    parser.add_argument('--out', default=None)
    known, rest = parser.parse_known_args()
    if known.sweep:
        system = 'lj13' if known.system == 'lj13-halved' else known.system
        if system not in SWEEPS[known.objective]:
            sys.exit(f'--sweep: no Table 1 sweep for {known.system}')
        sys.exit(sweep(known.system, known.objective, known.out or osp.join(
            'runs', f'{known.system}-{known.objective}-sweep'), rest))
    sys.exit(main(['train', known.system, '--objective', known.objective]
                  + (['--out', known.out] if known.out else []) + rest))
