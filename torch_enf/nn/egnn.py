from typing import Callable, Optional, Tuple

import torch
from torch import Tensor
from torch.nn import Linear, ModuleList

from torch_enf.nn.egcl import EGCL
from torch_enf.utils import check_finite, checking_values, inputs_checked


class EGNN(torch.nn.Module):
    r"""The E(n)-equivariant graph neural network from the
    `"E(n) Equivariant Graph Neural Networks"
    <https://arxiv.org/abs/2102.09844>`_ paper: a linear embedding of the node
    features, :obj:`num_layers` :class:`~torch_enf.nn.EGCL` layers of width
    :obj:`hidden_channels`, and a linear read-out,

    .. math::
        \mathbf{h}^{0} = \mathbf{W}_{in} \mathbf{h}, \qquad
        (\mathbf{h}^{l+1}, \mathbf{x}^{l+1}) =
        \mathrm{EGCL}_l(\mathbf{h}^{l}, \mathbf{x}^{l}), \qquad
        \mathbf{h}_{out} = \mathbf{W}_{out} \mathbf{h}^{L}.

    The output positions are E(n)-equivariant and the output features
    E(n)-invariant functions of the input positions.

    Args:
        in_channels (int): Size of the input node features.
        hidden_channels (int): Width of every layer.
        num_layers (int): Number of :class:`EGCL` layers.
        out_channels (int, optional): Size of the output node features, read
            out by a linear map; :obj:`0` when only positions are wanted.
            (default: :obj:`None`: no read-out, the last layer's
            :obj:`hidden_channels` features)
        edge_dim (int, optional): Size of the edge attributes given to every
            layer. (default: :obj:`0`)
        edge_inference (bool, optional): Soft edge inference in every layer.
            (default: :obj:`False`)
        coords_norm (float, optional): The constant :math:`C` of the
            normalised coordinate differences. (default: :obj:`None`)
        coords_range (float, optional): Total bound on the coordinate
            update per edge: each layer's :math:`\phi_x` ends in
            :math:`(r / L) \tanh`. (default: :obj:`None`)
        aggr (str, optional): :obj:`"add"` or :obj:`"mean"`. (default:
            :obj:`"add"`)
        act (torch.nn.Module, optional): The non-linearity. (default:
            :class:`torch.nn.SiLU`)

    Shapes:
        - **input:** node features :math:`(|\mathcal{V}|, F_{in})`,
          positions :math:`(|\mathcal{V}|, n)`, edge indices
          :math:`(2, |\mathcal{E}|)`, edge attributes
          :math:`(|\mathcal{E}|, D)` *(optional)*
        - **output:** node features :math:`(|\mathcal{V}|, F_{out})`,
          positions :math:`(|\mathcal{V}|, n)`
    """
    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        num_layers: int,
        out_channels: Optional[int] = None,
        edge_dim: int = 0,
        edge_inference: bool = False,
        coords_norm: Optional[float] = None,
        coords_range: Optional[float] = None,
        aggr: str = 'add',
        act: Callable = torch.nn.SiLU(),
    ):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"'num_layers' must be at least 1 "
                             f"(got {num_layers})")
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.out_channels = hidden_channels if out_channels is None \
            else out_channels
        self.num_layers = num_layers
        layer_range = None if coords_range is None \
            else coords_range / num_layers
        self.lin_in = Linear(in_channels, hidden_channels)
        self.convs = ModuleList([
            EGCL(hidden_channels, hidden_channels, edge_dim=edge_dim,
                 edge_inference=edge_inference, coords_norm=coords_norm,
                 coords_range=layer_range, aggr=aggr, act=act)
            for _ in range(num_layers)
        ])
        self.lin_out = Linear(hidden_channels, out_channels) \
            if out_channels else None
        self.reset_parameters()

    def reset_parameters(self):
        r"""Resets all learnable parameters of the module."""
        self.lin_in.reset_parameters()
        for conv in self.convs:
            conv.reset_parameters()
        if self.lin_out is not None:
            self.lin_out.reset_parameters()

    def forward(self, h: Tensor, pos: Tensor, edge_index: Tensor,
                edge_attr: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        r"""Runs the network; see the class description for the shapes.

        Returns:
            :obj:`(h_out, pos_out)`.
        """
        if h.dim() != 2 or h.size(-1) != self.in_channels:
            raise ValueError(f"'h' must have shape [num_nodes, "
                             f"{self.in_channels}] (got {list(h.shape)})")
        if checking_values():  # once here, not in every layer
            check_finite(h, 'h')
            check_finite(pos, 'pos')
        h = self.lin_in(h)
        with inputs_checked():
            for conv in self.convs:
                h, pos = conv(h, pos, edge_index, edge_attr)
        if self.lin_out is not None:
            h = self.lin_out(h)
        elif self.out_channels == 0:
            h = h.new_zeros(h.size(0), 0)
        return h, pos

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.in_channels}, '
                f'{self.out_channels}, hidden_channels='
                f'{self.hidden_channels}, num_layers={self.num_layers})')
