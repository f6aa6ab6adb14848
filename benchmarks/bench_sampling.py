r"""Sampling cost against sample quality for a trained QM9 molecule flow.

For every solver setting (fixed-step solvers with a number of steps, and
dopri5 at a tolerance) and every sampling temperature (``--temperatures``,
the scale of the latents) it draws the same number of molecules with the
same seed and reports the vector-field evaluations per solve (NFE), the
seconds, molecules per second, and atom and molecule stability, RDKit
validity and uniqueness. Then it times the ``torch-enf sample`` workload:
10,000 molecules with the fastest setting that keeps the quality. Run it on an
otherwise idle machine::

    python benchmarks/bench_sampling.py qm9 --threads 2 --num 1000 \
        --json docs/source/_static/results/sampling_qm9.json
    python benchmarks/bench_sampling.py qm9 --num 1000 --settings \
        midpoint:25 --temperatures 1 0.9 0.8 0.7 --throughput-num 0

A third field of a fixed-step setting is the step exponent of
:class:`~torch_enf.flows.SolverOptions` (``midpoint:25:2``: steps that
shrink toward the data).
"""
import argparse
import json
import platform
import time
from typing import Dict, List

import torch

from torch_enf.flows import EvaluationCount, SolverOptions
from torch_enf.metrics import molecule_sample_metrics
from torch_enf.pretrained import load_pretrained

SETTINGS = ['euler:20', 'euler:50', 'midpoint:10', 'midpoint:25',
            'midpoint:50', 'rk4:10', 'rk4:25', 'dopri5:1e-3', 'dopri5:1e-5']


def measure(model: torch.nn.Module, setting: str, num: int,
            batch_size: int, seed: int, temperature: float = 1.0) -> Dict:
    generator = torch.Generator().manual_seed(seed)
    counter = EvaluationCount()
    start = time.perf_counter()
    samples = model.sample(num, generator=generator, batch_size=batch_size,
                           temperature=temperature,
                           solver=SolverOptions.parse(setting),
                           counter=counter)
    seconds = time.perf_counter() - start
    num_solves = -(-num // (batch_size or num))
    result = dict(setting=setting, temperature=temperature,
                  nfe=counter.value / num_solves,
                  seconds=seconds, molecules_per_second=num / seconds)
    result.update(molecule_sample_metrics(samples))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('model', help='shipped model name or run folder')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--num', type=int, default=1000)
    parser.add_argument('--batch-size', type=int, default=250)
    parser.add_argument('--settings', nargs='+', default=SETTINGS)
    parser.add_argument('--temperatures', nargs='+', type=float,
                        default=[1.0], help='scales of the latents')
    parser.add_argument('--throughput', default='midpoint:25',
                        help='setting for the 10,000-molecule run')
    parser.add_argument('--throughput-num', type=int, default=10000)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--json', default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_pretrained(args.model)
    rows: List[Dict] = []
    for setting in args.settings:
        for temperature in args.temperatures:
            rows.append(measure(model, setting, args.num, args.batch_size,
                                args.seed, temperature))
            print(json.dumps(rows[-1]), flush=True)
    throughput = measure(model, args.throughput, args.throughput_num,
                         args.batch_size, args.seed + 1) \
        if args.throughput_num else None
    print('throughput', json.dumps(throughput), flush=True)
    report = dict(model=args.model, threads=args.threads,
                  machine=platform.processor() or platform.machine(),
                  torch=torch.__version__, rows=rows, throughput=throughput)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(report, f, indent=2)


if __name__ == '__main__':
    main()
