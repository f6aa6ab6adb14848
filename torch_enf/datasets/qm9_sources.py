r"""The raw sources of :class:`~torch_enf.datasets.QM9`: readers of the
:obj:`qm9pack` package's CSV files, of the raw files of
:class:`torch_geometric.datasets.QM9` (:obj:`gdb9.sdf`,
:obj:`uncharacterized.txt`) and of padded :obj:`.npz` files, all giving
:class:`QM9Molecules`, and the downloader of the PyG raw files.

The SDF reader is QM9's own, not :func:`torch_enf.io.read_sdf`: that one
returns float32 positions, while the processed splits centre the four
decimals of :obj:`gdb9.sdf` in float64 before casting to float32.
"""
import csv
import importlib.util
import logging
import os
import os.path as osp
import shutil
import sys
import urllib.request
import zipfile
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from torch_enf.elements import QM9_ATOMIC_NUMBERS, QM9_SYMBOLS
from torch_enf.io import atomic_path

logger = logging.getLogger(__name__)

NUM_QM9_IDS = 133885
r"""QM9 indices run from 1 to 133,885."""

NUM_CHARACTERISED = 130831
r"""Molecules left after removing the 3,054 that failed the consistency check
of the original QM9 publication (``uncharacterized.txt``)."""

MAX_ATOMS = 29
ATOM_TYPES = QM9_SYMBOLS
ATOMIC_NUMBERS = QM9_ATOMIC_NUMBERS

PYG_RAW_URL = ('https://deepchemdata.s3-us-west-1.amazonaws.com/datasets/'
               'molnet_publish/qm9.zip')
PYG_UNCHARACTERISED_URL = 'https://ndownloader.figshare.com/files/3195404'
DOWNLOAD_TIMEOUT = 10.0  # seconds without an answer

MOLECULES_EXTRA_HINT = 'pip install torch-enf[molecules]'

PROPERTY_COLUMNS = ('Dipole_debye', 'Polarizability_bohr3', 'HOMO_au',
                    'LUMO_au', 'HOMO_LUMO_gap_au', 'R2_bohr2', 'ZPVE_au',
                    'InternalEnergy_0K_au', 'InternalEnergy_298K_au',
                    'Enthalphy_298K_au', 'GibbsFreeEnergy_298K_au',
                    'Heatcapacity_Cv_cal_mol_K')
r"""The :obj:`qm9pack` columns of the twelve QM9 properties (mu, alpha,
HOMO, LUMO, gap, R2, ZPVE, U0, U, H, G, Cv), in the units of their names:
Debye, bohr^3, Hartree (:obj:`_au`), bohr^2 and cal/(mol K)."""


@dataclass
class QM9Molecules:
    r"""Molecules in a flat layout: atoms of all molecules concatenated.

    Attributes:
        index (np.ndarray): QM9 indices, shape :obj:`[N]`, strictly increasing.
        num_atoms (np.ndarray): Atom counts, shape :obj:`[N]`.
        atomic_numbers (np.ndarray): Shape :obj:`[sum(num_atoms)]`.
        positions (np.ndarray): Angstrom, shape :obj:`[sum(num_atoms), 3]`.
        uncharacterised (np.ndarray): The QM9 indices that are excluded from
            the 130,831 characterised molecules (needed to place molecules in
            the standard split).
        properties (np.ndarray, optional): The twelve properties of
            :obj:`PROPERTY_COLUMNS` in their :obj:`qm9pack` units, shape
            :obj:`[N, 12]` (float64), when they were read.
    """
    index: np.ndarray
    num_atoms: np.ndarray
    atomic_numbers: np.ndarray
    positions: np.ndarray
    uncharacterised: np.ndarray
    properties: Optional[np.ndarray] = None

    def validate(self) -> None:
        r"""Raises :class:`ValueError` naming the first offending molecule."""
        if not (self.index.ndim == self.num_atoms.ndim == 1
                and len(self.index) == len(self.num_atoms)):
            raise ValueError(f"'index' {self.index.shape} and 'num_atoms' "
                             f"{self.num_atoms.shape} must be equally long "
                             f"vectors")
        total = int(self.num_atoms.sum())
        if (self.atomic_numbers.shape != (total, )
                or self.positions.shape != (total, 3)):
            raise ValueError(f"Expected {total} atoms, got atomic numbers "
                             f"{self.atomic_numbers.shape} and positions "
                             f"{self.positions.shape}")
        bad = (self.num_atoms < 1) | (self.num_atoms > MAX_ATOMS)
        if bad.any():
            raise ValueError(f"QM9 molecule {self.index[bad][0]} has "
                             f"{self.num_atoms[bad][0]} atoms (supported: 1 "
                             f"to {MAX_ATOMS})")
        molecule_of_atom = np.repeat(np.arange(len(self.index)),
                                     self.num_atoms)
        unknown = ~np.isin(self.atomic_numbers, ATOMIC_NUMBERS)
        if unknown.any():
            first = molecule_of_atom[unknown][0]
            raise ValueError(f"QM9 molecule {self.index[first]} has an atom "
                             f"with unknown atomic number "
                             f"{self.atomic_numbers[unknown][0]} (supported: "
                             f"{dict(zip(ATOM_TYPES, ATOMIC_NUMBERS))})")
        not_finite = ~np.isfinite(self.positions).all(axis=1)
        if not_finite.any():
            raise ValueError(f"QM9 molecule "
                             f"{self.index[molecule_of_atom[not_finite][0]]} "
                             f"has non-finite coordinates")
        out_of_range = (self.index < 1) | (self.index > NUM_QM9_IDS)
        if out_of_range.any():
            raise ValueError(f"QM9 index {self.index[out_of_range][0]} is "
                             f"outside 1..{NUM_QM9_IDS}")
        not_increasing = np.diff(self.index) <= 0
        if not_increasing.any():
            raise ValueError(f"QM9 indices must be strictly increasing; "
                             f"molecule {self.index[1:][not_increasing][0]} "
                             f"is out of order or duplicated")
        excluded = np.isin(self.index, self.uncharacterised)
        if excluded.any():
            raise ValueError(f"QM9 molecule {self.index[excluded][0]} is "
                             f"listed as uncharacterised")
        expected = (len(self.index), len(PROPERTY_COLUMNS))
        if self.properties is not None and self.properties.shape != expected:
            raise ValueError(f"'properties' must have shape {list(expected)} "
                             f"(got {list(self.properties.shape)})")

    def select(self, mask: np.ndarray) -> 'QM9Molecules':
        r"""Returns the molecules where the boolean :obj:`mask` holds."""
        atom_mask = np.repeat(mask, self.num_atoms)
        properties = None if self.properties is None else \
            self.properties[mask]
        return QM9Molecules(self.index[mask], self.num_atoms[mask],
                            self.atomic_numbers[atom_mask],
                            self.positions[atom_mask], self.uncharacterised,
                            properties)


def read_qm9pack(folder: Optional[str] = None,
                 properties: bool = False) -> QM9Molecules:
    r"""Reads the molecules shipped by the :obj:`qm9pack` package.

    Its CSV files :obj:`data/qm9_part{1,2,3}.csv` hold one molecule per row;
    the columns used are :obj:`Index`, :obj:`N_atoms`, :obj:`Elements` (a
    list such as :obj:`['C','H','H','H','H']`) and :obj:`XYZ_Ang` (nested
    lists of DFT coordinates in Angstrom), and with :obj:`properties=True`
    also the twelve :obj:`PROPERTY_COLUMNS`. The package itself is not
    imported (its :obj:`__init__` needs :obj:`pkg_resources`); only its data
    folder is located. QM9 indices absent from the package are the
    uncharacterised ones.

    Args:
        folder (str, optional): The data folder. Located through
            :obj:`importlib` when :obj:`None`.
        properties (bool, optional): Also read the twelve properties into
            :obj:`QM9Molecules.properties`. (default: :obj:`False`)

    Raises:
        ValueError: For a missing column, a short row, or (with
            :obj:`properties=True`) a property that is not a finite number,
            naming the file, line and column.
    """
    folder = folder or qm9pack_data_folder()
    csv.field_size_limit(sys.maxsize)
    wanted = ('Index', 'N_atoms', 'Elements', 'XYZ_Ang')
    if properties:
        wanted += PROPERTY_COLUMNS
    text = tuple([] for _ in wanted)
    parsed = []
    for part in (1, 2, 3):
        name = f'qm9_part{part}.csv'
        first = len(text[0])
        _read_csv_columns(osp.join(folder, name), wanted, text)
        if properties:
            parsed.append(_parse_properties(
                [column[first:] for column in text[4:]], name))
    molecules = _parse_text_columns(*text[:4])
    if properties:
        molecules.properties = np.concatenate(parsed)
    return molecules


def _read_csv_columns(path: str, wanted: Tuple[str, ...],
                      out: Tuple[List[str], ...]) -> None:
    r"""Appends the text of the :obj:`wanted` columns of every row of the
    CSV file :obj:`path` to the lists :obj:`out` (one per column)."""
    name = osp.basename(path)
    with open(path, newline='') as f:
        rows = csv.reader(f)
        header = next(rows)
        missing = [column for column in wanted if column not in header]
        if missing:
            raise ValueError(f"{name} lacks the columns {missing}")
        columns = [header.index(column) for column in wanted]
        for line, row in enumerate(rows, start=2):
            try:
                fields = [row[column] for column in columns]
            except IndexError:
                raise ValueError(f"{name} line {line}: {len(row)} columns, "
                                 f"expected {len(header)}") from None
            for values, field in zip(out, fields):
                values.append(field)


def _parse_properties(columns: List[List[str]], name: str) -> np.ndarray:
    r"""Parses the text of the :obj:`PROPERTY_COLUMNS` of one CSV file
    into an :obj:`[N, 12]` float64 array, naming the file, line and column
    of the first value that is not a finite number."""
    try:
        values = np.array(columns, dtype=np.float64).T
    except ValueError:
        values = np.array([[_to_float(x) for x in column]
                           for column in columns]).T
    bad = ~np.isfinite(values)
    if bad.any():
        row, column = np.argwhere(bad)[0]
        raise ValueError(f"{name} line {row + 2}, column "
                         f"{PROPERTY_COLUMNS[column]!r}: "
                         f"{columns[column][row]!r} is not a finite number")
    return values


def _to_float(text: str) -> float:
    return float(text) if _is_float(text) else float('nan')


def _parse_text_columns(index: List[str], num_atoms: List[str],
                        elements: List[str],
                        coordinates: List[str]) -> QM9Molecules:
    index_array = _parse_integers(index, 'Index', index)
    num_atoms_array = _parse_integers(num_atoms, 'N_atoms', index)
    element_lists = [_split_list(text) for text in elements]
    coordinate_lists = [_split_list(text) for text in coordinates]
    for name, lists, per_atom in (('Elements', element_lists, 1),
                                  ('XYZ_Ang', coordinate_lists, 3)):
        lengths = np.array([len(values) for values in lists])
        bad = lengths != per_atom * num_atoms_array
        if bad.any():
            first = np.flatnonzero(bad)[0]
            raise ValueError(f"QM9 molecule {index[first]}: '{name}' has "
                             f"{lengths[first]} entries for "
                             f"{num_atoms_array[first]} atoms")
    symbols = [symbol.strip("' ") for values in element_lists
               for symbol in values]
    coordinates = [x for values in coordinate_lists for x in values]
    uncharacterised = np.setdiff1d(np.arange(1, NUM_QM9_IDS + 1),
                                   index_array)
    return _assemble(index_array, num_atoms_array, symbols, coordinates,
                     uncharacterised)


def _split_list(text: str) -> List[str]:
    r"""Splits a (possibly nested) bracketed list such as
    :obj:`[[1.0,2.0],[3.0,4.0]]` into its flat items."""
    return text.replace('[', '').replace(']', '').split(',')


def _parse_integers(values: List[str], column: str,
                    index: List[str]) -> np.ndarray:
    try:
        return np.array(values, dtype=np.int64)
    except ValueError:
        first = next(i for i, v in enumerate(values)
                     if not v.strip().isdigit())
        raise ValueError(f"QM9 row with index {index[first]!r}: '{column}' "
                         f"is not an integer: {values[first]!r}") from None


def read_pyg_raw(raw_dir: str) -> QM9Molecules:
    r"""Reads the raw files of :class:`torch_geometric.datasets.QM9`:
    :obj:`gdb9.sdf` (V2000 records titled :obj:`gdb_<QM9 index>`, coordinates
    in Angstrom) and :obj:`uncharacterized.txt`. Uncharacterised records of
    the SDF are skipped (the count is logged).
    """
    uncharacterised = read_uncharacterised(osp.join(raw_dir,
                                                    'uncharacterized.txt'))
    with open(osp.join(raw_dir, 'gdb9.sdf')) as f:
        records = f.read().split('$$$$')
    index, num_atoms, atom_lines = [], [], []
    for record in records:
        lines = record.strip('\n').split('\n')
        if len(lines) < 4:
            continue  # the empty tail after the final '$$$$'
        title = lines[0].strip()
        if not title.startswith('gdb_') or not title[4:].isdigit():
            raise ValueError(f"SDF record title {title!r} is not "
                             f"'gdb_<QM9 index>'")
        try:
            count = int(lines[3][:3])
        except ValueError:
            raise ValueError(f"QM9 molecule {title[4:]}: malformed SDF "
                             f"counts line {lines[3]!r}") from None
        if len(lines) < 4 + count:
            raise ValueError(f"QM9 molecule {title[4:]}: SDF record ends "
                             f"before its {count} atoms")
        index.append(int(title[4:]))
        num_atoms.append(count)
        atom_lines.extend(lines[4:4 + count])
    fields = [line.split()[:4] for line in atom_lines]
    if any(len(f) < 4 for f in fields):
        raise ValueError("Malformed SDF atom line (expected 'x y z symbol')")
    symbols = [f[3] for f in fields]
    coordinates = [x for f in fields for x in f[:3]]
    molecules = _assemble(np.array(index), np.array(num_atoms), symbols,
                          coordinates, uncharacterised)
    keep = ~np.isin(molecules.index, uncharacterised)
    logger.info(f"Skipped {int((~keep).sum())} uncharacterised molecules "
                f"of gdb9.sdf")
    return molecules.select(keep)


def _assemble(index: np.ndarray, num_atoms: np.ndarray, symbols: List[str],
              coordinates: List[str],
              uncharacterised: np.ndarray) -> QM9Molecules:
    r"""Builds :class:`QM9Molecules` from element symbols (one per atom) and
    coordinate strings (three per atom), naming the molecule of the first
    unknown element or malformed number."""
    owner = np.repeat(index, num_atoms)
    symbol_to_z = dict(zip(ATOM_TYPES, ATOMIC_NUMBERS))
    atomic_numbers = np.array([symbol_to_z.get(s, -1) for s in symbols],
                              dtype=np.int64)
    if (atomic_numbers < 0).any():
        first = np.flatnonzero(atomic_numbers < 0)[0]
        raise ValueError(f"QM9 molecule {owner[first]} has unknown element "
                         f"{symbols[first]!r}")
    try:
        positions = np.array(coordinates, dtype=np.float64)
    except ValueError:
        first = next(i for i, x in enumerate(coordinates) if not _is_float(x))
        raise ValueError(f"QM9 molecule {owner[first // 3]}: malformed "
                         f"coordinate {coordinates[first]!r}") from None
    return QM9Molecules(index, num_atoms, atomic_numbers,
                        positions.reshape(-1, 3), uncharacterised)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_uncharacterised(path: str) -> np.ndarray:
    r"""Reads the QM9 indices listed in :obj:`uncharacterized.txt`: every
    line whose first token is an integer (the header and footer have none).
    """
    with open(path) as f:
        tokens = [line.split() for line in f]
    return np.array(sorted(int(t[0]) for t in tokens if t and t[0].isdigit()),
                    dtype=np.int64)


def read_npz(path: str) -> QM9Molecules:
    r"""Reads molecules from a padded :obj:`.npz` file.

    Keys: :obj:`index` :obj:`[N]`, :obj:`num_atoms` :obj:`[N]`,
    :obj:`charges` :obj:`[N, P]` (atomic numbers, 0 = padding) and
    :obj:`positions` :obj:`[N, P, 3]` (Angstrom), the layout of the
    published EDM split files; optionally :obj:`uncharacterized` (the 3,054
    excluded QM9 indices). Without that key the file must hold all 130,831
    characterised molecules, so that the absent indices are the excluded
    ones.
    """
    with np.load(path) as f:
        missing = {'index', 'num_atoms', 'charges', 'positions'} - set(f)
        if missing:
            raise ValueError(f"{path} lacks the keys {sorted(missing)}")
        index = f['index'].astype(np.int64)
        num_atoms = f['num_atoms'].astype(np.int64)
        charges, positions = f['charges'], f['positions']
        uncharacterised = (f['uncharacterized'].astype(np.int64)
                           if 'uncharacterized' in f else None)
    if charges.ndim != 2 or positions.shape != (*charges.shape, 3) \
            or len(index) != len(charges) or len(num_atoms) != len(index):
        raise ValueError(f"{path}: mismatched widths: index {index.shape}, "
                         f"num_atoms {num_atoms.shape}, charges "
                         f"{charges.shape}, positions {positions.shape}")
    if uncharacterised is None:
        if len(index) != NUM_CHARACTERISED:
            raise ValueError(f"{path} holds {len(index)} molecules, not all "
                             f"{NUM_CHARACTERISED}, and no 'uncharacterized' "
                             f"key: its molecules cannot be placed in the "
                             f"standard split")
        uncharacterised = np.setdiff1d(np.arange(1, NUM_QM9_IDS + 1), index)
    width = charges.shape[1]
    too_many = num_atoms > width
    if too_many.any():
        raise ValueError(f"QM9 molecule {index[too_many][0]} has "
                         f"{num_atoms[too_many][0]} atoms but the file is "
                         f"padded to {width}")
    atom_mask = np.arange(width) < num_atoms[:, None]
    inconsistent = ((charges != 0) != atom_mask).any(axis=1)
    if inconsistent.any():
        raise ValueError(f"QM9 molecule {index[inconsistent][0]}: the "
                         f"non-zero charges disagree with 'num_atoms'")
    return QM9Molecules(index, num_atoms, charges[atom_mask].astype(np.int64),
                        positions[atom_mask].astype(np.float64),
                        uncharacterised)


def save_npz(path: str, molecules: QM9Molecules) -> None:
    r"""Writes :obj:`molecules` in the layout read by :func:`read_npz`
    (compressed, padded to :obj:`MAX_ATOMS`, written atomically)."""
    count = len(molecules.index)
    atom_mask = np.arange(MAX_ATOMS) < molecules.num_atoms[:, None]
    charges = np.zeros((count, MAX_ATOMS), dtype=np.int64)
    positions = np.zeros((count, MAX_ATOMS, 3), dtype=np.float32)
    charges[atom_mask] = molecules.atomic_numbers
    positions[atom_mask] = molecules.positions
    with atomic_path(path) as tmp, open(tmp, 'wb') as f:
        np.savez_compressed(f, index=molecules.index,
                            num_atoms=molecules.num_atoms, charges=charges,
                            positions=positions,
                            uncharacterized=molecules.uncharacterised)


def qm9pack_installed() -> bool:
    r"""Whether the :obj:`qm9pack` package is installed (it is not
    imported)."""
    return importlib.util.find_spec('qm9pack') is not None


def qm9pack_data_folder() -> str:
    r"""Locates the data folder of :obj:`qm9pack` without importing it."""
    spec = importlib.util.find_spec('qm9pack')
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"QM9 needs its raw files in 'root/raw', internet "
                          f"access, or the 'qm9pack' package: "
                          f"{MOLECULES_EXTRA_HINT}")
    return osp.join(list(spec.submodule_search_locations)[0], 'data')


def pyg_raw_present(raw_dir: str) -> bool:
    r"""Whether :obj:`raw_dir` holds the PyG raw files that
    :func:`read_pyg_raw` reads."""
    return all(osp.exists(osp.join(raw_dir, name))
               for name in ('gdb9.sdf', 'uncharacterized.txt'))


def download_pyg_raw(raw_dir: str, timeout: float = DOWNLOAD_TIMEOUT) -> None:
    r"""Downloads the raw files of :class:`torch_geometric.datasets.QM9`
    into :obj:`raw_dir`, each file written atomically, so that
    :func:`pyg_raw_present` holds only for complete files.

    Raises:
        OSError: Quickly when offline, naming the URL and the other sources.
    """
    archive = osp.join(raw_dir, 'qm9.zip')
    _download(PYG_RAW_URL, archive, timeout)
    with zipfile.ZipFile(archive) as f:
        for member in f.infolist():
            if member.is_dir():
                continue
            path = osp.join(raw_dir, osp.basename(member.filename))
            with f.open(member) as source, atomic_path(path) as tmp, \
                    open(tmp, 'wb') as target:
                shutil.copyfileobj(source, target)
    os.remove(archive)
    _download(PYG_UNCHARACTERISED_URL,
              osp.join(raw_dir, 'uncharacterized.txt'), timeout)


def _download(url: str, path: str, timeout: float) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, \
                atomic_path(path) as tmp, open(tmp, 'wb') as f:
            shutil.copyfileobj(response, f, 1 << 20)
    except OSError as error:
        raise OSError(f"Could not download {url} ({error}). QM9 needs its "
                      f"raw files in {osp.dirname(path)}, internet access, "
                      f"or the 'qm9pack' package: {MOLECULES_EXTRA_HINT}"
                      ) from error
