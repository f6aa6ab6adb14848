r"""Reading and writing 3D molecules as XYZ and SDF files (written
atomically)."""
import math
import os
import tempfile
from contextlib import contextmanager
from typing import Iterator, List, Optional, Sequence

import torch
from torch_geometric.data import Batch, Data

from torch_enf.elements import SYMBOLS

ELEMENT_SYMBOLS = SYMBOLS


TEMPORARY_PREFIX = '.tmp-'
r"""The prefix of the temporary files of :func:`atomic_path`."""


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    r"""Yields a temporary path next to :obj:`path` that replaces
    :obj:`path` only once the body finished without error, so that
    :obj:`path` always holds the previous or the new complete file, even if
    the process is killed while writing. The file gets the permissions of
    the process's umask (as :func:`open` would give it), and the folder is
    created if needed. A kill can leave the temporary behind:
    :func:`remove_temporaries` cleans a folder."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=directory, prefix=TEMPORARY_PREFIX,
                                   suffix=os.path.basename(path))
    os.close(handle)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_temporaries(folder: str) -> List[str]:
    r"""Removes the temporary files that interrupted :func:`atomic_path`
    writes left in :obj:`folder`; returns their names."""
    if not os.path.isdir(folder):
        return []
    stale = [name for name in os.listdir(folder)
             if name.startswith(TEMPORARY_PREFIX)]
    for name in stale:
        os.remove(os.path.join(folder, name))
    return stale


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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


def read_xyz(path: str) -> List[Data]:
    r"""Reads the frames of an XYZ file (the inverse of :func:`write_xyz`):
    one :class:`~torch_geometric.data.Data` per frame with :obj:`pos`
    :obj:`[M, 3]` (float32, Angstrom, as written), :obj:`z` :obj:`[M]` and
    :obj:`name` (the comment line). Element symbols are case-insensitive;
    extra columns after :obj:`x y z` are ignored; blank lines between frames
    are allowed.

    Raises:
        ValueError: Naming the file and line of a malformed count, a missing
            or short atom line, a coordinate that is not a finite number or
            an unknown element.
    """
    with open(path) as f:
        lines = f.read().splitlines()
    symbols = {symbol.lower(): z for z, symbol in
               enumerate(ELEMENT_SYMBOLS, start=1)}
    frames, k = [], 0
    while k < len(lines):
        if not lines[k].strip():
            k += 1
            continue
        count = _parse_count(lines[k], path, k + 1)
        if k + 2 + count > len(lines):
            raise ValueError(f"{path}, line {k + 1}: the frame announces "
                             f"{count} atoms but the file ends after "
                             f"{max(len(lines) - k - 2, 0)}")
        atoms = [_parse_atom(lines[i], path, i + 1, symbols)
                 for i in range(k + 2, k + 2 + count)]
        frames.append(Data(
            pos=torch.tensor([a[1] for a in atoms], dtype=torch.float32),
            z=torch.tensor([a[0] for a in atoms], dtype=torch.long),
            name=lines[k + 1].strip()))
        k += 2 + count
    if not frames:
        raise ValueError(f'{path} holds no molecules')
    return frames


def _parse_count(line: str, path: str, number: int) -> int:
    try:
        count = int(line.split()[0])
    except (ValueError, IndexError):
        raise ValueError(f"{path}, line {number}: expected the number of "
                         f"atoms, got {line.strip()[:40]!r}") from None
    if count < 1:
        raise ValueError(f"{path}, line {number}: a frame needs at least one "
                         f"atom (got {count})")
    return count


def _parse_atom(line: str, path: str, number: int, symbols: dict) -> tuple:
    fields = line.split()
    if len(fields) < 4:
        raise ValueError(f"{path}, line {number}: expected 'symbol x y z', "
                         f"got {line.strip()[:40]!r}")
    z = symbols.get(fields[0].lower())
    if z is None:
        known = ', '.join(ELEMENT_SYMBOLS)
        raise ValueError(f"{path}, line {number}: unknown element "
                         f"{fields[0]!r} (known: {known})")
    try:
        xyz = [float(value) for value in fields[1:4]]
    except ValueError:
        raise ValueError(f"{path}, line {number}: coordinates must be "
                         f"numbers, got {' '.join(fields[1:4])!r}") from None
    if not all(math.isfinite(value) for value in xyz):
        raise ValueError(f"{path}, line {number}: non-finite coordinate")
    return z, xyz


def read_sdf(path: str) -> List[Data]:
    r"""Reads the records of an SDF file with RDKit (hydrogens kept, no
    sanitisation, so that any geometry is read as written): one
    :class:`~torch_geometric.data.Data` per record with :obj:`pos`
    :obj:`[M, 3]` (float32, Angstrom), :obj:`z` :obj:`[M]`, the formal
    :obj:`charge` :obj:`[M]` and :obj:`name` (the title line). Needs
    :obj:`pip install torch-enf[molecules]`.

    Raises:
        ValueError: Naming the file, the record and its first line when
            RDKit cannot parse a record, or the file holds none.
    """
    from torch_enf.metrics.rdkit_metrics import _chem
    Chem = _chem()
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path} does not exist')
    with open(path) as f:
        starts = [1] + [number + 1 for number, line in enumerate(f, start=1)
                        if line.strip() == '$$$$']
    if os.path.getsize(path) == 0:
        raise ValueError(f'{path} holds no molecules')
    supplier = Chem.SDMolSupplier(path, removeHs=False, sanitize=False)
    molecules = []
    for record, mol in enumerate(supplier):
        if mol is None or mol.GetNumConformers() == 0:
            raise ValueError(f"{path}, record {record + 1} (line "
                             f"{starts[record]}): RDKit cannot read it as a "
                             f"3D molecule")
        molecules.append(Data(
            pos=torch.tensor(mol.GetConformer().GetPositions(),
                             dtype=torch.float32),
            z=torch.tensor([a.GetAtomicNum() for a in mol.GetAtoms()]),
            charge=torch.tensor([a.GetFormalCharge()
                                 for a in mol.GetAtoms()]),
            name=mol.GetProp('_Name') if mol.HasProp('_Name') else ''))
    if not molecules:
        raise ValueError(f'{path} holds no molecules')
    return molecules
