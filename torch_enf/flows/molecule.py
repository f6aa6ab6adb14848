r"""The E-NF molecule model: atom count, atom types, charges and positions."""
import dataclasses
from typing import NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data

from torch_enf.config import Config
from torch_enf.elements import QM9_ATOMIC_NUMBERS, atomic_number_tuple
from torch_enf.flows.actnorm import ActNorm
from torch_enf.flows.dequantization import (DEQUANTIZERS, Dequantizer,
                                            ThresholdDequantizer)
from torch_enf.flows.base import FlowInputs, FlowModel
from torch_enf.flows.enflow import (ENFlow, ENFlowConfig, FlowResult,
                                    NumNodes, check_graph_sizes,
                                    stored_graph_sizes)
from torch_enf.flows.integrator import EvaluationCount, SolverOptions
from torch_enf.flows.node_count import NodeCountDistribution
from torch_enf.utils import (center_pos_exact, check_batch_vector,
                             check_non_negative_number,
                             check_positive_integer, default_batch,
                             graph_sizes)


class _Transformed(NamedTuple):
    pos: Tensor
    h_flow: Tensor
    batch: Tensor
    num_graphs: int
    sizes: Tensor
    log_det: Tensor
    log_q: Tensor
    atom_class: Tensor


@dataclasses.dataclass(frozen=True)
class MoleculeFlowConfig(Config):
    r"""The configuration of a :class:`MoleculeFlow` built from an
    :class:`ENFlowConfig` and a dequantiser by name, checked when built.
    See :class:`MoleculeFlow` for the meaning of the fields.

    Attributes:
        flow (ENFlowConfig): The inner flow; its :obj:`node_channels` must
            equal the feature width :math:`F`, one column per atomic number
            and one for the charge.
        max_num_nodes (int): The largest atom count of the support of
            :math:`p(M)` (the size of :class:`NodeCountDistribution`).
        atomic_numbers (tuple of int): The atomic number of each one-hot
            class. (default: H, C, N, O, F)
        dequantizer (str): A name from :obj:`DEQUANTIZERS`.
            (default: :obj:`"variational"`)
        dequantizer_margin (float): The class margin of the threshold
            dequantisers (:obj:`"argmax"`, :obj:`"variational"`); must be
            zero for the others. (default: :obj:`0.0`)
        feature_scale (tuple of float, optional): The feature scale
            :math:`\mathbf{a}`, :math:`F` positive values. (default: four
            for every one-hot column, ten for the charge)
        actnorm (bool): Insert a learnable :class:`ActNorm`.
            (default: :obj:`False`)
    """
    flow: ENFlowConfig
    max_num_nodes: int
    atomic_numbers: Tuple[int, ...] = QM9_ATOMIC_NUMBERS
    dequantizer: str = 'variational'
    dequantizer_margin: float = 0.0
    feature_scale: Optional[Tuple[float, ...]] = None
    actnorm: bool = False

    def __post_init__(self):
        if not isinstance(self.flow, ENFlowConfig):
            raise ValueError(f"'flow' must be an ENFlowConfig (got "
                             f"{type(self.flow).__name__})")
        if isinstance(self.max_num_nodes, bool) or \
                not isinstance(self.max_num_nodes, int) or \
                self.max_num_nodes < 2:
            raise ValueError(f"'max_num_nodes' must be an integer of at "
                             f"least 2 (got {self.max_num_nodes!r})")
        atomic_numbers = atomic_number_tuple(self.atomic_numbers)
        object.__setattr__(self, 'atomic_numbers', atomic_numbers)
        _check_dequantizer(self.dequantizer, self.dequantizer_margin)
        channels = len(atomic_numbers) + 1
        if self.feature_scale is not None:
            object.__setattr__(self, 'feature_scale',
                               tuple(self.feature_scale))
            _check_feature_scale(torch.as_tensor(self.feature_scale),
                                 channels)
        if not isinstance(self.actnorm, bool):
            raise ValueError(f"'actnorm' must be a boolean (got "
                             f"{self.actnorm!r})")
        if self.flow.node_channels != channels:
            raise ValueError(f"'flow.node_channels' must equal the feature "
                             f"width {channels} ({len(atomic_numbers)} "
                             f"one-hot classes and the charge), got "
                             f"{self.flow.node_channels}")


class MoleculeFlow(FlowModel):
    r"""The molecule model of the `"E(n) Equivariant Normalizing Flows"
    <https://arxiv.org/abs/2105.09016>`_ paper: a joint distribution of the
    number of atoms :math:`M`, the atom types and charges :math:`\mathbf{h}`
    and the positions :math:`\mathbf{x}` of a molecule,

    .. math::
        \log p(\mathbf{x}, \mathbf{h}, M) \geq \log p(M) +
        \mathbb{E}_{\mathbf{v} \sim q(\cdot \mid \mathbf{h}, \mathbf{x})}
        \left[\log p_{\text{flow}}(\mathbf{x}, \mathbf{v} / \mathbf{a})
        - M \sum_c \log a_c - \log q(\mathbf{v} \mid \mathbf{h},
        \mathbf{x})\right],

    with :math:`p(M)` a :class:`NodeCountDistribution`,
    :math:`q` a dequantiser (:class:`UniformDequantizer` or
    :class:`VariationalDequantizer`), :math:`\mathbf{a}` a fixed per-channel
    feature scale and :math:`p_{\text{flow}}` an :class:`ENFlow` with
    :obj:`node_channels` :math:`= F`. An optional :class:`ActNorm` sits between
    the scaling and the flow and adds its log-determinant.

    Feature scaling: the dequantised one-hot block lies in :math:`[0, 2)`
    (uniform) and the charges in :math:`[1, 10)`. Dividing them by
    :math:`\mathbf{a} = (4, 4, 4, 4, 4, 10)` (the default) brings both to
    roughly unit range, similar to the positions in Angstrom, so that no
    channel dominates the EGNN's inputs; the change of variables adds
    :math:`-M \sum_c \log a_c` per graph.

    Everything is evaluated per graph on PyG batches of mixed-size molecules
    without padding. The value returned by :meth:`log_prob` is a one-sample
    estimate of the variational lower bound (exact for the flow part when
    :obj:`trace="exact"`). The model shares the interface of
    :class:`ENFlow` (:meth:`log_prob`, :meth:`encode`, :meth:`decode`,
    :meth:`sample`, with per-call :obj:`solver` and :obj:`counter`, and
    :meth:`config` / :meth:`from_config`).

    Args:
        node_count (NodeCountDistribution): :math:`p(M)`, *e.g.* from the
            training sizes. Sizes below 2 must have zero probability.
        flow (ENFlow, optional): The flow on positions and features; its
            :obj:`node_channels` must equal the feature width. (default: an
            :class:`ENFlow` of :obj:`flow_kwargs`)
        dequantizer (str or Dequantizer, optional): A name from
            :obj:`DEQUANTIZERS` (:obj:`"uniform"`, :obj:`"argmax"`,
            :obj:`"variational"`) or a :class:`Dequantizer`. (default:
            :obj:`"variational"`)
        dequantizer_margin (float, optional): The class margin of a
            threshold dequantiser named by :obj:`dequantizer` (see
            :class:`ThresholdDequantizer`); its classes and the charge
            column follow from :obj:`atomic_numbers`. (default: :obj:`0.0`)
        atomic_numbers (sequence of int, optional): The atomic number of each
            one-hot class. (default: H, C, N, O, F = :obj:`(1, 6, 7, 8, 9)`)
        feature_scale (sequence of float, optional): :math:`\mathbf{a}`.
            (default: four for every one-hot column, ten for the charge)
        actnorm (bool, optional): Insert a learnable :class:`ActNorm`;
            call :meth:`initialize` on training data before training.
            (default: :obj:`False`)
        **flow_kwargs: Passed to :class:`ENFlow` when :obj:`flow` is
            :obj:`None`.
    """
    feature_scale: Tensor
    atomic_numbers: Tensor
    config_class = MoleculeFlowConfig

    def __init__(
        self,
        node_count: NodeCountDistribution,
        flow: Optional[ENFlow] = None,
        dequantizer: Union[str, Dequantizer] = 'variational',
        dequantizer_margin: float = 0.0,
        atomic_numbers: Sequence[int] = QM9_ATOMIC_NUMBERS,
        feature_scale: Optional[Sequence[float]] = None,
        actnorm: bool = False,
        **flow_kwargs,
    ):
        super().__init__()
        if float(node_count.probs[:2].sum()) > 0:
            raise ValueError("'node_count' gives molecules of fewer than 2 "
                             "atoms non-zero probability; the flow on "
                             "centred positions is undefined for them")
        num_classes = len(atomic_numbers)
        if isinstance(dequantizer, str):
            _check_dequantizer(dequantizer, dequantizer_margin)
            self._dequantizer_name: Optional[str] = dequantizer
            margin = dict(margin=float(dequantizer_margin)) if issubclass(
                DEQUANTIZERS[dequantizer], ThresholdDequantizer) else {}
            dequantizer = DEQUANTIZERS.create(dequantizer,
                                              num_classes=num_classes,
                                              num_integer=1, **margin)
        elif dequantizer_margin != 0:
            raise ValueError("'dequantizer_margin' needs the dequantizer by "
                             "name, not an instance")
        else:
            self._dequantizer_name = None
        if getattr(dequantizer, 'num_classes', None) != num_classes:
            raise ValueError(f"The dequantizer must have {num_classes} "
                             f"classes, one per atomic number")
        channels = dequantizer.channels
        if feature_scale is None:
            feature_scale = [4.0] * num_classes + [10.0] * (channels -
                                                            num_classes)
        feature_scale = torch.as_tensor(feature_scale, dtype=torch.float)
        _check_feature_scale(feature_scale, channels)
        if flow is None:
            flow = ENFlow(3, channels, **flow_kwargs)
        if flow.node_channels != channels:
            raise ValueError(f"The flow must have node_channels={channels} "
                             f"(got {flow.node_channels})")
        self.node_count = node_count
        self.dequantizer = dequantizer
        self.flow = flow
        self.actnorm = ActNorm(flow.n_dims, channels) if actnorm else None
        self.register_buffer('feature_scale', feature_scale)
        self.register_buffer('atomic_numbers',
                             torch.as_tensor(atomic_numbers))

    @classmethod
    def from_config(cls, config: MoleculeFlowConfig,
                    node_count: Optional[NodeCountDistribution] = None
                    ) -> 'MoleculeFlow':
        r"""A fresh model (new random parameters) of :obj:`config`.

        Without :obj:`node_count`, :math:`p(M)` is a placeholder, uniform
        over 2 to :obj:`config.max_num_nodes` atoms, of the size of the
        stored one: a following :meth:`load_state_dict` replaces its
        probabilities (the buffer :obj:`node_count.probs`) with the trained
        ones, as when a model is read back with
        :func:`~torch_enf.flows.model_from_config`.

        Raises:
            ValueError: If :obj:`node_count` has another support than
                :obj:`config.max_num_nodes`.
        """
        if not isinstance(config, MoleculeFlowConfig):
            raise ValueError(f"'config' must be a MoleculeFlowConfig (got "
                             f"{type(config).__name__})")
        if node_count is None:
            node_count = NodeCountDistribution.placeholder(
                config.max_num_nodes)
        elif node_count.max_nodes != config.max_num_nodes:
            raise ValueError(f"'node_count' has support up to "
                             f"{node_count.max_nodes} atoms, the config "
                             f"{config.max_num_nodes} (max_num_nodes)")
        return cls(node_count, ENFlow.from_config(config.flow),
                   config.dequantizer, config.dequantizer_margin,
                   config.atomic_numbers, config.feature_scale,
                   config.actnorm)

    def config(self) -> MoleculeFlowConfig:
        r"""The configuration this model is built from.

        Raises:
            ValueError: If the model was built with a dequantiser instance
                or its flow with custom dynamics, which no configuration
                describes.
        """
        if self._dequantizer_name is None:
            raise ValueError(f'This model was built with a dequantizer '
                             f'instance ({type(self.dequantizer).__name__}), '
                             f'which no MoleculeFlowConfig describes; pass '
                             f'it by name')
        return MoleculeFlowConfig(
            flow=self.flow.config(), max_num_nodes=self.node_count.max_nodes,
            atomic_numbers=tuple(self.atomic_numbers.tolist()),
            dequantizer=self._dequantizer_name,
            dequantizer_margin=float(getattr(self.dequantizer, 'margin',
                                             0.0)),
            feature_scale=tuple(self.feature_scale.tolist()),
            actnorm=self.actnorm is not None)

    @property
    def channels(self) -> int:
        r"""The feature width :math:`F`."""
        return self.dequantizer.channels

    def log_prob(self, data: Batch, trace: str = 'exact', *,
                 solver: Optional[SolverOptions] = None,
                 return_regularization: bool = False,
                 counter: Optional[EvaluationCount] = None
                 ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        r"""The variational lower bound of
        :math:`\log p(\mathbf{x}, \mathbf{h}, M)` of every molecule, in
        nats.

        Args:
            data (torch_geometric.data.Batch): Molecules of at least two
                atoms with :obj:`pos` :obj:`[N, 3]` and discrete :obj:`h`
                :obj:`[N, F]`.
            trace (str, optional): Trace of the flow, see
                :meth:`ENFlow.log_prob`. (default: :obj:`"exact"`)
            solver (SolverOptions, optional): The ODE solver.
                (default: :obj:`DEFAULT_SOLVER`)
            return_regularization (bool, optional): Also return the flow's
                regulariser per graph.
            counter (EvaluationCount, optional): Counts the vector-field
                evaluations, see :meth:`ENFlow.log_prob`.

        Returns:
            torch.Tensor: Shape :obj:`[num_graphs]` (and the regulariser).
        """
        x = self._transform(data)
        out = self.flow.log_prob(Data(pos=x.pos, h=x.h_flow, batch=x.batch),
                                 trace, solver=solver,
                                 return_regularization=return_regularization,
                                 counter=counter)
        flow_log_prob, reg = out if return_regularization else (out, None)
        log_prob = self.node_count.log_prob(x.sizes).to(x.log_q.dtype) + \
            flow_log_prob + x.log_det - x.log_q
        return (log_prob, reg) if return_regularization else log_prob

    def encode(self, data: Batch, *, trace: Optional[str] = 'exact',
               solver: Optional[SolverOptions] = None,
               counter: Optional[EvaluationCount] = None) -> FlowResult:
        r"""Maps molecules to latents of the inner flow: the features are
        dequantised (one draw), scaled and ActNorm-ed (see
        :meth:`flow_inputs`), then carried by :meth:`ENFlow.encode`. The
        :obj:`log_det` of the result is that of the inner flow only."""
        x = self._transform(data)
        return self.flow.encode(Data(pos=x.pos, h=x.h_flow, batch=x.batch),
                                trace=trace, solver=solver, counter=counter)

    @torch.no_grad()
    def decode(self, pos: Tensor, h: Tensor, batch: Optional[Tensor] = None,
               *, solver: Optional[SolverOptions] = None,
               counter: Optional[EvaluationCount] = None) -> Batch:
        r"""Maps latents of the inner flow, :obj:`pos` :obj:`[N, 3]` and
        :obj:`h` :obj:`[N, F]` of the molecules of :obj:`batch` :obj:`[N]`,
        to molecules: :meth:`ENFlow.decode`, then :meth:`to_molecules`."""
        out = self.flow.decode(pos, h, batch, solver=solver, counter=counter)
        return self.to_molecules(out.pos, out.h,
                                 graph_sizes(out.batch, out.num_graphs))

    def flow_inputs(self, data: Batch) -> FlowInputs:
        r"""The state of the inner :class:`ENFlow` at :math:`t = 0` for
        :obj:`data`: centred positions and the dequantised, scaled (and
        ActNorm-ed) features, with the atom class of every node as
        :obj:`node_type`. The dequantisation noise is drawn anew at every
        call. Used by :class:`~torch_enf.objectives.FlowMatching`."""
        x = self._transform(data)
        return FlowInputs(center_pos_exact(x.pos, x.batch, x.num_graphs),
                          x.h_flow,
                          x.batch, x.num_graphs, x.atom_class)

    def velocity(self, t: Tensor, pos: Tensor, h: Tensor, batch: Tensor,
                 num_graphs: int, context: Optional[Tensor] = None
                 ) -> Tuple[Tensor, Tensor]:
        r"""The vector field of the inner flow, see
        :meth:`ENFlow.velocity`."""
        return self.flow.velocity(t, pos, h, batch, num_graphs, context)

    def sample_base(self, batch: Tensor, num_graphs: int,
                    generator: Optional[torch.Generator] = None
                    ) -> Tuple[Tensor, Tensor]:
        r"""Base samples of the inner flow, see :meth:`ENFlow.sample_base`."""
        return self.flow.sample_base(batch, num_graphs, generator)

    @torch.no_grad()
    def initialize(self, data: Batch) -> None:
        r"""Data-initialises the :class:`ActNorm` (if any) from a batch of
        training molecules, after dequantisation and feature scaling."""
        if self.actnorm is None:
            return
        x = self._transform(data, actnorm=False)
        self.actnorm.initialize(x.pos, x.h_flow, x.batch)

    @torch.no_grad()
    def sample(self, num_samples: int, num_nodes: NumNodes = None, *,
               generator: Optional[torch.Generator] = None,
               batch_size: Optional[int] = None, progress: bool = False,
               temperature: float = 1.0,
               solver: Optional[SolverOptions] = None,
               counter: Optional[EvaluationCount] = None) -> Batch:
        r"""Draws molecules: sizes from :math:`p(M)` (unless given), then
        positions and continuous features from the flow, quantised by the
        dequantiser's inverse.

        Args:
            num_samples (int): The number of molecules.
            num_nodes (int, list or torch.Tensor, optional): The number of
                atoms of every molecule: one size for all or
                :obj:`num_samples` sizes. (default: :obj:`None`: drawn from
                :math:`p(M)`)
            generator (torch.Generator, optional): Source of the noise.
            batch_size (int, optional): Molecules per ODE solve (all at
                once by default).
            progress (bool, optional): Show a progress bar.
            temperature (float, optional): The scale of the flow's latents,
                see :meth:`ENFlow.sample`: below 1, sharper and less diverse
                molecules that no longer follow the model's density.
                (default: :obj:`1.0`)
            solver (SolverOptions, optional): The ODE solver.
                (default: :obj:`DEFAULT_SOLVER`)
            counter (EvaluationCount, optional): Counts the vector-field
                evaluations of all solves.

        Returns:
            torch_geometric.data.Batch: Molecules with :obj:`pos` (centred,
            Angstrom), discrete :obj:`h` :obj:`[N, F]` and :obj:`z`, the
            atomic number of the arg-max class.
        """
        check_positive_integer(num_samples, 'num_samples')
        if num_nodes is None:
            num_nodes = self.node_count.sample(num_samples,
                                               generator=generator)
        latent = self.flow.sample(num_samples, num_nodes,
                                  generator=generator, batch_size=batch_size,
                                  progress=progress, temperature=temperature,
                                  solver=solver, counter=counter)
        return self.to_molecules(latent.pos, latent.h, latent.ptr.diff())

    @torch.no_grad()
    def to_molecules(self, pos: Tensor, h_flow: Tensor,
                     sizes: Union[Tensor, Sequence[int]]) -> Batch:
        r"""Molecules from states of the inner flow at :math:`t = 0`
        (the inverse of :meth:`flow_inputs` up to the dequantisation
        noise): the ActNorm and the feature scaling are undone and the
        features quantised by the dequantiser's inverse.

        Args:
            pos (torch.Tensor): Positions :obj:`[N, n]`.
            h_flow (torch.Tensor): Continuous features :obj:`[N, F]`.
            sizes (torch.Tensor or list): The number of atoms of each
                molecule, in order.

        Returns:
            torch_geometric.data.Batch: Molecules with :obj:`pos`, discrete
            :obj:`h` and :obj:`z`, as :meth:`sample` returns them.
        """
        if self.actnorm is not None:
            pos, h_flow = self.actnorm.inverse(pos, h_flow)
        h = self.dequantizer.inverse(h_flow * self.feature_scale)
        z = self.atomic_numbers[h[:, :len(self.atomic_numbers)].argmax(-1)]
        return molecule_batch(pos, h, z, sizes)

    def _transform(self, data: Batch, actnorm: bool = True) -> _Transformed:
        r"""Dequantises, scales and (with :obj:`actnorm`) normalises the
        molecules, with the log-determinant of the scalings and
        :math:`\log q` per graph."""
        pos, h, batch, num_graphs = self._read(data)
        sizes = graph_sizes(batch, num_graphs)
        h_cont, log_q = self.dequantizer(h, pos, batch)
        scale = self.feature_scale.to(h_cont.dtype)
        h_flow = h_cont / scale
        log_det = -sizes.to(h_cont.dtype) * scale.log().sum()
        if actnorm and self.actnorm is not None:
            pos, h_flow, actnorm_log_det = self.actnorm(pos, h_flow, batch)
            log_det = log_det + actnorm_log_det
        atom_class = h[:, :len(self.atomic_numbers)].argmax(dim=-1)
        return _Transformed(pos, h_flow, batch, num_graphs, sizes, log_det,
                            log_q, atom_class)

    def _read(self, data: Batch) -> Tuple[Tensor, Tensor, Tensor, int]:
        pos, h = getattr(data, 'pos', None), getattr(data, 'h', None)
        if pos is None or h is None:
            raise ValueError("MoleculeFlow needs molecules with 'pos' and "
                             "'h'")
        if pos.dim() != 2 or pos.size(-1) != self.flow.n_dims:
            raise ValueError(f"'pos' must have shape [num_nodes, "
                             f"{self.flow.n_dims}] (got {list(pos.shape)})")
        sizes = stored_graph_sizes(data)
        if sizes is not None:
            check_graph_sizes(sizes)
        batch = getattr(data, 'batch', None)
        if batch is None:
            batch = default_batch(pos.size(0), pos.device)
        check_batch_vector(batch, pos.size(0))
        num_graphs = int(batch[-1]) + 1 if batch.numel() > 0 else 0
        check_graph_sizes(graph_sizes(batch, num_graphs))
        dtype = self.flow._dtype()
        return pos.to(dtype), h.to(dtype), batch, num_graphs

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(flow={self.flow}, dequantizer='
                f'{self.dequantizer.__class__.__name__}, actnorm='
                f'{self.actnorm is not None})')


def molecule_batch(pos: Tensor, h: Tensor, z: Tensor,
                   sizes: Union[Tensor, Sequence[int]]) -> Batch:
    r"""A batch of molecules with :obj:`pos`, discrete features :obj:`h`
    and atomic numbers :obj:`z` from node-wise tensors and the number of
    atoms of each molecule, in order (what the molecule models'
    :meth:`sample` return)."""
    split = torch.as_tensor(sizes).tolist()
    if sum(split) != pos.size(0):
        raise ValueError(f"'sizes' add up to {sum(split)} atoms, but "
                         f"'pos' holds {pos.size(0)}")
    return Batch.from_data_list([
        Data(pos=p, h=f, z=a)
        for p, f, a in zip(pos.split(split), h.split(split), z.split(split))
    ])


def _check_dequantizer(name: str, margin: float) -> None:
    if name not in DEQUANTIZERS:
        raise ValueError(f"Unknown dequantizer {name!r} (expected one of "
                         f"{sorted(DEQUANTIZERS)})")
    check_non_negative_number(margin, 'dequantizer_margin')
    if margin > 0 and not issubclass(DEQUANTIZERS[name],
                                     ThresholdDequantizer):
        raise ValueError(f"'dequantizer_margin' applies to the threshold "
                         f"dequantizers, not {name!r} (got {margin})")


def _check_feature_scale(feature_scale: Tensor, channels: int) -> None:
    if feature_scale.shape != (channels, ) or \
            not bool((feature_scale > 0).all()):
        raise ValueError(f"'feature_scale' must hold {channels} positive "
                         f"values (got {feature_scale.tolist()})")
