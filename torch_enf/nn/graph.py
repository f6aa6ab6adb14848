r"""Graph construction on batched point clouds, in plain PyTorch.

Both functions work on PyG's flat batch layout (nodes of all graphs stacked,
a sorted assignment vector :obj:`batch`), so the cost follows the real
number of nodes and edges: no graph is padded to the size of the largest.
"""
from typing import Optional

import torch
from torch import Tensor

from torch_enf.utils import check_batch_vector, default_batch, graph_sizes

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
    if not r > 0:
        raise ValueError(f"The radius 'r' must be positive (got {r})")
    if max_num_neighbors is not None and max_num_neighbors < 1:
        raise ValueError(f"'max_num_neighbors' must be at least 1 "
                         f"(got {max_num_neighbors})")
    if batch is None:
        batch = default_batch(pos.size(0), pos.device)
    check_batch_vector(batch, pos.size(0))

    if torch_cluster is not None:
        edge_index = _radius_graph_cluster(pos, r, batch)
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
