r"""The QM9 experiments of the E-NF paper: *QM9 positional* (an
:class:`~torch_enf.flows.ENFlow` on the positions of the 19-atom molecules,
judged by the test NLL and the Jensen-Shannon divergence of interatomic
distances) and *QM9* (a :class:`~torch_enf.flows.MoleculeFlow` of atom
count, types, charges and positions, judged by the NLL bound and the
stability, validity and uniqueness of samples). Both train under
:obj:`torchrun` as well (only rank 0 validates, evaluates and writes)."""
import argparse
import json
import os.path as osp
from typing import Any, Dict, Optional, Sequence

import torch
from torch_geometric.data import Batch

from torch_enf.datasets import QM9
from torch_enf.distributed import (DistributedContext, init_distributed,
                                   shard_loader, shutdown)
from torch_enf.experiments.common import (add_training_arguments,
                                          format_results, parse,
                                          prepare_run, radial_options,
                                          run_summary,
                                          sampling_options, subset, train,
                                          validation_nll)
from torch_enf.flows import (DEQUANTIZERS, ENFlow, MoleculeFlow,
                             NodeCountDistribution)
from torch_enf.evaluation import evaluate_nll
from torch_enf.storage import atomic_save

DISTANCE_RANGE = (0.0, 13.0)  # Angstrom, 100 bins, as in the paper
QUICK = dict(n_train=512, epochs=5, batch_size=16, lr=1e-3, hidden=32,
             layers=3, num_valid=128, num_test=256, eval_every=1,
             eval_trace='hutchinson', num_samples=256, tol=1e-3,
             eval_tol=1e-3)


def build_parser(positional: bool) -> argparse.ArgumentParser:
    name = 'QM9 positional' if positional else 'QM9'
    parser = argparse.ArgumentParser(description=f'Train an E(n) equivariant '
                                     f'normalizing flow on {name}.')
    p = parser.add_argument_group('experiment')
    p.add_argument('--root', default=osp.join('data', 'QM9'),
                   help='dataset folder (default: ./data/QM9)')
    p.add_argument('--source', default='auto',
                   help="QM9 source: 'auto', 'pyg', 'qm9pack' or an .npz")
    p.add_argument('--n-train', type=int, default=None,
                   help='random training subset (default: the whole split)')
    p.add_argument('--eval-trace', choices=['exact', 'hutchinson'],
                   default='hutchinson' if not positional else 'exact')
    if not positional:
        p.add_argument('--dequantizer', choices=sorted(DEQUANTIZERS),
                       default=None, help="default: 'argmax' with fm (flow "
                       "matching cannot train a variational dequantiser), "
                       "'variational' with ml")
        p.add_argument('--class-margin', type=float, default=0.0,
                       help='gap between the true atom type and the others '
                       'in the dequantised one-hot block (argmax and '
                       'variational dequantisers; default: none, as in the '
                       'paper)')
        p.add_argument('--actnorm', action='store_true')
        p.add_argument('--novelty', action='store_true',
                       help='also compute novelty (RDKit on the whole '
                       'training split, about a minute)')
    add_training_arguments(parser, lr=2e-4 if positional else 5e-4)
    parser.set_defaults(epochs=3000, batch_size=128, ode_reg=1e-3,
                        positional=positional)  # the paper's regulariser (ml)
    return parser


def parse_args(argv: Optional[Sequence[str]] = None,
               positional: bool = False) -> argparse.Namespace:
    args = parse(build_parser(positional), argv, lambda known: QUICK)
    if args.n_train is not None and args.n_train < 1:
        raise ValueError(f'--n-train must be positive (got {args.n_train})')
    if not positional:
        if args.dequantizer is None:
            args.dequantizer = 'argmax' if args.objective == 'fm' \
                else 'variational'
        if args.objective == 'fm' and \
                DEQUANTIZERS[args.dequantizer]().trainable:
            raise ValueError(f'--objective fm cannot train the '
                             f'{args.dequantizer} dequantiser; use '
                             f'--dequantizer argmax or uniform')
        if not args.class_margin >= 0:
            raise ValueError(f'--class-margin must be non-negative (got '
                             f'{args.class_margin})')
        if args.class_margin > 0 and args.dequantizer == 'uniform':
            raise ValueError('--class-margin needs --dequantizer argmax or '
                             'variational (uniform noise fills its cell)')
        _check_rdkit()
    return args


def _check_rdkit() -> None:
    try:
        import rdkit  # noqa: F401
    except ImportError as error:
        raise ValueError('The QM9 sample metrics need RDKit: pip install '
                         'torch-enf[molecules]') from error


def build_model(args: argparse.Namespace,
                node_count: Optional[NodeCountDistribution] = None
                ) -> torch.nn.Module:
    r"""The model the options describe; molecule models need :math:`p(M)`
    (*e.g.* :meth:`NodeCountDistribution.from_num_nodes` of the training
    sizes)."""
    flow_kwargs = dict(hidden_channels=args.hidden, num_layers=args.layers,
                       rtol=args.tol, atol=args.tol, eval_rtol=args.eval_tol,
                       eval_atol=args.eval_tol, adjoint=not args.no_adjoint,
                       **radial_options(args))
    if args.positional:
        return ENFlow(3, 0, **flow_kwargs)
    margin = getattr(args, 'class_margin', 0.0)  # older runs: none
    return MoleculeFlow(node_count, dequantizer=args.dequantizer,
                        dequantizer_kwargs=dict(margin=margin) if margin
                        else None, actnorm=args.actnorm, **flow_kwargs)


def run(args: argparse.Namespace) -> Optional[Dict[str, Any]]:
    r"""Trains (on every process of a :obj:`torchrun` job), then on rank 0
    evaluates and writes :obj:`OUT/results.json`; returns the results on
    rank 0 and :obj:`None` elsewhere."""
    context = init_distributed(args.device)
    try:
        return _run(args, context)
    finally:
        shutdown(context)


def _run(args: argparse.Namespace,
         context: DistributedContext) -> Optional[Dict[str, Any]]:
    name = 'qm9_positional' if args.positional else 'qm9'
    out = prepare_run(args, osp.join('runs', f'{name}-{args.objective}'))
    progress = context.is_main and not args.no_progress

    def split(name: str) -> QM9:
        return QM9(args.root, name, positional=args.positional,
                   source=args.source, log=context.is_main)

    train_full = split('train')
    train_set = subset(train_full, args.n_train, args.seed)
    valid_set = subset(split('valid'), args.num_valid, args.seed)
    # p(M) from the whole training split, so that no test size is unseen.
    node_count = NodeCountDistribution.from_num_nodes(
        torch.diff(train_full.slices['pos']))
    model = build_model(args, node_count).to(context.device)
    if getattr(model, 'actnorm', None) is not None:  # same data, every rank
        model.initialize(Batch.from_data_list(train_set[:500]).to(
            context.device))
    loader = shard_loader(train_set, args.batch_size, context,
                          seed=args.seed, drop_last=len(train_set) >=
                          args.batch_size * context.world_size)
    validate = validation_nll(args, shard_loader(
        valid_set, 100, DistributedContext(0, 1, context.device),
        shuffle=False), args.eval_trace, progress)
    state = train(model, args, loader, out, validate, context)
    if not context.is_main:
        return None
    results = evaluate(args, model, split('test'), train_set, out, progress)
    results.update(run_summary(args, state), n_train=len(train_set),
                   num_valid=len(valid_set), world_size=context.world_size,
                   eval_trace=args.eval_trace, positional=args.positional)
    atomic_save(results, osp.join(out, 'results.json'))
    return results


def evaluate(args: argparse.Namespace, model: torch.nn.Module, test_full,
             train_set, out: str, progress: bool) -> Dict[str, Any]:
    r"""Test NLL (a bound for molecules), NFE and the sample metrics
    (distances are compared with the training molecules, as in the
    paper)."""
    test_set = subset(test_full, args.num_test, args.seed)
    device = next(model.parameters()).device
    test = evaluate_nll(model, shard_loader(
        test_set, 100, DistributedContext(0, 1, device), shuffle=False),
        args.eval_trace, 'test', progress)
    results = dict(test_nll=test.nll, test_nll_stderr=test.stderr,
                   num_test=test.num_graphs, nfe=test.num_evals)
    model.eval()
    generator = torch.Generator(device=device).manual_seed(args.seed)
    flow = model if args.positional else model.flow
    with flow.ode_options(**sampling_options(args)):
        if args.positional:
            samples = model.sample(QM9.positional_num_atoms,
                                   args.num_samples, generator,
                                   batch_size=100, progress=progress)
        else:
            samples = model.sample(args.num_samples, generator,
                                   batch_size=100, progress=progress)
    results['sampling_nfe'] = flow.num_evals
    samples = samples.cpu()
    if args.positional:
        results.update(distance_metrics(samples, train_set, out))
    else:
        results.update(molecule_metrics(args, samples, out, progress))
    return results


def distance_metrics(samples: Batch, reference, out: str) -> Dict[str, Any]:
    r"""JS divergence of the interatomic-distance histograms (100 bins on
    0-13 Angstrom) of the samples and the reference molecules, and a
    plot."""
    from torch_enf.metrics import compare_samples
    from torch_enf.visualization import plot_sample_comparison

    size = QM9.positional_num_atoms
    comparison = compare_samples(
        samples.pos.view(-1, size, 3),
        torch.stack([d.pos for d in reference]), dist_range=DISTANCE_RANGE)
    plot_sample_comparison(comparison, osp.join(out, 'distances.png'),
                           'QM9 positional (19 atoms)')
    return dict(comparison.metrics(), num_samples=samples.num_graphs,
                num_reference=len(reference))


def molecule_metrics(args: argparse.Namespace, samples: Batch, out: str,
                     progress: bool) -> Dict[str, Any]:
    r"""Stability, validity, uniqueness (and novelty) of the samples; the
    samples as XYZ and SDF, and a picture of the first 16."""
    from torch_enf.io import write_sdf, write_xyz
    from torch_enf.metrics import molecule_sample_metrics, training_smiles
    from torch_enf.visualization import plot_molecule_grid

    reference = training_smiles(QM9(args.root, 'train', source=args.source),
                                progress=progress) if args.novelty else None
    metrics = molecule_sample_metrics(samples, reference)
    write_xyz(osp.join(out, 'samples.xyz'), samples)
    write_sdf(osp.join(out, 'samples.sdf'), samples)
    plot_molecule_grid(Batch.from_data_list(samples.to_data_list()[:16]),
                       osp.join(out, 'samples.png'))
    return metrics


def main(argv: Optional[Sequence[str]] = None,
         positional: bool = False) -> Optional[Dict[str, Any]]:
    results = run(parse_args(argv, positional))
    if results is not None:
        print(json.dumps(results, indent=2))
        print(format_results(results, [
            'test_nll', 'js_distances', 'atom_stability',
            'molecule_stability', 'validity', 'uniqueness', 'nfe']))
        print(f"test_nll={results['test_nll']:.4f}")
    return results
