r"""Cost of radius-graph E(n) flows against the particle count.

Lennard-Jones-like clusters of 13 to a few thousand particles at a fixed
number density (uniform in a ball, 0.8 particles per unit volume, cutoff
2.5), one configuration at a time, in the units a flow should see them:
divided by their standard deviation, with the cutoff divided alike (the
edges stay those of the fixed-density cluster). Unscaled, a large cluster
is far wider than the flow's standard Gaussian base, whose unit ball would
hold all the particles near :math:`t = 1`: every graph there would be
almost complete and sampling would cost :math:`O(M^2)`. For every size,
in a fresh process so that the peak memory (resident set) belongs to it
alone, it times

* the radius graph (cell list, or torch-cluster when installed),
* forward + backward of the EGNN vector field on that graph,
* one flow-matching training step (with and without the OT alignment),
* sampling one configuration with 20 midpoint steps (no trace),

and reports the edges and the peak memory. At fixed density the number of
edges grows linearly with the particles, and so should every cost::

    python benchmarks/bench_scale.py --threads 2 \
        --json docs/source/_static/results/scale.json \
        --plot docs/source/_static/results/scale.png
"""
import argparse
import json
import math
import multiprocessing
import resource
from typing import Callable, Dict, List

import torch
from bench_layers import median_seconds  # the sibling benchmark
from torch_geometric.data import Data

SIZES = [13, 55, 147, 309, 561, 1000, 2000, 4000]
DENSITY = 0.8
CUTOFF = 2.5


def ball(num: int, generator: torch.Generator) -> torch.Tensor:
    radius = (3 * num / (4 * math.pi * DENSITY)) ** (1 / 3)
    direction = torch.randn(num, 3, generator=generator)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    r = radius * torch.rand(num, 1, generator=generator) ** (1 / 3)
    pos = direction * r
    return pos - pos.mean(0)


def seconds(fn: Callable[[], None], repeats: int) -> float:
    return median_seconds(fn, repeats, warmup=1)


def measure(num: int, threads: int, repeats: int, queue) -> None:
    from torch_enf.flows import ENFlow, SolverOptions
    from torch_enf.nn import radius_graph
    from torch_enf.objectives import FlowMatching
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(num)
    pos = ball(num, generator)
    scale = float(pos.std())
    pos, cutoff = pos / scale, CUTOFF / scale
    batch = torch.zeros(num, dtype=torch.long)
    flow = ENFlow(3, hidden_channels=32, num_layers=3, graph=cutoff)
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-4)
    data = Data(pos=pos, batch=batch)
    edges = radius_graph(pos, cutoff, batch).size(1)

    def field() -> None:
        p = pos.clone().requires_grad_()
        t = torch.tensor(0.5)
        v, _ = flow.velocity(t, p, pos.new_zeros(num, 0), batch, 1)
        v.pow(2).sum().backward()

    def fm_step(align: bool) -> Callable[[], None]:
        objective = FlowMatching(align=align)

        def step() -> None:
            loss = objective(flow, data).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return step

    def sample() -> None:
        flow.sample(1, num, solver=SolverOptions('midpoint', num_steps=20))

    result = dict(
        particles=num, edges=edges,
        graph_s=seconds(lambda: radius_graph(pos, cutoff, batch), repeats),
        field_fwd_bwd_s=seconds(field, repeats),
        fm_step_s=seconds(fm_step(False), repeats),
        fm_step_aligned_s=seconds(fm_step(True), max(1, repeats // 2)),
        sample_s=seconds(sample, max(1, repeats // 2)))
    result['peak_rss_mib'] = resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(result)


def plot(rows: List[Dict], path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    particles = [r['particles'] for r in rows]
    for key, label in (('graph_s', 'radius graph'),
                       ('field_fwd_bwd_s', 'field forward+backward'),
                       ('fm_step_s', 'flow-matching step'),
                       ('fm_step_aligned_s', 'FM step with OT alignment'),
                       ('sample_s', 'sample (20 midpoint steps)')):
        axes[0].loglog(particles, [r[key] for r in rows], 'o-', label=label)
    scale = rows[0]['field_fwd_bwd_s'] / rows[0]['edges']
    axes[0].loglog(particles, [scale * r['edges'] for r in rows], 'k--',
                   label='proportional to edges')
    axes[0].set_xlabel('particles')
    axes[0].set_ylabel('seconds')
    axes[0].legend(fontsize=7)
    axes[1].loglog(particles, [r['peak_rss_mib'] for r in rows], 'o-')
    axes[1].set_xlabel('particles')
    axes[1].set_ylabel('peak resident memory (MiB)')
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--sizes', type=int, nargs='+', default=SIZES)
    parser.add_argument('--json', default=None)
    parser.add_argument('--plot', default=None)
    args = parser.parse_args()
    context = multiprocessing.get_context('spawn')
    rows = []
    for num in args.sizes:
        queue = context.Queue()
        process = context.Process(target=measure, args=(
            num, args.threads, args.repeats, queue))
        process.start()
        rows.append(queue.get())
        process.join()
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(threads=args.threads, density=DENSITY,
                           cutoff=CUTOFF, rows=rows), f, indent=2)
    if args.plot:
        plot(rows, args.plot)


if __name__ == '__main__':
    main()
