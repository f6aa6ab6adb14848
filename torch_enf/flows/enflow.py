import contextlib
import numbers
from typing import (Any, Iterator, NamedTuple, Optional, Sequence,
                    Tuple, Union)

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data
from tqdm.auto import tqdm

from torch_enf.flows.distributions import CenteredGaussian, NodeGaussian
from torch_enf.flows.divergence import sample_probe
from torch_enf.flows.dynamics import EGNNDynamics
from torch_enf.flows.integrator import (  # noqa: F401 (ODESolveError is
    AugmentedODE, EvaluationCount, ODESolveError,  # imported from here)
    SolverOptions, integrate)
from torch_enf.flows.vector_field import VectorField, check_graph
from torch_enf.nn import full_edge_index
from torch_enf.utils import (center_pos, center_pos_exact,
                             check_batch_vector, check_finite_graphs,
                             check_node_matrix, check_positive_number,
                             default_batch, graph_sizes, inputs_checked)

TRACES = ('exact', 'hutchinson')


class FlowResult(NamedTuple):
    r"""The output of :meth:`ENFlow.encode` and :meth:`ENFlow.decode`.

    Attributes:
        pos (torch.Tensor): Positions at the end of the solve, :obj:`[N, n]`.
        h (torch.Tensor): Node features at the end of the solve,
            :obj:`[N, F]` (:obj:`F = 0` for positions only).
        log_det (torch.Tensor): The accumulated
            :math:`\int \mathrm{tr}(\partial f / \partial \mathbf{z})\,dt`
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


class FlowInputs(NamedTuple):
    r"""Continuous inputs of a flow at :math:`t = 0`, as returned by
    :meth:`ENFlow.flow_inputs` (and :meth:`MoleculeFlow.flow_inputs`).

    Attributes:
        pos (torch.Tensor): Positions centred per graph, :obj:`[N, n]`.
        h (torch.Tensor): Continuous node features, :obj:`[N, F]`.
        batch (torch.Tensor): Sorted graph assignment, :obj:`[N]`.
        num_graphs (int): The number of graphs.
        node_type (torch.Tensor, optional): An integer class per node that
            symmetries may not mix (*e.g.* the atom type), :obj:`[N]`, or
            :obj:`None` when all nodes are alike.
    """
    pos: Tensor
    h: Tensor
    batch: Tensor
    num_graphs: int
    node_type: Optional[Tensor] = None


class ENFlow(torch.nn.Module):
    r"""The E(n) equivariant normalizing flow (E-NF) from the
    `"E(n) Equivariant Normalizing Flows"
    <https://arxiv.org/abs/2105.09016>`_ paper: a continuous-time flow
    whose vector field is an EGNN, run on PyG batches of graphs of any sizes
    without padding.

    Data :math:`(\mathbf{x}, \mathbf{h})` at :math:`t = 0` is mapped to
    latents :math:`(\mathbf{z}_x, \mathbf{z}_h)` at :math:`t = 1` by
    :math:`\frac{d}{dt}(\mathbf{x}, \mathbf{h}) = f(\mathbf{x}, \mathbf{h},
    t)` (the :class:`VectorField`, whose position velocity is
    zero-centre-of-mass per graph), and

    .. math::
        \log p(\mathbf{x}, \mathbf{h}) = \log p_{\mathcal{N}}(\mathbf{z}_x) +
        \log \mathcal{N}(\mathbf{z}_h \mid \mathbf{0}, I) +
        \int_0^1 \operatorname{tr}\left(\frac{\partial f}{\partial
        (\mathbf{x}, \mathbf{h})}\right) dt,

    where :math:`p_{\mathcal{N}}` is the :class:`CenteredGaussian` on the
    :math:`(M - 1) n`-dimensional centred subspace. Because :math:`f` is
    translation invariant and its position part centred, the trace over all
    coordinates equals the trace restricted to that subspace. The trace is
    exact (from one vector-Jacobian product per probe of a block basis, for
    evaluation) or Hutchinson's estimate with a probe fixed during a solve
    (for training). The density
    is invariant to rotations, reflections, translations and node
    permutations.

    The flow is trained by maximum likelihood
    (:class:`~torch_enf.objectives.MaximumLikelihood`) or by flow matching
    (:class:`~torch_enf.objectives.FlowMatching`, which regresses
    :meth:`velocity` and needs no ODE solve); either way :meth:`log_prob`
    and :meth:`sample` are the same.

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
        num_radial (int, optional): Gaussian distance features per edge,
            see :class:`EGNNDynamics`. (default: :obj:`0`)
        radial_cutoff (float, optional): See :class:`EGNNDynamics`.
            (default: :obj:`5.0`)
        graph (str or float, optional): :obj:`"full"` for fully connected
            graphs, or a cutoff radius for radius graphs rebuilt at every
            evaluation. (default: :obj:`"full"`)
        solver (str, optional): A :obj:`torchdiffeq` method, adaptive
            (*e.g.* :obj:`"dopri5"`) or fixed-step (*e.g.* :obj:`"euler"`,
            :obj:`"midpoint"`, :obj:`"rk4"`, which need :obj:`num_steps`).
            (default: :obj:`"dopri5"`)
        rtol (float, optional): Relative tolerance in training mode.
            (default: :obj:`1e-4`)
        atol (float, optional): Absolute tolerance in training mode.
            (default: :obj:`1e-4`)
        eval_rtol (float, optional): Relative tolerance in evaluation mode.
            (default: :obj:`1e-5`)
        eval_atol (float, optional): Absolute tolerance in evaluation mode.
            (default: :obj:`1e-5`)
        num_steps (int, optional): Equal steps over :math:`[0, 1]` of a
            fixed-step solver. (default: :obj:`None`)
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
        num_radial: int = 0,
        radial_cutoff: float = 5.0,
        graph: Union[str, float] = 'full',
        solver: str = 'dopri5',
        rtol: float = 1e-4,
        atol: float = 1e-4,
        eval_rtol: float = 1e-5,
        eval_atol: float = 1e-5,
        num_steps: Optional[int] = None,
        adjoint: bool = True,
        adjoint_seminorm: bool = False,
        max_num_steps: int = 10000,
        hutchinson_noise: str = 'rademacher',
    ):
        super().__init__()
        for name, value, least in (('n_dims', n_dims, 1),
                                   ('node_channels', node_channels, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or \
                    value < least:
                raise ValueError(f"'{name}' must be an integer of at least "
                                 f"{least} (got {value!r})")
        sample_probe(torch.zeros(1), hutchinson_noise)  # validates the kind
        self.train_options = SolverOptions(solver, rtol, atol, num_steps,
                                           max_num_steps)
        self.eval_options = SolverOptions(solver, eval_rtol, eval_atol,
                                          num_steps, max_num_steps)
        self.n_dims = n_dims
        self.node_channels = node_channels
        if dynamics is None:
            dynamics = EGNNDynamics(n_dims, node_channels, hidden_channels,
                                    num_layers, edge_inference=edge_inference,
                                    coords_norm=coords_norm,
                                    coords_range=coords_range, aggr=aggr,
                                    num_radial=num_radial,
                                    radial_cutoff=radial_cutoff)
        self.vector_field = VectorField(dynamics, check_graph(graph))
        self.adjoint = adjoint
        self.adjoint_seminorm = adjoint_seminorm
        self.hutchinson_noise = hutchinson_noise
        self.pos_prior = CenteredGaussian(n_dims)
        self.h_prior = NodeGaussian(node_channels)
        self._evaluations = EvaluationCount()
        self._register_load_state_dict_pre_hook(_upgrade_state_dict)

    @property
    def dynamics(self) -> torch.nn.Module:
        r"""The network inside the :class:`VectorField`."""
        return self.vector_field.dynamics

    @property
    def graph(self) -> Union[str, float]:
        r"""The graph of the vector field: :obj:`"full"` or a radius."""
        return self.vector_field.graph

    def reset_parameters(self):
        r"""Resets all learnable parameters of the module."""
        self.vector_field.reset_parameters()

    @property
    def num_evals(self) -> int:
        r"""The number of vector-field evaluations of the last solve (the
        backward pass of the adjoint method counts too)."""
        return self._evaluations.value

    @contextlib.contextmanager
    def ode_options(self, **changes: Any) -> Iterator['ENFlow']:
        r"""Changes the solver options of training and evaluation for the
        duration of a :obj:`with` block, *e.g.* a fixed-step sampler::

            with flow.ode_options(method='midpoint', num_steps=50):
                samples = flow.sample(19, 1000)

        Args:
            **changes: Fields of :class:`SolverOptions` (:obj:`method`,
                :obj:`rtol`, :obj:`atol`, :obj:`num_steps`,
                :obj:`max_num_steps`, :obj:`max_num_evals`), checked before
                the block runs.
        """
        saved = self.train_options, self.eval_options
        updated = tuple(options.update(**changes) for options in saved)
        self.train_options, self.eval_options = updated
        try:
            yield self
        finally:
            self.train_options, self.eval_options = saved

    # Public API ------------------------------------------------------------

    def forward(self, data: Union[Data, Batch], trace: Optional[str] = None,
                return_regularization: bool = False
                ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        r"""Alias of :meth:`log_prob`, so that hooks and
        :class:`~torch.nn.parallel.DistributedDataParallel` wrap the flow
        directly."""
        return self.log_prob(data, trace, return_regularization)

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
               regularize: bool = False, end_time: float = 1.0
               ) -> FlowResult:
        r"""Maps data to latents (:math:`t: 0 \to 1`) and accumulates
        :math:`\log |\det \partial \mathbf{z} / \partial \mathbf{x}|` per
        graph (see :class:`FlowResult`). With :obj:`end_time`
        :math:`s < 1` the solve stops at :math:`t = s` (a fixed-step solver
        takes its :obj:`num_steps` on :math:`[0, s]`)."""
        end_time = _check_time(end_time, 'end_time')
        inputs = self.flow_inputs(data)
        trace = self._resolve_trace(trace)
        return self._solve(inputs.pos, inputs.h, inputs.batch,
                           inputs.num_graphs, 0.0, end_time, trace,
                           regularize)

    def decode(self, pos: Tensor, h: Optional[Tensor] = None,
               batch: Optional[Tensor] = None, trace: Optional[str] = None,
               start_time: float = 1.0) -> FlowResult:
        r"""Maps latents back to data (:math:`t: 1 \to 0`). With a
        :obj:`trace`, :obj:`log_det` holds
        :math:`\log |\det \partial \mathbf{x} / \partial \mathbf{z}|`.
        With :obj:`start_time` :math:`s < 1`, :obj:`(pos, h)` is a state
        of the flow at :math:`t = s` (*e.g.* data noised along the paths of
        :class:`~torch_enf.objectives.FlowMatching`), carried to
        :math:`t = 0`."""
        start_time = _check_time(start_time, 'start_time')
        pos, h, batch, num_graphs = self._check(pos, h, batch)
        if trace is not None:
            trace = self._resolve_trace(trace)
        return self._solve(center_pos_exact(pos, batch, num_graphs), h,
                           batch, num_graphs, start_time, 0.0, trace, False)

    def flow_inputs(self, data: Union[Data, Batch]) -> FlowInputs:
        r"""The checked, centred positions and the features of
        :obj:`data`: the state of the flow at :math:`t = 0` (see
        :class:`FlowInputs`)."""
        pos, h, batch, num_graphs = self._read(data)
        return FlowInputs(center_pos_exact(pos, batch, num_graphs), h,
                          batch, num_graphs)

    def velocity(self, t: Tensor, pos: Tensor, h: Tensor, batch: Tensor,
                 num_graphs: int) -> Tuple[Tensor, Tensor]:
        r"""The vector field :math:`f(\mathbf{x}, \mathbf{h}, t)` at
        :obj:`t` (a scalar or one time per node), see :class:`VectorField`.

        Returns:
            :obj:`(dpos_dt, dh_dt)` of shapes :obj:`[N, n]` (centred per
            graph) and :obj:`[N, F]`.
        """
        return self.vector_field(t, pos, h, batch, num_graphs)

    def sample_base(self, batch: Tensor, num_graphs: int,
                    generator: Optional[torch.Generator] = None
                    ) -> Tuple[Tensor, Tensor]:
        r"""Draws latents :obj:`(pos, h)` from the base distribution for the
        graphs of the assignment vector :obj:`batch`, in the flow's
        dtype."""
        dtype = self._dtype()
        return (self.pos_prior.sample(batch, num_graphs, generator, dtype),
                self.h_prior.sample(batch, generator, dtype))

    @torch.no_grad()
    def sample(self, num_nodes: Union[int, Sequence[int], Tensor],
               num_samples: Optional[int] = None,
               generator: Optional[torch.Generator] = None,
               batch_size: Optional[int] = None,
               progress: bool = False, temperature: float = 1.0) -> Batch:
        r"""Draws graphs from the flow: latents :math:`\tau \mathbf{z}`,
        :math:`\mathbf{z}` from the base distribution, carried to the data
        by the inverse map.

        A temperature :math:`\tau < 1` (as in Glow, Kingma & Dhariwal,
        2018) draws from the more probable core of the base distribution:
        sharper, less diverse samples that no longer follow the model's
        density exactly. :math:`\tau = 1` samples the model.

        Args:
            num_nodes (int, list or torch.Tensor): The number of nodes of
                every graph, or one size for all :obj:`num_samples` graphs.
            num_samples (int, optional): The number of graphs when
                :obj:`num_nodes` is a single size. (default: :obj:`1`)
            generator (torch.Generator, optional): Source of the base noise.
            batch_size (int, optional): Graphs per ODE solve (all at once
                by default); bounds the memory of large draws.
            progress (bool, optional): Show a progress bar over the graphs.
                (default: :obj:`False`)
            temperature (float, optional): The scale :math:`\tau > 0` of
                the latents. (default: :obj:`1.0`)

        Returns:
            torch_geometric.data.Batch: Graphs with :obj:`pos` (centred) and,
            when :obj:`node_channels > 0`, :obj:`h`.
        """
        check_positive_number(temperature, 'temperature')
        return self._sample(num_nodes, num_samples, generator, batch_size,
                            progress, trace=None, temperature=temperature)[0]

    @torch.no_grad()
    def sample_with_log_prob(
        self,
        num_nodes: Union[int, Sequence[int], Tensor],
        num_samples: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        batch_size: Optional[int] = None,
        progress: bool = False,
        trace: str = 'exact',
    ) -> Tuple[Batch, Tensor]:
        r"""Draws graphs as :meth:`sample` does, with the log-density of
        each under the flow,

        .. math::
            \log q(\mathbf{x}) = \log p(\mathbf{z}) - \log \left|\det
            \frac{\partial \mathbf{x}}{\partial \mathbf{z}}\right|,

        from the same solve (exact trace by default), as needed for
        importance weights (:mod:`torch_enf.boltzmann`).

        Returns:
            :obj:`(samples, log_prob)`, the second of shape
            :obj:`[num_graphs]`.
        """
        return self._sample(num_nodes, num_samples, generator, batch_size,
                            progress, self._resolve_trace(trace))

    # Internals -------------------------------------------------------------

    def _sample(self, num_nodes: Union[int, Sequence[int], Tensor],
                num_samples: Optional[int],
                generator: Optional[torch.Generator],
                batch_size: Optional[int], progress: bool,
                trace: Optional[str], temperature: float = 1.0
                ) -> Tuple[Batch, Optional[Tensor]]:
        sizes = self._sample_sizes(num_nodes, num_samples)
        data_list, log_probs = [], []
        with tqdm(total=sizes.numel(), desc='sampling', leave=False,
                  disable=not progress) as bar:
            for chunk in sizes.split(batch_size or sizes.numel()):
                batch = torch.repeat_interleave(
                    torch.arange(chunk.numel(), device=chunk.device), chunk)
                z_pos, z_h = (temperature * z for z in self.sample_base(
                    batch, chunk.numel(), generator))
                out = self.decode(z_pos, z_h if self.node_channels > 0
                                  else None, batch, trace=trace)
                if trace is not None:
                    base = self.base_log_prob(FlowResult(
                        z_pos, z_h, None, None, batch, chunk.numel()))
                    log_probs.append(base - out.log_det)
                for pos, h in zip(out.pos.split(chunk.tolist()),
                                  out.h.split(chunk.tolist())):
                    data = Data(pos=pos)
                    if self.node_channels > 0:
                        data.h = h
                    data_list.append(data)
                bar.update(chunk.numel())
        return (Batch.from_data_list(data_list),
                torch.cat(log_probs) if trace is not None else None)

    def _solve(self, pos: Tensor, h: Tensor, batch: Tensor, num_graphs: int,
               t0: float, t1: float, trace: Optional[str],
               regularize: bool) -> FlowResult:
        nodes = [pos, h] if self.node_channels > 0 else [pos]
        probe = None
        if trace == 'hutchinson' or regularize:
            probe = [sample_probe(x, self.hutchinson_noise) for x in nodes]
            probe[0] = center_pos(probe[0], batch, num_graphs)
        edge_index = full_edge_index(batch, num_graphs) \
            if self.graph == 'full' else None
        func = AugmentedODE(self.vector_field, nodes, batch, num_graphs,
                            trace, probe, regularize, edge_index)
        zeros = pos.new_zeros(num_graphs)
        state = nodes + [zeros] * (int(trace is not None) + int(regularize))
        options = self.train_options if self.training else self.eval_options
        self._evaluations = func.evaluations
        with inputs_checked():  # checked by _check; no syncs per step
            final = integrate(
                func, state, t0, t1, options,
                tuple(self.parameters()) if self.adjoint else None,
                self.adjoint_seminorm)
        k = len(nodes)
        # Integrating from t1 < t0 accumulates the trace with the right sign
        # for the inverse map by itself.
        log_det = final[k] if trace is not None else None
        reg = final[-1] if regularize else None
        h_out = final[1] if self.node_channels > 0 else pos.new_zeros(
            pos.size(0), 0)
        return FlowResult(final[0], h_out, log_det, reg, batch, num_graphs)

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
        if batch is None:
            batch = default_batch(pos.size(0), pos.device)
        check_batch_vector(batch, pos.size(0))
        num_graphs = int(batch[-1]) + 1 if batch.numel() > 0 else 0
        if num_graphs == 0:
            raise ValueError('The input holds no graphs')
        check_finite_graphs(pos, batch, num_graphs, 'pos')
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
            check_finite_graphs(h, batch, num_graphs, 'h')
        else:
            h = pos.new_zeros(pos.size(0), 0)
        dtype = self._dtype()
        return pos.to(dtype), h.to(dtype), batch, num_graphs

    def _sample_sizes(self, num_nodes: Union[int, Sequence[int], Tensor],
                      num_samples: Optional[int]) -> Tensor:
        device = self._device()
        if _is_integer_scalar(num_nodes):
            count = 1 if num_samples is None else num_samples
            if not _is_integer_scalar(count) or int(count) < 1:
                raise ValueError(f"'num_samples' must be a positive integer "
                                 f"(got {num_samples!r})")
            sizes = torch.full((int(count), ), int(num_nodes),
                               dtype=torch.long, device=device)
        else:
            if num_samples is not None:
                raise ValueError("'num_samples' goes with a single "
                                 "'num_nodes'; got a list of sizes as well")
            sizes = torch.as_tensor(num_nodes, device=device).view(-1)
            if sizes.is_floating_point() or sizes.dtype == torch.bool:
                raise ValueError(f"'num_nodes' must hold integers (got "
                                 f"{sizes.tolist()[:10]})")
            sizes = sizes.long()
        if sizes.numel() == 0 or bool((sizes < 2).any()):
            raise ValueError(f'Every sampled graph needs at least 2 nodes '
                             f'(got sizes {sizes.tolist()[:10]})')
        return sizes

    def _dtype(self) -> torch.dtype:
        tensor = next(self.parameters(), None)
        if tensor is None:  # a custom dynamics without parameters
            tensor = next(self.buffers(), torch.zeros(()))
        if tensor.dtype not in (torch.float32, torch.float64):
            raise ValueError(f'ENFlow runs in float32 or float64 (got '
                             f'{tensor.dtype}: the ODE solve and the '
                             f'log-determinant need the precision; use '
                             f'bf16 autocast for training instead)')
        return tensor.dtype

    def _device(self) -> torch.device:
        tensor = next(self.parameters(), None)
        if tensor is None:
            tensor = next(self.buffers(), torch.zeros(()))
        return tensor.device

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(n_dims={self.n_dims}, '
                f'node_channels={self.node_channels}, graph={self.graph}, '
                f'solver={self.eval_options.method}, adjoint={self.adjoint})')


def _check_time(time: float, name: str) -> float:
    r"""A time in :math:`(0, 1]` where a solve starts or ends."""
    check_positive_number(time, name)
    if time > 1:
        raise ValueError(f"'{name}' must lie in (0, 1], the time span of "
                         f"the flow (got {time!r})")
    return float(time)


def _is_integer_scalar(value: Any) -> bool:
    r"""Python, NumPy and 0-d tensor integers (not booleans)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, Tensor):
        return value.dim() == 0 and not value.is_floating_point() and \
            value.dtype != torch.bool
    return isinstance(value, numbers.Integral)


def _upgrade_state_dict(state_dict, prefix, *args) -> None:
    r"""Loads checkpoints of torch-enf 0.1, which stored the dynamics twice
    (as :obj:`dynamics.*` and :obj:`ode.dynamics.*`)."""
    for key in list(state_dict):
        if key.startswith(prefix + 'ode.dynamics.'):
            del state_dict[key]
        elif key.startswith(prefix + 'dynamics.'):
            state_dict[prefix + 'vector_field.' + key[len(prefix):]] = \
                state_dict.pop(key)
