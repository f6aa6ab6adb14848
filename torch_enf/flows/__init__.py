r"""E(n)-equivariant continuous normalizing flows."""
from .distributions import CenteredGaussian, NodeGaussian
from .divergence import exact_divergence, hutchinson_divergence
from .dynamics import EGNNDynamics
from .enflow import ENFlow, FlowResult, ODESolveError
from .node_count import NodeCountDistribution
from .dequantization import UniformDequantizer, VariationalDequantizer
from .actnorm import ActNorm
from .molecule import MoleculeFlow

__all__ = [
    'ENFlow',
    'EGNNDynamics',
    'CenteredGaussian',
    'NodeGaussian',
    'FlowResult',
    'ODESolveError',
    'exact_divergence',
    'hutchinson_divergence',
    'NodeCountDistribution',
    'UniformDequantizer',
    'VariationalDequantizer',
    'ActNorm',
    'MoleculeFlow',
]
