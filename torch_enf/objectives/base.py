r"""The objective interface and its registry."""
from abc import ABC, abstractmethod
from typing import Any, Callable, Dict, Type

import torch
from torch import Tensor

from torch_enf.utils import Registry


class Objective(ABC):
    r"""Base class of the training objectives of the flows.

    An objective is called as :obj:`objective(model, batch)` and returns one
    loss per graph, shape :obj:`[num_graphs]`, whose mean is minimised.
    Randomness comes from PyTorch's global generator unless a
    :obj:`generator` is given, so :func:`torch.manual_seed` reproduces a
    loss exactly. Subclasses store their constructor arguments as
    attributes of the same names and list them in :obj:`options`, which
    :meth:`config` reports (checkpoints use it to refuse resuming with other
    settings). Decorate a subclass with :func:`register_objective` to make
    it available by name to :func:`objective_from_name` and the training
    scripts.
    """
    options: tuple = ()
    name: str = ''

    @abstractmethod
    def __call__(self, model: torch.nn.Module, data: Any) -> Tensor:
        r"""The loss of every graph of :obj:`data`, :obj:`[num_graphs]`."""

    def config(self) -> Dict[str, Any]:
        r"""The registered name and the options of the objective."""
        return dict(name=self.name, **{key: getattr(self, key)
                                       for key in self.options})

    def __repr__(self) -> str:
        options = ', '.join(f'{key}={getattr(self, key)!r}'
                            for key in self.options)
        return f'{self.__class__.__name__}({options})'


OBJECTIVES = Registry(Objective, 'objective')
r"""The objectives by name; see :func:`register_objective`."""


def register_objective(name: str) -> Callable[[Type[Objective]],
                                              Type[Objective]]:
    r"""Class decorator that adds an :class:`Objective` subclass to
    :obj:`OBJECTIVES` under :obj:`name` (also stored as its :obj:`name`)."""
    return OBJECTIVES.register(name)


def objective_from_name(name: str, **kwargs: Any) -> Objective:
    r"""Builds the registered objective :obj:`name` with :obj:`kwargs`."""
    return OBJECTIVES.create(name, **kwargs)
