r"""Files that must survive a kill: atomic writes of checkpoints, model
files and results, and the reading of training checkpoints."""
import json
import os
from typing import Any, Dict

import torch

from torch_enf.io import atomic_path

CHECKPOINT_FORMAT = 'torch-enf-checkpoint'
r"""The :obj:`format` entry of the checkpoints that
:func:`torch_enf.training.fit` writes."""


def atomic_save(obj: Any, path: str) -> None:
    r"""Saves :obj:`obj` with :func:`torch.save` (or as JSON for paths
    ending in :obj:`.json`) through :func:`torch_enf.io.atomic_path`:
    :obj:`path` always holds either the previous or the new complete file,
    even if the process is killed while writing."""
    with atomic_path(path) as tmp, open(tmp, 'wb') as f:
        if path.endswith('.json'):
            f.write(json.dumps(obj, indent=2).encode())
        else:
            torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def load_checkpoint(path: str, map_location: Any = 'cpu') -> Dict[str, Any]:
    r"""Reads a checkpoint written by :func:`fit`, refusing other files."""
    checkpoint = torch.load(path, map_location=map_location,
                            weights_only=False)
    if not isinstance(checkpoint, dict) or \
            checkpoint.get('format') != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a training checkpoint of "
                         f"torch_enf.training.fit")
    return checkpoint


