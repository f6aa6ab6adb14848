r"""Base distributions of the E(n)-equivariant flows, evaluated per graph on
PyG's flat batch layout."""
import math
from typing import Optional

import torch
from torch import Tensor

from torch_enf.utils import center_pos, graph_sizes, scatter_sum


def gaussian_log_prob(sq_norm: Tensor, dim: Tensor,
                      std: float = 1.0) -> Tensor:
    r"""The log-density of an isotropic Gaussian of standard deviation
    :math:`\sigma` in :math:`D` dimensions at points of squared norm
    :math:`\|\mathbf{x}\|^2`,

    .. math::
        \log p_\sigma(\mathbf{x}) = -\frac{\|\mathbf{x}\|^2}{2\sigma^2}
        - D \log \sigma - \frac{D}{2} \log(2\pi).

    Args:
        sq_norm (torch.Tensor): :math:`\|\mathbf{x}\|^2` per graph.
        dim (torch.Tensor): :math:`D` per graph.
        std (float, optional): :math:`\sigma > 0`. (default: :obj:`1.0`)
    """
    dim = dim.to(sq_norm.dtype)
    return -0.5 * sq_norm / std**2 - dim * (math.log(std) +
                                            0.5 * math.log(2 * math.pi))


class CenteredGaussian(torch.nn.Module):
    r"""The isotropic standard Gaussian on the zero-centre-of-mass subspace
    of the positions of every graph,

    .. math::
        \log p(\mathbf{x}) = -\frac{1}{2} \sum_{i=1}^{M} \|\mathbf{x}_i\|^2
        - \frac{(M - 1)\, n}{2} \log(2\pi),
        \qquad \sum_{i=1}^{M} \mathbf{x}_i = \mathbf{0},

    a density on the :math:`(M-1) n`-dimensional subspace (the centre of mass
    carries no probability mass). It is invariant to rotations, reflections
    and permutations, and samples are drawn by projecting a standard
    Gaussian in :math:`\mathbb{R}^{M \times n}` onto the subspace.

    Args:
        n_dims (int): The dimension :math:`n` of the positions.
    """
    def __init__(self, n_dims: int):
        super().__init__()
        self.n_dims = n_dims

    def log_prob(self, pos: Tensor, batch: Tensor,
                 num_graphs: Optional[int] = None,
                 std: float = 1.0) -> Tensor:
        r"""Log-density of centred positions :obj:`pos` of shape
        :obj:`[N, n]`, one value per graph, shape :obj:`[num_graphs]`.
        With :obj:`std` :math:`= \sigma`, the density of the same Gaussian
        scaled by :math:`\sigma` (see :func:`gaussian_log_prob`).

        Raises:
            ValueError: If a graph is not centred or has fewer than two
                nodes.
        """
        sizes = graph_sizes(batch, num_graphs)
        if bool((sizes < 2).any()):
            raise ValueError("The centred Gaussian is undefined for graphs "
                             "with fewer than 2 nodes")
        mean = scatter_sum(pos, batch, sizes.numel()) / sizes.unsqueeze(-1)
        scale = pos.detach().abs().max().clamp(min=1.0)
        if bool((mean.detach().abs() > 1e-4 * scale).any()):
            raise ValueError("'pos' must be centred per graph (zero centre of "
                             "mass) for the centred Gaussian")
        sq_norm = scatter_sum(pos.pow(2).sum(dim=-1), batch, sizes.numel())
        return gaussian_log_prob(sq_norm, (sizes - 1) * self.n_dims, std)

    def sample(self, batch: Tensor, num_graphs: Optional[int] = None,
               generator: Optional[torch.Generator] = None,
               dtype: Optional[torch.dtype] = None) -> Tensor:
        r"""Draws centred positions of shape :obj:`[N, n]` for the graphs
        given by the assignment vector :obj:`batch`."""
        noise = torch.randn(batch.numel(), self.n_dims, generator=generator,
                            device=batch.device, dtype=dtype)
        return center_pos(noise, batch, num_graphs)


class NodeGaussian(torch.nn.Module):
    r"""The standard Gaussian on node features, summed per graph,

    .. math::
        \log p(\mathbf{h}) = -\frac{1}{2} \sum_{i=1}^{M} \|\mathbf{h}_i\|^2
        - \frac{M F}{2} \log(2\pi).

    Args:
        channels (int): The feature width :math:`F`.
    """
    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def log_prob(self, h: Tensor, batch: Tensor,
                 num_graphs: Optional[int] = None,
                 std: float = 1.0) -> Tensor:
        r"""Log-density of features :obj:`h` of shape :obj:`[N, F]`, one value
        per graph, shape :obj:`[num_graphs]`; :obj:`std` as in
        :meth:`CenteredGaussian.log_prob`."""
        sizes = graph_sizes(batch, num_graphs)
        sq_norm = scatter_sum(h.pow(2).sum(dim=-1), batch, sizes.numel())
        return gaussian_log_prob(sq_norm, sizes * self.channels, std)

    def sample(self, batch: Tensor,
               generator: Optional[torch.Generator] = None,
               dtype: Optional[torch.dtype] = None) -> Tensor:
        r"""Draws features of shape :obj:`[N, F]`."""
        return torch.randn(batch.numel(), self.channels, generator=generator,
                           device=batch.device, dtype=dtype)
