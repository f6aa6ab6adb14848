r"""The models of the N-body experiment of the `"E(n) Equivariant Graph
Neural Networks" <https://arxiv.org/abs/2102.09844>`_ paper (Section 5.1,
Table 2): the EGNN with velocities and the non-equivariant GNN baseline,
which predict the positions of charged particles 1,000 simulation steps
ahead (see :class:`~torch_enf.datasets.nbody.NBody`).

Both follow the paper's official code (:obj:`n_body_system/model.py`,
:obj:`models/gcl.py` and :obj:`main_nbody.py` of `vgsatorras/egnn
<https://github.com/vgsatorras/egnn>`_): 4 layers of width 64, SiLU
non-linearities and residual feature updates.
"""
from typing import Callable

import torch
from torch import Tensor
from torch.nn import Linear, ModuleList, Sequential
from torch_geometric.nn import MessagePassing
from torch_geometric.nn.inits import reset

from torch_enf.nn.egcl import EGCL
from torch_enf.utils import check_positive_integer


def pair_features(pos: Tensor, charge: Tensor, edge_index: Tensor
                  ) -> Tensor:
    r"""The paper's edge attributes of the N-body models,
    :math:`\mathbf{a}_{ij} = (q_i q_j, \|\mathbf{x}_i - \mathbf{x}_j\|^2)`,
    with the squared distance of the *input* positions (it stays fixed
    through the layers).

    Args:
        pos (torch.Tensor): Positions of shape :obj:`[N, 3]`.
        charge (torch.Tensor): Charges of shape :obj:`[N, 1]`.
        edge_index (torch.Tensor): Edge indices of shape :obj:`[2, E]`.

    Returns:
        torch.Tensor: Edge attributes of shape :obj:`[E, 2]`.
    """
    source, target = edge_index
    dist2 = (pos[target] - pos[source]).pow(2).sum(-1, keepdim=True)
    return torch.cat([charge[target] * charge[source], dist2], dim=-1)


class _DynamicsPredictor(torch.nn.Module):
    r"""What the N-body models share: the checked width and depth, a reset
    of every submodule and the representation."""
    def __init__(self, hidden_channels: int, num_layers: int):
        super().__init__()
        check_positive_integer(hidden_channels, 'hidden_channels')
        check_positive_integer(num_layers, 'num_layers')
        self.hidden_channels = hidden_channels
        self.num_layers = num_layers

    def reset_parameters(self):
        r"""Resets all learnable parameters of the module."""
        for module in self.children():
            reset(module)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(hidden_channels='
                f'{self.hidden_channels}, num_layers={self.num_layers})')


class EGNNDynamicsPredictor(_DynamicsPredictor):
    r"""The paper's EGNN for N-body dynamics: :obj:`num_layers`
    :class:`~torch_enf.nn.EGCL` layers in the momentum (velocity) variant,

    .. math::
        \mathbf{h}^0_i &= \mathbf{W} \|\mathbf{v}_i\| + \mathbf{b},
        \qquad \mathbf{a}_{ij} = \left(q_i q_j,
        \|\mathbf{x}_i - \mathbf{x}_j\|^2\right),

        \mathbf{m}_{ij} &= \phi_e\left(\mathbf{h}^l_i, \mathbf{h}^l_j,
        \|\mathbf{x}^l_i - \mathbf{x}^l_j\|^2, \mathbf{a}_{ij}\right),

        \mathbf{x}^{l+1}_i &= \mathbf{x}^l_i + \phi_v(\mathbf{h}^l_i)\,
        \mathbf{v}_i + \frac{1}{M - 1} \sum_{j \neq i}
        (\mathbf{x}^l_i - \mathbf{x}^l_j)\, \phi_x(\mathbf{m}_{ij}),

        \mathbf{h}^{l+1}_i &= \mathbf{h}^l_i + \phi_h\left(\mathbf{h}^l_i,
        \frac{1}{M - 1} \sum_{j \neq i} \mathbf{m}_{ij}\right),

    with the *input* velocities :math:`\mathbf{v}_i` in every layer (as in
    the paper), returning :math:`\mathbf{x}^L`. The messages are averaged
    like the coordinate updates (the paper sums them): on the
    fixed-size fully connected graphs of the task this is a constant factor
    that the first layer of :math:`\phi_h` absorbs. The prediction is
    E(3)-equivariant in positions and velocities (rotations, reflections,
    translations of the positions) and permutation-equivariant.

    Args:
        hidden_channels (int, optional): Width of every layer.
            (default: :obj:`64`)
        num_layers (int, optional): Number of layers. (default: :obj:`4`)
        act (torch.nn.Module, optional): The non-linearity. (default:
            :class:`torch.nn.SiLU`)

    Shapes:
        - **input:** positions :math:`(|\mathcal{V}|, 3)`, velocities
          :math:`(|\mathcal{V}|, 3)`, charges :math:`(|\mathcal{V}|, 1)`,
          edge indices :math:`(2, |\mathcal{E}|)`
        - **output:** predicted positions :math:`(|\mathcal{V}|, 3)`
    """
    def __init__(self, hidden_channels: int = 64, num_layers: int = 4,
                 act: Callable = torch.nn.SiLU()):
        super().__init__(hidden_channels, num_layers)
        self.embedding = Linear(1, hidden_channels)
        self.convs = ModuleList([
            EGCL(in_channels=hidden_channels, out_channels=hidden_channels,
                 hidden_channels=hidden_channels, edge_dim=2, aggr='mean',
                 act=act, velocity=True)
            for _ in range(num_layers)
        ])

    def forward(self, pos: Tensor, vel: Tensor, charge: Tensor,
                edge_index: Tensor) -> Tensor:
        r"""Predicts the future positions.

        Args:
            pos (torch.Tensor): Positions of shape :obj:`[N, 3]`.
            vel (torch.Tensor): Velocities of shape :obj:`[N, 3]`.
            charge (torch.Tensor): Charges of shape :obj:`[N, 1]`.
            edge_index (torch.Tensor): Edge indices of shape :obj:`[2, E]`,
                the fully connected graph of every system in the paper.
        """
        h = self.embedding(vel.norm(dim=-1, keepdim=True))
        edge_attr = pair_features(pos, charge, edge_index)
        for conv in self.convs:
            h, pos, _ = conv(h, pos, edge_index, edge_attr, vel=vel)
        return pos


class GCL(MessagePassing):
    r"""The plain graph convolutional layer of the paper's GNN baseline
    (Gilmer et al., 2017, in the form of the EGNN paper's Table 1),

    .. math::
        \mathbf{m}_{ij} = \phi_e(\mathbf{h}_i, \mathbf{h}_j,
        \mathbf{a}_{ij}), \qquad
        \mathbf{h}^{\prime}_i = \mathbf{h}_i + \phi_h\left(\mathbf{h}_i,
        \sum_{j \in \mathcal{N}(i)} \mathbf{m}_{ij}\right),

    with two-layer MLPs :math:`\phi_e` (activation after both layers) and
    :math:`\phi_h`.

    Args:
        channels (int): Width of the node features and messages.
        edge_dim (int, optional): Size of the edge attributes.
            (default: :obj:`1`)
        act (torch.nn.Module, optional): The non-linearity. (default:
            :class:`torch.nn.SiLU`)

    Shapes:
        - **input:** node features :math:`(|\mathcal{V}|, F)`, edge indices
          :math:`(2, |\mathcal{E}|)`, edge attributes
          :math:`(|\mathcal{E}|, D)`
        - **output:** node features :math:`(|\mathcal{V}|, F)`
    """
    def __init__(self, channels: int, edge_dim: int = 1,
                 act: Callable = torch.nn.SiLU()):
        super().__init__(aggr='add')
        self.channels = channels
        self.edge_dim = edge_dim
        self.edge_mlp = Sequential(
            Linear(2 * channels + edge_dim, channels), act,
            Linear(channels, channels), act)
        self.node_mlp = Sequential(Linear(2 * channels, channels), act,
                                   Linear(channels, channels))

    def reset_parameters(self):
        r"""Resets all learnable parameters of the module."""
        super().reset_parameters()
        reset(self.edge_mlp)
        reset(self.node_mlp)

    def forward(self, h: Tensor, edge_index: Tensor, edge_attr: Tensor
                ) -> Tensor:
        agg = self.propagate(edge_index, h=h, edge_attr=edge_attr)
        return h + self.node_mlp(torch.cat([h, agg], dim=-1))

    def message(self, h_i: Tensor, h_j: Tensor, edge_attr: Tensor) -> Tensor:
        return self.edge_mlp(torch.cat([h_i, h_j, edge_attr], dim=-1))

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.channels}, '
                f'edge_dim={self.edge_dim})')


class GNNDynamicsPredictor(_DynamicsPredictor):
    r"""The paper's non-equivariant GNN baseline for N-body dynamics
    (Table 2, row "GNN"): the positions and velocities, concatenated, are
    the node features and the charge products the edge attributes (as in
    the official code),

    .. math::
        \mathbf{h}^0_i = \mathbf{W}_{in} [\mathbf{x}_i, \mathbf{v}_i] +
        \mathbf{b}_{in}, \qquad
        \mathbf{h}^{l+1} = \mathrm{GCL}_l(\mathbf{h}^l, q_i q_j), \qquad
        \hat{\mathbf{x}}_i = \phi_{out}(\mathbf{h}^L_i),

    where :math:`\phi_{out}` is a two-layer MLP that outputs the predicted
    positions directly (see :class:`GCL`). Nothing makes the prediction
    rotation- or translation-equivariant; it is permutation-equivariant.

    Args:
        hidden_channels (int, optional): Width of every layer.
            (default: :obj:`64`)
        num_layers (int, optional): Number of layers. (default: :obj:`4`)
        act (torch.nn.Module, optional): The non-linearity. (default:
            :class:`torch.nn.SiLU`)

    Shapes:
        - **input:** positions :math:`(|\mathcal{V}|, 3)`, velocities
          :math:`(|\mathcal{V}|, 3)`, charges :math:`(|\mathcal{V}|, 1)`,
          edge indices :math:`(2, |\mathcal{E}|)`
        - **output:** predicted positions :math:`(|\mathcal{V}|, 3)`
    """
    def __init__(self, hidden_channels: int = 64, num_layers: int = 4,
                 act: Callable = torch.nn.SiLU()):
        super().__init__(hidden_channels, num_layers)
        self.embedding = Linear(6, hidden_channels)
        self.convs = ModuleList([GCL(hidden_channels, edge_dim=1, act=act)
                                 for _ in range(num_layers)])
        self.decoder = Sequential(Linear(hidden_channels, hidden_channels),
                                  act, Linear(hidden_channels, 3))

    def forward(self, pos: Tensor, vel: Tensor, charge: Tensor,
                edge_index: Tensor) -> Tensor:
        r"""Predicts the future positions; see
        :meth:`EGNNDynamicsPredictor.forward` for the arguments."""
        h = self.embedding(torch.cat([pos, vel], dim=-1))
        source, target = edge_index
        edge_attr = charge[target] * charge[source]
        for conv in self.convs:
            h = conv(h, edge_index, edge_attr)
        return self.decoder(h)

