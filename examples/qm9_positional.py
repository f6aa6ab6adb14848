r"""Train the E(n) equivariant normalizing flow on QM9 positions only.

The "QM9 positional" experiment of Satorras, Hoogeboom et al.,
"E(n) Equivariant Normalizing Flows" (NeurIPS 2021), Table 2: an
:class:`~torch_enf.flows.ENFlow` on the positions of the 19-atom molecules
of QM9 (atom types ignored), judged by the test NLL (nats per molecule on
the centred subspace) and the Jensen-Shannon divergence between the
interatomic-distance histograms of samples and training data (100 bins on
0-13 Angstrom).

Examples::

    python examples/qm9_positional.py --quick --threads 1   # < 10 min
    python examples/qm9_positional.py --epochs 160 --device cuda
    torchrun --nproc_per_node=2 examples/qm9_positional.py --quick

Outputs as :obj:`examples/qm9.py` (whose training loop this script uses),
with the distance histograms in ``OUT/distances.png``.
"""
import argparse
import os.path as osp
from typing import Dict

import torch
from tqdm.auto import tqdm

from qm9 import parse_args, run  # the sibling script examples/qm9.py
from torch_enf.datasets import QM9
from torch_enf.flows import ENFlow
from torch_enf.metrics import histogram_js_divergence, pairwise_distances

NUM_ATOMS = QM9.positional_num_atoms
DISTANCE_RANGE = (0.0, 13.0)
QUICK = dict(n_train=512, epochs=5, batch_size=16, lr=1e-3, hidden=32,
             layers=3, num_valid=128, num_test=256, eval_every=1,
             eval_trace='hutchinson', num_samples=256,
             tol=1e-3, eval_tol=1e-3)


def build_flow(args: argparse.Namespace, train_full: QM9) -> ENFlow:
    return ENFlow(3, 0, args.hidden, args.layers, rtol=args.tol,
                  atol=args.tol, eval_rtol=args.eval_tol,
                  eval_atol=args.eval_tol)


def distance_metrics(args: argparse.Namespace, flow: ENFlow, train_set,
                     out: str) -> Dict:
    flow.eval()
    device = next(flow.parameters()).device
    generator = torch.Generator(device=device).manual_seed(args.seed)
    chunks = []
    for start in tqdm(range(0, args.num_samples, 100), desc='sampling',
                      leave=False, disable=args.no_progress):
        size = min(100, args.num_samples - start)
        chunks.append(flow.sample(NUM_ATOMS, size, generator).pos.cpu())
    samples = torch.cat(chunks)
    data = torch.cat([d.pos for d in train_set])
    dist_samples = pairwise_distances(samples, _batch_of(samples))
    dist_data = pairwise_distances(data, _batch_of(data))
    plot_distances(dist_samples, dist_data, osp.join(out, 'distances.png'))
    return dict(num_samples=args.num_samples,
                js_distances=histogram_js_divergence(
                    dist_samples, dist_data, 100, DISTANCE_RANGE))


def _batch_of(pos: torch.Tensor) -> torch.Tensor:
    return torch.arange(pos.size(0) // NUM_ATOMS).repeat_interleave(
        NUM_ATOMS)


def plot_distances(dist_samples: torch.Tensor, dist_data: torch.Tensor,
                   path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for values, label in ((dist_data, 'training data'),
                          (dist_samples, 'E-NF samples')):
        ax.hist(values.numpy(), 100, range=DISTANCE_RANGE, density=True,
                alpha=0.5,
                label=label)
    ax.set_xlabel('interatomic distance (Å)')
    ax.set_ylabel('density')
    ax.set_title('QM9 positional (19 atoms)')
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == '__main__':
    run(parse_args(__doc__.split('\n')[0], 2e-4, QUICK, 'exact', False),
        positional=True, build=build_flow, sample_metrics=distance_metrics,
        default_out=osp.join('runs', 'qm9_positional'))
