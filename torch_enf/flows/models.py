r"""The flow models by name, and their configurations as plain data: a
model is stored as :obj:`model_config(model)` beside its state dict and
rebuilt by :func:`model_from_config`, whatever its class.

.. code-block:: python

    stored = model_config(model)  # {'name': 'molecule-flow', 'config': {...}}
    same = model_from_config(stored)
    same.load_state_dict(model.state_dict())
"""
from typing import Any, Dict, Tuple

from torch_enf.flows.base import FlowModel
from torch_enf.flows.composition import CompositionFlow
from torch_enf.flows.conformer import ConformerFlow
from torch_enf.flows.enflow import ENFlow
from torch_enf.flows.molecule import MoleculeFlow
from torch_enf.utils import Registry

FLOW_MODELS = Registry(FlowModel, 'flow model')
r"""The :class:`FlowModel` classes by name: :obj:`"enflow"`
(:class:`ENFlow`), :obj:`"molecule-flow"` (:class:`MoleculeFlow`),
:obj:`"composition-flow"` (:class:`CompositionFlow`) and
:obj:`"conformer-flow"` (:class:`ConformerFlow`)."""

FLOW_MODELS.register('enflow')(ENFlow)
FLOW_MODELS.register('molecule-flow')(MoleculeFlow)
FLOW_MODELS.register('composition-flow')(CompositionFlow)
FLOW_MODELS.register('conformer-flow')(ConformerFlow)


def model_config(model: FlowModel) -> Dict[str, Any]:
    r"""The registered name of :obj:`model`'s class and its configuration
    as plain JSON-able data, :obj:`dict(name=..., config=...)`.

    Raises:
        ValueError: If the class is not registered in :obj:`FLOW_MODELS`
            (subclasses are not: they may differ in behaviour), or the
            model has no configuration (custom dynamics, a dequantiser
            instance).
    """
    name = next((name for name, cls in FLOW_MODELS.items()
                 if type(model) is cls), None)
    if name is None:
        raise ValueError(f"Unknown flow model class "
                         f"{type(model).__name__} (registered: "
                         f"{sorted(FLOW_MODELS)})")
    return dict(name=name, config=model.config().to_dict())


def model_from_config(stored: Dict[str, Any]) -> FlowModel:
    r"""The model described by :obj:`stored`, as written by
    :func:`model_config`, with fresh parameters: load its state dict
    next.

    Raises:
        ValueError: If the name is unknown (the message lists the known
            ones) or the configuration is invalid.
    """
    cls, config = _stored_config(stored)
    return cls.from_config(config)


def canonical_model_config(stored: Dict[str, Any]) -> Dict[str, Any]:
    r""":obj:`stored` (as written by :func:`model_config`, perhaps by an
    earlier version) as :func:`model_config` writes it now: fields that
    the configuration gained since take their defaults, so that a stored
    model compares equal to the same model built today.

    Raises:
        ValueError: As :func:`model_from_config`.
    """
    _, config = _stored_config(stored)
    return dict(name=stored['name'], config=config.to_dict())


def _stored_config(stored: Dict[str, Any]) -> Tuple[type, Any]:
    r"""The registered class and the checked configuration of
    :obj:`stored`."""
    if not isinstance(stored, dict) or set(stored) != {'name', 'config'}:
        raise ValueError(f"'stored' must be a dictionary with 'name' and "
                         f"'config' (got {stored!r:.200})")
    name = stored['name']
    if name not in FLOW_MODELS:
        raise ValueError(f"Unknown flow model {name!r} (expected one of "
                         f"{sorted(FLOW_MODELS)})")
    cls = FLOW_MODELS[name]
    return cls, cls.config_class.from_dict(stored['config'])
