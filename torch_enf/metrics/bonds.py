r"""Bond orders of molecules inferred from interatomic distances.

The lookup follows the convention of the E-NF and EDM papers: a pair of
atoms at distance :math:`d` (in pm) with typical bond lengths
:math:`l_1, l_2, l_3` for single, double and triple bonds is assigned the
highest order :math:`k` whose test holds,

.. math::
    d < l_1 + 10\,\mathrm{pm} \;(k = 1), \qquad
    d < l_2 + 5\,\mathrm{pm} \;(k = 2), \qquad
    d < l_3 + 3\,\mathrm{pm} \;(k = 3),

and no bond (:math:`k = 0`) when none holds.

The lengths are those the EDM paper uses for QM9 and GEOM-drugs (H, B, C,
N, O, F, Si, P, S, Cl, As, Br, I), plus an S=O double bond. Any other pair
of elements from H to Rn gets a single-bond length equal to the sum of the
two covalent radii (:obj:`torch_enf.elements.COVALENT_RADII_PM`), and no
double or triple bond. The pairs of QM9's elements (H, C, N, O, F) are all
tabulated, so the QM9 rule is the one of the papers.
"""
import re
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from torch_enf.elements import (ALLOWED_VALENCES, ATOMIC_NUMBERS,
                                COVALENT_RADII_PM, SYMBOLS)
from torch_enf.nn.graph import full_edge_index
from torch_enf.utils import check_batch_vector, check_finite, default_batch

# Typical bond lengths in pm, keyed by the two element symbols, as tabulated
# by Hoogeboom et al. (EDM, ICML 2022) from the standard compilations of
# bond lengths (CRC Handbook of Chemistry and Physics; Allen et al., J.
# Chem. Soc. Perkin Trans. 2, S1, 1987).
SINGLE_BOND_PM: Dict[str, float] = {
    'HH': 74, 'HC': 109, 'HN': 101, 'HO': 96, 'HF': 92, 'CC': 154,
    'CN': 147, 'CO': 143, 'CF': 135, 'NN': 145, 'NO': 140, 'NF': 136,
    'OO': 148, 'OF': 142, 'FF': 142,
    'HB': 119, 'HSi': 148, 'HP': 144, 'HAs': 152, 'HS': 134, 'HCl': 127,
    'HBr': 141, 'HI': 161,
    'CSi': 185, 'CP': 184, 'CS': 182, 'CCl': 177, 'CBr': 194, 'CI': 214,
    'NP': 177, 'NS': 168, 'NCl': 175, 'NBr': 214, 'NI': 222,
    'OSi': 163, 'OP': 163, 'OS': 151, 'OCl': 164, 'OBr': 172, 'OI': 194,
    'FSi': 160, 'FP': 156, 'FS': 158, 'FCl': 166, 'FBr': 178, 'FI': 187,
    'BCl': 175,
    'SiSi': 233, 'SiS': 200, 'SiCl': 202, 'SiBr': 215, 'SiI': 243,
    'PP': 221, 'PS': 210, 'PCl': 203, 'PBr': 222,
    'SS': 204, 'SCl': 207, 'SBr': 225, 'SI': 234,
    'ClCl': 199, 'ClBr': 214, 'BrBr': 228, 'II': 266,
}
DOUBLE_BOND_PM: Dict[str, float] = {
    'CC': 134, 'CN': 129, 'CO': 120, 'NN': 125, 'NO': 121, 'OO': 121,
    'CS': 160, 'OP': 150, 'PS': 186,
    # Not in EDM's table, without which the S of sulfones and sulfoxides
    # can never reach its valence 4 or 6: between the S=O of sulfones
    # (143.6) and sulfoxides (149.7) of Allen et al. (1987).
    'OS': 145,
}
TRIPLE_BOND_PM: Dict[str, float] = {'CC': 120, 'CN': 116, 'CO': 113,
                                    'NN': 110}
MARGINS_PM = (10.0, 5.0, 3.0)  # single, double, triple

MAX_ATOMIC_NUMBER = len(SYMBOLS)


def _pair(key: str) -> Tuple[int, int]:
    first, second = re.findall('[A-Z][a-z]?', key)
    return ATOMIC_NUMBERS[first], ATOMIC_NUMBERS[second]


def _length_table(lengths: Dict[str, float],
                  default: Optional[Tensor] = None) -> Tensor:
    r"""A symmetric table over atomic numbers 0 to 86 in pm, filled from
    :obj:`default` (or :obj:`-inf`, no bond) where :obj:`lengths` has no
    entry."""
    size = MAX_ATOMIC_NUMBER + 1
    table = torch.full((size, size), float('-inf')) if default is None \
        else default.clone()
    for key, length in lengths.items():
        a, b = _pair(key)
        table[a, b] = table[b, a] = length
    return table


def _covalent_radius_sums() -> Tensor:
    radii = torch.tensor([float('-inf')] + [float(COVALENT_RADII_PM[s])
                                             for s in SYMBOLS])
    return radii[:, None] + radii[None, :]


BOND_LENGTH_TABLES_PM = torch.stack([
    _length_table(SINGLE_BOND_PM, default=_covalent_radius_sums()),
    _length_table(DOUBLE_BOND_PM),
    _length_table(TRIPLE_BOND_PM),
])
r"""Bond lengths :math:`l_k` in pm, shape :obj:`[3, 87, 87]` (order, atomic
number, atomic number); :obj:`-inf` marks pairs that cannot form the bond
(and the unused atomic number 0)."""


def check_atomic_numbers(z: Tensor, what: str = 'bond inference') -> None:
    r"""Raises :class:`ValueError` naming the first atomic number of
    :obj:`z` outside 1 to 86 (H to Rn)."""
    unknown = (z < 1) | (z > MAX_ATOMIC_NUMBER)
    if bool(unknown.any()):
        raise ValueError(f"Unknown atomic number {int(z[unknown][0])}; "
                         f"{what} supports atomic numbers 1 to "
                         f"{MAX_ATOMIC_NUMBER} (H to Rn)")


def bond_order_from_distance(distance_pm: Tensor, z_a: Tensor,
                             z_b: Tensor) -> Tensor:
    r"""Returns the bond order (0 to 3) of atom pairs of atomic numbers
    :obj:`z_a`, :obj:`z_b` at :obj:`distance_pm` (all of the same shape)."""
    lengths = BOND_LENGTH_TABLES_PM.to(distance_pm.device)[:, z_a, z_b]
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
        z (torch.Tensor): Atomic numbers (1 to 86), shape :obj:`[N]`.
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
    check_atomic_numbers(z)
    z = z.long()
    edge_index = full_edge_index(batch)
    edge_index = edge_index[:, edge_index[0] < edge_index[1]]
    src, dst = edge_index
    distance_pm = 100.0 * (pos[src] - pos[dst]).norm(dim=-1)
    order = bond_order_from_distance(distance_pm, z[src], z[dst])
    bonded = order > 0
    return edge_index[:, bonded], order[bonded]


def valences(z: Tensor) -> Tensor:
    r"""The smallest allowed valence of every (neutral) atom of :obj:`z`:
    H 1, C 4, N 3, O 2, F 1, S 2, ... (see
    :obj:`torch_enf.elements.ALLOWED_VALENCES`).

    Raises:
        ValueError: For an element without a valence rule.
    """
    table = torch.full((MAX_ATOMIC_NUMBER + 1, ), -1, dtype=torch.long)
    for (symbol, charge), allowed in ALLOWED_VALENCES.items():
        if charge == 0:
            table[ATOMIC_NUMBERS[symbol]] = min(allowed)
    check_atomic_numbers(z, 'valences')
    result = table.to(z.device)[z.long()]
    if bool((result < 0).any()):
        unknown = int(z[result < 0][0])
        raise ValueError(f"No valence rule for {SYMBOLS[unknown - 1]} "
                         f"(atomic number {unknown})")
    return result
