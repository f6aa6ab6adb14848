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

Design:

* **Units.** The flow works in Angstrom (nm x 10): bonds are 1-1.5 and the
  molecule a few units across, the scale of the unit Gaussian base and of
  the EGNN's distance features. Energies are evaluated in nm. A density in
  Angstrom on the :math:`D = 3 \cdot 22 - 3 = 63`-dimensional centred
  subspace relates to the one in nm by :math:`\log q_{nm} = \log q_{Å} +
  D \ln 10`, so ``NLL_nm = NLL_Å - 63 ln 10 = NLL_Å - 145.06`` nats; both
  are written. Log-weights use :math:`\log q_{nm}` (a constant shift, which
  only moves :math:`\log Z`).
* **Atom types.** Only truly exchangeable atoms share a type: the three
  hydrogens of each methyl group (ACE, ALA's CB, NME); the other 13 atoms
  have a type each (16 types). The types are fixed one-hot inputs of the
  vector field (not flowed) and restrict the flow-matching permutation
  search. The force field treats the hydrogens of a methyl group alike, so
  the Boltzmann density is invariant to their permutations, as the flow's.
* **Chirality.** An E(3)-equivariant flow has a reflection-invariant
  density, :math:`q(R\mathbf{x}) = q(\mathbf{x})`, so half of its mass is
  on D-alanine, which MD at 300 K never visits. Samples with D chirality
  at the alpha carbon are reflected (:func:`mirror`); the reflected-when-D
  samples have the density :math:`q_L(\mathbf{x}) = q(\mathbf{x}) +
  q(R\mathbf{x}) = 2 q(\mathbf{x})` on L configurations, and the energy is
  reflection invariant, so their log-weights are :math:`-u - \log q -
  \ln 2`: a constant offset, which cancels in self-normalised weights.
"""
import argparse
import json
import math
import os
import os.path as osp
import platform
import time
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from torch_enf.boltzmann import (effective_sample_size,
                                 log_partition_function)
from torch_enf.evaluation import evaluate_nll
from torch_enf.flows import ENFlow, EGNNDynamics, SolverOptions
from torch_enf.flows.enflow import FlowInputs
from torch_enf.io import atomic_path
from torch_enf.objectives import FlowMatching
from torch_enf.systems import (AlanineDipeptide, load_trajectory,
                               split_trajectory)
from torch_enf.systems.molecular import mirror
from torch_enf.training import FitConfig, fit
from torch_enf.utils import json_safe

SCALE = 10.0
r"""Flow length unit per nm: the flow works in Angstrom."""

NUM_ATOMS = 22
CENTRED_DIMS = 3 * NUM_ATOMS - 3
NM_SHIFT = CENTRED_DIMS * math.log(SCALE)
r""":math:`\log q_{nm} - \log q_{Å} = 63 \ln 10` nats."""

EXCHANGEABLE = (('ACE', ('H1', 'H2', 'H3')), ('ALA', ('HB1', 'HB2', 'HB3')),
                ('NME', ('H1', 'H2', 'H3')))
r"""The groups of atoms (residue, names) that share a type: the hydrogens
of the three methyl groups."""

RESULT_KEYS = ('settings', 'machine', 'training', 'test_nll', 'samples',
               'ess', 'log_z', 'delta_f')
r"""The top-level keys of the results JSON."""


# Data ---------------------------------------------------------------------

def atom_types(system: AlanineDipeptide) -> Tensor:
    r"""One integer type per atom, :obj:`[22]`: atoms of a group of
    :obj:`EXCHANGEABLE` share one, every other atom has its own."""
    types: List[int] = []
    group_type: Dict[Tuple[str, str], int] = {}
    for atom in system.topology.atoms():
        key = (atom.residue.name, atom.name)
        group = next((names for residue, names in EXCHANGEABLE
                      if residue == key[0] and key[1] in names), None)
        if group is None:
            types.append(len(set(types)))
            continue
        shared = (key[0], group[0])
        if shared not in group_type:
            group_type[shared] = len(set(types))
        types.append(group_type[shared])
    return torch.tensor(types)


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


# Model --------------------------------------------------------------------

class TypedDynamics(torch.nn.Module):
    r"""An :class:`EGNNDynamics` whose node inputs are fixed one-hot atom
    types :math:`\mathbf{a}_i` (and :math:`t`), not flowed features:
    :math:`d\mathbf{x}/dt = \mathrm{EGNN}([\mathbf{a}, t], \mathbf{x})`,
    for graphs of :obj:`len(types)` nodes in a fixed order. Its feature
    velocity has width 0."""
    def __init__(self, types: Tensor, hidden_channels: int, num_layers: int,
                 num_radial: int, radial_cutoff: float):
        super().__init__()
        self.register_buffer('one_hot', torch.nn.functional.one_hot(
            types, int(types.max()) + 1).float())
        self.egnn = EGNNDynamics(3, self.one_hot.size(1), hidden_channels,
                                 num_layers, num_radial=num_radial,
                                 radial_cutoff=radial_cutoff)

    def reset_parameters(self):
        self.egnn.reset_parameters()

    def forward(self, t: Tensor, pos: Tensor, h: Tensor, edge_index: Tensor,
                batch: Tensor) -> Tuple[Tensor, Tensor]:
        num_graphs = pos.size(0) // self.one_hot.size(0)
        features = self.one_hot.to(pos.dtype).repeat(num_graphs, 1)
        dpos, _ = self.egnn(t, pos, features, edge_index, batch)
        return dpos, pos.new_zeros(pos.size(0), 0)


class AlanineFlow(ENFlow):
    r"""An :class:`ENFlow` on the positions of alanine dipeptide (Angstrom)
    with :class:`TypedDynamics`; its :meth:`flow_inputs` carry the atom
    types, so that flow matching permutes only atoms of one type."""
    def __init__(self, types: Tensor, hidden_channels: int = 64,
                 num_layers: int = 4, num_radial: int = 0,
                 radial_cutoff: float = 8.0):
        super().__init__(3, dynamics=TypedDynamics(
            types, hidden_channels, num_layers, num_radial, radial_cutoff))
        self.register_buffer('types', types.clone())

    def flow_inputs(self, data: Any) -> FlowInputs:
        inputs = super().flow_inputs(data)
        if inputs.pos.size(0) != inputs.num_graphs * self.types.numel():
            raise ValueError(f'Every graph must have {self.types.numel()} '
                             f'atoms in the topology order')
        return inputs._replace(
            node_type=self.types.repeat(inputs.num_graphs))


# Chirality, free energies -------------------------------------------------

def fix_chirality(pos: Tensor, system: AlanineDipeptide
                  ) -> Tuple[Tensor, Tensor]:
    r"""Reflects the configurations :obj:`[B, 22, 3]` with D chirality at
    the alpha carbon (:math:`x \mapsto -x`) and keeps L ones. Returns the
    configurations, all L, and the mask :obj:`[B]` of those reflected.

    For a reflection-invariant flow density :math:`q`, the result has the
    density :math:`2 q(\mathbf{x})` on L configurations, so the
    log-weights :math:`-u - \log q` change by the constant :math:`-\ln 2`
    only (:math:`u` is reflection invariant)."""
    reflected = system.chirality(pos) < 0
    return torch.where(reflected[:, None, None], mirror(pos), pos), reflected


def basin_masks(phi_psi: Tensor) -> Tuple[Tensor, Tensor]:
    r"""Masks :obj:`[B]` of the :math:`\alpha_R` and :math:`\beta` /
    :math:`C_{7eq}` basins: :math:`\phi < 0` and :math:`-2.1 < \psi < 1`
    rad, or :math:`\phi < 0` and the other :math:`\psi` (as in
    :func:`alanine_dipeptide_md.basin_populations`)."""
    phi, psi = phi_psi.unbind(-1)
    alpha = (phi < 0) & (psi > -2.1) & (psi < 1.0)
    return alpha, (phi < 0) & ~alpha


def delta_f(phi_psi: Tensor, weights: Optional[Tensor] = None) -> float:
    r"""The free-energy difference :math:`\Delta F = -\ln(p_{\alpha_R} /
    p_\beta)` in :math:`k_B T`, from (weighted) frames; :math:`\pm\infty`
    if a basin is empty."""
    if weights is None:
        weights = torch.ones(phi_psi.size(0), dtype=torch.float64)
    alpha, beta = basin_masks(phi_psi)
    p_alpha = float(weights[alpha].sum())
    p_beta = float(weights[beta].sum())
    if p_alpha == 0 or p_beta == 0:
        return math.inf if p_alpha == 0 else -math.inf
    return -math.log(p_alpha / p_beta)


def bootstrap_delta_f(phi_psi: Tensor, log_weights: Optional[Tensor] = None,
                      num_resamples: int = 200, block: int = 1,
                      seed: int = 0) -> Tuple[float, float]:
    r""":func:`delta_f` with self-normalised weights
    :math:`w_k \propto e^{\log w_k}` and its bootstrap standard error over
    :obj:`num_resamples` resamples of contiguous blocks of :obj:`block`
    frames (1 for independent samples; longer for correlated MD
    frames)."""
    weights = None if log_weights is None else \
        torch.softmax(log_weights.double(), 0)
    value = delta_f(phi_psi, weights)
    num_blocks = max(phi_psi.size(0) // block, 1)
    generator = torch.Generator().manual_seed(seed)
    estimates = []
    for _ in range(num_resamples):
        start = torch.randint(num_blocks, (num_blocks, ),
                              generator=generator) * block
        index = (start[:, None] + torch.arange(block)).flatten()
        index = index[index < phi_psi.size(0)]
        estimates.append(delta_f(phi_psi[index], None if weights is None
                                 else weights[index]))
    finite = torch.tensor([e for e in estimates if math.isfinite(e)])
    stderr = float(finite.std()) if finite.numel() > 1 else math.nan
    return value, stderr


def free_energy_surface(phi_psi: Tensor, weights: Optional[Tensor] = None,
                        bins: int = 60) -> np.ndarray:
    r"""The Ramachandran free energy :math:`F = -\ln p(\phi, \psi)` in
    :math:`k_B T` on a :obj:`bins` x :obj:`bins` grid over
    :math:`[-\pi, \pi)^2`, shifted to a minimum of 0 (:math:`+\infty` in
    empty bins)."""
    counts, _, _ = np.histogram2d(
        phi_psi[:, 0].numpy(), phi_psi[:, 1].numpy(), bins=bins,
        range=[[-math.pi, math.pi]] * 2,
        weights=None if weights is None else weights.numpy())
    with np.errstate(divide='ignore'):
        free = -np.log(counts / counts.sum())
    return free - free[np.isfinite(free)].min()


# Figures ------------------------------------------------------------------

def plot_ramachandran(surfaces: Dict[str, np.ndarray], path: str) -> None:
    r"""One panel per free-energy surface, :math:`\phi` horizontal."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(1, len(surfaces),
                                figsize=(4.2 * len(surfaces), 3.8))
    extent = [-math.pi, math.pi, -math.pi, math.pi]
    for axis, (title, free) in zip(axes, surfaces.items()):
        image = axis.imshow(np.ma.masked_invalid(free.T), origin='lower',
                            extent=extent, cmap='viridis', vmin=0, vmax=10)
        axis.set(title=title, xlabel=r'$\phi$ (rad)', ylabel=r'$\psi$ (rad)')
    figure.colorbar(image, ax=list(axes), label=r'$F$ ($k_BT$)')
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format='png', dpi=120)
    plt.close(figure)


def plot_energies(md: Tensor, flow: Tensor, weights: Tensor,
                  path: str) -> None:
    r"""Histograms of the reduced energies of MD test frames and of finite
    flow samples, raw and reweighted."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    finite = torch.isfinite(flow)
    lo = float(md.min()) - 10
    hi = float(torch.quantile(md, 0.999)) + 40
    bins = np.linspace(lo, hi, 80)
    figure, axis = plt.subplots(figsize=(5.5, 3.8))
    axis.hist(md.numpy(), bins, density=True, alpha=0.5, label='MD (test)')
    axis.hist(flow[finite].numpy(), bins, density=True, histtype='step',
              label='flow, raw')
    with np.errstate(invalid='ignore'):  # all weight outside the range
        axis.hist(flow[finite].numpy(), bins, density=True,
                  histtype='step', weights=weights[finite].numpy(),
                  label='flow, reweighted')
    axis.set(xlabel=r'$u = E / k_BT$', ylabel='density')
    axis.legend()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format='png', dpi=120, bbox_inches='tight')
    plt.close(figure)


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


def train(flow: AlanineFlow, splits: Dict[str, Tensor],
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
                progress=False)
    flow.load_state_dict(torch.load(osp.join(args.run_dir, 'best.pt')))
    return dict(steps=state.step, epochs=state.epoch,
                wall_clock_s=round(state.wall_clock_s, 1),
                best_epoch=state.best_epoch, best_valid_fm=state.best_valid,
                stopped_by_budget=state.stopped_by_budget,
                num_train=len(train_set))


def test_nll(flow: AlanineFlow, test_nm: Tensor) -> Dict[str, float]:
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


def draw(flow: AlanineFlow, system: AlanineDipeptide,
         args: argparse.Namespace) -> FlowSamples:
    r"""Samples with their log-densities (nm convention), L chirality and
    reduced energies."""
    solver = SolverOptions('midpoint', num_steps=args.sample_steps) \
        if args.sample_steps else None
    start = time.time()
    flow.eval()
    batch, log_q = flow.sample_with_log_prob(
        args.num_samples, NUM_ATOMS, batch_size=args.sample_batch,
        generator=torch.Generator().manual_seed(args.seed),
        trace=args.sample_trace, solver=solver)
    pos = batch.pos.view(-1, NUM_ATOMS, 3).double() / SCALE
    pos, reflected = fix_chirality(pos, system)
    seconds = time.time() - start
    with torch.no_grad():
        energy = system(pos)
    return FlowSamples(pos, log_q.double() + NM_SHIFT, energy, reflected,
                       seconds)


def evaluate(flow: AlanineFlow, system: AlanineDipeptide,
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
    weights = torch.softmax(log_w, 0)
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
                           flow_angles, weights)}, figures)
    with torch.no_grad():
        md_energy = system(test_nm)
    plot_energies(md_energy, samples.energy, weights,
                  osp.join(args.results, 'energies.png'))
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

def run_config(args: argparse.Namespace) -> Dict[str, Any]:
    r"""What defines a training run (compared on :obj:`--resume`)."""
    return dict(data=osp.abspath(args.data), unit='angstrom',
                hidden=args.hidden, layers=args.layers,
                num_radial=args.num_radial, batch_size=args.batch_size,
                lr=args.lr, ema=args.ema, seed=args.seed,
                num_valid=args.num_valid, max_train=args.max_train)


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
    flow = AlanineFlow(atom_types(system), args.hidden, args.layers,
                       args.num_radial)
    training = train(flow, splits, args)
    print(f'trained: {training}', flush=True)
    results = dict(settings=dict(vars(args), unit='angstrom',
                                 types=atom_types(system).tolist()),
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
