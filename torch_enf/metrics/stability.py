r"""Atom and molecule stability of 3D molecules (E-NF / EDM convention)."""
from typing import Dict, Optional, Tuple

from torch import Tensor

from torch_enf.metrics.bonds import infer_bonds, valences
from torch_enf.utils import default_batch, graph_sizes, scatter_sum


def stable_atoms(pos: Tensor, z: Tensor, batch: Optional[Tensor] = None
                 ) -> Tuple[Tensor, Tensor]:
    r"""Per-atom and per-molecule stability masks.

    An atom is stable when the sum of the orders of its inferred bonds
    (:func:`~torch_enf.metrics.bonds.infer_bonds`) equals its valence
    (H 1, C 4, N 3, O 2, F 1); a molecule is stable when all its atoms are.

    Args:
        pos (torch.Tensor): Positions in Angstrom, shape :obj:`[N, 3]`.
        z (torch.Tensor): Atomic numbers, shape :obj:`[N]`.
        batch (torch.Tensor, optional): Sorted molecule assignment vector,
            shape :obj:`[N]`. (default: :obj:`None`, one molecule)

    Returns:
        (torch.Tensor, torch.Tensor): Boolean masks of shape :obj:`[N]`
        (atoms) and :obj:`[num_molecules]` (molecules).
    """
    if batch is None:
        batch = default_batch(pos.size(0), pos.device)
    edge_index, order = infer_bonds(pos, z, batch)
    bond_sum = scatter_sum(order.repeat(2), edge_index.flatten(), z.numel())
    atom_ok = bond_sum == valences(z)
    num_unstable = scatter_sum((~atom_ok).long(), batch,
                               graph_sizes(batch).numel())
    return atom_ok, num_unstable == 0


def stability(data) -> Dict[str, float]:
    r"""Fractions of stable atoms and stable molecules of a
    :class:`~torch_geometric.data.Batch` (or a single
    :class:`~torch_geometric.data.Data`) with :obj:`pos` (Angstrom) and
    :obj:`z`; see :func:`stable_atoms`.

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
                                        getattr(data, 'batch', None))
    return {
        'atom_stability': atom_ok.float().mean().item(),
        'molecule_stability': molecule_ok.float().mean().item(),
    }
