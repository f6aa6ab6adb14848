r"""ODE integration of the flows: solver options validated in one place, the
augmented right-hand side (state, Jacobian trace, regularisers) and the solve
with :obj:`torchdiffeq`, forward or adjoint."""
import collections
from dataclasses import dataclass, replace
from typing import (Any, Callable, Deque, Dict, List, Optional, Sequence,
                    Tuple)

import torch
from torch import Tensor
from torchdiffeq import odeint, odeint_adjoint
from torchdiffeq._impl.odeint import SOLVERS
from torchdiffeq._impl.solvers import AdaptiveStepsizeODESolver

from torch_enf.flows.divergence import (diagonal_basis, exact_divergence,
                                        hutchinson_divergence)
from torch_enf.utils import (check_positive_integer, check_positive_number,
                             scatter_sum)

ADAPTIVE_SOLVERS = tuple(name for name, cls in SOLVERS.items()
                         if issubclass(cls, AdaptiveStepsizeODESolver))
r"""The adaptive-step solvers of :obj:`torchdiffeq` (:obj:`rtol`,
:obj:`atol`, :obj:`max_num_steps`)."""

STATE_BOUND = 1e8
r"""A state beyond this magnitude counts as diverged."""

MIN_RELATIVE_STEP = 1e-5
r"""An adaptive solve whose step (the spread of the last
:obj:`STEP_WINDOW` evaluation times) falls below this fraction of the
interval is reported as diverged."""

STEP_WINDOW = 16
STALL_AFTER_EVALS = 200

FIXED_STEP_SOLVERS = tuple(name for name in SOLVERS
                           if name not in ADAPTIVE_SOLVERS
                           and name != 'scipy_solver')
r"""The fixed-grid solvers of :obj:`torchdiffeq` (:obj:`num_steps`)."""


class ODESolveError(RuntimeError):
    r"""Raised when the ODE solve of a flow diverges: the state became
    non-finite, the adaptive step size underflowed or the step budget ran
    out."""


class EvaluationBudgetExceeded(ODESolveError):
    r"""Raised when a solve needs more evaluations of the vector field than
    :obj:`SolverOptions.max_num_evals` allows. Unlike the other solve errors
    it says nothing about the field: the caller chose to stop early, *e.g.*
    to solve a stiff graph apart from the rest of its batch."""


@dataclass(frozen=True)
class SolverOptions:
    r"""How one ODE solve is run; checked when built.

    Args:
        method (str): A :obj:`torchdiffeq` solver: adaptive
            (:obj:`ADAPTIVE_SOLVERS`, *e.g.* :obj:`"dopri5"`) or fixed-step
            (:obj:`FIXED_STEP_SOLVERS`, *e.g.* :obj:`"euler"`,
            :obj:`"midpoint"`, :obj:`"rk4"`).
        rtol (float): Relative tolerance of adaptive solvers.
        atol (float): Absolute tolerance of adaptive solvers.
        num_steps (int, optional): Equal steps over :math:`[0, 1]` of a
            fixed-step solver; required for them, unused by adaptive ones.
        max_num_steps (int): Step budget of adaptive solvers.
        max_num_evals (int, optional): Budget of vector-field evaluations of
            one solve, for any solver; beyond it
            :class:`EvaluationBudgetExceeded` is raised. (default:
            :obj:`None`: no budget)
    """
    method: str = 'dopri5'
    rtol: float = 1e-5
    atol: float = 1e-5
    num_steps: Optional[int] = None
    max_num_steps: int = 10000
    max_num_evals: Optional[int] = None

    def __post_init__(self):
        known = ADAPTIVE_SOLVERS + FIXED_STEP_SOLVERS
        if self.method not in known:
            raise ValueError(f"Unknown ODE solver {self.method!r} (expected "
                             f"one of {known})")
        check_positive_number(self.rtol, 'rtol')
        check_positive_number(self.atol, 'atol')
        check_positive_integer(self.max_num_steps, 'max_num_steps')
        if self.max_num_evals is not None:
            check_positive_integer(self.max_num_evals, 'max_num_evals')
        if self.adaptive:
            return
        if self.num_steps is None:
            raise ValueError(f"The fixed-step solver {self.method!r} needs "
                             f"'num_steps' (the number of equal steps over "
                             f"[0, 1])")
        check_positive_integer(self.num_steps, 'num_steps')

    @property
    def adaptive(self) -> bool:
        r"""Whether the solver chooses its own steps."""
        return self.method in ADAPTIVE_SOLVERS

    def update(self, **changes: Any) -> 'SolverOptions':
        r"""A checked copy with some options changed. Switching to an
        adaptive solver drops :obj:`num_steps`."""
        if changes.get('method') in ADAPTIVE_SOLVERS and \
                'num_steps' not in changes:
            changes['num_steps'] = None
        return replace(self, **changes)

    def odeint_kwargs(self) -> Dict[str, Any]:
        r"""The keyword arguments of :func:`torchdiffeq.odeint`."""
        kwargs: Dict[str, Any] = dict(method=self.method, rtol=self.rtol,
                                      atol=self.atol)
        if self.adaptive:
            kwargs['options'] = dict(max_num_steps=self.max_num_steps)
        else:
            num_steps = self.num_steps

            def grid(func, y0, t):  # exactly num_steps equal steps
                return torch.linspace(float(t[0]), float(t[-1]),
                                      num_steps + 1, dtype=t.dtype,
                                      device=t.device)

            kwargs['options'] = dict(grid_constructor=grid)
        return kwargs


class EvaluationCount:
    r"""A running count of the vector-field evaluations of one solve. It is
    shared with whoever reports the count, because the backward pass of the
    adjoint method evaluates the field after :func:`integrate` returned."""
    __slots__ = ('value', )

    def __init__(self) -> None:
        self.value = 0


class AugmentedODE:
    r"""The right-hand side of one solve: the node states (positions and
    features) and, as requested, the Jacobian trace (exact or Hutchinson
    with a fixed probe) and the kinetic + Jacobian Frobenius regulariser,
    each integrated per graph.

    Args:
        field (callable): :obj:`field(t, pos, h, batch, num_graphs,
            edge_index)` returning :obj:`(dpos, dh)`, *e.g.* a
            :class:`~torch_enf.flows.VectorField`.
        nodes (list of torch.Tensor): The initial node states, :obj:`[pos]`
            or :obj:`[pos, h]`.
        batch (torch.Tensor): Graph assignment :obj:`[N]`.
        num_graphs (int): The number of graphs.
        trace (str, optional): :obj:`"exact"`, :obj:`"hutchinson"` or
            :obj:`None`.
        probe (list of torch.Tensor, optional): Hutchinson probes shaped like
            :obj:`nodes` (needed for the Hutchinson trace and the
            regulariser).
        regularize (bool): Integrate the regulariser.
        edge_index (torch.Tensor, optional): A fixed graph for the solve.
    """
    def __init__(self, field: Callable, nodes: List[Tensor], batch: Tensor,
                 num_graphs: int, trace: Optional[str],
                 probe: Optional[List[Tensor]], regularize: bool,
                 edge_index: Optional[Tensor] = None):
        self.field = field
        self.batch = batch
        self.num_graphs = num_graphs
        self.with_features = len(nodes) > 1
        self.trace = trace
        self.probe = probe
        self.regularize = regularize
        self.edge_index = edge_index
        self.basis = diagonal_basis(
            batch, num_graphs, sum(x.size(-1) for x in nodes), nodes[0]) \
            if trace == 'exact' else None
        self.evaluations = EvaluationCount()
        self.max_num_evals: Optional[int] = None
        self.interval = 1.0
        self.recent_times: Deque[float] = collections.deque(
            maxlen=STEP_WINDOW)

    def __call__(self, t: Tensor, state: Tuple[Tensor, ...]
                 ) -> Tuple[Tensor, ...]:
        if self.max_num_evals is not None and \
                self.num_evals >= self.max_num_evals:
            raise EvaluationBudgetExceeded(
                f'The ODE solve used up its budget of {self.max_num_evals} '
                f'evaluations of the vector field')
        self.evaluations.value += 1
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            nodes = [_track(x, create_graph)
                     for x in state[:2 if self.with_features else 1]]
            self._watch(t, nodes)
            velocities = self._velocities(t, nodes)
            extra = self._extra_terms(velocities, nodes, create_graph)
        if not create_graph:
            velocities = [v.detach() for v in velocities]
            extra = [e.detach() for e in extra]
        return tuple(velocities + extra)

    @property
    def num_evals(self) -> int:
        r"""The evaluations so far, forward and (adjoint) backward."""
        return self.evaluations.value

    def _watch(self, t: Tensor, nodes: List[Tensor]) -> None:
        r"""Reports a diverging solve within a few steps: a state beyond
        :obj:`STATE_BOUND` (or non-finite), or an adaptive step size that
        collapsed below :obj:`MIN_RELATIVE_STEP` of the interval, which
        would otherwise run on until :obj:`max_num_steps`."""
        # One host transfer per evaluation for the time and the bound check,
        # in at least float32 and the time's own precision (a half-precision
        # state must not round the times that the stall check compares).
        inside = torch.stack([(x.detach().abs() < STATE_BOUND).all()
                              for x in nodes]).all()
        dtype = torch.promote_types(t.dtype, torch.float32)
        time, inside = torch.stack([t.detach().reshape(()).to(dtype),
                                    inside.to(dtype)]).tolist()
        if not inside:
            raise ODESolveError(
                f'The ODE solve diverged: the state left |x| < '
                f'{STATE_BOUND:.0e} (or became NaN) at t={time:.4g} after '
                f'{self.num_evals} evaluations of the vector field')
        self.recent_times.append(time)
        if len(self.recent_times) == self.recent_times.maxlen and \
                self.num_evals > STALL_AFTER_EVALS:
            span = max(self.recent_times) - min(self.recent_times)
            if span < MIN_RELATIVE_STEP * self.interval:
                raise ODESolveError(
                    f'The ODE solve diverged: the step size collapsed to '
                    f'{span:.2e} at t={time:.4g} after {self.num_evals} '
                    f'evaluations of the vector field; the field is too '
                    f'stiff for the tolerances (bound it with coords_range, '
                    f'loosen the tolerances or use float64)')

    def _velocities(self, t: Tensor, nodes: List[Tensor]) -> List[Tensor]:
        pos = nodes[0]
        h = nodes[1] if self.with_features else pos.new_zeros(pos.size(0), 0)
        dpos, dh = self.field(t, pos, h, self.batch, self.num_graphs,
                              self.edge_index)
        return [dpos, dh] if self.with_features else [dpos]

    def _extra_terms(self, velocities: List[Tensor], nodes: List[Tensor],
                     create_graph: bool) -> List[Tensor]:
        extra = []
        vjp = None
        if self.trace == 'exact':
            extra.append(exact_divergence(velocities, nodes, self.batch,
                                          self.num_graphs, create_graph,
                                          self.basis))
        if self.trace == 'hutchinson' or self.regularize:
            div, vjp = hutchinson_divergence(velocities, nodes, self.probe,
                                             self.batch, self.num_graphs,
                                             create_graph)
            if self.trace == 'hutchinson':
                extra.append(div)
        if self.regularize:
            per_node = sum(v.pow(2).sum(-1) for v in velocities) + \
                sum(g.pow(2).sum(-1) for g in vjp)
            extra.append(scatter_sum(per_node, self.batch, self.num_graphs))
        return extra


def _track(x: Tensor, create_graph: bool) -> Tensor:
    r"""Makes :obj:`x` the start of the graph the divergence is taken on.
    Outside of a differentiated solve (e.g. the forward pass of the adjoint
    method, run without gradients), the state is cut from whatever graph its
    initial value came from, so only the local Jacobian is formed."""
    if create_graph and x.requires_grad:
        return x
    return x.detach().requires_grad_()


def integrate(func: AugmentedODE, state: Sequence[Tensor], t0: float,
              t1: float, options: SolverOptions,
              adjoint_params: Optional[Sequence[Tensor]] = None,
              adjoint_seminorm: bool = False) -> List[Tensor]:
    r"""Solves :obj:`func` from :obj:`t0` to :obj:`t1` and returns the final
    state. With :obj:`adjoint_params` (and gradients enabled) the backward
    pass uses the adjoint method for those parameters.

    Raises:
        ODESolveError: If the solve fails or ends in non-finite values.
    """
    times = torch.tensor([t0, t1], dtype=state[0].dtype,
                         device=state[0].device)
    func.interval = abs(t1 - t0)
    func.max_num_evals = options.max_num_evals
    kwargs = options.odeint_kwargs()
    try:
        if adjoint_params is not None and torch.is_grad_enabled():
            adjoint_options = dict(kwargs['options'])
            if adjoint_seminorm and options.adaptive:
                adjoint_options['norm'] = 'seminorm'
            solution = odeint_adjoint(func, tuple(state), times,
                                      adjoint_params=tuple(adjoint_params),
                                      adjoint_options=adjoint_options,
                                      **kwargs)
        else:
            solution = odeint(func, tuple(state), times, **kwargs)
    except AssertionError as error:  # torchdiffeq's step-size checks
        raise ODESolveError(f'The ODE solve failed: {error}. The vector '
                            f'field is likely too stiff; bound it with '
                            f'coords_range or loosen the tolerances') \
            from error
    final = [x[-1] for x in solution]
    if not all(bool(torch.isfinite(x).all()) for x in final):
        raise ODESolveError('The ODE solve diverged: non-finite values at '
                            'the end of the integration')
    return final
