from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data
from torchdiffeq import odeint, odeint_adjoint

from torch_enf.flows.distributions import CenteredGaussian, NodeGaussian
from torch_enf.flows.divergence import (diagonal_basis, exact_divergence,
                                        hutchinson_divergence, sample_probe)
from torch_enf.flows.dynamics import EGNNDynamics
from torch_enf.nn import full_edge_index, radius_graph
from torch_enf.utils import (center_pos, check_batch_vector, check_finite,
                             check_node_matrix, default_batch, graph_sizes,
                             scatter_sum)

TRACES = ('exact', 'hutchinson')
ADAPTIVE_SOLVERS = ('dopri5', 'dopri8', 'bosh3', 'fehlberg2', 'adaptive_heun')


class ODESolveError(RuntimeError):
    r"""Raised when the ODE solve of a flow diverges: the state became
    non-finite or the adaptive step size underflowed."""


class FlowResult(NamedTuple):
    r"""The output of :meth:`ENFlow.encode` and :meth:`ENFlow.decode`.

    Attributes:
        pos (torch.Tensor): Positions at the end of the solve, :obj:`[N, n]`.
        h (torch.Tensor): Node features at the end of the solve,
            :obj:`[N, F]` (:obj:`F = 0` for positions only).
        log_det (torch.Tensor): The accumulated
            :math:`\int \operatorname{tr}(\partial f / \partial \mathbf{z})\,dt`
            along the direction of integration, :obj:`[num_graphs]`
            (:obj:`None` when no trace was computed).
        regularization (torch.Tensor): The kinetic energy plus Jacobian
            Frobenius regulariser integrated along the solve,
            :obj:`[num_graphs]` (:obj:`None` unless requested).
        batch (torch.Tensor): The graph assignment vector, :obj:`[N]`.
        num_graphs (int): The number of graphs.
    """
    pos: Tensor
    h: Tensor
    log_det: Optional[Tensor]
    regularization: Optional[Tensor]
    batch: Tensor
    num_graphs: int


class _FlowODE(torch.nn.Module):
    r"""The augmented ODE right-hand side: positions, features, and, as
    requested, the Jacobian trace and the regularisers, for one batch."""
    def __init__(self, dynamics: torch.nn.Module, radius: Optional[float]):
        super().__init__()
        self.dynamics = dynamics
        self.radius = radius
        self.num_evals = 0

    def setup(self, nodes: List[Tensor], batch: Tensor, num_graphs: int,
              trace: Optional[str], probe: Optional[List[Tensor]],
              regularize: bool) -> None:
        r"""Fixes what stays constant during one solve: the graph, the
        probes and, for the exact trace, its basis."""
        self.batch = batch
        self.num_graphs = num_graphs
        self.node_channels = nodes[1].size(-1) if len(nodes) > 1 else 0
        self.trace = trace
        self.probe = probe
        self.regularize = regularize
        self.edge_index = None if self.radius else full_edge_index(
            batch, num_graphs)
        self.basis = diagonal_basis(
            batch, num_graphs, sum(x.size(-1) for x in nodes), nodes[0]) \
            if trace == 'exact' else None
        self.num_evals = 0

    def forward(self, t: Tensor, state: Tuple[Tensor, ...]
                ) -> Tuple[Tensor, ...]:
        self.num_evals += 1
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            nodes = [_track(x, create_graph)
                     for x in self._node_states(state)]
            if not all(bool(torch.isfinite(x).all()) for x in nodes):
                raise ODESolveError(
                    f'The ODE solve diverged: non-finite state at t='
                    f'{float(t):.4g} after {self.num_evals} evaluations of '
                    f'the vector field')
            velocities = self._velocities(t, nodes)
            extra = self._extra_terms(velocities, nodes, create_graph)
        if not create_graph:
            velocities = [v.detach() for v in velocities]
            extra = [e.detach() for e in extra]
        return tuple(velocities + extra)

    def _node_states(self, state: Sequence[Tensor]) -> List[Tensor]:
        return list(state[:2 if self.node_channels > 0 else 1])

    def _velocities(self, t: Tensor, nodes: List[Tensor]) -> List[Tensor]:
        pos = nodes[0]
        h = nodes[1] if self.node_channels > 0 else pos.new_zeros(
            pos.size(0), 0)
        edge_index = self.edge_index if self.radius is None else \
            radius_graph(pos, self.radius, self.batch)
        dpos, dh = self.dynamics(t, pos, h, edge_index, self.batch)
        dpos = center_pos(dpos, self.batch, self.num_graphs)
        return [dpos, dh] if self.node_channels > 0 else [dpos]

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


class ENFlow(torch.nn.Module):
    r"""The E(n) equivariant normalizing flow (E-NF) from the
    `"E(n) Equivariant Normalizing Flows"
    <https://arxiv.org/abs/2105.09016>`_ paper: a continuous-time flow
    whose vector field is an EGNN, run on PyG batches of graphs of any sizes
    without padding.

    Data :math:`(\mathbf{x}, \mathbf{h})` at :math:`t = 0` is mapped to
    latents :math:`(\mathbf{z}_x, \mathbf{z}_h)` at :math:`t = 1` by
    :math:`\frac{d}{dt}(\mathbf{x}, \mathbf{h}) = f(\mathbf{x}, \mathbf{h},
    t)`, with the position velocity made zero-centre-of-mass per graph, and

    .. math::
        \log p(\mathbf{x}, \mathbf{h}) = \log p_{\mathcal{N}}(\mathbf{z}_x) +
        \log \mathcal{N}(\mathbf{z}_h \mid \mathbf{0}, I) +
        \int_0^1 \operatorname{tr}\left(\frac{\partial f}{\partial
        (\mathbf{x}, \mathbf{h})}\right) dt,

    where :math:`p_{\mathcal{N}}` is the :class:`CenteredGaussian` on the
    :math:`(M - 1) n`-dimensional centred subspace. Because :math:`f` is
    translation invariant and its position part centred, the trace over all
    coordinates equals the trace restricted to that subspace. The trace is
    exact (vectorised over a block basis, for evaluation) or Hutchinson's
    estimate with a probe fixed during a solve (for training). The density
    is invariant to rotations, reflections, translations and node
    permutations.

    Args:
        n_dims (int): The dimension :math:`n` of the positions.
        node_channels (int, optional): The width of the continuous node
            features :obj:`data.h` that flow alongside the positions.
            (default: :obj:`0`)
        hidden_channels (int, optional): Width of the default EGNN dynamics.
            (default: :obj:`64`)
        num_layers (int, optional): Depth of the default EGNN dynamics.
            (default: :obj:`6`)
        dynamics (torch.nn.Module, optional): A custom vector field with the
            interface of :class:`EGNNDynamics`; replaces the default one.
        edge_inference (bool, optional): Soft edge inference in the default
            dynamics. (default: :obj:`True`)
        coords_norm (float, optional): See :class:`EGNNDynamics`.
            (default: :obj:`1.0`)
        coords_range (float, optional): See :class:`EGNNDynamics`.
            (default: :obj:`15.0`)
        aggr (str, optional): See :class:`EGNNDynamics`.
            (default: :obj:`"add"`)
        graph (str or float, optional): :obj:`"full"` for fully connected
            graphs, or a cutoff radius for radius graphs rebuilt at every
            evaluation. (default: :obj:`"full"`)
        solver (str, optional): A :obj:`torchdiffeq` method.
            (default: :obj:`"dopri5"`)
        rtol (float, optional): Relative tolerance in training mode.
            (default: :obj:`1e-4`)
        atol (float, optional): Absolute tolerance in training mode.
            (default: :obj:`1e-4`)
        eval_rtol (float, optional): Relative tolerance in evaluation mode.
            (default: :obj:`1e-5`)
        eval_atol (float, optional): Absolute tolerance in evaluation mode.
            (default: :obj:`1e-5`)
        adjoint (bool, optional): Back-propagate with the adjoint method
            (constant memory) instead of through the solver.
            (default: :obj:`True`)
        adjoint_seminorm (bool, optional): Control the step size of the
            adjoint solve on the state and its adjoint only, not on the
            parameter gradients, which needs far fewer backward evaluations
            (Kidger et al., 2021). (default: :obj:`False`)
        max_num_steps (int, optional): Upper bound on the steps of one
            adaptive solve; beyond it :class:`ODESolveError` is raised
            instead of running on. (default: :obj:`10000`)
        hutchinson_noise (str, optional): :obj:`"rademacher"` or
            :obj:`"gaussian"`. (default: :obj:`"rademacher"`)
    """
    def __init__(
        self,
        n_dims: int,
        node_channels: int = 0,
        hidden_channels: int = 64,
        num_layers: int = 6,
        *,
        dynamics: Optional[torch.nn.Module] = None,
        edge_inference: bool = True,
        coords_norm: Optional[float] = 1.0,
        coords_range: Optional[float] = 15.0,
        aggr: str = 'add',
        graph: Union[str, float] = 'full',
        solver: str = 'dopri5',
        rtol: float = 1e-4,
        atol: float = 1e-4,
        eval_rtol: float = 1e-5,
        eval_atol: float = 1e-5,
        adjoint: bool = True,
        adjoint_seminorm: bool = False,
        max_num_steps: int = 10000,
        hutchinson_noise: str = 'rademacher',
    ):
        super().__init__()
        if graph != 'full' and not (isinstance(graph, (int, float))
                                    and graph > 0):
            raise ValueError(f"'graph' must be 'full' or a positive radius "
                             f"(got {graph!r})")
        sample_probe(torch.zeros(1), hutchinson_noise)  # validates the kind
        self.n_dims = n_dims
        self.node_channels = node_channels
        if dynamics is None:
            dynamics = EGNNDynamics(n_dims, node_channels, hidden_channels,
                                    num_layers, edge_inference=edge_inference,
                                    coords_norm=coords_norm,
                                    coords_range=coords_range, aggr=aggr)
        self.dynamics = dynamics
        self.graph = graph
        self.solver = solver
        self.rtol, self.atol = rtol, atol
        self.eval_rtol, self.eval_atol = eval_rtol, eval_atol
        self.adjoint = adjoint
        self.adjoint_seminorm = adjoint_seminorm
        self.max_num_steps = max_num_steps
        self.hutchinson_noise = hutchinson_noise
        self.pos_prior = CenteredGaussian(n_dims)
        self.h_prior = NodeGaussian(node_channels)
        self.ode = _FlowODE(dynamics, None if graph == 'full' else graph)

    def reset_parameters(self):
        r"""Resets all learnable parameters of the module."""
        self.dynamics.reset_parameters()

    @property
    def num_evals(self) -> int:
        r"""The number of vector-field evaluations of the last solve (the
        backward pass of the adjoint method counts too)."""
        return self.ode.num_evals

    # Public API ------------------------------------------------------------

    def log_prob(self, data: Union[Data, Batch], trace: Optional[str] = None,
                 return_regularization: bool = False
                 ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        r"""The log-density :math:`\log p(\mathbf{x}, \mathbf{h})` of every
        graph, in nats on the centred subspace.

        Args:
            data (torch_geometric.data.Data or Batch): Graphs with
                :obj:`pos` of shape :obj:`[N, n]` and, when
                :obj:`node_channels > 0`, :obj:`h` of shape :obj:`[N, F]`.
                Positions need not be centred: the density is translation
                invariant.
            trace (str, optional): :obj:`"exact"` or :obj:`"hutchinson"`.
                (default: :obj:`None`: Hutchinson in training mode, exact in
                evaluation mode)
            return_regularization (bool, optional): Also return the
                integrated kinetic energy plus Jacobian Frobenius norm per
                graph, for regularised training. (default: :obj:`False`)

        Returns:
            torch.Tensor: Shape :obj:`[num_graphs]`, or a tuple with the
            regulariser of the same shape.
        """
        result = self.encode(data, trace=trace,
                             regularize=return_regularization)
        log_prob = self.base_log_prob(result) + result.log_det
        if return_regularization:
            return log_prob, result.regularization
        return log_prob

    def base_log_prob(self, latent: FlowResult) -> Tensor:
        r"""The log-density of the base distribution at the latents of
        :meth:`encode`, per graph."""
        out = self.pos_prior.log_prob(latent.pos, latent.batch,
                                      latent.num_graphs)
        if self.node_channels > 0:
            out = out + self.h_prior.log_prob(latent.h, latent.batch,
                                              latent.num_graphs)
        return out

    def encode(self, data: Union[Data, Batch], trace: Optional[str] = None,
               regularize: bool = False) -> FlowResult:
        r"""Maps data to latents (:math:`t: 0 \to 1`) and accumulates
        :math:`\log |\det \partial \mathbf{z} / \partial \mathbf{x}|` per
        graph (see :class:`FlowResult`)."""
        pos, h, batch, num_graphs = self._read(data)
        trace = self._resolve_trace(trace)
        return self._solve(center_pos(pos, batch, num_graphs), h, batch,
                           num_graphs, 0.0, 1.0, trace, regularize)

    def decode(self, pos: Tensor, h: Optional[Tensor] = None,
               batch: Optional[Tensor] = None, trace: Optional[str] = None
               ) -> FlowResult:
        r"""Maps latents back to data (:math:`t: 1 \to 0`). With a
        :obj:`trace`, :obj:`log_det` holds
        :math:`\log |\det \partial \mathbf{x} / \partial \mathbf{z}|`."""
        pos, h, batch, num_graphs = self._check(pos, h, batch)
        if trace is not None:
            trace = self._resolve_trace(trace)
        return self._solve(center_pos(pos, batch, num_graphs), h, batch,
                           num_graphs, 1.0, 0.0, trace, False)

    @torch.no_grad()
    def sample(self, num_nodes: Union[int, Sequence[int], Tensor],
               num_samples: Optional[int] = None,
               generator: Optional[torch.Generator] = None) -> Batch:
        r"""Draws graphs from the flow.

        Args:
            num_nodes (int, list or torch.Tensor): The number of nodes of
                every graph, or one size for all :obj:`num_samples` graphs.
            num_samples (int, optional): The number of graphs when
                :obj:`num_nodes` is a single size. (default: :obj:`1`)
            generator (torch.Generator, optional): Source of the base noise.

        Returns:
            torch_geometric.data.Batch: Graphs with :obj:`pos` (centred) and,
            when :obj:`node_channels > 0`, :obj:`h`.
        """
        sizes = self._sample_sizes(num_nodes, num_samples)
        batch = torch.repeat_interleave(
            torch.arange(sizes.numel(), device=sizes.device), sizes)
        dtype = self._dtype()
        z_pos = self.pos_prior.sample(batch, sizes.numel(), generator, dtype)
        z_h = self.h_prior.sample(batch, generator, dtype)
        out = self.decode(z_pos, z_h if self.node_channels > 0 else None,
                          batch)
        data_list = []
        for pos, h in zip(out.pos.split(sizes.tolist()),
                          out.h.split(sizes.tolist())):
            data = Data(pos=pos)
            if self.node_channels > 0:
                data.h = h
            data_list.append(data)
        return Batch.from_data_list(data_list)

    # Internals -------------------------------------------------------------

    def _solve(self, pos: Tensor, h: Tensor, batch: Tensor, num_graphs: int,
               t0: float, t1: float, trace: Optional[str],
               regularize: bool) -> FlowResult:
        nodes = [pos, h] if self.node_channels > 0 else [pos]
        probe = None
        if trace == 'hutchinson' or regularize:
            probe = [sample_probe(x, self.hutchinson_noise) for x in nodes]
            probe[0] = center_pos(probe[0], batch, num_graphs)
        self.ode.setup(nodes, batch, num_graphs, trace, probe, regularize)
        zeros = pos.new_zeros(num_graphs)
        state = tuple(nodes + [zeros] * (int(trace is not None) +
                                         int(regularize)))
        final = self._integrate(state, t0, t1)
        k = len(nodes)
        # Integrating from t1 < t0 accumulates the trace with the right sign
        # for the inverse map by itself.
        log_det = final[k] if trace is not None else None
        reg = final[-1] if regularize else None
        h_out = final[1] if self.node_channels > 0 else pos.new_zeros(
            pos.size(0), 0)
        return FlowResult(final[0], h_out, log_det, reg, batch, num_graphs)

    def _integrate(self, state: Tuple[Tensor, ...], t0: float,
                   t1: float) -> List[Tensor]:
        times = torch.tensor([t0, t1], dtype=state[0].dtype,
                             device=state[0].device)
        rtol = self.rtol if self.training else self.eval_rtol
        atol = self.atol if self.training else self.eval_atol
        kwargs = dict(rtol=rtol, atol=atol, method=self.solver)
        if self.solver in ADAPTIVE_SOLVERS:
            kwargs['options'] = dict(max_num_steps=self.max_num_steps)
        try:
            if self.adjoint and torch.is_grad_enabled():
                adjoint_options = dict(kwargs.get('options', {}))
                if self.adjoint_seminorm:
                    adjoint_options['norm'] = 'seminorm'
                solution = odeint_adjoint(
                    self.ode, state, times,
                    adjoint_params=tuple(self.dynamics.parameters()),
                    adjoint_options=adjoint_options, **kwargs)
            else:
                solution = odeint(self.ode, state, times, **kwargs)
        except AssertionError as error:  # torchdiffeq's step-size checks
            raise ODESolveError(f'The ODE solve failed: {error}. The vector '
                                f'field is likely too stiff; bound it with '
                                f'coords_range or loosen the tolerances') \
                from error
        final = [x[-1] for x in solution]
        if not all(bool(torch.isfinite(x).all()) for x in final):
            raise ODESolveError('The ODE solve diverged: non-finite values '
                                'at the end of the integration')
        return final

    def _resolve_trace(self, trace: Optional[str]) -> str:
        if trace is None:
            return 'hutchinson' if self.training else 'exact'
        if trace not in TRACES:
            raise ValueError(f"'trace' must be one of {TRACES} (got "
                             f"'{trace}')")
        return trace

    def _read(self, data: Union[Data, Batch]
              ) -> Tuple[Tensor, Tensor, Tensor, int]:
        if getattr(data, 'pos', None) is None:
            raise ValueError("The input graphs have no 'pos' attribute")
        h = getattr(data, 'h', None) if self.node_channels > 0 else None
        return self._check(data.pos, h, getattr(data, 'batch', None))

    def _check(self, pos: Tensor, h: Optional[Tensor],
               batch: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor, int]:
        if pos.dim() != 2 or pos.size(-1) != self.n_dims:
            raise ValueError(f"'pos' must have shape [num_nodes, "
                             f"{self.n_dims}] (got {list(pos.shape)})")
        check_finite(pos, 'pos')
        if batch is None:
            batch = default_batch(pos.size(0), pos.device)
        check_batch_vector(batch, pos.size(0))
        num_graphs = int(batch[-1]) + 1 if batch.numel() > 0 else 0
        if num_graphs == 0:
            raise ValueError('The input holds no graphs')
        sizes = graph_sizes(batch, num_graphs)
        if bool((sizes < 2).any()):
            small = torch.nonzero(sizes < 2).view(-1).tolist()
            raise ValueError(f'Graphs {small[:10]} have fewer than 2 nodes: '
                             f'the density on the centred subspace is '
                             f'undefined for them')
        if self.node_channels > 0:
            if h is None:
                raise ValueError(f"The flow expects node features 'h' with "
                                 f"{self.node_channels} channels, but the "
                                 f"input graphs have none")
            check_node_matrix(h, pos.size(0), self.node_channels, 'h')
        else:
            h = pos.new_zeros(pos.size(0), 0)
        dtype = self._dtype()
        return pos.to(dtype), h.to(dtype), batch, num_graphs

    def _sample_sizes(self, num_nodes: Union[int, Sequence[int], Tensor],
                      num_samples: Optional[int]) -> Tensor:
        device = next(self.parameters()).device
        if isinstance(num_nodes, int):
            sizes = torch.full((num_samples or 1, ), num_nodes,
                               dtype=torch.long, device=device)
        else:
            if num_samples is not None:
                raise ValueError("'num_samples' goes with a single "
                                 "'num_nodes'; got a list of sizes as well")
            sizes = torch.as_tensor(num_nodes, dtype=torch.long,
                                    device=device).view(-1)
        if sizes.numel() == 0 or bool((sizes < 2).any()):
            raise ValueError(f'Every sampled graph needs at least 2 nodes '
                             f'(got sizes {sizes.tolist()[:10]})')
        return sizes

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(n_dims={self.n_dims}, '
                f'node_channels={self.node_channels}, graph={self.graph}, '
                f'solver={self.solver}, adjoint={self.adjoint})')
