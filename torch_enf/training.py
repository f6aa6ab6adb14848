r"""Building blocks of the training scripts in :obj:`examples/`: atomic
checkpoints, negative log-likelihood evaluation with a progress bar, and
learning-curve plots."""
import json
import os
import tempfile
from typing import Any, Callable, Dict, Iterable, List, Optional

import torch
from tqdm.auto import tqdm

from torch_enf.flows import ENFlow


def atomic_save(obj: Any, path: str) -> None:
    r"""Saves :obj:`obj` with :func:`torch.save` (or as JSON for paths
    ending in :obj:`.json`) so that :obj:`path` always holds either the
    previous or the new complete file, even if the process is killed while
    writing."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix='.tmp-')
    try:
        with os.fdopen(fd, 'wb') as f:
            if path.endswith('.json'):
                f.write(json.dumps(obj, indent=2).encode())
            else:
                torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


@torch.no_grad()
def evaluate_nll(flow: ENFlow, loader: Iterable, trace: str = 'exact',
                 desc: str = 'eval', progress: bool = True) -> float:
    r"""The mean negative log-likelihood per graph (nats) of the graphs in
    :obj:`loader`, with the flow in evaluation mode (its evaluation
    tolerances)."""
    was_training = flow.training
    flow.eval()
    device = next(flow.parameters()).device
    total, count = 0.0, 0
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress):
        batch = batch.to(device)
        total += float(-flow.log_prob(batch, trace=trace).sum())
        count += batch.num_graphs
    flow.train(was_training)
    return total / count


def plot_learning_curves(history: List[Dict[str, float]], path: str,
                         title: str = '') -> None:
    r"""Plots the training and validation NLL recorded in :obj:`history`
    (a list of per-epoch dicts with keys :obj:`epoch`, :obj:`train_nll` and,
    where evaluated, :obj:`valid_nll`)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([h['epoch'] for h in history], [h['train_nll'] for h in history],
            label='train (Hutchinson)')
    valid = [h for h in history if h.get('valid_nll') is not None]
    if valid:
        ax.plot([h['epoch'] for h in valid], [h['valid_nll'] for h in valid],
                'o-', label='validation')
    ax.set_xlabel('epoch')
    ax.set_ylabel('NLL (nats per graph)')
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def clip_gradients(parameters: Iterable[torch.Tensor],
                   history: List[float], max_history: int = 50,
                   factor: float = 1.5, floor: float = 1.0
                   ) -> Optional[float]:
    r"""Adaptive gradient clipping: clips the global gradient norm at
    :math:`1.5\,\mu + 2\,\sigma` of the recent norms in :obj:`history` (at
    least :obj:`floor`), then records the new norm. Returns the norm before
    clipping."""
    parameters = [p for p in parameters if p.grad is not None]
    if not history:
        limit = float('inf')
    else:
        recent = torch.tensor(history[-max_history:])
        limit = max(float(factor * recent.mean() + 2 * recent.std(
            unbiased=False)), floor)
    norm = float(torch.nn.utils.clip_grad_norm_(parameters, limit))
    history.append(min(norm, limit))
    return norm


def train_epoch(model: torch.nn.Module, loader: Iterable,
                optimizer: torch.optim.Optimizer, grad_norms: List[float],
                regularization_weight: float = 0.0,
                device: Optional[torch.device] = None, desc: str = 'train',
                progress: bool = True,
                stop: Optional[Callable[[], bool]] = None) -> float:
    r"""One epoch of regularised maximum likelihood with Hutchinson's trace,

    .. math::
        \mathcal{L} = \frac{1}{B} \sum_{g} \left[-\log p(G_g) +
        \lambda R_g\right],

    where :math:`R_g` is the integrated kinetic energy plus Jacobian
    Frobenius norm of graph :math:`g` and :math:`\lambda` the
    :obj:`regularization_weight`, with adaptive gradient clipping
    (:func:`clip_gradients`, history in :obj:`grad_norms`).

    Args:
        model (torch.nn.Module): Called as :obj:`model(batch,
            trace='hutchinson', return_regularization=True)` and returning
            :obj:`(log_prob, regularization)` per graph, *e.g.* a
            :class:`~torch_enf.flows.MoleculeFlow` or a model wrapped by
            :func:`torch_enf.distributed.wrap_model`.
        stop (callable, optional): Checked after every step; the epoch ends
            early once it returns :obj:`True` (*e.g.* a time budget). Under
            data parallelism it must return the same on every process.

    Returns:
        float: The mean training NLL per graph (without the regulariser)
        over the steps taken.
    """
    model.train()
    nlls = []
    bar = tqdm(loader, desc=desc, leave=False, disable=not progress)
    for batch in bar:
        if device is not None:
            batch = batch.to(device)
        log_prob, reg = model(batch, trace='hutchinson',
                              return_regularization=True)
        nll = -log_prob.mean()
        loss = nll + regularization_weight * reg.mean()
        optimizer.zero_grad()
        loss.backward()
        clip_gradients(model.parameters(), grad_norms)
        optimizer.step()
        nlls.append(float(nll.detach()))
        bar.set_postfix(nll=f'{nlls[-1]:.2f}')
        if stop is not None and stop():
            break
    bar.close()
    return sum(nlls) / max(len(nlls), 1)


def out_of_time(elapsed_s: float, budget_h: Optional[float]) -> bool:
    r"""Whether :obj:`elapsed_s` seconds of training have used up a budget
    of :obj:`budget_h` hours (never, if :obj:`budget_h` is :obj:`None`)."""
    return budget_h is not None and elapsed_s >= 3600.0 * budget_h


def finish_epoch(state: Dict[str, Any], record: Dict[str, Any],
                 model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 out: str, **extra: Any) -> None:
    r"""End-of-epoch book-keeping of the training scripts: keeps the model
    with the lowest validation NLL in :obj:`out/best.pt`, appends
    :obj:`record` (keys :obj:`epoch`, :obj:`train_nll` and optionally
    :obj:`valid_nll`) to :obj:`state["history"]`, writes the resumable
    :obj:`out/checkpoint.pt` (model, optimiser, :obj:`state` and
    :obj:`extra`) atomically and prints a one-line summary."""
    valid = record.get('valid_nll')
    if valid is not None and valid < state['best_valid']:
        state['best_valid'] = valid
        state['best_epoch'] = record['epoch']
        atomic_save(model.state_dict(), os.path.join(out, 'best.pt'))
    state['history'].append(record)
    state['epoch'] = record['epoch']
    atomic_save(dict(model=model.state_dict(),
                     optimizer=optimizer.state_dict(), state=state, **extra),
                os.path.join(out, 'checkpoint.pt'))
    print(f"epoch {record['epoch']}: train NLL {record['train_nll']:.3f}" +
          (f', valid NLL {valid:.3f}' if valid is not None else ''),
          flush=True)
