r"""The :obj:`torch-enf` command: sample, score, evaluate and train the
flows, offline, with shipped models or training checkpoints.

.. code-block:: bash

    torch-enf models
    torch-enf sample qm9 -n 1000 -o mols.sdf
    torch-enf logprob qm9 mols.sdf -o scores.csv
    torch-enf evaluate dw4
    torch-enf train dw4 --quick

``python -m torch_enf`` is the same command.
"""
import argparse
import csv
import importlib.util
import json
import math
import os
import os.path as osp
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch_geometric.data import Batch, Data

EXPERIMENTS = ('dw4', 'lj13', 'qm9-positional', 'qm9')
MOLECULE_SUFFIXES = ('.sdf', '.xyz')
ARRAY_SUFFIXES = ('.npy', '.pt')


def main(argv: Optional[Sequence[str]] = None) -> int:
    r"""Runs the command line :obj:`argv` (default: :obj:`sys.argv[1:]`);
    returns the exit status. Errors in the input are printed as one line,
    with status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ['train']:  # the experiment parses its own options
        return _train(argv[1:])
    args = _parser().parse_args(argv)
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        args.run(args)
    except (ValueError, FileNotFoundError) as error:
        print(f'torch-enf {args.command}: error: {error}', file=sys.stderr)
        return 2
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='torch-enf', description='E(n) equivariant normalizing flows: '
        'sample, score, evaluate and train.')
    commands = parser.add_subparsers(dest='command', required=True)

    p = commands.add_parser('models', help='list the shipped models')
    p.set_defaults(run=_models, threads=None)

    p = commands.add_parser('sample', help='draw samples of a model')
    _model_arguments(p)
    p.add_argument('-n', '--num-samples', type=int, required=True)
    p.add_argument('-o', '--output', required=True,
                   help='.sdf or .xyz (molecules), .npy or .pt (positions)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--temperature', type=float, default=1.0,
                   help='scale of the latents; below 1 gives sharper, less '
                   'diverse samples that no longer follow the model\'s '
                   'density (default: 1, faithful samples)')
    p.add_argument('--picture', default=None,
                   help='picture of the samples (default: OUTPUT with .png)')
    p.set_defaults(run=_sample)

    p = commands.add_parser('logprob',
                            help='log-likelihood of structures in a file')
    # Small batches: an adaptive solve takes the steps of its hardest
    # structure, which costs more than the larger batches save.
    _model_arguments(p, batch_size=10)
    p.add_argument('file', help='.xyz or .sdf (molecules) or .npy '
                   '(particle configurations [S, M, n])')
    p.add_argument('--trace', choices=['exact', 'hutchinson'],
                   default='exact')
    p.add_argument('-o', '--output', default=None,
                   help='CSV file (default: FILE with .logprob.csv)')
    p.add_argument('--seed', type=int, default=0, help='seed of the '
                   'dequantisation noise (molecules) and Hutchinson probes')
    p.set_defaults(run=_logprob)

    p = commands.add_parser('evaluate', help="the metrics of a model's card "
                            'on the standard test split')
    _model_arguments(p)
    p.add_argument('--root', default='data', help='dataset folder')
    p.add_argument('--num-test', type=int, default=None)
    p.add_argument('--eval-samples', type=int, default=1000,
                   help='samples for the sample metrics')
    p.add_argument('--out', default=None, help='folder for files and '
                   'pictures (default: runs/evaluate-MODEL)')
    p.set_defaults(run=_evaluate)

    commands.add_parser('train', help=f"train an experiment "
                        f"({', '.join(EXPERIMENTS)}); 'torch-enf train "
                        f"EXPERIMENT --help' lists its options",
                        add_help=False)
    return parser


def _model_arguments(p: argparse.ArgumentParser,
                     batch_size: int = 100) -> None:
    p.add_argument('model', help='a shipped model (torch-enf models), a '
                   'model file, a training checkpoint or a run folder')
    p.add_argument('--solver', default=None,
                   help='ODE solver (default: the model card\'s for '
                   'sampling, dopri5 for likelihoods)')
    p.add_argument('--num-steps', type=int, default=None,
                   help='steps of a fixed-step solver')
    p.add_argument('--tol', type=float, default=None,
                   help='rtol = atol of an adaptive solver')
    p.add_argument('--batch-size', type=int, default=batch_size,
                   help=f'structures per ODE solve (default: {batch_size})')
    p.add_argument('--device', default='cpu')
    p.add_argument('--threads', type=int, default=None)
    p.add_argument('--no-progress', action='store_true')


# Commands -------------------------------------------------------------------

def _models(args: argparse.Namespace) -> None:
    from torch_enf.experiments.common import format_results
    from torch_enf.pretrained import available_models, model_card
    for name in available_models():
        card = model_card(name)
        card_metrics = card.get('metrics', {})
        metrics = format_results(card_metrics, card_metrics)
        print(f"{name:16s} {card.get('description', '')}")
        if metrics:
            print(f"{'':16s} {metrics}")


def _sample(args: argparse.Namespace) -> None:
    from torch_enf.utils import check_positive_number
    _check_count(args.num_samples, '-n')
    check_positive_number(args.temperature, 'temperature')
    suffix = _suffix(args.output)
    model, options = _load(args)
    kind = _kind(options)
    allowed = MOLECULE_SUFFIXES if kind == 'molecules' else ARRAY_SUFFIXES
    if suffix not in allowed:
        raise ValueError(f"{args.output}: {kind} are written as "
                         f"{' or '.join(allowed)}")
    picture = _picture_path(args)  # checked before any sampling work
    generator = torch.Generator(args.device).manual_seed(args.seed)
    start = time.time()
    with _solver(model, args, sampling=True):
        samples = _draw(model, options, args, generator)
    seconds = time.time() - start
    samples = samples.cpu()
    _write_samples(samples, options, args.output, picture)
    print(f'{samples.num_graphs} samples in {seconds:.1f} s -> '
          f'{args.output}' + (f', {picture}' if picture else
                              ' (no picture: pip install torch-enf[plot])'))
    if kind == 'molecules':
        from torch_enf.metrics import molecule_sample_metrics
        metrics = molecule_sample_metrics(samples)
        print(json.dumps(metrics, indent=2))


def _logprob(args: argparse.Namespace) -> None:
    model, options = _load(args)
    structures, names, skipped = _read_structures(args.file, model, options)
    if skipped:
        print(f'skipped {len(skipped)} of {len(names) + len(skipped)} '
              f'structures: ' + '; '.join(skipped[:10]), file=sys.stderr)
    if not structures:
        raise ValueError(f'{args.file}: no structure the model can score')
    from torch_enf.evaluation import log_prob_of_graphs
    torch.manual_seed(args.seed)
    with _solver(model, args, sampling=False):
        values = log_prob_of_graphs(model, structures, args.batch_size,
                                    args.trace, skip_failures=True,
                                    progress=not args.no_progress).tolist()
    failed = [name for name, value in zip(names, values)
              if math.isnan(value)]
    if failed:
        print(f'could not score {len(failed)} of {len(values)} structures '
              f'(their ODE solve failed; a looser --tol may help), written '
              f'as nan: ' + ', '.join(failed[:10]) +
              (', ...' if len(failed) > 10 else ''), file=sys.stderr)
    output = args.output or osp.splitext(args.file)[0] + '.logprob.csv'
    with open(output, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['name', 'num_atoms', 'log_prob'])
        for name, data, value in zip(names, structures, values):
            writer.writerow([name, data.num_nodes, f'{value:.6f}'])
            print(f'{name}\t{value:.4f}')
    scored = [value for value in values if not math.isnan(value)]
    mean = f'{np.mean(scored):.4f}' if scored else 'nan'
    print(f'mean log-likelihood {mean} over {len(scored)} structures -> '
          f'{output}')


def _evaluate(args: argparse.Namespace) -> None:
    from torch_enf.experiments import particles, qm9
    model, options = _load(args)
    evaluation = argparse.Namespace(**options)
    name = osp.basename(osp.normpath(args.model)).split('.')[0]
    out = args.out or osp.join('runs', f'evaluate-{name}')
    os.makedirs(out, exist_ok=True)
    evaluation.num_test = args.num_test
    evaluation.num_samples = args.eval_samples
    evaluation.no_progress = args.no_progress
    evaluation.sample_solver = args.solver or args.sampler.get('method')
    evaluation.sample_steps = args.num_steps or args.sampler.get('num_steps')
    evaluation.novelty = False
    if 'system' in options:
        evaluation.root = args.root
        results = particles.evaluate(evaluation, model,
                                     particles.SYSTEMS[evaluation.system],
                                     out)
    else:
        evaluation.root = osp.join(args.root, 'QM9')
        test = qm9.QM9(evaluation.root, 'test',
                       positional=evaluation.positional, log=False)
        train = qm9.QM9(evaluation.root, 'train',
                        positional=evaluation.positional, log=False)
        results = qm9.evaluate(evaluation, model, test, train, out,
                               not args.no_progress)
    print(json.dumps(results, indent=2))


def _train(argv: List[str]) -> int:
    from torch_enf.experiments import particles, qm9
    if not argv or argv[0] not in EXPERIMENTS:
        print(f"usage: torch-enf train {{{','.join(EXPERIMENTS)}}} "
              f"[options]", file=sys.stderr)
        return 2
    experiment, rest = argv[0], argv[1:]
    try:
        if experiment in ('dw4', 'lj13'):
            particles.main(['--system', experiment] + rest)
        else:
            qm9.main(rest, positional=experiment == 'qm9-positional')
    except ValueError as error:
        print(f'torch-enf train {experiment}: error: {error}',
              file=sys.stderr)
        return 2
    return 0


# Helpers --------------------------------------------------------------------

def _check_count(value: int, flag: str) -> None:
    if value < 1:
        raise ValueError(f'{flag} must be a positive number of samples (got '
                         f'{value})')


def _suffix(path: str) -> str:
    return osp.splitext(path)[1].lower()


def _load(args: argparse.Namespace) -> Tuple[torch.nn.Module, Dict]:
    r"""The model and its options; the sampler the model card recommends
    (or the training run sampled with) goes to :obj:`args.sampler`."""
    from torch_enf.pretrained import build_model, read_model
    found = read_model(args.model)
    model = build_model(found.options, found.state_dict)
    model.load_state_dict(found.state_dict)
    args.sampler = found.card.get('sampler') or {
        key: value for key, value in (
            ('method', found.options.get('sample_solver')),
            ('num_steps', found.options.get('sample_steps')))
        if value is not None}
    return model.to(args.device).eval(), found.options


def _kind(options: Dict[str, Any]) -> str:
    if 'system' in options:
        return 'particle configurations'
    return 'positions' if options['positional'] else 'molecules'


def _solver(model: torch.nn.Module, args: argparse.Namespace,
            sampling: bool):
    r"""The ODE options of the command: the model card's sampler by
    default when sampling, the flow's evaluation solver otherwise."""
    flow = getattr(model, 'flow', model)
    changes: Dict[str, Any] = {}
    if args.solver is not None:
        changes['method'] = args.solver
    if args.num_steps is not None:
        changes['num_steps'] = args.num_steps
    if args.tol is not None:
        changes.update(rtol=args.tol, atol=args.tol)
    if sampling and not changes:
        changes.update(args.sampler)
    return flow.ode_options(**changes)


def _draw(model: torch.nn.Module, options: Dict[str, Any],
          args: argparse.Namespace, generator: torch.Generator) -> Batch:
    progress = not args.no_progress
    if 'system' in options:
        from torch_enf.experiments.particles import SYSTEMS
        size = SYSTEMS[options['system']].num_particles
    elif options['positional']:
        from torch_enf.datasets import QM9
        size = QM9.positional_num_atoms
    else:
        return model.sample(args.num_samples, generator,
                            batch_size=args.batch_size, progress=progress,
                            temperature=args.temperature)
    return model.sample(size, args.num_samples, generator,
                        batch_size=args.batch_size, progress=progress,
                        temperature=args.temperature)


def _picture_path(args: argparse.Namespace) -> Optional[str]:
    r"""Where the picture of the samples goes; :obj:`None` when matplotlib
    is missing and no picture was asked for explicitly (an explicit
    :obj:`--picture` without matplotlib is an error before any work)."""
    if importlib.util.find_spec('matplotlib') is None:
        if args.picture:
            raise ValueError('--picture needs matplotlib: pip install '
                             'torch-enf[plot]')
        return None
    return args.picture or osp.splitext(args.output)[0] + '.png'


def _write_samples(samples: Batch, options: Dict[str, Any], path: str,
                   picture: Optional[str]) -> None:
    from torch_enf.io import write_sdf, write_xyz
    if _suffix(path) in MOLECULE_SUFFIXES:
        (write_sdf if _suffix(path) == '.sdf' else write_xyz)(path, samples)
        if picture:
            from torch_enf.visualization import plot_molecule_grid
            first = Batch.from_data_list(samples.to_data_list()[:16])
            plot_molecule_grid(first, picture)
        return
    size = samples.num_nodes // samples.num_graphs
    positions = samples.pos.view(samples.num_graphs, size, -1)
    if _suffix(path) == '.npy':
        np.save(path, positions.numpy())
    else:
        torch.save(positions, path)
    if picture:
        _plot_configurations(positions, options, picture)


def _plot_configurations(positions: torch.Tensor, options: Dict[str, Any],
                         picture: str) -> None:
    from torch_enf.metrics import compare_samples
    from torch_enf.visualization import plot_sample_comparison
    energy = None
    if 'system' in options:
        from torch_enf.experiments.particles import SYSTEMS
        energy = SYSTEMS[options['system']].energy
    comparison = compare_samples(positions, positions, energy)
    plot_sample_comparison(comparison, picture, 'samples',
                           positions if positions.size(-1) == 2 else None)


def _read_structures(path: str, model: torch.nn.Module,
                     options: Dict[str, Any]
                     ) -> Tuple[List[Data], List[str], List[str]]:
    r"""Structures the model can score, their names, and a description of
    each skipped one."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'{path} does not exist')
    suffix = _suffix(path)
    if suffix == '.npy':
        return _read_array(path, model, options)
    if suffix not in MOLECULE_SUFFIXES:
        raise ValueError(f'{path}: expected .xyz, .sdf or .npy')
    from torch_enf.io import read_sdf, read_xyz
    molecules = (read_sdf if suffix == '.sdf' else read_xyz)(path)
    if 'system' in options:
        raise ValueError(f'{path}: particle models score .npy arrays')
    known = None if options['positional'] else \
        model.atomic_numbers.cpu().tolist()
    kept, names, skipped = [], [], []
    for k, molecule in enumerate(molecules):
        name = molecule.name or f'structure {k}'
        problem = _problem(molecule, known, options)
        if problem:
            skipped.append(f'#{k} ({name}): {problem}')
            continue
        data = Data(pos=molecule.pos)
        if known is not None:
            from torch_enf.datasets.qm9 import node_features
            data.h = node_features(molecule.z)
        kept.append(data)
        names.append(name)
    return kept, names, skipped


def _problem(molecule: Data, known: Optional[List[int]],
             options: Dict[str, Any]) -> Optional[str]:
    if molecule.num_nodes < 2:
        return 'fewer than 2 atoms'
    if options.get('positional') and molecule.num_nodes != 19:
        return f'{molecule.num_nodes} atoms (the positional model has 19)'
    if known is not None:
        unknown = sorted(set(molecule.z.tolist()) - set(known))
        if unknown:
            return f'unknown atomic numbers {unknown} (known: {known})'
    return None


def _read_array(path: str, model: torch.nn.Module, options: Dict[str, Any]
                ) -> Tuple[List[Data], List[str], List[str]]:
    from torch_enf.experiments.particles import SYSTEMS
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as error:
        raise ValueError(f'{path}: not a numeric .npy array ({error})') \
            from None
    if 'system' in options:
        system = SYSTEMS[options['system']]
        size, n_dims = system.num_particles, system.n_dims
    elif options['positional']:
        size, n_dims = 19, 3
    else:
        raise ValueError(f'{path}: molecule models score .xyz or .sdf files')
    if array.shape[1:] not in ((size, n_dims), (size * n_dims, )):
        raise ValueError(f'{path}: expected shape [S, {size}, {n_dims}] or '
                         f'[S, {size * n_dims}] (got {list(array.shape)})')
    positions = torch.as_tensor(array, dtype=torch.float32).reshape(
        -1, size, n_dims)
    finite = torch.isfinite(positions).flatten(1).all(dim=1)
    skipped = [f'#{k}: non-finite coordinates'
               for k in torch.nonzero(~finite).view(-1).tolist()]
    kept = [Data(pos=p) for p, ok in zip(positions, finite.tolist()) if ok]
    names = [f'configuration {k}' for k, ok in enumerate(finite.tolist())
             if ok]
    return kept, names, skipped


if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
