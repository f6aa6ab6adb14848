r"""A molecule model that draws the composition (the sum formula) first and
the positions from a flow conditioned on the atom types:

.. math::
    p(\mathbf{x}, \mathbf{a}, M) = p(M)\, p(\mathbf{a} \mid M)\,
    p_{\text{flow}}(\mathbf{x} \mid \mathbf{a}),

every factor exact (no dequantisation bound)."""
import dataclasses
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data

from torch_enf.config import Config
from torch_enf.elements import QM9_ATOMIC_NUMBERS, atomic_number_tuple
from torch_enf.flows.base import FlowInputs, FlowModel
from torch_enf.flows.enflow import (ENFlow, ENFlowConfig, FlowResult,
                                    NumNodes, check_graph_sizes,
                                    sample_sizes, stored_graph_sizes)
from torch_enf.flows.integrator import EvaluationCount, SolverOptions
from torch_enf.flows.molecule import molecule_batch
from torch_enf.flows.node_count import NodeCountDistribution
from torch_enf.utils import (check_batch_vector, check_positive_integer,
                             default_batch, graph_sizes)

COMPOSITION_CHUNK = 1024
r"""Graphs whose composition is looked up in the table at once (bounds the
memory of :meth:`CompositionDistribution.log_prob` to
:obj:`COMPOSITION_CHUNK` times the table)."""


def compositions_of(types: Tensor, batch: Tensor, num_graphs: int,
                    num_classes: int) -> Tensor:
    r"""The composition of every graph: how many of its nodes have each
    type, a :obj:`LongTensor` of shape :obj:`[num_graphs, num_classes]`,
    from the types :obj:`[N]` and the graph assignment :obj:`[N]`."""
    out = torch.zeros(num_graphs, num_classes, dtype=torch.long,
                      device=types.device)
    return out.index_put_((batch, types), torch.ones_like(types),
                          accumulate=True)


class CompositionDistribution(torch.nn.Module):
    r"""A distribution over the atom types :math:`\mathbf{a} \in \{0, \dots,
    K - 1\}^M` of a molecule of :math:`M` atoms, in node order, through its
    composition :math:`\mathbf{c}(\mathbf{a}) \in \mathbb{N}^K` (the
    number of atoms of each type):

    .. math::
        p(\mathbf{a} \mid M) = \frac{q(\mathbf{c}(\mathbf{a}) \mid M)}
        {\binom{M}{\mathbf{c}(\mathbf{a})}}, \qquad
        q(\mathbf{c} \mid M) = (1 - \epsilon) \frac{n_{\mathbf{c}}}{n_M} +
        \epsilon\, \mathrm{Mult}(\mathbf{c};\, M, \boldsymbol{\pi}),

    where :math:`n_{\mathbf{c}}` counts the training molecules of
    composition :math:`\mathbf{c}`, :math:`n_M` those of :math:`M` atoms,
    :math:`\boldsymbol{\pi}` is the frequency of each type over all
    training atoms and the multinomial coefficient
    :math:`\binom{M}{\mathbf{c}} = M! / \prod_k c_k!` counts the orders of
    the atoms of :math:`\mathbf{c}`, all equally likely (the distribution
    is invariant to permutations of the nodes). The smoothing
    :math:`\epsilon` gives every composition of seen types a non-zero
    probability, so that held-out molecules of a formula not seen in
    training keep a finite likelihood; for a size without training
    molecules (:math:`n_M = 0`) the multinomial part alone is used.
    :meth:`sample` draws a training composition (as often as it occurs)
    with probability :math:`1 - \epsilon`, independent types otherwise.

    Args:
        compositions (torch.Tensor): The distinct training compositions,
            :obj:`[C, K]` non-negative integers.
        counts (torch.Tensor): How many training molecules have each,
            :obj:`[C]`.
        type_probs (torch.Tensor): :math:`\boldsymbol{\pi}`, :obj:`[K]`.
        smoothing (float, optional): :math:`\epsilon \in (0, 1)`.
            (default: :obj:`1e-3`)
    """
    compositions: Tensor
    counts: Tensor
    type_probs: Tensor

    def __init__(self, compositions: Tensor, counts: Tensor,
                 type_probs: Tensor, smoothing: float = 1e-3):
        super().__init__()
        compositions = torch.as_tensor(compositions, dtype=torch.long)
        counts = torch.as_tensor(counts, dtype=torch.float64)
        type_probs = torch.as_tensor(type_probs, dtype=torch.float64)
        if compositions.dim() != 2 or counts.shape != (
                compositions.size(0), ) or type_probs.shape != (
                compositions.size(1), ):
            raise ValueError(f"'compositions' [C, K], 'counts' [C] and "
                             f"'type_probs' [K] do not fit (got "
                             f"{list(compositions.shape)}, "
                             f"{list(counts.shape)} and "
                             f"{list(type_probs.shape)})")
        if (compositions < 0).any() or (counts < 0).any() or \
                (type_probs < 0).any():
            raise ValueError("'compositions', 'counts' and 'type_probs' "
                             "must be non-negative")
        if isinstance(smoothing, bool) or not 0 < float(smoothing) < 1:
            raise ValueError(f"'smoothing' must lie in (0, 1) (got "
                             f"{smoothing!r})")
        self.smoothing = float(smoothing)
        self.register_buffer('compositions', compositions)
        self.register_buffer('counts', counts)
        self.register_buffer('type_probs', type_probs)

    @classmethod
    def from_types(cls, types: Tensor, batch: Tensor, num_classes: int,
                   smoothing: float = 1e-3) -> 'CompositionDistribution':
        r"""The distribution of the training molecules whose atom types
        (:obj:`[N]`, integers below :obj:`num_classes`) and graph
        assignment (:obj:`[N]`) are given."""
        check_positive_integer(num_classes, 'num_classes')
        types, batch = types.long(), batch.long()
        if types.numel() == 0 or (types < 0).any() or \
                (types >= num_classes).any():
            raise ValueError(f"'types' must be a non-empty vector of "
                             f"integers in [0, {num_classes})")
        num_graphs = int(batch.max()) + 1
        table, counts = torch.unique(
            compositions_of(types, batch, num_graphs, num_classes), dim=0,
            return_counts=True)
        type_probs = torch.bincount(types, minlength=num_classes).double()
        return cls(table, counts, type_probs / type_probs.sum(), smoothing)

    @property
    def num_classes(self) -> int:
        r"""The number of atom types :math:`K`."""
        return self.type_probs.numel()

    @property
    def num_compositions(self) -> int:
        r"""The number of distinct training compositions :math:`C`."""
        return self.counts.numel()

    def log_prob(self, types: Tensor, batch: Tensor,
                 num_graphs: int) -> Tensor:
        r"""Returns :math:`\log p(\mathbf{a} \mid M)` of every graph,
        :obj:`[num_graphs]` (float64), for node types :obj:`[N]` and the
        graph assignment :obj:`[N]`.

        Raises:
            ValueError: If a graph holds a type that no training atom has
                (zero probability).
        """
        comp = compositions_of(types.long(), batch, num_graphs,
                               self.num_classes)
        sizes = comp.sum(-1)
        found = torch.cat([
            ((chunk[:, None] == self.compositions).all(-1).double() *
             self.counts).sum(-1)
            for chunk in comp.split(COMPOSITION_CHUNK)
        ]) if num_graphs > 0 else self.counts.new_zeros(0)
        per_size = self._molecules_per_size(_largest(sizes))
        of_size = per_size[sizes]
        iid_weight = torch.where(of_size > 0, of_size.new_tensor(
            self.smoothing), of_size.new_tensor(1.0))
        log_orders = torch.lgamma(sizes.double() + 1) - torch.lgamma(
            comp.double() + 1).sum(-1)
        log_iid = torch.where(comp > 0, comp * self.type_probs.log(),
                              0.0).sum(-1)
        log_seen = ((1 - iid_weight) * found / of_size.clamp_min(1)).log() \
            - log_orders
        out = torch.logaddexp(log_seen, iid_weight.log() + log_iid)
        impossible = torch.isneginf(out).nonzero().view(-1)
        if impossible.numel() > 0:
            first = int(impossible[0])
            unseen = (comp[first] > 0) & (self.type_probs == 0)
            raise ValueError(f'Graph {first} holds atom type(s) '
                             f'{unseen.nonzero().view(-1).tolist()} that no '
                             f'training molecule has (zero probability; '
                             f'{impossible.numel()} graph(s) in all)')
        return out

    def sample(self, sizes: Tensor,
               generator: Optional[torch.Generator] = None) -> Tensor:
        r"""Draws the atom types of molecules of the given :obj:`sizes`
        :obj:`[G]`: a :obj:`LongTensor` :obj:`[sum(sizes)]`, graph after
        graph, each graph's atoms in random order."""
        device = self.counts.device
        sizes = torch.as_tensor(sizes, device=device).long()
        num_graphs = sizes.numel()
        per_size = self._molecules_per_size(_largest(sizes))
        iid = (per_size[sizes] == 0) | (torch.rand(
            num_graphs, generator=generator, device=device) < self.smoothing)
        batch = torch.repeat_interleave(
            torch.arange(num_graphs, device=device), sizes)
        iid_types = torch.multinomial(self.type_probs, max(int(
            sizes.sum()), 1), replacement=True, generator=generator)
        comp = compositions_of(iid_types[:batch.numel()], batch, num_graphs,
                               self.num_classes)
        seen = (~iid).nonzero().view(-1)
        if seen.numel() > 0:
            weights = torch.where(
                self.compositions.sum(-1) == sizes[seen, None],
                self.counts, 0.0)
            pick = torch.multinomial(weights, 1, generator=generator)
            comp[seen] = self.compositions[pick.view(-1)]
        types = torch.repeat_interleave(
            torch.arange(self.num_classes, device=device).repeat(num_graphs),
            comp.view(-1))
        shuffle = torch.argsort(batch.double() + torch.rand(
            batch.numel(), generator=generator, device=device,
            dtype=torch.float64).mul(0.5))
        return types[shuffle]

    def _molecules_per_size(self, max_size: int) -> Tensor:
        r""":math:`n_M` for :math:`M = 0, \dots` up to at least
        :obj:`max_size`."""
        sizes = self.compositions.sum(-1)
        length = max(max_size, _largest(sizes)) + 1
        return self.counts.new_zeros(length).index_add_(0, sizes,
                                                        self.counts)

    def extra_repr(self) -> str:
        return (f'num_classes={self.num_classes}, num_compositions='
                f'{self.num_compositions}, smoothing={self.smoothing}')


def _largest(values: Tensor) -> int:
    return int(values.max()) if values.numel() > 0 else 0


@dataclasses.dataclass(frozen=True)
class CompositionFlowConfig(Config):
    r"""The configuration of a :class:`CompositionFlow`, checked when built.

    Attributes:
        flow (ENFlowConfig): The conditional flow on the positions: no
            flowing features (:obj:`node_channels=0`) and one node input
            per atom type (:obj:`context_channels=len(atomic_numbers)`).
        max_num_nodes (int): The largest atom count of :math:`p(M)`.
        num_compositions (int): The number of distinct training
            compositions of :math:`p(\mathbf{a} \mid M)`.
        atomic_numbers (tuple of int): The atomic number of each type.
            (default: H, C, N, O, F)
        smoothing (float): :math:`\epsilon` of the
            :class:`CompositionDistribution`. (default: :obj:`1e-3`)
    """
    flow: ENFlowConfig
    max_num_nodes: int
    num_compositions: int
    atomic_numbers: Tuple[int, ...] = QM9_ATOMIC_NUMBERS
    smoothing: float = 1e-3

    def __post_init__(self):
        if not isinstance(self.flow, ENFlowConfig):
            raise ValueError(f"'flow' must be an ENFlowConfig (got "
                             f"{type(self.flow).__name__})")
        for name, least in (('max_num_nodes', 2), ('num_compositions', 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or \
                    value < least:
                raise ValueError(f"'{name}' must be an integer of at least "
                                 f"{least} (got {value!r})")
        atomic_numbers = atomic_number_tuple(self.atomic_numbers)
        object.__setattr__(self, 'atomic_numbers', atomic_numbers)
        if self.flow.node_channels != 0 or \
                self.flow.context_channels != len(atomic_numbers):
            raise ValueError(f"'flow' must have node_channels=0 and "
                             f"context_channels={len(atomic_numbers)} (one "
                             f"input per atom type), got "
                             f"{self.flow.node_channels} and "
                             f"{self.flow.context_channels}")


class CompositionFlow(FlowModel):
    r"""A molecule model with an exact likelihood that draws the number of
    atoms, then the composition, then the positions:

    .. math::
        \log p(\mathbf{x}, \mathbf{a}, M) = \log p(M) + \log p(\mathbf{a}
        \mid M) + \log p_{\text{flow}}(\mathbf{x} \mid \mathbf{a}),

    with :math:`p(M)` a :class:`NodeCountDistribution`,
    :math:`p(\mathbf{a} \mid M)` a :class:`CompositionDistribution` and
    :math:`p_{\text{flow}}` a conditional :class:`ENFlow` on the positions
    whose vector field sees the one-hot atom types as fixed node inputs
    (:obj:`context_channels` :math:`= K`). Unlike :class:`MoleculeFlow`,
    whose flow carries dequantised types and charges beside the positions
    and whose likelihood is a variational bound, every sampled molecule has
    a composition of the training data (up to the smoothing), so that its
    valences can add up, and :meth:`log_prob` is exact (up to the trace
    estimator and the solver's tolerance). The density is invariant to
    rotations, reflections, translations and permutations of the atoms.

    Molecules are read and returned as :class:`MoleculeFlow` does: one-hot
    types and the charge in :obj:`h` :obj:`[N, K + 1]`, and :obj:`z`.
    Flow matching (:class:`~torch_enf.objectives.FlowMatching`) trains the
    positions; its permutation search keeps to atoms of one type.

    Args:
        node_count (NodeCountDistribution): :math:`p(M)`.
        composition (CompositionDistribution): :math:`p(\mathbf{a} \mid M)`
            over :obj:`len(atomic_numbers)` types.
        flow (ENFlow, optional): The conditional flow, with
            :obj:`node_channels=0` and :obj:`context_channels=K`.
            (default: an :class:`ENFlow` of :obj:`flow_kwargs`)
        atomic_numbers (sequence of int, optional): The atomic number of
            each type. (default: H, C, N, O, F)
        **flow_kwargs: Passed to :class:`ENFlow` when :obj:`flow` is
            :obj:`None`.
    """
    atomic_numbers: Tensor
    config_class = CompositionFlowConfig

    def __init__(self, node_count: NodeCountDistribution,
                 composition: CompositionDistribution,
                 flow: Optional[ENFlow] = None,
                 atomic_numbers: Sequence[int] = QM9_ATOMIC_NUMBERS,
                 **flow_kwargs):
        super().__init__()
        num_classes = len(atomic_numbers)
        if float(node_count.probs[:2].sum()) > 0:
            raise ValueError("'node_count' gives molecules of fewer than 2 "
                             "atoms non-zero probability; the flow on "
                             "centred positions is undefined for them")
        if composition.num_classes != num_classes:
            raise ValueError(f"'composition' has {composition.num_classes} "
                             f"types, 'atomic_numbers' {num_classes}")
        if flow is None:
            flow = ENFlow(3, 0, context_channels=num_classes, **flow_kwargs)
        if flow.node_channels != 0 or flow.context_channels != num_classes:
            raise ValueError(f"The flow must have node_channels=0 and "
                             f"context_channels={num_classes} (got "
                             f"{flow.node_channels} and "
                             f"{flow.context_channels})")
        self.node_count = node_count
        self.composition = composition
        self.flow = flow
        self.register_buffer('atomic_numbers',
                             torch.as_tensor(atomic_numbers))

    @classmethod
    def from_config(cls, config: CompositionFlowConfig,
                    node_count: Optional[NodeCountDistribution] = None,
                    composition: Optional[CompositionDistribution] = None
                    ) -> 'CompositionFlow':
        r"""A fresh model (new random parameters) of :obj:`config`.
        Without :obj:`node_count` and :obj:`composition` both are
        placeholders of the stored sizes, which a following
        :meth:`load_state_dict` fills (as
        :func:`~torch_enf.flows.model_from_config` is followed)."""
        if not isinstance(config, CompositionFlowConfig):
            raise ValueError(f"'config' must be a CompositionFlowConfig (got "
                             f"{type(config).__name__})")
        num_classes = len(config.atomic_numbers)
        if node_count is None:
            node_count = NodeCountDistribution.placeholder(
                config.max_num_nodes)
        if composition is None:
            composition = CompositionDistribution(
                torch.zeros(config.num_compositions, num_classes),
                torch.zeros(config.num_compositions),
                torch.full((num_classes, ), 1 / num_classes),
                config.smoothing)
        if node_count.max_nodes != config.max_num_nodes or \
                composition.num_compositions != config.num_compositions:
            raise ValueError(f"'node_count' and 'composition' must have "
                             f"{config.max_num_nodes} atoms at most and "
                             f"{config.num_compositions} compositions, as "
                             f"the config (got {node_count.max_nodes} and "
                             f"{composition.num_compositions})")
        return cls(node_count, composition, ENFlow.from_config(config.flow),
                   config.atomic_numbers)

    def config(self) -> CompositionFlowConfig:
        r"""The configuration this model is built from."""
        return CompositionFlowConfig(
            flow=self.flow.config(), max_num_nodes=self.node_count.max_nodes,
            num_compositions=self.composition.num_compositions,
            atomic_numbers=tuple(self.atomic_numbers.tolist()),
            smoothing=self.composition.smoothing)

    @property
    def num_classes(self) -> int:
        r"""The number of atom types :math:`K`."""
        return self.atomic_numbers.numel()

    def log_prob(self, data: Batch, trace: str = 'exact', *,
                 solver: Optional[SolverOptions] = None,
                 return_regularization: bool = False,
                 counter: Optional[EvaluationCount] = None
                 ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        r""":math:`\log p(\mathbf{x}, \mathbf{a}, M)` of every molecule, in
        nats (exact with :obj:`trace="exact"`).

        Args:
            data (torch_geometric.data.Batch): Molecules of at least two
                atoms with :obj:`pos` :obj:`[N, 3]` and :obj:`h`
                :obj:`[N, K + 1]` (one-hot types and the charge).
            trace, solver, return_regularization, counter: As in
                :meth:`ENFlow.log_prob`.

        Returns:
            torch.Tensor: Shape :obj:`[num_graphs]` (and the regulariser).
        """
        conditional, types = self._conditional(data)
        num_graphs = int(conditional.batch[-1]) + 1
        out = self.flow.log_prob(conditional, trace, solver=solver,
                                 return_regularization=return_regularization,
                                 counter=counter)
        flow_log_prob, reg = out if return_regularization else (out, None)
        sizes = graph_sizes(conditional.batch, num_graphs)
        log_prob = flow_log_prob + (
            self.node_count.log_prob(sizes).double() +
            self.composition.log_prob(types, conditional.batch, num_graphs)
        ).to(flow_log_prob.dtype)
        return (log_prob, reg) if return_regularization else log_prob

    def encode(self, data: Batch, *, trace: Optional[str] = 'exact',
               solver: Optional[SolverOptions] = None,
               counter: Optional[EvaluationCount] = None) -> FlowResult:
        r"""Maps the positions of molecules to latents of the conditional
        flow (:meth:`ENFlow.encode` given their atom types)."""
        conditional, _ = self._conditional(data)
        return self.flow.encode(conditional, trace=trace, solver=solver,
                                counter=counter)

    def flow_inputs(self, data: Batch) -> FlowInputs:
        r"""The centred positions, no features, the one-hot types as
        :obj:`context` and the type of every atom as :obj:`node_type` (see
        :meth:`ENFlow.flow_inputs`). Used by
        :class:`~torch_enf.objectives.FlowMatching`."""
        conditional, types = self._conditional(data)
        return self.flow.flow_inputs(conditional)._replace(node_type=types)

    def velocity(self, t: Tensor, pos: Tensor, h: Tensor, batch: Tensor,
                 num_graphs: int, context: Optional[Tensor] = None
                 ) -> Tuple[Tensor, Tensor]:
        r"""The vector field of the conditional flow, see
        :meth:`ENFlow.velocity`."""
        return self.flow.velocity(t, pos, h, batch, num_graphs, context)

    def sample_base(self, batch: Tensor, num_graphs: int,
                    generator: Optional[torch.Generator] = None
                    ) -> Tuple[Tensor, Tensor]:
        r"""Base samples of the conditional flow, see
        :meth:`ENFlow.sample_base`."""
        return self.flow.sample_base(batch, num_graphs, generator)

    @torch.no_grad()
    def sample(self, num_samples: int, num_nodes: NumNodes = None, *,
               generator: Optional[torch.Generator] = None,
               batch_size: Optional[int] = None, progress: bool = False,
               temperature: float = 1.0,
               solver: Optional[SolverOptions] = None,
               counter: Optional[EvaluationCount] = None) -> Batch:
        r"""Draws molecules: sizes from :math:`p(M)` (unless given), atom
        types from :math:`p(\mathbf{a} \mid M)`, positions from the
        conditional flow. The arguments are those of
        :meth:`MoleculeFlow.sample`.

        Returns:
            torch_geometric.data.Batch: Molecules with :obj:`pos` (centred,
            Angstrom), :obj:`h` :obj:`[N, K + 1]` and :obj:`z`.
        """
        check_positive_integer(num_samples, 'num_samples')
        if num_nodes is None:
            num_nodes = self.node_count.sample(num_samples,
                                               generator=generator)
        sizes = sample_sizes(num_samples, num_nodes,
                             self.atomic_numbers.device)
        types = self.composition.sample(sizes, generator)
        latent = self.flow.sample(
            num_samples, sizes, generator=generator, batch_size=batch_size,
            progress=progress, temperature=temperature, solver=solver,
            counter=counter, context=self._one_hot(types))
        return self.to_molecules(latent.pos, types, sizes)

    def to_molecules(self, pos: Tensor, types: Tensor,
                     sizes: Union[Tensor, Sequence[int]]) -> Batch:
        r"""Molecules from positions :obj:`[N, 3]`, atom types :obj:`[N]`
        and the number of atoms of each molecule, in order: :obj:`pos`,
        :obj:`h` (one-hot types and the charge) and :obj:`z`."""
        z = self.atomic_numbers[types.to(self.atomic_numbers.device)]
        h = torch.cat([self._one_hot(types).to(pos.dtype),
                       z[:, None].to(pos.dtype)], dim=-1)
        return molecule_batch(pos, h, z, sizes)

    def _one_hot(self, types: Tensor) -> Tensor:
        return torch.nn.functional.one_hot(
            types.long(), self.num_classes).to(self.flow._dtype())

    def _conditional(self, data: Batch) -> Tuple[Data, Tensor]:
        r"""The input of the conditional flow (:obj:`pos`, the one-hot
        types as :obj:`x`, :obj:`batch`) and the types :obj:`[N]` of the
        molecules of :obj:`data`, checked."""
        pos, h = getattr(data, 'pos', None), getattr(data, 'h', None)
        if pos is None or h is None:
            raise ValueError("CompositionFlow needs molecules with 'pos' and "
                             "'h'")
        if h.dim() != 2 or h.size(0) != pos.size(0) or \
                h.size(1) < self.num_classes:
            raise ValueError(f"'h' must have shape [{pos.size(0)}, "
                             f"{self.num_classes + 1}] (one-hot types and "
                             f"the charge; got {list(h.shape)})")
        sizes = stored_graph_sizes(data)
        if sizes is not None:
            check_graph_sizes(sizes)
        batch = getattr(data, 'batch', None)
        if batch is None:
            batch = default_batch(pos.size(0), pos.device)
        check_batch_vector(batch, pos.size(0))
        one_hot = h[:, :self.num_classes]
        bad = ((one_hot != 0) & (one_hot != 1)).any(-1) | \
            (one_hot.sum(-1) != 1)
        if bool(bad.any()):
            node = int(bad.nonzero()[0])
            raise ValueError(f"The first {self.num_classes} columns of 'h' "
                             f"must be one-hot atom types; atom {node} (of "
                             f"graph {int(batch[node])}) has "
                             f"{one_hot[node].tolist()}")
        types = one_hot.argmax(-1)
        return Data(pos=pos, x=one_hot, batch=batch), types

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(flow={self.flow}, '
                f'composition={self.composition})')
