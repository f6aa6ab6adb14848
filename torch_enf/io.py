r"""Reading 3D molecules from SDF, XYZ and NumPy files, strictly or
skipping the structures that cannot be read, and writing them as XYZ and SDF
files (atomically)."""
import os
import tempfile
import zipfile
from contextlib import contextmanager
from typing import (Callable, Iterator, List, NamedTuple, Optional, Sequence,
                    Tuple, Union)

import numpy as np
import torch
from torch_geometric.data import Batch, Data

from torch_enf.elements import SYMBOLS, atomic_number

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


class StructureError(ValueError):
    r"""A structure of a file that cannot be read, raised with the file and
    the place (:obj:`"line 12"`, :obj:`"line 40 (record 3 from line 37)"`
    or :obj:`"structure 7"`) in its message.

    Attributes:
        line (int, optional): The line of the problem (1-based), :obj:`None`
            in :obj:`.npz` files.
        reason (str): The kind of problem, one of :obj:`"malformed"`,
            :obj:`"truncated"`, :obj:`"unknown element"` and
            :obj:`"non-finite coordinates"`.
    """
    def __init__(self, path: str, place: str, line: Optional[int],
                 reason: str, detail: str) -> None:
        super().__init__(f'{path}, {place}: {detail}')
        self.line = line
        self.reason = reason


class Skipped(NamedTuple):
    r"""A structure that was not read (or was left out of a dataset)."""
    path: str
    index: int  #: Position of the structure in its file, from 0.
    line: Optional[int]  #: The line of the problem; None in .npz files.
    #: The kind of problem: those of :class:`StructureError`, and
    #: :class:`~torch_enf.datasets.MoleculeDataset`'s own.
    reason: str
    message: str  #: The full error, naming the file and the line.


class MoleculeFile(NamedTuple):
    r"""The structures of one file read by :func:`read_molecules`."""
    path: str
    molecules: List[Data]
    indices: List[int]  #: Position of every molecule in the file, from 0.
    skipped: List[Skipped]


ON_ERROR = ('raise', 'skip')
FORMATS = {'.sdf': 'sdf', '.mol': 'sdf', '.xyz': 'xyz', '.npz': 'npz'}
r"""The format of every file suffix read by :func:`read_molecules`."""
MOLECULE_SUFFIXES = tuple(FORMATS)


def read_molecules(path: str, on_error: str = 'raise',
                   format: Optional[str] = None) -> MoleculeFile:
    r"""Reads the 3D structures of an SDF (:obj:`.sdf`, :obj:`.mol`), XYZ
    (:obj:`.xyz`) or NumPy (:obj:`.npz`) file; see :func:`read_sdf`,
    :func:`read_xyz` and :func:`read_npz` for the formats. Every structure
    becomes a :class:`~torch_geometric.data.Data` with :obj:`pos`
    :obj:`[M, 3]` (float32, Angstrom), :obj:`z` :obj:`[M]` (long),
    :obj:`charge` :obj:`[M]` (long formal charges, zeros where the format
    has none) and :obj:`name`.

    Args:
        path (str): The file.
        on_error (str, optional): :obj:`"raise"` stops at the first
            structure that cannot be read; :obj:`"skip"` leaves it out and
            reports it in :obj:`MoleculeFile.skipped`, with its position,
            line and reason. Problems of the whole file (missing, a folder,
            binary, no structure at all) always raise.
            (default: :obj:`"raise"`)
        format (str, optional): :obj:`"sdf"`, :obj:`"xyz"` or
            :obj:`"npz"`. (default: :obj:`None`, from the suffix)

    Raises:
        FileNotFoundError: The file does not exist.
        IsADirectoryError: The path is a folder.
        ValueError: An unknown format, a binary file, a file without
            structures, or (with :obj:`on_error="raise"`) a structure that
            cannot be read, naming the file and the line.
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"'on_error' must be one of {ON_ERROR}, got "
                         f"{on_error!r}")
    _check_file(path)
    if format is None:
        suffix = os.path.splitext(path)[1].lower()
        if suffix not in FORMATS:
            raise ValueError(f"{path}: unknown molecule file suffix "
                             f"{suffix!r} (expected one of "
                             f"{', '.join(FORMATS)}, or give 'format')")
        format = FORMATS[suffix]
    if format == 'npz':
        structures = _npz_structures(path)
    elif format == 'xyz':
        structures = _xyz_structures(path, _read_lines(path))
    elif format == 'sdf':
        structures = _sdf_structures(path, _read_lines(path))
    else:
        raise ValueError(f"Unknown molecule format {format!r} (expected "
                         f"'sdf', 'xyz' or 'npz')")
    molecules, indices, skipped = [], [], []
    for index, structure in enumerate(structures):
        if isinstance(structure, Data):
            molecules.append(structure)
            indices.append(index)
        elif on_error == 'raise':
            raise structure
        else:
            skipped.append(Skipped(path, index, structure.line,
                                   structure.reason, str(structure)))
    if not molecules and not skipped:
        raise ValueError(f'{path} holds no molecules')
    return MoleculeFile(path, molecules, indices, skipped)


def read_xyz(path: str) -> List[Data]:
    r"""Reads the frames of an XYZ file (the inverse of :func:`write_xyz`):
    one :class:`~torch_geometric.data.Data` per frame with :obj:`pos`
    :obj:`[M, 3]` (float32, Angstrom, as written), :obj:`z` :obj:`[M]`,
    :obj:`charge` :obj:`[M]` (zeros) and :obj:`name` (the comment line).
    A frame is an atom count, a comment line and one :obj:`symbol x y z`
    line per atom. Element symbols are case-insensitive and may be atomic
    numbers; extra columns after :obj:`x y z` are ignored (so extended XYZ
    is read); blank lines between frames are allowed.

    Raises:
        ValueError: Naming the file and line of a malformed count, a missing
            or short atom line, a coordinate that is not a finite number or
            an unknown element, and for a binary file.
    """
    return read_molecules(path, format='xyz').molecules


def read_sdf(path: str) -> List[Data]:
    r"""Reads the records of an SDF file (MDL V2000 molfiles separated by
    :obj:`$$$$` lines; V3000 records are read by RDKit): one
    :class:`~torch_geometric.data.Data` per record with :obj:`pos`
    :obj:`[M, 3]` (float32, Angstrom), :obj:`z` :obj:`[M]`, the formal
    :obj:`charge` :obj:`[M]` and :obj:`name` (the title line). Hydrogens are
    kept and nothing is sanitised, so any geometry is read as written. The
    charges come from the :obj:`M  CHG` lines or, in records without one,
    from the charge field of the atom block (CTfile specification, BIOVIA
    2020).

    Raises:
        ValueError: Naming the file, the record and the line of a
            malformed or truncated record, and for a binary file.
    """
    return read_molecules(path, format='sdf').molecules


def read_npz(path: str) -> List[Data]:
    r"""Reads the structures of a NumPy :obj:`.npz` archive with arrays

    * :obj:`pos`: positions in Angstrom, either :obj:`[S, M, 3]` (:obj:`S`
      structures of :obj:`M` atoms) or :obj:`[N, 3]` (the atoms of all
      structures one after another, cut by :obj:`num_atoms`);
    * :obj:`z`: atomic numbers, :obj:`[S, M]`, :obj:`[M]` (the same atoms
      in every structure, e.g. a trajectory) or :obj:`[N]`; in the
      :obj:`[S, M]` layout atoms with :obj:`z = 0` are padding and dropped;
    * :obj:`charges` (optional): integer formal charges, shaped like
      :obj:`z`;
    * :obj:`num_atoms` (optional, :obj:`[S]`): the atom counts of the
      :obj:`[N, 3]` layout, which without it holds a single structure.

    Structures are named :obj:`"structure <index>"`.

    Raises:
        ValueError: Naming the file for missing keys or inconsistent
            shapes, and the structure for unknown atomic numbers or
            non-finite coordinates.
    """
    return read_molecules(path, format='npz').molecules


def _check_file(path: str) -> None:
    if os.path.isdir(path):
        raise IsADirectoryError(f'{path} is a folder, not a molecule file')
    if not os.path.exists(path):
        raise FileNotFoundError(f'{path} does not exist')


def _read_lines(path: str) -> List[str]:
    r"""The lines of a UTF-8 text file, without line ends."""
    with open(path, 'rb') as f:
        content = f.read()
    if content[:2] == b'\x1f\x8b':
        raise ValueError(f'{path} is gzip-compressed; decompress it first')
    if b'\0' in content:
        raise ValueError(f'{path} is a binary file, not a text file')
    try:
        text = content.decode('utf-8')
    except UnicodeDecodeError as error:
        line = content[:error.start].count(b'\n') + 1
        raise ValueError(f'{path}, line {line}: byte {error.start} is not '
                         f'UTF-8 text (is it a binary file?)') from None
    lines = [line.rstrip('\r') for line in text.split('\n')]
    return lines[:-1] if lines and not lines[-1] else lines


Structure = Union[Data, StructureError]


def _molecule(pos: List[List[float]], z: List[int], charge: List[int],
              name: str) -> Data:
    return Data(pos=torch.tensor(pos, dtype=torch.float32),
                z=torch.tensor(z, dtype=torch.long),
                charge=torch.tensor(charge, dtype=torch.long), name=name)


def _check_finite(data: Data, error: Callable[[int], StructureError]
                  ) -> Structure:
    r"""Returns :obj:`data`, or :obj:`error(atom)` for its first atom with a
    coordinate that is not finite in float32."""
    bad = ~torch.isfinite(data.pos).all(dim=1)
    return error(int(bad.nonzero()[0])) if bool(bad.any()) else data


def _xyz_structures(path: str, lines: List[str]) -> Iterator[Structure]:
    k = 0
    while k < len(lines):
        if not lines[k].strip():
            k += 1
            continue
        try:
            count = _parse_count(lines[k], path, k + 1)
        except StructureError as error:
            yield error
            k = _next_count(lines, k + 1)
            continue
        if k + 2 + count > len(lines):
            yield StructureError(
                path, f'line {k + 1}', k + 1, 'truncated',
                f'the frame announces {count} atoms but the file ends after '
                f'{max(len(lines) - k - 2, 0)}')
            return
        yield _xyz_frame(path, lines, k, count)
        k += 2 + count


def _next_count(lines: List[str], k: int) -> int:
    r"""The next line from :obj:`k` on holding only a positive integer,
    where reading resumes after a malformed frame."""
    while k < len(lines) and not (lines[k].strip().isdigit()
                                  and int(lines[k]) > 0):
        k += 1
    return k


def _xyz_frame(path: str, lines: List[str], k: int, count: int
               ) -> Structure:
    try:
        atoms = [_parse_xyz_atom(lines[i], path, i + 1)
                 for i in range(k + 2, k + 2 + count)]
    except StructureError as error:
        return error
    data = _molecule([xyz for _, xyz in atoms], [z for z, _ in atoms],
                     [0] * count, lines[k + 1].strip())
    return _check_finite(data, lambda atom: StructureError(
        path, f'line {k + 3 + atom}', k + 3 + atom, 'non-finite coordinates',
        'non-finite coordinate (in float32)'))


def _parse_count(line: str, path: str, number: int) -> int:
    try:
        count = int(line.split()[0])
    except (ValueError, IndexError):
        raise StructureError(path, f'line {number}', number, 'malformed',
                             f"expected the number of atoms, got "
                             f"{line.strip()[:40]!r}") from None
    if count < 1:
        raise StructureError(path, f'line {number}', number, 'malformed',
                             f"a frame needs at least one atom (got "
                             f"{count})")
    return count


def _parse_xyz_atom(line: str, path: str, number: int
                    ) -> Tuple[int, List[float]]:
    place = f'line {number}'
    fields = line.split()
    if len(fields) < 4:
        raise StructureError(path, place, number, 'malformed',
                             f"expected 'symbol x y z', got "
                             f"{line.strip()[:40]!r}")
    z = _element(fields[0], path, place, number)
    try:
        return z, [float(value) for value in fields[1:4]]
    except ValueError:
        raise StructureError(path, place, number, 'malformed',
                             f"coordinates must be numbers, got "
                             f"{' '.join(fields[1:4])!r}") from None


def _element(token: str, path: str, place: str, number: Optional[int]
             ) -> int:
    r"""The atomic number of a symbol (any case) or of a number 1 to 86."""
    if token.isdigit() and 1 <= int(token) <= len(SYMBOLS):
        return int(token)
    try:
        return atomic_number(token)
    except ValueError as error:
        raise StructureError(path, place, number, 'unknown element',
                             str(error)[0].lower() + str(error)[1:]) from None


SDF_CHARGE_CODES = {0: 0, 1: 3, 2: 2, 3: 1, 4: 0, 5: -1, 6: -2, 7: -3}
r"""Charge field of a V2000 atom line to formal charge (4 marks a doublet
radical, no charge)."""


def _sdf_structures(path: str, lines: List[str]) -> Iterator[Structure]:
    start, number = 0, 1
    for k, line in enumerate(lines + ['$$$$']):
        if line.strip() != '$$$$':
            continue
        block = lines[start:k]
        if k < len(lines) or any(text.strip() for text in block):
            yield _sdf_record(_Record(path, number, start + 1), block)
        start, number = k + 1, number + 1


class _Record:
    r"""Where an SDF record starts, to name the lines of its errors."""
    def __init__(self, path: str, number: int, first: int) -> None:
        self.path, self.number, self.first = path, number, first

    def place(self, offset: int) -> str:
        return (f'line {self.first + offset} (record {self.number} from '
                f'line {self.first})')

    def error(self, offset: int, reason: str, detail: str) -> StructureError:
        return StructureError(self.path, self.place(offset),
                              self.first + offset, reason, detail)


def _sdf_record(record: _Record, lines: List[str]) -> Structure:
    r"""Parses the molfile :obj:`lines` of one record."""
    try:
        if len(lines) > 3 and 'V3000' in lines[3][33:]:
            return _v3000_record(record, lines)
        return _v2000_record(record, lines)
    except StructureError as error:
        return error


def _v2000_record(record: _Record, lines: List[str]) -> Structure:
    if len(lines) < 4:
        raise record.error(max(len(lines) - 1, 0), 'truncated', 'the record '
                           'ends before its counts line (line 4 of a '
                           'record)')
    try:
        num_atoms, num_bonds = int(lines[3][0:3]), int(lines[3][3:6])
    except ValueError:
        raise record.error(3, 'malformed', f"expected the counts line "
                           f"'aaabbb...', got {lines[3][:40]!r}") from None
    if num_atoms < 1:
        raise record.error(3, 'malformed', f'a record needs at least one '
                           f'atom (got {num_atoms})')
    end = 4 + num_atoms + num_bonds
    if len(lines) < end:
        raise record.error(3, 'truncated', f'the record announces '
                           f'{num_atoms} atoms and {num_bonds} bonds but '
                           f'ends after {len(lines) - 4} of their lines')
    atoms = [_v2000_atom(record, lines[k], k) for k in range(4, 4 + num_atoms)]
    for k in range(4 + num_atoms, end):
        _v2000_bond(record, lines[k], k, num_atoms)
    charges = _v2000_charges(record, lines, end, num_atoms)
    data = _molecule([xyz for _, xyz, _ in atoms], [z for z, _, _ in atoms],
                     charges or [c for _, _, c in atoms], lines[0].strip())
    return _check_finite(data, lambda atom: record.error(
        4 + atom, 'non-finite coordinates',
        'non-finite coordinate (in float32)'))


def _v2000_atom(record: _Record, line: str, k: int
                ) -> Tuple[int, List[float], int]:
    r"""Atomic number, coordinates and charge-field charge of the atom line
    :obj:`xxxxx.xxxxyyyyy.yyyyzzzzz.zzzz aaaddcccc...` (fixed columns)."""
    try:
        xyz = [float(line[c:c + 10]) for c in (0, 10, 20)]
    except ValueError:
        raise record.error(k, 'malformed', f"expected the atom line "
                           f"'xxxxx.xxxxyyyyy.yyyyzzzzz.zzzz aaa', got "
                           f"{line[:40]!r}") from None
    z = _element(line[31:34].strip(), record.path, record.place(k),
                 record.first + k)
    code = line[36:39].strip() or '0'
    if not code.isdigit() or int(code) not in SDF_CHARGE_CODES:
        raise record.error(k, 'malformed', f'unknown charge code {code!r} '
                           f'(expected 0 to 7)')
    return z, xyz, SDF_CHARGE_CODES[int(code)]


def _v2000_bond(record: _Record, line: str, k: int, num_atoms: int) -> None:
    try:
        atoms = int(line[0:3]), int(line[3:6])
    except ValueError:
        raise record.error(k, 'malformed', f"expected the bond line "
                           f"'111222ttt', got {line[:40]!r}") from None
    if not all(1 <= atom <= num_atoms for atom in atoms):
        raise record.error(k, 'malformed', f'bond between atoms {atoms} of '
                           f'a record of {num_atoms}')


def _v2000_charges(record: _Record, lines: List[str], start: int,
                   num_atoms: int) -> Optional[List[int]]:
    r"""The charges of the :obj:`M  CHG` lines of the property block from
    :obj:`start` on, or :obj:`None` if there are none."""
    charges = None
    for k in range(start, len(lines)):
        if lines[k].startswith('M  END'):
            return charges
        if not lines[k].startswith('M  CHG'):
            continue
        charges = charges or [0] * num_atoms
        fields = lines[k][6:].split()
        try:
            count = int(fields[0])
            pairs = [(int(fields[i]), int(fields[i + 1]))
                     for i in range(1, 2 * count, 2)]
        except (ValueError, IndexError):
            raise record.error(k, 'malformed', f"expected 'M  CHG' with a "
                               f"count and atom-charge pairs, got "
                               f"{lines[k][:40]!r}") from None
        for atom, charge in pairs:
            if not 1 <= atom <= num_atoms:
                raise record.error(k, 'malformed', f'charge of atom {atom} '
                                   f'of a record of {num_atoms}')
            charges[atom - 1] = charge
    raise record.error(len(lines) - 1, 'truncated',
                       "the record ends without its 'M  END' line")


def _v3000_record(record: _Record, lines: List[str]) -> Structure:
    r"""Reads a V3000 record with RDKit (:obj:`pip install
    torch-enf[molecules]`)."""
    from torch_enf.metrics.rdkit_metrics import _chem
    Chem = _chem()
    mol = Chem.MolFromMolBlock('\n'.join(lines), sanitize=False,
                               removeHs=False)
    if mol is None or mol.GetNumConformers() == 0:
        raise record.error(0, 'malformed', 'RDKit cannot read this V3000 '
                           'record as a 3D molecule')
    atoms = list(mol.GetAtoms())
    return _molecule(mol.GetConformer().GetPositions().tolist(),
                     [a.GetAtomicNum() for a in atoms],
                     [a.GetFormalCharge() for a in atoms], lines[0].strip())


def _npz_structures(path: str) -> List[Structure]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile) as error:
        raise ValueError(f'{path} is not a readable NumPy .npz archive '
                         f'({error})') from None
    missing = [key for key in ('pos', 'z') if key not in arrays]
    if missing:
        raise ValueError(f"{path} lacks the arrays {missing} (found "
                         f"{sorted(arrays)})")
    pos, z = arrays['pos'], arrays['z']
    charges = arrays.get('charges', np.zeros_like(z))
    for key, array, kind in (('pos', pos, 'fc'), ('z', z, 'iu'),
                             ('charges', charges, 'iu')):
        if array.dtype.kind not in kind:
            raise ValueError(f"{path}: {key!r} has dtype {array.dtype}")
    if charges.shape != z.shape:
        raise ValueError(f"{path}: 'charges' {list(charges.shape)} must "
                         f"have the shape of 'z' {list(z.shape)}")
    if pos.ndim == 3:
        structures = _npz_padded(path, pos, z, charges)
    else:
        structures = _npz_ragged(path, pos, z, charges,
                                 arrays.get('num_atoms'))
    return [_npz_structure(path, index, *arrays)
            for index, arrays in enumerate(structures)]


def _npz_padded(path: str, pos: np.ndarray, z: np.ndarray,
                charges: np.ndarray) -> Iterator[Tuple[np.ndarray, ...]]:
    r"""Structures of the :obj:`[S, M, 3]` layout, without padding."""
    if pos.shape[2] != 3 or z.shape not in (pos.shape[1:2], pos.shape[:2]):
        raise ValueError(f"{path}: 'pos' {list(pos.shape)} needs the shape "
                         f"[S, M, 3] and 'z' {list(z.shape)} [S, M] or [M]")
    z = np.broadcast_to(z, pos.shape[:2])
    charges = np.broadcast_to(charges, pos.shape[:2])
    for k in range(pos.shape[0]):
        atoms = z[k] != 0
        yield pos[k][atoms], z[k][atoms], charges[k][atoms]


def _npz_ragged(path: str, pos: np.ndarray, z: np.ndarray,
                charges: np.ndarray, num_atoms: Optional[np.ndarray]
                ) -> Iterator[Tuple[np.ndarray, ...]]:
    r"""Structures of the :obj:`[N, 3]` layout cut by :obj:`num_atoms`."""
    if pos.ndim != 2 or pos.shape[1] != 3 or z.shape != pos.shape[:1]:
        raise ValueError(f"{path}: 'pos' {list(pos.shape)} needs the shape "
                         f"[N, 3] (or [S, M, 3]) and 'z' {list(z.shape)} "
                         f"[N]")
    if num_atoms is None:
        num_atoms = np.array([len(z)])
    if (num_atoms.ndim != 1 or num_atoms.dtype.kind not in 'iu'
            or (num_atoms < 1).any() or num_atoms.sum() != len(z)):
        raise ValueError(f"{path}: 'num_atoms' must hold positive integers "
                         f"summing to the {len(z)} atoms of 'pos' (got "
                         f"{num_atoms.size} counts summing to "
                         f"{num_atoms.sum()})")
    bounds = np.cumsum(num_atoms)[:-1]
    yield from zip(np.split(pos, bounds), np.split(z, bounds),
                   np.split(charges, bounds))


def _npz_structure(path: str, index: int, pos: np.ndarray, z: np.ndarray,
                   charges: np.ndarray) -> Structure:
    place = f'structure {index}'
    if len(z) == 0:
        return StructureError(path, place, None, 'malformed',
                              'no atoms (all padding)')
    unknown = (z < 1) | (z > len(SYMBOLS))
    if unknown.any():
        return StructureError(path, place, None, 'unknown element',
                              f'unknown atomic number {int(z[unknown][0])} '
                              f'(known: 1 to {len(SYMBOLS)})')
    data = _molecule(pos.tolist(), z.tolist(), charges.tolist(), place)
    return _check_finite(data, lambda atom: StructureError(
        path, place, None, 'non-finite coordinates',
        f'non-finite coordinate of atom {atom} (in float32)'))
