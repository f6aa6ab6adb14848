r"""Trained models that ship with the package, and loading of the models
that the training scripts write.

.. code-block:: python

    from torch_enf.pretrained import available_models, load_pretrained

    available_models()                  # ['dw4', 'lj13', 'qm9', ...]
    model = load_pretrained('qm9')      # a MoleculeFlow in eval mode
    molecules = model.sample(100)

Each shipped model is one small file in :obj:`torch_enf/pretrained/weights`
holding its options, its weights and its *model card* (:func:`model_card`:
training command, data and split, wall clock and machine, code revision and
the metrics measured with it). Files are read with :obj:`weights_only=True`
and need no network.
"""
import argparse
import os
import os.path as osp
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Union

import torch

from torch_enf.flows import NodeCountDistribution
from torch_enf.storage import CHECKPOINT_FORMAT, atomic_save

MODEL_FORMAT = 'torch-enf-model'
r"""The :obj:`format` entry of a shipped model file."""

WEIGHTS_DIR = Path(__file__).resolve().parent / 'weights'


class ModelFile(NamedTuple):
    r"""What :func:`read_model` finds: the options of the training run, the
    weights and the model card (empty for checkpoints and run folders)."""
    options: Dict[str, Any]
    state_dict: Dict[str, torch.Tensor]
    card: Dict[str, Any]


def available_models() -> List[str]:
    r"""The names of the shipped models."""
    return sorted(path.stem for path in WEIGHTS_DIR.glob('*.pt'))


def model_card(name: str) -> Dict[str, Any]:
    r"""The card of a shipped model: what it is, how it was trained and what
    was measured with it."""
    return _read_model_file(_shipped_path(name))['card']


def load_pretrained(name_or_path: Union[str, os.PathLike],
                    map_location: Union[str, torch.device] = 'cpu'
                    ) -> torch.nn.Module:
    r"""A ready model in evaluation mode, from

    * the name of a shipped model (:func:`available_models`);
    * a model file written by :func:`export_model`;
    * a training checkpoint (:obj:`checkpoint.pt` of
      :func:`torch_enf.training.fit` via the example scripts): the model as
      trained so far, its moving average where there is one;
    * a run folder (the :obj:`--out` of a training script): the options of
      its :obj:`checkpoint.pt` with the selected weights of its
      :obj:`best.pt`.

    Raises:
        ValueError: For an unknown name (listing the shipped ones) or a file
            of another kind.
    """
    found = read_model(name_or_path)
    model = build_model(found.options, found.state_dict)
    model.load_state_dict(found.state_dict)
    return model.to(map_location).eval()


def read_model(name_or_path: Union[str, os.PathLike]) -> ModelFile:
    r"""Reads the options, weights and card of anything
    :func:`load_pretrained` accepts, without building the model."""
    path = str(name_or_path)
    if not osp.exists(path):
        path = str(_shipped_path(path))
    return _read_any(path)


def build_model(options: Dict[str, Any],
                state_dict: Optional[Dict[str, torch.Tensor]] = None
                ) -> torch.nn.Module:
    r"""An untrained model of the experiment that :obj:`options` (the
    options of a training script) describe; with a :obj:`state_dict` the
    shapes it needs (the support of :math:`p(M)`) are taken from there."""
    from torch_enf.experiments import particles, qm9
    args = argparse.Namespace(**options)
    if 'system' in options:
        return particles.build_flow(args,
                                    particles.SYSTEMS[args.system].n_dims)
    if 'positional' in options:
        node_count = None
        if not args.positional:
            probs = (state_dict or {}).get('node_count.probs')
            if probs is None:
                raise ValueError('A molecule model needs the weights of its '
                                 'atom-count distribution')
            node_count = NodeCountDistribution(probs)
        return qm9.build_model(args, node_count)
    raise ValueError('The options describe no known experiment (expected '
                     "'system' or 'positional')")


def export_model(source: str, path: str,
                 card: Optional[Dict[str, Any]] = None) -> None:
    r"""Writes the model of a run folder or training checkpoint
    :obj:`source` (see :func:`load_pretrained`) as one small model file
    with its options and :obj:`card`, loadable with
    :obj:`weights_only=True`."""
    options, state_dict, _ = _read_any(source)
    atomic_save(dict(format=MODEL_FORMAT, options=_plain(options),
                     state_dict={k: v.detach().cpu().contiguous()
                                 for k, v in state_dict.items()},
                     card=_plain(card or {})), path)


def _shipped_path(name: str) -> Path:
    path = WEIGHTS_DIR / f'{name}.pt'
    if not path.is_file():
        raise ValueError(f"Unknown model {name!r}: not a shipped model "
                         f"(available: {', '.join(available_models())}) nor "
                         f"an existing file or folder")
    return path


def _read_any(path: str) -> ModelFile:
    if osp.isdir(path):
        checkpoint = _read_checkpoint(osp.join(path, 'checkpoint.pt'))
        best = osp.join(path, 'best.pt')
        if not osp.isfile(best):
            raise ValueError(f'{path} holds no best.pt (the run has not '
                             f'finished an epoch)')
        return ModelFile(checkpoint['metadata']['options'], torch.load(
            best, map_location='cpu', weights_only=True), {})
    try:
        content = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as error:
        raise ValueError(f'{path} is not a torch-enf model or checkpoint '
                         f'({type(error).__name__}: {error})') from error
    if isinstance(content, dict) and content.get('format') == MODEL_FORMAT:
        return ModelFile(content['options'], content['state_dict'],
                         content['card'])
    if isinstance(content, dict) and \
            content.get('format') == CHECKPOINT_FORMAT:
        checkpoint = _read_checkpoint(path, content)
        weights = checkpoint['ema']['model'] if checkpoint.get('ema') \
            else checkpoint['model']
        return ModelFile(checkpoint['metadata']['options'], weights, {})
    raise ValueError(f'{path} is not a torch-enf model file, training '
                     f'checkpoint or run folder (a plain state dict such as '
                     f'best.pt lacks the options to rebuild the model: pass '
                     f'its run folder instead)')


def _read_model_file(path: Path) -> Dict[str, Any]:
    content = torch.load(path, map_location='cpu', weights_only=True)
    if not isinstance(content, dict) or content.get('format') != MODEL_FORMAT:
        raise ValueError(f'{path} is not a torch-enf model file')
    return content


def _read_checkpoint(path: str, content: Optional[Dict] = None
                     ) -> Dict[str, Any]:
    if content is None:
        if not osp.isfile(path):
            raise ValueError(f'{path} does not exist: not a run folder')
        content = torch.load(path, map_location='cpu', weights_only=True)
    if not isinstance(content, dict) or \
            content.get('format') != CHECKPOINT_FORMAT:
        raise ValueError(f'{path} is not a training checkpoint')
    if 'options' not in content.get('metadata', {}):
        raise ValueError(f'{path} was written without the options of its '
                         f'run (by fit() outside the training scripts, or by '
                         f'torch-enf 0.1), so the model cannot be rebuilt '
                         f'from it')
    return content


def _plain(value: Any) -> Any:
    r"""Options and cards as plain Python values (loadable with
    :obj:`weights_only=True`)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
