r"""The E-NF molecule model: atom count, atom types, charges and positions."""
from typing import (Any, Dict, NamedTuple, Optional, Sequence, Tuple,
                    Union)

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data

from torch_enf.elements import QM9_ATOMIC_NUMBERS
from torch_enf.flows.actnorm import ActNorm
from torch_enf.flows.dequantization import DEQUANTIZERS, Dequantizer
from torch_enf.flows.enflow import ENFlow, FlowInputs
from torch_enf.flows.node_count import NodeCountDistribution
from torch_enf.utils import (center_pos_exact, check_batch_vector,
                             check_positive_integer, default_batch,
                             graph_sizes)


class _Transformed(NamedTuple):
    pos: Tensor
    h_flow: Tensor
    batch: Tensor
    num_graphs: int
    sizes: Tensor
    log_det: Tensor
    log_q: Tensor
    atom_class: Tensor


class MoleculeFlow(torch.nn.Module):
    r"""The molecule model of the `"E(n) Equivariant Normalizing Flows"
    <https://arxiv.org/abs/2105.09016>`_ paper: a joint distribution of the
    number of atoms :math:`M`, the atom types and charges :math:`\mathbf{h}`
    and the positions :math:`\mathbf{x}` of a molecule,

    .. math::
        \log p(\mathbf{x}, \mathbf{h}, M) \geq \log p(M) +
        \mathbb{E}_{\mathbf{v} \sim q(\cdot \mid \mathbf{h}, \mathbf{x})}
        \left[\log p_{\text{flow}}(\mathbf{x}, \mathbf{v} / \mathbf{a})
        - M \sum_c \log a_c - \log q(\mathbf{v} \mid \mathbf{h},
        \mathbf{x})\right],

    with :math:`p(M)` a :class:`NodeCountDistribution`,
    :math:`q` a dequantiser (:class:`UniformDequantizer` or
    :class:`VariationalDequantizer`), :math:`\mathbf{a}` a fixed per-channel
    feature scale and :math:`p_{\text{flow}}` an :class:`ENFlow` with
    :obj:`node_channels` :math:`= F`. An optional :class:`ActNorm` sits between
    the scaling and the flow and adds its log-determinant.

    Feature scaling: the dequantised one-hot block lies in :math:`[0, 2)`
    (uniform) and the charges in :math:`[1, 10)`. Dividing them by
    :math:`\mathbf{a} = (4, 4, 4, 4, 4, 10)` (the default) brings both to
    roughly unit range, similar to the positions in Angstrom, so that no
    channel dominates the EGNN's inputs; the change of variables adds
    :math:`-M \sum_c \log a_c` per graph.

    Everything is evaluated per graph on PyG batches of mixed-size molecules
    without padding. The value returned by :meth:`log_prob` is a one-sample
    estimate of the variational lower bound (exact for the flow part when
    :obj:`trace="exact"`).

    Args:
        node_count (NodeCountDistribution): :math:`p(M)`, *e.g.* from the
            training sizes. Sizes below 2 must have zero probability.
        flow (ENFlow, optional): The flow on positions and features; its
            :obj:`node_channels` must equal the feature width. (default: an
            :class:`ENFlow` of :obj:`flow_kwargs`)
        dequantizer (str or Dequantizer, optional): A name from
            :obj:`DEQUANTIZERS` (:obj:`"uniform"`, :obj:`"argmax"`,
            :obj:`"variational"`) or a :class:`Dequantizer`. (default:
            :obj:`"variational"`)
        dequantizer_kwargs (dict, optional): Further arguments of the
            dequantiser named by :obj:`dequantizer`, *e.g.*
            :obj:`dict(margin=2.0)`; its classes and the charge column
            follow from :obj:`atomic_numbers`. (default: :obj:`None`)
        atomic_numbers (sequence of int, optional): The atomic number of each
            one-hot class. (default: H, C, N, O, F = :obj:`(1, 6, 7, 8, 9)`)
        feature_scale (sequence of float, optional): :math:`\mathbf{a}`.
            (default: four for every one-hot column, ten for the charge)
        actnorm (bool, optional): Insert a learnable :class:`ActNorm`;
            call :meth:`initialize` on training data before training.
            (default: :obj:`False`)
        **flow_kwargs: Passed to :class:`ENFlow` when :obj:`flow` is
            :obj:`None`.
    """
    feature_scale: Tensor
    atomic_numbers: Tensor

    def __init__(
        self,
        node_count: NodeCountDistribution,
        flow: Optional[ENFlow] = None,
        dequantizer: Union[str, Dequantizer] = 'variational',
        dequantizer_kwargs: Optional[Dict[str, Any]] = None,
        atomic_numbers: Sequence[int] = QM9_ATOMIC_NUMBERS,
        feature_scale: Optional[Sequence[float]] = None,
        actnorm: bool = False,
        **flow_kwargs,
    ):
        super().__init__()
        if float(node_count.probs[:2].sum()) > 0:
            raise ValueError("'node_count' gives molecules of fewer than 2 "
                             "atoms non-zero probability; the flow on "
                             "centred positions is undefined for them")
        num_classes = len(atomic_numbers)
        if isinstance(dequantizer, str):
            dequantizer = DEQUANTIZERS.create(dequantizer,
                                              num_classes=num_classes,
                                              num_integer=1,
                                              **(dequantizer_kwargs or {}))
        elif dequantizer_kwargs:
            raise ValueError("'dequantizer_kwargs' needs the dequantizer by "
                             "name, not an instance")
        if getattr(dequantizer, 'num_classes', None) != num_classes:
            raise ValueError(f"The dequantizer must have {num_classes} "
                             f"classes, one per atomic number")
        channels = dequantizer.channels
        if feature_scale is None:
            feature_scale = [4.0] * num_classes + [10.0] * (channels -
                                                            num_classes)
        feature_scale = torch.as_tensor(feature_scale, dtype=torch.float)
        if feature_scale.shape != (channels, ) or \
                not bool((feature_scale > 0).all()):
            raise ValueError(f"'feature_scale' must hold {channels} positive "
                             f"values (got {feature_scale.tolist()})")
        if flow is None:
            flow = ENFlow(3, channels, **flow_kwargs)
        if flow.node_channels != channels:
            raise ValueError(f"The flow must have node_channels={channels} "
                             f"(got {flow.node_channels})")
        self.node_count = node_count
        self.dequantizer = dequantizer
        self.flow = flow
        self.actnorm = ActNorm(flow.n_dims, channels) if actnorm else None
        self.register_buffer('feature_scale', feature_scale)
        self.register_buffer('atomic_numbers',
                             torch.as_tensor(atomic_numbers))

    @property
    def channels(self) -> int:
        r"""The feature width :math:`F`."""
        return self.dequantizer.channels

    def forward(self, data: Batch, trace: Optional[str] = None,
                return_regularization: bool = False
                ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        r"""Alias of :meth:`log_prob` (so that
        :class:`~torch.nn.parallel.DistributedDataParallel` can wrap the
        model)."""
        return self.log_prob(data, trace, return_regularization)

    def log_prob(self, data: Batch, trace: Optional[str] = None,
                 return_regularization: bool = False
                 ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        r"""The variational lower bound of
        :math:`\log p(\mathbf{x}, \mathbf{h}, M)` of every molecule, in nats.

        Args:
            data (torch_geometric.data.Batch): Molecules with :obj:`pos`
                :obj:`[N, 3]` and discrete :obj:`h` :obj:`[N, F]`.
            trace (str, optional): Trace of the flow, see
                :meth:`ENFlow.log_prob`.
            return_regularization (bool, optional): Also return the flow's
                regulariser per graph.

        Returns:
            torch.Tensor: Shape :obj:`[num_graphs]` (and the regulariser).
        """
        x = self._transform(data)
        out = self.flow.log_prob(Data(pos=x.pos, h=x.h_flow, batch=x.batch),
                                 trace=trace,
                                 return_regularization=return_regularization)
        flow_log_prob, reg = out if return_regularization else (out, None)
        log_prob = self.node_count.log_prob(x.sizes).to(x.log_q.dtype) + \
            flow_log_prob + x.log_det - x.log_q
        return (log_prob, reg) if return_regularization else log_prob

    def flow_inputs(self, data: Batch) -> FlowInputs:
        r"""The state of the inner :class:`ENFlow` at :math:`t = 0` for
        :obj:`data`: centred positions and the dequantised, scaled (and
        ActNorm-ed) features, with the atom class of every node as
        :obj:`node_type`. The dequantisation noise is drawn anew at every
        call. Used by :class:`~torch_enf.objectives.FlowMatching`."""
        x = self._transform(data)
        return FlowInputs(center_pos_exact(x.pos, x.batch, x.num_graphs),
                          x.h_flow,
                          x.batch, x.num_graphs, x.atom_class)

    def velocity(self, t: Tensor, pos: Tensor, h: Tensor, batch: Tensor,
                 num_graphs: int) -> Tuple[Tensor, Tensor]:
        r"""The vector field of the inner flow, see
        :meth:`ENFlow.velocity`."""
        return self.flow.velocity(t, pos, h, batch, num_graphs)

    def sample_base(self, batch: Tensor, num_graphs: int,
                    generator: Optional[torch.Generator] = None
                    ) -> Tuple[Tensor, Tensor]:
        r"""Base samples of the inner flow, see :meth:`ENFlow.sample_base`."""
        return self.flow.sample_base(batch, num_graphs, generator)

    @torch.no_grad()
    def initialize(self, data: Batch) -> None:
        r"""Data-initialises the :class:`ActNorm` (if any) from a batch of
        training molecules, after dequantisation and feature scaling."""
        if self.actnorm is None:
            return
        x = self._transform(data, actnorm=False)
        self.actnorm.initialize(x.pos, x.h_flow, x.batch)

    @torch.no_grad()
    def sample(self, num_samples: int,
               generator: Optional[torch.Generator] = None,
               batch_size: Optional[int] = None,
               progress: bool = False, temperature: float = 1.0) -> Batch:
        r"""Draws molecules: sizes from :math:`p(M)`, then positions and
        continuous features from the flow, quantised by the dequantiser's
        inverse.

        Args:
            num_samples (int): The number of molecules.
            generator (torch.Generator, optional): Source of the noise.
            batch_size (int, optional): Molecules per ODE solve (all at
                once by default).
            progress (bool, optional): Show a progress bar.
            temperature (float, optional): The scale of the flow's latents,
                see :meth:`ENFlow.sample`: below 1, sharper and less diverse
                molecules that no longer follow the model's density.
                (default: :obj:`1.0`)

        Returns:
            torch_geometric.data.Batch: Molecules with :obj:`pos` (centred,
            Angstrom), discrete :obj:`h` :obj:`[N, F]` and :obj:`z`, the
            atomic number of the arg-max class.
        """
        check_positive_integer(num_samples, 'num_samples')
        device = self.feature_scale.device
        sizes = self.node_count.sample(num_samples, generator=generator)
        latent = self.flow.sample(sizes.to(device), generator=generator,
                                  batch_size=batch_size, progress=progress,
                                  temperature=temperature)
        return self.to_molecules(latent.pos, latent.h, sizes)

    @torch.no_grad()
    def to_molecules(self, pos: Tensor, h_flow: Tensor,
                     sizes: Union[Tensor, Sequence[int]]) -> Batch:
        r"""Molecules from states of the inner flow at :math:`t = 0`
        (the inverse of :meth:`flow_inputs` up to the dequantisation
        noise): the ActNorm and the feature scaling are undone and the
        features quantised by the dequantiser's inverse.

        Args:
            pos (torch.Tensor): Positions :obj:`[N, n]`.
            h_flow (torch.Tensor): Continuous features :obj:`[N, F]`.
            sizes (torch.Tensor or list): The number of atoms of each
                molecule, in order.

        Returns:
            torch_geometric.data.Batch: Molecules with :obj:`pos`, discrete
            :obj:`h` and :obj:`z`, as :meth:`sample` returns them.
        """
        if self.actnorm is not None:
            pos, h_flow = self.actnorm.inverse(pos, h_flow)
        h = self.dequantizer.inverse(h_flow * self.feature_scale)
        z = self.atomic_numbers[h[:, :len(self.atomic_numbers)].argmax(-1)]
        split = torch.as_tensor(sizes).tolist()
        if sum(split) != pos.size(0):
            raise ValueError(f"'sizes' add up to {sum(split)} atoms, but "
                             f"'pos' holds {pos.size(0)}")
        return Batch.from_data_list([
            Data(pos=p, h=f, z=a)
            for p, f, a in zip(pos.split(split), h.split(split),
                               z.split(split))
        ])

    def _transform(self, data: Batch, actnorm: bool = True) -> _Transformed:
        r"""Dequantises, scales and (with :obj:`actnorm`) normalises the
        molecules, with the log-determinant of the scalings and
        :math:`\log q` per graph."""
        pos, h, batch, num_graphs = self._read(data)
        sizes = graph_sizes(batch, num_graphs)
        h_cont, log_q = self.dequantizer(h, pos, batch)
        scale = self.feature_scale.to(h_cont.dtype)
        h_flow = h_cont / scale
        log_det = -sizes.to(h_cont.dtype) * scale.log().sum()
        if actnorm and self.actnorm is not None:
            pos, h_flow, actnorm_log_det = self.actnorm(pos, h_flow, batch)
            log_det = log_det + actnorm_log_det
        atom_class = h[:, :len(self.atomic_numbers)].argmax(dim=-1)
        return _Transformed(pos, h_flow, batch, num_graphs, sizes, log_det,
                            log_q, atom_class)

    def _read(self, data: Batch) -> Tuple[Tensor, Tensor, Tensor, int]:
        pos, h = getattr(data, 'pos', None), getattr(data, 'h', None)
        if pos is None or h is None:
            raise ValueError("MoleculeFlow needs molecules with 'pos' and "
                             "'h'")
        if pos.dim() != 2 or pos.size(-1) != self.flow.n_dims:
            raise ValueError(f"'pos' must have shape [num_nodes, "
                             f"{self.flow.n_dims}] (got {list(pos.shape)})")
        batch = getattr(data, 'batch', None)
        if batch is None:
            batch = default_batch(pos.size(0), pos.device)
        check_batch_vector(batch, pos.size(0))
        if batch.numel() == 0:
            raise ValueError('The input holds no molecules')
        dtype = next(self.flow.parameters()).dtype
        return pos.to(dtype), h.to(dtype), batch, int(batch[-1]) + 1

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(flow={self.flow}, dequantizer='
                f'{self.dequantizer.__class__.__name__}, actnorm='
                f'{self.actnorm is not None})')
