r"""Files that must survive a kill: atomic writes of checkpoints, model
files and results, and the reading of training checkpoints."""
import json
import os
from typing import Any, Dict, Optional

import torch

from torch_enf.config import CONFIG_FORMAT
from torch_enf.flows import model_config
from torch_enf.io import atomic_path

CHECKPOINT_FORMAT = 'torch-enf-checkpoint'
r"""The :obj:`format` entry of the checkpoints that
:func:`torch_enf.training.fit` writes."""

MODEL_FORMAT = 'torch-enf-model'
r"""The :obj:`format` entry of the model files of :func:`save_model`."""


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




def save_model(model: torch.nn.Module, path: str, task: Dict[str, Any],
               card: Optional[Dict[str, Any]] = None) -> None:
    r"""Writes :obj:`model` as one small model file (atomically) with its
    configuration (:func:`~torch_enf.flows.model_config`), the state of its
    task (:meth:`~torch_enf.tasks.Task.state`) and a :obj:`card` of plain
    data, loadable with :obj:`weights_only=True` and rebuilt by
    :func:`torch_enf.pretrained.load_model`."""
    atomic_save(dict(format=MODEL_FORMAT, version=CONFIG_FORMAT,
                     model=model_config(model), task=dict(task),
                     state_dict={k: v.detach().cpu().contiguous()
                                 for k, v in model.state_dict().items()},
                     card=_plain(card or {})), path)


def _plain(value: Any) -> Any:
    r"""Cards as plain Python values (loadable with
    :obj:`weights_only=True`)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
