r"""Users' own 3D molecules (SDF, XYZ and NumPy files) as a PyG dataset with
a seeded, recorded train/valid/test split."""
import glob
import hashlib
import json
import os
import os.path as osp
import sys
import warnings
from collections import Counter
from typing import (Callable, Dict, List, Optional, Sequence, Tuple,
                    Union)

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data, InMemoryDataset

from torch_enf.datasets.cache import load_processed
from torch_enf.elements import SYMBOLS
from torch_enf.io import (MOLECULE_SUFFIXES, Skipped, atomic_path,
                          read_molecules)

SPLITS = ('train', 'valid', 'test')
SPLIT_FILE = 'split.json'
FORMAT_VERSION = 1  # of the processed files; part of the cache key

PathLike = Union[str, os.PathLike]


def node_features(z: Tensor, atomic_numbers: Sequence[int]) -> Tensor:
    r"""Node features :math:`\mathbf{h} \in \mathbb{R}^{M \times (K + 1)}`
    of atoms with atomic numbers :obj:`z` :obj:`[M]`: a one-hot encoding
    over the :math:`K` elements :obj:`atomic_numbers` (in that order) in
    columns :obj:`0` to :obj:`K - 1`, followed by the atomic number (the
    nuclear charge) in column :obj:`K`. With :obj:`atomic_numbers = (1, 6,
    7, 8, 9)` these are the features of :class:`~torch_enf.datasets.QM9`.

    Raises:
        ValueError: For an atom whose element is not in
            :obj:`atomic_numbers`.
    """
    types = torch.as_tensor(list(atomic_numbers), device=z.device)
    one_hot = z.long()[:, None] == types
    unknown = ~one_hot.any(dim=1)
    if bool(unknown.any()):
        raise ValueError(f"Atomic number {int(z[unknown][0])} is not one of "
                         f"the node types {list(atomic_numbers)}")
    return torch.cat([one_hot.float(), z[:, None].float()], dim=1)


def find_files(files: Union[PathLike, Sequence[PathLike]]) -> List[str]:
    r"""The molecule files (:obj:`.sdf`, :obj:`.mol`, :obj:`.xyz`,
    :obj:`.npz`) named by :obj:`files`: a file, a folder (its molecule files,
    not recursively), a glob pattern such as :obj:`"data/*.sdf"` (with
    :obj:`**` recursive), or a list of these; sorted and without repeats.

    Raises:
        FileNotFoundError: A file or folder that does not exist, or a
            pattern, folder or list that names no molecule file.
    """
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    found = []
    for entry in map(str, files):
        if osp.isdir(entry):
            found += [osp.join(entry, name) for name in os.listdir(entry)
                      if _is_molecule_file(name)]
        elif glob.has_magic(entry):
            found += [path for path in glob.glob(entry, recursive=True)
                      if _is_molecule_file(path) and osp.isfile(path)]
        elif osp.exists(entry):
            found.append(entry)
        else:
            raise FileNotFoundError(f'{entry} does not exist')
    if not found:
        raise FileNotFoundError(f"{[str(f) for f in files]} name no molecule "
                                f"file ({', '.join(MOLECULE_SUFFIXES)})")
    return sorted({osp.abspath(path) for path in found})


def _is_molecule_file(path: str) -> bool:
    return osp.splitext(path)[1].lower() in MOLECULE_SUFFIXES


def check_fractions(fractions: Sequence[float]) -> Tuple[float, ...]:
    r"""Checks that :obj:`fractions` are three non-negative numbers, of the
    train, valid and test splits, summing to 1."""
    fractions = tuple(float(f) for f in fractions)
    if (len(fractions) != 3 or not all(0 <= f <= 1 for f in fractions)
            or abs(sum(fractions) - 1) > 1e-6):
        raise ValueError(f"'fractions' must be three non-negative numbers "
                         f"(train, valid, test) summing to 1, got "
                         f"{fractions}")
    return fractions


def draw_split(indices: Sequence[int], seed: int,
               fractions: Sequence[float]) -> Dict[str, List[int]]:
    r"""A seeded random split of :obj:`indices`: they are shuffled by
    :obj:`np.random.default_rng(seed).permutation`, and the shuffled list is
    cut into :obj:`round(fractions[1] * n)` validation and
    :obj:`round(fractions[2] * n)` test indices after the training ones (the
    rest). Every split is sorted.

    Raises:
        ValueError: If a split of positive fraction would be empty.
    """
    fractions = check_fractions(fractions)
    n = len(indices)
    num_valid, num_test = (round(f * n) for f in fractions[1:])
    sizes = dict(zip(SPLITS, (n - num_valid - num_test, num_valid, num_test)))
    for name, fraction in zip(SPLITS, fractions):
        if fraction > 0 and sizes[name] < 1:
            raise ValueError(f"The {name!r} split would hold no structure: "
                             f"{fraction:g} of {n} structures is less than "
                             f"one (change 'fractions' or add structures)")
    shuffled = np.asarray(indices)[np.random.default_rng(seed).permutation(n)]
    bounds = np.cumsum([0] + list(sizes.values()))
    return {name: sorted(shuffled[start:end].tolist())
            for name, start, end in zip(SPLITS, bounds[:-1], bounds[1:])}


def load_or_draw_split(path: str, indices: Sequence[int], seed: int,
                       fractions: Sequence[float],
                       extra: Optional[dict] = None) -> Dict[str, List[int]]:
    r"""The split recorded in the JSON file :obj:`path` if it was drawn
    with :obj:`seed` and :obj:`fractions` and covers exactly
    :obj:`indices`; otherwise a new one from :func:`draw_split`, written to
    :obj:`path` (atomically, with :obj:`extra` entries) with a warning if it
    replaces another."""
    fractions = check_fractions(fractions)
    recorded = None
    if osp.exists(path):
        with open(path) as f:
            recorded = json.load(f)
        members = sorted(i for name in SPLITS for i in recorded.get(name, []))
        if (recorded.get('seed') == seed
                and tuple(recorded.get('fractions', ())) == fractions
                and members == sorted(indices)):
            return {name: recorded[name] for name in SPLITS}
        warnings.warn(f"{path} was drawn for other structures, seed or "
                      f"fractions; drawing a new split (seed {seed}, "
                      f"fractions {fractions})")
    split = draw_split(indices, seed, fractions)
    with atomic_path(path) as tmp, open(tmp, 'w') as f:
        json.dump({'seed': seed, 'fractions': fractions, **(extra or {}),
                   **split}, f)
    return split


class MoleculeDataset(InMemoryDataset):
    r"""3D molecules of the user's own files as a dataset for the molecule
    flow, in a seeded train/valid/test split.

    The structures of :obj:`files` (SDF, XYZ or NumPy :obj:`.npz`, read by
    :func:`~torch_enf.io.read_molecules`; several files in sorted path
    order) are numbered from 0 in file order. A structure is skipped, and
    reported, when it cannot be read (a malformed or truncated record, an
    unknown element, non-finite coordinates), has a single atom, more atoms
    than :obj:`max_num_atoms`, or an element outside :obj:`atomic_numbers`.
    The skips are printed with their counts when the files are processed
    and kept in :attr:`skipped` (:class:`~torch_enf.io.Skipped` entries
    naming the file, the structure and the reason).

    Every graph holds :obj:`pos` :obj:`[M, 3]` (float32, Angstrom, centred at
    the origin), :obj:`z` :obj:`[M]`, the formal :obj:`charge` :obj:`[M]`,
    :obj:`h` :obj:`[M, K + 1]` (:func:`node_features` over
    :attr:`atomic_numbers`), :obj:`idx` (the structure number) and
    :obj:`name`.

    The kept structures are processed once and cached under
    :obj:`root/processed/<key>`, the key hashing the files' paths, sizes and
    modification times and the options that change the processing, so that
    an edited file is read again. The split is drawn among the kept
    structures (see :func:`draw_split`) and recorded as structure numbers in
    :obj:`root/split.json`, which later constructions reuse as long as it
    matches the seed, the fractions and the kept structures (it is redrawn
    with a warning otherwise). Use one root per data set.

    Args:
        root (str): Root directory of the cache and the split.
        files (str or list): A file, a folder, a glob pattern, or a list of
            these (see :func:`find_files`).
        split (str, optional): :obj:`"train"`, :obj:`"valid"` or
            :obj:`"test"`. (default: :obj:`"train"`)
        atomic_numbers (list of int, optional): The elements to keep, in the
            order of the one-hot features; structures with other elements
            are skipped. Defaults to the elements found in the data, sorted.
        max_num_atoms (int, optional): Skip structures with more atoms.
        seed (int, optional): Seed of the split. (default: :obj:`0`)
        fractions (tuple, optional): Fractions of the train, valid and test
            splits. (default: :obj:`(0.8, 0.1, 0.1)`)
        transform (callable, optional): Applied on every access.
        pre_transform (callable, optional): Applied before caching.
        force_reload (bool, optional): Process the files again.
        log (bool, optional): Print progress and the skip report.

    Raises:
        FileNotFoundError: :obj:`files` names no molecule file.
        ValueError: No structure is left after skipping, the requested split
            would be empty, or an option is invalid.
    """
    def __init__(self, root: PathLike,
                 files: Union[PathLike, Sequence[PathLike]],
                 split: str = 'train',
                 atomic_numbers: Optional[Sequence[int]] = None,
                 max_num_atoms: Optional[int] = None, seed: int = 0,
                 fractions: Sequence[float] = (0.8, 0.1, 0.1),
                 transform: Optional[Callable] = None,
                 pre_transform: Optional[Callable] = None,
                 force_reload: bool = False, log: bool = True) -> None:
        if split not in SPLITS:
            raise ValueError(f"Unknown split {split!r} (expected one of "
                             f"{SPLITS})")
        self.paths = find_files(files)
        self.split = split
        self.requested_atomic_numbers = _check_atomic_numbers(atomic_numbers)
        if max_num_atoms is not None and (not isinstance(max_num_atoms, int)
                                          or max_num_atoms < 2):
            raise ValueError(f"'max_num_atoms' must be an integer of at least "
                             f"2, got {max_num_atoms!r}")
        self.max_num_atoms = max_num_atoms
        self.seed = seed
        self.fractions = check_fractions(fractions)
        super().__init__(str(root), transform, pre_transform, log=log,
                         force_reload=force_reload)
        load_processed(self)
        with open(self.processed_paths[1]) as f:
            report = json.load(f)
        self.atomic_numbers: List[int] = report['atomic_numbers']
        self.skipped: List[Skipped] = [Skipped(*s) for s in report['skipped']]
        self.split_indices = load_or_draw_split(
            osp.join(self.root, SPLIT_FILE), self._data.idx.tolist(), seed,
            self.fractions, extra={'files': report['files']})
        wanted = self.split_indices[split]
        if not wanted:
            raise ValueError(f"The {split!r} split is empty (fractions "
                             f"{self.fractions})")
        self._indices = np.searchsorted(self._data.idx.numpy(),
                                        wanted).tolist()

    @property
    def raw_file_names(self) -> List[str]:
        return []

    @property
    def processed_dir(self) -> str:
        return osp.join(self.root, 'processed', self._cache_key())

    @property
    def processed_file_names(self) -> List[str]:
        return ['data.pt', 'report.json']

    def _cache_key(self) -> str:
        stats = [os.stat(path) for path in self.paths]
        content = json.dumps({
            'files': [(path, s.st_size, s.st_mtime_ns)
                      for path, s in zip(self.paths, stats)],
            'atomic_numbers': self.requested_atomic_numbers,
            'max_num_atoms': self.max_num_atoms,
            'version': FORMAT_VERSION,
        })
        return hashlib.sha1(content.encode()).hexdigest()[:12]

    def process(self) -> None:
        molecules, skipped, files = [], [], []
        offset = 0
        for path in self.paths:
            file = read_molecules(path, on_error='skip')
            skipped += file.skipped
            for index, data in zip(file.indices, file.molecules):
                problem = self._problem(data)
                if problem is not None:
                    reason, detail = problem
                    skipped.append(Skipped(
                        path, index, None, reason,
                        f'{path}, structure {index} ({data.name}): {detail}'))
                    continue
                data.idx = torch.tensor([offset + index])
                molecules.append(data)
            count = len(file.molecules) + len(file.skipped)
            files.append([path, count])
            offset += count
        if self.log:
            print(skip_report(skipped, offset), file=sys.stderr)
        if not molecules:
            raise ValueError(f"No structure of {self.paths} is left after "
                             f"skipping: {dict(_reasons(skipped))}")
        atomic_numbers = self.requested_atomic_numbers or sorted(
            {z for data in molecules for z in data.z.tolist()})
        data_list = [self._finish(data, atomic_numbers) for data in molecules]
        with atomic_path(self.processed_paths[1]) as tmp, open(tmp, 'w') as f:
            json.dump({'atomic_numbers': atomic_numbers, 'files': files,
                       'skipped': skipped}, f)
        with atomic_path(self.processed_paths[0]) as tmp:
            self.save(data_list, tmp)

    def _problem(self, data: Data) -> Optional[Tuple[str, str]]:
        r"""The reason and its explanation to skip a readable structure."""
        if data.num_nodes < 2:
            return 'single atom', 'a single atom'
        if self.max_num_atoms is not None \
                and data.num_nodes > self.max_num_atoms:
            return 'too many atoms', (f'{data.num_nodes} atoms, more than '
                                      f'max_num_atoms={self.max_num_atoms}')
        if self.requested_atomic_numbers is not None:
            outside = set(data.z.tolist()) - set(
                self.requested_atomic_numbers)
            if outside:
                z = min(outside)
                return 'element outside atomic_numbers', (
                    f'{SYMBOLS[z - 1]} (atomic number {z}) is not in '
                    f'atomic_numbers={self.requested_atomic_numbers}')
        return None

    def _finish(self, data: Data, atomic_numbers: List[int]) -> Data:
        data.pos = data.pos - data.pos.mean(dim=0)
        data.h = node_features(data.z, atomic_numbers)
        return data if self.pre_transform is None else \
            self.pre_transform(data)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({len(self)}, {self.split}, '
                f'elements {[SYMBOLS[z - 1] for z in self.atomic_numbers]})')


def _check_atomic_numbers(atomic_numbers: Optional[Sequence[int]]
                          ) -> Optional[List[int]]:
    if atomic_numbers is None:
        return None
    numbers = [int(z) for z in atomic_numbers]
    if not numbers or len(set(numbers)) != len(numbers) or not all(
            1 <= z <= len(SYMBOLS) for z in numbers):
        raise ValueError(f"'atomic_numbers' must be distinct atomic numbers "
                         f"from 1 to {len(SYMBOLS)}, got {atomic_numbers}")
    return numbers


def _reasons(skipped: Sequence[Skipped]) -> List[Tuple[str, int]]:
    return Counter(s.reason for s in skipped).most_common()


def skip_report(skipped: Sequence[Skipped], total: int) -> str:
    r"""A summary of the skipped structures: their number per reason, with
    the first of every reason as an example."""
    lines = [f'Kept {total - len(skipped)} of {total} structures, skipped '
             f'{len(skipped)}' + (':' if skipped else '')]
    for reason, count in _reasons(skipped):
        example = next(s for s in skipped if s.reason == reason)
        lines += [f'  {count:6d}  {reason}', f'          e.g. '
                  f'{example.message}']
    return '\n'.join(lines)
