r"""An activation-normalisation style affine layer for positions and node
features that keeps the E(n) symmetry of the flow."""
from typing import Optional, Tuple

import torch
from torch import Tensor

from torch_enf.utils import (center_pos, check_batch_vector, default_batch,
                             graph_sizes, num_graphs_of)


class ActNorm(torch.nn.Module):
    r"""Scales centred positions by one scalar and node features by one
    affine map per channel,

    .. math::
        \mathbf{x}' = e^{s_x} \mathbf{x}, \qquad
        \mathbf{h}'_i = e^{\mathbf{s}_h} \odot \mathbf{h}_i + \mathbf{b}_h,

    with, per graph of :math:`M` nodes,

    .. math::
        \log \left|\det \frac{\partial(\mathbf{x}', \mathbf{h}')}
        {\partial(\mathbf{x}, \mathbf{h})}\right| =
        (M - 1)\, n\, s_x + M \sum_{c=1}^{F} s_{h,c}.

    The positions count :math:`(M-1) n` dimensions, not :math:`M n`: the
    density of the flow lives on the zero-centre-of-mass subspace, which the
    scaling maps onto itself. A single position scale keeps rotation
    equivariance, and no position shift keeps the centring.

    The parameters start at the identity; :meth:`initialize` sets them from
    data so that the positions have unit mean squared coordinate on the
    subspace and every feature channel zero mean and unit variance.

    Args:
        n_dims (int): The dimension :math:`n` of the positions.
        node_channels (int, optional): The feature width :math:`F`.
            (default: :obj:`0`)
        learnable (bool, optional): Train the parameters with the flow;
            otherwise they stay at their initial (or data-initialised)
            values. (default: :obj:`True`)
    """
    def __init__(self, n_dims: int, node_channels: int = 0,
                 learnable: bool = True):
        super().__init__()
        self.n_dims = n_dims
        self.node_channels = node_channels
        self.learnable = learnable
        self.pos_log_scale = torch.nn.Parameter(torch.zeros(()),
                                                requires_grad=learnable)
        self.h_log_scale = torch.nn.Parameter(torch.zeros(node_channels),
                                              requires_grad=learnable)
        self.h_shift = torch.nn.Parameter(torch.zeros(node_channels),
                                          requires_grad=learnable)

    def reset_parameters(self):
        r"""Resets the layer to the identity."""
        for param in (self.pos_log_scale, self.h_log_scale, self.h_shift):
            torch.nn.init.zeros_(param)

    @torch.no_grad()
    def initialize(self, pos: Tensor, h: Optional[Tensor] = None,
                   batch: Optional[Tensor] = None, eps: float = 1e-6
                   ) -> None:
        r"""Sets the parameters from data so that the output has unit
        position scale and standardised features (see the class
        description). Call it with the same data on every process when
        training in parallel."""
        pos, h, batch, num_graphs = self._check(pos, h, batch)
        sizes = graph_sizes(batch, num_graphs)
        dims = float((sizes - 1).sum()) * self.n_dims
        sq_norm = center_pos(pos, batch, num_graphs).pow(2).sum()
        self.pos_log_scale.fill_(-0.5 * float(torch.log(sq_norm / dims +
                                                        eps)))
        if self.node_channels > 0:
            std = h.std(dim=0, unbiased=False) + eps
            self.h_log_scale.copy_(-std.log())
            self.h_shift.copy_(-h.mean(dim=0) / std)

    def forward(self, pos: Tensor, h: Optional[Tensor] = None,
                batch: Optional[Tensor] = None
                ) -> Tuple[Tensor, Tensor, Tensor]:
        r"""Applies the layer.

        Args:
            pos (torch.Tensor): Centred positions of shape :obj:`[N, n]`.
            h (torch.Tensor, optional): Features of shape :obj:`[N, F]`.
            batch (torch.Tensor, optional): Graph assignment :obj:`[N]`.

        Returns:
            :obj:`(pos_out, h_out, log_det)`, the last of shape
            :obj:`[num_graphs]`.
        """
        pos, h, batch, num_graphs = self._check(pos, h, batch)
        sizes = graph_sizes(batch, num_graphs).to(pos.dtype)
        log_det = (sizes - 1) * self.n_dims * self.pos_log_scale + \
            sizes * self.h_log_scale.sum()
        return (pos * self.pos_log_scale.exp(),
                h * self.h_log_scale.exp() + self.h_shift, log_det)

    def inverse(self, pos: Tensor, h: Optional[Tensor] = None
                ) -> Tuple[Tensor, Tensor]:
        r"""The inverse map, :obj:`(pos, h)` from :obj:`(pos_out, h_out)`."""
        pos, h, _, _ = self._check(pos, h, None)
        return (pos * (-self.pos_log_scale).exp(),
                (h - self.h_shift) * (-self.h_log_scale).exp())

    def _check(self, pos: Tensor, h: Optional[Tensor],
               batch: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor, int]:
        if pos.dim() != 2 or pos.size(-1) != self.n_dims:
            raise ValueError(f"'pos' must have shape [num_nodes, "
                             f"{self.n_dims}] (got {list(pos.shape)})")
        if h is None:
            h = pos.new_zeros(pos.size(0), 0)
        if h.dim() != 2 or h.size(0) != pos.size(0) or \
                h.size(1) != self.node_channels:
            raise ValueError(f"'h' must have shape [{pos.size(0)}, "
                             f"{self.node_channels}] (got {list(h.shape)})")
        if batch is None:
            batch = default_batch(pos.size(0), pos.device)
        check_batch_vector(batch, pos.size(0))
        return pos, h, batch, num_graphs_of(batch)

    def extra_repr(self) -> str:
        return (f'n_dims={self.n_dims}, node_channels={self.node_channels}, '
                f'learnable={self.learnable}')
