r"""Complete models built from :class:`~torch_enf.nn.EGCL` for supervised
tasks: the N-body and QM9-property models of the EGNN paper, with the
baselines they are compared with."""
from .nbody import EGNNDynamicsPredictor, GNNDynamicsPredictor
from .property import (EGNNRegressor, RadiusInteractionGraph,
                       TorchDimeNetPlusPlus, triplets)

__all__ = [
    'EGNNDynamicsPredictor',
    'GNNDynamicsPredictor',
    'EGNNRegressor',
    'RadiusInteractionGraph',
    'TorchDimeNetPlusPlus',
    'triplets',
]
