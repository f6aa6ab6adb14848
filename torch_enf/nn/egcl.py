from typing import Callable, Optional, Tuple, Union

import torch
from torch import Tensor
from torch.nn import Linear, Sequential
from torch_geometric.nn import MessagePassing
from torch_geometric.nn.inits import reset

from torch_enf.utils import (check_finite, check_positive_number,
                             checking_values, scatter_mean, scatter_sum)


def safe_norm(sq_norm: Tensor) -> Tensor:
    r"""Square root of :obj:`sq_norm` whose gradient is zero (not NaN) where
    the norm vanishes, e.g. for coincident points (values below
    :math:`10^{-30}` are clamped, a difference of at most :math:`10^{-15}`
    in the norm)."""
    return sq_norm.clamp_min(1e-30).sqrt()


class EGCL(MessagePassing):
    r"""The E(n)-equivariant graph convolutional layer from the
    `"E(n) Equivariant Graph Neural Networks"
    <https://arxiv.org/abs/2102.09844>`_ paper

    .. math::
        \mathbf{m}_{ij} &= \phi_e\left(\mathbf{h}_i, \mathbf{h}_j,
        \|\mathbf{x}_i - \mathbf{x}_j\|^2, \mathbf{a}_{ij}\right),
        \qquad e_{ij} = \sigma\left(\phi_{\inf}(\mathbf{m}_{ij})\right)

        \mathbf{x}_i^{\prime} &= \mathbf{x}_i + \bigoplus_{j \in
        \mathcal{N}(i)} \frac{\mathbf{x}_i - \mathbf{x}_j}
        {\|\mathbf{x}_i - \mathbf{x}_j\| + C} \,
        \phi_x(e_{ij}\mathbf{m}_{ij})

        \mathbf{h}_i^{\prime} &= \mathbf{h}_i + \phi_h\left(\mathbf{h}_i,
        \bigoplus_{j \in \mathcal{N}(i)} e_{ij} \mathbf{m}_{ij}\right)

    where :math:`\bigoplus` is the aggregation (:obj:`"add"`, or
    :obj:`"mean"` for the paper's :math:`1/(M-1)` normalisation on fully
    connected graphs), :math:`e_{ij} = 1` without edge inference, the
    denominator is :math:`1` when :obj:`coords_norm` is :obj:`None`, and
    :math:`\phi_x` ends in :math:`r \tanh(\cdot)` when
    :obj:`coords_range=r` is set. The feature residual is used when input and
    output widths agree. The coordinate update is E(n)-equivariant and the
    feature update E(n)-invariant.

    With velocities :math:`\mathbf{v}_i` (the momentum variant),

    .. math::
        \mathbf{v}_i^{\prime} = \phi_v(\mathbf{h}_i)\, \mathbf{v}_i +
        \bigoplus_{j} \frac{\mathbf{x}_i - \mathbf{x}_j}
        {\|\mathbf{x}_i - \mathbf{x}_j\| + C}\, \phi_x(e_{ij}\mathbf{m}_{ij}),
        \qquad \mathbf{x}_i^{\prime} = \mathbf{x}_i + \mathbf{v}_i^{\prime}.

    Works on any graph: fully connected (see
    :func:`~torch_enf.nn.full_edge_index`) or sparse (see
    :func:`~torch_enf.nn.radius_graph`). Internally, the first linear map of
    :math:`\phi_e` is applied to the node features before they are gathered
    to the edges, which is exact and saves most of the per-edge work.

    Args:
        in_channels (int): Size of the input node features :math:`\mathbf{h}`,
            or :obj:`-1` to infer it from the first input (as for PyG's
            lazy :class:`~torch_geometric.nn.dense.linear.Linear`; run one
            batch through the layer before building the optimiser).
        out_channels (int): Size of the output node features.
        hidden_channels (int, optional): Size of the messages and hidden
            layers. (default: :obj:`None`: same as :obj:`out_channels`)
        edge_dim (int, optional): Size of the edge attributes
            :math:`\mathbf{a}_{ij}`. (default: :obj:`0`)
        edge_inference (bool, optional): If set to :obj:`True`, messages are
            gated by the soft edge weights :math:`e_{ij}`. (default:
            :obj:`False`)
        coords_norm (float, optional): The constant :math:`C > 0` of the
            normalised coordinate differences. (default: :obj:`None`:
            unnormalised)
        coords_range (float, optional): If set, bounds :math:`\phi_x` by
            :math:`r \tanh`. (default: :obj:`None`)
        aggr (str, optional): :obj:`"add"` or :obj:`"mean"`. (default:
            :obj:`"add"`)
        act (torch.nn.Module, optional): The non-linearity. (default:
            :class:`torch.nn.SiLU`)
        velocity (bool, optional): The momentum variant, which takes and
            returns velocities. (default: :obj:`False`)
        update_pos (bool, optional): If set to :obj:`False`, the layer has
            no :math:`\phi_x` and returns the positions unchanged: an
            E(n)-invariant feature layer, as in the paper's QM9 model, at
            about three quarters of the per-edge work. (default:
            :obj:`True`)

    Shapes:
        - **input:**
          node features :math:`(|\mathcal{V}|, F_{in})`,
          positions :math:`(|\mathcal{V}|, n)`,
          edge indices :math:`(2, |\mathcal{E}|)`,
          edge attributes :math:`(|\mathcal{E}|, D)` *(optional)*,
          velocities :math:`(|\mathcal{V}|, n)` *(optional)*
        - **output:** node features :math:`(|\mathcal{V}|, F_{out})`,
          positions :math:`(|\mathcal{V}|, n)` and, when velocities are given,
          velocities :math:`(|\mathcal{V}|, n)`
    """
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: Optional[int] = None,
        edge_dim: int = 0,
        edge_inference: bool = False,
        coords_norm: Optional[float] = None,
        coords_range: Optional[float] = None,
        aggr: str = 'add',
        act: Callable = torch.nn.SiLU(),
        velocity: bool = False,
        update_pos: bool = True,
    ):
        if hidden_channels is None:
            hidden_channels = out_channels
        if in_channels != -1:
            _check_width(in_channels, 'in_channels', 0)
        for name, value, least in (('out_channels', out_channels, 0),
                                   ('hidden_channels', hidden_channels, 1),
                                   ('edge_dim', edge_dim, 0)):
            _check_width(value, name, least)
        if aggr not in ('add', 'mean'):
            raise ValueError(f"'aggr' must be 'add' or 'mean' (got '{aggr}')")
        if velocity and not update_pos:
            raise ValueError("'velocity=True' needs 'update_pos=True' (the "
                             "momentum variant moves the positions)")
        # C > 0 keeps the update finite for coincident points.
        for name, value in (('coords_norm', coords_norm),
                            ('coords_range', coords_range)):
            if value is not None:
                check_positive_number(value, name)
        super().__init__(aggr=aggr, node_dim=0)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.hidden_channels = hidden_channels
        self.edge_dim = edge_dim
        self.edge_inference = edge_inference
        self.coords_norm = coords_norm
        self.coords_range = coords_range
        self.velocity = velocity
        self.update_pos = update_pos
        self.act = act

        # The layers that read h (phi_e's first layer acts on
        # [h_i, h_j, ||x_i - x_j||^2, a_ij]) wait for in_channels if lazy;
        # their slots are registered first to keep the parameter order.
        self.register_module('edge_lin1', None)
        self.edge_lin2 = Linear(hidden_channels, hidden_channels)
        self.inf_lin = Linear(hidden_channels, 1) if edge_inference else None
        self.coord_lin1 = Linear(hidden_channels, hidden_channels) \
            if update_pos else None
        self.coord_lin2 = Linear(hidden_channels, 1, bias=False) \
            if update_pos else None
        self.register_module('node_mlp', None)
        self.register_module('vel_mlp', None)
        if in_channels >= 0:
            self._build_input_layers(in_channels)
        self.reset_parameters()

    def _build_input_layers(self, in_channels: int, **factory) -> None:
        r"""Creates the three networks whose input width is
        :obj:`in_channels`: the first layer of :math:`\phi_e`,
        :math:`\phi_h` and (momentum variant) :math:`\phi_v`."""
        hidden, act = self.hidden_channels, self.act
        self.in_channels = in_channels
        self.edge_lin1 = Linear(2 * in_channels + 1 + self.edge_dim, hidden,
                                **factory)
        self.node_mlp = Sequential(
            Linear(in_channels + hidden, hidden, **factory), act,
            Linear(hidden, self.out_channels, **factory))
        self.vel_mlp = Sequential(Linear(in_channels, hidden, **factory),
                                  act, Linear(hidden, 1, **factory)) \
            if self.velocity else None

    def _materialize(self, in_channels: int) -> None:
        r"""Builds and initialises the input layers of a lazy layer."""
        like = self.edge_lin2.weight
        self._build_input_layers(in_channels, device=like.device,
                                 dtype=like.dtype)
        for module in (self.edge_lin1, self.node_mlp, self.vel_mlp):
            reset(module)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        weight = state_dict.get(prefix + 'edge_lin1.weight')
        if self.in_channels == -1 and weight is not None:
            self._materialize((weight.size(1) - 1 - self.edge_dim) // 2)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def reset_parameters(self):
        r"""Resets all learnable parameters of the module. The last layer of
        :math:`\phi_x` starts small (Xavier gain :math:`10^{-3}`), so that a
        fresh layer moves coordinates little, which keeps deep stacks and ODE
        vector fields well behaved at initialisation."""
        super().reset_parameters()
        for module in (self.edge_lin1, self.edge_lin2, self.inf_lin,
                       self.coord_lin1, self.node_mlp, self.vel_mlp):
            reset(module)
        if self.coord_lin2 is not None:
            torch.nn.init.xavier_uniform_(self.coord_lin2.weight, gain=1e-3)

    def forward(
        self,
        h: Tensor,
        pos: Tensor,
        edge_index: Tensor,
        edge_attr: Optional[Tensor] = None,
        vel: Optional[Tensor] = None,
    ) -> Union[Tuple[Tensor, Tensor], Tuple[Tensor, Tensor, Tensor]]:
        r"""Runs the layer.

        Args:
            h (torch.Tensor): Node features of shape :obj:`[N, in_channels]`.
            pos (torch.Tensor): Node positions of shape :obj:`[N, n]`.
            edge_index (torch.Tensor): Edge indices of shape :obj:`[2, E]`
                (:obj:`edge_index[0]` = source :math:`j`,
                :obj:`edge_index[1]` = target :math:`i`).
            edge_attr (torch.Tensor, optional): Edge attributes of shape
                :obj:`[E, edge_dim]`. (default: :obj:`None`)
            vel (torch.Tensor, optional): Node velocities of shape
                :obj:`[N, n]`; requires :obj:`velocity=True`. (default:
                :obj:`None`)

        Returns:
            :obj:`(h_out, pos_out)`, or :obj:`(h_out, pos_out, vel_out)` when
            :obj:`vel` is given.

        Raises:
            ValueError: If the inputs are malformed or non-finite, or (when
                the layer checks values, see
                :func:`~torch_enf.utils.inputs_checked`) if finite inputs
                overflowed to non-finite outputs: the squared distances
                enter :math:`\phi_e` as they are, so positions far beyond
                the scale the layer was built for (say :math:`10^{15}` in
                float32) cannot be represented.
        """
        if self.in_channels == -1 and h.dim() == 2:
            self._materialize(h.size(-1))
        self._check_inputs(h, pos, edge_index, edge_attr, vel)
        # First layer of phi_e, split over its inputs: W [h_i, h_j, d, a] + b.
        # The node parts are applied per node, before the gather to edges.
        weight = self.edge_lin1.weight
        c = self.in_channels
        proj_target = torch.addmm(self.edge_lin1.bias, h, weight[:, :c].t())
        proj_source = h @ weight[:, c:2 * c].t()

        aggregated = self.propagate(
            edge_index, proj=(proj_source, proj_target), pos=pos,
            edge_attr=edge_attr, weight_edge=weight[:, 2 * c:].t())

        h_out = self.node_mlp(torch.cat([h, aggregated[0]], dim=-1))
        if self.out_channels == self.in_channels:
            h_out = h + h_out

        if not self.update_pos:
            out = (h_out, pos)
        elif vel is None:
            out = (h_out, pos + aggregated[1])
        else:
            vel_out = self.vel_mlp(h) * vel + aggregated[1]
            out = (h_out, pos + vel_out, vel_out)
        if checking_values():
            self._check_outputs(out, pos, edge_index)
        return out

    def message(self, proj_i: Tensor, proj_j: Tensor, pos_i: Tensor,
                pos_j: Tensor, edge_attr: Optional[Tensor],
                weight_edge: Tensor) -> Tuple[Tensor, ...]:
        diff = pos_i - pos_j
        dist2 = diff.pow(2).sum(dim=-1, keepdim=True)
        edge_in = dist2 if edge_attr is None else torch.cat(
            [dist2, edge_attr], dim=-1)
        # proj_i is this layer's own gathered copy, so it can be updated in
        # place (neither backward needs its old value): two fewer per-edge
        # temporaries.
        # Under bf16 autocast the projections are bf16 while the distances
        # stay float32: the in-place product takes the projections' dtype.
        msg = proj_i.add_(proj_j)
        msg = self.act(msg.addmm_(edge_in.to(msg.dtype),
                                  weight_edge.to(msg.dtype)))
        msg = self.act(self.edge_lin2(msg))
        if self.inf_lin is not None:
            msg = msg * torch.sigmoid(self.inf_lin(msg))
        if self.coord_lin1 is None:
            return (msg, )

        scale = self.coord_lin2(self.act(self.coord_lin1(msg)))
        if self.coords_range is not None:
            scale = self.coords_range * torch.tanh(scale)
        if self.coords_norm is not None:
            scale = scale / (safe_norm(dist2) + self.coords_norm)
        return msg, diff * scale

    def explain_message(self, inputs: Tuple[Tensor, ...],
                        dim_size: Optional[int]) -> Tuple[Tensor, ...]:
        r"""Scales the message *and* the coordinate shift of every edge by
        the edge mask of PyG's :class:`~torch_geometric.explain.Explainer`,
        so that masking an edge removes all of its influence."""
        return tuple(MessagePassing.explain_message(self, x, dim_size)
                     for x in inputs)

    def aggregate(self, inputs: Tuple[Tensor, ...], index: Tensor,
                  dim_size: Optional[int] = None) -> Tuple[Tensor, ...]:
        # Native index_add (whose backward is a cheap index_select) for the
        # messages and the coordinate shifts alike.
        reduce = scatter_mean if self.aggr == 'mean' else scatter_sum
        return tuple(reduce(x, index, dim_size) for x in inputs)

    def _check_inputs(self, h: Tensor, pos: Tensor, edge_index: Tensor,
                      edge_attr: Optional[Tensor],
                      vel: Optional[Tensor]) -> None:
        if h.dim() != 2 or h.size(-1) != self.in_channels:
            raise ValueError(f"'h' must have shape [num_nodes, "
                             f"{self.in_channels}] (got {list(h.shape)})")
        if pos.dim() != 2 or pos.size(0) != h.size(0):
            raise ValueError(f"'pos' must have shape [{h.size(0)}, n_dims] "
                             f"to match 'h' (got {list(pos.shape)})")
        if edge_index.dim() != 2 or edge_index.size(0) != 2:
            raise ValueError(f"'edge_index' must have shape [2, num_edges] "
                             f"(got {list(edge_index.shape)})")
        if self.edge_dim > 0:
            if edge_attr is None or edge_attr.dim() != 2 or \
                    edge_attr.size(0) != edge_index.size(1) or \
                    edge_attr.size(1) != self.edge_dim:
                shape = None if edge_attr is None else list(edge_attr.shape)
                raise ValueError(f"'edge_attr' must have shape "
                                 f"[{edge_index.size(1)}, {self.edge_dim}] "
                                 f"(got {shape})")
        elif edge_attr is not None:
            raise ValueError("'edge_attr' was given to a layer built with "
                             "edge_dim=0")
        if vel is not None:
            if not self.velocity:
                raise ValueError("'vel' was given to a layer built with "
                                 "velocity=False")
            if vel.shape != pos.shape:
                raise ValueError(f"'vel' must have the shape of 'pos' "
                                 f"{list(pos.shape)} (got {list(vel.shape)})")
        weight = self.edge_lin1.weight
        if h.dtype != weight.dtype and not torch.is_autocast_enabled(
                h.device.type):
            raise ValueError(f"'h' has dtype {h.dtype} but the layer's "
                             f"parameters are {weight.dtype}; convert one "
                             f"of them (or run under torch.autocast)")
        if checking_values():  # once at the entry point, not inside solves
            check_finite(h, 'h')
            check_finite(pos, 'pos')

    def _check_outputs(self, out: Tuple[Tensor, ...], pos: Tensor,
                       edge_index: Tensor) -> None:
        names = ('h', 'pos', 'vel')[:len(out)]
        bad = [name for name, x in zip(names, out)
               if not bool(torch.isfinite(x).all())]
        if not bad:
            return
        source, target = edge_index
        dist2 = (pos[target] - pos[source]).double().pow(2).sum(-1)
        largest = float(dist2.max()) if dist2.numel() else 0.0
        raise ValueError(f"EGCL computed non-finite {bad} from finite "
                         f"inputs: squared distances up to {largest:.3g} "
                         f"overflow {pos.dtype} in the edge and coordinate "
                         f"networks; rescale 'pos' (or bound the update "
                         f"with coords_norm and coords_range)")

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.in_channels}, '
                f'{self.out_channels}, hidden_channels='
                f'{self.hidden_channels}, edge_dim={self.edge_dim}, '
                f'edge_inference={self.edge_inference}, aggr={self.aggr})')


def _check_width(value: int, name: str, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or \
            value < least:
        raise ValueError(f"'{name}' must be an integer of at least {least} "
                         f"(got {value!r})")
