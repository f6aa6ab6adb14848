r"""Typed, frozen configurations: the base class of the configurations of
models (:class:`~torch_enf.flows.ENFlowConfig`,
:class:`~torch_enf.flows.MoleculeFlowConfig`), the solver
(:class:`~torch_enf.flows.SolverOptions`) and training runs
(:class:`~torch_enf.training.FitConfig`).

A configuration is stored in checkpoints and model files as plain JSON-able
data (:meth:`Config.to_dict`) beside :obj:`CONFIG_FORMAT`, and read back with
:meth:`Config.from_dict`, which names every unknown or missing field.

.. code-block:: python

    config = flow.config()                 # an ENFlowConfig
    data = config.to_dict()                # {'n_dims': 3, ...}
    same = ENFlow.from_config(ENFlowConfig.from_dict(data))
"""
import dataclasses
import typing
from typing import Any, Dict, List, Tuple, Type, TypeVar

CONFIG_FORMAT = 1
r"""The version of the stored form of configurations; a file of another
version is refused with a message naming both."""

C = TypeVar('C', bound='Config')


@dataclasses.dataclass(frozen=True)
class Config:
    r"""Base class of the frozen configuration dataclasses. Subclasses are
    :func:`dataclasses.dataclass` with :obj:`frozen=True`; fields hold plain
    values (numbers, strings, booleans, :obj:`None`, tuples) or nested
    configurations, and are checked in :meth:`__post_init__`."""

    def to_dict(self) -> Dict[str, Any]:
        r"""The configuration as plain JSON-able data (nested configurations
        as dictionaries, tuples as lists)."""
        return {field.name: _plain(getattr(self, field.name))
                for field in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: Type[C], data: Dict[str, Any]) -> C:
        r"""Rebuilds a configuration written by :meth:`to_dict`.

        Raises:
            ValueError: Naming the unknown fields, the missing required ones
                or the value a check refused.
        """
        if not isinstance(data, dict):
            raise ValueError(f'{cls.__name__}: expected a dictionary of '
                             f'fields (got {type(data).__name__})')
        fields = {field.name: field for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(f'{cls.__name__}: unknown field(s) {unknown} '
                             f'(known: {sorted(fields)})')
        hints = typing.get_type_hints(cls)
        values = {name: _typed(value, hints[name])
                  for name, value in data.items()}
        try:
            return cls(**values)
        except TypeError as error:  # a missing required field
            raise ValueError(f'{cls.__name__}: {error}') from None

    def replace(self: C, **changes: Any) -> C:
        r"""A checked copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def differences(self, other: 'Config') -> List[Tuple[str, Any, Any]]:
        r"""The fields whose values differ, as :obj:`(name, self's value,
        other's value)`, nested fields named with dots
        (:obj:`"flow.hidden_channels"`)."""
        return differences(self.to_dict(), other.to_dict())


def _plain(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    return value


def _typed(value: Any, hint: Any) -> Any:
    r"""Restores nested configurations and tuples from their plain form."""
    if value is None:
        return None
    for candidate in typing.get_args(hint) or (hint, ):
        if isinstance(candidate, type) and issubclass(candidate, Config) \
                and isinstance(value, dict):
            return candidate.from_dict(value)
    origin = typing.get_origin(hint)
    if origin is typing.Union:
        origin = next((typing.get_origin(arg) for arg in typing.get_args(hint)
                       if typing.get_origin(arg) is not None), None)
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    return value


def differences(a: Dict[str, Any], b: Dict[str, Any],
                prefix: str = '') -> List[Tuple[str, Any, Any]]:
    r"""The entries of two nested dictionaries of plain data that differ,
    as :obj:`(dotted name, a's value, b's value)`."""
    found = []
    for key in sorted(set(a) | set(b)):
        left, right = a.get(key), b.get(key)
        if isinstance(left, dict) and isinstance(right, dict):
            found.extend(differences(left, right, f'{prefix}{key}.'))
        elif left != right:
            found.append((f'{prefix}{key}', left, right))
    return found
