r"""Export of 3D molecules to XYZ and SDF files (written atomically)."""
import os
import tempfile
from contextlib import contextmanager
from typing import Iterator, List, Optional, Sequence

from torch_geometric.data import Batch

ELEMENT_SYMBOLS = ('H', 'He', 'Li', 'Be', 'B', 'C', 'N', 'O', 'F', 'Ne',
                   'Na', 'Mg', 'Al', 'Si', 'P', 'S', 'Cl', 'Ar')
r"""Symbols of atomic numbers 1 to 18."""


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    r"""Yields a temporary path next to :obj:`path` that replaces
    :obj:`path` only once the body finished without error."""
    directory = os.path.dirname(os.path.abspath(path))
    handle, tmp = tempfile.mkstemp(dir=directory, prefix='.tmp-',
                                   suffix=os.path.basename(path))
    os.close(handle)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _as_batch(data) -> Batch:
    batch = data if isinstance(data, Batch) else Batch.from_data_list([data])
    if batch.pos is None or getattr(batch, 'z', None) is None:
        raise ValueError("Molecules need 'pos' and 'z' to be written")
    if batch.pos.dim() != 2 or batch.pos.size(1) != 3:
        raise ValueError(f"'pos' must have shape [N, 3] (got "
                         f"{list(batch.pos.shape)})")
    return batch


def _names(batch: Batch, names: Optional[Sequence[str]]) -> List[str]:
    if names is not None:
        if len(names) != batch.num_graphs:
            raise ValueError(f"Got {len(names)} names for "
                             f"{batch.num_graphs} molecules")
        return list(names)
    if getattr(batch, 'idx', None) is not None:
        return [f'molecule {int(i)}' for i in batch.idx.flatten()]
    return [f'molecule {i}' for i in range(batch.num_graphs)]


def write_xyz(path: str, data, names: Optional[Sequence[str]] = None
              ) -> None:
    r"""Writes the molecules of a :class:`~torch_geometric.data.Batch` (or a
    single :class:`~torch_geometric.data.Data`) with :obj:`pos` (Angstrom)
    and :obj:`z` as consecutive frames of one XYZ file: atom count, a comment
    line (the name) and one :obj:`symbol x y z` line per atom.

    Args:
        path (str): Output file.
        data (Batch or Data): The molecules.
        names (list of str, optional): Comment line of every molecule;
            defaults to :obj:`"molecule <idx>"`.
    """
    batch = _as_batch(data)
    z = batch.z.tolist()
    unknown = [n for n in z if not 1 <= n <= len(ELEMENT_SYMBOLS)]
    if unknown:
        raise ValueError(f"Cannot write atomic number {unknown[0]} (XYZ "
                         f"export knows 1 to {len(ELEMENT_SYMBOLS)})")
    if any('\n' in name for name in _names(batch, names)):
        raise ValueError("Molecule names must fit on one line")
    positions = batch.pos.detach().cpu().tolist()
    ptr = batch.ptr.tolist()
    lines = []
    for name, start, end in zip(_names(batch, names), ptr[:-1], ptr[1:]):
        lines += [str(end - start), name]
        lines += [
            f'{ELEMENT_SYMBOLS[z[k] - 1]:<2} {x:12.6f} {y:12.6f} {w:12.6f}'
            for k, (x, y, w) in enumerate(positions[start:end], start)
        ]
    with atomic_path(path) as tmp, open(tmp, 'w') as f:
        f.write('\n'.join(lines) + '\n')


def write_sdf(path: str, data, names: Optional[Sequence[str]] = None
              ) -> None:
    r"""Writes the molecules of a batch to an SDF file via RDKit, with the
    bonds inferred from the geometry
    (:func:`~torch_enf.metrics.bonds.infer_bonds`) and the 3D coordinates.
    Molecules RDKit cannot sanitise are written as they are (no
    kekulisation). Needs :obj:`pip install torch-enf[molecules]`.

    Args:
        path (str): Output file.
        data (Batch or Data): The molecules (H, C, N, O, F).
        names (list of str, optional): Title line of every record; defaults
            to :obj:`"molecule <idx>"`.
    """
    from torch_enf.metrics.rdkit_metrics import _chem, to_rdkit_molecules
    Chem = _chem()
    batch = _as_batch(data)
    molecules = to_rdkit_molecules(batch)
    with atomic_path(path) as tmp:
        writer = Chem.SDWriter(tmp)
        writer.SetKekulize(False)
        for mol, name in zip(molecules, _names(batch, names)):
            mol.UpdatePropertyCache(strict=False)
            mol.SetProp('_Name', name)
            writer.write(mol)
        writer.close()
