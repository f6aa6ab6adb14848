r"""The vector field of an E(n)-equivariant flow: graph, time and centring
around a dynamics network."""
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from torch_enf.nn import full_edge_index, radius_graph
from torch_enf.utils import center_pos

Graph = Union[str, float]


def check_graph(graph: Graph) -> Graph:
    r"""Returns :obj:`graph` if it is :obj:`"full"` or a positive radius and
    raises :class:`ValueError` otherwise (booleans are not radii)."""
    if graph == 'full':
        return graph
    if isinstance(graph, bool) or not isinstance(graph, (int, float)) or \
            not graph > 0:
        raise ValueError(f"'graph' must be 'full' or a positive radius "
                         f"(got {graph!r})")
    return float(graph)


class VectorField(torch.nn.Module):
    r"""The vector field :math:`f(\mathbf{x}, \mathbf{h}, t)` of an
    :class:`~torch_enf.flows.ENFlow`: it builds the graph of every input
    (fully connected, or a radius graph of the current positions), calls the
    dynamics network and removes the centre of mass of the position velocity
    of every graph,

    .. math::
        \frac{d\mathbf{x}_i}{dt} = \mathbf{v}_i - \frac{1}{M_g}
        \sum_{j \in g} \mathbf{v}_j, \qquad
        (\mathbf{v}, \frac{d\mathbf{h}}{dt}) = \mathrm{dynamics}(t,
        \mathbf{x}, \mathbf{h}),

    so that the flow stays on the zero-centre-of-mass subspace. The same
    module drives the ODE solves of the flow and the regression targets of
    flow matching (:class:`~torch_enf.objectives.FlowMatching`).

    Args:
        dynamics (torch.nn.Module): Called as :obj:`dynamics(t, pos, h,
            edge_index, batch)` and returning :obj:`(dpos, dh)`, *e.g.*
            :class:`~torch_enf.flows.EGNNDynamics`.
        graph (str or float, optional): :obj:`"full"` or a cutoff radius.
            (default: :obj:`"full"`)

    Shapes:
        - **input:** time :math:`()` or :math:`(|\mathcal{V}|)` (one time per
          node, *e.g.* per graph), positions :math:`(|\mathcal{V}|, n)`,
          features :math:`(|\mathcal{V}|, F)`, assignment
          :math:`(|\mathcal{V}|)`
        - **output:** velocities :math:`(|\mathcal{V}|, n)` (centred per
          graph) and :math:`(|\mathcal{V}|, F)`
    """
    def __init__(self, dynamics: torch.nn.Module, graph: Graph = 'full'):
        super().__init__()
        self.dynamics = dynamics
        self.graph = check_graph(graph)

    def reset_parameters(self):
        r"""Resets the parameters of the dynamics."""
        self.dynamics.reset_parameters()

    def edge_index(self, pos: Tensor, batch: Tensor,
                   num_graphs: int) -> Tensor:
        r"""The edges the dynamics sees at positions :obj:`pos`."""
        if self.graph == 'full':
            return full_edge_index(batch, num_graphs)
        return radius_graph(pos, self.graph, batch)

    def forward(self, t: Tensor, pos: Tensor, h: Tensor, batch: Tensor,
                num_graphs: int, edge_index: Optional[Tensor] = None,
                context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        r"""Evaluates the field.

        Args:
            t (torch.Tensor): The time, a scalar or one value per node.
            pos (torch.Tensor): Positions :obj:`[N, n]`.
            h (torch.Tensor): Features :obj:`[N, F]` (:obj:`F` may be 0).
            batch (torch.Tensor): Sorted graph assignment :obj:`[N]`.
            num_graphs (int): The number of graphs.
            edge_index (torch.Tensor, optional): A precomputed fully
                connected graph (radius graphs are always rebuilt from
                :obj:`pos`).
            context (torch.Tensor, optional): Fixed node inputs
                :obj:`[N, C]` of a conditional flow, passed on to the
                dynamics as :obj:`context`.

        Returns:
            :obj:`(dpos_dt, dh_dt)`.
        """
        if edge_index is None or self.graph != 'full':
            edge_index = self.edge_index(pos, batch, num_graphs)
        kwargs = {} if context is None else dict(context=context)
        dpos, dh = self.dynamics(t, pos, h, edge_index, batch, **kwargs)
        return center_pos(dpos, batch, num_graphs), dh

    def extra_repr(self) -> str:
        return f'graph={self.graph}'
