import dataclasses
import functools
import numbers
from typing import Any, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data
from tqdm.auto import tqdm

from torch_enf.config import Config
from torch_enf.flows.base import FlowInputs, FlowModel
from torch_enf.flows.distributions import CenteredGaussian, NodeGaussian
from torch_enf.flows.divergence import sample_probe
from torch_enf.flows.dynamics import EGNNDynamics, check_prediction
from torch_enf.flows.integrator import (DEFAULT_SOLVER, AugmentedODE,
                                        EvaluationCount, SolverOptions,
                                        integrate)
from torch_enf.flows.vector_field import VectorField, check_graph
from torch_enf.nn import full_edge_index
from torch_enf.utils import (center_pos, center_pos_exact,
                             check_batch_vector, check_finite_graphs,
                             check_node_matrix, check_num_radial,
                             check_positive_integer, check_positive_number,
                             check_time, default_batch, graph_sizes,
                             inputs_checked)

TRACES = ('exact', 'hutchinson')
r"""The estimators of the Jacobian trace: exact (one vector-Jacobian product
per probe of a block basis) or Hutchinson's (one product with a random
probe, fixed during a solve)."""

HUTCHINSON_NOISES = ('rademacher', 'gaussian')
r"""The distributions of Hutchinson's probe."""

NumNodes = Optional[Union[int, Sequence[int], Tensor]]


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


@dataclasses.dataclass(frozen=True)
class ENFlowConfig(Config):
    r"""The configuration of an :class:`ENFlow` with the default
    :class:`EGNNDynamics`: every argument of its constructor but
    :obj:`dynamics`, checked when built. See :class:`ENFlow` for the
    meaning of the fields.

    .. code-block:: python

        config = ENFlowConfig(n_dims=3, hidden_channels=32, num_layers=3)
        flow = ENFlow.from_config(config)
        assert flow.config() == config
    """
    n_dims: int
    node_channels: int = 0
    hidden_channels: int = 64
    num_layers: int = 6
    edge_inference: bool = True
    coords_norm: Optional[float] = 1.0
    coords_range: Optional[float] = 15.0
    aggr: str = 'add'
    num_radial: int = 0
    radial_cutoff: float = 5.0
    graph: Union[str, float] = 'full'
    adjoint: bool = True
    adjoint_seminorm: bool = False
    hutchinson_noise: str = 'rademacher'
    context_channels: int = 0
    prediction: str = 'velocity'

    def __post_init__(self):
        for name, least in (('n_dims', 1), ('node_channels', 0),
                            ('hidden_channels', 1), ('num_layers', 1),
                            ('context_channels', 0)):
            _check_integer(getattr(self, name), name, least)
        for name in ('edge_inference', 'adjoint', 'adjoint_seminorm'):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"'{name}' must be a boolean (got "
                                 f"{getattr(self, name)!r})")
        for name in ('coords_norm', 'coords_range'):
            if getattr(self, name) is not None:
                check_positive_number(getattr(self, name), name)
        if self.aggr not in ('add', 'mean'):
            raise ValueError(f"'aggr' must be 'add' or 'mean' (got "
                             f"{self.aggr!r})")
        check_num_radial(self.num_radial)
        check_positive_number(self.radial_cutoff, 'radial_cutoff')
        object.__setattr__(self, 'graph', check_graph(self.graph))
        if self.hutchinson_noise not in HUTCHINSON_NOISES:
            raise ValueError(f"'hutchinson_noise' must be one of "
                             f"{HUTCHINSON_NOISES} (got "
                             f"{self.hutchinson_noise!r})")
        check_prediction(self.prediction)


class ENFlow(FlowModel):
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
    exact (from one vector-Jacobian product per probe of a block basis) or
    Hutchinson's estimate with a probe fixed during a solve (cheaper, for
    training). The density is invariant to rotations, reflections,
    translations and node permutations.

    A *conditional* flow (:obj:`context_channels` :math:`C > 0`) models
    :math:`p(\mathbf{x}, \mathbf{h} \mid \mathbf{c})` for fixed node
    inputs :math:`\mathbf{c} \in \mathbb{R}^{N \times C}` that the
    dynamics sees at every evaluation but that do not flow, *e.g.* the
    one-hot atom types of molecules whose composition is given
    (:class:`CompositionFlow`). They are read from :obj:`data.x`, as PyG
    stores node features, and passed to :meth:`decode`, :meth:`sample` and
    :meth:`velocity` as :obj:`context`; the density is then invariant to
    permutations of nodes with equal inputs.

    Every solving method (:meth:`log_prob`, :meth:`encode`, :meth:`decode`,
    :meth:`sample`, :meth:`sample_with_log_prob`) takes the ODE solver of
    the call as :obj:`solver` (a :class:`SolverOptions`; :obj:`None` is
    :obj:`DEFAULT_SOLVER`, dopri5 at :math:`10^{-5}`, in training and
    evaluation mode alike) and an :class:`EvaluationCount` as
    :obj:`counter`, to which the solve adds its vector-field evaluations:

    .. code-block:: python

        counter = EvaluationCount()
        samples = flow.sample(100, 13, counter=counter,
                              solver=SolverOptions('midpoint', num_steps=50))
        counter.value  # 100 evaluations

    The flow is trained by maximum likelihood
    (:class:`~torch_enf.objectives.MaximumLikelihood`) or by flow matching
    (:class:`~torch_enf.objectives.FlowMatching`, which regresses
    :meth:`velocity` and needs no ODE solve); either way :meth:`log_prob`
    and :meth:`sample` are the same. A flow with the default dynamics is
    described by its :meth:`config` and rebuilt by :meth:`from_config`.

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
            interface of :class:`EGNNDynamics`; replaces the default one
            (and the flow has no :meth:`config`).
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
        adjoint (bool, optional): Back-propagate with the adjoint method
            (constant memory) instead of through the solver.
            (default: :obj:`True`)
        adjoint_seminorm (bool, optional): Control the step size of the
            adjoint solve on the state and its adjoint only, not on the
            parameter gradients, which needs far fewer backward evaluations
            (Kidger et al., 2021). (default: :obj:`False`)
        hutchinson_noise (str, optional): :obj:`"rademacher"` or
            :obj:`"gaussian"`. (default: :obj:`"rademacher"`)
        context_channels (int, optional): The width :math:`C` of the fixed
            node inputs :obj:`data.x` of a conditional flow (passed to the
            default dynamics, see :class:`EGNNDynamics`; a custom
            :obj:`dynamics` must accept them as :obj:`context`).
            (default: :obj:`0`)
        prediction (str, optional): What the default dynamics' EGNN
            predicts: :obj:`"velocity"` or :obj:`"endpoint"` (the clean
            positions, see :class:`EGNNDynamics`).
            (default: :obj:`"velocity"`)
    """
    config_class = ENFlowConfig

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
        adjoint: bool = True,
        adjoint_seminorm: bool = False,
        hutchinson_noise: str = 'rademacher',
        context_channels: int = 0,
        prediction: str = 'velocity',
    ):
        super().__init__()
        config = ENFlowConfig(n_dims, node_channels, hidden_channels,
                              num_layers, edge_inference, coords_norm,
                              coords_range, aggr, num_radial, radial_cutoff,
                              graph, adjoint, adjoint_seminorm,
                              hutchinson_noise, context_channels, prediction)
        self._architecture = None if dynamics is not None else config
        # One probe is drawn from the global generator before the parameters,
        # as torch-enf 0.1 did, so that seeded runs initialise as they did
        # and the documented commands reproduce the documented numbers.
        sample_probe(torch.zeros(1), hutchinson_noise)
        self.n_dims = n_dims
        self.node_channels = node_channels
        self.context_channels = context_channels
        if dynamics is None:
            dynamics = EGNNDynamics(n_dims, node_channels, hidden_channels,
                                    num_layers, edge_inference=edge_inference,
                                    coords_norm=coords_norm,
                                    coords_range=coords_range, aggr=aggr,
                                    num_radial=num_radial,
                                    radial_cutoff=radial_cutoff,
                                    context_channels=context_channels,
                                    prediction=prediction)
        self.vector_field = VectorField(dynamics, config.graph)
        self.adjoint = adjoint
        self.adjoint_seminorm = adjoint_seminorm
        self.hutchinson_noise = hutchinson_noise
        self.pos_prior = CenteredGaussian(n_dims)
        self.h_prior = NodeGaussian(node_channels)
        self._register_load_state_dict_pre_hook(_upgrade_state_dict)

    @classmethod
    def from_config(cls, config: ENFlowConfig) -> 'ENFlow':
        r"""A fresh flow (new random parameters) of :obj:`config`; load a
        state dict to restore a trained one."""
        if not isinstance(config, ENFlowConfig):
            raise ValueError(f"'config' must be an ENFlowConfig (got "
                             f"{type(config).__name__})")
        fields = {field.name: getattr(config, field.name)
                  for field in dataclasses.fields(config)}
        return cls(**fields)

    def config(self) -> ENFlowConfig:
        r"""The configuration this flow is built from (with its current
        :obj:`adjoint`, :obj:`adjoint_seminorm` and
        :obj:`hutchinson_noise`).

        Raises:
            ValueError: If the flow was built with a custom
                :obj:`dynamics`, which no configuration describes.
        """
        if self._architecture is None:
            raise ValueError(f'This flow was built with custom dynamics '
                             f'({type(self.dynamics).__name__}), which no '
                             f'ENFlowConfig describes')
        return self._architecture.replace(
            adjoint=self.adjoint, adjoint_seminorm=self.adjoint_seminorm,
            hutchinson_noise=self.hutchinson_noise)

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

    # Public API ------------------------------------------------------------

    def log_prob(self, data: Union[Data, Batch], trace: str = 'exact', *,
                 solver: Optional[SolverOptions] = None,
                 return_regularization: bool = False,
                 counter: Optional[EvaluationCount] = None
                 ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        r"""The log-density :math:`\log p(\mathbf{x}, \mathbf{h})` of every
        graph, in nats on the centred subspace.

        Args:
            data (torch_geometric.data.Data or Batch): Graphs of at least two
                nodes with :obj:`pos` of shape :obj:`[N, n]` and, when
                :obj:`node_channels > 0`, :obj:`h` of shape :obj:`[N, F]`
                (and :obj:`x` of shape :obj:`[N, C]` for a conditional
                flow). Positions need not be centred: the density is
                translation invariant.
            trace (str, optional): :obj:`"exact"` or :obj:`"hutchinson"`.
                (default: :obj:`"exact"`)
            solver (SolverOptions, optional): The ODE solver.
                (default: :obj:`DEFAULT_SOLVER`)
            return_regularization (bool, optional): Also return the
                integrated kinetic energy plus Jacobian Frobenius norm per
                graph, for regularised training. (default: :obj:`False`)
            counter (EvaluationCount, optional): Counts the vector-field
                evaluations of the solve and of its adjoint backward pass.

        Returns:
            torch.Tensor: Shape :obj:`[num_graphs]`, or a tuple with the
            regulariser of the same shape.
        """
        result = self.encode(data, trace=_check_trace(trace), solver=solver,
                             regularize=return_regularization,
                             counter=counter)
        log_prob = self.base_log_prob(result) + result.log_det
        if return_regularization:
            return log_prob, result.regularization
        return log_prob

    def base_log_prob(self, latent: FlowResult,
                      temperature: float = 1.0) -> Tensor:
        r"""The log-density of the base distribution at the latents of
        :meth:`encode`, per graph; with :obj:`temperature` :math:`\tau`,
        that of the base scaled by :math:`\tau` (the latents of
        :meth:`sample` at that temperature)."""
        out = self.pos_prior.log_prob(latent.pos, latent.batch,
                                      latent.num_graphs, std=temperature)
        if self.node_channels > 0:
            out = out + self.h_prior.log_prob(latent.h, latent.batch,
                                              latent.num_graphs,
                                              std=temperature)
        return out

    def encode(self, data: Union[Data, Batch], *,
               trace: Optional[str] = 'exact',
               solver: Optional[SolverOptions] = None,
               regularize: bool = False, end_time: float = 1.0,
               counter: Optional[EvaluationCount] = None) -> FlowResult:
        r"""Maps data to latents (:math:`t: 0 \to 1`) and accumulates
        :math:`\log |\det \partial \mathbf{z} / \partial \mathbf{x}|` per
        graph with the :obj:`trace` (:obj:`"exact"`, :obj:`"hutchinson"`,
        or :obj:`None` for none; see :class:`FlowResult`). With
        :obj:`end_time` :math:`s < 1` the solve stops at :math:`t = s` (a
        fixed-step solver takes its :obj:`num_steps` on :math:`[0, s]`).
        :obj:`solver` and :obj:`counter` are as in :meth:`log_prob`."""
        end_time = check_time(end_time, 'end_time')
        inputs = self.flow_inputs(data)
        return self._solve(inputs.pos, inputs.h, inputs.batch,
                           inputs.num_graphs, 0.0, end_time,
                           _check_trace(trace, optional=True), regularize,
                           solver, counter, inputs.context)

    def decode(self, pos: Tensor, h: Optional[Tensor] = None,
               batch: Optional[Tensor] = None, *,
               trace: Optional[str] = None,
               solver: Optional[SolverOptions] = None,
               start_time: float = 1.0,
               counter: Optional[EvaluationCount] = None,
               context: Optional[Tensor] = None) -> FlowResult:
        r"""Maps latents :obj:`pos` :obj:`[N, n]` and :obj:`h`
        :obj:`[N, F]` of the graphs of :obj:`batch` :obj:`[N]` back to data
        (:math:`t: 1 \to 0`). With a :obj:`trace`, :obj:`log_det` holds
        :math:`\log |\det \partial \mathbf{x} / \partial \mathbf{z}|`.
        With :obj:`start_time` :math:`s < 1`, :obj:`(pos, h)` is a state
        of the flow at :math:`t = s` (*e.g.* data noised along the paths of
        :class:`~torch_enf.objectives.FlowMatching`), carried to
        :math:`t = 0`. :obj:`solver` and :obj:`counter` are as in
        :meth:`log_prob`; a conditional flow needs its node inputs
        :obj:`context` :obj:`[N, C]`."""
        start_time = check_time(start_time, 'start_time')
        pos, h, batch, num_graphs = self._check(pos, h, batch)
        context = self._check_context(context, pos.size(0))
        return self._solve(center_pos_exact(pos, batch, num_graphs), h,
                           batch, num_graphs, start_time, 0.0,
                           _check_trace(trace, optional=True), False,
                           solver, counter, context)

    def flow_inputs(self, data: Union[Data, Batch]) -> FlowInputs:
        r"""The checked, centred positions and the features of
        :obj:`data`: the state of the flow at :math:`t = 0` (see
        :class:`FlowInputs`), with the node inputs :obj:`data.x` of a
        conditional flow as :obj:`context`."""
        pos, h, batch, num_graphs = self._read(data)
        context = self._check_context(
            getattr(data, 'x', None) if self.context_channels > 0 else None,
            pos.size(0))
        return FlowInputs(center_pos_exact(pos, batch, num_graphs), h,
                          batch, num_graphs, context=context)

    def velocity(self, t: Tensor, pos: Tensor, h: Tensor, batch: Tensor,
                 num_graphs: int, context: Optional[Tensor] = None
                 ) -> Tuple[Tensor, Tensor]:
        r"""The vector field :math:`f(\mathbf{x}, \mathbf{h}, t)` at
        :obj:`t` (a scalar or one time per node), see :class:`VectorField`
        (given the node inputs :obj:`context` of a conditional flow).

        Returns:
            :obj:`(dpos_dt, dh_dt)` of shapes :obj:`[N, n]` (centred per
            graph) and :obj:`[N, F]`.
        """
        return self.vector_field(t, pos, h, batch, num_graphs,
                                 context=context)

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
    def sample(self, num_samples: int, num_nodes: NumNodes, *,
               generator: Optional[torch.Generator] = None,
               batch_size: Optional[int] = None, progress: bool = False,
               temperature: float = 1.0,
               solver: Optional[SolverOptions] = None,
               counter: Optional[EvaluationCount] = None,
               context: Optional[Tensor] = None) -> Batch:
        r"""Draws graphs from the flow: latents :math:`\tau \mathbf{z}`,
        :math:`\mathbf{z}` from the base distribution, carried to the data
        by the inverse map.

        A temperature :math:`\tau < 1` (as in Glow, Kingma & Dhariwal,
        2018) draws from the more probable core of the base distribution:
        sharper, less diverse samples that no longer follow the model's
        density exactly. :math:`\tau = 1` samples the model.

        Args:
            num_samples (int): The number of graphs.
            num_nodes (int, list or torch.Tensor): The number of nodes of
                every graph: one size for all, or :obj:`num_samples` sizes.
                A flow has no distribution of sizes, so :obj:`None` is
                refused (see :meth:`MoleculeFlow.sample`).
            generator (torch.Generator, optional): Source of the base noise.
            batch_size (int, optional): Graphs per ODE solve (all at once
                by default); bounds the memory of large draws.
            progress (bool, optional): Show a progress bar over the graphs.
                (default: :obj:`False`)
            temperature (float, optional): The scale :math:`\tau > 0` of
                the latents. (default: :obj:`1.0`)
            solver (SolverOptions, optional): The ODE solver.
                (default: :obj:`DEFAULT_SOLVER`)
            counter (EvaluationCount, optional): Counts the vector-field
                evaluations of all solves.
            context (torch.Tensor, optional): The node inputs of a
                conditional flow, :obj:`[N, C]` for the :obj:`N` nodes of all
                graphs in order (needed then, refused otherwise).

        Returns:
            torch_geometric.data.Batch: Graphs with :obj:`pos` (centred),
            when :obj:`node_channels > 0`, :obj:`h`, and for a conditional
            flow their :obj:`context` as :obj:`x`.
        """
        check_positive_number(temperature, 'temperature')
        return self._sample(num_samples, num_nodes, generator, batch_size,
                            progress, None, temperature, solver, counter,
                            context)[0]

    @torch.no_grad()
    def sample_with_log_prob(
        self,
        num_samples: int,
        num_nodes: NumNodes,
        *,
        generator: Optional[torch.Generator] = None,
        batch_size: Optional[int] = None,
        progress: bool = False,
        trace: str = 'exact',
        temperature: float = 1.0,
        solver: Optional[SolverOptions] = None,
        counter: Optional[EvaluationCount] = None,
        context: Optional[Tensor] = None,
    ) -> Tuple[Batch, Tensor]:
        r"""Draws graphs as :meth:`sample` does, with the log-density of
        each under the distribution they were drawn from,

        .. math::
            \log q_\tau(\mathbf{x}) = \log p_\tau(\mathbf{z}) - \log
            \left|\det \frac{\partial \mathbf{x}}{\partial \mathbf{z}}
            \right|,

        from the same solve (exact trace by default), as needed for
        importance weights (:mod:`torch_enf.boltzmann`). At
        :obj:`temperature` :math:`\tau` the latents are drawn from
        :math:`p_\tau`, the base distribution scaled by :math:`\tau`, and
        :math:`q_\tau` is the exact density of that *tempered proposal*
        (:math:`q_1` is the model): weights against it stay unbiased, and
        :math:`\tau < 1` concentrates the draws where the flow is
        accurate, at the price of covering the tails less.

        Returns:
            :obj:`(samples, log_prob)`, the second of shape
            :obj:`[num_samples]`.
        """
        check_positive_number(temperature, 'temperature')
        return self._sample(num_samples, num_nodes, generator, batch_size,
                            progress, _check_trace(trace), temperature,
                            solver, counter, context)

    # Internals -------------------------------------------------------------

    def _sample(self, num_samples: int, num_nodes: NumNodes,
                generator: Optional[torch.Generator],
                batch_size: Optional[int], progress: bool,
                trace: Optional[str], temperature: float,
                solver: Optional[SolverOptions],
                counter: Optional[EvaluationCount],
                context: Optional[Tensor] = None
                ) -> Tuple[Batch, Optional[Tensor]]:
        sizes = sample_sizes(num_samples, num_nodes, self._device())
        if batch_size is not None:
            check_positive_integer(batch_size, 'batch_size')
        context = self._check_context(context, int(sizes.sum()))
        chunks = sizes.split(batch_size or sizes.numel())
        contexts = [None] * len(chunks) if context is None else \
            context.split([int(chunk.sum()) for chunk in chunks])
        data_list, log_probs = [], []
        with tqdm(total=sizes.numel(), desc='sampling', leave=False,
                  disable=not progress) as bar:
            for chunk, chunk_context in zip(chunks, contexts):
                batch = torch.repeat_interleave(
                    torch.arange(chunk.numel(), device=chunk.device), chunk)
                z_pos, z_h = (temperature * z for z in self.sample_base(
                    batch, chunk.numel(), generator))
                out = self.decode(z_pos, z_h if self.node_channels > 0
                                  else None, batch, trace=trace,
                                  solver=solver, counter=counter,
                                  context=chunk_context)
                if trace is not None:
                    base = self.base_log_prob(FlowResult(
                        z_pos, z_h, None, None, batch, chunk.numel()),
                        temperature)
                    log_probs.append(base - out.log_det)
                split = chunk.tolist()
                for k, (pos, h) in enumerate(zip(out.pos.split(split),
                                                 out.h.split(split))):
                    data = Data(pos=pos)
                    if self.node_channels > 0:
                        data.h = h
                    if chunk_context is not None:
                        data.x = chunk_context.split(split)[k]
                    data_list.append(data)
                bar.update(chunk.numel())
        return (Batch.from_data_list(data_list),
                torch.cat(log_probs) if trace is not None else None)

    def _solve(self, pos: Tensor, h: Tensor, batch: Tensor, num_graphs: int,
               t0: float, t1: float, trace: Optional[str], regularize: bool,
               solver: Optional[SolverOptions] = None,
               counter: Optional[EvaluationCount] = None,
               context: Optional[Tensor] = None) -> FlowResult:
        solver = _check_solver(solver)
        nodes = [pos, h] if self.node_channels > 0 else [pos]
        probe = None
        if trace == 'hutchinson' or regularize:
            probe = [sample_probe(x, self.hutchinson_noise) for x in nodes]
            probe[0] = center_pos(probe[0], batch, num_graphs)
        edge_index = full_edge_index(batch, num_graphs) \
            if self.graph == 'full' else None
        field = self.vector_field if context is None else \
            functools.partial(self.vector_field, context=context)
        func = AugmentedODE(field, nodes, batch, num_graphs,
                            trace, probe, regularize, edge_index, counter)
        zeros = pos.new_zeros(num_graphs)
        state = nodes + [zeros] * (int(trace is not None) + int(regularize))
        with inputs_checked():  # checked by _check; no syncs per step
            final = integrate(
                func, state, t0, t1, solver,
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

    def _read(self, data: Union[Data, Batch]
              ) -> Tuple[Tensor, Tensor, Tensor, int]:
        if getattr(data, 'pos', None) is None:
            raise ValueError("The input graphs have no 'pos' attribute")
        h = getattr(data, 'h', None) if self.node_channels > 0 else None
        sizes = stored_graph_sizes(data)
        if sizes is not None:
            check_graph_sizes(sizes)
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
        check_graph_sizes(graph_sizes(batch, num_graphs))
        check_finite_graphs(pos, batch, num_graphs, 'pos')
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

    def _check_context(self, context: Optional[Tensor],
                       num_nodes: int) -> Optional[Tensor]:
        r"""The node inputs of a conditional flow, checked against its
        :obj:`num_nodes` nodes and cast to the flow's dtype and device;
        :obj:`None` for an unconditional flow."""
        if self.context_channels == 0:
            if context is not None:
                raise ValueError(f"The flow has no node inputs "
                                 f"(context_channels=0), but got a context "
                                 f"of shape {list(context.shape)}")
            return None
        if context is None:
            raise ValueError(f"The conditional flow needs node inputs "
                             f"(data.x, or 'context') with "
                             f"{self.context_channels} channels")
        check_node_matrix(context, num_nodes, self.context_channels,
                          'context')
        return context.to(self._device(), self._dtype())

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
                f'adjoint={self.adjoint})')


def stored_graph_sizes(data: Union[Data, Batch]) -> Optional[Tensor]:
    r"""The number of nodes of every graph of a
    :class:`~torch_geometric.data.Batch`, empty graphs included, from its
    :obj:`ptr` (the :obj:`batch` vector cannot show empty graphs);
    :obj:`None` for other inputs."""
    ptr = getattr(data, 'ptr', None) if isinstance(data, Batch) else None
    return None if ptr is None else ptr.diff()


def check_graph_sizes(sizes: Tensor) -> None:
    r"""Checks that every graph of :obj:`sizes` :obj:`[num_graphs]` has at
    least two nodes.

    Raises:
        ValueError: If there are no graphs, or naming the first graphs with
            fewer than two nodes (empty ones included): the density on the
            centred subspace is undefined for them.
    """
    if sizes.numel() == 0:
        raise ValueError('The input holds no graphs')
    if bool((sizes < 2).any()):
        small = torch.nonzero(sizes < 2).view(-1)[:10]
        raise ValueError(f'Graphs {small.tolist()} have fewer than 2 nodes '
                         f'(sizes {sizes[small].tolist()}): the density on '
                         f'the centred subspace is undefined for them')


def sample_sizes(num_samples: int, num_nodes: NumNodes,
                 device: torch.device) -> Tensor:
    r"""The number of nodes of each of :obj:`num_samples` graphs to draw,
    from one size for all or a sequence of :obj:`num_samples` sizes, as a
    :obj:`LongTensor` on :obj:`device`.

    Raises:
        ValueError: If :obj:`num_samples` is not a positive integer, the
            sizes are missing, not integers, of another count, or below 2.
    """
    if not _is_integer_scalar(num_samples) or int(num_samples) < 1:
        raise ValueError(f"'num_samples' must be a positive integer (got "
                         f"{num_samples!r})")
    num_samples = int(num_samples)
    if num_nodes is None:
        raise ValueError("'num_nodes' is None, but a flow without an "
                         "atom-count distribution needs the sizes of the "
                         "graphs to draw (one size or one per graph)")
    if _is_integer_scalar(num_nodes):
        sizes = torch.full((num_samples, ), int(num_nodes),
                           dtype=torch.long, device=device)
    else:
        sizes = torch.as_tensor(num_nodes, device=device).view(-1)
        if sizes.is_floating_point() or sizes.dtype == torch.bool:
            raise ValueError(f"'num_nodes' must hold integers (got "
                             f"{sizes.tolist()[:10]})")
        if sizes.numel() != num_samples:
            raise ValueError(f"'num_nodes' must be one size or "
                             f"'num_samples'={num_samples} sizes (got "
                             f"{sizes.numel()})")
        sizes = sizes.long()
    if bool((sizes < 2).any()):
        raise ValueError(f"Every sampled graph needs at least 2 nodes (got "
                         f"'num_nodes' {sizes.tolist()[:10]})")
    return sizes


def _check_trace(trace: Optional[str], optional: bool = False
                 ) -> Optional[str]:
    if trace is None and optional:
        return None
    if trace not in TRACES:
        expected = TRACES + ((None, ) if optional else ())
        raise ValueError(f"'trace' must be one of {expected} (got "
                         f"{trace!r})")
    return trace


def _check_solver(solver: Optional[SolverOptions]) -> SolverOptions:
    if solver is None:
        return DEFAULT_SOLVER
    if not isinstance(solver, SolverOptions):
        raise ValueError(f"'solver' must be a SolverOptions or None (got "
                         f"{type(solver).__name__})")
    return solver


def _check_integer(value: Any, name: str, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or \
            value < least:
        raise ValueError(f"'{name}' must be an integer of at least {least} "
                         f"(got {value!r})")


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
