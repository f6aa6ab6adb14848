r"""The task interface: what a task declares (data, default configurations,
model, metrics, evaluation, file formats), the configurations of a training
run and of an evaluation, and :func:`train`, which runs any task."""
import hashlib
import os
import os.path as osp
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import (Any, Callable, Dict, List, NamedTuple, Optional, Tuple,
                    Type, Union)

import torch
from torch_geometric.data import Batch, Data, Dataset

from torch_enf.config import Config, differences
from torch_enf.distributed import (DistributedContext, init_distributed,
                                   shard_loader, shutdown)
from torch_enf.evaluation import NLLEstimate, evaluate_nll
from torch_enf.flows import (EvaluationCount, SolverOptions,
                             canonical_model_config, model_config)
from torch_enf.flows.dynamics import check_prediction
from torch_enf.objectives import Objective
from torch_enf.storage import atomic_save, save_model
from torch_enf.training import FitConfig, FitState, fit
from torch_enf.utils import Registry, check_num_radial, json_safe

TRACES = ('exact', 'hutchinson')


@dataclass(frozen=True)
class DataConfig(Config):
    r"""Where a task's data comes from and how it is split.

    Args:
        root (str): The cache folder of generated or processed data.
        files (str, optional): A file, folder or glob of the user's data
            (the :obj:`molecules` and :obj:`points` tasks).
        n_train (int, optional): A training subset of this size (the first
            graphs of the particle systems, a seeded random subset of the
            others); all by default.
        split_seed (int): The seed of the split and of the subsets.
        max_num_atoms (int, optional): Skip larger structures (user data).
    """
    root: str = 'data'
    files: Optional[str] = None
    n_train: Optional[int] = None
    split_seed: int = 0
    max_num_atoms: Optional[int] = None

    def __post_init__(self):
        for name in ('n_train', 'max_num_atoms'):
            value = getattr(self, name)
            if value is not None and not value >= 1:
                raise ValueError(f'{name} must be positive (got {value})')


ATOM_TYPE_MODELS = ('flow', 'composition')
r"""How a molecule model treats the atom types, see
:class:`ModelOptions`."""


@dataclass(frozen=True)
class ModelOptions(Config):
    r"""The architecture of a task's model, before the data fixes its
    dimensions (the element set, :math:`p(M)`, the space): see
    :class:`~torch_enf.flows.ENFlowConfig` and
    :class:`~torch_enf.flows.MoleculeFlowConfig`. :obj:`graph` is
    :obj:`"full"`, a cutoff radius, or :obj:`"auto"`: the task's choice for
    the size of its graphs (see :meth:`Task.graph`). :obj:`atom_types`,
    the dequantiser, the class margin and ActNorm apply to molecule models
    only: :obj:`"flow"` carries dequantised atom types and charges in the
    flow (:class:`~torch_enf.flows.MoleculeFlow`, the E-NF paper's model),
    :obj:`"composition"` draws the composition from the training
    formulas and the positions from a flow conditioned on the types
    (:class:`~torch_enf.flows.CompositionFlow`; no dequantiser, class
    margin or ActNorm). :obj:`prediction` is what the EGNN predicts,
    :obj:`"velocity"` or :obj:`"endpoint"` (see
    :class:`~torch_enf.flows.EGNNDynamics`)."""
    hidden_channels: int = 64
    num_layers: int = 6
    num_radial: int = 0
    radial_cutoff: float = 5.0
    graph: Union[str, float] = 'auto'
    adjoint: bool = True
    dequantizer: str = 'argmax'
    class_margin: float = 0.0
    actnorm: bool = False
    atom_types: str = 'flow'
    prediction: str = 'velocity'

    def __post_init__(self):
        for name in ('hidden_channels', 'num_layers', 'radial_cutoff'):
            if not getattr(self, name) > 0:
                raise ValueError(f'{name} must be positive (got '
                                 f'{getattr(self, name)})')
        check_num_radial(self.num_radial)
        check_prediction(self.prediction)
        if self.graph not in ('auto', 'full') and not (
                isinstance(self.graph, (int, float)) and self.graph > 0):
            raise ValueError(f"graph must be 'auto', 'full' or a positive "
                             f"radius (got {self.graph!r})")
        if not self.class_margin >= 0:
            raise ValueError(f'class_margin must be non-negative (got '
                             f'{self.class_margin})')
        if self.atom_types not in ATOM_TYPE_MODELS:
            raise ValueError(f'atom_types must be one of {ATOM_TYPE_MODELS} '
                             f'(got {self.atom_types!r})')
        if self.atom_types == 'composition' and (self.class_margin > 0 or
                                                 self.actnorm):
            raise ValueError("class_margin and actnorm apply to "
                             "atom_types='flow' (the composition model "
                             "has no dequantised types)")


@dataclass(frozen=True)
class EvaluationConfig(Config):
    r"""How a trained model is validated and judged.

    Args:
        num_valid (int): Validation graphs for model selection.
        num_test (int, optional): Test graphs (all by default).
        num_samples (int): Samples for the sample metrics.
        valid_trace (str, optional): Trace of the validation NLL (the task's
            default if :obj:`None`).
        trace (str, optional): Trace of the test NLL (the task's default).
        valid_solver (SolverOptions): The solve of the validation NLL.
        solver (SolverOptions): The solve of the test NLL.
        sampler (SolverOptions): The solve of the samples.
        boltzmann_samples (int): Flow samples for importance weights
            (particle systems with an energy).
        novelty (bool): Also compare samples with the training molecules.
        published_test (str, optional): A further :obj:`.npy` test split.
        seed (int): Seed of the test subset and the samples.
    """
    num_valid: int = 1000
    num_test: Optional[int] = None
    num_samples: int = 1000
    valid_trace: Optional[str] = None
    trace: Optional[str] = None
    valid_solver: SolverOptions = SolverOptions()
    solver: SolverOptions = SolverOptions()
    sampler: SolverOptions = SolverOptions()
    boltzmann_samples: int = 0
    novelty: bool = False
    published_test: Optional[str] = None
    seed: int = 0

    def __post_init__(self):
        for name in ('num_valid', 'num_samples', 'num_test'):
            value = getattr(self, name)
            if value is not None and not value >= 1:
                raise ValueError(f'{name} must be positive (got {value})')
        for name in ('valid_trace', 'trace'):
            if getattr(self, name) not in TRACES + (None, ):
                raise ValueError(f'{name} must be one of {TRACES} (got '
                                 f'{getattr(self, name)!r})')
        if self.boltzmann_samples < 0:
            raise ValueError('boltzmann_samples must be non-negative')


@dataclass(frozen=True)
class RunConfig(Config):
    r"""Everything that defines a training run: stored in its checkpoint
    and compared on resume (see :func:`torch_enf.training.fit` for the
    fields that may change).

    :obj:`init` names a model (a shipped name, a model file or a run folder,
    anything :func:`~torch_enf.pretrained.read_model` reads) whose weights
    the run starts from instead of a fresh initialisation: fine-tuning a
    shipped model on other data, or training a finished run further with a
    new schedule. Its configuration must equal the one the run builds."""
    task: str
    data: DataConfig = DataConfig()
    model: ModelOptions = ModelOptions()
    fit: FitConfig = FitConfig(epochs=100)
    objective: Dict[str, Any] = field(default_factory=lambda: dict(
        name='fm'))
    batch_size: int = 100
    seed: int = 0
    init: Optional[str] = None

    def __post_init__(self):
        if not self.batch_size >= 1:
            raise ValueError(f'batch_size must be positive (got '
                             f'{self.batch_size})')


class Splits(NamedTuple):
    r"""A task's data: the training, validation and test sets (PyG
    datasets of :class:`~torch_geometric.data.Data`)."""
    train: Dataset
    valid: Dataset
    test: Dataset


class Structures(NamedTuple):
    r"""Structures read for scoring: the graphs a model can score, their
    names, and a description of every skipped structure."""
    graphs: List[Data]
    names: List[str]
    skipped: List[str]


class Task(ABC):
    r"""One kind of data and what is done with it. A task declares

    * its data (:meth:`datasets`) and model (:meth:`build_model`),
    * the default options of its training runs (:meth:`defaults`, the
      flags of :obj:`torch-enf train TASK`),
    * its evaluation (:meth:`evaluate`) and sample metrics
      (:meth:`sample_metrics`),
    * the files it reads for scoring (:meth:`read_structures`) and writes
      samples to (:meth:`write_samples`).

    Tasks are looked up by name in :obj:`TASKS`; register a subclass with
    :func:`register_task`. Tasks whose shapes come from the user's data
    (*e.g.* the size of the point clouds) store them in :meth:`state`, which
    model files keep, so that a model file alone rebuilds its task with
    :func:`task_from_state`.
    """
    name: str = ''
    description: str = ''
    sample_suffixes: Tuple[str, ...] = ()
    score_suffixes: Tuple[str, ...] = ()
    default_trace: str = 'exact'

    def state(self) -> Dict[str, Any]:
        r"""The plain data that rebuilds this task (its name and the shapes
        its data gave it)."""
        return dict(name=self.name)

    def defaults(self, objective: str, quick: bool) -> Dict[str, Any]:
        r"""Default options of a training run of this task, by flag name
        (*e.g.* :obj:`{'epochs': 300, 'hidden_channels': 32}`);
        :obj:`quick` selects a small preset for two CPU cores."""
        return {}

    @abstractmethod
    def datasets(self, data: DataConfig, progress: bool = True,
                 log: bool = True) -> Splits:
        r"""The training, validation and test sets; :obj:`log` prints what
        processing the data skipped."""

    @abstractmethod
    def build_model(self, options: ModelOptions, splits: Splits
                    ) -> torch.nn.Module:
        r"""An untrained model of the task for the data of :obj:`splits`."""

    def graph(self, options: ModelOptions,
              max_num_nodes: int) -> Union[str, float]:
        r"""The graph of the vector field for graphs of up to
        :obj:`max_num_nodes` nodes: :obj:`options.graph`, where
        :obj:`"auto"` means fully connected graphs."""
        return 'full' if options.graph == 'auto' else options.graph

    def num_nodes(self) -> Optional[int]:
        r"""The size of every sampled graph, or :obj:`None` for models that
        draw it (:math:`p(M)` of a molecule model)."""
        return None

    def sample(self, model: torch.nn.Module, num_samples: int,
               **kwargs: Any) -> Batch:
        r"""Draws :obj:`num_samples` graphs; keyword arguments go to the
        model's :meth:`sample` (:obj:`generator`, :obj:`batch_size`,
        :obj:`solver`, :obj:`temperature`, :obj:`progress`,
        :obj:`counter`)."""
        return model.sample(num_samples, self.num_nodes(), **kwargs)

    @abstractmethod
    def evaluate(self, model: torch.nn.Module, splits: Splits,
                 evaluation: EvaluationConfig, out: str,
                 progress: bool = True) -> Dict[str, Any]:
        r"""The test metrics of a trained model; pictures and sample files
        go to :obj:`out`."""

    @abstractmethod
    def sample_metrics(self, samples: Batch,
                       reference: Optional[Dataset] = None
                       ) -> Dict[str, Any]:
        r"""The metrics of samples (against reference data if given)."""

    @abstractmethod
    def read_structures(self, path: str, model: torch.nn.Module
                        ) -> Structures:
        r"""The structures of a file that :obj:`model` can score."""

    @abstractmethod
    def write_samples(self, samples: Batch, path: str,
                      picture: Optional[str] = None) -> None:
        r"""Writes samples to :obj:`path` (atomically) and, with
        :obj:`picture`, a picture of them."""

    def trace(self, requested: Optional[str]) -> str:
        r"""The trace of the likelihoods: :obj:`requested`, or the task's
        default."""
        return requested or self.default_trace

    def check_suffix(self, path: str, suffixes: Tuple[str, ...],
                     what: str) -> None:
        r"""Refuses a file whose suffix the task cannot read or write."""
        suffix = osp.splitext(path)[1].lower()
        if suffix not in suffixes:
            raise ValueError(f"{path}: the task '{self.name}' {what} "
                             f"{' or '.join(suffixes)} files")

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}('{self.name}')"


TASKS = Registry(Task, 'task')
r"""The tasks by name; see :func:`register_task`."""


def register_task(name: str) -> Callable[[Type[Task]], Type[Task]]:
    r"""Class decorator that adds a :class:`Task` subclass to :obj:`TASKS`
    under :obj:`name` (also stored as its :obj:`name`)."""
    return TASKS.register(name)


def get_task(name: str, **options: Any) -> Task:
    r"""The task :obj:`name` (options are the shapes of user-data
    tasks, as in :meth:`Task.state`)."""
    return TASKS.create(name, **options)


def task_from_state(state: Dict[str, Any]) -> Task:
    r"""Rebuilds a task from its :meth:`Task.state`."""
    options = dict(state)
    return get_task(options.pop('name'), **options)


MIN_DISTANCE = 1e-4
r"""Two nodes of a structure to score closer than this coincide: the
density of such a degenerate structure is numerically undefined."""


def degenerate(pos: torch.Tensor) -> Optional[str]:
    r"""Why the structure :obj:`pos` :obj:`[M, n]` cannot be scored (two
    nodes coincide), or :obj:`None`."""
    distances = torch.cdist(pos.double(), pos.double())
    distances.fill_diagonal_(float('inf'))
    closest = int(distances.argmin())
    first, second = divmod(closest, pos.size(0))
    if float(distances.view(-1)[closest]) < MIN_DISTANCE:
        return (f'nodes {first} and {second} coincide (closer than '
                f'{MIN_DISTANCE:g}): a degenerate structure')
    return None


def user_data_root(data: DataConfig, kind: str) -> str:
    r"""The cache folder of the user's data :obj:`data.files`: one per
    file, folder or glob (named after it, with a hash of its absolute
    path), so that the processed data and the split of different files
    never mix."""
    files = str(data.files)
    digest = hashlib.sha1(osp.abspath(files).encode()).hexdigest()[:8]
    stem = osp.splitext(osp.basename(osp.normpath(files)))[0] or kind
    return osp.join(data.root, kind, f'{stem}-{digest}')


def subset(dataset: Dataset, num: Optional[int],
           seed: Optional[int] = None) -> Dataset:
    r"""The first :obj:`num` graphs of :obj:`dataset` (a random subset with
    :obj:`seed`), or all of them."""
    if num is None or num >= len(dataset):
        return dataset
    if seed is None:
        return dataset[:num]
    generator = torch.Generator().manual_seed(seed)
    return dataset[torch.randperm(len(dataset), generator=generator)[:num]]


def train(task: Task, run: RunConfig, objective: Objective,
          evaluation: EvaluationConfig, out: str, *, resume: bool = False,
          device: Union[str, torch.device] = 'cpu', progress: bool = True,
          log: Callable[[str], None] = print) -> Optional[Dict[str, Any]]:
    r"""Trains a model of :obj:`task`, selects it by validation NLL,
    evaluates it and writes :obj:`out/results.json` and the model file
    :obj:`out/model.pt` beside the checkpoints of
    :func:`~torch_enf.training.fit`. Under :obj:`torchrun` every process
    trains on its shard; rank 0 validates, evaluates and writes.

    Returns:
        The results (on rank 0; :obj:`None` on the other ranks).
    """
    context = init_distributed(str(device))
    try:
        return _train(task, run, objective, evaluation, out, resume,
                      context, progress, log)
    finally:
        shutdown(context)


def _train(task: Task, run: RunConfig, objective: Objective,
           evaluation: EvaluationConfig, out: str, resume: bool,
           context: DistributedContext, progress: bool,
           log: Callable[[str], None]) -> Optional[Dict[str, Any]]:
    torch.manual_seed(run.seed)
    progress = progress and context.is_main
    splits = task.datasets(run.data, progress, log=context.is_main)
    if len(splits.train) < run.batch_size * context.world_size:
        raise ValueError(f'The training set holds {len(splits.train)} '
                         f'graphs, fewer than one batch of {run.batch_size}'
                         f' per process: lower --batch-size')
    model = task.build_model(run.model, splits)
    if run.init is not None and not resume:
        start_from(model, run.init)
    model = model.to(context.device)
    loader = shard_loader(splits.train, run.batch_size, context,
                          seed=run.seed, drop_last=True)
    valid = shard_loader(subset(splits.valid, evaluation.num_valid), 100,
                         DistributedContext(0, 1, context.device),
                         shuffle=False)
    trace = task.trace(evaluation.valid_trace)

    def validate(evaluated: torch.nn.Module) -> float:
        return evaluate_nll(evaluated, valid, trace,
                            solver=evaluation.valid_solver, desc='valid',
                            progress=progress).nll

    stored = model_config(model)
    state = fit(model, objective, loader, out, run.fit, validate=validate,
                resume=resume, run_config=_identity(run, stored),
                canonical_run=_canonical_run,
                metadata=dict(model=stored, task=task.state(),
                              run=run.to_dict()),
                context=context, progress=progress, log=log)
    if not context.is_main:
        return None
    model.load_state_dict(torch.load(osp.join(out, 'best.pt'),
                                     map_location=context.device,
                                     weights_only=True))
    results = task.evaluate(model, splits, evaluation, out, progress)
    results.update(run_summary(run, state), task=task.name,
                   n_train=len(splits.train), world_size=context.world_size)
    atomic_save(json_safe(results), osp.join(out, 'results.json'))
    save_model(model, osp.join(out, 'model.pt'), task.state(), card=dict(
        name=task.name, description=task.description,
        training=run.to_dict(), evaluation=evaluation.to_dict(),
        sampler=evaluation.sampler.to_dict(), metrics=json_safe(results)))
    return results


def start_from(model: torch.nn.Module, init: str) -> None:
    r"""Loads the weights of the model :obj:`init` (anything
    :func:`~torch_enf.pretrained.read_model` reads) into :obj:`model`.

    Raises:
        ValueError: If the two models' configurations differ (every
            difference is named).
    """
    # pretrained imports the tasks to rebuild a model's task.
    from torch_enf.pretrained import read_model
    found = read_model(init)
    changed = differences(canonical_model_config(found.model),
                          model_config(model))
    if changed:
        listed = '; '.join(f'{name}: {stored!r} in {init}, {built!r} here'
                           for name, stored, built in changed)
        raise ValueError(f"Cannot start from {init}: its model differs "
                         f"from the one this run builds ({listed})")
    model.load_state_dict(found.state_dict)


def _identity(run: RunConfig, stored_model: Dict[str, Any]
              ) -> Dict[str, Any]:
    r"""What must not change when a run is resumed: the task, its data,
    the concrete model, the batch size and the seed (the objective and the
    optimisation options are added by :func:`~torch_enf.training.fit`)."""
    return dict(task=run.task, data=run.data.to_dict(),
                model=stored_model, batch_size=run.batch_size,
                seed=run.seed)


def _canonical_run(stored: Dict[str, Any]) -> Dict[str, Any]:
    r"""A run of :func:`_identity` stored by an earlier version, with its
    model configuration as it is written now."""
    if 'model' not in stored:
        return stored
    return dict(stored, model=canonical_model_config(stored['model']))


def run_summary(run: RunConfig, state: FitState) -> Dict[str, Any]:
    r"""What every results file records about the training run."""
    return dict(objective=run.objective.get('name'), epochs=run.fit.epochs,
                epochs_completed=state.epoch, steps=state.step,
                stopped_by_budget=state.stopped_by_budget,
                time_budget_h=run.fit.time_budget,
                batch_size=run.batch_size, lr=run.fit.lr,
                ema=run.fit.ema_decay, best_epoch=state.best_epoch,
                best_valid_nll=state.best_valid,
                training_wall_clock_s=state.wall_clock_s,
                threads=torch.get_num_threads())


def test_nll(model: torch.nn.Module, test: Dataset, trace: str,
             solver: SolverOptions, progress: bool) -> NLLEstimate:
    r"""The NLL of every test graph, their mean with its standard error and
    the mean number of evaluations per solve."""
    device = next(model.parameters()).device
    loader = shard_loader(test, 100, DistributedContext(0, 1, device),
                          shuffle=False)
    return evaluate_nll(model, loader, trace, solver=solver, desc='test',
                        progress=progress)


def draw_samples(task: Task, model: torch.nn.Module, num_samples: int,
                 solver: SolverOptions, seed: int, progress: bool,
                 batch_size: int = 100) -> Tuple[Batch, float]:
    r"""Samples of a task's model with the mean evaluations per solve."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    counter = EvaluationCount()
    model.eval()
    samples = task.sample(model, num_samples, generator=generator,
                          batch_size=batch_size, progress=progress,
                          solver=solver, counter=counter)
    solves = -(-num_samples // batch_size)
    return samples.cpu(), counter.value / solves


def likelihood_and_samples(task: Task, model: torch.nn.Module,
                           test: Dataset, evaluation: EvaluationConfig,
                           progress: bool, batch_size: int = 100
                           ) -> Tuple[Dict[str, Any], NLLEstimate, Batch]:
    r"""What every evaluation starts with: the test NLL of :obj:`test` (in
    the task's trace) and samples of the model, as results entries, the
    estimate and the samples."""
    trace = task.trace(evaluation.trace)
    estimate = test_nll(model, test, trace, evaluation.solver, progress)
    samples, nfe = draw_samples(task, model, evaluation.num_samples,
                                evaluation.sampler, evaluation.seed,
                                progress, batch_size)
    results = dict(test_nll=estimate.nll, test_nll_stderr=estimate.stderr,
                   num_test=estimate.num_graphs, nfe=estimate.num_evals,
                   eval_trace=trace, sampling_nfe=nfe)
    return results, estimate, samples


def prepare_output(path: str, overwrite: bool) -> str:
    r"""Checks that :obj:`path` may be written before any work: its folder
    is created (or refused if a file is in the way) and an existing file
    is refused unless :obj:`overwrite`."""
    folder = osp.dirname(osp.abspath(path))
    if osp.exists(folder) and not osp.isdir(folder):
        raise ValueError(f'{path}: {folder} is a file, not a folder')
    os.makedirs(folder, exist_ok=True)
    if osp.isdir(path):
        raise ValueError(f'{path} is a folder; give a file name')
    if osp.exists(path) and not overwrite:
        raise ValueError(f'{path} exists; pass --overwrite to replace it')
    if not os.access(folder, os.W_OK):
        raise ValueError(f'{path}: the folder {folder} is not writable')
    return path

