r"""Cost and accuracy of exact-trace test NLLs of a trained particle flow.

Evaluates the exact NLL of the first ``--num`` test configurations for every
combination of batch size and dopri5 tolerance, and reports seconds, NLL,
standard error and NFE, so that the fastest setting whose NLL differs from
the tightest by less than 0.01 nats can be chosen. With ``--processes P``
the configurations are split into P contiguous shards scored by P worker
processes of ``--threads`` threads each (one per core is the fastest way to
use a small CPU). Run it on an otherwise idle machine::

    python benchmarks/bench_exact_nll.py runs/lj13-fm-1000 --num 1000 \
        --processes 2 --threads 1 --batch-sizes 100 --tols 1e-4 1e-5 \
        --json docs/source/_static/results/exact_nll_lj13_fm_1000.json
"""
import argparse
import json
import multiprocessing
import time
from typing import List, Tuple

import torch
from torch_geometric.loader import DataLoader

from torch_enf.datasets import PARTICLE_SYSTEMS as SYSTEMS
from torch_enf.pretrained import load_model, read_model
from torch_enf.evaluation import evaluate_nll
from torch_enf.flows import SolverOptions


def score_shard(job: Tuple[str, str, int, int, int, float, int]
                ) -> Tuple[torch.Tensor, float]:
    r"""The exact NLL of test configurations :obj:`start` to :obj:`stop`
    and the mean NFE of their solves (run in a worker process)."""
    model, root, start, stop, batch_size, tol, threads = job
    torch.set_num_threads(threads)
    found = load_model(model)
    system_name, flow = found.task.name, found.model
    test = SYSTEMS[system_name](f'{root}/{system_name}', 'test',
                                progress=False)[start:stop]
    estimate = evaluate_nll(flow, DataLoader(test, batch_size=batch_size),
                            'exact', SolverOptions(rtol=tol, atol=tol),
                            progress=False)
    return estimate.values, estimate.num_evals


def shards(num: int, processes: int) -> List[Tuple[int, int]]:
    bounds = [round(k * num / processes) for k in range(processes + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('model', help='run folder or model file')
    parser.add_argument('--root', default='data')
    parser.add_argument('--num', type=int, default=1000)
    parser.add_argument('--threads', type=int, default=1,
                        help='threads per process')
    parser.add_argument('--processes', type=int, default=1)
    parser.add_argument('--batch-sizes', type=int, nargs='+',
                        default=[100, 250, 500])
    parser.add_argument('--tols', type=float, nargs='+',
                        default=[1e-5, 1e-4, 1e-3])
    parser.add_argument('--json', default=None)
    args = parser.parse_args()
    system_name = read_model(args.model).task['name']
    rows = []
    context = multiprocessing.get_context('spawn')
    with context.Pool(args.processes) as pool:
        for tol in sorted(args.tols):
            for batch_size in args.batch_sizes:
                jobs = [(args.model, args.root, start, stop, batch_size, tol,
                         args.threads)
                        for start, stop in shards(args.num, args.processes)]
                start_time = time.perf_counter()
                results = pool.map(score_shard, jobs)
                seconds = time.perf_counter() - start_time
                values = torch.cat([values for values, _ in results])
                nfe = sum(n for _, n in results) / len(results)
                rows.append(dict(
                    tol=tol, batch_size=batch_size, seconds=seconds,
                    nll=float(values.mean()),
                    stderr=float(values.std() / values.numel() ** 0.5),
                    nfe=nfe, num=values.numel()))
                print(json.dumps(rows[-1]), flush=True)
    reference = min(rows, key=lambda r: r['tol'])['nll']
    for row in rows:
        row['nll_change'] = row['nll'] - reference
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(model=args.model, system=system_name,
                           processes=args.processes, threads=args.threads,
                           rows=rows), f, indent=2)


if __name__ == '__main__':
    main()
