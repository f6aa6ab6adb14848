r"""Likelihoods of trained flows: the mean test NLL of a loader
(:func:`evaluate_nll`) and the log-density of every graph of a list with
stiff graphs solved apart (:func:`log_prob_of_graphs`)."""
import contextlib
import statistics
from typing import Iterable, Iterator, List, NamedTuple, Optional, Sequence

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data
from tqdm.auto import tqdm

from torch_enf.flows.integrator import (DEFAULT_SOLVER, EvaluationCount,
                                        ODESolveError, SolverOptions)
from torch_enf.utils import check_positive_integer, check_positive_number


class NLLEstimate(NamedTuple):
    r"""The result of :func:`evaluate_nll`.

    Attributes:
        nll (float): Mean negative log-likelihood per graph (nats).
        stderr (float): Its standard error over the graphs.
        num_graphs (int): The number of graphs.
        num_evals (float): Mean vector-field evaluations per ODE solve
            (NFE).
        values (torch.Tensor): The NLL of every graph, :obj:`[num_graphs]`
            (float64, on the CPU).
    """
    nll: float
    stderr: float
    num_graphs: int
    num_evals: float
    values: Tensor


@torch.no_grad()
def evaluate_nll(model: torch.nn.Module, loader: Iterable,
                 trace: str = 'exact',
                 solver: Optional[SolverOptions] = None, desc: str = 'eval',
                 progress: bool = True) -> NLLEstimate:
    r"""The mean negative log-likelihood per graph (nats) of the graphs in
    :obj:`loader` under :obj:`model` (an :class:`~torch_enf.flows.ENFlow`
    or :class:`~torch_enf.flows.MoleculeFlow`, run in evaluation mode),
    its standard error and the mean number of vector-field evaluations per
    solve (one solve per batch), with the :obj:`trace` and :obj:`solver`
    (default: :obj:`DEFAULT_SOLVER`) of :meth:`log_prob`."""
    device = next(model.parameters()).device
    values, evals = [], []
    with _evaluating(model):
        for batch in tqdm(loader, desc=desc, leave=False,
                          disable=not progress):
            counter = EvaluationCount()
            values.append(-model.log_prob(batch.to(device), trace,
                                          solver=solver,
                                          counter=counter).double().cpu())
            evals.append(counter.value)
    values = torch.cat(values)
    stderr = float(values.std() / values.numel() ** 0.5) \
        if values.numel() > 1 else float('nan')
    return NLLEstimate(float(values.mean()), stderr, values.numel(),
                       sum(evals) / len(evals), values)


@torch.no_grad()
def log_prob_of_graphs(model: torch.nn.Module, graphs: Sequence[Data],
                       batch_size: int = 100, trace: str = 'exact',
                       solver: Optional[SolverOptions] = None,
                       budget_factor: float = 3.0,
                       first_budget: int = 1000,
                       skip_failures: bool = False,
                       progress: bool = False) -> Tensor:
    r"""The log-density of every graph of a list, in batches, with stiff
    graphs solved apart from the rest.

    An adaptive solver takes one step size for a whole batch, so a single
    stiff graph (*e.g.* a molecule drawn with a coarse fixed-step sampler,
    whose exact inverse solve needs thousands of evaluations) would set the
    cost of its whole batch. Here every batch gets a budget of
    :obj:`budget_factor` times the median number of evaluations of the
    batches solved so far (:obj:`first_budget` before the first), as the
    :obj:`max_num_evals` of its :obj:`solver`; a batch that runs out of it
    (or whose solve fails) is split in halves, which are solved again, down
    to single graphs, which are solved with :obj:`solver` as given.

    The graphs are batched in their order, so a list that no batch had to
    be split for gives exactly the values of :meth:`log_prob` on the same
    batches. Otherwise the values of a graph differ only through the
    adaptive steps (at the solver's tolerance) and the random draws
    (Hutchinson probes, dequantisation) that its batch took.

    Args:
        model (torch.nn.Module): An :class:`~torch_enf.flows.ENFlow` or
            :class:`~torch_enf.flows.MoleculeFlow`, run in evaluation mode.
        graphs (list of torch_geometric.data.Data): The graphs.
        batch_size (int, optional): Graphs per batch. (default: :obj:`100`)
        trace (str, optional): :obj:`"exact"` or :obj:`"hutchinson"`.
            (default: :obj:`"exact"`)
        solver (SolverOptions, optional): The ODE solver.
            (default: :obj:`DEFAULT_SOLVER`)
        budget_factor (float, optional): The budget of a batch in medians
            of the solved batches' evaluations. (default: :obj:`3.0`)
        first_budget (int, optional): The budget before any batch has
            been solved. (default: :obj:`1000`)
        skip_failures (bool, optional): Give graphs whose own solve fails
            the value NaN, for the caller to report, instead of raising.
            (default: :obj:`False`)
        progress (bool, optional): Show a progress bar over the graphs.

    Returns:
        torch.Tensor: :obj:`[len(graphs)]` (float64, on the CPU), in the
        order of :obj:`graphs`.

    Raises:
        ODESolveError: If the solve of a single graph fails (unless
            :obj:`skip_failures`); the message names the graph's index.
    """
    check_positive_integer(batch_size, 'batch_size')
    check_positive_number(budget_factor, 'budget_factor')
    check_positive_integer(first_budget, 'first_budget')
    if len(graphs) == 0:
        raise ValueError("'graphs' is empty")
    solver = DEFAULT_SOLVER if solver is None else solver
    device = next(model.parameters()).device
    pending = [list(range(start, min(start + batch_size, len(graphs))))
               for start in range(0, len(graphs), batch_size)][::-1]
    values = torch.empty(len(graphs), dtype=torch.float64)
    solved_evals: List[int] = []
    with tqdm(total=len(graphs), desc='log-likelihood', unit='graph',
              disable=not progress) as bar, _evaluating(model):
        while pending:
            indices = pending.pop()
            batch_solver = solver
            if len(indices) > 1:
                budget = first_budget if not solved_evals else max(1, int(
                    budget_factor * statistics.median(solved_evals)))
                batch_solver = solver.replace(max_num_evals=budget)
            batch = Batch.from_data_list([graphs[i] for i in indices])
            counter = EvaluationCount()
            try:
                log_prob = model.log_prob(batch.to(device), trace,
                                          solver=batch_solver,
                                          counter=counter)
            except ODESolveError as error:  # the budget, or a failure
                if len(indices) > 1:
                    half = len(indices) // 2
                    pending.extend([indices[half:], indices[:half]])
                    continue
                if not skip_failures:
                    raise ODESolveError(f'graph {indices[0]}: {error}') \
                        from error
                values[indices] = float('nan')
                bar.update(1)
                continue
            values[indices] = log_prob.double().cpu()
            solved_evals.append(counter.value)
            bar.update(len(indices))
    return values


@contextlib.contextmanager
def _evaluating(model: torch.nn.Module) -> Iterator[None]:
    r"""Evaluation mode for a :obj:`with` block, restoring the mode after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


