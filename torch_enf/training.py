r"""The training driver of the flows: :func:`fit` runs any
:class:`~torch_enf.objectives.Objective` with model selection by a
validation metric, an exponential moving average of the weights, atomic and
resumable checkpoints, a time budget, adaptive gradient clipping, data
parallelism under :obj:`torchrun`, progress bars and learning curves."""
import copy
import math
import os
import os.path as osp
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Union

import torch
from tqdm.auto import tqdm

from torch_enf.distributed import (DistributedContext, barrier,
                                   mean_over_processes, wrap_model)
from torch_enf.io import remove_temporaries
from torch_enf.storage import CHECKPOINT_FORMAT, atomic_save, load_checkpoint
from torch_enf.utils import check_positive_integer, check_positive_number

LR_SCHEDULES = ('constant', 'cosine')

CHECKPOINT_EVERY_S = 60.0
r"""Short epochs are checkpointed when validated, at the end, and otherwise
at most this often (seconds)."""


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


def out_of_time(elapsed_s: float, budget_h: Optional[float]) -> bool:
    r"""Whether :obj:`elapsed_s` seconds of training have used up a budget
    of :obj:`budget_h` hours (never, if :obj:`budget_h` is :obj:`None`)."""
    return budget_h is not None and elapsed_s >= 3600.0 * budget_h


class ExponentialMovingAverage:
    r"""An exponential moving average of a model's parameters,

    .. math::
        \bar{\theta} \leftarrow \beta_k \bar{\theta} + (1 - \beta_k)\,
        \theta, \qquad \beta_k = \min\left(\beta, \frac{1 + k}{10 + k}
        \right),

    after step :math:`k` (the warm-up lets early averages follow the
    model). Buffers are copied. The averaged model, :obj:`ema.model`, is
    what flow-matching and diffusion models are usually evaluated and
    sampled with.

    Args:
        model (torch.nn.Module): The model being trained.
        decay (float): :math:`\beta \in (0, 1)`.
    """
    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"'decay' must lie in (0, 1) (got {decay!r})")
        self.decay = decay
        self.num_updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        r"""Moves the average towards the current parameters of
        :obj:`model`."""
        self.num_updates += 1
        decay = min(self.decay, (1 + self.num_updates) /
                    (10 + self.num_updates))
        for average, param in zip(self.model.parameters(),
                                  model.parameters()):
            average.lerp_(param.detach(), 1 - decay)
        for average, buffer in zip(self.model.buffers(), model.buffers()):
            average.copy_(buffer)

    def state_dict(self) -> Dict[str, Any]:
        return dict(model=self.model.state_dict(),
                    num_updates=self.num_updates, decay=self.decay)

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.model.load_state_dict(state['model'])
        self.num_updates = state['num_updates']


class _ObjectiveLoss(torch.nn.Module):
    r"""The objective as the :obj:`forward` of a module, so that
    :class:`~torch.nn.parallel.DistributedDataParallel` wraps it (DDP hooks
    into :obj:`forward`)."""
    def __init__(self, model: torch.nn.Module, objective: Callable):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch: Any) -> torch.Tensor:
        return self.objective(self.model, batch)


@dataclass
class FitState:
    r"""The resumable state of a :func:`fit` run.

    Attributes:
        epoch (int): Epochs completed (a budget-stopped epoch counts).
        step (int): Optimiser steps taken.
        history (list of dict): One record per epoch: :obj:`epoch`,
            :obj:`train_loss`, :obj:`wall_clock_s` and, where validated,
            :obj:`valid`.
        best_valid (float): The lowest validation value so far.
        best_epoch (int, optional): Its epoch.
        wall_clock_s (float): Training time so far, over all sessions.
        grad_norms (list of float): Recent gradient norms (clipping).
        stopped_by_budget (bool): Whether the time budget ended the run.
        last_checkpoint_time (float): When the last checkpoint was
            written (:func:`time.time`).
    """
    epoch: int = 0
    step: int = 0
    history: List[Dict[str, Any]] = field(default_factory=list)
    best_valid: float = float('inf')
    best_epoch: Optional[int] = None
    wall_clock_s: float = 0.0
    grad_norms: List[float] = field(default_factory=list)
    stopped_by_budget: bool = False
    last_checkpoint_time: float = 0.0


def fit(
    model: torch.nn.Module,
    objective: Callable[[torch.nn.Module, Any], torch.Tensor],
    train_loader: Iterable,
    out: str,
    *,
    epochs: int,
    validate: Optional[Callable[[torch.nn.Module], float]] = None,
    eval_every: int = 1,
    lr: float = 5e-4,
    optimizer: Optional[torch.optim.Optimizer] = None,
    ema_decay: Optional[float] = None,
    lr_schedule: str = 'constant',
    clip: Union[str, float, None] = 'adaptive',
    autocast: Optional[torch.dtype] = None,
    time_budget: Optional[float] = None,
    resume: bool = False,
    config: Optional[Dict[str, Any]] = None,
    metadata: Optional[Dict[str, Any]] = None,
    context: Optional[DistributedContext] = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> FitState:
    r"""Trains :obj:`model` by minimising the mean of
    :obj:`objective(model, batch)` over :obj:`train_loader`.

    Every :obj:`eval_every` epochs (and after the last), :obj:`validate` is
    called on the evaluated model (the moving average when
    :obj:`ema_decay` is set) and the one with the lowest value is kept in
    :obj:`out/best.pt`. At the end of an epoch (every validated one, the
    last, and otherwise at most every :obj:`CHECKPOINT_EVERY_S` seconds)
    the resumable state goes atomically to :obj:`out/checkpoint.pt`:
    model, optimiser, moving
    average, :class:`FitState`, random state, :obj:`config` and the
    objective's :obj:`config()`. With :obj:`resume`, training continues
    from that checkpoint, but only if its :obj:`config` and objective equal
    the present ones; otherwise :class:`ValueError` names the options that
    differ. The learning curves go to :obj:`out/curves.png` (with
    matplotlib) and the state to :obj:`out/history.json`.

    Args:
        model (torch.nn.Module): The model, already on its device.
        objective (callable): :obj:`objective(model, batch)` returning a
            loss per graph, *e.g.* a
            :class:`~torch_enf.objectives.FlowMatching`.
        train_loader (iterable): Training batches (a sampler with
            :obj:`set_epoch` is told the epoch).
        out (str): Output folder.
        epochs (int): The last epoch to train.
        validate (callable, optional): :obj:`validate(model) -> float`,
            lower is better, *e.g.* a validation NLL; without it the last
            model is kept.
        eval_every (int, optional): Epochs between validations.
        lr (float, optional): Learning rate of the default optimiser
            (AdamW with AMSGrad, as the E-NF code). (default: :obj:`5e-4`)
        optimizer (torch.optim.Optimizer, optional): Replaces the default.
        ema_decay (float, optional): Keep an :class:`ExponentialMovingAverage`
            and validate and save it instead of the raw weights.
        lr_schedule (str, optional): :obj:`"constant"` or :obj:`"cosine"`:
            :math:`\eta_k = \eta\,(0.01 + 0.99 \cdot \frac{1}{2}(1 +
            \cos \pi p_k))`, where the progress :math:`p_k` is the larger of
            the fraction of all epochs' steps done and the fraction of the
            time budget used. (default: :obj:`"constant"`)
        clip (str or float, optional): :obj:`"adaptive"`
            (:func:`clip_gradients`), a fixed maximal gradient norm, or
            :obj:`None`. (default: :obj:`"adaptive"`)
        autocast (torch.dtype, optional): Compute the loss under
            :func:`torch.autocast` with this dtype, *e.g.*
            :obj:`torch.bfloat16`: the linear layers run in it while
            positions, distances and the optimiser stay in float32 (about
            1.7 times faster flow matching on CPUs with AVX-512 BF16). Not
            for objectives that solve ODEs.
        time_budget (float, optional): Hours of training (over all resumed
            sessions) after which the epoch in progress ends at the next
            step and training stops; that epoch is validated.
        resume (bool, optional): Continue :obj:`out/checkpoint.pt` if it
            exists.
        config (dict, optional): The options that define the run (model,
            data, optimisation); stored and compared on resume.
        metadata (dict, optional): Stored in the checkpoint as it is (*e.g.*
            all options, to rebuild the model from the checkpoint).
        context (DistributedContext, optional): The process's place in a
            :obj:`torchrun` job; only rank 0 validates and writes.
        progress (bool, optional): Show progress bars.
        log (callable, optional): Receives one line per epoch.

    Returns:
        FitState: The final state; the evaluated model of the last epoch is
        in memory, the best one in :obj:`out/best.pt`.
    """
    _check_fit_options(epochs, eval_every, lr, ema_decay, clip, time_budget,
                       lr_schedule)
    context = context or DistributedContext(0, 1, next(
        model.parameters()).device)
    config = dict(config or {})
    objective_config = objective.config() if hasattr(objective, 'config') \
        else repr(objective)
    optimizer = optimizer or torch.optim.AdamW(
        model.parameters(), lr=lr, amsgrad=True, weight_decay=1e-12)
    ema = ExponentialMovingAverage(model, ema_decay) if ema_decay else None
    state = FitState()
    checkpoint_path = osp.join(out, 'checkpoint.pt')
    if resume and osp.exists(checkpoint_path):
        state = _resume(checkpoint_path, model, optimizer, ema, config,
                        objective_config, context)
        log(f'Resuming {out} after epoch {state.epoch}')
    elif context.is_main:
        os.makedirs(out, exist_ok=True)
    if context.is_main:
        stale = remove_temporaries(out)
        if stale:
            log(f'Removed {len(stale)} unfinished temporary file(s) of an '
                f'interrupted run from {out}')
    start = time.time() - state.wall_clock_s
    total_steps = epochs * len(train_loader) \
        if hasattr(train_loader, '__len__') else None

    def learning_rate() -> float:
        if lr_schedule == 'constant':
            return lr
        done = [state.step / total_steps] if total_steps else [0.0]
        if time_budget is not None:
            done.append((time.time() - start) / (3600.0 * time_budget))
        progress = min(max(done), 1.0)
        return lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))

    step = _Step(wrap_model(_ObjectiveLoss(model, objective), context),
                 model, optimizer, ema, clip, autocast, context.device,
                 learning_rate)

    def budget_used() -> bool:  # every rank must agree: combine the clocks
        return time_budget is not None and mean_over_processes(
            float(out_of_time(time.time() - start, time_budget)),
            context) > 0

    remaining = range(state.epoch + 1, epochs + 1)
    if state.epoch and budget_used():  # resumed after the budget ran out
        log(f'The time budget of {out} is used up: nothing left to train')
        state.stopped_by_budget, remaining = True, range(0)
    for epoch in remaining:
        sampler = getattr(train_loader, 'sampler', None)
        if hasattr(sampler, 'set_epoch'):
            sampler.set_epoch(epoch)
        train_loss = _train_epoch(step, train_loader, state,
                                  f'epoch {epoch}/{epochs}',
                                  progress and context.is_main, budget_used)
        state.stopped_by_budget = budget_used()
        last = epoch == epochs or state.stopped_by_budget
        record = dict(epoch=epoch, step=state.step,
                      train_loss=mean_over_processes(train_loss, context))
        evaluated = ema.model if ema is not None else model
        if context.is_main and validate is not None and (
                epoch % eval_every == 0 or last):
            record['valid'] = float(validate(evaluated))
        state.wall_clock_s = time.time() - start
        record['wall_clock_s'] = state.wall_clock_s
        if context.is_main:
            _finish_epoch(state, record, evaluated, validate is None, last,
                          out, lambda: dict(
                              model=model.state_dict(),
                              optimizer=optimizer.state_dict(),
                              ema=None if ema is None else ema.state_dict(),
                              config=config, objective=objective_config,
                              metadata=metadata or {}, rng=_rng_state()), log)
        else:
            state.epoch = epoch
        barrier(context)
        if last:
            break
    if context.is_main:
        plot_learning_curves(state.history, osp.join(out, 'curves.png'))
    return state


def _check_fit_options(epochs: int, eval_every: int, lr: float,
                       ema_decay: Optional[float], clip: Any,
                       time_budget: Optional[float], lr_schedule: str) -> None:
    check_positive_integer(epochs, 'epochs')
    check_positive_integer(eval_every, 'eval_every')
    check_positive_number(lr, 'lr')
    if ema_decay is not None and not 0 < ema_decay < 1:
        raise ValueError(f"'ema_decay' must lie in (0, 1) (got "
                         f"{ema_decay!r})")
    if not (clip is None or clip == 'adaptive' or (
            isinstance(clip, (int, float)) and clip > 0)):
        raise ValueError(f"'clip' must be 'adaptive', a positive norm or "
                         f"None (got {clip!r})")
    if time_budget is not None:
        check_positive_number(time_budget, 'time_budget')  # hours
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"'lr_schedule' must be one of {LR_SCHEDULES} (got "
                         f"{lr_schedule!r})")


@dataclass
class _Step:
    r"""One optimisation step: loss (under autocast), backward, clipping,
    learning rate, update and moving average."""
    loss_module: torch.nn.Module
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    ema: Optional[ExponentialMovingAverage]
    clip: Any
    autocast: Optional[torch.dtype]
    device: torch.device
    learning_rate: Callable[[], float]

    def __call__(self, batch: Any, state: FitState) -> float:
        batch = batch.to(self.device)
        with torch.autocast(self.device.type, dtype=self.autocast,
                            enabled=self.autocast is not None):
            loss = self.loss_module(batch).float().mean()
        self.optimizer.zero_grad()
        loss.backward()
        if self.clip == 'adaptive':
            clip_gradients(self.model.parameters(), state.grad_norms)
        elif self.clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        for group in self.optimizer.param_groups:
            group['lr'] = self.learning_rate()
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        state.step += 1
        return float(loss.detach())


def _train_epoch(step: _Step, loader: Iterable, state: FitState, desc: str,
                 progress: bool, stop: Callable[[], bool]) -> float:
    step.model.train()
    total, count = 0.0, 0
    bar = tqdm(loader, desc=desc, leave=False, disable=not progress)
    for batch in bar:
        total += step(batch, state)
        count += 1
        bar.set_postfix(loss=f'{total / count:.4g}')
        if stop():
            break
    bar.close()
    return total / max(count, 1)


def _finish_epoch(state: FitState, record: Dict[str, Any],
                  evaluated: torch.nn.Module, keep_last: bool, final: bool,
                  out: str, checkpoint: Callable[[], Dict[str, Any]],
                  log: Callable[[str], None]) -> None:
    valid = record.get('valid')
    if keep_last or (valid is not None and valid < state.best_valid):
        if valid is not None:
            state.best_valid = valid
        state.best_epoch = record['epoch']
        atomic_save(evaluated.state_dict(), osp.join(out, 'best.pt'))
    state.history.append(record)
    state.epoch = record['epoch']
    if not (final or valid is not None or keep_last or
            time.time() - state.last_checkpoint_time >= CHECKPOINT_EVERY_S):
        return  # short epochs: checkpoint about once a minute
    state.last_checkpoint_time = time.time()
    atomic_save(dict(format=CHECKPOINT_FORMAT, state=vars(state).copy(),
                     **checkpoint()), osp.join(out, 'checkpoint.pt'))
    atomic_save({key: value for key, value in vars(state).items()
                 if key != 'grad_norms'}, osp.join(out, 'history.json'))
    if valid is None and not keep_last:
        return  # log the validated epochs only
    log(f"epoch {record['epoch']} (step {record['step']}, "
        f"{record['wall_clock_s'] / 60:.1f} min): train loss "
        f"{record['train_loss']:.4f}" +
        (f", valid {valid:.4f}" if valid is not None else ''))


def _rng_state() -> Dict[str, Any]:
    state = dict(torch=torch.get_rng_state())
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def _resume(path: str, model: torch.nn.Module,
            optimizer: torch.optim.Optimizer,
            ema: Optional[ExponentialMovingAverage], config: Dict[str, Any],
            objective_config: Any, context: DistributedContext) -> FitState:
    checkpoint = load_checkpoint(path, context.device)
    stored = dict(checkpoint['config'], objective=checkpoint['objective'])
    current = dict(config, objective=objective_config)
    # Only the options the caller names must match: an option it no longer
    # names (one that became resumable) may differ from the checkpoint.
    differ = sorted(key for key in current
                    if stored.get(key) != current[key])
    if differ:
        details = '; '.join(f'{key}: checkpoint {stored.get(key)!r}, now '
                            f'{current.get(key)!r}' for key in differ)
        raise ValueError(f"Cannot resume {path} with other options "
                         f"({details}). Use the original options or another "
                         f"output folder.")
    model.load_state_dict(checkpoint['model'])
    optimizer.load_state_dict(checkpoint['optimizer'])
    if (ema is None) != (checkpoint['ema'] is None):
        raise ValueError(f"Cannot resume {path}: the moving average of the "
                         f"weights was {'off' if ema is None else 'on'} "
                         f"there")
    if ema is not None:
        ema.load_state_dict(checkpoint['ema'])
    torch.set_rng_state(checkpoint['rng']['torch'].cpu())
    if 'cuda' in checkpoint['rng'] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(checkpoint['rng']['cuda'])
    return FitState(**checkpoint['state'])


def plot_learning_curves(history: List[Dict[str, Any]], path: str,
                         title: str = '') -> None:
    r"""Plots the training loss and the validation values recorded by
    :func:`fit` against the epoch (skipped without matplotlib)."""
    try:
        import matplotlib
    except ImportError:
        return
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([h['epoch'] for h in history], [h['train_loss'] for h in history],
            color='C0', label='training loss')
    ax.set_xlabel('epoch')
    ax.set_ylabel('training loss', color='C0')
    valid = [h for h in history if h.get('valid') is not None]
    if valid:
        right = ax.twinx()
        right.plot([h['epoch'] for h in valid], [h['valid'] for h in valid],
                   'o-', color='C1', label='validation')
        right.set_ylabel('validation', color='C1')
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
