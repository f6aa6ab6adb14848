r"""Atom and molecule stability of 3D molecules (E-NF / EDM convention),
for every element with a valence rule."""
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from torch_enf.elements import ALLOWED_VALENCES, ATOMIC_NUMBERS, SYMBOLS
from torch_enf.metrics.bonds import (MAX_ATOMIC_NUMBER, check_atomic_numbers,
                                     infer_bonds)
from torch_enf.utils import default_batch, graph_sizes, scatter_sum

MAX_CHARGE = 3  # formal charges -3 to +3 may have valence rules
MAX_VALENCE = 8


def _allowed_table() -> Tensor:
    r"""Boolean table :obj:`[2 * MAX_CHARGE + 1, 87, MAX_VALENCE + 2]`:
    whether an atom of that formal charge (offset by :obj:`MAX_CHARGE`) and
    atomic number may have that many bonds; the last column collects all
    larger counts (never allowed)."""
    table = torch.zeros(2 * MAX_CHARGE + 1, MAX_ATOMIC_NUMBER + 1,
                        MAX_VALENCE + 2, dtype=torch.bool)
    for (symbol, charge), allowed in ALLOWED_VALENCES.items():
        table[charge + MAX_CHARGE, ATOMIC_NUMBERS[symbol], list(allowed)] = \
            True
    return table


ALLOWED_TABLE = _allowed_table()


def allowed_valences(bond_sum: Tensor, z: Tensor,
                     charge: Optional[Tensor] = None) -> Tensor:
    r"""Whether every atom's sum of bond orders :obj:`bond_sum` is one of
    the allowed valences of its element and formal charge
    (:obj:`torch_enf.elements.ALLOWED_VALENCES`; neutral atoms when
    :obj:`charge` is :obj:`None`).

    Raises:
        ValueError: Naming the first element (and charge) that has no
            valence rule, for which stability is undefined.
    """
    check_atomic_numbers(z, 'stability')
    z = z.long()
    charge = torch.zeros_like(z) if charge is None else charge.long()
    table = ALLOWED_TABLE.to(z.device)
    known = (charge.abs() <= MAX_CHARGE)
    row = (charge.clamp(-MAX_CHARGE, MAX_CHARGE) + MAX_CHARGE)
    known &= table[row, z].any(dim=-1)
    if not bool(known.all()):
        atom = int((~known).nonzero()[0])
        raise ValueError(
            f"Stability is undefined for {SYMBOLS[int(z[atom]) - 1]} (atomic "
            f"number {int(z[atom])}) with formal charge {int(charge[atom])}: "
            f"torch_enf.elements.ALLOWED_VALENCES has no valence rule for it")
    return table[row, z, bond_sum.long().clamp(max=MAX_VALENCE + 1)]


def stable_atoms(pos: Tensor, z: Tensor, batch: Optional[Tensor] = None,
                 charge: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    r"""Per-atom and per-molecule stability masks.

    An atom is stable when the sum of the orders of its inferred bonds
    (:func:`~torch_enf.metrics.bonds.infer_bonds`) is one of the allowed
    valences of its element and formal charge
    (:obj:`torch_enf.elements.ALLOWED_VALENCES`: H 1, C 4, N 3, O 2, F 1 as
    in QM9; S 2, 4 or 6; P 3 or 5; N+ 4; ...); a molecule is stable when
    all its atoms are.

    Args:
        pos (torch.Tensor): Positions in Angstrom, shape :obj:`[N, 3]`.
        z (torch.Tensor): Atomic numbers, shape :obj:`[N]`.
        batch (torch.Tensor, optional): Sorted molecule assignment vector,
            shape :obj:`[N]`. (default: :obj:`None`, one molecule)
        charge (torch.Tensor, optional): Formal charges, shape :obj:`[N]`.
            (default: :obj:`None`, all neutral)

    Returns:
        (torch.Tensor, torch.Tensor): Boolean masks of shape :obj:`[N]`
        (atoms) and :obj:`[num_molecules]` (molecules).

    Raises:
        ValueError: For an atom whose element (and charge) has no valence
            rule, e.g. a metal: its stability is undefined, and so is that
            of the whole sample.
    """
    if batch is None:
        batch = default_batch(pos.size(0), pos.device)
    edge_index, order = infer_bonds(pos, z, batch)
    bond_sum = scatter_sum(order.repeat(2), edge_index.flatten(), z.numel())
    atom_ok = allowed_valences(bond_sum, z, charge)
    num_unstable = scatter_sum((~atom_ok).long(), batch,
                               graph_sizes(batch).numel())
    return atom_ok, num_unstable == 0


def stability(data) -> Dict[str, float]:
    r"""Fractions of stable atoms and stable molecules of a
    :class:`~torch_geometric.data.Batch` (or a single
    :class:`~torch_geometric.data.Data`) with :obj:`pos` (Angstrom),
    :obj:`z` and, optionally, the formal :obj:`charge`; see
    :func:`stable_atoms` (which raises for elements without a valence
    rule).

    .. math::
        \text{atom stability} = \frac{\#\text{stable atoms}}{\#\text{atoms}},
        \qquad
        \text{molecule stability} =
        \frac{\#\text{stable molecules}}{\#\text{molecules}}.

    Returns:
        dict: :obj:`{'atom_stability': float, 'molecule_stability': float}`.
    """
    if data.pos is None or getattr(data, 'z', None) is None:
        raise ValueError("'data' needs 'pos' and 'z' to measure stability")
    if data.pos.size(0) == 0:
        raise ValueError("'data' holds no atoms")
    atom_ok, molecule_ok = stable_atoms(data.pos, data.z,
                                        getattr(data, 'batch', None),
                                        getattr(data, 'charge', None))
    return {
        'atom_stability': atom_ok.float().mean().item(),
        'molecule_stability': molecule_ok.float().mean().item(),
    }
