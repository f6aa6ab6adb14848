r"""Eager speed of EGCL stacks on small graphs against the official EGNN
code, measured side by side in one process.

Workloads (batch of 100 fully connected graphs, float32, CPU):

* **DW4 EGNN, forward + backward**: 4 particles in 2D, 3 layers of width 32,
  one constant node feature; :class:`torch_enf.nn.EGNN` against the
  official :obj:`models/egnn_clean` EGNN with the same sizes.
* **N-body training step**: 5 charged particles in 3D, the EGNN paper's
  N-body model (4 velocity layers of width 64, edge attributes
  :math:`(q_i q_j, \|x_i - x_j\|^2)`), one Adam step on the mean squared
  error; :class:`torch_enf.nn.models.EGNNDynamicsPredictor` against the
  official :obj:`n_body_system/model.py` :obj:`EGNN_vel`.

The official code is imported from a checkout of
https://github.com/vgsatorras/egnn given by ``--official`` (it is not part
of this package). The two implementations alternate, ``--rounds`` times,
each timed as the median of ``--repeats`` calls, so that both see the same
machine load; the ratio of the medians is reported, with the number of
ATen operator calls per call (load-independent). Optionally
(``--compile``) the torch-enf modules compiled with
``torch.compile(fullgraph=True, options={'cpp_wrapper': True})``::

    git clone https://github.com/vgsatorras/egnn /tmp/egnn_official
    python benchmarks/bench_small_graphs.py --official /tmp/egnn_official \
        --threads 1 --json small_graphs.json
"""
import argparse
import importlib
import json
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch

from bench_layers import median_seconds
from torch_enf.nn import EGNN, full_edge_index
from torch_enf.nn.models import EGNNDynamicsPredictor
from torch_enf.nn.models.nbody import pair_features

NUM_GRAPHS = 100


def graph(num_nodes: int, n_dims: int, generator: torch.Generator):
    batch = torch.arange(NUM_GRAPHS).repeat_interleave(num_nodes)
    pos = torch.randn(batch.numel(), n_dims, generator=generator)
    return pos, batch, full_edge_index(batch)


def dw4_workloads(official, generator: torch.Generator
                  ) -> Dict[str, Callable[[], None]]:
    pos, _, edge_index = graph(4, 2, generator)
    h = torch.ones(pos.size(0), 1)
    ours = EGNN(1, 32, num_layers=3, out_channels=1)
    theirs = official.EGNN(1, 32, 1, n_layers=3)
    # The official layer aggregates at edge_index[0]; PyG's at [1].
    edges = [edge_index[1], edge_index[0]]

    def step(model, *args):
        def run():
            x = pos.clone().requires_grad_()
            h_out, x_out = model(h, x, *args)
            (h_out.sum() + x_out.pow(2).sum()).backward()
        return run
    return {'torch-enf': step(ours, edge_index),
            'official': step(theirs, edges, None),
            '_compile': lambda: step(_compiled(ours), edge_index)}


def nbody_workloads(official, generator: torch.Generator
                    ) -> Dict[str, Callable[[], None]]:
    pos, _, edge_index = graph(5, 3, generator)
    vel = torch.randn(pos.shape, generator=generator)
    charge = torch.randint(0, 2, (pos.size(0), 1),
                           generator=generator).float() * 2 - 1
    target = pos + torch.randn(pos.shape, generator=generator)
    ours = EGNNDynamicsPredictor()
    theirs = official.EGNN_vel(in_node_nf=1, in_edge_nf=2, hidden_nf=64,
                               n_layers=4, recurrent=True)
    edges = [edge_index[1], edge_index[0]]
    edge_attr = pair_features(pos, charge, edge_index)
    speed = vel.norm(dim=-1, keepdim=True)

    def train_step(model, forward):
        optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)

        def run():
            optimizer.zero_grad()
            loss = (forward(model) - target).pow(2).mean()
            loss.backward()
            optimizer.step()
        return run
    return {
        'torch-enf': train_step(
            ours, lambda m: m(pos, vel, charge, edge_index)),
        # The official layer updates its coordinate input in place.
        'official': train_step(
            theirs, lambda m: m(speed, pos.clone(), edges, vel, edge_attr)),
        '_compile': lambda: train_step(_compiled(ours), lambda m: m(
            pos, vel, charge, edge_index)),
    }


def _compiled(module: torch.nn.Module) -> torch.nn.Module:
    return torch.compile(module, fullgraph=True,
                         options={'cpp_wrapper': True})


def aten_calls(fn: Callable[[], None]) -> int:
    r"""The number of ATen operator calls of one call of :obj:`fn` (views
    included), a load-independent measure of eager per-call overhead."""
    fn()
    with torch.profiler.profile() as prof:
        fn()
    return sum(event.count for event in prof.key_averages()
               if event.key.startswith('aten::'))


def compare(workloads: Dict[str, Callable], rounds: int, repeats: int,
            compile_too: bool) -> Dict:
    names = ['torch-enf', 'official']
    runs = {name: workloads[name] for name in names}
    if compile_too:
        runs['torch-enf compiled'] = workloads['_compile']()
        names.append('torch-enf compiled')
    seconds: Dict[str, List[float]] = {name: [] for name in names}
    for _ in range(rounds):
        for name in names:
            seconds[name].append(median_seconds(runs[name], repeats,
                                                warmup=5))
    result = {name: {'ms': [round(1e3 * s, 3) for s in seconds[name]],
                     'median_ms': round(1e3 * statistics.median(
                         seconds[name]), 3)}
              for name in names}
    for name in ('torch-enf', 'official'):
        result[name]['aten calls'] = aten_calls(runs[name])
    official = result['official']['median_ms']
    for name in names:
        result[name]['speed-up over official'] = round(
            official / result[name]['median_ms'], 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--official', required=True,
                        help='a checkout of github.com/vgsatorras/egnn')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--repeats', type=int, default=50)
    parser.add_argument('--compile', action='store_true')
    parser.add_argument('--json', help='write the results here')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, args.official)
    clean = importlib.import_module('models.egnn_clean.egnn_clean')
    nbody = importlib.import_module('n_body_system.model')
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    results = {
        'machine': f'{platform.machine()}, {args.threads} thread(s), '
                   f'PyTorch {torch.__version__}',
        'date': time.strftime('%Y-%m-%d'),
        'DW4 EGNN fwd+bwd, batch 100': compare(
            dw4_workloads(clean, generator), args.rounds, args.repeats,
            args.compile),
        'N-body training step, batch 100': compare(
            nbody_workloads(nbody, generator), args.rounds, args.repeats,
            args.compile),
    }
    print(json.dumps(results, indent=1))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=1)


if __name__ == '__main__':
    main()
