from typing import Optional, Tuple

import torch
from torch import Tensor

from torch_enf.nn import EGNN, RadialBasis
from torch_enf.utils import check_num_radial, check_positive_number

PREDICTIONS = ('velocity', 'endpoint')
ENDPOINT_TIME_OFFSET = 0.01


def check_prediction(prediction: str) -> str:
    r"""Returns :obj:`prediction` if it is one of :obj:`PREDICTIONS` and
    raises :class:`ValueError` otherwise."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"'prediction' must be one of {PREDICTIONS} (got "
                         f"{prediction!r})")
    return prediction


class EGNNDynamics(torch.nn.Module):
    r"""The time-conditioned EGNN vector field of the E-NF,
    from the `"E(n) Equivariant Normalizing Flows"
    <https://arxiv.org/abs/2105.09016>`_ paper,

    .. math::
        (\mathbf{h}^{out}, \mathbf{x}^{out}) = \mathrm{EGNN}\left(
        [\mathbf{h}, t], \mathbf{x}; \mathbf{a}_{ij} =
        \|\mathbf{x}_i - \mathbf{x}_j\|^2 \right), \qquad
        \frac{d\mathbf{x}}{dt} = \mathbf{x}^{out} - \mathbf{x}, \qquad
        \frac{d\mathbf{h}}{dt} = \mathbf{h}^{out}.

    With :obj:`prediction="endpoint"` the EGNN's output positions are read
    as the clean positions at :math:`t = 0` that the current state flows
    to, and the position velocity points away from them along the straight
    path of flow matching,

    .. math::
        \frac{d\mathbf{x}}{dt} = \frac{\mathbf{x} - \mathbf{x}^{out}}
        {t + \epsilon},

    with :math:`\epsilon = 0.01` (:obj:`ENDPOINT_TIME_OFFSET`) keeping the
    field finite at the data; the features keep their velocity
    :math:`\mathbf{h}^{out}`. Any velocity can be written so, but the scale
    :math:`1 / (t + \epsilon)` is built in rather than learnt: near the
    data the EGNN only has to move every atom to its predicted place, a
    local function of the distances, as diffusion models that predict the
    clean data do. At initialisation the coordinate updates are near zero,
    so the field starts near zero either way.

    With :obj:`num_radial` :math:`= K > 0` the edge attributes also hold
    :math:`K` Gaussians of the distance on :math:`[0, r_c]`
    (:class:`~torch_enf.nn.RadialBasis`), which let every layer resolve
    distances far finer than the raw :math:`d_{ij}^2` does (bond lengths of
    molecules differ by a few picometres between bond orders).

    The position velocity is E(n)-equivariant and translation invariant, the
    feature velocity E(n)-invariant; :class:`~torch_enf.flows.ENFlow` removes
    the centre of mass of the position velocity per graph.

    Args:
        n_dims (int): The dimension :math:`n` of the positions.
        node_channels (int): The width :math:`F` of the node features that
            flow alongside the positions (:obj:`0` for positions only).
        hidden_channels (int, optional): Width of the EGNN. (default:
            :obj:`64`)
        num_layers (int, optional): Number of EGNN layers. (default:
            :obj:`6`)
        edge_inference (bool, optional): Soft edge inference ("attention").
            (default: :obj:`True`)
        coords_norm (float, optional): The constant :math:`C` of the
            normalised coordinate differences. (default: :obj:`1.0`)
        coords_range (float, optional): Total tanh bound of the coordinate
            updates. (default: :obj:`15.0`)
        aggr (str, optional): :obj:`"add"` or :obj:`"mean"`. (default:
            :obj:`"add"`)
        condition_time (bool, optional): Feed :math:`t` as a node feature.
            (default: :obj:`True`)
        num_radial (int, optional): The number :math:`K` of Gaussian
            distance features per edge (:obj:`0`: only
            :math:`d_{ij}^2`). (default: :obj:`0`)
        radial_cutoff (float, optional): The last centre :math:`r_c`, in
            the units of the positions. (default: :obj:`5.0`)
        context_channels (int, optional): The width :math:`C` of fixed node
            inputs :math:`\mathbf{c}` (*e.g.* one-hot atom types) that the
            network sees beside :math:`\mathbf{h}` but that do not flow:
            :math:`[\mathbf{h}, \mathbf{c}, t]` enters the EGNN.
            (default: :obj:`0`)
        prediction (str, optional): :obj:`"velocity"` (the EGNN's
            displacement is the position velocity) or :obj:`"endpoint"`
            (its output positions are the predicted clean positions, see
            above). (default: :obj:`"velocity"`)
    """
    def __init__(
        self,
        n_dims: int,
        node_channels: int = 0,
        hidden_channels: int = 64,
        num_layers: int = 6,
        edge_inference: bool = True,
        coords_norm: Optional[float] = 1.0,
        coords_range: Optional[float] = 15.0,
        aggr: str = 'add',
        condition_time: bool = True,
        num_radial: int = 0,
        radial_cutoff: float = 5.0,
        context_channels: int = 0,
        prediction: str = 'velocity',
    ):
        super().__init__()
        if isinstance(context_channels, bool) or \
                not isinstance(context_channels, int) or context_channels < 0:
            raise ValueError(f"'context_channels' must be a non-negative "
                             f"integer (got {context_channels!r})")
        check_num_radial(num_radial)
        check_positive_number(radial_cutoff, 'radial_cutoff')
        self.n_dims = n_dims
        self.node_channels = node_channels
        self.context_channels = context_channels
        self.condition_time = condition_time
        self.prediction = check_prediction(prediction)
        in_channels = node_channels + context_channels + int(condition_time)
        self.in_channels = max(in_channels, 1)
        self.distance_expansion = RadialBasis(
            radial_cutoff, num_radial) if num_radial > 0 else None
        self.egnn = EGNN(self.in_channels, hidden_channels, num_layers,
                         node_channels, edge_dim=1 + num_radial,
                         edge_inference=edge_inference,
                         coords_norm=coords_norm, coords_range=coords_range,
                         aggr=aggr)

    def reset_parameters(self):
        r"""Resets all learnable parameters of the module."""
        self.egnn.reset_parameters()

    def forward(self, t: Tensor, pos: Tensor, h: Tensor, edge_index: Tensor,
                batch: Tensor, context: Optional[Tensor] = None
                ) -> Tuple[Tensor, Tensor]:
        r"""Evaluates the vector field.

        Args:
            t (torch.Tensor): The time: a scalar tensor, or one value per
                node of shape :obj:`[N]` (as in flow matching, where every
                graph has its own time).
            pos (torch.Tensor): Positions of shape :obj:`[N, n]`.
            h (torch.Tensor): Node features of shape :obj:`[N, F]`.
            edge_index (torch.Tensor): Edge indices of shape :obj:`[2, E]`.
            batch (torch.Tensor): Graph assignment of shape :obj:`[N]`.
            context (torch.Tensor, optional): Fixed node inputs of shape
                :obj:`[N, C]`, needed when :obj:`context_channels > 0`.

        Returns:
            :obj:`(dpos_dt, dh_dt)` of shapes :obj:`[N, n]` and
            :obj:`[N, F]`.
        """
        inputs = [h]
        if self.context_channels > 0:
            if context is None or context.shape != (pos.size(0),
                                                    self.context_channels):
                raise ValueError(
                    f"The dynamics expects a 'context' of shape "
                    f"[{pos.size(0)}, {self.context_channels}] (got "
                    f"{None if context is None else list(context.shape)})")
            inputs.append(context.to(pos.dtype))
        if self.condition_time:
            inputs.append(t.to(pos.dtype).reshape(-1, 1).expand(pos.size(0),
                                                                1))
        if self.in_channels > sum(x.size(-1) for x in inputs):
            inputs.append(pos.new_ones(pos.size(0), 1))
        h_in = torch.cat(inputs, dim=-1)
        source, target = edge_index
        dist2 = (pos.index_select(0, target) -
                 pos.index_select(0, source)).pow(2).sum(-1, keepdim=True)
        edge_attr = dist2
        if self.distance_expansion is not None:
            edge_attr = torch.cat([dist2, self.distance_expansion(dist2)], -1)
        h_out, pos_out = self.egnn(h_in, pos, edge_index, edge_attr)
        if self.prediction == 'velocity':
            return pos_out - pos, h_out
        scale = t.to(pos.dtype).reshape(-1, 1) + ENDPOINT_TIME_OFFSET
        return (pos - pos_out) / scale, h_out

    def extra_repr(self) -> str:
        return f'prediction={self.prediction}'
