r"""Divergence (Jacobian trace) of a vector field on batched graphs, exact or
by Hutchinson's estimator, for the instantaneous change of variables

.. math::
    \frac{\partial \log p(\mathbf{z}(t))}{\partial t} =
    -\operatorname{tr}\left(\frac{\partial f}{\partial \mathbf{z}(t)}\right).

The Jacobian of a batch of graphs is block diagonal (graphs do not interact),
which both estimators use to return one trace per graph.
"""
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from torch_enf.utils import graph_sizes, scatter_sum


def exact_divergence(outputs: Sequence[Tensor], inputs: Sequence[Tensor],
                     batch: Tensor, num_graphs: int,
                     create_graph: bool = False,
                     basis: Optional[Tensor] = None) -> Tensor:
    r"""The exact trace of the Jacobian of node-wise :obj:`outputs` with
    respect to node-wise :obj:`inputs`, per graph.

    Stacking the per-node widths of the inputs gives a state of :math:`D`
    channels per node. Basis vector :math:`(a, c)` holds a one at channel
    :math:`c` of the :math:`a`-th node of *every* graph; since graphs do not
    interact, one vector-Jacobian product with it returns the diagonal
    entries :math:`\partial f_{a,c} / \partial z_{a,c}` of all graphs at once,
    so :math:`D \cdot \max_g M_g` products give every trace: the cost grows
    with the largest graph, not with the batch. The products are taken one
    after the other through the same graph, not in one vectorised
    (:obj:`is_grads_batched`) pass over all probes, whose per-probe copies
    of every intermediate no longer fit in the CPU caches once the batch has
    a few thousand nodes (the exact LJ13 test NLL got 2.8x faster; see
    :doc:`/benchmarks`).

    Args:
        outputs (list of torch.Tensor): Node-wise outputs, each
            :obj:`[N, D_k]`.
        inputs (list of torch.Tensor): Node-wise inputs of the same widths,
            each :obj:`[N, D_k]`, that :obj:`outputs` were computed from.
        batch (torch.Tensor): Sorted graph assignment of shape :obj:`[N]`.
        num_graphs (int): The number of graphs.
        create_graph (bool, optional): Keep the graph of the result for
            higher-order derivatives. (default: :obj:`False`)
        basis (torch.Tensor, optional): The probes of
            :func:`diagonal_basis`, if already built for this batch (an ODE
            solve reuses them at every evaluation). (default: :obj:`None`)

    Returns:
        torch.Tensor: The trace of every graph, shape :obj:`[num_graphs]`.
    """
    widths = [x.size(-1) for x in inputs]
    if basis is None:
        basis = diagonal_basis(batch, num_graphs, sum(widths), inputs[0])
    diag = inputs[0].new_zeros(batch.numel())
    for k, probe in enumerate(basis):
        probes = torch.split(probe, widths, dim=-1)
        grads = torch.autograd.grad(
            list(outputs), list(inputs), probes, create_graph=create_graph,
            retain_graph=create_graph or k < basis.size(0) - 1)
        diag = diag + sum((g * e).sum(dim=-1) for g, e in zip(grads, probes))
    return scatter_sum(diag, batch, num_graphs)


def diagonal_basis(batch: Tensor, num_graphs: int, width: int,
                   like: Tensor) -> Tensor:
    r"""The probes of :func:`exact_divergence`, shape
    :obj:`[max_g M_g * width, N, width]` in the dtype of :obj:`like`: probe
    :math:`(a, c)` is one at channel :math:`c` of the :math:`a`-th node of
    every graph."""
    sizes = graph_sizes(batch, num_graphs)
    ptr = torch.cumsum(sizes, 0) - sizes
    local = torch.arange(batch.numel(), device=batch.device) - ptr[batch]
    max_size = int(sizes.max())
    node = torch.arange(max_size, device=batch.device).repeat_interleave(width)
    channel = torch.arange(width, device=batch.device).repeat(max_size)
    basis = (local.view(1, -1, 1) == node.view(-1, 1, 1)) & \
        (torch.arange(width, device=batch.device).view(1, 1, -1)
         == channel.view(-1, 1, 1))
    return basis.to(like.dtype)


def hutchinson_divergence(
    outputs: Sequence[Tensor],
    inputs: Sequence[Tensor],
    noise: Sequence[Tensor],
    batch: Tensor,
    num_graphs: int,
    create_graph: bool = False,
) -> Tuple[Tensor, List[Tensor]]:
    r"""Hutchinson's unbiased estimate of the Jacobian trace per graph,

    .. math::
        \operatorname{tr}(J) = \mathbb{E}_{\boldsymbol{\epsilon}}\left[
        \boldsymbol{\epsilon}^\top J \boldsymbol{\epsilon}\right],
        \qquad \mathbb{E}[\boldsymbol{\epsilon}\boldsymbol{\epsilon}^\top]
        = I,

    from one vector-Jacobian product with the probe :obj:`noise`.

    Returns:
        :obj:`(trace, vjp)`: the estimate of shape :obj:`[num_graphs]` and the
        products :math:`\boldsymbol{\epsilon}^\top J` (one per input), which
        also give the Jacobian Frobenius regulariser.
    """
    vjp = torch.autograd.grad(list(outputs), list(inputs), list(noise),
                              create_graph=create_graph)
    per_node = sum((g * e).sum(dim=-1) for g, e in zip(vjp, noise))
    return scatter_sum(per_node, batch, num_graphs), list(vjp)


def sample_probe(like: Tensor, kind: str) -> Tensor:
    r"""A Hutchinson probe shaped like :obj:`like`: Rademacher
    (:obj:`"rademacher"`) or standard Gaussian (:obj:`"gaussian"`)
    entries."""
    if kind == 'rademacher':
        return torch.randint_like(like, 0, 2).mul_(2).sub_(1)
    if kind == 'gaussian':
        return torch.randn_like(like)
    raise ValueError(f"Unknown Hutchinson noise '{kind}' (expected "
                     f"'rademacher' or 'gaussian')")
