r"""Graph construction on batched point clouds, in plain PyTorch.

Both functions work on PyG's flat batch layout (nodes of all graphs stacked,
a sorted assignment vector :obj:`batch`), so the cost follows the real
number of nodes and edges: no graph is padded to the size of the largest.
"""
from typing import Optional

import torch
from torch import Tensor

from torch_enf.utils import (check_batch_vector, check_positive_integer,
                             check_positive_number, default_batch,
                             graph_sizes)

CELL_LIST_MIN_NODES = 128
r"""Without :obj:`torch_cluster`, graphs larger than this are connected
through a cell list (linear cost) rather than by testing all node pairs."""

try:  # pragma: no cover - depends on the optional 'fast' extra
    import torch_cluster
except ImportError:  # pragma: no cover
    torch_cluster = None


def full_edge_index(batch: Tensor, num_graphs: Optional[int] = None) -> Tensor:
    r"""Returns all ordered pairs :math:`(j, i)`, :math:`i \neq j`, of nodes
    inside each graph: :math:`\sum_g M_g (M_g - 1)` edges, none across graphs.

    Edges are sorted by target node :math:`i` (:obj:`edge_index[1]`), then by
    source :math:`j`, in PyG's :obj:`source_to_target` convention.

    Args:
        batch (torch.Tensor): Sorted graph assignment vector of shape
            :obj:`[N]`.
        num_graphs (int, optional): The number of graphs. (default:
            :obj:`None`)

    Returns:
        torch.Tensor: Edge indices of shape :obj:`[2, E]`.
    """
    check_batch_vector(batch, batch.numel())
    sizes = graph_sizes(batch, num_graphs)
    ptr = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)])
    degree = (sizes - 1).clamp(min=0).index_select(0, batch)
    target = torch.repeat_interleave(
        torch.arange(batch.numel(), device=batch.device), degree)
    # Rank of each edge inside the list of its target node: 0 .. M_g - 2.
    first_edge = torch.cumsum(degree, 0) - degree
    rank = torch.arange(target.numel(), device=batch.device) - \
        first_edge.index_select(0, target)
    # Skip the target itself: local source index = rank (+1 past the target).
    local_target = target - ptr.index_select(0, batch.index_select(0, target))
    local_source = rank + (rank >= local_target).long()
    source = ptr.index_select(0, batch.index_select(0, target)) + local_source
    return torch.stack([source, target], dim=0)


def radius_graph(pos: Tensor, r: float, batch: Optional[Tensor] = None,
                 max_num_neighbors: Optional[int] = None) -> Tensor:
    r"""Connects every pair of distinct nodes of the same graph that lie
    within distance :obj:`r`, :math:`\|\mathbf{x}_i - \mathbf{x}_j\| \leq r`.

    Uses :obj:`torch_cluster` when it is installed and a pure PyTorch
    implementation otherwise; both return the same edge set, sorted by target
    then source. With :obj:`max_num_neighbors`, each target node keeps its
    :obj:`max_num_neighbors` nearest sources (ties broken by the lower
    source index).

    Args:
        pos (torch.Tensor): Node positions of shape :obj:`[N, n]`.
        r (float): The cutoff radius.
        batch (torch.Tensor, optional): Sorted graph assignment vector of
            shape :obj:`[N]`. (default: :obj:`None`)
        max_num_neighbors (int, optional): Upper bound on the in-degree of
            every node. (default: :obj:`None`: unbounded)

    Returns:
        torch.Tensor: Edge indices of shape :obj:`[2, E]`.
    """
    if pos.dim() != 2:
        raise ValueError(f"'pos' must have shape [num_nodes, n_dims] "
                         f"(got {list(pos.shape)})")
    check_positive_number(r, 'r')
    if max_num_neighbors is not None:
        check_positive_integer(max_num_neighbors, 'max_num_neighbors')
    if batch is None:
        batch = default_batch(pos.size(0), pos.device)
    check_batch_vector(batch, pos.size(0))

    if torch_cluster is not None:
        edge_index = _radius_graph_cluster(pos, r, batch)
    elif int(graph_sizes(batch).max()) > CELL_LIST_MIN_NODES:
        edge_index = _radius_graph_cells(pos, r, batch)
    else:
        edge_index = _radius_graph_torch(pos, r, batch)
    edge_index = _sort_by_target(edge_index, pos.size(0))
    if max_num_neighbors is not None:
        edge_index = _keep_nearest(edge_index, pos, max_num_neighbors)
    return edge_index


def _radius_graph_torch(pos: Tensor, r: float, batch: Tensor) -> Tensor:
    candidates = full_edge_index(batch)
    dist2 = (pos.index_select(0, candidates[0]) -
             pos.index_select(0, candidates[1])).pow(2).sum(dim=-1)
    return candidates[:, dist2 <= r * r]


def _radius_graph_cells(pos: Tensor, r: float, batch: Tensor) -> Tensor:
    r"""A cell list: nodes are binned into cubes of edge :obj:`r` per graph
    and only pairs in neighbouring cubes are tested, so the cost follows
    the number of edges (linear in the nodes at fixed density) instead of
    the number of node pairs."""
    n_dims = pos.size(-1)
    coords = pos.detach()
    num_graphs = int(batch.max()) + 1
    low = torch.full((num_graphs, n_dims), float('inf'), dtype=coords.dtype,
                     device=coords.device).scatter_reduce(
        0, batch.view(-1, 1).expand(-1, n_dims), coords, 'amin')
    cell = ((coords - low.index_select(0, batch)) / r).floor().long()
    extent = int(cell.max()) + 3  # room for the -1 / +1 neighbours
    cell = cell + 1

    def key(cells: Tensor, graph: Tensor) -> Tensor:
        out = graph.clone()
        for d in range(n_dims):
            out = out * extent + cells[:, d]
        return out

    node_key = key(cell, batch)
    order = torch.argsort(node_key)
    sorted_key = node_key[order]
    offsets = torch.cartesian_prod(*[torch.tensor(
        [-1, 0, 1], device=pos.device)] * n_dims).view(-1, n_dims)
    sources, targets = [], []
    for offset in offsets:
        neighbour = key(cell + offset, batch)
        start = torch.searchsorted(sorted_key, neighbour)
        count = torch.searchsorted(sorted_key, neighbour, right=True) - start
        target = torch.repeat_interleave(
            torch.arange(pos.size(0), device=pos.device), count)
        first = torch.cumsum(count, 0) - count
        rank = torch.arange(target.numel(), device=pos.device) - \
            first.index_select(0, target)
        sources.append(order[start.index_select(0, target) + rank])
        targets.append(target)
    source, target = torch.cat(sources), torch.cat(targets)
    dist2 = (coords.index_select(0, source) -
             coords.index_select(0, target)).pow(2).sum(dim=-1)
    keep = (dist2 <= r * r) & (source != target)
    return torch.stack([source[keep], target[keep]], dim=0)


def _radius_graph_cluster(pos: Tensor, r: float,
                          batch: Tensor) -> Tensor:  # pragma: no cover
    # torch_cluster truncates neighbour lists in an order of its own, so ask
    # for all of them and apply our own (nearest-first) truncation after.
    max_degree = int(torch.bincount(batch).max())
    edge_index = torch_cluster.radius_graph(
        pos.detach(), r, batch, loop=False, max_num_neighbors=max_degree)
    # Enforce the closed ball on both paths, whatever rounding the extension
    # applies at the boundary.
    dist2 = (pos.index_select(0, edge_index[0]) -
             pos.index_select(0, edge_index[1])).pow(2).sum(dim=-1)
    return edge_index[:, dist2 <= r * r]


def _sort_by_target(edge_index: Tensor, num_nodes: int) -> Tensor:
    key = edge_index[1] * num_nodes + edge_index[0]
    return edge_index[:, torch.argsort(key)]


def _keep_nearest(edge_index: Tensor, pos: Tensor, k: int) -> Tensor:
    source, target = edge_index
    dist2 = (pos.index_select(0, source) -
             pos.index_select(0, target)).pow(2).sum(dim=-1).detach()
    # Stable sort by distance, then by target: within each target the nearest
    # come first, ties keep the (source-sorted) input order.
    order = torch.argsort(dist2, stable=True)
    order = order[torch.argsort(target[order], stable=True)]
    target_sorted = target[order]
    degree = torch.bincount(target_sorted, minlength=pos.size(0))
    first = torch.cumsum(degree, 0) - degree
    rank = torch.arange(order.numel(), device=pos.device) - \
        first.index_select(0, target_sorted)
    kept = order[rank < k]
    return _sort_by_target(edge_index[:, kept], pos.size(0))
