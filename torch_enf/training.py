r"""The training driver of the flows: :func:`fit` minimises any
:class:`~torch_enf.objectives.Objective` under a :class:`FitConfig`, with
model selection by a validation metric, an exponential moving average of
the weights, a learning-rate schedule (:class:`LRSchedule`), atomic and
resumable checkpoints (:class:`Checkpointer`), a time budget, adaptive
gradient clipping, data parallelism under :obj:`torchrun`, progress bars
and learning curves.

.. code-block:: python

    config = FitConfig(epochs=100, lr_schedule='cosine', ema_decay=0.999)
    state = fit(flow, FlowMatching(), train_loader, 'runs/lj13', config,
                validate=validation_nll, resume=True)
"""
import copy
import math
import os
import os.path as osp
import time
from dataclasses import dataclass, field
from typing import (Any, Callable, ClassVar, Dict, FrozenSet, Iterable,
                    List, Optional, Tuple, Union)

import torch
from tqdm.auto import tqdm

from torch_enf.config import Config, differences
from torch_enf.distributed import (DistributedContext, any_over_processes,
                                   barrier, broadcast_from_main,
                                   mean_over_processes, wrap_model)
from torch_enf.io import remove_temporaries
from torch_enf.objectives import Objective
from torch_enf.storage import CHECKPOINT_FORMAT, atomic_save, load_checkpoint
from torch_enf.utils import check_positive_integer, check_positive_number

LR_SCHEDULES = ('constant', 'cosine')

CHECKPOINT_EVERY_S = 60.0
r"""Short epochs are checkpointed when validated, at the end, and otherwise
at most this often (seconds)."""


@dataclass(frozen=True)
class FitConfig(Config):
    r"""The optimisation options of a :func:`fit` run.

    Args:
        epochs (int): The last epoch to train.
        lr (float, optional): The learning rate of the default optimiser
            (AdamW with AMSGrad, as the E-NF code); an optimiser given to
            :func:`fit` keeps its own. (default: :obj:`5e-4`)
        lr_schedule (str, optional): :obj:`"constant"` or :obj:`"cosine"`,
            see :class:`LRSchedule`. (default: :obj:`"constant"`)
        ema_decay (float, optional): Keep an
            :class:`ExponentialMovingAverage` with this decay, and validate
            and save it instead of the raw weights. (default: :obj:`None`)
        eval_every (int, optional): Epochs between validations; the last
            epoch is always validated. (default: :obj:`1`)
        clip (str or float, optional): :obj:`"adaptive"`
            (:func:`clip_gradients`), a fixed maximal gradient norm, or
            :obj:`None`. (default: :obj:`"adaptive"`)
        bf16 (bool, optional): Compute the loss under :func:`torch.autocast`
            with :obj:`torch.bfloat16`: the linear layers run in it while
            positions, distances and the optimiser stay in float32 (about
            1.7 times faster flow matching on CPUs with AVX-512 BF16). Not
            for objectives that solve ODEs. (default: :obj:`False`)
        time_budget (float, optional): Hours of training (over all resumed
            sessions) after which the epoch in progress ends at the next
            step and training stops; that epoch is validated.
            (default: :obj:`None`)
    """
    epochs: int
    lr: float = 5e-4
    lr_schedule: str = 'constant'
    ema_decay: Optional[float] = None
    eval_every: int = 1
    clip: Union[str, float, None] = 'adaptive'
    bf16: bool = False
    time_budget: Optional[float] = None

    RESUMABLE_FIELDS: ClassVar[FrozenSet[str]] = frozenset(
        {'epochs', 'time_budget', 'eval_every'})
    r"""The fields that may change when a run is resumed."""

    def __post_init__(self):
        check_positive_integer(self.epochs, 'epochs')
        check_positive_number(self.lr, 'lr')
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"'lr_schedule' must be one of {LR_SCHEDULES} "
                             f"(got {self.lr_schedule!r})")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"'ema_decay' must lie in (0, 1) (got "
                             f"{self.ema_decay!r})")
        check_positive_integer(self.eval_every, 'eval_every')
        clip = self.clip
        if not (clip is None or clip == 'adaptive' or (
                isinstance(clip, (int, float)) and not isinstance(clip, bool)
                and 0 < clip < math.inf)):
            raise ValueError(f"'clip' must be 'adaptive', a positive norm or "
                             f"None (got {clip!r})")
        if not isinstance(self.bf16, bool):
            raise ValueError(f"'bf16' must be True or False (got "
                             f"{self.bf16!r})")
        if self.time_budget is not None:
            check_positive_number(self.time_budget, 'time_budget')


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


@dataclass
class FitState:
    r"""The resumable state of a :func:`fit` run.

    Attributes:
        epoch (int): Epochs completed (a budget-stopped epoch counts).
        step (int): Optimiser steps taken.
        history (list of dict): One record per epoch: :obj:`epoch`,
            :obj:`step`, :obj:`train_loss`, :obj:`wall_clock_s` and, where
            validated, :obj:`valid`.
        best_valid (float): The lowest validation value so far.
        best_epoch (int, optional): Its epoch (the last epoch without
            validation).
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

    def add_epoch(self, record: Dict[str, Any], keep_last: bool) -> bool:
        r"""Appends the :obj:`record` of a finished epoch to the history and
        returns whether its model is the new best: its validation value is
        the lowest so far or, with :obj:`keep_last` (no validation), always.
        """
        valid = record.get('valid')
        best = keep_last or (valid is not None and valid < self.best_valid)
        if best:
            self.best_epoch = record['epoch']
            self.best_valid = self.best_valid if valid is None else valid
        self.history.append(record)
        self.epoch = record['epoch']
        return best


class LRSchedule:
    r"""The learning rate of every step of :func:`fit`. Each parameter group
    of :obj:`optimizer` keeps its initial learning rate :math:`\eta` (its
    :obj:`"initial_lr"`, recorded at construction and saved with the
    optimiser's state) and runs before step :math:`k` (counted from zero) at
    :math:`\eta_k = f_k\,\eta`, with :math:`f_k = 1` for the
    :obj:`"constant"` schedule and

    .. math::
        f_k = 0.01 + 0.99 \cdot \tfrac{1}{2}\left(1 + \cos \pi p_k\right)

    for the :obj:`"cosine"` one, where the progress :math:`p_k \in [0, 1]`
    is the larger of the fraction :math:`k / K` of all :math:`K` steps and
    the fraction of the time budget used: the rate ends near
    :math:`0.01\,\eta` whichever ends the run.

    Args:
        optimizer (torch.optim.Optimizer): The optimiser whose learning
            rates are set.
        schedule (str, optional): :obj:`"constant"` or :obj:`"cosine"`.
            (default: :obj:`"constant"`)
        total_steps (int, optional): :math:`K`; without it (loaders of
            unknown length) only the time budget counts.
        time_budget (float, optional): The budget in hours.
    """
    def __init__(self, optimizer: torch.optim.Optimizer,
                 schedule: str = 'constant',
                 total_steps: Optional[int] = None,
                 time_budget: Optional[float] = None):
        if schedule not in LR_SCHEDULES:
            raise ValueError(f"'schedule' must be one of {LR_SCHEDULES} "
                             f"(got {schedule!r})")
        self.optimizer = optimizer
        self.schedule = schedule
        self.total_steps = total_steps
        self.time_budget = time_budget
        for group in optimizer.param_groups:
            group.setdefault('initial_lr', group['lr'])

    def progress(self, step: int, elapsed_s: float) -> float:
        r"""The progress :math:`p_k` after :obj:`step` steps and
        :obj:`elapsed_s` seconds."""
        done = [step / self.total_steps] if self.total_steps else [0.0]
        if self.time_budget is not None:
            done.append(elapsed_s / (3600.0 * self.time_budget))
        return min(max(done), 1.0)

    def factor(self, step: int, elapsed_s: float) -> float:
        r"""The factor :math:`f_k` of the initial learning rates."""
        if self.schedule == 'constant':
            return 1.0
        progress = self.progress(step, elapsed_s)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))

    def update(self, step: int, elapsed_s: float) -> None:
        r"""Sets the learning rates of the step after :obj:`step` steps and
        :obj:`elapsed_s` seconds."""
        factor = self.factor(step, elapsed_s)
        for group in self.optimizer.param_groups:
            group['lr'] = group['initial_lr'] * factor


class Checkpointer:
    r"""The files of a :func:`fit` run in the folder :obj:`out`, each
    written atomically (:func:`~torch_enf.storage.atomic_save`):

    * :obj:`best.pt`: the weights of the selected model, written when the
      validation value improves, or every epoch without validation;
    * :obj:`checkpoint.pt`: what resumes the run: model, optimiser, moving
      average, :class:`FitState`, random state, :obj:`run` and
      :obj:`metadata`, written at epochs that are validated or write
      :obj:`best.pt`, at the last, and otherwise at most every
      :obj:`CHECKPOINT_EVERY_S` seconds;
    * :obj:`history.json`: the :class:`FitState` beside it, without the
      gradient norms.

    Args:
        out (str): The output folder.
        model (torch.nn.Module): The trained model.
        optimizer (torch.optim.Optimizer): Its optimiser.
        ema (ExponentialMovingAverage, optional): Its moving average.
        run (dict, optional): Plain data that defines the run, compared on
            :meth:`resume`.
        metadata (dict, optional): Stored as it is (*e.g.* what rebuilds
            the model).
        canonical_run (callable, optional): Maps a stored run to the form
            the present code writes (*e.g.* fills in configuration fields
            added since it was stored) before it is compared on
            :meth:`resume`.
    """
    def __init__(self, out: str, model: torch.nn.Module,
                 optimizer: torch.optim.Optimizer,
                 ema: Optional[ExponentialMovingAverage] = None,
                 run: Optional[Dict[str, Any]] = None,
                 metadata: Optional[Dict[str, Any]] = None,
                 canonical_run: Optional[Callable[[Dict[str, Any]],
                                                  Dict[str, Any]]] = None):
        self.out = out
        self.model = model
        self.optimizer = optimizer
        self.ema = ema
        self.run = run or {}
        self.metadata = metadata or {}
        self.canonical_run = canonical_run

    @property
    def checkpoint_path(self) -> str:
        r"""The path of :obj:`checkpoint.pt`."""
        return osp.join(self.out, 'checkpoint.pt')

    def prepare(self) -> List[str]:
        r"""Creates the folder and removes the temporary files that an
        interrupted run left there; returns their names."""
        os.makedirs(self.out, exist_ok=True)
        return remove_temporaries(self.out)

    def resume(self, map_location: Any = 'cpu') -> Optional[FitState]:
        r"""Loads :obj:`checkpoint.pt` into the model, the optimiser and the
        moving average, restores the random state and returns the stored
        :class:`FitState` (:obj:`None` without a checkpoint).

        Raises:
            ValueError: If the file is no training checkpoint, or if its
                run differs from :obj:`run` in any field other than
                :obj:`fit.<name>` for a name in
                :obj:`FitConfig.RESUMABLE_FIELDS`, naming every such field
                with both values.
        """
        if not osp.exists(self.checkpoint_path):
            return None
        checkpoint = load_checkpoint(self.checkpoint_path, map_location)
        stored_run = checkpoint.get('run', {})
        if self.canonical_run is not None:
            stored_run = self.canonical_run(stored_run)
        differ = run_differences(stored_run, self.run)
        if differ:
            details = '; '.join(f'{name}: checkpoint {stored!r}, now '
                                f'{current!r}'
                                for name, stored, current in differ)
            raise ValueError(f"Cannot resume {self.checkpoint_path} with "
                             f"other options ({details}). Use the original "
                             f"options or another output folder.")
        self.model.load_state_dict(checkpoint['model'])
        self.optimizer.load_state_dict(checkpoint['optimizer'])
        if self.ema is not None:
            self.ema.load_state_dict(checkpoint['ema'])
        _set_rng_state(checkpoint['rng'])
        return FitState(**checkpoint['state'])

    def end_epoch(self, state: FitState, evaluated: torch.nn.Module,
                  best: bool, final: bool) -> None:
        r"""Writes the files due after the last epoch of :obj:`state`:
        :obj:`evaluated` as :obj:`best.pt` if it is the :obj:`best`, and the
        checkpoint if the epoch is validated, :obj:`best` or :obj:`final`,
        or the last one is :obj:`CHECKPOINT_EVERY_S` old."""
        if best:
            atomic_save(evaluated.state_dict(), osp.join(self.out, 'best.pt'))
        if best or final or 'valid' in state.history[-1] or (
                time.time() - state.last_checkpoint_time >=
                CHECKPOINT_EVERY_S):
            self.save(state)

    def save(self, state: FitState) -> None:
        r"""Writes :obj:`checkpoint.pt` and :obj:`history.json`."""
        state.last_checkpoint_time = time.time()
        atomic_save(dict(
            format=CHECKPOINT_FORMAT, state=vars(state).copy(),
            model=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            ema=None if self.ema is None else self.ema.state_dict(),
            rng=_rng_state(), run=self.run, metadata=self.metadata),
            self.checkpoint_path)
        atomic_save({key: value for key, value in vars(state).items()
                     if key != 'grad_norms'},
                    osp.join(self.out, 'history.json'))


def run_differences(stored: Dict[str, Any], current: Dict[str, Any]
                    ) -> List[Tuple[str, Any, Any]]:
    r"""The fields of two runs (as :func:`fit` stores them) that may not
    differ on resume but do, as :obj:`(dotted name, stored value, current
    value)`: all but :obj:`fit.<name>` for the names in
    :obj:`FitConfig.RESUMABLE_FIELDS`."""
    resumable = {f'fit.{name}' for name in FitConfig.RESUMABLE_FIELDS}
    return [difference for difference in differences(stored, current)
            if difference[0] not in resumable]


def fit(
    model: torch.nn.Module,
    objective: Objective,
    train_loader: Iterable,
    out: str,
    config: FitConfig,
    *,
    validate: Optional[Callable[[torch.nn.Module], float]] = None,
    optimizer: Optional[torch.optim.Optimizer] = None,
    resume: bool = False,
    run_config: Optional[Dict[str, Any]] = None,
    canonical_run: Optional[Callable[[Dict[str, Any]],
                                     Dict[str, Any]]] = None,
    metadata: Optional[Dict[str, Any]] = None,
    context: Optional[DistributedContext] = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> FitState:
    r"""Trains :obj:`model` by minimising the mean of
    :obj:`objective(model, batch)` over :obj:`train_loader` for
    :obj:`config.epochs` epochs.

    Every :obj:`config.eval_every` epochs (and after the last),
    :obj:`validate` is called on the evaluated model (the moving average
    when :obj:`config.ema_decay` is set) and the one with the lowest value
    is kept in :obj:`out/best.pt`. The :class:`Checkpointer` writes the
    resumable state to :obj:`out/checkpoint.pt`, with the run
    :obj:`dict(run_config, fit=config.to_dict(),
    objective=objective.config())` and :obj:`metadata`. With
    :obj:`resume`, training continues from that checkpoint, but only if
    the stored run equals the present one up to
    :obj:`FitConfig.RESUMABLE_FIELDS`; otherwise :class:`ValueError` names
    every field that differs. The learning curves go to
    :obj:`out/curves.png` (with matplotlib).

    Args:
        model (torch.nn.Module): The model, already on its device.
        objective (Objective): :obj:`objective(model, batch)` returning a
            loss per graph, *e.g.* a
            :class:`~torch_enf.objectives.FlowMatching`.
        train_loader (iterable): Training batches (a sampler with
            :obj:`set_epoch` is told the epoch).
        out (str): Output folder.
        config (FitConfig): The optimisation options.
        validate (callable, optional): :obj:`validate(model) -> float`,
            lower is better, *e.g.* a validation NLL; without it the last
            model is kept.
        optimizer (torch.optim.Optimizer, optional): Replaces the default
            AdamW; its learning rates are kept (and scheduled), not set to
            :obj:`config.lr`.
        resume (bool, optional): Continue :obj:`out/checkpoint.pt` if it
            exists.
        run_config (dict, optional): Plain data that defines the run
            (model, data, ...); stored and compared on resume. The keys
            :obj:`"fit"` and :obj:`"objective"` are added by :func:`fit`.
        canonical_run (callable, optional): Brings a run stored by an
            earlier version to the present form before the comparison on
            resume (see :class:`Checkpointer`).
        metadata (dict, optional): Stored in the checkpoint as it is (*e.g.*
            what rebuilds the model).
        context (DistributedContext, optional): The process's place in a
            :obj:`torchrun` job; only rank 0 validates and writes.
        progress (bool, optional): Show progress bars.
        log (callable, optional): Receives one line per validated epoch.

    Returns:
        FitState: The final state; the evaluated model of the last epoch is
        in memory, the best one in :obj:`out/best.pt`.

    Raises:
        ValueError: If :obj:`train_loader` is empty, or the checkpoint
            refuses to :obj:`resume`.
        FloatingPointError: If a training loss is NaN or infinite, or a
            validation value is NaN (naming the epoch and step); the files
            of the run keep the last good epoch.
    """
    if not isinstance(config, FitConfig):
        raise TypeError(f"'config' must be a FitConfig (got "
                        f"{type(config).__name__})")
    total_steps = _total_steps(train_loader, config.epochs)
    context = context or DistributedContext(0, 1, next(
        model.parameters()).device)
    optimizer = optimizer or torch.optim.AdamW(
        model.parameters(), lr=config.lr, amsgrad=True, weight_decay=1e-12)
    ema = ExponentialMovingAverage(model, config.ema_decay) \
        if config.ema_decay is not None else None
    evaluated = model if ema is None else ema.model
    files = Checkpointer(out, model, optimizer, ema,
                         _run(run_config, config, objective), metadata,
                         canonical_run)
    state = files.resume(context.device) if resume else None
    if state is not None:
        log(f'Resuming {out} after epoch {state.epoch}')
    state = state or FitState()
    stale = files.prepare() if context.is_main else []
    if stale:
        log(f'Removed {len(stale)} unfinished temporary file(s) of an '
            f'interrupted run from {out}')
    clock = _Clock(state.wall_clock_s, config.time_budget, context)
    step = _Step(wrap_model(_ObjectiveLoss(model, objective), context),
                 model, optimizer, LRSchedule(optimizer, config.lr_schedule,
                                              total_steps, config.time_budget),
                 clock, ema, config.clip, config.bf16, context)
    state.stopped_by_budget = state.epoch > 0 and clock.out_of_time()
    if state.stopped_by_budget:  # resumed with no time left
        log(f'The time budget of {out} is used up: nothing left to train')
    for epoch in range(state.epoch + 1, config.epochs + 1):
        if state.stopped_by_budget:
            break
        record = _train_epoch(step, train_loader, state, epoch,
                              f'epoch {epoch}/{config.epochs}',
                              progress and context.is_main)
        state.stopped_by_budget = clock.out_of_time()
        last = epoch == config.epochs or state.stopped_by_budget
        if validate is not None and (epoch % config.eval_every == 0 or last):
            record['valid'] = _validate(validate, evaluated, epoch, context)
        record['wall_clock_s'] = state.wall_clock_s = clock.elapsed()
        best = state.add_epoch(record, keep_last=validate is None)
        if context.is_main:
            files.end_epoch(state, evaluated, best, last)
            if best or 'valid' in record:
                log(_describe(record))
        barrier(context)
    if context.is_main:
        plot_learning_curves(state.history, osp.join(out, 'curves.png'))
    return state


class _ObjectiveLoss(torch.nn.Module):
    r"""The objective as the :obj:`forward` of a module, so that
    :class:`~torch.nn.parallel.DistributedDataParallel` wraps it (DDP hooks
    into :obj:`forward`)."""
    def __init__(self, model: torch.nn.Module, objective: Objective):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch: Any) -> torch.Tensor:
        return self.objective(self.model, batch)


class _Clock:
    r"""The training time of a run over all its sessions, and whether its
    budget of :obj:`budget_h` hours is spent (decided by all processes
    together, so that they stop at the same step)."""
    def __init__(self, elapsed_s: float, budget_h: Optional[float],
                 context: DistributedContext):
        self.start = time.time() - elapsed_s
        self.budget_h = budget_h
        self.context = context

    def elapsed(self) -> float:
        return time.time() - self.start

    def out_of_time(self) -> bool:
        return self.budget_h is not None and any_over_processes(
            out_of_time(self.elapsed(), self.budget_h), self.context)


@dataclass
class _Step:
    r"""One optimisation step: loss (under autocast), check, backward,
    clipping, learning rate, update and moving average."""
    loss_module: torch.nn.Module
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    clock: _Clock
    ema: Optional[ExponentialMovingAverage]
    clip: Union[str, float, None]
    bf16: bool
    context: DistributedContext

    def __call__(self, batch: Any, state: FitState, epoch: int) -> float:
        r"""Takes a step on :obj:`batch`; returns its loss, the mean over
        the processes."""
        device = self.context.device
        with torch.autocast(device.type, dtype=torch.bfloat16,
                            enabled=self.bf16):
            loss = self.loss_module(batch.to(device)).float().mean()
        value = mean_over_processes(float(loss.detach()), self.context)
        if not math.isfinite(value):
            raise FloatingPointError(
                f'The training loss is {value} at epoch {epoch}, step '
                f'{state.step + 1}: training stopped. Lower the learning '
                f'rate, clip the gradients or check the data.')
        self.optimizer.zero_grad()
        loss.backward()
        if self.clip == 'adaptive':
            clip_gradients(self.model.parameters(), state.grad_norms)
        elif self.clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.schedule.update(state.step, self.clock.elapsed())
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        state.step += 1
        return value


def _total_steps(loader: Iterable, epochs: int) -> Optional[int]:
    r"""The steps of all epochs (:obj:`None` for loaders without a
    length); refuses an empty loader."""
    if not hasattr(loader, '__len__'):
        return None
    if len(loader) == 0:
        raise ValueError("'train_loader' is empty: there is nothing to train "
                         "on")
    return epochs * len(loader)


def _run(run_config: Optional[Dict[str, Any]], config: FitConfig,
         objective: Objective) -> Dict[str, Any]:
    r"""What defines a run: :obj:`run_config` with the optimisation options
    and the objective."""
    run_config = dict(run_config or {})
    reserved = sorted({'fit', 'objective'} & set(run_config))
    if reserved:
        raise ValueError(f"'run_config' must not hold {reserved}: fit adds "
                         f"them")
    return dict(run_config, fit=config.to_dict(),
                objective=objective.config())


def _train_epoch(step: _Step, loader: Iterable, state: FitState, epoch: int,
                 desc: str, progress: bool) -> Dict[str, Any]:
    r"""Trains one epoch (until the time budget is spent); returns its
    record."""
    sampler = getattr(loader, 'sampler', None)
    if hasattr(sampler, 'set_epoch'):
        sampler.set_epoch(epoch)
    step.model.train()
    total, count = 0.0, 0
    with tqdm(loader, desc=desc, leave=False, disable=not progress) as bar:
        for batch in bar:
            total += step(batch, state, epoch)
            count += 1
            bar.set_postfix(loss=f'{total / count:.4g}')
            if step.clock.out_of_time():
                break
    if count == 0:
        raise ValueError(f"'train_loader' yielded no batch in epoch {epoch}")
    return dict(epoch=epoch, step=state.step, train_loss=total / count)


def _validate(validate: Callable[[torch.nn.Module], float],
              evaluated: torch.nn.Module, epoch: int,
              context: DistributedContext) -> float:
    r"""The validation value of rank 0, in every process; refuses NaN."""
    value = float(validate(evaluated)) if context.is_main else math.nan
    value = broadcast_from_main(value, context)
    if math.isnan(value):
        raise FloatingPointError(f'The validation value of epoch {epoch} is '
                                 f'NaN: training stopped')
    return value


def _describe(record: Dict[str, Any]) -> str:
    valid = record.get('valid')
    return (f"epoch {record['epoch']} (step {record['step']}, "
            f"{record['wall_clock_s'] / 60:.1f} min): train loss "
            f"{record['train_loss']:.4f}" +
            (f", valid {valid:.4f}" if valid is not None else ''))


def _rng_state() -> Dict[str, Any]:
    state = dict(torch=torch.get_rng_state())
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state['torch'].cpu())
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


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
