r"""A flow over the conformations of one molecule: every graph holds the
same atoms in the same order (a molecule of fixed topology, as in molecular
dynamics), and the vector field sees each atom's type as a fixed
input."""
import dataclasses
from typing import Any, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data

from torch_enf.config import Config
from torch_enf.flows.dynamics import EGNNDynamics, check_prediction
from torch_enf.flows.base import FlowInputs
from torch_enf.flows.enflow import ENFlow
from torch_enf.utils import check_positive_number, graph_sizes


@dataclasses.dataclass(frozen=True)
class ConformerFlowConfig(Config):
    r"""The configuration of a :class:`ConformerFlow`: every argument of
    its constructor, checked when built.

    .. code-block:: python

        config = ConformerFlowConfig(atom_types=(0, 1, 1, 1, 2))
        flow = ConformerFlow.from_config(config)
        assert flow.config() == config
    """
    atom_types: Tuple[int, ...]
    hidden_channels: int = 64
    num_layers: int = 4
    num_radial: int = 0
    radial_cutoff: float = 8.0
    adjoint: bool = True
    prediction: str = 'velocity'

    def __post_init__(self):
        types = self.atom_types
        if not isinstance(types, tuple) or len(types) < 2 or not all(
                isinstance(t, int) and not isinstance(t, bool) and t >= 0
                for t in types):
            raise ValueError(f"'atom_types' must be a tuple of at least two "
                             f"non-negative integers (got {types!r:.200})")
        for name in ('hidden_channels', 'num_layers'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or \
                    value < 1:
                raise ValueError(f"'{name}' must be a positive integer "
                                 f"(got {value!r})")
        check_positive_number(self.radial_cutoff, 'radial_cutoff')
        check_prediction(self.prediction)


class AtomTypeDynamics(torch.nn.Module):
    r"""An :class:`EGNNDynamics` whose node inputs are fixed one-hot atom
    types :math:`\mathbf{a}_i` (and :math:`t`), not flowed features,

    .. math::
        \frac{d\mathbf{x}}{dt} = \mathrm{EGNN}([\mathbf{a}, t],
        \mathbf{x}) - \mathbf{x},

    for batches of graphs of :obj:`len(atom_types)` nodes each, in one
    fixed order. Its feature velocity has width 0.

    Args:
        atom_types (torch.Tensor): One integer type per atom, :obj:`[M]`.
        hidden_channels (int): Width of the EGNN.
        num_layers (int): Depth of the EGNN.
        num_radial (int): Gaussian distance features per edge (see
            :class:`EGNNDynamics`).
        radial_cutoff (float): The last centre of those features.
        prediction (str): What the EGNN predicts, :obj:`"velocity"` or
            :obj:`"endpoint"` (see :class:`EGNNDynamics`).
    """
    def __init__(self, atom_types: Tensor, hidden_channels: int,
                 num_layers: int, num_radial: int, radial_cutoff: float,
                 prediction: str = 'velocity'):
        super().__init__()
        self.register_buffer('one_hot', torch.nn.functional.one_hot(
            atom_types, int(atom_types.max()) + 1).float())
        self.egnn = EGNNDynamics(3, self.one_hot.size(1), hidden_channels,
                                 num_layers, num_radial=num_radial,
                                 radial_cutoff=radial_cutoff,
                                 prediction=prediction)

    def reset_parameters(self):
        r"""Resets all learnable parameters of the module."""
        self.egnn.reset_parameters()

    def forward(self, t: Tensor, pos: Tensor, h: Tensor, edge_index: Tensor,
                batch: Tensor) -> Tuple[Tensor, Tensor]:
        num_graphs = pos.size(0) // self.one_hot.size(0)
        features = self.one_hot.to(pos.dtype).repeat(num_graphs, 1)
        dpos, _ = self.egnn(t, pos, features, edge_index, batch)
        return dpos, pos.new_zeros(pos.size(0), 0)


class ConformerFlow(ENFlow):
    r"""An E(3)-equivariant flow over the conformations of one molecule
    (:class:`ENFlow` on the positions, in 3D): every graph holds the
    :obj:`M = len(atom_types)` atoms of the molecule in one fixed order,
    and the vector field (:class:`AtomTypeDynamics`) sees their types as
    fixed one-hot inputs. Atoms share a type only where they are
    exchangeable (*e.g.* the hydrogens of a methyl group): the density is
    invariant to permutations within a type, to rotations, reflections and
    translations, and flow matching
    (:class:`~torch_enf.objectives.FlowMatching`) searches permutations
    within types only (:meth:`flow_inputs` carries them).

    Args:
        atom_types (sequence of int): One type per atom, in the order of
            the molecule's topology.
        hidden_channels (int, optional): Width of the EGNN. (default:
            :obj:`64`)
        num_layers (int, optional): Depth of the EGNN. (default: :obj:`4`)
        num_radial (int, optional): Gaussian distance features per edge.
            (default: :obj:`0`)
        radial_cutoff (float, optional): The last centre of those features,
            in the units of the positions. (default: :obj:`8.0`)
        adjoint (bool, optional): Back-propagate through ODE solves with
            the adjoint method. (default: :obj:`True`)
        prediction (str, optional): What the EGNN predicts,
            :obj:`"velocity"` or :obj:`"endpoint"` (see
            :class:`EGNNDynamics`). (default: :obj:`"velocity"`)
    """
    config_class = ConformerFlowConfig

    def __init__(self, atom_types: Union[Sequence[int], Tensor],
                 hidden_channels: int = 64, num_layers: int = 4, *,
                 num_radial: int = 0, radial_cutoff: float = 8.0,
                 adjoint: bool = True, prediction: str = 'velocity'):
        types = tuple(int(t) for t in torch.as_tensor(atom_types).tolist())
        self._conformer_config = ConformerFlowConfig(
            types, hidden_channels, num_layers, num_radial, radial_cutoff,
            adjoint, prediction)
        types = torch.tensor(types)
        super().__init__(3, dynamics=AtomTypeDynamics(
            types, hidden_channels, num_layers, num_radial, radial_cutoff,
            prediction),
            adjoint=adjoint)
        self.register_buffer('types', types)

    @classmethod
    def from_config(cls, config: ConformerFlowConfig) -> 'ConformerFlow':
        r"""A fresh flow (new random parameters) of :obj:`config`."""
        if not isinstance(config, ConformerFlowConfig):
            raise ValueError(f"'config' must be a ConformerFlowConfig (got "
                             f"{type(config).__name__})")
        return cls(config.atom_types, config.hidden_channels,
                   config.num_layers, num_radial=config.num_radial,
                   radial_cutoff=config.radial_cutoff,
                   adjoint=config.adjoint, prediction=config.prediction)

    def config(self) -> ConformerFlowConfig:
        r"""The configuration of this flow (with its current
        :obj:`adjoint`)."""
        return self._conformer_config.replace(adjoint=self.adjoint)

    @property
    def num_atoms(self) -> int:
        r"""The number of atoms :math:`M` of every graph."""
        return self.types.numel()

    def sample(self, num_samples: int, num_nodes: Optional[int] = None,
               **kwargs: Any) -> Batch:
        r"""Draws :obj:`num_samples` conformations (see
        :meth:`ENFlow.sample`); :obj:`num_nodes` is the molecule's number
        of atoms, and may be left out."""
        return super().sample(num_samples, num_nodes or self.num_atoms,
                              **kwargs)

    def flow_inputs(self, data: Union[Data, Batch]) -> FlowInputs:
        inputs = super().flow_inputs(data)
        return inputs._replace(node_type=self.types.repeat(
            inputs.num_graphs))

    def _check(self, pos: Tensor, h: Optional[Tensor],
               batch: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor, int]:
        pos, h, batch, num_graphs = super()._check(pos, h, batch)
        sizes = graph_sizes(batch, num_graphs)
        wrong = (sizes != self.num_atoms).nonzero().view(-1)
        if wrong.numel() > 0:
            first = int(wrong[0])
            raise ValueError(f'Every graph must hold the molecule\'s '
                             f'{self.num_atoms} atoms in its topology '
                             f'order; graph {first} has '
                             f'{int(sizes[first])} ({wrong.numel()} of '
                             f'{num_graphs} graphs differ)')
        return pos, h, batch, num_graphs

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(num_atoms={self.num_atoms}, '
                f'num_types={int(self.types.max()) + 1}, '
                f'adjoint={self.adjoint})')
