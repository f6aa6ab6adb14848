r"""Bond orders of molecules inferred from interatomic distances.

The lookup follows the convention of the E-NF and EDM papers for QM9
(elements H, C, N, O, F): a pair of atoms at distance :math:`d` (in pm) with
typical bond lengths :math:`l_1, l_2, l_3` for single, double and triple
bonds is assigned the highest order :math:`k` whose test holds,

.. math::
    d < l_1 + 10\,\mathrm{pm} \;(k = 1), \qquad
    d < l_2 + 5\,\mathrm{pm} \;(k = 2), \qquad
    d < l_3 + 3\,\mathrm{pm} \;(k = 3),

and no bond (:math:`k = 0`) when none holds. Pairs without a tabulated
length for an order cannot form a bond of that order.
"""
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from torch_enf.elements import QM9_ATOMIC_NUMBERS, QM9_SYMBOLS, VALENCES
from torch_enf.nn.graph import full_edge_index
from torch_enf.utils import check_batch_vector, check_finite, default_batch

ELEMENTS = QM9_SYMBOLS
ATOMIC_NUMBERS = QM9_ATOMIC_NUMBERS

SINGLE_BOND_PM = {
    'HH': 74, 'HC': 109, 'HN': 101, 'HO': 96, 'HF': 92, 'CC': 154,
    'CN': 147, 'CO': 143, 'CF': 135, 'NN': 145, 'NO': 140, 'NF': 136,
    'OO': 148, 'OF': 142, 'FF': 142,
}
DOUBLE_BOND_PM = {
    'CC': 134, 'CN': 129, 'CO': 120, 'NN': 125, 'NO': 121, 'OO': 121,
}
TRIPLE_BOND_PM = {'CC': 120, 'CN': 116, 'CO': 113, 'NN': 110}
MARGINS_PM = (10.0, 5.0, 3.0)  # single, double, triple


def _length_table(lengths: Dict[str, float]) -> Tensor:
    r"""A symmetric :obj:`[5, 5]` table over :obj:`ELEMENTS` in pm;
    :obj:`-inf` marks pairs that cannot form the bond."""
    table = torch.full((len(ELEMENTS), len(ELEMENTS)), float('-inf'))
    for pair, length in lengths.items():
        a, b = ELEMENTS.index(pair[0]), ELEMENTS.index(pair[1])
        table[a, b] = table[b, a] = length
    return table


BOND_LENGTH_TABLES_PM = torch.stack([
    _length_table(SINGLE_BOND_PM),
    _length_table(DOUBLE_BOND_PM),
    _length_table(TRIPLE_BOND_PM),
])
r"""Bond lengths :math:`l_k` in pm, shape :obj:`[3, 5, 5]` (order, element,
element)."""


def element_index(z: Tensor) -> Tensor:
    r"""Maps atomic numbers to positions in :obj:`ELEMENTS` (H, C, N, O, F).

    Raises:
        ValueError: For any other atomic number.
    """
    known = torch.tensor(ATOMIC_NUMBERS, device=z.device)
    matches = z.long().unsqueeze(-1) == known
    unknown = ~matches.any(dim=-1)
    if bool(unknown.any()):
        raise ValueError(f"Unknown atomic number {int(z[unknown][0])}; bond "
                         f"inference supports {ATOMIC_NUMBERS} "
                         f"({', '.join(ELEMENTS)})")
    return matches.long().argmax(dim=-1)


def bond_order_from_distance(distance_pm: Tensor, type_a: Tensor,
                             type_b: Tensor) -> Tensor:
    r"""Returns the bond order (0 to 3) of atom pairs of element indices
    :obj:`type_a`, :obj:`type_b` (positions in :obj:`ELEMENTS`) at
    :obj:`distance_pm` (all of the same shape)."""
    lengths = BOND_LENGTH_TABLES_PM.to(distance_pm.device)[:, type_a, type_b]
    margins = torch.tensor(MARGINS_PM, device=distance_pm.device)
    margins = margins.view((3, ) + (1, ) * distance_pm.dim())
    satisfied = distance_pm.unsqueeze(0) < lengths + margins
    orders = torch.arange(1, 4, device=distance_pm.device)
    orders = orders.view_as(margins)
    return (satisfied.long() * orders).amax(dim=0)


def infer_bonds(pos: Tensor, z: Tensor, batch: Optional[Tensor] = None
                ) -> Tuple[Tensor, Tensor]:
    r"""Infers the bonds of every molecule of a batch from its geometry.

    All pairs of atoms of the same molecule are tested at once (no loop over
    pairs or molecules).

    Args:
        pos (torch.Tensor): Atom positions in Angstrom, shape :obj:`[N, 3]`.
        z (torch.Tensor): Atomic numbers (H, C, N, O, F), shape :obj:`[N]`.
        batch (torch.Tensor, optional): Sorted molecule assignment vector,
            shape :obj:`[N]`. (default: :obj:`None`, one molecule)

    Returns:
        (torch.Tensor, torch.Tensor): The bonded pairs :obj:`edge_index` of
        shape :obj:`[2, B]` (each pair once, :obj:`edge_index[0] <
        edge_index[1]`) and their orders :obj:`[B]` (1, 2 or 3).
    """
    if pos.dim() != 2 or pos.size(1) != 3:
        raise ValueError(f"'pos' must have shape [N, 3] (got "
                         f"{list(pos.shape)})")
    if z.shape != pos.shape[:1]:
        raise ValueError(f"'z' must have shape [{pos.size(0)}] (got "
                         f"{list(z.shape)})")
    check_finite(pos, 'pos')
    if batch is None:
        batch = default_batch(pos.size(0), pos.device)
    check_batch_vector(batch, pos.size(0))
    types = element_index(z)
    edge_index = full_edge_index(batch)
    edge_index = edge_index[:, edge_index[0] < edge_index[1]]
    src, dst = edge_index
    distance_pm = 100.0 * (pos[src] - pos[dst]).norm(dim=-1)
    order = bond_order_from_distance(distance_pm, types[src], types[dst])
    bonded = order > 0
    return edge_index[:, bonded], order[bonded]


def valences(z: Tensor) -> Tensor:
    r"""The valence (H 1, C 4, N 3, O 2, F 1) of every atom of :obj:`z`."""
    table = torch.tensor([VALENCES[e] for e in ELEMENTS], device=z.device)
    return table[element_index(z)]
