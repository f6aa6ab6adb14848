r"""Reading the processed files of the datasets, with recovery from broken
caches."""
import logging
import os

from torch_geometric.data import InMemoryDataset

logger = logging.getLogger(__name__)


def load_processed(dataset: InMemoryDataset) -> None:
    r"""Loads :obj:`dataset.processed_paths[0]`. A file that cannot be read
    (truncated by a kill, empty, or not a dataset at all) is named in a
    warning, removed and rebuilt with :obj:`dataset.process()`, instead of
    failing with an unpickling error until :obj:`force_reload=True`."""
    path = dataset.processed_paths[0]
    try:
        dataset.load(path)
    except Exception as error:  # torch.load fails in many ways
        logger.warning(f'The processed file {path} is unreadable '
                       f'({type(error).__name__}: {error}); rebuilding it')
        os.remove(path)
        dataset.process()
        dataset.load(path)
