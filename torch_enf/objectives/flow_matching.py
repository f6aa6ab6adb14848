r"""Simulation-free training of the continuous flows by flow matching."""
from typing import Any, Optional

import torch
from torch import Tensor

from torch_enf.flows.base import FlowInputs
from torch_enf.objectives.alignment import align_base_samples, match_graphs
from torch_enf.objectives.base import Objective, register_objective
from torch_enf.utils import (center_pos, check_non_negative_number,
                             check_positive_integer, check_positive_number,
                             check_time, graph_sizes, inputs_checked,
                             scatter_sum)


@register_objective('fm')
class FlowMatching(Objective):
    r"""Conditional flow matching (Lipman et al., 2023; Tong et al., 2024)
    with equivariant optimal-transport pairs (Klein et al., 2023): the
    vector field of the flow is regressed onto straight paths between every
    graph at :math:`t = 0` and a base sample at :math:`t = 1` (the flow's
    own direction, data to latent),

    .. math::
        \mathbf{x}_t = (1 - t)\, \mathbf{x} + t\, \mathbf{z} + \sigma
        \boldsymbol{\epsilon}, \qquad
        \mathcal{L}_g = \frac{1}{D_g} \sum_{i \in g}
        \|f(\mathbf{x}_t, t)_i - (\mathbf{z}_i - \mathbf{x}_i)\|^2,

    for positions and features alike, with :math:`t = u^k`,
    :math:`u \sim U[0, 1]` per graph, :math:`\mathbf{z}` from the flow's
    base distribution,
    :math:`\boldsymbol{\epsilon}` standard normal (centred for positions)
    and :math:`D_g = (M_g - 1) n + M_g F` the degrees of freedom of the
    graph. A step costs one evaluation of the vector field and its backward
    pass: no ODE is solved. The minimiser is the field whose flow carries
    the data distribution to the base distribution, so :meth:`log_prob` and
    :meth:`sample` of the trained flow work as after maximum likelihood.
    The minimiser is the same for every distribution of :math:`t` with full
    support; :math:`k > 1` spends more of the training near the data
    (:math:`t \to 0`), where the field of sharply concentrated data (such
    as bond lengths) varies fastest and the likelihood is decided.

    With :obj:`align`, every base sample is first aligned to its graph by
    :func:`~torch_enf.objectives.alignment.align_base_samples` (node
    permutation within atom types and an orthogonal map): this keeps the
    base distribution, since it is invariant to both, and makes the paths
    shorter and straighter, so that the trained flow needs fewer solver
    steps. With :obj:`minibatch_ot`, base samples are also exchanged between
    graphs of the same size
    (:func:`~torch_enf.objectives.alignment.match_graphs`).

    With :obj:`endpoint_weight` :math:`= c`, the loss of a graph at time
    :math:`t` is weighted by :math:`\max(t, c)^2`. Above :math:`c` this is
    the error of the clean graph the field predicts,
    :math:`\|\hat{\mathbf{x}} - \mathbf{x}\|^2` with
    :math:`\hat{\mathbf{x}} = \mathbf{x}_t - t f(\mathbf{x}_t, t)`
    (end-point prediction, as diffusion models train), which moves the
    training toward large :math:`t`, where the molecular graph is decided;
    below :math:`c` the weight stays :math:`c^2`, so that the field near
    the data, which decides the likelihood, is still trained. The minimiser
    is unchanged.

    The model must provide :obj:`flow_inputs(data)`, :obj:`velocity(t, pos,
    h, batch, num_graphs)` and :obj:`sample_base(batch, num_graphs,
    generator)`, as every :class:`~torch_enf.flows.FlowModel` does (a
    conditional flow's node inputs, :obj:`FlowInputs.context`, are passed
    on as :obj:`context`).
    For a molecule model the
    flow is matched on the continuous features its dequantiser draws; the
    dequantiser is not trained, so it must have no parameters (use
    :obj:`dequantizer="uniform"`, for which :math:`\log q = 0` and
    :meth:`MoleculeFlow.log_prob` stays a valid lower bound). The
    transformation of the data into the flow's inputs (dequantisation,
    scaling, ActNorm) is held fixed.

    Args:
        sigma (float, optional): The width :math:`\sigma` of the Gaussian
            around the straight paths. (default: :obj:`0.0`)
        align (bool, optional): Equivariant optimal-transport alignment of
            the base samples. (default: :obj:`True`)
        align_iterations (int, optional): Rounds of permutation and
            rotation. (default: :obj:`3`)
        minibatch_ot (bool, optional): Exchange base samples between graphs
            of equal size. (default: :obj:`False`)
        time_exponent (float, optional): The exponent :math:`k` of the time
            distribution. (default: :obj:`1.0`: uniform)
        endpoint_weight (float, optional): The floor :math:`c \in (0, 1]`
            of the end-point weighting :math:`\max(t, c)^2`.
            (default: :obj:`None`: every time weighs the same)
        generator (torch.Generator, optional): Source of the base samples,
            times and path noise. (default: PyTorch's global generator)
    """
    options = ('sigma', 'align', 'align_iterations', 'minibatch_ot',
               'time_exponent', 'endpoint_weight')

    def __init__(self, sigma: float = 0.0, align: bool = True,
                 align_iterations: int = 3, minibatch_ot: bool = False,
                 time_exponent: float = 1.0,
                 endpoint_weight: Optional[float] = None,
                 generator: Optional[torch.Generator] = None):
        check_non_negative_number(sigma, 'sigma')
        check_positive_number(time_exponent, 'time_exponent')
        check_positive_integer(align_iterations, 'align_iterations')
        self.endpoint_weight = None if endpoint_weight is None else \
            check_time(endpoint_weight, 'endpoint_weight')
        self.sigma = float(sigma)
        self.align = bool(align)
        self.align_iterations = align_iterations
        self.minibatch_ot = bool(minibatch_ot)
        self.time_exponent = float(time_exponent)
        self.generator = generator

    def __call__(self, model: torch.nn.Module, data: Any) -> Tensor:
        _check_model(model)
        with torch.no_grad():
            inputs = model.flow_inputs(data)
            z_pos, z_h = self.base_samples(model, inputs)
            t = torch.rand(inputs.num_graphs, generator=self.generator,
                           dtype=inputs.pos.dtype,
                           device=inputs.pos.device).pow(self.time_exponent)
            noise = None
            if self.sigma > 0:
                noise = model.sample_base(inputs.batch, inputs.num_graphs,
                                          self.generator)
        loss = flow_matching_loss(model, inputs, z_pos, z_h, t, self.sigma,
                                  noise)
        if self.endpoint_weight is None:
            return loss
        return loss * t.clamp_min(self.endpoint_weight).pow(2)

    def base_samples(self, model: torch.nn.Module,
                     inputs: FlowInputs) -> tuple:
        r"""Base samples :obj:`(z_pos, z_h)` for :obj:`inputs`, aligned as
        configured."""
        z_pos, z_h = model.sample_base(inputs.batch, inputs.num_graphs,
                                       self.generator)
        if self.minibatch_ot:
            z_pos, z_h = match_graphs(inputs.pos, z_pos, inputs.batch,
                                      inputs.num_graphs, z_h)
        if self.align:
            z_pos, z_h = align_base_samples(
                inputs.pos, z_pos, inputs.batch, inputs.num_graphs, inputs.h,
                z_h, inputs.node_type, self.align_iterations)
        return z_pos, z_h


def flow_matching_loss(model: torch.nn.Module, inputs: FlowInputs,
                       z_pos: Tensor, z_h: Tensor, t: Tensor,
                       sigma: float = 0.0,
                       noise: Optional[tuple] = None) -> Tensor:
    r"""The loss of :class:`FlowMatching` for given base samples
    :obj:`(z_pos, z_h)`, times :obj:`t` :obj:`[num_graphs]` and path noise
    :obj:`noise = (eps_pos, eps_h)` (needed when :obj:`sigma > 0`).

    Returns:
        torch.Tensor: Shape :obj:`[num_graphs]`.
    """
    batch, num_graphs = inputs.batch, inputs.num_graphs
    t_node = t.index_select(0, batch)
    s = t_node.unsqueeze(-1)
    pos_t = (1 - s) * inputs.pos + s * z_pos
    h_t = (1 - s) * inputs.h + s * z_h
    if sigma > 0:
        eps_pos, eps_h = noise
        pos_t = pos_t + sigma * center_pos(eps_pos, batch, num_graphs)
        h_t = h_t + sigma * eps_h
    with inputs_checked():  # flow_inputs checked the data
        conditional = {} if inputs.context is None else dict(
            context=inputs.context)
        v_pos, v_h = model.velocity(t_node, pos_t, h_t, batch, num_graphs,
                                    **conditional)
    sq_error = (v_pos - (z_pos - inputs.pos)).pow(2).sum(-1) + \
        (v_h - (z_h - inputs.h)).pow(2).sum(-1)
    sizes = graph_sizes(batch, num_graphs).to(sq_error.dtype)
    dof = (sizes - 1) * inputs.pos.size(-1) + sizes * inputs.h.size(-1)
    return scatter_sum(sq_error, batch, num_graphs) / dof


def _check_model(model: torch.nn.Module) -> None:
    missing = [name for name in ('flow_inputs', 'velocity', 'sample_base')
               if not callable(getattr(model, name, None))]
    if missing:
        raise TypeError(f"Flow matching needs a model with {missing} (a "
                        f"FlowModel such as ENFlow or MoleculeFlow); got "
                        f"{type(model).__name__}")
    dequantizer = getattr(model, 'dequantizer', None)
    if dequantizer is not None and getattr(dequantizer, 'trainable', False):
        raise ValueError(f"Flow matching does not train the dequantiser, "
                         f"but {type(dequantizer).__name__} has trainable "
                         f"parameters; build the model with "
                         f"dequantizer='uniform' (or freeze it)")
