r"""E(n)-equivariant continuous normalizing flows."""
from .distributions import CenteredGaussian, NodeGaussian
from .divergence import exact_divergence, hutchinson_divergence
from .dynamics import EGNNDynamics
from .integrator import (ADAPTIVE_SOLVERS, FIXED_STEP_SOLVERS,
                         EvaluationBudgetExceeded, ODESolveError,
                         SolverOptions)
from .vector_field import VectorField
from .enflow import ENFlow, FlowInputs, FlowResult
from .node_count import NodeCountDistribution
from .dequantization import (DEQUANTIZERS, ArgmaxDequantizer, Dequantizer,
                             ThresholdDequantizer, UniformDequantizer,
                             VariationalDequantizer, register_dequantizer)
from .actnorm import ActNorm
from .molecule import MoleculeFlow

__all__ = [
    'ENFlow',
    'EGNNDynamics',
    'VectorField',
    'SolverOptions',
    'ADAPTIVE_SOLVERS',
    'FIXED_STEP_SOLVERS',
    'FlowInputs',
    'CenteredGaussian',
    'NodeGaussian',
    'FlowResult',
    'ODESolveError',
    'EvaluationBudgetExceeded',
    'exact_divergence',
    'hutchinson_divergence',
    'NodeCountDistribution',
    'Dequantizer',
    'DEQUANTIZERS',
    'register_dequantizer',
    'UniformDequantizer',
    'ThresholdDequantizer',
    'ArgmaxDequantizer',
    'VariationalDequantizer',
    'ActNorm',
    'MoleculeFlow',
]
