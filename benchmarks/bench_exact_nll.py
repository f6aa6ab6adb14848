r"""Cost and accuracy of exact-trace test NLLs of a trained particle flow.

Evaluates the exact NLL of the first ``--num`` test configurations for every
combination of batch size and dopri5 tolerance, and reports seconds, NLL,
standard error and NFE, so that the fastest setting whose NLL differs from
the tightest by less than 0.01 nats can be chosen. Run it on an otherwise
idle machine::

    python benchmarks/bench_exact_nll.py runs/lj13-fm-sweep/n_train=1000 \
        --num 1000 --json docs/source/_static/results/exact_nll_lj13.json
"""
import argparse
import json
import time

import torch
from torch_geometric.loader import DataLoader

from torch_enf.experiments.particles import SYSTEMS
from torch_enf.pretrained import load_pretrained, read_model
from torch_enf.training import evaluate_nll


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('model', help='run folder or model file')
    parser.add_argument('--root', default='data')
    parser.add_argument('--num', type=int, default=1000)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--batch-sizes', type=int, nargs='+',
                        default=[100, 250, 500])
    parser.add_argument('--tols', type=float, nargs='+',
                        default=[1e-5, 1e-4, 1e-3])
    parser.add_argument('--json', default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    system_name = read_model(args.model).options['system']
    system = SYSTEMS[system_name]
    flow = load_pretrained(args.model)
    test = system(f'{args.root}/{system_name}', 'test')[:args.num]
    rows = []
    for tol in sorted(args.tols):
        for batch_size in args.batch_sizes:
            start = time.perf_counter()
            with flow.ode_options(rtol=tol, atol=tol):
                estimate = evaluate_nll(flow, DataLoader(
                    test, batch_size=batch_size), 'exact', progress=False)
            rows.append(dict(tol=tol, batch_size=batch_size,
                             seconds=time.perf_counter() - start,
                             nll=estimate.nll, stderr=estimate.stderr,
                             nfe=estimate.num_evals, num=estimate.num_graphs))
            print(json.dumps(rows[-1]), flush=True)
    reference = min(rows, key=lambda r: r['tol'])['nll']
    for row in rows:
        row['nll_change'] = row['nll'] - reference
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(model=args.model, system=system_name,
                           threads=args.threads, rows=rows), f, indent=2)


if __name__ == '__main__':
    main()
