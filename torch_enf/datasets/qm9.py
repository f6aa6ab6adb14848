r"""The QM9 dataset in the standard split used for molecule generation:
the split, the node features and the dataset class (the raw sources are in
:mod:`torch_enf.datasets.qm9_sources`)."""
import hashlib
import logging
import os.path as osp
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

import numpy as np
import torch
from torch_geometric.data import Data, InMemoryDataset
from tqdm import tqdm

from torch_enf.datasets.cache import load_processed
from torch_enf.datasets.qm9_sources import (ATOM_TYPES, ATOMIC_NUMBERS,
                                            MAX_ATOMS, NUM_CHARACTERISED,
                                            NUM_QM9_IDS, QM9Molecules,
                                            download_pyg_raw, pyg_raw_present,
                                            qm9pack_installed, read_npz,
                                            read_pyg_raw, read_qm9pack)
from torch_enf.io import atomic_path

logger = logging.getLogger(__name__)

SPLIT_SIZES = {'train': 100000, 'valid': 17748, 'test': 13083}
POSITIONAL_NUM_ATOMS = 19


def standard_split(uncharacterised: np.ndarray) -> Dict[str, np.ndarray]:
    r"""The standard generative-modelling split of QM9.

    The 130,831 characterised molecules, sorted by QM9 index, are shuffled by
    :obj:`np.random.RandomState(0).permutation` (the same stream as
    :obj:`np.random.seed(0); np.random.permutation(130831)`), and the
    permutation is cut into 100,000 training, 17,748 validation and 13,083
    test molecules, in that order.

    Args:
        uncharacterised (np.ndarray): The 3,054 excluded QM9 indices.

    Returns:
        A dictionary from split name to the sorted QM9 indices of that split.
    """
    characterised = np.setdiff1d(np.arange(1, NUM_QM9_IDS + 1),
                                 uncharacterised)
    if len(characterised) != NUM_CHARACTERISED:
        raise ValueError(f"Expected {NUM_QM9_IDS - NUM_CHARACTERISED} "
                         f"uncharacterised QM9 indices, got "
                         f"{NUM_QM9_IDS - len(characterised)}")
    perm = np.random.RandomState(0).permutation(NUM_CHARACTERISED)
    bounds = np.cumsum([0] + list(SPLIT_SIZES.values()))
    return {
        name: np.sort(characterised[perm[start:end]])
        for name, start, end in zip(SPLIT_SIZES, bounds[:-1], bounds[1:])
    }


def node_features(atomic_numbers: torch.Tensor) -> torch.Tensor:
    r"""Node features :math:`\mathbf{h} \in \mathbb{R}^{M \times 6}`: a
    one-hot encoding over :obj:`QM9.atom_types` (H, C, N, O, F) in columns
    0-4 followed by the atomic number (the nuclear charge) in column 5."""
    types = torch.tensor(ATOMIC_NUMBERS, device=atomic_numbers.device)
    one_hot = (atomic_numbers[:, None] == types).float()
    return torch.cat([one_hot, atomic_numbers[:, None].float()], dim=1)


class QM9(InMemoryDataset):
    r"""The QM9 dataset of small organic molecules (up to 9 heavy atoms of
    C, N, O, F; up to 29 atoms with hydrogens), in the standard split of
    generative modelling (E-NF, EDM): the 130,831 characterised molecules,
    sorted by QM9 index, shuffled with NumPy seed 0 and cut into 100,000
    training, 17,748 validation and 13,083 test molecules.

    Every graph holds :obj:`pos` :obj:`[M, 3]` (float32, Angstrom, centred at
    the origin), :obj:`z` :obj:`[M]` (atomic numbers), :obj:`idx` (QM9
    index), :obj:`num_nodes` and :obj:`h` :obj:`[M, 6]`: a one-hot encoding
    over :obj:`QM9.atom_types` = (H, C, N, O, F) followed by the atomic
    number as a charge column. With :obj:`positional=True` only molecules of
    exactly 19 atoms are kept and only :obj:`pos`, :obj:`idx` and
    :obj:`num_nodes` are stored.

    Sources (:mod:`~torch_enf.datasets.qm9_sources`):

    * :obj:`"pyg"`: the raw files of :class:`torch_geometric.datasets.QM9`
      (:obj:`gdb9.sdf`, :obj:`uncharacterized.txt`) in :obj:`root/raw`,
      downloaded if absent;
    * :obj:`"qm9pack"`: the CSV files of the :obj:`qm9pack` package
      (:obj:`pip install torch-enf[molecules]`);
    * the path of an :obj:`.npz` file (see
      :func:`~torch_enf.datasets.qm9_sources.read_npz`), such as the small
      test fixture.

    :obj:`source='auto'` takes the first of: a processed split of
    :obj:`"pyg"` or :obj:`"qm9pack"`, the raw files in :obj:`root/raw`, the
    installed :obj:`qm9pack` package, and only then a download. Processed
    splits are cached under :obj:`root/processed/<source>/`.

    Args:
        root (str): Root directory.
        split (str, optional): :obj:`"train"`, :obj:`"valid"` or
            :obj:`"test"`. (default: :obj:`"train"`)
        positional (bool, optional): Keep only 19-atom molecules, positions
            only. (default: :obj:`False`)
        transform (callable, optional): Applied on every access.
        pre_transform (callable, optional): Applied before saving.
        pre_filter (callable, optional): Keeps a graph when it returns
            :obj:`True`; the number removed is logged.
        source (str, optional): :obj:`"auto"`, :obj:`"pyg"`,
            :obj:`"qm9pack"` or a path to an :obj:`.npz` file.
            (default: :obj:`"auto"`)
        force_reload (bool, optional): Re-process even if cached.
        log (bool, optional): Print progress while processing.
    """

    atom_types = ATOM_TYPES
    atomic_numbers = ATOMIC_NUMBERS
    max_atoms = MAX_ATOMS
    split_sizes = SPLIT_SIZES
    positional_num_atoms = POSITIONAL_NUM_ATOMS

    def __init__(self, root: str, split: str = 'train',
                 positional: bool = False,
                 transform: Optional[Callable] = None,
                 pre_transform: Optional[Callable] = None,
                 pre_filter: Optional[Callable] = None,
                 source: Union[str, Path] = 'auto',
                 force_reload: bool = False, log: bool = True) -> None:
        if split not in SPLIT_SIZES:
            raise ValueError(f"Unknown split {split!r} (expected one of "
                             f"{list(SPLIT_SIZES)})")
        self.split = split
        self.positional = positional
        self.root = osp.expanduser(str(root))
        self.source = self._resolve_source(str(source))
        super().__init__(root, transform, pre_transform, pre_filter, log=log,
                         force_reload=force_reload)
        load_processed(self)

    @property
    def raw_file_names(self) -> List[str]:
        return ['gdb9.sdf', 'gdb9.sdf.csv', 'uncharacterized.txt']

    @property
    def processed_dir(self) -> str:
        return osp.join(self.root, 'processed', self._source_tag(self.source))

    @property
    def processed_file_names(self) -> str:
        suffix = '_positional' if self.positional else ''
        return f'{self.split}{suffix}.pt'

    def _resolve_source(self, source: str) -> str:
        if source != 'auto':
            if source not in ('pyg', 'qm9pack') and not osp.isfile(source):
                raise ValueError(f"Unknown QM9 source {source!r} (expected "
                                 f"'auto', 'pyg', 'qm9pack' or an .npz path)")
            return source
        for candidate in ('pyg', 'qm9pack'):
            cached = osp.join(self.root, 'processed', candidate,
                              self.processed_file_names)
            if osp.exists(cached):
                return candidate
        if pyg_raw_present(self.raw_dir) or not qm9pack_installed():
            return 'pyg'  # downloaded by _read_source if absent
        return 'qm9pack'

    @staticmethod
    def _source_tag(source: str) -> str:
        if source in ('pyg', 'qm9pack'):
            return source
        with open(source, 'rb') as f:
            digest = hashlib.sha1(f.read()).hexdigest()[:10]
        return f'npz_{Path(source).stem}_{digest}'

    def _read_source(self) -> QM9Molecules:
        if self.source == 'pyg':
            if not pyg_raw_present(self.raw_dir):
                download_pyg_raw(self.raw_dir)
            return read_pyg_raw(self.raw_dir)
        if self.source == 'qm9pack':
            return read_qm9pack()
        return read_npz(self.source)

    def process(self) -> None:
        molecules = self._read_source()
        molecules.validate()
        split_index = standard_split(molecules.uncharacterised)[self.split]
        mask = np.isin(molecules.index, split_index)
        if self.positional:
            mask &= molecules.num_atoms == POSITIONAL_NUM_ATOMS
        molecules = molecules.select(mask)
        data_list = self._to_data_list(molecules)
        if self.pre_filter is not None:
            kept = [data for data in data_list if self.pre_filter(data)]
            logger.info(f"pre_filter removed {len(data_list) - len(kept)} "
                        f"of {len(data_list)} molecules")
            data_list = kept
        if self.pre_transform is not None:
            data_list = [self.pre_transform(data) for data in data_list]
        if not data_list:
            raise ValueError(f"No molecules of the {self.split!r} split "
                             f"(positional={self.positional}) in source "
                             f"{self.source!r}")
        with atomic_path(self.processed_paths[0]) as tmp:
            self.save(data_list, tmp)

    def _to_data_list(self, molecules: QM9Molecules) -> List[Data]:
        atomic_numbers = torch.from_numpy(molecules.atomic_numbers)
        positions = torch.from_numpy(molecules.positions)
        sizes = molecules.num_atoms.tolist()
        data_list = []
        molecule_iterator = tqdm(
            zip(molecules.index.tolist(), atomic_numbers.split(sizes),
                positions.split(sizes)), total=len(sizes),
            desc=f'QM9 {self.split}', disable=not self.log)
        for index, z, pos in molecule_iterator:
            pos = (pos - pos.mean(dim=0)).float()
            data = Data(pos=pos, idx=torch.tensor([index]),
                        num_nodes=len(z))
            if not self.positional:
                data.z = z
                data.h = node_features(z)
            data_list.append(data)
        return data_list

    def __repr__(self) -> str:
        kind = ', positional' if self.positional else ''
        return f'{self.__class__.__name__}({len(self)}, {self.split}{kind})'
