r"""The many-body experiments of the E-NF paper (Table 1): an
:class:`~torch_enf.flows.ENFlow` on DW4 or LJ13 (or the larger LJ55),
trained on :obj:`n_train` MCMC samples, selected by validation NLL and judged
by the test NLL (nats per configuration on the centred subspace; exact up to
13 particles, Hutchinson's estimate with its standard error beyond)."""
import argparse
import json
import os.path as osp
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch_geometric.loader import DataLoader

from torch_enf.boltzmann import (entropy_bracket, importance_weights,
                                 log_partition_function)
from torch_enf.datasets import DW4, LJ13, LJ13Halved, LJ55
from torch_enf.experiments.common import (add_training_arguments,
                                          format_results, parse,
                                          prepare_run, radial_options,
                                          run_summary, sampling_options,
                                          subset, train, validation_nll)
from torch_enf.flows import ENFlow
from torch_enf.metrics import compare_samples
from torch_enf.evaluation import evaluate_nll
from torch_enf.storage import atomic_save
from torch_enf.visualization import (plot_reweighted_energies,
                                     plot_sample_comparison)

SYSTEMS = {'dw4': DW4, 'lj13': LJ13, 'lj13-halved': LJ13Halved, 'lj55': LJ55}
EXACT_TRACE_MAX_PARTICLES = 13
r"""Larger systems are scored with Hutchinson's estimator by default: the
exact trace costs one vector-Jacobian product per coordinate."""
SAMPLE_BATCH_NODES = 6500
r"""Sampling batches hold at most this many particles (500 LJ13 clusters)."""
SWEEPS = {  # (n_train, epochs, batch size) of Table 1
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
SWEEPS['ml']['lj13-halved'] = SWEEPS['ml']['lj13']
SWEEPS['fm']['lj13-halved'] = SWEEPS['fm']['lj13']
QUICK = {
    ('dw4', 'fm'): dict(n_train=1000, epochs=2000, num_valid=500,
                        num_test=1000, eval_every=200, num_samples=1000,
                        lr_schedule='cosine', threads=1),
    ('dw4', 'ml'): dict(n_train=1000, epochs=25, num_valid=500,
                        num_test=1000, eval_every=5, num_samples=1000),
    ('lj13', 'fm'): dict(n_train=100, epochs=1000, num_valid=100,
                         num_test=100, eval_every=200, num_samples=200,
                         lr_schedule='cosine', threads=1),
    ('lj13', 'ml'): dict(n_train=100, epochs=15, num_valid=100,
                         num_test=100, eval_every=5, num_samples=200),
}
QUICK.update({('lj13-halved', objective): QUICK['lj13', objective]
              for objective in ('fm', 'ml')})
QUICK['lj55', 'fm'] = dict(n_train=1000, epochs=20, num_valid=100,
                           num_test=100, eval_every=5, num_samples=100,
                           lr_schedule='cosine', threads=1)
QUICK['lj55', 'ml'] = dict(n_train=100, epochs=2, num_valid=20, num_test=20,
                           eval_every=1, num_samples=20)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p = parser.add_argument_group('experiment')
    p.add_argument('--system', choices=SYSTEMS, default='dw4')
    p.add_argument('--n-train', type=int, default=1000)
    p.add_argument('--root', default='data',
                   help='dataset cache folder (default: ./data)')
    p.add_argument('--valid-trace', choices=['exact', 'hutchinson'],
                   default=None, help='default: exact for DW4, Hutchinson '
                   'for LJ13 (its exact trace is 39 Jacobian-vector products)')
    p.add_argument('--eval-trace', choices=['exact', 'hutchinson'],
                   default=None, help='trace of the test NLL and of the '
                   'Boltzmann samples\' log q (default: exact up to '
                   f'{EXACT_TRACE_MAX_PARTICLES} particles, Hutchinson '
                   'beyond)')
    p.add_argument('--published-test', default=None,
                   help='also evaluate on this .npy test split')
    p.add_argument('--boltzmann-samples', type=int, default=0,
                   help='flow samples for importance weights: ESS, log Z '
                   'and the entropy floor H(p) of the test NLL (exact '
                   'trace)')
    p.add_argument('--sweep', action='store_true',
                   help="the training-set-size sweep of Table 1")
    add_training_arguments(parser, lr=5e-4)
    parser.set_defaults(epochs=300, hidden=32, layers=3)
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    args = parse(build_parser(), argv,
                 lambda known: QUICK[known.system, known.objective])
    if args.n_train < 1:
        raise ValueError(f'--n-train must be positive (got {args.n_train})')
    if args.boltzmann_samples < 0:
        raise ValueError('--boltzmann-samples must be non-negative')
    if args.sweep and args.system not in SWEEPS[args.objective]:
        raise ValueError(f'--sweep: no Table 1 sweep for {args.system} '
                         f'(sweeps: {sorted(SWEEPS[args.objective])})')
    if args.published_test and not osp.isfile(args.published_test):
        raise ValueError(f'--published-test {args.published_test} is not a '
                         f'file')
    return args


def build_flow(args: argparse.Namespace, n_dims: int) -> ENFlow:
    return ENFlow(n_dims, hidden_channels=args.hidden,
                  num_layers=args.layers, rtol=args.tol, atol=args.tol,
                  eval_rtol=args.eval_tol, eval_atol=args.eval_tol,
                  adjoint=not args.no_adjoint, **radial_options(args))


def run(args: argparse.Namespace) -> Dict[str, Any]:
    r"""Trains, selects and evaluates one model; writes
    :obj:`OUT/results.json`, :obj:`OUT/samples.png` and the files of
    :func:`~torch_enf.training.fit`."""
    out = prepare_run(args, osp.join('runs', f'{args.system}-{args.n_train}'))
    system = SYSTEMS[args.system]
    root = osp.join(args.root, args.system)
    device = torch.device(args.device)
    progress = not args.no_progress
    train_set = system(root, 'train', n_train=args.n_train,
                       progress=progress)
    valid_set = subset(system(root, 'valid', progress=progress),
                       args.num_valid)
    valid_trace = args.valid_trace or (
        'exact' if system.num_particles < 10 else 'hutchinson')
    flow = build_flow(args, system.n_dims).to(device)
    loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True,
                        drop_last=len(train_set) >= args.batch_size)
    validate = validation_nll(args, DataLoader(valid_set, batch_size=100),
                              valid_trace, progress)
    state = train(flow, args, loader, out, validate)
    results = evaluate(args, flow, system, out)
    results.update(run_summary(args, state), system=args.system,
                   n_train=args.n_train, valid_trace=valid_trace,
                   eval_trace=eval_trace(args, system),
                   num_valid=len(valid_set))
    atomic_save(results, osp.join(out, 'results.json'))
    return results


def evaluate(args: argparse.Namespace, flow: ENFlow, system,
             out: str) -> Dict[str, Any]:
    r"""Test NLL (own and published splits), the solver's NFE, and
    distance and energy histograms of samples against the test data."""
    progress = not args.no_progress
    trace = eval_trace(args, system)
    sample_batch = min(500, SAMPLE_BATCH_NODES // system.num_particles)
    root = osp.join(args.root, args.system)
    test_set = subset(system(root, 'test', progress=progress),
                      args.num_test)
    test = evaluate_nll(flow, DataLoader(test_set, batch_size=100), trace,
                        'test', progress)
    results = dict(test_nll=test.nll, test_nll_stderr=test.stderr,
                   num_test=test.num_graphs, nfe=test.num_evals)
    if args.published_test:
        published = subset(system(root, 'test', source=args.published_test),
                           args.num_test)
        estimate = evaluate_nll(flow, DataLoader(published, batch_size=100),
                                trace, 'published test', progress)
        results.update(published_test_nll=estimate.nll,
                       published_test_nll_stderr=estimate.stderr)
    flow.eval()
    with flow.ode_options(**sampling_options(args)):
        samples = flow.sample(system.num_particles, args.num_samples,
                              batch_size=sample_batch, progress=progress)
    samples = samples.pos.view(-1, system.num_particles, system.n_dims)
    data = torch.stack([d.pos for d in test_set[:args.num_samples]])
    comparison = compare_samples(samples, data, system.energy)
    results.update(comparison.metrics(), num_samples=args.num_samples)
    plot_sample_comparison(
        comparison, osp.join(out, 'samples.png'),
        f'{args.system.upper()}, n_train={args.n_train}, {args.objective}',
        samples.cpu() if system.n_dims == 2 else None)
    if args.boltzmann_samples:
        test_positions = torch.stack([d.pos for d in test_set])
        results.update(boltzmann_metrics(args, flow, system, test_positions,
                                         test.values, out, trace,
                                         sample_batch))
    return results


def boltzmann_metrics(args: argparse.Namespace, flow: ENFlow, system,
                      test_positions: torch.Tensor, test_nll: torch.Tensor,
                      out: str, trace: str, batch_size: int
                      ) -> Dict[str, Any]:
    r"""Importance weights of :obj:`--boltzmann-samples` flow samples: the
    ESS, :math:`\log Z`, the entropy :math:`H(p)` of the test data with its
    bracket, the gap NLL - H(p), and a plot of raw and reweighted sample
    energies against the test data's. With Hutchinson's trace the
    log-weights carry its noise, which lowers the ESS: a conservative
    estimate."""
    draw = importance_weights(flow, system.energy, args.boltzmann_samples,
                              batch_size=batch_size,
                              progress=not args.no_progress, trace=trace)
    test_energy = system.energy(test_positions.double())
    bracket = entropy_bracket(test_energy, -test_nll, draw.log_weights)
    log_z, log_z_stderr = log_partition_function(draw.log_weights)
    plot_reweighted_energies(test_energy, draw.energy, draw.log_weights,
                             osp.join(out, 'reweighted_energies.png'),
                             f'{args.system.upper()}, n_train='
                             f'{args.n_train}, {args.objective}')
    return dict(boltzmann_samples=args.boltzmann_samples,
                ess=bracket.ess, log_z=log_z, log_z_stderr=log_z_stderr,
                entropy=bracket.entropy, entropy_stderr=bracket.stderr,
                entropy_lower=bracket.lower, entropy_upper=bracket.upper,
                nll_minus_entropy=bracket.kl,
                num_infinite_energy=draw.num_infinite_energy)


def eval_trace(args: argparse.Namespace, system) -> str:
    r"""The trace of the test NLL: :obj:`--eval-trace`, by default exact up
    to :obj:`EXACT_TRACE_MAX_PARTICLES` particles."""
    if args.eval_trace is not None:
        return args.eval_trace
    return 'exact' if system.num_particles <= EXACT_TRACE_MAX_PARTICLES \
        else 'hutchinson'


def sweep(args: argparse.Namespace) -> List[Dict[str, Any]]:
    r"""The training-set sizes of Table 1 with their epochs and batch sizes
    (per objective); finished sizes are skipped with :obj:`--resume`."""
    base_out = args.out or osp.join('runs',
                                    f'{args.system}-{args.objective}-sweep')
    table = []
    for n_train, epochs, batch_size in SWEEPS[args.objective][args.system]:
        args.n_train, args.epochs, args.batch_size = n_train, epochs, \
            batch_size
        args.out = osp.join(base_out, f'n_train={n_train}')
        done = osp.join(args.out, 'results.json')
        if args.resume and osp.exists(done):
            with open(done) as f:
                results = json.load(f)
        else:
            results = run(args)
        table.append(results)
        print(f"n_train={n_train}: test NLL {results['test_nll']:.3f}")
    atomic_save(table, osp.join(base_out, 'results.json'))
    return table


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    results = sweep(args)[-1] if args.sweep else run(args)
    print(json.dumps(results, indent=2))
    print(format_results(results, ['test_nll', 'published_test_nll',
                                   'js_distances', 'nfe']))
    print(f"test_nll={results['test_nll']:.4f}")
    return results
