r"""The interface every registered flow model implements, and the state of
a flow at :math:`t = 0` that flow matching trains on."""
import abc
from typing import Any, ClassVar, NamedTuple, Optional, Tuple, Type, Union

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data

from torch_enf.config import Config
from torch_enf.flows.integrator import EvaluationCount, SolverOptions


class FlowInputs(NamedTuple):
    r"""Continuous inputs of a flow at :math:`t = 0`, as returned by
    :meth:`FlowModel.flow_inputs`.

    Attributes:
        pos (torch.Tensor): Positions centred per graph, :obj:`[N, n]`.
        h (torch.Tensor): Continuous node features, :obj:`[N, F]`.
        batch (torch.Tensor): Sorted graph assignment, :obj:`[N]`.
        num_graphs (int): The number of graphs.
        node_type (torch.Tensor, optional): An integer class per node that
            symmetries may not mix (*e.g.* the atom type), :obj:`[N]`, or
            :obj:`None` when all nodes are alike.
        context (torch.Tensor, optional): The fixed node inputs
            :obj:`[N, C]` of a conditional flow (see
            :class:`~torch_enf.flows.ENFlow`'s :obj:`context_channels`), or
            :obj:`None`.
    """
    pos: Tensor
    h: Tensor
    batch: Tensor
    num_graphs: int
    node_type: Optional[Tensor] = None
    context: Optional[Tensor] = None


class FlowModel(torch.nn.Module, metaclass=abc.ABCMeta):
    r"""Base class of the flow models of
    :obj:`~torch_enf.flows.FLOW_MODELS`: exact-likelihood generative models
    of graphs whose continuous part is an E(n)-equivariant flow, carried
    from the data at :math:`t = 0` to a base distribution at :math:`t = 1`.

    A subclass implements

    * the configuration: a :class:`~torch_enf.config.Config` subclass as
      :obj:`config_class`, :meth:`config` and :meth:`from_config`, which
      :func:`~torch_enf.flows.model_config` and
      :func:`~torch_enf.flows.model_from_config` store beside the state
      dict (checkpoints, :mod:`torch_enf.pretrained`);
    * the likelihood, :meth:`log_prob` (which :meth:`forward` calls, so that
      hooks and :class:`~torch.nn.parallel.DistributedDataParallel` wrap
      the model directly);
    * what :class:`~torch_enf.objectives.FlowMatching` trains:
      :meth:`flow_inputs`, :meth:`velocity` and :meth:`sample_base`;
    * :meth:`sample`.

    Registering a subclass (:obj:`FLOW_MODELS.register("my-flow")`) makes it
    storable by name, so that trained models of it load like the shipped
    ones.
    """
    config_class: ClassVar[Type[Config]]
    r"""The configuration class of :meth:`config` and :meth:`from_config`."""

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config: Config) -> 'FlowModel':
        r"""A fresh model (new random parameters) of :obj:`config`; load a
        state dict to restore a trained one."""

    @abc.abstractmethod
    def config(self) -> Config:
        r"""The configuration this model is built from."""

    def forward(self, data: Union[Data, Batch], trace: str = 'exact',
                **options: Any) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        r"""Alias of :meth:`log_prob`."""
        return self.log_prob(data, trace, **options)

    @abc.abstractmethod
    def log_prob(self, data: Union[Data, Batch], trace: str = 'exact', *,
                 solver: Optional[SolverOptions] = None,
                 return_regularization: bool = False,
                 counter: Optional[EvaluationCount] = None
                 ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        r"""The log-density of every graph of :obj:`data`,
        :obj:`[num_graphs]` (with the integrated regulariser when
        :obj:`return_regularization` is set)."""

    @abc.abstractmethod
    def flow_inputs(self, data: Union[Data, Batch]) -> FlowInputs:
        r"""The checked state of the flow at :math:`t = 0` for
        :obj:`data`."""

    @abc.abstractmethod
    def velocity(self, t: Tensor, pos: Tensor, h: Tensor, batch: Tensor,
                 num_graphs: int, context: Optional[Tensor] = None
                 ) -> Tuple[Tensor, Tensor]:
        r"""The vector field at :obj:`t` (a scalar or one time per node):
        :obj:`(dpos_dt, dh_dt)` of shapes :obj:`[N, n]` (centred per graph)
        and :obj:`[N, F]`, given the node inputs :obj:`context` of a
        conditional flow."""

    @abc.abstractmethod
    def sample_base(self, batch: Tensor, num_graphs: int,
                    generator: Optional[torch.Generator] = None
                    ) -> Tuple[Tensor, Tensor]:
        r"""Latents :obj:`(pos, h)` from the base distribution for the
        graphs of the assignment vector :obj:`batch`."""

    @abc.abstractmethod
    def sample(self, num_samples: int, num_nodes: Any = None,
               **options: Any) -> Batch:
        r"""Draws :obj:`num_samples` graphs."""
