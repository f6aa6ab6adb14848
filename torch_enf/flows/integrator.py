r"""ODE integration of the flows: solver options validated in one place, the
augmented right-hand side (state, Jacobian trace, regularisers) and the solve
with :obj:`torchdiffeq`, forward or adjoint."""
import collections
import functools
from dataclasses import dataclass
from typing import (Any, Callable, Deque, Dict, List, Optional, Sequence,
                    Tuple)

import torch
from torch import Tensor
from torchdiffeq import odeint, odeint_adjoint

from torch_enf.config import Config
from torch_enf.flows.divergence import (diagonal_basis, exact_divergence,
                                        hutchinson_divergence)
from torch_enf.utils import (check_positive_integer, check_positive_number,
                             scatter_sum)

ADAPTIVE_SOLVERS = ('dopri8', 'dopri5', 'bosh3', 'fehlberg2',
                    'adaptive_heun')
r"""The adaptive-step solvers of :obj:`torchdiffeq` (:obj:`rtol`,
:obj:`atol`, :obj:`max_num_steps`)."""

FIXED_STEP_SOLVERS = ('euler', 'midpoint', 'heun2', 'heun3', 'rk4',
                      'explicit_adams', 'implicit_adams', 'fixed_adams')
r"""The fixed-grid solvers of :obj:`torchdiffeq` (:obj:`num_steps`)."""

ERROR_NORMS = ('batch', 'graph')
r"""How adaptive solvers measure a step's error, see
:class:`SolverOptions`."""

STATE_BOUND = 1e8
r"""A state beyond this magnitude counts as diverged."""

EVALUATIONS_PER_STEP = {'dopri8': 14, 'dopri5': 7, 'bosh3': 4,
                        'fehlberg2': 3, 'adaptive_heun': 2}
r"""An upper bound of the vector-field evaluations of one step (accepted or
rejected) of every adaptive solver: its stages plus one."""

STEP_WINDOW = 64
r"""The number of evaluations over which the pace of an adaptive solve is
measured."""

STALL_AFTER_EVALS = 200
r"""Evaluations before the pace of an adaptive solve is first judged."""

MIN_RELATIVE_PACE = 1e-5
r"""The least progress per evaluation, as a fraction of the interval, of an
adaptive solve, whatever its step budget: no solve may crawl at a pace that
would need more than :math:`10^5` evaluations to cross the interval."""


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
class SolverOptions(Config):
    r"""How one ODE solve is run; checked when built. Change a field with
    :meth:`~torch_enf.config.Config.replace`, *e.g.*
    :obj:`options.replace(max_num_evals=500)`.

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
        step_exponent (float): The grid of a fixed-step solver: step ends
            at the times :math:`t_k = (k / K)^p` on :math:`[0, 1]` (mapped
            onto the interval of the solve), equal steps for :math:`p = 1`
            and steps that shrink toward :math:`t = 0`, the data end of
            the flows, for :math:`p > 1`, where sampling refines the
            details. (default: :obj:`1.0`)
        error_norm (str): How adaptive solvers measure a step's error:
            :obj:`"batch"`, the root mean square over the whole batch (one
            step size for all graphs; a graph's answer depends on its
            batch-mates within the solver's error), or :obj:`"graph"`, the
            largest per-graph root mean square (see
            :meth:`AugmentedODE.error_norm`), with which every graph meets
            the tolerances whatever its batch-mates are. On the shipped
            :obj:`dw4` model at the default tolerance, 200 test
            configurations batched differ from one-by-one solves by up to
            0.0024 nats with :obj:`"batch"` and 0.0011 with
            :obj:`"graph"`, which takes 1.5x the evaluations.
            (default: :obj:`"batch"`)
    """
    method: str = 'dopri5'
    rtol: float = 1e-5
    atol: float = 1e-5
    num_steps: Optional[int] = None
    max_num_steps: int = 10000
    max_num_evals: Optional[int] = None
    error_norm: str = 'batch'
    step_exponent: float = 1.0

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
        if self.error_norm not in ERROR_NORMS:
            raise ValueError(f"Unknown error_norm {self.error_norm!r} "
                             f"(expected one of {ERROR_NORMS})")
        check_positive_number(self.step_exponent, 'step_exponent')
        if self.adaptive:
            return
        if self.num_steps is None:
            raise ValueError(f"The fixed-step solver {self.method!r} needs "
                             f"'num_steps' (the number of equal steps over "
                             f"[0, 1])")
        check_positive_integer(self.num_steps, 'num_steps')

    @classmethod
    def parse(cls, spec: str) -> 'SolverOptions':
        r"""A solver from its short spelling, as the benchmarks and model
        cards write them: :obj:`"METHOD:TOL"` for an adaptive solver (both
        tolerances, *e.g.* :obj:`"dopri5:1e-5"`) and
        :obj:`"METHOD:STEPS[:EXPONENT]"` for a fixed-step one (*e.g.*
        :obj:`"midpoint:10:1.5"`, see :obj:`step_exponent`).

        Raises:
            ValueError: Naming the spelling, if it does not parse or
                describes no valid solver.
        """
        method, *values = str(spec).split(':')
        adaptive = method in ADAPTIVE_SOLVERS
        try:
            if adaptive and len(values) == 1:
                return cls(method, rtol=float(values[0]),
                           atol=float(values[0]))
            if not adaptive and len(values) in (1, 2):
                return cls(method, num_steps=int(values[0]),
                           step_exponent=float(values[1]) if len(values) == 2
                           else 1.0)
        except ValueError as error:
            raise ValueError(f'Solver {spec!r}: {error}') from None
        raise ValueError(f"Solver {spec!r}: expected 'METHOD:TOL' for an "
                         f"adaptive solver {ADAPTIVE_SOLVERS} or "
                         f"'METHOD:STEPS[:EXPONENT]' for a fixed-step one "
                         f"{FIXED_STEP_SOLVERS}")

    @property
    def adaptive(self) -> bool:
        r"""Whether the solver chooses its own steps."""
        return self.method in ADAPTIVE_SOLVERS

    def odeint_kwargs(self) -> Dict[str, Any]:
        r"""The keyword arguments of :func:`torchdiffeq.odeint`."""
        kwargs: Dict[str, Any] = dict(method=self.method, rtol=self.rtol,
                                      atol=self.atol)
        if self.adaptive:
            kwargs['options'] = dict(max_num_steps=self.max_num_steps)
        else:
            num_steps, exponent = self.num_steps, self.step_exponent

            def grid(func, y0, t):  # exactly num_steps steps
                return step_grid(float(t[0]), float(t[-1]), num_steps,
                                 exponent, t.dtype, t.device)

            kwargs['options'] = dict(grid_constructor=grid)
        return kwargs


def step_grid(start: float, end: float, num_steps: int,
              exponent: float = 1.0, dtype: torch.dtype = torch.float64,
              device: Optional[torch.device] = None) -> Tensor:
    r"""The :obj:`num_steps + 1` times of a fixed-step solve from
    :obj:`start` to :obj:`end` (either way): :math:`a + (b - a) (k /
    K)^p`, :math:`k = 0, \dots, K`, on the interval :math:`[a, b]` of the
    solve, run from :obj:`start` to :obj:`end`; for :math:`p > 1` the steps
    shrink toward the lower end :math:`a`."""
    if exponent == 1.0:
        return torch.linspace(start, end, num_steps + 1, dtype=dtype,
                              device=device)
    low, high = min(start, end), max(start, end)
    fraction = torch.linspace(0, 1, num_steps + 1,
                              dtype=torch.float64) ** exponent
    times = low + (high - low) * fraction
    if start > end:
        times = times.flip(0)
    return times.to(dtype=dtype, device=device)


DEFAULT_SOLVER = SolverOptions()
r"""The solver of every solve that is given none: :obj:`"dopri5"` at
:obj:`rtol = atol = 1e-5`."""


class EvaluationCount:
    r"""A counter of vector-field evaluations owned by the caller. Every
    solving method of the flows takes it as :obj:`counter` and adds the
    evaluations of its solves to :obj:`value`, including those of the
    backward pass of the adjoint method, which runs after the method
    returned:

    .. code-block:: python

        counter = EvaluationCount()
        loss = -flow.log_prob(data, trace='hutchinson', counter=counter)
        forward = counter.value
        loss.mean().backward()  # the adjoint solve counts too
        backward = counter.value - forward

    Args:
        value (int, optional): The initial count. (default: :obj:`0`)
    """
    __slots__ = ('value', )

    def __init__(self, value: int = 0) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(value={self.value})'


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
        counter (EvaluationCount, optional): The caller's count, to which
            every evaluation is added.
    """
    def __init__(self, field: Callable, nodes: List[Tensor], batch: Tensor,
                 num_graphs: int, trace: Optional[str],
                 probe: Optional[List[Tensor]], regularize: bool,
                 edge_index: Optional[Tensor] = None,
                 counter: Optional[EvaluationCount] = None):
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
        self.counter = counter
        self.num_evals = 0
        self.options = DEFAULT_SOLVER
        self.interval = 1.0
        self.recent_times: Deque[float] = collections.deque(
            maxlen=STEP_WINDOW)

    def start(self, t0: float, t1: float, options: SolverOptions) -> None:
        r"""Prepares a solve from :obj:`t0` to :obj:`t1` with
        :obj:`options` (the evaluation budget and the divergence watch)."""
        self.options = options
        self.interval = abs(t1 - t0)

    def __call__(self, t: Tensor, state: Tuple[Tensor, ...]
                 ) -> Tuple[Tensor, ...]:
        budget = self.options.max_num_evals
        if budget is not None and self.num_evals >= budget:
            raise EvaluationBudgetExceeded(
                f'The ODE solve used up its budget of {budget} '
                f'evaluations of the vector field')
        self.num_evals += 1
        if self.counter is not None:
            self.counter.value += 1
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

    @functools.cached_property
    def node_counts(self) -> Tensor:
        r"""The number of nodes of every graph :obj:`[num_graphs]` (at least
        one), needed by :meth:`error_norm` only."""
        ones = torch.ones(self.batch.shape, device=self.batch.device)
        return scatter_sum(ones, self.batch, self.num_graphs).clamp_min(1)

    def error_norm(self, state: Tuple[Tensor, ...]) -> Tensor:
        r"""The adaptive solver's norm of a state-shaped error, taken per
        graph: the largest, over the graphs and the parts of the state, of
        the root mean square of one graph's entries,

        .. math::
            \|e\| = \max_{g,\,k} \Big(\frac{1}{|e_k^{(g)}|}
            \sum (e_k^{(g)})^2\Big)^{1/2}.

        Every graph thus meets the tolerances whatever the other graphs of
        its batch are, where the root mean square over the whole batch
        dilutes a hard graph's error by the easy ones
        (:obj:`SolverOptions(error_norm="graph")`)."""
        num_node_parts = 2 if self.with_features else 1
        worst = []
        for part, x in enumerate(state):
            if part < num_node_parts:
                per_graph = scatter_sum(x.pow(2).sum(-1), self.batch,
                                        self.num_graphs)
                per_graph = per_graph / (self.node_counts.to(x.dtype)
                                         * max(x.size(-1), 1))
            else:  # integrated per graph: [num_graphs]
                per_graph = x.pow(2)
            worst.append(per_graph.max())
        return torch.stack(worst).max().sqrt()

    def _watch(self, t: Tensor, nodes: List[Tensor]) -> None:
        r"""Reports a diverging solve within a few hundred evaluations: a
        state beyond :obj:`STATE_BOUND` (or non-finite), or an adaptive solve
        too slow to ever finish. The pace of an adaptive solve is the spread
        of its last :obj:`STEP_WINDOW` evaluation times per evaluation; once
        it falls below

        .. math::
            \frac{T}{\min(\texttt{max\_num\_steps} \cdot s,\;
            1 / \texttt{MIN\_RELATIVE\_PACE})}

        for an interval of length :math:`T` and :math:`s` evaluations per
        step (:obj:`EVALUATIONS_PER_STEP`), the step budget could not carry
        the solve across the interval, and it would otherwise run on until
        :obj:`max_num_steps`, for minutes."""
        # One host transfer per evaluation for the time and the bound check,
        # in at least float32 and the time's own precision (a half-precision
        # state must not round the times that the pace compares).
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
        if not self.options.adaptive:
            return
        self.recent_times.append(time)
        if len(self.recent_times) < STEP_WINDOW or \
                self.num_evals <= STALL_AFTER_EVALS:
            return
        pace = (max(self.recent_times) - min(self.recent_times)) / \
            (STEP_WINDOW - 1)
        per_step = EVALUATIONS_PER_STEP[self.options.method]
        budget = min(self.options.max_num_steps * per_step,
                     1 / MIN_RELATIVE_PACE)
        if pace * budget < self.interval:
            raise ODESolveError(
                f'The ODE solve diverged: the step size collapsed to about '
                f'{pace * per_step:.2e} at t={time:.4g} after '
                f'{self.num_evals} evaluations of the vector field; at '
                f'this pace crossing the interval would take more than '
                f'{budget:.0f} evaluations (max_num_steps='
                f'{self.options.max_num_steps}, or at most '
                f'{1 / MIN_RELATIVE_PACE:.0f}); the field is too stiff for '
                f'the tolerances (bound it with coords_range, loosen the '
                f'tolerances or use float64)')

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
    func.start(t0, t1, options)
    kwargs = options.odeint_kwargs()
    if options.adaptive and options.error_norm == 'graph':
        kwargs['options']['norm'] = func.error_norm
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
