r"""Why the importance weights of an alanine-dipeptide flow collapse: the
energies and bond lengths of its samples against MD, and the error of the
log-densities of fixed-step samplers against an accurate solve.

* **Energies and bonds.** ``--num`` samples (L chirality, 10 midpoint steps
  on the grid of ``--step-exponent``): quantiles of their reduced energies
  against those of MD frames, and the mean absolute deviation of their
  bond lengths from the MD mean against that of the MD frames themselves.
* **Sampler error.** ``--num-log-q`` samples drawn with their log-density
  by each ``--samplers`` setting (``midpoint:K`` or ``midpoint:K:P``) and
  scored again by dopri5 at :math:`10^{-6}` (exact trace): the log-density
  error enters every importance log-weight.

::

    python benchmarks/alanine_diagnostics.py runs/alanine \
        --data data/alanine/md_20ns_seed0.npz --json diagnostics.json
"""
import argparse
import json
import time
from typing import Dict, List

import torch

from torch_enf.flows import SolverOptions
from torch_enf.pretrained import load_model
from torch_enf.storage import atomic_save
from torch_enf.systems import load_trajectory

QUANTILES = (0.1, 0.5, 0.9)


def quantiles(values: torch.Tensor) -> List[float]:
    q = torch.quantile(values.double(), torch.tensor(QUANTILES,
                                                     dtype=torch.float64))
    return [round(float(v), 2) for v in q]


def energies_and_bonds(loaded, md: torch.Tensor, args) -> Dict:
    task, energy = loaded.task, loaded.task.energy
    samples = task.sample(loaded.model, args.num,
                          generator=torch.Generator().manual_seed(args.seed),
                          solver=SolverOptions('midpoint', num_steps=10,
                                               step_exponent=args.step_exponent))
    pos = samples.pos.view(args.num, 22, 3).double()
    bonds = torch.tensor([[a.index, b.index]
                          for a, b in energy.topology.bonds()])

    def lengths(x: torch.Tensor) -> torch.Tensor:
        return (x[:, bonds[:, 0]] - x[:, bonds[:, 1]]).norm(dim=-1)
    reference = lengths(md).mean(0)
    return dict(
        num_samples=args.num, num_md_frames=md.size(0),
        energy_quantiles=dict(q=list(QUANTILES), samples=quantiles(
            energy(pos)), md=quantiles(energy(md))),
        bond_deviation_angstrom=dict(
            samples=float((lengths(pos) - reference).abs().mean()),
            md=float((lengths(md) - reference).abs().mean())))


def sampler_errors(loaded, args) -> List[Dict]:
    accurate = SolverOptions(rtol=1e-6, atol=1e-6)
    rows = []
    for setting in args.samplers:
        start = time.perf_counter()
        samples, log_q = loaded.model.sample_with_log_prob(
            args.num_log_q, 22, solver=SolverOptions.parse(setting),
            generator=torch.Generator().manual_seed(args.seed))
        seconds = time.perf_counter() - start
        with torch.no_grad():
            error = log_q - loaded.model.log_prob(samples, 'exact',
                                                  solver=accurate)
        rows.append(dict(setting=setting, seconds=round(seconds, 1),
                         log_q_error_mean=float(error.mean()),
                         log_q_error_std=float(error.std()),
                         log_q_error_max=float(error.abs().max())))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('model', help='alanine-dipeptide run or model file')
    parser.add_argument('--data', required=True, help='MD trajectory .npz')
    parser.add_argument('--md-frames', type=int, default=200,
                        help='last frames of the trajectory to compare')
    parser.add_argument('--num', type=int, default=50)
    parser.add_argument('--step-exponent', type=float, default=1.5)
    parser.add_argument('--num-log-q', type=int, default=12)
    parser.add_argument('--samplers', nargs='+',
                        default=['midpoint:10', 'midpoint:10:1.5'])
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--json', default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    if loaded.task.name != 'alanine-dipeptide':
        parser.error(f'{args.model} is a {loaded.task.name} model')
    md = torch.from_numpy(load_trajectory(args.data).positions[
        -args.md_frames:]) * 10
    report = dict(model=args.model, **energies_and_bonds(loaded, md, args))
    print(json.dumps(report), flush=True)
    report['samplers'] = sampler_errors(loaded, args) \
        if args.num_log_q else []
    if args.json:
        atomic_save(report, args.json)


if __name__ == '__main__':
    main()
