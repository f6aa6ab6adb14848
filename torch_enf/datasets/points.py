r"""Users' own point clouds (a NumPy array of configurations) as a PyG
dataset with a seeded, recorded train/valid/test split."""
import hashlib
import json
import os
import os.path as osp
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch
from torch_geometric.data import Data, InMemoryDataset

from torch_enf.datasets.cache import load_processed
from torch_enf.datasets.molecules import (SPLIT_FILE, SPLITS, PathLike,
                                          check_fractions, load_or_draw_split)
from torch_enf.io import atomic_path

MAX_LISTED = 5  # configurations named in an error


def load_point_clouds(path: str) -> np.ndarray:
    r"""Reads and checks a :obj:`.npy` array of point clouds of shape
    :obj:`[num_samples, num_nodes, n_dims]` (real numbers, at least one
    sample, two nodes and one dimension, all finite in float32); returns it
    as float64.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: Naming the file for another shape or dtype, and the
            configurations holding non-finite entries.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'{path} does not exist')
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise ValueError(f'{path} is not a readable .npy array ({error})'
                         ) from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in 'iuf':
        kind = array.dtype if isinstance(array, np.ndarray) else 'an archive'
        raise ValueError(f'{path} must hold real numbers, got {kind}')
    if array.ndim != 3:
        raise ValueError(f'{path} must have shape [num_samples, num_nodes, '
                         f'n_dims], got {list(array.shape)}')
    if array.shape[0] < 1 or array.shape[1] < 2 or array.shape[2] < 1:
        raise ValueError(f'{path} of shape {list(array.shape)} needs at '
                         f'least 1 sample of 2 nodes in 1 dimension')
    bad = ~np.isfinite(array.astype(np.float32)).all(axis=(1, 2))
    if bad.any():
        listed = np.flatnonzero(bad)[:MAX_LISTED].tolist()
        raise ValueError(f'{path}: {int(bad.sum())} of {len(array)} '
                         f'configurations hold non-finite entries (in '
                         f'float32), e.g. configurations {listed}')
    return array.astype(np.float64)


class PointCloudDataset(InMemoryDataset):
    r"""The user's own point clouds, e.g. particle configurations, as a
    dataset for the particle flows, in a seeded train/valid/test split.

    The configurations come from one :obj:`.npy` array of shape
    :obj:`[num_samples, num_nodes, n_dims]` (see :func:`load_point_clouds`)
    and become graphs with :obj:`pos` :obj:`[num_nodes, n_dims]` (float32,
    centred at the origin) and :obj:`idx` (the configuration's row). They
    are cached under :obj:`root/processed/<key>`, the key hashing the file's
    path, size and modification time. The split is drawn and recorded in
    :obj:`root/split.json` as rows, like that of
    :class:`~torch_enf.datasets.MoleculeDataset` (see
    :func:`~torch_enf.datasets.molecules.draw_split`). Use one root per
    data set.

    Args:
        root (str): Root directory of the cache and the split.
        path (str): The :obj:`.npy` file.
        split (str, optional): :obj:`"train"`, :obj:`"valid"` or
            :obj:`"test"`. (default: :obj:`"train"`)
        seed (int, optional): Seed of the split. (default: :obj:`0`)
        fractions (tuple, optional): Fractions of the train, valid and test
            splits. (default: :obj:`(0.8, 0.1, 0.1)`)
        transform (callable, optional): Applied on every access.
        force_reload (bool, optional): Read the file again.
        log (bool, optional): Print progress while processing.
    """
    def __init__(self, root: PathLike, path: PathLike, split: str = 'train',
                 seed: int = 0,
                 fractions: Sequence[float] = (0.8, 0.1, 0.1),
                 transform: Optional[Callable] = None,
                 force_reload: bool = False, log: bool = True) -> None:
        if split not in SPLITS:
            raise ValueError(f"Unknown split {split!r} (expected one of "
                             f"{SPLITS})")
        if not osp.isfile(path):
            raise FileNotFoundError(f'{path} does not exist')
        self.path = osp.abspath(path)
        self.split = split
        self.seed = seed
        self.fractions = check_fractions(fractions)
        super().__init__(str(root), transform, log=log,
                         force_reload=force_reload)
        load_processed(self)
        num_samples = self.slices['idx'].numel() - 1
        self.split_indices = load_or_draw_split(
            osp.join(self.root, SPLIT_FILE), range(num_samples), seed,
            self.fractions, extra={'files': [[self.path, num_samples]]})
        if not self.split_indices[split]:
            raise ValueError(f"The {split!r} split is empty (fractions "
                             f"{self.fractions})")
        self._indices = self.split_indices[split]

    @property
    def raw_file_names(self) -> List[str]:
        return []

    @property
    def processed_dir(self) -> str:
        stat = os.stat(self.path)
        key = json.dumps([self.path, stat.st_size, stat.st_mtime_ns])
        digest = hashlib.sha1(key.encode()).hexdigest()[:12]
        return osp.join(self.root, 'processed', digest)

    @property
    def processed_file_names(self) -> str:
        return 'data.pt'

    def process(self) -> None:
        array = load_point_clouds(self.path)
        pos = torch.from_numpy(array - array.mean(axis=1, keepdims=True))
        num_samples, num_nodes, n_dims = pos.shape
        data = Data(pos=pos.float().reshape(-1, n_dims),
                    idx=torch.arange(num_samples))
        slices = {'pos': torch.arange(num_samples + 1) * num_nodes,
                  'idx': torch.arange(num_samples + 1)}
        with atomic_path(self.processed_paths[0]) as tmp:
            torch.save((data.to_dict(), slices, Data), tmp)

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}({len(self)}, {self.split})'
