r"""Distribution-level comparisons of point clouds: pairwise distances and a
histogram Jensen-Shannon divergence."""
import math
from typing import Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

ArrayLike = Union[Tensor, np.ndarray]


def pairwise_distances(pos: Tensor, batch: Optional[Tensor] = None) -> Tensor:
    r"""Returns the distances :math:`\| \mathbf{x}_i - \mathbf{x}_j \|` of all
    unordered node pairs :math:`i < j` that belong to the same graph.

    Graphs may have different numbers of nodes; no padding is used.
    Distances are ordered by graph, then by :math:`i`, then by :math:`j`
    (with nodes first sorted stably by :obj:`batch`).

    Args:
        pos (torch.Tensor): Node positions of shape :obj:`[num_nodes, n_dims]`.
        batch (torch.Tensor, optional): Graph assignment vector of shape
            :obj:`[num_nodes]`. If :obj:`None`, all nodes form one graph.
            (default: :obj:`None`)

    Returns:
        torch.Tensor: 1-D tensor with
        :math:`\sum_g N_g (N_g - 1) / 2` distances.
    """
    if pos.dim() != 2:
        raise ValueError(f"'pos' must have shape [num_nodes, n_dims] "
                         f"(got {tuple(pos.shape)})")
    if batch is None:
        batch = pos.new_zeros(pos.size(0), dtype=torch.long)
    if batch.shape != pos.shape[:1]:
        raise ValueError(f"'batch' must have shape [{pos.size(0)}] "
                         f"(got {tuple(batch.shape)})")
    if batch.numel() > 1 and bool((batch[1:] < batch[:-1]).any()):
        order = torch.sort(batch, stable=True).indices
        pos, batch = pos[order], batch[order]

    counts = torch.bincount(batch)
    graph_start = torch.cumsum(counts, dim=0) - counts
    node = torch.arange(pos.size(0), device=pos.device)
    # Node i pairs with every later node of its graph:
    partners_per_node = graph_start[batch] + counts[batch] - node - 1
    row = node.repeat_interleave(partners_per_node)
    first_pair_of_node = torch.cumsum(partners_per_node, 0) - partners_per_node
    rank = torch.arange(row.numel(), device=pos.device)
    col = row + 1 + rank - first_pair_of_node.repeat_interleave(
        partners_per_node)
    return (pos[row] - pos[col]).norm(dim=-1)


def _as_finite_1d(samples: ArrayLike, name: str) -> Tensor:
    samples = torch.as_tensor(samples).detach().reshape(-1).double()
    if samples.numel() == 0:
        raise ValueError(f"'{name}' is empty")
    if not bool(torch.isfinite(samples).all()):
        num_bad = int((~torch.isfinite(samples)).sum())
        raise ValueError(f"'{name}' contains {num_bad} non-finite values")
    return samples


def _normalised_histogram(samples: Tensor, bins: int, lo: float,
                          hi: float) -> Tensor:
    inside = samples[(samples >= lo) & (samples <= hi)]
    counts = torch.histc(inside, bins=bins, min=lo, max=hi)
    underflow = (samples < lo).sum().to(counts.dtype)
    overflow = (samples > hi).sum().to(counts.dtype)
    counts = torch.cat([underflow.view(1), counts, overflow.view(1)])
    return counts / samples.numel()


def histogram_js_divergence(
    samples_a: ArrayLike,
    samples_b: ArrayLike,
    bins: int = 100,
    range: Optional[Tuple[float, float]] = None,
) -> float:
    r"""Jensen-Shannon divergence between the normalised histograms
    :math:`P` and :math:`Q` of two 1-D sample sets over the same bins:

    .. math::
        \mathrm{JS}(P, Q) = \frac{1}{2} \mathrm{KL}(P \,\|\, M) +
        \frac{1}{2} \mathrm{KL}(Q \,\|\, M), \qquad
        M = \frac{1}{2}(P + Q), \qquad
        \mathrm{KL}(P \,\|\, M) = \sum_k p_k \ln \frac{p_k}{m_k},

    with the natural logarithm, so that
    :math:`0 \le \mathrm{JS} \le \ln 2`. Empty bins contribute zero
    (:math:`0 \ln 0 = 0`). Samples outside :obj:`range` are not dropped:
    they are counted in an extra underflow and an extra overflow bin, so both
    histograms always carry all of their mass.

    Args:
        samples_a (torch.Tensor or numpy.ndarray): First samples (flattened).
        samples_b (torch.Tensor or numpy.ndarray): Second samples (flattened).
        bins (int, optional): Number of equal-width bins in :obj:`range`.
            (default: :obj:`100`)
        range ((float, float), optional): Lower and upper bin edge. If
            :obj:`None`, the joint minimum and maximum of both sample sets.
            (default: :obj:`None`)

    Returns:
        float: The divergence in nats.
    """
    a = _as_finite_1d(samples_a, 'samples_a')
    b = _as_finite_1d(samples_b, 'samples_b').to(a.device)
    if bins < 1:
        raise ValueError(f"'bins' must be positive (got {bins})")
    if range is None:
        lo = float(min(a.min(), b.min()))
        hi = float(max(a.max(), b.max()))
        if lo == hi:  # All samples identical: a single degenerate bin.
            lo, hi = lo - 0.5, hi + 0.5
    else:
        lo, hi = float(range[0]), float(range[1])
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"'range' must be finite with lo < hi "
                             f"(got {range})")
    p = _normalised_histogram(a, bins, lo, hi)
    q = _normalised_histogram(b, bins, lo, hi)
    m = 0.5 * (p + q)
    kl_pm = torch.xlogy(p, p).sum() - torch.xlogy(p, m).sum()
    kl_qm = torch.xlogy(q, q).sum() - torch.xlogy(q, m).sum()
    return max(float(0.5 * (kl_pm + kl_qm)), 0.0)
