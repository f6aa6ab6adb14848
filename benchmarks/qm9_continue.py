r"""Continue training a QM9 molecule model for a fixed wall clock with
another distribution of the flow-matching times, then score 1,000 samples.

A trained model has learnt some parts of the generative process better than
others; continuing it with times :math:`t = u^k` of a smaller :math:`k`
(more training far from the data, where the molecular graph is decided)
against the same :math:`k` it was trained with shows which part more
training should go to. The samples are scored like the training script's
(stability, RDKit validity and uniqueness) plus the fraction of molecules
whose valences sum to an odd number, which no arrangement of bonds can
satisfy.

Usage::

    python benchmarks/qm9_continue.py runs/qm9-fm-margin runs/cont-k05 \
        --time-exponent 0.5 --hours 0.4
"""
import argparse
import json
import os
import os.path as osp

import torch
from torch_geometric.loader import DataLoader

from torch_enf.datasets import QM9
from torch_enf.flows import SolverOptions
from torch_enf.metrics import molecule_sample_metrics
from torch_enf.metrics.bonds import valences
from torch_enf.objectives import FlowMatching
from torch_enf.pretrained import load_pretrained
from torch_enf.storage import atomic_save
from torch_enf.training import FitConfig, fit
from torch_enf.utils import scatter_sum


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('model', help='a shipped model name or a run folder')
    parser.add_argument('out', help='output folder')
    parser.add_argument('--root', default='data/QM9')
    parser.add_argument('--time-exponent', type=float, required=True)
    parser.add_argument('--hours', type=float, required=True,
                        help='wall clock of training (0: score only)')
    parser.add_argument('--lr', type=float, default=2e-4,
                        help='constant learning rate')
    parser.add_argument('--num-samples', type=int, default=1000)
    parser.add_argument('--threads', type=int, default=1)
    return parser.parse_args()


def odd_valence_fraction(samples) -> float:
    r"""The fraction of molecules whose valences sum to an odd number."""
    total = scatter_sum(valences(samples.z), samples.batch,
                        samples.num_graphs)
    return (total % 2 == 1).float().mean().item()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    model = load_pretrained(args.model)
    if args.hours > 0:
        model.train()
        loader = DataLoader(QM9(args.root, 'train', log=False),
                            batch_size=128, shuffle=True, drop_last=True)
        fit(model, FlowMatching(time_exponent=args.time_exponent), loader,
            args.out, FitConfig(epochs=1000, lr=args.lr, ema_decay=0.999,
                                bf16=True, time_budget=args.hours),
            progress=False)
    model.eval()
    samples = model.sample(args.num_samples,
                           generator=torch.Generator().manual_seed(0),
                           batch_size=100,
                           solver=SolverOptions('midpoint', num_steps=10))
    results = {name: value for name, value in
               molecule_sample_metrics(samples).items()
               if isinstance(value, float)}
    results.update(vars(args), odd_valence=odd_valence_fraction(samples))
    print(json.dumps(results, indent=1))
    os.makedirs(args.out, exist_ok=True)
    atomic_save(results, osp.join(args.out, 'results.json'))


if __name__ == '__main__':
    main()
