r"""Checking the symmetries of models on batched graphs, for tests of layers,
flows and objectives (here and in user code)."""
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from torch_enf.utils import default_batch

OUTPUT_KINDS = ('positions', 'vectors', 'node', 'graph')
r"""How an output transforms: :obj:`"positions"` rotate, reflect,
translate and permute with the input; :obj:`"vectors"` (velocities,
shifts) rotate, reflect and permute; :obj:`"node"` (invariant node
features) permute; :obj:`"graph"` (one value per graph, *e.g.* a
log-likelihood) stay the same."""


def random_orthogonal(n: int, generator: Optional[torch.Generator] = None,
                      reflect: bool = True,
                      dtype: torch.dtype = torch.float64) -> Tensor:
    r"""A random orthogonal :obj:`[n, n]` matrix: a reflection
    (determinant :math:`-1`) when :obj:`reflect`, a rotation otherwise."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator,
                                       dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if reflect == bool(torch.det(q) > 0):
        q[:, 0] = -q[:, 0]
    return q.to(dtype)


def permutation_within_graphs(batch: Tensor,
                              generator: Optional[torch.Generator] = None
                              ) -> Tensor:
    r"""A random node permutation that keeps every node inside its own graph,
    so that the permuted assignment vector stays sorted."""
    noise = torch.rand(batch.numel(), generator=generator,
                       dtype=torch.float64).to(batch.device)
    return torch.argsort(batch.double() + noise)  # shuffled inside graphs


def assert_equivariant(
    function: Callable[..., Union[Tensor, Tuple[Tensor, ...]]],
    pos: Tensor,
    h: Optional[Tensor] = None,
    batch: Optional[Tensor] = None,
    outputs: Sequence[str] = ('positions', ),
    *,
    vectors: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
    reflect: bool = True,
    translate: bool = True,
    permute: bool = True,
    atol: float = 1e-6,
    rtol: float = 1e-5,
) -> Tuple[Tensor, ...]:
    r"""Asserts that :obj:`function(pos, h, batch)` is E(n)-equivariant and
    permutation-equivariant: with a random orthogonal map :math:`Q` (a
    reflection unless :obj:`reflect=False`), a random translation
    :math:`\mathbf{t}` and a random permutation :math:`\pi` of the nodes
    within their graphs,

    .. math::
        f(\pi(\mathbf{x} Q^\top + \mathbf{t}), \pi(\mathbf{h})) =
        T_{\text{out}}(f(\mathbf{x}, \mathbf{h})),

    where every output transforms by its kind in :obj:`OUTPUT_KINDS`. The
    function builds whatever graph it needs from its inputs (*e.g.*
    :func:`~torch_enf.nn.full_edge_index` of :obj:`batch`).

    Args:
        function (callable): Called as :obj:`function(pos, h, batch)`;
            returns one tensor or a tuple.
        pos (torch.Tensor): Positions :obj:`[N, n]`.
        h (torch.Tensor, optional): Node features :obj:`[N, F]`.
        batch (torch.Tensor, optional): Sorted graph assignment :obj:`[N]`.
        outputs (sequence of str): The kind of every output.
        vectors (torch.Tensor, optional): Node vectors :obj:`[N, n]` (*e.g.*
            velocities) that rotate and permute with the input; then the
            function is called as :obj:`function(pos, h, batch, vectors)`.
        generator (torch.Generator, optional): Source of the transformation.
        reflect, translate, permute (bool): Which symmetries to apply.
        atol, rtol (float): Tolerances of :func:`torch.testing.assert_close`.

    Returns:
        tuple of torch.Tensor: The outputs for the untransformed input.

    Raises:
        AssertionError: Naming the output that breaks the symmetry.
    """
    unknown = set(outputs) - set(OUTPUT_KINDS)
    if unknown:
        raise ValueError(f"Unknown output kinds {sorted(unknown)} (expected "
                         f"{OUTPUT_KINDS})")
    if batch is None:
        batch = default_batch(pos.size(0), pos.device)
    q = random_orthogonal(pos.size(-1), generator, reflect, pos.dtype).to(
        pos.device)
    shift = torch.randn(1, pos.size(-1), generator=generator,
                        dtype=torch.float64).to(pos) if translate else 0.0
    perm = permutation_within_graphs(batch, generator) if permute else \
        torch.arange(pos.size(0), device=pos.device)
    args = () if vectors is None else (vectors, )
    moved_args = () if vectors is None else ((vectors @ q.t())[perm], )
    out = _as_tuple(function(pos, h, batch, *args))
    moved = _as_tuple(function((pos @ q.t() + shift)[perm],
                               None if h is None else h[perm], batch,
                               *moved_args))
    if len(out) != len(outputs) or len(moved) != len(outputs):
        raise ValueError(f"The function returned {len(out)} outputs, but "
                         f"{len(outputs)} kinds were given")
    for k, (kind, a, b) in enumerate(zip(outputs, out, moved)):
        expected = {'positions': lambda x: (x @ q.t() + shift)[perm],
                    'vectors': lambda x: (x @ q.t())[perm],
                    'node': lambda x: x[perm],
                    'graph': lambda x: x}[kind](a)
        torch.testing.assert_close(
            b, expected, atol=atol, rtol=rtol,
            msg=lambda message, k=k, kind=kind:
            f'output {k} ({kind}) is not equivariant: {message}')
    return out


def _as_tuple(value: Union[Tensor, Tuple[Tensor, ...]]) -> Tuple[Tensor, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, )
