r"""Dequantisation of discrete node features, so that a continuous flow can
model them.

Node features are laid out as in :class:`~torch_enf.datasets.QM9`: a one-hot
encoding over :obj:`num_classes` categories (the atom type) followed by
:obj:`num_integer` integer columns (the nuclear charge). A dequantiser maps
the discrete :math:`\mathbf{h}` to continuous :math:`\mathbf{v}` drawn from
:math:`q(\mathbf{v} \mid \mathbf{h}, \mathbf{x})`, whose support lies inside
the cell of :math:`\mathbf{h}`: the set of :math:`\mathbf{v}` that
:meth:`inverse` maps back to :math:`\mathbf{h}`. These cells are disjoint,
so for any continuous density :math:`p`,

.. math::
    \log P(\mathbf{h} \mid \mathbf{x}) \geq \mathbb{E}_{\mathbf{v} \sim q}
    \left[\log p(\mathbf{v} \mid \mathbf{x}) -
    \log q(\mathbf{v} \mid \mathbf{h}, \mathbf{x})\right].

The common inverse (the quantiser) is

* one-hot columns: :math:`\mathrm{onehot}(\arg\max_k v_k)`;
* integer columns: :math:`\lfloor v \rfloor`.
"""
import abc
import math
from typing import Callable, Optional, Tuple, Type

import torch
import torch.nn.functional as F
from torch import Tensor

from torch_enf.nn import EGNN, full_edge_index
from torch_enf.utils import (Registry, check_batch_vector, check_finite,
                             check_non_negative_number, default_batch,
                             num_graphs_of, scatter_sum)


class Dequantizer(torch.nn.Module):
    r"""Base class of the dequantisers: the feature layout (:obj:`num_classes`
    one-hot columns, then :obj:`num_integer` integer columns), input checks
    and the quantiser :meth:`inverse`.

    A subclass implements :obj:`forward(h, pos, batch, generator=None)`
    returning :obj:`(h_cont, log_q)`: continuous features :obj:`[N, F]`
    inside the cell of :obj:`h` and :math:`\log q(\mathbf{v} \mid
    \mathbf{h}, \mathbf{x})` per graph, :obj:`[num_graphs]`. Decorate it
    with :func:`register_dequantizer` to make it available by name to
    :class:`~torch_enf.flows.MoleculeFlow` and the training scripts.

    Args:
        num_classes (int, optional): Width of the one-hot block.
            (default: :obj:`5`)
        num_integer (int, optional): Number of integer columns after it.
            (default: :obj:`1`)
    """
    def __init__(self, num_classes: int = 5, num_integer: int = 1):
        super().__init__()
        if num_classes < 2 or num_integer < 0:
            raise ValueError(f"Need at least 2 classes and a non-negative "
                             f"number of integer columns (got num_classes="
                             f"{num_classes}, num_integer={num_integer})")
        self.num_classes = num_classes
        self.num_integer = num_integer

    @property
    def trainable(self) -> bool:
        r"""Whether :math:`q` has parameters to learn (then only a
        likelihood objective can fit it)."""
        return any(p.requires_grad for p in self.parameters())

    @property
    def channels(self) -> int:
        r"""The feature width :math:`F`: one-hot plus integer columns."""
        return self.num_classes + self.num_integer

    def inverse(self, h_cont: Tensor) -> Tensor:
        r"""Quantises continuous features :obj:`[N, F]`: the one-hot of the
        arg-max of the first :obj:`num_classes` columns, the floor of the
        others."""
        self._check_width(h_cont, 'h_cont')
        check_finite(h_cont, 'h_cont')
        logits, integer = h_cont.split([self.num_classes, self.num_integer],
                                       dim=-1)
        one_hot = F.one_hot(logits.argmax(dim=-1), self.num_classes)
        return torch.cat([one_hot.to(h_cont.dtype), integer.floor()], dim=-1)

    def _check_width(self, h: Tensor, name: str) -> None:
        if h.dim() != 2 or h.size(-1) != self.channels:
            raise ValueError(f"'{name}' must have shape [num_nodes, "
                             f"{self.channels}] ({self.num_classes} one-hot "
                             f"+ {self.num_integer} integer columns; got "
                             f"{list(h.shape)})")

    def _check_discrete(self, h: Tensor, batch: Optional[Tensor]
                        ) -> Tuple[Tensor, int]:
        self._check_width(h, 'h')
        check_finite(h, 'h')
        one_hot, integer = h.split([self.num_classes, self.num_integer],
                                   dim=-1)
        if not bool(((one_hot == 0) | (one_hot == 1)).all()) or \
                not bool((one_hot.sum(-1) == 1).all()):
            raise ValueError(f"The first {self.num_classes} columns of 'h' "
                             f"must be one-hot (a single 1 per row)")
        if not torch.equal(integer, integer.round()):
            raise ValueError(f"The last {self.num_integer} columns of 'h' "
                             f"must hold integers")
        if batch is None:
            batch = default_batch(h.size(0), h.device)
        check_batch_vector(batch, h.size(0))
        return batch, num_graphs_of(batch)


DEQUANTIZERS = Registry(Dequantizer, 'dequantizer')
r"""The dequantisers by name; see :func:`register_dequantizer`."""


def register_dequantizer(name: str) -> Callable[[Type[Dequantizer]],
                                                Type[Dequantizer]]:
    r"""Class decorator that adds a :class:`Dequantizer` subclass to
    :obj:`DEQUANTIZERS` under :obj:`name`."""
    return DEQUANTIZERS.register(name)


@register_dequantizer('uniform')
class UniformDequantizer(Dequantizer):
    r"""Uniform dequantisation: :math:`\mathbf{v} = \mathbf{h} +
    \mathbf{u}` with :math:`\mathbf{u} \sim U[0, 1)^F`.

    On a one-hot row the true class lands in :math:`[1, 2)` and the others in
    :math:`[0, 1)`, so the arg-max recovers it; an integer :math:`c` lands in
    :math:`[c, c + 1)`, so the floor recovers it. The density of the unit
    cube is one: :math:`\log q(\mathbf{u}) = 0`.

    Args:
        num_classes (int, optional): Width of the one-hot block.
            (default: :obj:`5`)
        num_integer (int, optional): Number of integer columns after it.
            (default: :obj:`1`)
    """
    def forward(self, h: Tensor, pos: Optional[Tensor] = None,
                batch: Optional[Tensor] = None,
                generator: Optional[torch.Generator] = None
                ) -> Tuple[Tensor, Tensor]:
        r"""Dequantises :obj:`h` of shape :obj:`[N, F]`.

        Returns:
            :obj:`(h_cont, log_q)` of shapes :obj:`[N, F]` and
            :obj:`[num_graphs]` (zeros).
        """
        batch, num_graphs = self._check_discrete(h, batch)
        noise = torch.rand(h.shape, generator=generator, dtype=h.dtype,
                           device=h.device)
        return h + noise, h.new_zeros(num_graphs)


class ThresholdDequantizer(Dequantizer, metaclass=abc.ABCMeta):
    r"""Base class of the dequantisers that draw a Gaussian
    :math:`\boldsymbol{\epsilon} = \boldsymbol{\mu} + e^{\mathbf{s}}
    \odot \mathbf{n}`, :math:`\mathbf{n} \sim \mathcal{N}(0, I)`, per node
    and push it into the cell of :math:`\mathbf{h}`, with the arg-max
    construction of `"Argmax Flows and Multinomial Diffusion"
    <https://arxiv.org/abs/2102.05379>`_ for the one-hot block:

    * one-hot block with true class :math:`k^*`: the threshold map
      :math:`v_{k^*} = T = \epsilon_{k^*}`,
      :math:`v_k = T - m - \mathrm{softplus}(T - \epsilon_k)` for
      :math:`k \neq k^*`, so every :math:`v_k < T - m` and the arg-max is
      :math:`k^*`. Its Jacobian is triangular with diagonal
      :math:`\sigma(T - \epsilon_k)`;
    * integer column :math:`c`: :math:`v = c + \sigma(\epsilon) \in
      (c, c + 1)`, with derivative :math:`\sigma(\epsilon)(1 -
      \sigma(\epsilon))`.

    Hence, per graph,

    .. math::
        \log q(\mathbf{v} \mid \mathbf{h}, \mathbf{x}) = \sum_{i}
        \Big[\log \mathcal{N}(\boldsymbol{\epsilon}_i \mid
        \boldsymbol{\mu}_i, e^{2\mathbf{s}_i})
        - \sum_{k \neq k^*_i} \log \sigma(T_i - \epsilon_{ik})
        - \sum_{\text{integer } j} \log \sigma(\epsilon_{ij})
        \sigma(-\epsilon_{ij})\Big].

    The margin :math:`m \geq 0` (:obj:`margin`) leaves a gap of at least
    :math:`m` between the true class and every other one. Without it
    (:math:`m = 0`, the construction of the paper) one atom in six of a
    five-class one-hot block with :math:`\mathcal{N}(0, I)` noise has a
    losing class within 0.1 of the winner, so a sampled feature vector a
    little off the data decodes to another class; a margin makes the
    decoded class robust to such errors (QM9 molecules noised to
    :math:`t = 0.02` along the flow-matching paths and carried back by a
    flow-matched model kept 97-98 % of their atom types without a margin,
    all of them with :math:`m = 1`). The shift does not change
    :math:`\log q`, and the support stays inside the cell of
    :math:`\mathbf{h}`, so the bound stays valid.

    Unlike uniform noise, whose density jumps to zero at the faces of the
    cell, this density vanishes smoothly towards the cell boundary, which a
    continuous flow fits far better. The one-hot block is unbounded
    (real-valued "logits"); the integer block lies in :math:`(c, c + 1)`,
    as with :class:`UniformDequantizer`. In floating point a losing
    :math:`v_k` rounds to :math:`T` (a tie) only when :math:`\epsilon_k - T`
    exceeds about 17 (float32) or 37 (float64); such draws cost
    :math:`-\log \sigma(T - \epsilon_k) \approx \epsilon_k - T` nats in
    the bound.

    Subclasses implement :meth:`posterior`, returning
    :math:`(\boldsymbol{\mu}, \mathbf{s})`.

    Args:
        num_classes (int, optional): Width of the one-hot block.
            (default: :obj:`5`)
        num_integer (int, optional): Number of integer columns after it.
            (default: :obj:`1`)
        margin (float, optional): The gap :math:`m` between the true class
            and the others. (default: :obj:`0.0`)
    """
    def __init__(self, num_classes: int = 5, num_integer: int = 1,
                 margin: float = 0.0):
        super().__init__(num_classes, num_integer)
        check_non_negative_number(margin, 'margin')
        self.margin = float(margin)

    @abc.abstractmethod
    def posterior(self, h: Tensor, pos: Tensor, batch: Tensor,
                  num_graphs: int) -> Tuple[Tensor, Tensor]:
        r"""The mean and log-scale :obj:`[N, F]` of
        :math:`\boldsymbol{\epsilon}`."""

    def forward(self, h: Tensor, pos: Tensor, batch: Optional[Tensor] = None,
                generator: Optional[torch.Generator] = None,
                noise: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        r"""Draws :math:`\mathbf{v} \sim q(\cdot \mid \mathbf{h},
        \mathbf{x})`.

        Args:
            h (torch.Tensor): Discrete features of shape :obj:`[N, F]`.
            pos (torch.Tensor): Positions of shape :obj:`[N, n]`.
            batch (torch.Tensor, optional): Graph assignment :obj:`[N]`.
            generator (torch.Generator, optional): Source of the noise.
            noise (torch.Tensor, optional): The standard normal
                :math:`\mathbf{n}` of shape :obj:`[N, F]`, drawn when not
                given.

        Returns:
            :obj:`(h_cont, log_q)` of shapes :obj:`[N, F]` and
            :obj:`[num_graphs]`.
        """
        batch, num_graphs = self._check_discrete(h, batch)
        if pos.dim() != 2 or pos.size(0) != h.size(0):
            raise ValueError(f"'pos' must have shape [{h.size(0)}, n] to "
                             f"match 'h' (got {list(pos.shape)})")
        check_finite(pos, 'pos')
        mean, log_scale = self.posterior(h, pos.to(h.dtype), batch,
                                         num_graphs)
        if noise is None:
            noise = torch.randn(h.shape, generator=generator, dtype=h.dtype,
                                device=h.device)
        elif noise.shape != h.shape:
            raise ValueError(f"'noise' must have shape {list(h.shape)} (got "
                             f"{list(noise.shape)})")
        eps = mean + log_scale.exp() * noise
        log_q = (-0.5 * noise.pow(2) - log_scale -
                 0.5 * math.log(2 * math.pi)).sum(-1)

        one_hot, integer = h.split([self.num_classes, self.num_integer], -1)
        eps_cls, eps_int = eps.split([self.num_classes, self.num_integer], -1)
        winner = one_hot.bool()
        top = (eps_cls * one_hot).sum(-1, keepdim=True)
        v_cls = torch.where(winner, top,
                            top - self.margin - F.softplus(top - eps_cls))
        log_q = log_q - F.logsigmoid(top - eps_cls).masked_fill(
            winner, 0.0).sum(-1)
        v_int = integer + torch.sigmoid(eps_int)
        log_q = log_q - (F.logsigmoid(eps_int) +
                         F.logsigmoid(-eps_int)).sum(-1)
        h_cont = torch.cat([v_cls, v_int], dim=-1)
        return h_cont, scatter_sum(log_q, batch, num_graphs)


@register_dequantizer('argmax')
class ArgmaxDequantizer(ThresholdDequantizer):
    r"""The threshold dequantisation of :class:`ThresholdDequantizer` with a
    fixed standard normal :math:`\boldsymbol{\epsilon}`: no parameters,
    so it suits objectives that do not train the dequantiser (flow
    matching) while :math:`\log q` stays exact and the bound of
    :class:`~torch_enf.flows.MoleculeFlow` valid. It equals an untrained
    :class:`VariationalDequantizer`.

    Args:
        num_classes (int, optional): Width of the one-hot block.
            (default: :obj:`5`)
        num_integer (int, optional): Number of integer columns after it.
            (default: :obj:`1`)
        margin (float, optional): The gap between the true class and the
            others, see :class:`ThresholdDequantizer`. (default: :obj:`0.0`)
    """
    def posterior(self, h: Tensor, pos: Tensor, batch: Tensor,
                  num_graphs: int) -> Tuple[Tensor, Tensor]:
        zeros = torch.zeros_like(h)
        return zeros, zeros


@register_dequantizer('variational')
class VariationalDequantizer(ThresholdDequantizer):
    r"""Variational dequantisation with an E(n)-invariant posterior, as in
    the `"E(n) Equivariant Normalizing Flows"
    <https://arxiv.org/abs/2105.09016>`_ paper, with the arg-max
    construction of `"Argmax Flows and Multinomial Diffusion"
    <https://arxiv.org/abs/2102.05379>`_ for the one-hot block.

    An :class:`~torch_enf.nn.EGNN` on the fully connected graph of each
    molecule reads :math:`(\mathbf{h}, \mathbf{x})` and outputs, per node, the
    mean :math:`\boldsymbol{\mu}` and log-scale :math:`\mathbf{s}` of the
    Gaussian that :class:`ThresholdDequantizer` pushes into the cell of
    :math:`\mathbf{h}`.

    The posterior is invariant to rotations, reflections, translations and
    node permutations because the EGNN's feature output is. Its read-out
    starts at zero, so an untrained posterior is :math:`\mathcal{N}(0, I)`.

    Args:
        num_classes (int, optional): Width of the one-hot block.
            (default: :obj:`5`)
        num_integer (int, optional): Number of integer columns after it.
            (default: :obj:`1`)
        hidden_channels (int, optional): Width of the posterior EGNN.
            (default: :obj:`32`)
        num_layers (int, optional): Depth of the posterior EGNN.
            (default: :obj:`2`)
        margin (float, optional): The gap between the true class and the
            others, see :class:`ThresholdDequantizer`. (default: :obj:`0.0`)
    """
    def __init__(self, num_classes: int = 5, num_integer: int = 1,
                 hidden_channels: int = 32, num_layers: int = 2,
                 margin: float = 0.0):
        super().__init__(num_classes, num_integer, margin)
        self.net = EGNN(self.channels, hidden_channels, num_layers,
                        2 * self.channels, coords_norm=1.0)
        self.reset_parameters()

    def reset_parameters(self):
        r"""Resets all learnable parameters; the posterior starts as
        :math:`\mathcal{N}(0, I)`."""
        self.net.reset_parameters()
        torch.nn.init.zeros_(self.net.lin_out.weight)
        torch.nn.init.zeros_(self.net.lin_out.bias)

    def posterior(self, h: Tensor, pos: Tensor, batch: Tensor,
                  num_graphs: int) -> Tuple[Tensor, Tensor]:
        params, _ = self.net(h, pos, full_edge_index(batch, num_graphs))
        mean, log_scale = params.chunk(2, dim=-1)
        return mean, log_scale
