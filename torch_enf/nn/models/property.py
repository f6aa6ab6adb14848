r"""Molecular property regression: the QM9 model of the EGNN paper and
PyG's SchNet and DimeNet++ on the package's own graph builders (no
:obj:`torch_cluster`, no :obj:`torch_sparse`)."""
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor
from torch.nn import Linear, ModuleList, Sequential
from torch_geometric.nn.models import DimeNetPlusPlus

from torch_enf.nn.egcl import EGCL
from torch_enf.nn.graph import full_edge_index, radius_graph
from torch_enf.nn.radial import RadialBasis
from torch_enf.utils import (check_num_radial, check_positive_number,
                             default_batch, num_graphs_of, scatter_sum)

READOUTS = ('graph', 'atom')


class EGNNRegressor(torch.nn.Module):
    r"""The invariant QM9 property model of the `"E(n) Equivariant Graph
    Neural Networks" <https://arxiv.org/abs/2102.09844>`_ paper (Section
    5.3): a linear embedding, :obj:`num_layers`
    :class:`~torch_enf.nn.EGCL` layers with edge inference on the fully
    connected graph of every molecule, a node decoder, sum pooling and a
    graph decoder,

    .. math::
        \mathbf{h}^{0}_i &= \mathbf{W}_{in} \mathbf{x}_i, \qquad
        \mathbf{h}^{l+1} = \mathrm{EGCL}_l(\mathbf{h}^{l},
        \mathbf{p})_{\mathbf{h}},

        y_g &= \phi_{g}\Big(\sum_{i \in g} \phi_{n}(\mathbf{h}^{L}_i)\Big),

    with two-layer MLPs :math:`\phi_n` and :math:`\phi_g`. With
    :obj:`readout="atom"` (not in the paper) the sum moves to the end,
    :math:`y_g = \sum_{i \in g} \phi_g(\phi_n(\mathbf{h}^{L}_i))`, with the
    same parameters: every atom contributes its own share of the property,
    as in SchNet's readout (on QM9's polarizability, an extensive property,
    it trained slower than the paper's readout in a one-hour run). The
    positions
    :math:`\mathbf{p}` are never updated (as in the official code, which
    drops the coordinate update for QM9): the layers are built with
    :obj:`update_pos=False`, without the coordinate network :math:`\phi_x`.
    The output is E(3)-invariant and invariant to node
    permutations within each molecule.

    With :obj:`num_radial` :math:`= K > 0` (not in the paper) every layer
    also sees :math:`K` Gaussians of the distance on :math:`[0, r_c]` as
    edge attributes (:class:`~torch_enf.nn.RadialBasis`), the distance
    features of SchNet (50 Gaussians on :math:`[0, 10]` Angstrom there).
    The paper's layers see only :math:`d_{ij}^2`, from which an MLP
    resolves fine differences of distance slowly.

    Args:
        in_channels (int, optional): Size of the node features
            (:func:`~torch_enf.datasets.qm9_properties.node_features`).
            (default: :obj:`15`)
        hidden_channels (int, optional): Width of every layer.
            (default: :obj:`128`)
        num_layers (int, optional): Number of :class:`EGCL` layers.
            (default: :obj:`7`)
        out_channels (int, optional): Number of predicted values per
            molecule. (default: :obj:`1`)
        edge_inference (bool, optional): Gate the messages by inferred
            soft edges. (default: :obj:`True`)
        act (torch.nn.Module, optional): The non-linearity. (default:
            :class:`torch.nn.SiLU`)
        num_radial (int, optional): The number :math:`K` of Gaussian
            distance features per edge. (default: :obj:`0`: only
            :math:`d_{ij}^2`, as in the paper)
        radial_cutoff (float, optional): The last centre :math:`r_c`, in
            the units of the positions. (default: :obj:`10.0`)
        readout (str, optional): :obj:`"graph"` decodes the sum of the
            atoms' features, :obj:`"atom"` sums the decoded atoms.
            (default: :obj:`"graph"`, the paper's)

    Shapes:
        - **input:** node features :math:`(|\mathcal{V}|, F_{in})`,
          positions :math:`(|\mathcal{V}|, 3)`, batch vector
          :math:`(|\mathcal{V}|)` *(optional)*
        - **output:** graph predictions :math:`(|\mathcal{G}|, F_{out})`
    """
    def __init__(self, in_channels: int = 15, hidden_channels: int = 128,
                 num_layers: int = 7, out_channels: int = 1,
                 edge_inference: bool = True,
                 act: Callable = torch.nn.SiLU(), num_radial: int = 0,
                 radial_cutoff: float = 10.0,
                 readout: str = 'graph') -> None:
        super().__init__()
        check_num_radial(num_radial)
        check_positive_number(radial_cutoff, 'radial_cutoff')
        if readout not in READOUTS:
            raise ValueError(f"'readout' must be one of {READOUTS} "
                             f"(got {readout!r})")
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.num_layers = num_layers
        self.out_channels = out_channels
        self.num_radial = num_radial
        self.readout = readout
        self.distance_expansion = RadialBasis(
            radial_cutoff, num_radial) if num_radial > 0 else None
        self.embedding = Linear(in_channels, hidden_channels)
        self.layers = ModuleList(
            EGCL(in_channels=hidden_channels, out_channels=hidden_channels,
                 hidden_channels=hidden_channels, edge_dim=num_radial,
                 edge_inference=edge_inference, aggr='add', act=act,
                 update_pos=False)
            for _ in range(num_layers))
        self.node_decoder = Sequential(
            Linear(hidden_channels, hidden_channels), act,
            Linear(hidden_channels, hidden_channels))
        self.graph_decoder = Sequential(
            Linear(hidden_channels, hidden_channels), act,
            Linear(hidden_channels, out_channels))

    def forward(self, x: Tensor, pos: Tensor, batch: Optional[Tensor] = None,
                num_graphs: Optional[int] = None) -> Tensor:
        r"""Predicts the properties of every molecule.

        Args:
            x (torch.Tensor): Node features :obj:`[N, in_channels]`.
            pos (torch.Tensor): Positions :obj:`[N, 3]`.
            batch (torch.Tensor, optional): Sorted molecule of every atom
                :obj:`[N]`. (default: :obj:`None`: one molecule)
            num_graphs (int, optional): The number of molecules.

        Returns:
            torch.Tensor: :obj:`[num_graphs, out_channels]`.
        """
        if batch is None:
            batch = default_batch(x.size(0), x.device)
        num_graphs = num_graphs_of(batch, num_graphs)
        edge_index = full_edge_index(batch, num_graphs)
        edge_attr = None
        if self.distance_expansion is not None:
            source, target = edge_index
            # The positions never move, so the features serve every layer.
            dist2 = (pos.index_select(0, target) -
                     pos.index_select(0, source)).pow(2).sum(-1)
            edge_attr = self.distance_expansion(dist2)
        h = self.embedding(x)
        for layer in self.layers:
            h = layer(h, pos, edge_index, edge_attr)[0]
        h = self.node_decoder(h)
        if self.readout == 'atom':
            return scatter_sum(self.graph_decoder(h), batch, num_graphs)
        return self.graph_decoder(scatter_sum(h, batch, num_graphs))

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.in_channels}, '
                f'{self.out_channels}, hidden_channels='
                f'{self.hidden_channels}, num_layers={self.num_layers}, '
                f'num_radial={self.num_radial}, readout={self.readout!r})')


class RadiusInteractionGraph(torch.nn.Module):
    r"""The interaction graph of PyG's
    :class:`~torch_geometric.nn.models.SchNet` (its
    :obj:`interaction_graph=` argument) built by
    :func:`torch_enf.nn.radius_graph`: all pairs of atoms of a molecule
    within :obj:`cutoff`, and their distances.

    Args:
        cutoff (float, optional): The cutoff distance. (default: :obj:`10.0`)
        max_num_neighbors (int, optional): Keep the nearest this many
            neighbours of every atom. (default: :obj:`None`: all; PyG's
            32 truncates no QM9 molecule, which have at most 29 atoms)

    Shapes:
        - **input:** positions :math:`(|\mathcal{V}|, 3)`, batch vector
          :math:`(|\mathcal{V}|)`
        - **output:** edge indices :math:`(2, |\mathcal{E}|)`, distances
          :math:`(|\mathcal{E}|)`
    """
    def __init__(self, cutoff: float = 10.0,
                 max_num_neighbors: Optional[int] = None) -> None:
        super().__init__()
        self.cutoff = cutoff
        self.max_num_neighbors = max_num_neighbors

    def forward(self, pos: Tensor, batch: Tensor) -> Tuple[Tensor, Tensor]:
        edge_index = radius_graph(pos, self.cutoff, batch,
                                  self.max_num_neighbors)
        source, target = edge_index
        return edge_index, (pos[source] - pos[target]).norm(dim=-1)


def triplets(edge_index: Tensor, num_nodes: int) -> Tuple[Tensor, ...]:
    r"""The triplets :math:`k \to j \to i`, :math:`k \neq i`, of a directed
    graph, in plain PyTorch: for every edge :math:`(j \to i)` all edges
    :math:`(k \to j)`, the result of PyG's
    :func:`torch_geometric.nn.models.dimenet.triplets` (which needs
    :obj:`torch_sparse`), in the same order (by edge :math:`j \to i`, then
    by :math:`k`).

    Args:
        edge_index (torch.Tensor): :obj:`[2, E]`, sources :math:`j` in row
            0 and targets :math:`i` in row 1.
        num_nodes (int): The number of nodes.

    Returns:
        :obj:`(i, j, idx_i, idx_j, idx_k, idx_kj, idx_ji)`: the targets and
        sources of the edges :obj:`[E]`, the three nodes of every triplet
        and the indices of its edges :math:`k \to j` and :math:`j \to i`
        (each :obj:`[T]`).
    """
    source, target = edge_index
    device = source.device
    # Edges grouped by their target node, sorted by source inside a group.
    incoming = torch.argsort(target * num_nodes + source)
    in_degree = torch.bincount(target, minlength=num_nodes)
    first_incoming = torch.cumsum(in_degree, 0) - in_degree
    count = in_degree.index_select(0, source)  # edges k -> j per j -> i
    idx_ji = torch.repeat_interleave(
        torch.arange(source.numel(), device=device), count)
    rank = torch.arange(idx_ji.numel(), device=device) - \
        (torch.cumsum(count, 0) - count).index_select(0, idx_ji)
    idx_kj = incoming[first_incoming.index_select(
        0, source.index_select(0, idx_ji)) + rank]
    idx_i, idx_j = target[idx_ji], source[idx_ji]
    idx_k = source[idx_kj]
    keep = idx_i != idx_k
    return (target, source, idx_i[keep], idx_j[keep], idx_k[keep],
            idx_kj[keep], idx_ji[keep])


class TorchDimeNetPlusPlus(DimeNetPlusPlus):
    r"""PyG's :class:`~torch_geometric.nn.models.DimeNetPlusPlus` without
    its optional extensions: only :meth:`forward` is overridden, so that
    the radius graph comes from :func:`torch_enf.nn.radius_graph` (instead
    of :obj:`torch_cluster`) and the triplets from :func:`triplets`
    (instead of :obj:`torch_sparse`); all blocks, parameters and the
    arithmetic after the graph are PyG's. The graph and triplet builders
    are the attributes :obj:`radius_graph` and :obj:`triplets`.

    Takes the arguments of
    :class:`~torch_geometric.nn.models.DimeNetPlusPlus`.

    Shapes:
        - **input:** atomic numbers :math:`(|\mathcal{V}|)`, positions
          :math:`(|\mathcal{V}|, 3)`, batch vector :math:`(|\mathcal{V}|)`
          *(optional)*
        - **output:** graph predictions :math:`(|\mathcal{G}|, F_{out})`
    """
    radius_graph = staticmethod(radius_graph)
    triplets = staticmethod(triplets)

    def forward(self, z: Tensor, pos: Tensor,
                batch: Optional[Tensor] = None) -> Tensor:
        if batch is None:
            batch = default_batch(z.size(0), z.device)
        edge_index = self.radius_graph(pos, self.cutoff, batch,
                                       self.max_num_neighbors)
        i, j, idx_i, idx_j, idx_k, idx_kj, idx_ji = self.triplets(
            edge_index, z.size(0))
        dist = (pos[i] - pos[j]).pow(2).sum(dim=-1).sqrt()
        # DimeNet++'s angle between the edges j -> i and k -> j.
        pos_jk, pos_ij = pos[idx_j] - pos[idx_k], pos[idx_i] - pos[idx_j]
        a = (pos_ij * pos_jk).sum(dim=-1)
        b = torch.cross(pos_ij, pos_jk, dim=1).norm(dim=-1)
        angle = torch.atan2(b, a)

        rbf = self.rbf(dist)
        sbf = self.sbf(dist, angle, idx_kj)
        x = self.emb(z, rbf, i, j)
        out = self.output_blocks[0](x, rbf, i, num_nodes=pos.size(0))
        for interaction_block, output_block in zip(self.interaction_blocks,
                                                   self.output_blocks[1:]):
            x = interaction_block(x, rbf, sbf, idx_kj, idx_ji)
            out = out + output_block(x, rbf, i, num_nodes=pos.size(0))
        return scatter_sum(out, batch, num_graphs_of(batch))
