r"""Throughput of the EGNN dynamics and of the E-NF on CPU-sized workloads.

Reports, for forward + backward of the EGNN vector field:

* QM9-like batches: 128 molecules with 3..29 atoms (mean about 18), fully
  connected, 6 layers, 64 hidden channels, node features of width 6;
* DW4 (4 particles in 2D) and LJ13 (13 particles in 3D) batches of 100,
  3 layers, 32 hidden channels;

(with ``--only compile``: the same three workloads eager, under
``torch.compile(fullgraph=True)`` and compiled with Inductor's C++ wrapper,
``options={'cpp_wrapper': True}``, which calls the compiled kernels from
C++ instead of Python; measured in one run), then one E-NF
training step on DW4 and LJ13 (batch 100, 3 layers, 32 hidden,
dopri5 with rtol = atol = 1e-4, Hutchinson trace, adjoint back-propagation),
split into the forward solve and the adjoint backward pass with their numbers
of function evaluations, and the seconds per exact-trace ``log_prob`` of a
batch. Run it on an otherwise idle machine::

    python benchmarks/bench_layers.py --threads 2
"""
import argparse
import json
import platform
import time
from typing import Callable, Dict, List, Optional

import torch
from torch_geometric.data import Batch, Data

from torch_enf.elements import QM9_ATOMIC_NUMBERS
from torch_enf.flows import EGNNDynamics, ENFlow, EvaluationCount, \
    MoleculeFlow, NodeCountDistribution
from torch_enf.nn import full_edge_index
from torch_enf.objectives import TRAINING_SOLVER, FlowMatching


def qm9_like_sizes(num_graphs: int, generator: torch.Generator) -> List[int]:
    r"""Molecule sizes between 3 and 29 atoms with mean about 18, as in
    QM9."""
    sizes = torch.normal(18.0, 3.0, (num_graphs, ), generator=generator)
    return sizes.round().clamp(3, 29).long().tolist()


def random_batch(sizes: List[int], n_dims: int, channels: int,
                 generator: torch.Generator) -> Batch:
    data_list = []
    for size in sizes:
        pos = 1.5 * torch.randn(size, n_dims, generator=generator)
        data = Data(pos=pos - pos.mean(0))
        if channels:
            data.h = torch.randn(size, channels, generator=generator)
        data_list.append(data)
    return Batch.from_data_list(data_list)


def random_molecules(sizes: List[int], generator: torch.Generator) -> Batch:
    r"""Random QM9-like molecules: :obj:`h` holds the one-hot class and the
    atomic number (the charge) of every atom."""
    batch = random_batch(sizes, 3, 0, generator)
    classes = torch.randint(len(QM9_ATOMIC_NUMBERS), (batch.num_nodes, ),
                            generator=generator)
    charge = torch.tensor(QM9_ATOMIC_NUMBERS)[classes].unsqueeze(-1)
    batch.h = torch.cat([torch.nn.functional.one_hot(
        classes, len(QM9_ATOMIC_NUMBERS)), charge], dim=-1).float()
    return batch


def median_seconds(fn: Callable[[], None], repeats: int,
                   warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def dynamics_throughput(batch: Batch, n_dims: int, channels: int,
                        hidden: int, layers: int, repeats: int,
                        compile_options: Optional[Dict] = None) -> Dict:
    r"""Forward + backward of a fresh :class:`EGNNDynamics`, eager or
    (with :obj:`compile_options`, Inductor's options) compiled."""
    dynamics = EGNNDynamics(n_dims, channels, hidden, layers)
    if compile_options is not None:
        dynamics = torch.compile(dynamics, fullgraph=True,
                                 options=compile_options)
    edge_index = full_edge_index(batch.batch)
    t = torch.tensor(0.5)
    h = batch.h if channels else batch.pos.new_zeros(batch.num_nodes, 0)

    def step():
        pos = batch.pos.clone().requires_grad_()
        v_pos, v_h = dynamics(t, pos, h, edge_index, batch.batch)
        (v_pos.pow(2).sum() + v_h.pow(2).sum()).backward()

    warmup_start = time.perf_counter()
    step()  # compiles, when asked to
    first_call_seconds = time.perf_counter() - warmup_start
    seconds = median_seconds(step, repeats)
    return dict(first_call_seconds=first_call_seconds,
                graphs=batch.num_graphs, nodes=batch.num_nodes,
                edges=edge_index.size(1), seconds=seconds,
                graphs_per_second=batch.num_graphs / seconds)


def training_step(flow: ENFlow, batch: Batch, repeats: int) -> Dict:
    flow.train()
    optimizer = torch.optim.AdamW(flow.parameters(), lr=5e-4)
    records = []

    def step():
        start = time.perf_counter()
        counter = EvaluationCount()
        loss = -flow.log_prob(batch, trace='hutchinson',
                              solver=TRAINING_SOLVER, counter=counter).mean()
        forward_evals = counter.value
        middle = time.perf_counter()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        end = time.perf_counter()
        records.append((middle - start, end - middle, forward_evals,
                        counter.value - forward_evals))

    median_seconds(step, repeats, warmup=1)
    records = records[1:]
    fwd = sorted(r[0] for r in records)[len(records) // 2]
    bwd = sorted(r[1] for r in records)[len(records) // 2]
    fwd_evals = sum(r[2] for r in records) / len(records)
    bwd_evals = sum(r[3] for r in records) / len(records)
    return dict(seconds=fwd + bwd, forward_seconds=fwd,
                backward_seconds=bwd, forward_evals=fwd_evals,
                backward_evals=bwd_evals,
                ms_per_forward_eval=1e3 * fwd / fwd_evals,
                ms_per_backward_eval=1e3 * bwd / bwd_evals)


def flow_matching_step(batch: Batch, repeats: int) -> Dict:
    r"""Seconds per flow-matching optimiser step of a QM9 MoleculeFlow (6
    layers, 64 wide) in float32 and under bfloat16 autocast, and the
    seconds of the OT alignment of its base samples alone."""
    sizes = torch.bincount(batch.batch)
    model = MoleculeFlow(NodeCountDistribution.from_num_nodes(sizes),
                         dequantizer='argmax')
    objective = FlowMatching(time_exponent=2.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(dtype=None):
        optimizer.zero_grad()
        with torch.autocast('cpu', torch.bfloat16, enabled=dtype is not None):
            loss = objective(model, batch).mean()
        loss.backward()
        optimizer.step()

    inputs = model.flow_inputs(batch)
    return dict(
        float32_seconds=median_seconds(step, repeats),
        bfloat16_seconds=median_seconds(lambda: step(torch.bfloat16),
                                        repeats),
        alignment_seconds=median_seconds(
            lambda: objective.base_samples(model, inputs), repeats))


def exact_log_prob_seconds(flow: ENFlow, batch: Batch, repeats: int) -> Dict:
    flow.eval()
    counter = EvaluationCount()

    def solve():
        counter.value = 0
        flow.log_prob(batch, trace='exact', counter=counter)

    with torch.no_grad():
        seconds = median_seconds(solve, repeats, warmup=1)
    return dict(seconds=seconds, evals=counter.value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=7)
    parser.add_argument('--only', choices=['layers', 'compile', 'fm',
                                           'steps', 'exact'],
                        nargs='*', default=['layers', 'fm', 'steps', 'exact'])
    parser.add_argument('--json', default=None,
                        help='write the results to this file as well')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)

    qm9 = random_batch(qm9_like_sizes(128, gen), 3, 6, gen)
    dw4 = random_batch([4] * 100, 2, 0, gen)
    lj13 = random_batch([13] * 100, 3, 0, gen)
    results = dict(machine=platform.processor() or platform.machine(),
                   threads=args.threads, torch=torch.__version__)

    if 'layers' in args.only:
        results['egnn_qm9'] = dynamics_throughput(qm9, 3, 6, 64, 6,
                                                  args.repeats)
        results['egnn_dw4'] = dynamics_throughput(dw4, 2, 0, 32, 3,
                                                  args.repeats)
        results['egnn_lj13'] = dynamics_throughput(lj13, 3, 0, 32, 3,
                                                   args.repeats)
        for key in ('egnn_qm9', 'egnn_dw4', 'egnn_lj13'):
            r = results[key]
            print(f"{key:10s} fwd+bwd {r['seconds'] * 1e3:8.2f} ms  "
                  f"{r['graphs_per_second']:9.1f} graphs/s  "
                  f"({r['nodes']} nodes, {r['edges']} edges)")

    if 'compile' in args.only:
        workloads = dict(qm9=(qm9, 3, 6, 64, 6), dw4=(dw4, 2, 0, 32, 3),
                         lj13=(lj13, 3, 0, 32, 3))
        for name, workload in workloads.items():
            eager = dynamics_throughput(*workload, args.repeats)
            compiled = dynamics_throughput(*workload, args.repeats, {})
            cpp = dynamics_throughput(*workload, args.repeats,
                                      {'cpp_wrapper': True})
            results[f'compile_{name}'] = dict(
                eager_seconds=eager['seconds'],
                compiled_seconds=compiled['seconds'],
                compile_seconds=compiled['first_call_seconds'],
                speedup=eager['seconds'] / compiled['seconds'],
                cpp_wrapper_seconds=cpp['seconds'],
                cpp_wrapper_compile_seconds=cpp['first_call_seconds'],
                cpp_wrapper_speedup=eager['seconds'] / cpp['seconds'])
            print(f"{name:5s} fwd+bwd eager {eager['seconds'] * 1e3:8.2f} ms"
                  f"  compiled {compiled['seconds'] * 1e3:8.2f} ms "
                  f"({eager['seconds'] / compiled['seconds']:.2f}x)  "
                  f"C++ wrapper {cpp['seconds'] * 1e3:8.2f} ms "
                  f"({eager['seconds'] / cpp['seconds']:.2f}x)")

    if 'fm' in args.only:
        r = flow_matching_step(random_molecules(qm9_like_sizes(128, gen),
                                                gen), args.repeats)
        results['fm_step_qm9'] = r
        print(f"fm step qm9 float32 {r['float32_seconds']:.3f} s  bfloat16 "
              f"{r['bfloat16_seconds']:.3f} s  alignment "
              f"{r['alignment_seconds'] * 1e3:.1f} ms "
              f"({r['alignment_seconds'] / r['float32_seconds']:.1%} of a "
              f"float32 step)")

    flows = {
        'dw4': (ENFlow(2, hidden_channels=32, num_layers=3), dw4),
        'lj13': (ENFlow(3, hidden_channels=32, num_layers=3), lj13),
    }
    if 'steps' in args.only:
        for name, (flow, batch) in flows.items():
            r = training_step(flow, batch, max(3, args.repeats // 2))
            results[f'train_step_{name}'] = r
            print(f"train step {name:5s} {r['seconds']:.3f} s  (forward "
                  f"{r['forward_seconds']:.3f} s / {r['forward_evals']:.0f} "
                  f"evals = {r['ms_per_forward_eval']:.1f} ms, backward "
                  f"{r['backward_seconds']:.3f} s / "
                  f"{r['backward_evals']:.0f} evals = "
                  f"{r['ms_per_backward_eval']:.1f} ms)")
    if 'exact' in args.only:
        for name, (flow, batch) in flows.items():
            r = exact_log_prob_seconds(flow, batch, 3)
            results[f'exact_log_prob_{name}'] = r
            print(f"exact log_prob {name:5s} {r['seconds']:.3f} s per batch "
                  f"of {batch.num_graphs} ({r['evals']} evals)")
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=2)


if __name__ == '__main__':
    main()
