r"""Tasks: one object per kind of data and what is done with it (data,
default configurations, model, metrics, evaluation, file formats). The
command line, the examples and :mod:`torch_enf.pretrained` look tasks up
instead of branching on the kind of model.

.. code-block:: python

    from torch_enf.tasks import get_task, DataConfig

    task = get_task('molecules')
    splits = task.datasets(DataConfig(files='conformers.sdf'))
    model = task.build_model(ModelOptions(num_layers=4), splits)

Built-in tasks: :obj:`dw4`, :obj:`lj13`, :obj:`lj13-halved`, :obj:`lj55`,
:obj:`qm9-positional`, :obj:`qm9`, :obj:`alanine-dipeptide` (needs
OpenMM); and :obj:`molecules` and :obj:`points` for the user's own data.
"""
from .base import (TASKS, DataConfig, EvaluationConfig, ModelOptions,
                   RunConfig, Splits, Structures, Task, get_task,
                   register_task, start_from, task_from_state, train)
from .particles import PointCloudTask, PointsTask, SystemTask
from .molecules import MoleculeTask, MoleculesTask, QM9PositionalTask, QM9Task
from .alanine import AlanineDipeptideTask, ConformationDataset

__all__ = [
    'Task',
    'TASKS',
    'register_task',
    'get_task',
    'task_from_state',
    'train',
    'start_from',
    'DataConfig',
    'ModelOptions',
    'EvaluationConfig',
    'RunConfig',
    'Splits',
    'Structures',
    'PointCloudTask',
    'SystemTask',
    'PointsTask',
    'MoleculeTask',
    'QM9Task',
    'QM9PositionalTask',
    'MoleculesTask',
    'AlanineDipeptideTask',
    'ConformationDataset',
]
