r"""The distribution :math:`p(M)` of the number of nodes per graph."""
from typing import Iterable, Optional

import torch
from torch import Tensor

from torch_enf.utils import check_non_negative_number


class NodeCountDistribution(torch.nn.Module):
    r"""A categorical distribution over the number of nodes :math:`M` of a
    graph, estimated from the histogram of a training set:

    .. math::
        p(M) = \frac{c_M + \alpha}{\sum_{M'} (c_{M'} + \alpha)},

    where :math:`c_M` counts the training graphs with :math:`M` nodes and
    :math:`\alpha` is the additive :obj:`smoothing` (applied to every count
    from 1 up to :obj:`max_nodes`). With :obj:`smoothing=0` (the default),
    evaluating an unseen :math:`M` raises :class:`ValueError` instead of
    returning :math:`\log 0 = -\infty`.

    Args:
        histogram (Tensor): :obj:`histogram[M]` is the number of graphs with
            :obj:`M` nodes, shape :obj:`[max_nodes + 1]`. :obj:`histogram[0]`
            must be zero (graphs have at least one node).
        smoothing (float, optional): Added to the counts of 1 to
            :obj:`max_nodes` nodes. (default: :obj:`0.0`)
    """

    probs: Tensor

    def __init__(self, histogram: Tensor, smoothing: float = 0.0) -> None:
        super().__init__()
        histogram = torch.as_tensor(histogram, dtype=torch.float64)
        if histogram.dim() != 1 or histogram.numel() < 2:
            raise ValueError(f"'histogram' must be a vector indexed by the "
                             f"node count, got shape {tuple(histogram.shape)}")
        if not torch.isfinite(histogram).all() or (histogram < 0).any():
            raise ValueError("'histogram' must hold finite, non-negative "
                             "counts")
        if histogram[0] != 0:
            raise ValueError("'histogram[0]' counts graphs without nodes; it "
                             "must be zero")
        check_non_negative_number(smoothing, 'smoothing')
        counts = histogram.clone()
        counts[1:] += smoothing
        if counts.sum() <= 0:
            raise ValueError("'histogram' is empty")
        self.smoothing = smoothing
        self.register_buffer('probs', (counts / counts.sum()).float())

    @classmethod
    def from_num_nodes(cls, num_nodes: Iterable[int],
                       smoothing: float = 0.0) -> 'NodeCountDistribution':
        r"""Builds the distribution from the node counts of the training
        graphs, *e.g.*, :obj:`[len(data.pos) for data in dataset]`."""
        num_nodes = torch.as_tensor(list(num_nodes) if not isinstance(
            num_nodes, Tensor) else num_nodes, dtype=torch.long).flatten()
        if num_nodes.numel() == 0 or (num_nodes < 1).any():
            raise ValueError("'num_nodes' must be a non-empty collection of "
                             "positive node counts")
        return cls(torch.bincount(num_nodes), smoothing=smoothing)

    @classmethod
    def from_dataset(cls, dataset,
                     smoothing: float = 0.0) -> 'NodeCountDistribution':
        r"""Builds the distribution from the graphs of a PyG dataset (or any
        iterable of :class:`~torch_geometric.data.Data`)."""
        return cls.from_num_nodes((data.num_nodes for data in dataset),
                                  smoothing=smoothing)

    @classmethod
    def placeholder(cls, max_nodes: int) -> 'NodeCountDistribution':
        r"""A stand-in of support up to :obj:`max_nodes`, uniform over 2 to
        :obj:`max_nodes` nodes, for a model rebuilt from its configuration
        whose :meth:`load_state_dict` then sets the trained
        probabilities."""
        histogram = torch.zeros(max_nodes + 1)
        histogram[2:] = 1.0
        return cls(histogram)

    @property
    def max_nodes(self) -> int:
        r"""The largest node count of the support."""
        return self.probs.numel() - 1

    def log_prob(self, num_nodes: Tensor) -> Tensor:
        r"""Returns :math:`\log p(M)` for node counts of any shape.

        Raises:
            ValueError: If a count has zero probability.
        """
        num_nodes = torch.as_tensor(num_nodes, device=self.probs.device)
        if num_nodes.is_floating_point() and not torch.equal(
                num_nodes, num_nodes.round()):
            raise ValueError("'num_nodes' must hold integers")
        num_nodes = num_nodes.long()
        outside = (num_nodes < 0) | (num_nodes > self.max_nodes)
        probs = self.probs[num_nodes.clamp(0, self.max_nodes)]
        unseen = outside | (probs == 0)
        if unseen.any():
            raise ValueError(
                f"Node count {int(num_nodes[unseen].flatten()[0])} has zero "
                f"probability (seen counts: "
                f"{self.probs.nonzero().flatten().tolist()}); pass "
                f"'smoothing' > 0 to give counts up to {self.max_nodes} "
                f"non-zero mass")
        return probs.log()

    def sample(self, num_samples: int,
               generator: Optional[torch.Generator] = None) -> Tensor:
        r"""Draws :obj:`num_samples` node counts, a :obj:`LongTensor` of shape
        :obj:`[num_samples]`."""
        if num_samples < 0:
            raise ValueError(f"'num_samples' must be non-negative, got "
                             f"{num_samples}")
        return torch.multinomial(self.probs, num_samples, replacement=True,
                                 generator=generator)

    def extra_repr(self) -> str:
        return f'max_nodes={self.max_nodes}, smoothing={self.smoothing}'
