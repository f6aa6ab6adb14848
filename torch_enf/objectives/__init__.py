r"""Training objectives of the flows: :obj:`objective(model, batch)` returns
one loss per graph, shape :obj:`[num_graphs]`."""
from .base import (OBJECTIVES, Objective, objective_from_config,
                   objective_from_name, register_objective)
from .likelihood import TRAINING_SOLVER, MaximumLikelihood
from .flow_matching import FlowMatching, flow_matching_loss
from .alignment import (align_base_samples, kabsch, match_graphs,
                        optimal_permutation, transport_cost)

__all__ = [
    'Objective',
    'OBJECTIVES',
    'register_objective',
    'objective_from_name',
    'objective_from_config',
    'MaximumLikelihood',
    'TRAINING_SOLVER',
    'FlowMatching',
    'flow_matching_loss',
    'align_base_samples',
    'kabsch',
    'optimal_permutation',
    'match_graphs',
    'transport_cost',
]
