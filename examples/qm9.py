r"""Train the E(n) equivariant normalizing flow on QM9 molecules.

Reproduces the molecule experiment of Satorras, Hoogeboom et al.,
"E(n) Equivariant Normalizing Flows" (NeurIPS 2021), Table 3: a
:class:`~torch_enf.flows.MoleculeFlow` (number of atoms, dequantised atom
types and charges, positions) trained by the variational lower bound with
Hutchinson's trace and ODE regularisation, then sampled and judged by atom
and molecule stability, validity and uniqueness.

Examples::

    python examples/qm9.py --quick --threads 1       # < 10 min on 2 cores
    python examples/qm9.py --epochs 3000 --device cuda
    torchrun --nproc_per_node=2 examples/qm9.py --quick

Every run writes ``OUT/results.json``, ``OUT/checkpoint.pt`` (``--resume``
continues it), ``OUT/best.pt``, plots and the samples as XYZ and SDF, and
prints ``test_nll=<value>`` last. Under ``torchrun`` only rank 0 logs,
evaluates, samples and writes files. :obj:`examples/qm9_positional.py`
shares the training loop defined here.
"""
import argparse
import json
import os
import os.path as osp
import time
from typing import Callable, Dict, Optional

import torch
from tqdm.auto import tqdm

from torch_enf.datasets import QM9
from torch_enf.distributed import (DistributedContext, barrier,
                                   init_distributed, mean_over_processes,
                                   shard_loader, shutdown, wrap_model)
from torch_enf.flows import MoleculeFlow, NodeCountDistribution
from torch_enf.training import (atomic_save, evaluate_nll, finish_epoch,
                                out_of_time, plot_learning_curves,
                                train_epoch)

QUICK = dict(n_train=512, epochs=5, batch_size=16, lr=1e-3, hidden=32,
             layers=3, num_valid=128, num_test=256, eval_every=1,
             eval_trace='hutchinson', num_samples=64,
             tol=1e-3, eval_tol=1e-3)


def parse_args(description: str, lr: float, quick: Dict, eval_trace: str,
               molecule: bool = True) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument('--root', default=osp.join('data', 'QM9'),
                   help='dataset folder (default: ./data/QM9)')
    p.add_argument('--out', default=None, help='output folder')
    p.add_argument('--n-train', type=int, default=None,
                   help='random training subset (default: the whole split)')
    p.add_argument('--epochs', type=int, default=3000)
    p.add_argument('--batch-size', type=int, default=128)
    p.add_argument('--lr', type=float, default=lr)
    p.add_argument('--hidden', type=int, default=64)
    p.add_argument('--layers', type=int, default=6)
    p.add_argument('--ode-reg', type=float, default=1e-3,
                   help='weight of the kinetic + Jacobian regulariser')
    p.add_argument('--tol', type=float, default=1e-4,
                   help='rtol = atol of dopri5 in training')
    p.add_argument('--eval-tol', type=float, default=1e-5,
                   help='rtol = atol of dopri5 for validation and test')
    p.add_argument('--eval-trace', choices=['exact', 'hutchinson'],
                   default=eval_trace)
    p.add_argument('--eval-every', type=int, default=None,
                   help='epochs between validations (default: ~20 per run)')
    p.add_argument('--num-valid', type=int, default=1000)
    p.add_argument('--num-test', type=int, default=None,
                   help='test molecules (default: the whole test split)')
    p.add_argument('--num-samples', type=int, default=1000)
    p.add_argument('--quick', action='store_true',
                   help='small preset for 2 CPU cores (< 10 minutes); '
                   'options given explicitly override it')
    p.add_argument('--resume', action='store_true')
    p.add_argument('--time-budget', type=float, default=None,
                   help='stop training after the step that exceeds this many '
                   'hours, even within an epoch (validated, then tested as '
                   'usual)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--threads', type=int, default=None)
    p.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    p.add_argument('--no-progress', action='store_true')
    if molecule:
        add_molecule_args(p)
    if p.parse_known_args()[0].quick:  # presets; explicit options still win
        p.set_defaults(**quick)
    return p.parse_args()


def add_molecule_args(p: argparse.ArgumentParser) -> None:
    p.add_argument('--dequantizer', choices=['variational', 'uniform'],
                   default='variational')
    p.add_argument('--actnorm', action='store_true')
    p.add_argument('--novelty', action='store_true',
                   help='also compute novelty (RDKit on the whole training '
                   'split, about a minute)')


def random_subset(dataset, num: Optional[int], seed: int):
    if num is None or num >= len(dataset):
        return dataset
    generator = torch.Generator().manual_seed(seed)
    return dataset[torch.randperm(len(dataset), generator=generator)[:num]]


def build_model(args: argparse.Namespace,
                train_full: QM9) -> MoleculeFlow:
    # p(M) from the whole training split, so that no test size is unseen.
    sizes = torch.diff(train_full.slices['pos'])
    return MoleculeFlow(NodeCountDistribution.from_num_nodes(sizes),
                        dequantizer=args.dequantizer, actnorm=args.actnorm,
                        hidden_channels=args.hidden, num_layers=args.layers,
                        rtol=args.tol, atol=args.tol, eval_rtol=args.eval_tol,
                        eval_atol=args.eval_tol)


def run(args: argparse.Namespace, positional: bool,
        build: Callable[[argparse.Namespace, QM9], torch.nn.Module],
        sample_metrics: Callable[..., Dict], default_out: str) -> None:
    r"""Trains :obj:`build(args, train_split)` by regularised maximum
    likelihood, selects it by validation NLL and, on rank 0, evaluates the
    test NLL and :obj:`sample_metrics(args, model, train_set, out)`."""
    if args.threads:
        torch.set_num_threads(args.threads)
    context = init_distributed(args.device)
    try:
        results = train(args, positional, build, sample_metrics, default_out,
                        context)
        if context.is_main:
            print(json.dumps(results, indent=2))
            print(f"test_nll={results['test_nll']:.4f}")
    finally:
        shutdown(context)


def train(args: argparse.Namespace, positional: bool, build: Callable,
          sample_metrics: Callable, default_out: str,
          context: DistributedContext) -> Optional[Dict]:
    start = time.time()
    main = context.is_main
    progress = main and not args.no_progress
    out = args.out or default_out
    if main:
        os.makedirs(out, exist_ok=True)
    torch.manual_seed(args.seed)
    train_full = QM9(args.root, 'train', positional=positional, log=main)
    train_set = random_subset(train_full, args.n_train, args.seed)
    valid_set = random_subset(QM9(args.root, 'valid', positional=positional,
                                  log=main), args.num_valid, args.seed)
    test_set = random_subset(QM9(args.root, 'test', positional=positional,
                                 log=main), args.num_test, args.seed)
    eval_every = args.eval_every or max(1, args.epochs // 20)

    model = build(args, train_full).to(context.device)
    if hasattr(model, 'initialize'):  # ActNorm: same data on every rank
        model.initialize(next(iter(shard_loader(
            train_set, 500, DistributedContext(0, 1, context.device),
            shuffle=False))).to(context.device))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr,
                                  amsgrad=True, weight_decay=1e-12)
    state = dict(epoch=0, history=[], grad_norms=[], best_valid=float('inf'),
                 best_epoch=None, wall_clock_s=0.0)
    ckpt_path = osp.join(out, 'checkpoint.pt')
    if args.resume and osp.exists(ckpt_path):
        ckpt = torch.load(ckpt_path, map_location=context.device,
                          weights_only=False)
        model.load_state_dict(ckpt['model'])
        optimizer.load_state_dict(ckpt['optimizer'])
        state = ckpt['state']
        if main:
            print(f"Resuming {out} at epoch {state['epoch']}")
    elif args.resume and main:
        print(f'No checkpoint in {out}; starting from scratch')
    torch.manual_seed(args.seed + 1000 * state['epoch'] + context.rank)
    wrapped = wrap_model(model, context)
    loader = shard_loader(train_set, args.batch_size, context,
                          seed=args.seed, drop_last=len(train_set) >=
                          args.batch_size * context.world_size)
    valid_loader = shard_loader(valid_set, 100, DistributedContext(
        0, 1, context.device), shuffle=False)
    start -= state['wall_clock_s']  # continue the clock

    def budget_used() -> bool:  # every rank must agree: combine the clocks
        return args.time_budget is not None and mean_over_processes(
            float(out_of_time(time.time() - start, args.time_budget)),
            context) > 0

    for epoch in range(state['epoch'] + 1, args.epochs + 1):
        if context.distributed:
            loader.sampler.set_epoch(epoch)
        train_nll = train_epoch(wrapped, loader, optimizer,
                                state['grad_norms'], args.ode_reg,
                                context.device,
                                f'epoch {epoch}/{args.epochs}', progress,
                                stop=budget_used)
        record = dict(epoch=epoch,
                      train_nll=mean_over_processes(train_nll, context))
        last = epoch == args.epochs or budget_used()
        if main and (epoch % eval_every == 0 or last):
            record['valid_nll'] = evaluate_nll(model, valid_loader,
                                               args.eval_trace, 'valid',
                                               progress)
        state['wall_clock_s'] = time.time() - start
        if main:
            finish_epoch(state, record, model, optimizer, out)
        else:
            state['epoch'] = epoch
        barrier(context)
        if last:
            break
    if not main:
        return None

    model.load_state_dict(torch.load(osp.join(out, 'best.pt'),
                                     map_location=context.device))
    test_loader = shard_loader(test_set, 100, DistributedContext(
        0, 1, context.device), shuffle=False)
    results = dict(test_nll=evaluate_nll(model, test_loader, args.eval_trace,
                                         'test', progress),
                   eval_trace=args.eval_trace, num_test=len(test_set))
    results.update(sample_metrics(args, model, train_set, out))
    results.update(
        n_train=len(train_set), epochs=args.epochs,
        epochs_completed=state['epoch'], time_budget_h=args.time_budget,
        batch_size=args.batch_size, world_size=context.world_size,
        best_epoch=state['best_epoch'], best_valid_nll=state['best_valid'],
        num_valid=len(valid_set), eval_tol=args.eval_tol,
        wall_clock_s=time.time() - start)
    atomic_save(results, osp.join(out, 'results.json'))
    plot_learning_curves(state['history'], osp.join(out, 'nll_curves.png'),
                         f'QM9{" positional" if positional else ""}, '
                         f'n_train={len(train_set)}')
    return results


def molecule_metrics(args: argparse.Namespace, model: MoleculeFlow,
                     train_set, out: str) -> Dict:
    from torch_geometric.data import Batch

    from torch_enf.io import write_sdf, write_xyz
    from torch_enf.metrics import (molecule_metrics, stability,
                                   training_smiles)
    from torch_enf.visualization import plot_molecule_grid

    model.eval()
    generator = torch.Generator(device=model.feature_scale.device)
    generator.manual_seed(args.seed)
    chunks = []
    for start in tqdm(range(0, args.num_samples, 100), desc='sampling',
                      leave=False, disable=args.no_progress):
        size = min(100, args.num_samples - start)
        chunks.append(model.sample(size, generator).cpu())
    samples = Batch.from_data_list([d for c in chunks
                                    for d in c.to_data_list()])
    metrics = dict(num_samples=samples.num_graphs)
    metrics.update(stability(samples))
    reference = None
    if args.novelty:
        reference = training_smiles(QM9(args.root, 'train'),
                                    progress=not args.no_progress)
    metrics.update(molecule_metrics(samples, reference))
    write_xyz(osp.join(out, 'samples.xyz'), samples)
    write_sdf(osp.join(out, 'samples.sdf'), samples)
    plot_molecule_grid(Batch.from_data_list(samples.to_data_list()[:16]),
                       osp.join(out, 'samples.png'))
    return metrics


if __name__ == '__main__':
    run(parse_args(__doc__.split('\n')[0], 5e-4, QUICK, 'hutchinson'),
        positional=False, build=build_model, sample_metrics=molecule_metrics,
        default_out=osp.join('runs', 'qm9'))
