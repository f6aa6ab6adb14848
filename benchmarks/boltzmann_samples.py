r"""Importance sampling of a trained flow with a known energy (the particle
systems, alanine dipeptide) in resumable chunks.

Draws ``--num`` flow samples with exact :math:`\log q` (chunks of
``--chunk``, each with its own seed, saved as ``OUT/chunk-K.pt`` as soon as
it is done, so a killed run resumes where it stopped and several processes
may share the work with ``--part I --parts P``, or one join a running
one from the other end with ``--reverse``), then reports from all the
chunks found the effective sample size, :math:`\log Z` and the entropy
floor :math:`H(p)` of the test data with its bracket
(:mod:`torch_enf.boltzmann`), and the task's own metrics of reweighted
samples (alanine dipeptide: the reweighted basin free energy and the
Ramachandran surfaces, ``--pictures``). The energy and the test data are
the model's task's::

    python benchmarks/boltzmann_samples.py runs/lj13-fm-10000 \
        --num 10000 --out runs/lj13-fm-10000-is --part 0 --parts 2 &
    python benchmarks/boltzmann_samples.py runs/lj13-fm-10000 \
        --num 10000 --out runs/lj13-fm-10000-is --part 1 --parts 2
    python benchmarks/boltzmann_samples.py runs/lj13-fm-10000 \
        --num 10000 --out runs/lj13-fm-10000-is --summary \
        --test-nll 18.59 --json lj13_is.json

``--test-nll`` (the model's test NLL, e.g. from its ``results.json``) is
the upper end of the bracket. ``--data`` gives the data of tasks that read
a file (the MD trajectory of ``alanine-dipeptide``); ``--solver midpoint
--num-steps K`` draws with a fixed-step solver instead of dopri5 at
``--tol`` (its error enters :math:`\log q` and so the weights; a grid
refined toward the data, ``--step-exponent 1.5``, makes it far smaller for
alanine dipeptide, see ``alanine_diagnostics.py``). ``--temperature``
:math:`\tau < 1` draws from the flow's tempered distribution (latents
scaled by :math:`\tau`) with its exact density, so the weights stay
unbiased; the chunks of one ``--out`` folder share one temperature.
"""
import argparse
import json
import math
import os
import os.path as osp
import time

import torch

from torch_enf.boltzmann import (ImportanceSamples, entropy_bracket,
                                 importance_weights, log_partition_function)
from torch_enf.flows import FIXED_STEP_SOLVERS, SolverOptions
from torch_enf.pretrained import load_model
from torch_enf.storage import atomic_save
from torch_enf.tasks import DataConfig
from torch_enf.utils import json_safe


def chunk_path(out: str, index: int) -> str:
    return osp.join(out, f'chunk-{index}.pt')


def sampler(args: argparse.Namespace) -> SolverOptions:
    if args.solver is None:
        return SolverOptions(rtol=args.tol, atol=args.tol)
    return SolverOptions(args.solver, num_steps=args.num_steps,
                         step_exponent=args.step_exponent)


def draw_chunks(args: argparse.Namespace) -> None:
    loaded = load_model(args.model)
    energy = loaded.task.energy
    num_chunks = math.ceil(args.num / args.chunk)
    indices = range(args.part, num_chunks, args.parts)
    for index in reversed(indices) if args.reverse else indices:
        path = chunk_path(args.out, index)
        if osp.exists(path):
            continue
        size = min(args.chunk, args.num - index * args.chunk)
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(args.seed + index)
        draw = importance_weights(loaded.model, energy, size,
                                  generator=generator, solver=sampler(args),
                                  temperature=args.temperature)
        atomic_save(dict(log_q=draw.log_q, energy=draw.energy,
                         positions=draw.positions,
                         temperature=args.temperature,
                         seconds=time.perf_counter() - start), path)
        print(f'chunk {index}: {size} samples in '
              f'{time.perf_counter() - start:.0f} s', flush=True)


def summary(args: argparse.Namespace) -> dict:
    loaded = load_model(args.model)
    task = loaded.task
    chunks = [torch.load(chunk_path(args.out, index), weights_only=True)
              for index in range(math.ceil(args.num / args.chunk))
              if osp.exists(chunk_path(args.out, index))]
    if not chunks:
        raise SystemExit(f'No chunks in {args.out}')
    temperatures = {c['temperature'] for c in chunks}
    if temperatures != {args.temperature}:
        raise SystemExit(f'The chunks in {args.out} were drawn at '
                         f'temperatures {sorted(temperatures)}, not '
                         f'--temperature {args.temperature}')
    log_q = torch.cat([c['log_q'] for c in chunks]).double()
    energy = torch.cat([c['energy'] for c in chunks]).double()
    log_weights = -energy - log_q
    log_z, log_z_stderr = log_partition_function(log_weights)
    test = task.datasets(DataConfig(root=args.root, files=args.data),
                         progress=False).test
    test_energy = task.energy(task.stack_positions(test).double())
    mean_log_q_test = torch.tensor(-args.test_nll, dtype=torch.float64)
    bracket = entropy_bracket(test_energy, mean_log_q_test, log_weights)
    results = dict(
        model=args.model, task=task.name, num_samples=log_q.numel(),
        sampler=sampler(args).to_dict(), temperature=args.temperature,
        ess=bracket.ess, log_z=log_z,
        log_z_stderr=log_z_stderr,
        mean_energy_test=float(test_energy.mean()),
        num_test=test_energy.numel(), entropy=bracket.entropy,
        entropy_stderr=bracket.stderr, entropy_lower=bracket.lower,
        num_infinite_energy=int(torch.isinf(energy).sum()),
        core_seconds=sum(c['seconds'] for c in chunks),
        entropy_upper=bracket.upper, nll_minus_entropy=bracket.kl)
    if all('positions' in c for c in chunks):
        positions = torch.cat([c['positions'] for c in chunks])
        draw = ImportanceSamples(None, positions, log_q, energy,
                                 log_weights, results['num_infinite_energy'])
        os.makedirs(args.pictures, exist_ok=True)
        results.update(task.reweighted_metrics(draw, test, args.pictures))
    results = json_safe(results)
    print(json.dumps(results, indent=2))
    if args.json:
        atomic_save(results, args.json)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('model', help='run folder, checkpoint or model name')
    parser.add_argument('--num', type=int, default=10000)
    parser.add_argument('--chunk', type=int, default=500)
    parser.add_argument('--tol', type=float, default=1e-4)
    parser.add_argument('--solver', choices=FIXED_STEP_SOLVERS,
                        default=None, help='a fixed-step sampler instead '
                        'of dopri5 at --tol')
    parser.add_argument('--num-steps', type=int, default=None)
    parser.add_argument('--step-exponent', type=float, default=1.0,
                        help='grid t_k = (k/K)^p of the fixed-step sampler')
    parser.add_argument('--temperature', type=float, default=1.0,
                        help='scale of the latents; the weights use the '
                        'tempered density')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--part', type=int, default=0)
    parser.add_argument('--parts', type=int, default=1)
    parser.add_argument('--reverse', action='store_true',
                        help='draw the chunks last first (a helper process '
                        'that joins a running one)')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--root', default='data')
    parser.add_argument('--data', default=None,
                        help="the task's data file, where it reads one")
    parser.add_argument('--out', required=True)
    parser.add_argument('--pictures', default=None,
                        help='folder of the pictures (default: --out)')
    parser.add_argument('--summary', action='store_true',
                        help='only report on the chunks found')
    parser.add_argument('--test-nll', type=float, required=True,
                        help="the model's test NLL (upper end of the "
                        "bracket)")
    parser.add_argument('--json', default=None)
    args = parser.parse_args()
    if args.num < 1 or args.chunk < 1 or not 0 <= args.part < args.parts:
        parser.error('--num and --chunk must be positive and 0 <= --part < '
                     '--parts')
    if not args.temperature > 0:
        parser.error('--temperature must be positive')
    if (args.solver is None) != (args.num_steps is None) or \
            (args.num_steps is not None and args.num_steps < 1):
        parser.error('--solver and a positive --num-steps go together')
    args.pictures = args.pictures or args.out
    torch.set_num_threads(args.threads)
    if not args.summary:
        os.makedirs(args.out, exist_ok=True)
        draw_chunks(args)
    summary(args)


if __name__ == '__main__':
    main()
