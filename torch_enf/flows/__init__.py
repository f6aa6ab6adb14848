r"""E(n)-equivariant continuous normalizing flows."""
from .distributions import CenteredGaussian, NodeGaussian
from .divergence import exact_divergence, hutchinson_divergence
from .dynamics import PREDICTIONS, EGNNDynamics
from .integrator import (ADAPTIVE_SOLVERS, DEFAULT_SOLVER, ERROR_NORMS,
                         FIXED_STEP_SOLVERS, EvaluationBudgetExceeded,
                         EvaluationCount,
                         ODESolveError, SolverOptions)
from .vector_field import VectorField
from .base import FlowInputs, FlowModel
from .enflow import ENFlow, ENFlowConfig, FlowResult
from .node_count import NodeCountDistribution
from .dequantization import (DEQUANTIZERS, ArgmaxDequantizer, Dequantizer,
                             ThresholdDequantizer, UniformDequantizer,
                             VariationalDequantizer, register_dequantizer)
from .actnorm import ActNorm
from .molecule import MoleculeFlow, MoleculeFlowConfig
from .composition import (CompositionDistribution, CompositionFlow,
                          CompositionFlowConfig)
from .conformer import AtomTypeDynamics, ConformerFlow, ConformerFlowConfig
from .models import (FLOW_MODELS, canonical_model_config, model_config,
                     model_from_config)

__all__ = [
    'FlowModel',
    'ENFlow',
    'ENFlowConfig',
    'EGNNDynamics',
    'PREDICTIONS',
    'VectorField',
    'SolverOptions',
    'DEFAULT_SOLVER',
    'EvaluationCount',
    'ADAPTIVE_SOLVERS',
    'ERROR_NORMS',
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
    'MoleculeFlowConfig',
    'CompositionDistribution',
    'CompositionFlow',
    'CompositionFlowConfig',
    'ConformerFlow',
    'ConformerFlowConfig',
    'AtomTypeDynamics',
    'FLOW_MODELS',
    'canonical_model_config',
    'model_config',
    'model_from_config',
]
