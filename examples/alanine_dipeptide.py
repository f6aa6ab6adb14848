r"""A first Boltzmann generator for alanine dipeptide (issue #31): an E(3)
equivariant continuous flow trained by equivariant optimal-transport flow
matching (Klein, Krämer and Noé, NeurIPS 2023) on molecular dynamics
(``examples/alanine_dipeptide_md.py``), then judged by its exact test NLL,
the importance weights of its samples against the force field (ESS) and
the free-energy difference of the two main Ramachandran basins, raw and
reweighted, against MD. Needs ``pip install torch-enf[md]``::

    python examples/alanine_dipeptide.py \
        --data data/alanine/md_20ns_seed0.npz \
        --budget 25

The model is the library's :class:`~torch_enf.flows.ConformerFlow` with the
exchangeable atom types of
:meth:`~torch_enf.systems.AlanineDipeptide.exchangeable_types`, in
Angstrom; samples of D chirality are reflected to L
(:meth:`~torch_enf.systems.AlanineDipeptide.to_l_chirality`); see
:mod:`torch_enf.tasks.alanine` for the units and the chirality. This script
selects the model by its flow-matching validation loss (cheap) and writes
NLLs both in Angstrom and in nm (``NLL_nm = NLL_Å - 63 ln 10``); log-weights
use :math:`\log q_{nm}`. The same model trains with ``torch-enf train
alanine-dipeptide``; the run folder gets a ``model.pt`` that ``torch-enf
sample``, ``logprob`` and ``evaluate`` read.
"""
import argparse
import json
import math
import os
import os.path as osp
import platform
import time
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from torch_enf.boltzmann import (effective_sample_size,
                                 log_partition_function)
from torch_enf.evaluation import evaluate_nll
from torch_enf.flows import (DEFAULT_SOLVER, PREDICTIONS, ConformerFlow,
                             SolverOptions)
from torch_enf.io import atomic_path
from torch_enf.objectives import FlowMatching
from torch_enf.systems import (AlanineDipeptide, bootstrap_delta_f,
                               free_energy_surface, load_trajectory,
                               split_trajectory)
from torch_enf.storage import save_model
from torch_enf.tasks import DataConfig, ModelOptions, RunConfig, get_task
from torch_enf.training import FitConfig, fit
from torch_enf.utils import json_safe
from torch_enf.visualization import (plot_ramachandran,
                                     plot_reweighted_energies)

SCALE = 10.0
r"""Flow length unit per nm: the flow works in Angstrom."""

NUM_ATOMS = 22
CENTRED_DIMS = 3 * NUM_ATOMS - 3
NM_SHIFT = CENTRED_DIMS * math.log(SCALE)
r""":math:`\log q_{nm} - \log q_{Å} = 63 \ln 10` nats."""

RESULT_KEYS = ('settings', 'machine', 'training', 'test_nll', 'samples',
               'ess', 'log_z', 'delta_f')
r"""The top-level keys of the results JSON."""


# Data ---------------------------------------------------------------------

def load_splits(path: str, fractions: Tuple[float, float, float]
                ) -> Dict[str, Tensor]:
    r"""The MD frames of :obj:`path` cut into contiguous train, valid and
    test blocks, as float64 tensors :obj:`[N, 22, 3]` in nm."""
    blocks = split_trajectory(load_trajectory(path), fractions)
    return {name: torch.from_numpy(block.positions)
            for name, block in blocks.items()}


def graphs(positions_nm: Tensor) -> List[Data]:
    r"""Graphs with float32 positions in the flow's unit (Angstrom)."""
    return [Data(pos=(x * SCALE).float()) for x in positions_nm]


# Training and evaluation --------------------------------------------------

def validation_loss(valid: List[Data], batch_size: int
                    ) -> Any:
    r"""A :obj:`validate(model)` for :func:`fit`: the mean flow-matching
    loss of the validation frames with a fixed seed (cheap, and lower is
    better)."""
    def validate(model: torch.nn.Module) -> float:
        objective = FlowMatching(generator=torch.Generator().manual_seed(0))
        losses = [objective(model, batch).detach() for batch in
                  DataLoader(valid, batch_size=batch_size)]
        return float(torch.cat(losses).mean())
    return validate


def train(flow: ConformerFlow, splits: Dict[str, Tensor],
          args: argparse.Namespace) -> Dict[str, Any]:
    r"""Flow matching under the wall-clock budget; returns the training
    summary."""
    train_set = graphs(splits['train'])
    valid = graphs(splits['valid'][:args.num_valid])
    loader = DataLoader(train_set, batch_size=args.batch_size,
                        shuffle=True, drop_last=True)
    config = FitConfig(epochs=args.epochs, lr=args.lr,
                       lr_schedule='cosine', ema_decay=args.ema,
                       eval_every=args.eval_every,
                       time_budget=args.budget / 60)
    state = fit(flow, FlowMatching(), loader, args.run_dir, config,
                validate=validation_loss(valid, args.batch_size),
                resume=args.resume, run_config=run_config(args),
                canonical_run=canonical_run, progress=False)
    flow.load_state_dict(torch.load(osp.join(args.run_dir, 'best.pt')))
    sampler = SolverOptions('midpoint', num_steps=args.sample_steps) \
        if args.sample_steps else DEFAULT_SOLVER
    task = get_task('alanine-dipeptide')
    training = RunConfig(
        task=task.name, data=DataConfig(files=args.data),
        model=model_options(args), fit=config,
        objective=FlowMatching().config(), batch_size=args.batch_size,
        seed=args.seed)
    save_model(flow, osp.join(args.run_dir, 'model.pt'), task.state(),
               card=dict(name=task.name, description=task.description,
                         training=training.to_dict(),
                         sampler=sampler.to_dict()))
    return dict(steps=state.step, epochs=state.epoch,
                wall_clock_s=round(state.wall_clock_s, 1),
                best_epoch=state.best_epoch, best_valid_fm=state.best_valid,
                stopped_by_budget=state.stopped_by_budget,
                num_train=len(train_set))


def test_nll(flow: ConformerFlow, test_nm: Tensor) -> Dict[str, float]:
    r"""The exact NLL (dopri5 at :math:`10^{-5}`, exact trace) of the test
    frames, in nats on the centred subspace, in Angstrom and in nm."""
    loader = DataLoader(graphs(test_nm), batch_size=100)
    estimate = evaluate_nll(flow, loader, 'exact', desc='test NLL',
                            progress=False)
    return dict(nll_angstrom=estimate.nll, stderr=estimate.stderr,
                nll_nm=estimate.nll - NM_SHIFT, num_test=estimate.num_graphs,
                nfe=estimate.num_evals)


class FlowSamples(NamedTuple):
    r"""Flow samples after the chirality fix: positions :obj:`[S, 22, 3]`
    (nm, float64), :math:`\log q_{nm}` of the flow before the fix,
    reduced energies, the reflected mask and the sampling time."""
    positions: Tensor
    log_q: Tensor
    energy: Tensor
    reflected: Tensor
    seconds: float


def draw(flow: ConformerFlow, system: AlanineDipeptide,
         args: argparse.Namespace) -> FlowSamples:
    r"""Samples with their log-densities (nm convention), L chirality and
    reduced energies."""
    solver = SolverOptions('midpoint', num_steps=args.sample_steps) \
        if args.sample_steps else DEFAULT_SOLVER
    start = time.time()
    flow.eval()
    batch, log_q = flow.sample_with_log_prob(
        args.num_samples, NUM_ATOMS, batch_size=args.sample_batch,
        generator=torch.Generator().manual_seed(args.seed),
        trace=args.sample_trace, solver=solver)
    pos = batch.pos.view(-1, NUM_ATOMS, 3).double() / SCALE
    pos, reflected = system.to_l_chirality(pos)
    seconds = time.time() - start
    with torch.no_grad():
        energy = system(pos)
    return FlowSamples(pos, log_q.double() + NM_SHIFT, energy, reflected,
                       seconds)


def evaluate(flow: ConformerFlow, system: AlanineDipeptide,
             splits: Dict[str, Tensor], args: argparse.Namespace
             ) -> Dict[str, Any]:
    r"""Test NLL, samples, importance weights, free energies and
    figures; returns the results entries."""
    test_nm = splits['test']
    nll = test_nll(flow, test_nm[torch.linspace(
        0, len(test_nm) - 1, min(args.num_test, len(test_nm))).long()])
    samples = draw(flow, system, args)
    log_w = torch.where(torch.isfinite(samples.energy),
                        -samples.energy - samples.log_q, -math.inf)
    md_angles = system.phi_psi(test_nm)
    flow_angles = system.phi_psi(samples.positions)
    md_block = max(len(test_nm) // 20, 1)
    raw, weighted = (bootstrap_delta_f(flow_angles, w, args.bootstrap)
                     for w in (torch.zeros_like(log_w), log_w))
    md = bootstrap_delta_f(md_angles, None, args.bootstrap, md_block)
    all_angles = system.phi_psi(torch.cat(list(splits.values())))
    md_all = bootstrap_delta_f(all_angles, None, args.bootstrap,
                               max(len(all_angles) // 20, 1))
    figures = osp.join(args.results, 'ramachandran.png')
    plot_ramachandran({'MD (test)': free_energy_surface(md_angles),
                       'flow, raw': free_energy_surface(flow_angles),
                       'flow, reweighted': free_energy_surface(
                           flow_angles, log_w)}, figures)
    with torch.no_grad():
        md_energy = system(test_nm)
    plot_reweighted_energies(md_energy, samples.energy, log_w,
                             osp.join(args.results, 'energies.png'),
                             'alanine dipeptide')
    log_z, log_z_err = log_partition_function(log_w)
    return dict(
        test_nll=nll,
        samples=dict(num_samples=args.num_samples,
                     sampler=f'midpoint, {args.sample_steps} steps'
                     if args.sample_steps else 'dopri5 1e-5',
                     trace=args.sample_trace,
                     sampling_s=round(samples.seconds, 1),
                     num_mirrored=int(samples.reflected.sum()),
                     num_infinite_energy=int(
                         (~torch.isfinite(samples.energy)).sum())),
        ess=effective_sample_size(log_w),
        log_z=dict(value_nm=log_z, stderr=log_z_err,
                   note='log Z of exp(-u) on the centred subspace in nm, '
                        'up to the chirality factor ln 2'),
        delta_f=dict(
            definition='-ln(p_alphaR / p_beta), kT, phi < 0 basins',
            md=dict(value=md[0], stderr=md[1], block_frames=md_block),
            md_all_frames=dict(value=md_all[0], stderr=md_all[1],
                               num_frames=len(all_angles)),
            flow_raw=dict(value=raw[0], stderr=raw[1]),
            flow_reweighted=dict(value=weighted[0], stderr=weighted[1])))


# Command line -------------------------------------------------------------

def model_options(args: argparse.Namespace) -> ModelOptions:
    r"""The model of the :obj:`alanine-dipeptide` task of these flags."""
    return ModelOptions(hidden_channels=args.hidden, num_layers=args.layers,
                        num_radial=args.num_radial,
                        prediction=args.prediction)


def run_config(args: argparse.Namespace) -> Dict[str, Any]:
    r"""What defines a training run (compared on :obj:`--resume`)."""
    return dict(data=osp.abspath(args.data), unit='angstrom',
                hidden=args.hidden, layers=args.layers,
                num_radial=args.num_radial, prediction=args.prediction,
                batch_size=args.batch_size,
                lr=args.lr, ema=args.ema, seed=args.seed,
                num_valid=args.num_valid, max_train=args.max_train)


def canonical_run(stored: Dict[str, Any]) -> Dict[str, Any]:
    r"""A stored :func:`run_config`: runs from before :obj:`--prediction`
    existed predicted the velocity."""
    return dict(dict(prediction='velocity'), **stored)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add = parser.add_argument
    add('--data', default='data/alanine/md_20ns_seed0.npz')
    add('--run-dir', default='runs/alanine', help='checkpoints')
    add('--results', default='docs/source/_static/results/alanine')
    add('--budget', type=float, default=25.0, help='training minutes')
    add('--epochs', type=int, default=100000)
    add('--hidden', type=int, default=64)
    add('--layers', type=int, default=4)
    add('--num-radial', type=int, default=0)
    add('--prediction', choices=PREDICTIONS, default='velocity',
        help="what the EGNN predicts: the velocity or the clean endpoint")
    add('--batch-size', type=int, default=128)
    add('--lr', type=float, default=5e-4)
    add('--ema', type=float, default=0.999)
    add('--eval-every', type=int, default=5)
    add('--num-valid', type=int, default=500)
    add('--max-train', type=int, default=None,
        help='use only the first frames of the training block')
    add('--num-test', type=int, default=20,
        help='test frames of the exact NLL (about 10 s each on one core)')
    add('--num-samples', type=int, default=10000)
    add('--sample-steps', type=int, default=10,
        help='midpoint steps of sampling (0: dopri5 at 1e-5)')
    add('--sample-trace', default='hutchinson',
        choices=['exact', 'hutchinson'],
        help='trace of the sample log-densities (exact: 66x the cost)')
    add('--sample-batch', type=int, default=250)
    add('--bootstrap', type=int, default=200)
    add('--seed', type=int, default=0)
    add('--threads', type=int, default=1)
    add('--resume', action='store_true')
    args = parser.parse_args(argv)
    check_args(parser, args)
    return args


def check_args(parser: argparse.ArgumentParser,
               args: argparse.Namespace) -> None:
    r"""Refuses bad options before any work."""
    if not osp.isfile(args.data):
        parser.error(f'--data {args.data}: no such file (make it with '
                     f'examples/alanine_dipeptide_md.py)')
    if not args.budget > 0:
        parser.error(f'--budget must be positive (got {args.budget})')
    for name in ('epochs', 'hidden', 'layers', 'batch_size', 'num_valid',
                 'num_test', 'num_samples', 'sample_batch', 'bootstrap',
                 'threads', 'eval_every'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be at least 1 '
                         f'(got {getattr(args, name)})')
    for name in ('num_radial', 'sample_steps'):
        if getattr(args, name) < 0:
            parser.error(f'--{name.replace("_", "-")} must be >= 0')
    if args.max_train is not None and args.max_train < args.batch_size:
        parser.error('--max-train must be at least --batch-size')
    if not 0 < args.ema < 1 or not args.lr > 0:
        parser.error('--ema must lie in (0, 1) and --lr be positive')


def machine() -> Dict[str, Any]:
    return dict(platform=platform.platform(), processor=platform.machine(),
                cpus=os.cpu_count(), torch=torch.__version__,
                threads=torch.get_num_threads())


def write_results(results: Dict[str, Any], folder: str) -> str:
    r"""Writes :obj:`results.json` atomically; returns its path."""
    path = osp.join(folder, 'results.json')
    with atomic_path(path) as tmp, open(tmp, 'w') as f:
        json.dump(json_safe(results), f, indent=1, allow_nan=False)
    return path


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.time()
    system = AlanineDipeptide()
    splits = load_splits(args.data, (0.8, 0.1, 0.1))
    if args.max_train is not None:
        splits['train'] = splits['train'][:args.max_train]
    flow = get_task('alanine-dipeptide').build_model(model_options(args),
                                                     splits=None)
    training = train(flow, splits, args)
    print(f'trained: {training}', flush=True)
    results = dict(settings=dict(vars(args), unit='angstrom',
                                 types=system.exchangeable_types().tolist()),
                   machine=machine(), training=training)
    results.update(evaluate(flow, system, splits, args))
    results['wall_clock_s'] = round(time.time() - start, 1)
    path = write_results(results, args.results)
    print(json.dumps({k: results[k] for k in ('test_nll', 'ess', 'samples',
                                              'delta_f')}, indent=1))
    print(f'wrote {path}')
    return results


if __name__ == '__main__':
    main()
