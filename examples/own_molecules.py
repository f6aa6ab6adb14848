r"""Train an E(n) equivariant molecule flow on your own conformers, in
Python.

The same as ``torch-enf train molecules --data FILE``, written out with the
library's public API: the ``molecules`` task reads the file (``.sdf``,
multi-frame ``.xyz`` or ``.npz``), finds its element set and atom counts,
splits it with a seed and builds a :class:`~torch_enf.flows.MoleculeFlow`
for it; :func:`~torch_enf.training.fit` trains it by equivariant OT flow
matching; the task evaluates it (test NLL bound, stability, validity,
uniqueness, beside the same metrics of held-out molecules) and the model is
saved as one file that ``torch-enf sample`` and ``torch-enf logprob`` read.

Example::

    python scripts/embed_smiles.py --out data/nci5k.sdf   # RDKit's NCI set
    python examples/own_molecules.py data/nci5k.sdf --minutes 30
"""
import argparse
import json
import os.path as osp

import torch
from torch_geometric.loader import DataLoader

from torch_enf.evaluation import evaluate_nll
from torch_enf.flows import SolverOptions
from torch_enf.objectives import FlowMatching
from torch_enf.storage import save_model
from torch_enf.tasks import (DataConfig, EvaluationConfig, ModelOptions,
                             get_task)
from torch_enf.training import FitConfig, fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('data', help='.sdf, .xyz or .npz file, or a folder')
    parser.add_argument('--out', default='runs/own-molecules')
    parser.add_argument('--minutes', type=float, default=30.0)
    args = parser.parse_args()
    torch.manual_seed(0)

    task = get_task('molecules')
    splits = task.datasets(DataConfig(root='data', files=args.data))
    model = task.build_model(ModelOptions(hidden_channels=64, num_layers=4,
                                          num_radial=16, class_margin=2.0),
                             splits)

    valid = DataLoader(splits.valid[:256], batch_size=100)
    validation_solver = SolverOptions('dopri5', 1e-4, 1e-4)
    fit(model, FlowMatching(), DataLoader(splits.train, batch_size=64,
                                          shuffle=True, drop_last=True),
        args.out, FitConfig(epochs=1000, lr=2e-3, lr_schedule='cosine',
                            ema_decay=0.999, eval_every=5, bf16=True,
                            time_budget=args.minutes / 60),
        validate=lambda m: evaluate_nll(m, valid, 'hutchinson',
                                        validation_solver).nll)
    model.load_state_dict(torch.load(osp.join(args.out, 'best.pt')))

    results = task.evaluate(model, splits, EvaluationConfig(
        num_test=256, num_samples=1000,
        solver=SolverOptions('dopri5', 1e-4, 1e-4),
        sampler=SolverOptions('midpoint', num_steps=25)), args.out)
    save_model(model, osp.join(args.out, 'model.pt'), task.state(),
               card=dict(metrics=results))
    print(json.dumps(results, indent=2))


if __name__ == '__main__':
    main()
