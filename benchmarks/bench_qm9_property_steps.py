r"""Training-step time of the QM9 property models of
``examples/qm9_property.py`` (the EGNN regressor, PyG's SchNet and
DimeNet++) in float32 and under bfloat16 autocast (``--bf16``), measured
in one process on the same batches.

Each model takes one Adam step on the L1 loss per batch of ``--steps``
batches of 96 training molecules drawn at random (seed 0), as training
draws them: the split's first molecules are its smallest (13 atoms on
average against 18), so batches in the split's order would time steps
over about half the pairs of a training batch. Its step time is the
median over the steps after the first two, the best of ``--rounds``
rounds that alternate the two precisions so that both see the same
machine load. The ratio says how many more steps bfloat16 buys in the
same wall-clock budget; the mean training loss over the steps, from the
same initialisation in both precisions, says whether they learn alike::

    python benchmarks/bench_qm9_property_steps.py --threads 1 \
        --json qm9_property_steps.json
"""
import argparse
import importlib.util
import json
import os.path as osp
import statistics
import time
from typing import Dict, List, Tuple

import torch
from torch import Tensor
from torch_geometric.loader import DataLoader

from torch_enf.datasets import QM9Properties, resolve_target
from torch_enf.io import atomic_path

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
HOMO = resolve_target('homo').index  # its column of QM9Properties.y
BATCH_SIZE = 96  # the example's default


def load_example():
    r"""``examples/qm9_property.py`` as a module (its models and inputs)."""
    spec = importlib.util.spec_from_file_location(
        'qm9_property_example', osp.join(ROOT, 'examples', 'qm9_property.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_steps(example, name: str, batches: List, target: Tensor,
                bf16: bool) -> Tuple[float, float]:
    r"""Trains a freshly built model (seed 0) for one step per batch on the
    L1 loss of the normalised :obj:`target` (one value per molecule of
    each batch); returns the median step time and the mean loss."""
    torch.manual_seed(0)
    model, predict = example.build_model(name)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    times, losses = [], []
    for data, y in zip(batches, target.split(BATCH_SIZE)):
        tick = time.perf_counter()
        loss = example.train_step(model, predict, optimizer, data, y, bf16)
        times.append(time.perf_counter() - tick)
        losses.append(loss.item())
    return statistics.median(times[2:]), statistics.mean(losses)


def main() -> Dict:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--models', nargs='+',
                   default=['egnn', 'schnet', 'dimenet++'])
    p.add_argument('--root', default=osp.join(ROOT, 'data', 'qm9_properties'))
    p.add_argument('--steps', type=int, default=12)
    p.add_argument('--rounds', type=int, default=2)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--json', default=None)
    args = p.parse_args()
    if args.steps < 3:
        p.error(f'--steps must be at least 3 (got {args.steps}): the first '
                f'two are warm-up')
    torch.set_num_threads(args.threads)
    example = load_example()
    train = QM9Properties(args.root, 'train')
    train = train[torch.randperm(len(train), generator=torch.Generator(
    ).manual_seed(0))[:BATCH_SIZE * args.steps]]
    batches = list(DataLoader(train, batch_size=BATCH_SIZE))
    mean, mad = example.mean_and_mad(train, HOMO)
    target = ((train.y[:, HOMO] - mean) / mad).float()
    times = {name: {'float32': [], 'bfloat16': []} for name in args.models}
    losses = {name: {} for name in args.models}
    for _ in range(args.rounds):
        for name in args.models:
            for bf16 in (False, True):
                dtype = 'bfloat16' if bf16 else 'float32'
                seconds, losses[name][dtype] = train_steps(
                    example, name, batches, target, bf16)
                times[name][dtype].append(seconds)
    rows = {name: {dtype: min(values) for dtype, values in per.items()}
            for name, per in times.items()}
    print(f'{"model":<12}{"float32":>12}{"bfloat16":>12}{"ratio":>8}'
          f'{"mean loss, float32 / bfloat16":>32}')
    for name, row in rows.items():
        print(f'{name:<12}{1e3 * row["float32"]:>10.0f}ms'
              f'{1e3 * row["bfloat16"]:>10.0f}ms'
              f'{row["float32"] / row["bfloat16"]:>7.2f}x'
              f'{losses[name]["float32"]:>23.4f} / '
              f'{losses[name]["bfloat16"]:.4f}')
    results = dict(step_seconds=rows, rounds=times, mean_loss=losses,
                   target='homo', steps=args.steps, batch_size=BATCH_SIZE,
                   mean_atoms=sum(b.num_nodes for b in batches) / len(train),
                   machine=example.machine(torch.device('cpu')),
                   date=time.strftime('%Y-%m-%d'))
    if args.json:
        with atomic_path(args.json) as tmp, open(tmp, 'w') as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == '__main__':
    main()
