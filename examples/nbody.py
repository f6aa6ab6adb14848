r"""Train the EGNN (or the GNN baseline) on the charged N-body system.

The N-body experiment of Satorras, Hoogeboom and Welling, "E(n) Equivariant
Graph Neural Networks" (ICML 2021), Section 5.1 and Table 2: predict the
positions of 5 charged particles 1,000 simulation steps ahead from their
positions, velocities and charges. The defaults are the paper's settings
(those of its official :obj:`main_nbody.py` and README): 3,000 training
trajectories, Adam with learning rate :math:`5 \cdot 10^{-4}` (EGNN) or
:math:`10^{-3}` (GNN) and weight decay :math:`10^{-12}`, batches of 100
systems (the last incomplete batch dropped), 10,000 epochs, the MSE of the
positions as the loss, validation every 5 epochs, and the test MSE of the
model with the best validation MSE. The paper reports a test MSE of 0.0071
for the EGNN and 0.0107 for the GNN.

Examples::

    python examples/nbody.py --model egnn --time-budget 25 --threads 1
    python examples/nbody.py --model gnn --epochs 100 --num-train 500
    python examples/nbody.py --model egnn --time-budget 60 --lr-schedule cosine

With :obj:`--lr-schedule cosine` the learning rate follows
:class:`~torch_enf.training.LRSchedule`'s cosine over the epochs or the time
budget, whichever ends the run first (the paper keeps it constant).

The results (settings, test MSE, best epoch, wall clock, machine, the
validation curve) go to ``OUT/results.json`` and the best model to
``OUT/model.pt``; ``test_mse=<value>`` is printed last.
"""
import argparse
import copy
import json
import os
import os.path as osp
import platform
import time
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch_geometric.loader import DataLoader

from torch_enf.datasets import NBody
from torch_enf.io import atomic_path
from torch_enf.nn.models import EGNNDynamicsPredictor, GNNDynamicsPredictor
from torch_enf.training import (LR_SCHEDULES, ExponentialMovingAverage,
                                LRSchedule, clip_gradients)

MODELS = {'egnn': EGNNDynamicsPredictor, 'gnn': GNNDynamicsPredictor}
LEARNING_RATES = {'egnn': 5e-4, 'gnn': 1e-3}  # the official README's


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--model', choices=sorted(MODELS), default='egnn')
    parser.add_argument('--root', default=osp.join('data', 'NBody'),
                        help='cache of the simulated trajectories')
    parser.add_argument('--out', default=osp.join('runs', 'nbody'))
    parser.add_argument('--num-train', type=int, default=3000)
    parser.add_argument('--epochs', type=int, default=10000)
    parser.add_argument('--batch-size', type=int, default=100)
    parser.add_argument('--lr', type=float, default=None,
                        help='default: 5e-4 for egnn, 1e-3 for gnn')
    parser.add_argument('--lr-schedule', choices=LR_SCHEDULES,
                        default='constant',
                        help='the paper keeps the rate constant')
    parser.add_argument('--weight-decay', type=float, default=1e-12)
    parser.add_argument('--clip', action='store_true',
                        help='adaptive gradient clipping '
                        '(torch_enf.training.clip_gradients) against the '
                        'rare loss spikes that can end a run; the paper '
                        'does not clip')
    parser.add_argument('--ema', type=float, default=None, metavar='DECAY',
                        help='validate, test and save an exponential moving '
                        'average of the weights with this decay (the paper '
                        'uses the raw weights)')
    parser.add_argument('--hidden-channels', type=int, default=64)
    parser.add_argument('--num-layers', type=int, default=4)
    parser.add_argument('--eval-every', type=int, default=5,
                        help='epochs between validations')
    parser.add_argument('--time-budget', type=float, default=None,
                        help='minutes of training; stops before the epoch '
                        'that would exceed it')
    parser.add_argument('--seed', type=int, default=1)
    parser.add_argument('--threads', type=int, default=None,
                        help='torch CPU threads')
    parser.add_argument('--device', default='cpu')
    args = parser.parse_args(argv)
    for name in ('num_train', 'epochs', 'batch_size', 'hidden_channels',
                 'num_layers', 'eval_every', 'threads', 'time_budget'):
        value = getattr(args, name)
        if value is not None and not value > 0:
            parser.error(f"--{name.replace('_', '-')} must be positive "
                         f"(got {value})")
    if args.lr is None:
        args.lr = LEARNING_RATES[args.model]
    if args.lr <= 0 or args.weight_decay < 0:
        parser.error('--lr must be positive and --weight-decay at least 0')
    if args.ema is not None and not 0 < args.ema < 1:
        parser.error(f'--ema must lie in (0, 1) (got {args.ema})')
    return args


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader,
             device: torch.device) -> float:
    r"""The MSE of the predicted positions over a whole split."""
    model.eval()
    total, count = 0.0, 0
    for batch in loader:
        batch = batch.to(device)
        pred = model(batch.pos, batch.vel, batch.charge, batch.edge_index)
        total += float(F.mse_loss(pred, batch.y, reduction='sum'))
        count += batch.y.numel()
    return total / count


def train_epoch(model: torch.nn.Module, loader: DataLoader,
                optimizer: torch.optim.Optimizer, schedule: LRSchedule,
                step: int, start: float, device: torch.device,
                ema: Optional[ExponentialMovingAverage] = None,
                grad_norms: Optional[List[float]] = None) -> float:
    r"""One pass over the training split, the learning rate of each step
    set by :obj:`schedule` from the steps taken before it (:obj:`step` at
    the start of the epoch) and the seconds since :obj:`start`, the moving
    average :obj:`ema` (if any) updated after every step; with
    :obj:`grad_norms` (the recent norms, extended in place), gradients are
    clipped by :func:`~torch_enf.training.clip_gradients`. Returns the mean
    batch loss."""
    model.train()
    losses = []
    for batch in loader:
        schedule.update(step + len(losses), time.perf_counter() - start)
        batch = batch.to(device)
        optimizer.zero_grad()
        pred = model(batch.pos, batch.vel, batch.charge, batch.edge_index)
        loss = F.mse_loss(pred, batch.y)
        loss.backward()
        if grad_norms is not None:
            clip_gradients(model.parameters(), grad_norms, floor=0.0)
        optimizer.step()
        if ema is not None:
            ema.update(model)
        losses.append(float(loss.detach()))
    return sum(losses) / len(losses)


def machine() -> Dict[str, object]:
    return {'node': platform.node(), 'processor': platform.processor(),
            'platform': platform.platform(), 'cpu_count': os.cpu_count(),
            'threads': torch.get_num_threads(), 'torch': torch.__version__,
            'python': platform.python_version()}


def main(argv: Optional[List[str]] = None) -> Dict[str, object]:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    start = time.perf_counter()

    # Simulates and caches the splits on first use; raises before training
    # if --num-train exceeds the 3,000 simulated training trajectories.
    train = NBody(args.root, 'train', n_train=args.num_train)
    valid, test = NBody(args.root, 'valid'), NBody(args.root, 'test')
    generator = torch.Generator().manual_seed(args.seed)
    train_loader = DataLoader(train, args.batch_size, shuffle=True,
                              drop_last=len(train) >= args.batch_size,
                              generator=generator)
    valid_loader = DataLoader(valid, args.batch_size)
    test_loader = DataLoader(test, args.batch_size)

    model = MODELS[args.model](args.hidden_channels,
                               args.num_layers).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr,
                                 weight_decay=args.weight_decay)
    print(f'{model}: {sum(p.numel() for p in model.parameters())} '
          f'parameters; {len(train)}/{len(valid)}/{len(test)} '
          f'train/valid/test systems', flush=True)

    budget = None if args.time_budget is None else 60 * args.time_budget
    schedule = LRSchedule(
        optimizer, args.lr_schedule,
        total_steps=args.epochs * len(train_loader),
        time_budget=None if budget is None else budget / 3600)
    ema = None if args.ema is None else ExponentialMovingAverage(model,
                                                                  args.ema)
    evaluated = model if ema is None else ema.model
    grad_norms: Optional[List[float]] = [] if args.clip else None
    history, best = [], {'valid_mse': float('inf'), 'epoch': None}
    best_state = evaluated.state_dict()
    train_start, epoch, stopped_by = time.perf_counter(), 0, 'epochs'
    while epoch < args.epochs:
        loss = train_epoch(model, train_loader, optimizer, schedule,
                           epoch * len(train_loader), train_start, device,
                           ema, grad_norms)
        epoch += 1
        elapsed = time.perf_counter() - train_start
        # Stop when one more epoch of the mean length would pass the budget.
        out_of_time = budget is not None and \
            elapsed * (epoch + 1) / epoch > budget
        if epoch % args.eval_every == 0 or epoch == args.epochs or \
                out_of_time:
            valid_mse = evaluate(evaluated, valid_loader, device)
            history.append({'epoch': epoch, 'train_loss': loss,
                            'valid_mse': valid_mse})
            if valid_mse < best['valid_mse']:
                best = {'valid_mse': valid_mse, 'epoch': epoch}
                best_state = copy.deepcopy(evaluated.state_dict())
            print(f'epoch {epoch}: train {loss:.5f} valid {valid_mse:.5f} '
                  f'(best {best["valid_mse"]:.5f} at {best["epoch"]}), '
                  f'{elapsed:.0f} s', flush=True)
        if out_of_time:
            stopped_by = 'time budget'
            break
    train_seconds = time.perf_counter() - train_start

    evaluated.load_state_dict(best_state)
    test_mse = evaluate(evaluated, test_loader, device)
    results = {
        'experiment': 'EGNN paper (Satorras et al. 2021) N-body, Table 2',
        'model': args.model, 'settings': vars(args),
        'paper_test_mse': {'egnn': 0.0071, 'gnn': 0.0107}[args.model],
        'test_mse': test_mse, 'best_valid_mse': best['valid_mse'],
        'best_epoch': best['epoch'], 'epochs_completed': epoch,
        'stopped_by': stopped_by, 'train_seconds': train_seconds,
        'seconds_per_epoch': train_seconds / max(epoch, 1),
        'wall_clock_seconds': time.perf_counter() - start,
        'machine': machine(), 'history': history,
    }
    os.makedirs(args.out, exist_ok=True)
    with atomic_path(osp.join(args.out, 'model.pt')) as tmp:
        torch.save(best_state, tmp)
    with atomic_path(osp.join(args.out, 'results.json')) as tmp, \
            open(tmp, 'w') as f:
        json.dump(results, f, indent=2)
    print(f'test_mse={test_mse:.6f}', flush=True)
    return results


if __name__ == '__main__':
    main()
