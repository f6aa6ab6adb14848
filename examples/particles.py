r"""Train an E(n) equivariant normalizing flow on DW4 or LJ13.

Reproduces the many-body experiments of Satorras, Hoogeboom et al.,
"E(n) Equivariant Normalizing Flows" (NeurIPS 2021), Table 1: the flow is
trained by maximum likelihood on ``n_train`` MCMC samples, the model is
selected by validation NLL, and the test NLL (nats per configuration on the
centred subspace) is computed with the exact trace at a tighter tolerance.

Examples::

    python examples/particles.py --system dw4 --quick     # ~5 min on 2 cores
    python examples/particles.py --system lj13 --n-train 100 --epochs 1000
    python examples/particles.py --system dw4 --sweep     # Table 1 protocol

Every run writes ``OUT/results.json``, ``OUT/checkpoint.pt`` (``--resume``
continues it), ``OUT/best.pt`` and plots, and prints ``test_nll=<value>``
last.
"""
import argparse
import json
import os
import os.path as osp
import time
from typing import Dict, Optional

import numpy as np
import torch
from torch_geometric.loader import DataLoader
from tqdm.auto import tqdm

from torch_enf.datasets import DW4, LJ13
from torch_enf.flows import ENFlow
from torch_enf.metrics import histogram_js_divergence, pairwise_distances
from torch_enf.training import (atomic_save, evaluate_nll, finish_epoch,
                                out_of_time, plot_learning_curves)

SYSTEMS = {'dw4': DW4, 'lj13': LJ13}
# Training-set sizes, epochs and batch sizes of the paper's sweep.
SWEEPS = {
    'dw4': [(100, 1000, 100), (1000, 300, 100), (10000, 50, 100),
            (100000, 6, 100)],
    'lj13': [(10, 500, 10), (100, 1000, 100), (1000, 300, 100),
             (10000, 50, 100)],
}
QUICK = {
    'dw4': dict(n_train=1000, epochs=25, num_valid=500, num_test=1000,
                eval_every=5, num_samples=1000),
    'lj13': dict(n_train=100, epochs=15, num_valid=100, num_test=100,
                 eval_every=5, num_samples=200),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--system', choices=SYSTEMS, default='dw4')
    p.add_argument('--root', default='data',
                   help='dataset cache folder (default: ./data)')
    p.add_argument('--out', default=None,
                   help='output folder (default: runs/<system>-<n_train>)')
    p.add_argument('--n-train', type=int, default=1000)
    p.add_argument('--epochs', type=int, default=300)
    p.add_argument('--batch-size', type=int, default=100)
    p.add_argument('--lr', type=float, default=5e-4)
    p.add_argument('--hidden', type=int, default=32)
    p.add_argument('--layers', type=int, default=3)
    p.add_argument('--tol', type=float, default=1e-4,
                   help='rtol = atol of dopri5 in training')
    p.add_argument('--eval-tol', type=float, default=1e-5,
                   help='rtol = atol of dopri5 for validation and test')
    p.add_argument('--no-adjoint', action='store_true',
                   help='back-propagate through the solver instead')
    p.add_argument('--eval-every', type=int, default=None,
                   help='epochs between validations (default: ~20 per run)')
    p.add_argument('--num-valid', type=int, default=1000,
                   help='validation samples used for model selection')
    p.add_argument('--num-test', type=int, default=None,
                   help='test samples (default: the whole test split)')
    p.add_argument('--valid-trace', choices=['exact', 'hutchinson'],
                   default=None, help='default: exact for DW4, Hutchinson '
                   'for LJ13 (its exact trace is 39 Jacobian-vector products)')
    p.add_argument('--published-test', default=None,
                   help='also evaluate on this .npy test split')
    p.add_argument('--num-samples', type=int, default=2000,
                   help='samples drawn for the histograms')
    p.add_argument('--quick', action='store_true',
                   help='small preset that finishes in about 5 minutes; '
                   'options given explicitly override it')
    p.add_argument('--sweep', action='store_true',
                   help="the paper's training-set-size sweep (Table 1)")
    p.add_argument('--resume', action='store_true')
    p.add_argument('--time-budget', type=float, default=None,
                   help='stop training after the epoch that exceeds this '
                   'many hours (validated, then tested as usual)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--threads', type=int, default=None)
    p.add_argument('--device', default='cpu')
    known = p.parse_known_args()[0]
    if known.quick:  # presets; options given explicitly still win
        p.set_defaults(**QUICK[known.system])
    return p.parse_args()


def build_flow(args: argparse.Namespace, n_dims: int) -> ENFlow:
    return ENFlow(n_dims, hidden_channels=args.hidden,
                  num_layers=args.layers, rtol=args.tol, atol=args.tol,
                  eval_rtol=args.eval_tol, eval_atol=args.eval_tol,
                  adjoint=not args.no_adjoint)


def subset(dataset, num: Optional[int]):
    if num is None or num >= len(dataset):
        return dataset
    return dataset[:num]


def train(args: argparse.Namespace) -> Dict:
    start = time.time()
    torch.manual_seed(args.seed)
    system = SYSTEMS[args.system]
    out = args.out or osp.join('runs', f'{args.system}-{args.n_train}')
    os.makedirs(out, exist_ok=True)
    root = osp.join(args.root, args.system)
    train_set = system(root, 'train', n_train=args.n_train)
    valid_set = subset(system(root, 'valid'), args.num_valid)
    test_set = subset(system(root, 'test'), args.num_test)
    valid_trace = args.valid_trace or (
        'exact' if args.system == 'dw4' else 'hutchinson')
    eval_every = args.eval_every or max(1, args.epochs // 20)

    device = torch.device(args.device)
    flow = build_flow(args, system.n_dims).to(device)
    optimizer = torch.optim.AdamW(flow.parameters(), lr=args.lr,
                                  amsgrad=True, weight_decay=1e-12)
    loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True,
                        drop_last=len(train_set) >= args.batch_size)
    valid_loader = DataLoader(valid_set, batch_size=100)
    state = dict(epoch=0, history=[], best_valid=float('inf'),
                 best_epoch=None, wall_clock_s=0.0)

    ckpt_path = osp.join(out, 'checkpoint.pt')
    if args.resume and osp.exists(ckpt_path):
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        flow.load_state_dict(ckpt['model'])
        optimizer.load_state_dict(ckpt['optimizer'])
        torch.set_rng_state(ckpt['rng'])
        state = ckpt['state']
        print(f"Resuming {out} at epoch {state['epoch']}")
    elif args.resume:
        print(f'No checkpoint in {out}; starting from scratch')
    start -= state['wall_clock_s']  # continue the clock
    if state['epoch'] == 0:
        state['untrained_valid_nll'] = evaluate_nll(
            flow, valid_loader, valid_trace, 'untrained')

    for epoch in range(state['epoch'] + 1, args.epochs + 1):
        flow.train()
        losses = []
        bar = tqdm(loader, desc=f'epoch {epoch}/{args.epochs}', leave=False)
        for batch in bar:
            batch = batch.to(device)
            loss = -flow.log_prob(batch, trace='hutchinson').mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(nll=f'{losses[-1]:.3f}')
        record = dict(epoch=epoch, train_nll=float(np.mean(losses)))
        last = (epoch == args.epochs or out_of_time(
            time.time() - start, args.time_budget))
        if epoch % eval_every == 0 or last:
            record['valid_nll'] = evaluate_nll(flow, valid_loader,
                                               valid_trace, 'valid')
        state['wall_clock_s'] = time.time() - start
        finish_epoch(state, record, flow, optimizer, out,
                     rng=torch.get_rng_state())
        if last:
            break

    flow.load_state_dict(torch.load(osp.join(out, 'best.pt'),
                                    map_location=device))
    results = evaluate(args, flow, system, test_set, out)
    results.update(
        system=args.system, n_train=args.n_train, epochs=args.epochs,
        epochs_completed=state['epoch'], time_budget_h=args.time_budget,
        batch_size=args.batch_size, best_epoch=state['best_epoch'],
        best_valid_nll=state['best_valid'], valid_trace=valid_trace,
        num_valid=len(valid_set), untrained_valid_nll=state.get(
            'untrained_valid_nll'), eval_tol=args.eval_tol,
        wall_clock_s=time.time() - start)
    atomic_save(results, osp.join(out, 'results.json'))
    plot_learning_curves(state['history'], osp.join(out, 'nll_curves.png'),
                         f'{args.system.upper()}, n_train={args.n_train}')
    return results


def evaluate(args: argparse.Namespace, flow: ENFlow, system, test_set,
             out: str) -> Dict:
    test_loader = DataLoader(test_set, batch_size=100)
    results = dict(num_test=len(test_set))
    results['test_nll'] = evaluate_nll(flow, test_loader, 'exact', 'test')
    if args.published_test:
        published = system(osp.join(args.root, args.system), 'test',
                           source=args.published_test)
        published = subset(published, args.num_test)
        results['published_test_nll'] = evaluate_nll(
            flow, DataLoader(published, batch_size=100), 'exact',
            'published test')
    results.update(sample_statistics(args, flow, system, test_set, out))
    return results


def sample_statistics(args: argparse.Namespace, flow: ENFlow, system,
                      test_set, out: str) -> Dict:
    flow.eval()
    chunks = []
    remaining = args.num_samples
    with tqdm(total=remaining, desc='sampling', leave=False) as bar:
        while remaining > 0:
            size = min(500, remaining)
            chunks.append(flow.sample(system.num_particles, size).pos.cpu())
            remaining -= size
            bar.update(size)
    samples = torch.cat(chunks).view(-1, system.num_particles,
                                     system.n_dims).float()
    data = torch.stack([d.pos for d in test_set[:args.num_samples]])
    energy = system.energy
    e_samples, e_data = energy(samples), energy(data)
    dist_samples = pairwise_distances(samples.view(-1, system.n_dims),
                                      _batch_of(samples))
    dist_data = pairwise_distances(data.view(-1, system.n_dims),
                                   _batch_of(data))
    hi = float(torch.quantile(dist_data, 0.999)) * 1.2
    lo_e = float(torch.quantile(e_data, 0.001))
    hi_e = float(torch.quantile(e_data, 0.999))
    finite = torch.isfinite(e_samples)
    stats = dict(
        num_samples=int(samples.size(0)),
        js_distances=histogram_js_divergence(dist_samples, dist_data, 100,
                                             (0.0, hi)),
        js_energy=histogram_js_divergence(
            e_samples[finite].clamp(lo_e, hi_e), e_data.clamp(lo_e, hi_e),
            100, (lo_e, hi_e)),
        mean_energy_samples=float(e_samples[finite].mean()),
        mean_energy_data=float(e_data.mean()))
    plot_samples(args, samples, data, dist_samples, dist_data, e_samples,
                 e_data, (0.0, hi), (lo_e, hi_e), out)
    return stats


def _batch_of(pos: torch.Tensor) -> torch.Tensor:
    return torch.arange(pos.size(0)).repeat_interleave(pos.size(1))


def plot_samples(args, samples, data, dist_samples, dist_data, e_samples,
                 e_data, dist_range, energy_range, out: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    panels = 3 if args.system == 'dw4' else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.5))
    axes[0].hist(dist_data.numpy(), 100, range=dist_range, density=True,
                 alpha=0.5, label='data')
    axes[0].hist(dist_samples.numpy(), 100, range=dist_range,
                 density=True, alpha=0.5, label='E-NF samples')
    axes[0].set_xlabel('interatomic distance')
    axes[0].legend()
    finite = torch.isfinite(e_samples)
    axes[1].hist(e_data.numpy(), 100, range=energy_range, density=True,
                 alpha=0.5, label='data')
    axes[1].hist(e_samples[finite].numpy(), 100, range=energy_range,
                 density=True, alpha=0.5, label='E-NF samples')
    axes[1].set_xlabel('energy')
    if panels == 3:
        axes[2].scatter(*samples[:300, 0].t().numpy(), s=4, label='particle '
                        '1')
        axes[2].scatter(*samples[:300, 1:].reshape(-1, 2).t().numpy(), s=2,
                        alpha=0.5, label='particles 2-4')
        axes[2].set_aspect('equal')
        axes[2].set_title('DW4 samples')
    fig.suptitle(f'{args.system.upper()}, n_train={args.n_train}')
    fig.tight_layout()
    fig.savefig(osp.join(out, 'samples.png'), dpi=120)
    plt.close(fig)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.sweep:
        results = train(args)
        print(json.dumps(results, indent=2))
        print(f"test_nll={results['test_nll']:.4f}")
        return
    base_out = args.out or osp.join('runs', f'{args.system}-sweep')
    table = []
    for n_train, epochs, batch_size in SWEEPS[args.system]:
        args.n_train, args.epochs, args.batch_size = (n_train, epochs,
                                                      batch_size)
        args.out = osp.join(base_out, f'n_train={n_train}')
        done = osp.join(args.out, 'results.json')
        if args.resume and osp.exists(done):
            with open(done) as f:
                results = json.load(f)  # finished in an earlier run
        else:
            results = train(args)
        table.append(results)
        print(f"n_train={n_train}: test NLL {results['test_nll']:.3f}")
    atomic_save(table, osp.join(base_out, 'results.json'))
    print(f"test_nll={table[-1]['test_nll']:.4f}")


if __name__ == '__main__':
    main()
