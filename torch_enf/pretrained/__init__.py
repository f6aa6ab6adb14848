r"""Trained models that ship with the package, and the model files and run
folders that training writes.

.. code-block:: python

    from torch_enf.pretrained import available_models, load_model

    available_models()                  # ['dw4', 'lj13', 'qm9', ...]
    found = load_model('qm9')           # model (eval mode), task, card
    molecules = found.task.sample(found.model, 100, solver=found.sampler)

Each model file holds the model's configuration
(:func:`~torch_enf.flows.model_config`), the state of its task
(:meth:`~torch_enf.tasks.Task.state`), its weights and its *model card*
(training configuration, data, wall clock, machine, code revision and the
metrics measured with it). A model is rebuilt from its configuration alone;
files are read with :obj:`weights_only=True` and need no network.
"""
import os
import os.path as osp
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Union

import torch

from torch_enf.config import CONFIG_FORMAT
from torch_enf.flows import SolverOptions, model_from_config
from torch_enf.storage import CHECKPOINT_FORMAT, MODEL_FORMAT
from torch_enf.tasks import Task, task_from_state

WEIGHTS_DIR = Path(__file__).resolve().parent / 'weights'


class ModelFile(NamedTuple):
    r"""What :func:`read_model` finds: the model's configuration, the state
    of its task, the weights and the model card (empty for checkpoints and
    run folders without a model file)."""
    model: Dict[str, Any]
    task: Dict[str, Any]
    state_dict: Dict[str, torch.Tensor]
    card: Dict[str, Any]


class LoadedModel(NamedTuple):
    r"""A ready model (evaluation mode) with its task, card and the sampler
    its card recommends (the flow's default solver if it names none)."""
    model: torch.nn.Module
    task: Task
    card: Dict[str, Any]
    sampler: SolverOptions


def available_models() -> List[str]:
    r"""The names of the shipped models."""
    return sorted(path.stem for path in WEIGHTS_DIR.glob('*.pt'))


def model_card(name: str) -> Dict[str, Any]:
    r"""The card of a shipped model: what it is, how it was trained and what
    was measured with it."""
    return read_model(_shipped_path(name)).card


def load_pretrained(name_or_path: Union[str, os.PathLike],
                    map_location: Union[str, torch.device] = 'cpu'
                    ) -> torch.nn.Module:
    r"""A ready model in evaluation mode, from anything :func:`read_model`
    accepts."""
    return load_model(name_or_path, map_location).model


def load_model(name_or_path: Union[str, os.PathLike],
               map_location: Union[str, torch.device] = 'cpu'
               ) -> LoadedModel:
    r"""The model, task, card and recommended sampler of anything
    :func:`read_model` accepts."""
    found = read_model(name_or_path)
    model = model_from_config(found.model)
    model.load_state_dict(found.state_dict)
    sampler = found.card.get('sampler')
    return LoadedModel(model.to(map_location).eval(),
                       task_from_state(found.task), found.card,
                       SolverOptions.from_dict(sampler) if sampler
                       else SolverOptions())


def read_model(name_or_path: Union[str, os.PathLike]) -> ModelFile:
    r"""Reads, without building the model,

    * the name of a shipped model (:func:`available_models`);
    * a model file written by :func:`torch_enf.storage.save_model` (a
      training run writes :obj:`OUT/model.pt`);
    * a training checkpoint (:obj:`OUT/checkpoint.pt`): the model as trained
      so far, its moving average where there is one;
    * a run folder (:obj:`OUT`): its model file if the run finished, else
      the selected weights of :obj:`best.pt` with the configuration of its
      checkpoint.

    Raises:
        ValueError: For an unknown name (listing the shipped ones) or a file
            of another kind.
    """
    path = str(name_or_path)
    if not osp.exists(path):
        path = str(_shipped_path(path))
    if osp.isdir(path):
        return _read_run_folder(path)
    content = _load(path)
    if content.get('format') == MODEL_FORMAT:
        if content.get('version') != CONFIG_FORMAT:
            raise ValueError(f'{path} is a model file of format version '
                             f'{content.get("version")}; this torch-enf '
                             f'reads version {CONFIG_FORMAT}')
        return ModelFile(content['model'], content['task'],
                         content['state_dict'], content.get('card', {}))
    if content.get('format') == CHECKPOINT_FORMAT:
        metadata = _checkpoint_metadata(path, content)
        weights = content['ema']['model'] if content.get('ema') \
            else content['model']
        return ModelFile(metadata['model'], metadata['task'], weights, {})
    raise ValueError(f'{path} is not a torch-enf model file, training '
                     f'checkpoint or run folder (a plain state dict such as '
                     f'best.pt lacks the configuration to rebuild the model:'
                     f' pass its run folder instead)')


def _shipped_path(name: str) -> Path:
    path = WEIGHTS_DIR / f'{name}.pt'
    if not path.is_file():
        raise ValueError(f"Unknown model {name!r}: not a shipped model "
                         f"(available: {', '.join(available_models())}) nor "
                         f"an existing file or folder")
    return path


def _load(path: str) -> Dict[str, Any]:
    try:
        content = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as error:
        raise ValueError(f'{path} is not a torch-enf model or checkpoint '
                         f'({type(error).__name__}: {error})') from None
    if not isinstance(content, dict):
        raise ValueError(f'{path} is not a torch-enf model file, training '
                         f'checkpoint or run folder')
    return content


def _read_run_folder(path: str) -> ModelFile:
    model_file = osp.join(path, 'model.pt')
    if osp.isfile(model_file):
        return read_model(model_file)
    checkpoint = osp.join(path, 'checkpoint.pt')
    best = osp.join(path, 'best.pt')
    if not osp.isfile(checkpoint) or not osp.isfile(best):
        raise ValueError(f'{path} is not a run folder with a finished epoch '
                         f'(no model.pt, nor checkpoint.pt with best.pt)')
    metadata = _checkpoint_metadata(checkpoint, _load(checkpoint))
    return ModelFile(metadata['model'], metadata['task'], torch.load(
        best, map_location='cpu', weights_only=True), {})


def _checkpoint_metadata(path: str, content: Dict[str, Any]
                         ) -> Dict[str, Any]:
    metadata = content.get('metadata', {})
    if 'model' not in metadata or 'task' not in metadata:
        raise ValueError(f'{path} was written without the configuration of '
                         f'its model and task (by fit() outside '
                         f'torch_enf.tasks.train), so the model cannot be '
                         f'rebuilt from it')
    return metadata
