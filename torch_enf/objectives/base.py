r"""The objective interface and its registry."""
import inspect
import typing
from abc import ABC, abstractmethod
from typing import Any, Callable, Dict, Type

import torch
from torch import Tensor

from torch_enf.config import Config
from torch_enf.utils import Registry


class Objective(ABC):
    r"""Base class of the training objectives of the flows.

    An objective is called as :obj:`objective(model, batch)` and returns one
    loss per graph, shape :obj:`[num_graphs]`, whose mean is minimised.
    Randomness comes from PyTorch's global generator unless a
    :obj:`generator` is given, so :func:`torch.manual_seed` reproduces a
    loss exactly. Subclasses store their constructor arguments as
    attributes of the same names and list them in :obj:`options`, which
    :meth:`config` reports as plain data (checkpoints use it to refuse
    resuming with other settings, and :func:`objective_from_config` to
    rebuild the objective). Decorate a subclass with
    :func:`register_objective` to make it available by name to
    :func:`objective_from_name` and the training scripts.
    """
    options: tuple = ()
    name: str = ''

    @abstractmethod
    def __call__(self, model: torch.nn.Module, data: Any) -> Tensor:
        r"""The loss of every graph of :obj:`data`, :obj:`[num_graphs]`."""

    def config(self) -> Dict[str, Any]:
        r"""The registered name and the options of the objective, as plain
        JSON-able data (a :class:`~torch_enf.config.Config` option as its
        dictionary)."""
        return dict(name=self.name, **{key: _plain(getattr(self, key))
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


def objective_from_config(stored: Dict[str, Any]) -> Objective:
    r"""Rebuilds the objective of :meth:`Objective.config`: the registered
    :obj:`name` with the stored options, those annotated with a
    :class:`~torch_enf.config.Config` class in the constructor (such as
    :class:`~torch_enf.flows.SolverOptions`) read back from their
    dictionaries.

    Raises:
        ValueError: If the name is unknown or an option is not one of the
            objective's.
    """
    options = dict(stored)
    name = options.pop('name', None)
    if name not in OBJECTIVES:
        raise ValueError(f"Unknown objective {name!r} (expected one of "
                         f"{sorted(OBJECTIVES)})")
    cls = OBJECTIVES[name]
    unknown = sorted(set(options) - set(cls.options))
    if unknown:
        raise ValueError(f"Unknown option(s) {unknown} of the objective "
                         f"{name!r} (known: {list(cls.options)})")
    hints = typing.get_type_hints(cls.__init__)
    for key, value in options.items():
        hint = hints.get(key)
        if inspect.isclass(hint) and issubclass(hint, Config) and \
                isinstance(value, dict):
            options[key] = hint.from_dict(value)
    return cls(**options)


def _plain(value: Any) -> Any:
    return value.to_dict() if isinstance(value, Config) else value
