r"""Equivariant optimal-transport alignment of base samples to data, for
flow matching (Klein, Krämer and Noé, `"Equivariant flow matching"
<https://arxiv.org/abs/2306.15030>`_, NeurIPS 2023).

For a graph with centred data :math:`\mathbf{x}` (and features
:math:`\mathbf{h}`) and a base sample :math:`\mathbf{z}` (features
:math:`\mathbf{z}_h`), the transport cost

.. math::
    c(\mathbf{x}, \mathbf{z}) = \sum_i \|\mathbf{x}_i - \mathbf{z}_i\|^2 +
    \|\mathbf{h}_i - \mathbf{z}_{h,i}\|^2

is lowered by the symmetries of the base distribution: a node permutation
:math:`\pi` of the base sample (only among nodes of the same type) and an
orthogonal map :math:`R \in O(n)` of its positions. Both keep the base
distribution and are found alternately, the permutation by the Hungarian
algorithm and the orthogonal map by the Kabsch (Procrustes) solution; no
step increases the cost. The graphs of a batch are handled in one padded,
vectorised pass, except for the Hungarian solve of each graph.
"""
import itertools
from typing import Optional, Tuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torch_geometric.utils import to_dense_batch

from torch_enf.utils import graph_sizes, scatter_sum


def transport_cost(x: Tensor, z: Tensor, batch: Tensor, num_graphs: int,
                   h: Optional[Tensor] = None,
                   z_h: Optional[Tensor] = None) -> Tensor:
    r"""The squared distance :math:`c(\mathbf{x}, \mathbf{z})` of every
    graph, :obj:`[num_graphs]`."""
    per_node = (x - z).pow(2).sum(-1)
    if h is not None and h.size(-1) > 0:
        per_node = per_node + (h - z_h).pow(2).sum(-1)
    return scatter_sum(per_node, batch, num_graphs)


def kabsch(x: Tensor, z: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
    r"""The orthogonal map of every graph that brings :math:`\mathbf{z}`
    closest to :math:`\mathbf{x}`,

    .. math::
        R_g = \arg\min_{R \in O(n)} \sum_{i \in g}
        \|\mathbf{x}_i - R \mathbf{z}_i\|^2 = V U^\top, \qquad
        \sum_{i \in g} \mathbf{z}_i \mathbf{x}_i^\top = U S V^\top,

    reflections included (the flows are E(n)-equivariant). Positions are
    taken as centred.

    Returns:
        torch.Tensor: Shape :obj:`[num_graphs, n, n]`.
    """
    outer = z.unsqueeze(-1) * x.unsqueeze(-2)
    cross = scatter_sum(outer, batch, num_graphs)
    u, _, vh = torch.linalg.svd(cross)
    return vh.transpose(-1, -2) @ u.transpose(-1, -2)


def rotate(z: Tensor, rotation: Tensor, batch: Tensor) -> Tensor:
    r"""Applies the per-graph maps :obj:`rotation` :obj:`[G, n, n]` to the
    rows of :obj:`z`."""
    return (rotation.index_select(0, batch) @ z.unsqueeze(-1)).squeeze(-1)


BRUTE_FORCE_MAX_NODES = 5
r"""Graphs up to this size are matched by trying all permutations at once
(vectorised over the graphs), larger ones by the Hungarian algorithm."""


def optimal_permutation(x: Tensor, z: Tensor, batch: Tensor, num_graphs: int,
                        h: Optional[Tensor] = None,
                        z_h: Optional[Tensor] = None,
                        node_type: Optional[Tensor] = None) -> Tensor:
    r"""The node permutation of the base sample, within every graph, that
    minimises :func:`transport_cost`: node :obj:`i` of the data is paired
    with node :obj:`perm[i]` of the base sample. With :obj:`node_type`,
    nodes are only paired with base nodes at positions of the same type
    (the base sample's nodes take the types of the data's nodes they stand
    at), so every type keeps its count.

    Graphs of up to :obj:`BRUTE_FORCE_MAX_NODES` nodes are solved by
    enumerating all permutations for all such graphs at once; larger graphs
    by :func:`scipy.optimize.linear_sum_assignment`, one graph at a time.

    Returns:
        torch.Tensor: Global node indices :obj:`[N]`.
    """
    x_data = x if h is None else torch.cat([x, h], dim=-1)
    z_data = z if z_h is None else torch.cat([z, z_h], dim=-1)
    dense_x, _ = to_dense_batch(x_data, batch, batch_size=num_graphs)
    dense_z, _ = to_dense_batch(z_data, batch, batch_size=num_graphs)
    cost = torch.cdist(dense_x.double(), dense_z.double()).pow(2)
    if node_type is not None:
        dense_type, _ = to_dense_batch(node_type, batch, fill_value=-1,
                                       batch_size=num_graphs)
        mismatch = dense_type.unsqueeze(-1) != dense_type.unsqueeze(-2)
        cost = cost.masked_fill(mismatch, float('inf'))
    sizes = graph_sizes(batch, num_graphs)
    ptr = torch.cumsum(sizes, 0) - sizes
    perm = torch.empty_like(batch)
    for size in torch.unique(sizes).tolist():
        graphs = torch.nonzero(sizes == size).view(-1)
        block = cost[graphs, :size, :size]
        if size <= BRUTE_FORCE_MAX_NODES:
            cols = _brute_force_assignment(block)
        else:
            cols = _hungarian_assignment(block)
        nodes = ptr[graphs].unsqueeze(-1) + torch.arange(size,
                                                         device=x.device)
        perm[nodes.view(-1)] = (ptr[graphs].unsqueeze(-1) +
                                cols.to(x.device)).view(-1)
    return perm


def _brute_force_assignment(cost: Tensor) -> Tensor:
    r"""Optimal columns :obj:`[G, M]` of :obj:`G` square cost matrices by
    trying all :math:`M!` permutations."""
    size = cost.size(-1)
    perms = torch.tensor(list(itertools.permutations(range(size))),
                         device=cost.device)
    rows = torch.arange(size, device=cost.device)
    totals = cost[:, rows, perms].sum(-1)  # [G, M!]
    return perms[totals.argmin(dim=-1)]


def _hungarian_assignment(cost: Tensor) -> Tensor:
    r"""Optimal columns :obj:`[G, M]` by the Hungarian algorithm, one
    matrix at a time."""
    matrices = cost.cpu().numpy()
    cols = np.empty(matrices.shape[:2], dtype=np.int64)
    for g, matrix in enumerate(matrices):
        _, cols[g] = linear_sum_assignment(matrix)
    return torch.from_numpy(cols)


def align_base_samples(x: Tensor, z: Tensor, batch: Tensor, num_graphs: int,
                       h: Optional[Tensor] = None,
                       z_h: Optional[Tensor] = None,
                       node_type: Optional[Tensor] = None,
                       iterations: int = 3) -> Tuple[Tensor, Tensor]:
    r"""Alternates :func:`optimal_permutation` and :func:`kabsch` on the
    base sample, starting with the permutation, for at most
    :obj:`iterations` rounds (fewer once the permutation no longer
    changes). The result is a base sample of the same distribution whose
    cost to the data is never higher than before.

    Args:
        x (torch.Tensor): Centred data positions :obj:`[N, n]`.
        z (torch.Tensor): Centred base positions :obj:`[N, n]`.
        batch (torch.Tensor): Sorted graph assignment :obj:`[N]`.
        num_graphs (int): The number of graphs.
        h (torch.Tensor, optional): Data features :obj:`[N, F]`.
        z_h (torch.Tensor, optional): Base features :obj:`[N, F]`, permuted
            with their nodes.
        node_type (torch.Tensor, optional): Types of the data's nodes
            :obj:`[N]`; see :func:`optimal_permutation`.
        iterations (int, optional): Rounds of permutation and rotation.
            (default: :obj:`3`)

    Returns:
        :obj:`(z, z_h)`, aligned (:obj:`z_h` is :obj:`None` if not given).
    """
    if iterations < 1:
        raise ValueError(f"'iterations' must be at least 1 (got "
                         f"{iterations})")
    identity = torch.arange(x.size(0), device=x.device)
    for _ in range(iterations):
        perm = optimal_permutation(x, z, batch, num_graphs, h, z_h,
                                   node_type)
        z = z.index_select(0, perm)
        z_h = None if z_h is None else z_h.index_select(0, perm)
        z = rotate(z, kabsch(x, z, batch, num_graphs), batch)
        if torch.equal(perm, identity):
            break
    return z, z_h


def match_graphs(x: Tensor, z: Tensor, batch: Tensor, num_graphs: int,
                 z_h: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    r"""Minibatch optimal transport between graphs: the base samples of
    graphs of equal size are reassigned among them by the Hungarian
    algorithm on the cost

    .. math::
        \sum_{k} \left(r^{\mathbf{x}}_{(k)} - r^{\mathbf{z}}_{(k)}\right)^2,

    where :math:`r_{(k)}` are the sorted node distances from the centre of
    mass. It is invariant to rotations, reflections and permutations, and a
    lower bound of the cost after any alignment
    (:math:`\|\mathbf{x}_i - R\mathbf{z}_{\pi(i)}\| \geq |r^{\mathbf{x}}_i
    - r^{\mathbf{z}}_{\pi(i)}|`, and sorted radii pair best), so it is a
    cheap stand-in for the aligned cost of every pair.

    Returns:
        :obj:`(z, z_h)` with the nodes of whole graphs exchanged.
    """
    sizes = graph_sizes(batch, num_graphs)
    ptr = torch.cumsum(sizes, 0) - sizes
    source = torch.arange(x.size(0), device=x.device)
    radius_x, radius_z = x.norm(dim=-1), z.norm(dim=-1)
    for size in torch.unique(sizes).tolist():
        graphs = torch.nonzero(sizes == size).view(-1)
        if graphs.numel() < 2:
            continue
        nodes = ptr[graphs].unsqueeze(-1) + torch.arange(size,
                                                         device=x.device)
        sorted_x = radius_x[nodes].sort(dim=-1).values.double()
        sorted_z = radius_z[nodes].sort(dim=-1).values.double()
        cost = torch.cdist(sorted_x, sorted_z).pow(2).cpu().numpy()
        _, cols = linear_sum_assignment(cost)
        cols = torch.from_numpy(cols).to(x.device)
        source[nodes.view(-1)] = nodes[cols].view(-1)
    z = z.index_select(0, source)
    return z, None if z_h is None else z_h.index_select(0, source)
