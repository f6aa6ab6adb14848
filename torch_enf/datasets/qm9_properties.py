r"""QM9 property prediction as in the `"E(n) Equivariant Graph Neural
Networks" <https://arxiv.org/abs/2102.09844>`_ paper (Section 5.3): the
twelve targets, their units and atom references, the node features of its
QM9 model and the dataset in Cormorant's split."""
import hashlib
import os.path as osp
from pathlib import Path
from typing import Callable, List, NamedTuple, Optional, Union

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data, InMemoryDataset
from tqdm import tqdm

from torch_enf.datasets.qm9 import SPLIT_SIZES, standard_split
from torch_enf.datasets.qm9_sources import (ATOMIC_NUMBERS, QM9Molecules,
                                            qm9pack_data_folder,
                                            read_qm9pack,
                                            read_uncharacterised)
from torch_enf.io import atomic_path

HARTREE_TO_MEV = 27211.386
r"""Millielectronvolts per Hartree."""


class Target(NamedTuple):
    r"""One QM9 regression target: its :obj:`name`, its column
    :obj:`index` in :obj:`data.y` and its :obj:`unit`."""
    name: str
    index: int
    unit: str


TARGETS = (
    Target('mu', 0, 'D'),
    Target('alpha', 1, 'bohr^3'),
    Target('homo', 2, 'meV'),
    Target('lumo', 3, 'meV'),
    Target('gap', 4, 'meV'),
    Target('r2', 5, 'bohr^2'),
    Target('zpve', 6, 'meV'),
    Target('U0', 7, 'meV'),
    Target('U', 8, 'meV'),
    Target('H', 9, 'meV'),
    Target('G', 10, 'meV'),
    Target('Cv', 11, 'cal/mol K'),
)
r"""The twelve targets of the EGNN paper's Table 3, in its order and units
(the names of the official code's :obj:`--property`)."""

UNIT_FACTORS = np.array([1.0, 1.0, HARTREE_TO_MEV, HARTREE_TO_MEV,
                         HARTREE_TO_MEV, 1.0, HARTREE_TO_MEV, HARTREE_TO_MEV,
                         HARTREE_TO_MEV, HARTREE_TO_MEV, HARTREE_TO_MEV, 1.0])
r"""Factors from the units of :obj:`qm9pack` (Debye, bohr^3, Hartree,
bohr^2, cal/(mol K)) to those of :obj:`TARGETS`."""

ATOM_REFERENCES = np.array([
    # ZPVE, U0, U, H, G (Hartree), Cv (cal/(mol K)) of the free atoms.
    [0.0, -0.500273, -0.498857, -0.497912, -0.510927, 2.981],  # H
    [0.0, -37.846772, -37.845355, -37.844411, -37.861317, 2.981],  # C
    [0.0, -54.583861, -54.582445, -54.581501, -54.598897, 2.981],  # N
    [0.0, -75.064579, -75.063162, -75.062219, -75.079532, 2.981],  # O
    [0.0, -99.718730, -99.717314, -99.716370, -99.733544, 2.981],  # F
])
r"""The atom references of QM9 (:obj:`atomref.txt` of its publication) of
ZPVE, U0, U, H, G and Cv for H, C, N, O and F, in :obj:`qm9pack` units;
they are the targets 6 to 11."""

REFERENCED_TARGETS = slice(6, 12)

NUM_CHARGE_POWERS = 3
r"""Powers :math:`0, 1, 2` of the scaled charge in :func:`node_features`
(the official code's :obj:`--charge_power 2`)."""


def resolve_target(target: Union[str, int]) -> Target:
    r"""The :obj:`Target` given by its name (case-insensitive, *e.g.*
    :obj:`"homo"`) or its index :math:`0, \ldots, 11` (an :obj:`int` or a
    string of digits).

    Raises:
        ValueError: For an unknown name (listing the twelve) or an index
            out of range.
    """
    if isinstance(target, str) and target.strip().isdigit():
        target = int(target)
    if isinstance(target, bool) or not isinstance(target, (int, str)):
        raise ValueError(f"A target is a name or an index, not "
                         f"{target!r}")
    if isinstance(target, int):
        if not 0 <= target < len(TARGETS):
            raise ValueError(f"Target index {target} is out of range "
                             f"(expected 0 to {len(TARGETS) - 1})")
        return TARGETS[target]
    for candidate in TARGETS:
        if candidate.name.lower() == target.strip().lower():
            return candidate
    names = ', '.join(t.name for t in TARGETS)
    raise ValueError(f"Unknown QM9 target {target!r} (expected one of: "
                     f"{names}; or an index 0 to {len(TARGETS) - 1})")


def targets_from_properties(properties: np.ndarray,
                            atomic_numbers: np.ndarray,
                            num_atoms: np.ndarray) -> np.ndarray:
    r"""Converts :obj:`qm9pack` properties to the targets of the EGNN paper:

    .. math::
        y_{gt} = c_t \Big(p_{gt} - \sum_{i \in g} r_{t}(z_i)\Big),

    with the unit factors :math:`c_t` of :obj:`UNIT_FACTORS` and the atom
    references :math:`r_t` of :obj:`ATOM_REFERENCES` (zero for the first
    six targets), as the official code's Cormorant loader does
    (:obj:`subtract_thermo=True`): U0, U, H and G become atomisation
    energies. The subtraction is exact in float64 and changes no MAE.

    Args:
        properties (np.ndarray): :obj:`[N, 12]`, in :obj:`qm9pack` units.
        atomic_numbers (np.ndarray): :obj:`[sum(num_atoms)]`.
        num_atoms (np.ndarray): :obj:`[N]`.

    Returns:
        np.ndarray: :obj:`[N, 12]` float64 targets in the units of
        :obj:`TARGETS`.
    """
    counts = np.stack([np.add.reduceat(atomic_numbers == z,
                                       _starts(num_atoms))
                       for z in ATOMIC_NUMBERS], axis=1)
    reference = np.zeros_like(properties)
    reference[:, REFERENCED_TARGETS] = counts @ ATOM_REFERENCES
    return (properties - reference) * UNIT_FACTORS


def _starts(num_atoms: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(num_atoms)[:-1]])


def node_features(z: Tensor) -> Tensor:
    r"""The node features of the EGNN paper's QM9 model (Cormorant's):
    for every atom type :math:`k` of (H, C, N, O, F), the one-hot
    :math:`\delta_{k z_i}` times the powers of the scaled charge,

    .. math::
        \mathbf{h}_{i, 3k + p} = \delta_{k z_i}
        \left(\frac{z_i}{9}\right)^p, \qquad p = 0, 1, 2.

    Args:
        z (torch.Tensor): Atomic numbers :obj:`[M]`.

    Returns:
        torch.Tensor: :obj:`[M, 15]` float32 features.
    """
    types = torch.tensor(ATOMIC_NUMBERS, device=z.device)
    one_hot = (z[:, None] == types).float()
    powers = torch.arange(NUM_CHARGE_POWERS, device=z.device)
    charge = (z.float() / max(ATOMIC_NUMBERS))[:, None].pow(powers)
    return (one_hot[:, :, None] * charge[:, None, :]).flatten(1)


class QM9Properties(InMemoryDataset):
    r"""QM9 with the twelve regression targets of the EGNN paper, in
    Cormorant's split (the one of the EGNN paper:
    :func:`~torch_enf.datasets.qm9.standard_split`, 100,000 training,
    17,748 validation and 13,083 test molecules).

    Every graph holds :obj:`x` :obj:`[M, 15]` (:func:`node_features`),
    :obj:`z` :obj:`[M]` (atomic numbers, for PyG's
    :class:`~torch_geometric.nn.models.SchNet` and
    :class:`~torch_geometric.nn.models.DimeNetPlusPlus`), :obj:`pos`
    :obj:`[M, 3]` (float32, Angstrom, centred), :obj:`idx` (QM9 index) and
    :obj:`y` :obj:`[1, 12]`: the targets of :obj:`TARGETS` in the paper's
    units (:func:`targets_from_properties`: U0, U, H and G are atomisation
    energies and ZPVE and Cv lack their atom references, as in the
    official code).

    The molecules are read from the CSV files of the :obj:`qm9pack`
    package (:obj:`pip install torch-enf[molecules]`); all three splits are
    processed at once and cached under :obj:`root/processed/`.

    Args:
        root (str): Root directory.
        split (str, optional): :obj:`"train"`, :obj:`"valid"` or
            :obj:`"test"`. (default: :obj:`"train"`)
        transform (callable, optional): Applied on every access.
        pre_transform (callable, optional): Applied before saving.
        source (str, optional): A folder of CSV files in :obj:`qm9pack`'s
            layout (:obj:`qm9_part{1,2,3}.csv`), with an optional
            :obj:`uncharacterized.txt` for a subset of QM9. (default:
            :obj:`None`: the installed :obj:`qm9pack`)
        force_reload (bool, optional): Re-process even if cached.
        log (bool, optional): Show progress while processing.
    """

    targets = TARGETS
    split_sizes = SPLIT_SIZES

    def __init__(self, root: str, split: str = 'train',
                 transform: Optional[Callable] = None,
                 pre_transform: Optional[Callable] = None,
                 source: Optional[Union[str, Path]] = None,
                 force_reload: bool = False, log: bool = True) -> None:
        if split not in SPLIT_SIZES:
            raise ValueError(f"Unknown split {split!r} (expected one of "
                             f"{list(SPLIT_SIZES)})")
        self.split = split
        self.source = None if source is None else str(source)
        super().__init__(root, transform, pre_transform, log=log,
                         force_reload=force_reload)
        self.load(self.processed_paths[list(SPLIT_SIZES).index(split)])

    @property
    def raw_file_names(self) -> List[str]:
        return []

    @property
    def processed_dir(self) -> str:
        tag = 'qm9pack' if self.source is None else 'csv_' + hashlib.sha1(
            osp.abspath(self.source).encode()).hexdigest()[:10]
        return osp.join(self.root, 'processed', f'properties_{tag}')

    @property
    def processed_file_names(self) -> List[str]:
        return [f'{split}.pt' for split in SPLIT_SIZES]

    def _read_source(self) -> QM9Molecules:
        folder = self.source or qm9pack_data_folder()
        molecules = read_qm9pack(folder, properties=True)
        listed = osp.join(folder, 'uncharacterized.txt')
        if osp.exists(listed):
            molecules.uncharacterised = read_uncharacterised(listed)
        return molecules

    def process(self) -> None:
        molecules = self._read_source()
        molecules.validate()
        targets = targets_from_properties(molecules.properties,
                                          molecules.atomic_numbers,
                                          molecules.num_atoms)
        splits = standard_split(molecules.uncharacterised)
        for path, (split, index) in zip(self.processed_paths,
                                        splits.items()):
            mask = np.isin(molecules.index, index)
            if not mask.any():
                raise ValueError(f"No molecules of the {split!r} split in "
                                 f"the source {self.source or 'qm9pack'}")
            data_list = self._to_data_list(molecules.select(mask),
                                           targets[mask], split)
            if self.pre_transform is not None:
                data_list = [self.pre_transform(d) for d in data_list]
            with atomic_path(path) as tmp:
                self.save(data_list, tmp)

    def _to_data_list(self, molecules: QM9Molecules, targets: np.ndarray,
                      split: str) -> List[Data]:
        sizes = molecules.num_atoms.tolist()
        z_all = torch.from_numpy(molecules.atomic_numbers)
        pos_all = torch.from_numpy(molecules.positions)
        y_all = torch.from_numpy(targets).float()
        rows = tqdm(zip(molecules.index.tolist(), z_all.split(sizes),
                        pos_all.split(sizes), y_all),
                    total=len(sizes), desc=f'QM9 properties {split}',
                    disable=not self.log)
        return [Data(x=node_features(z), z=z,
                     pos=(pos - pos.mean(dim=0)).float(),
                     y=y.view(1, -1), idx=torch.tensor([index]))
                for index, z, pos, y in rows]

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}({len(self)}, {self.split})'
