r"""E(n)-equivariant layers and graph construction."""
from .graph import full_edge_index, radius_graph
from .egcl import EGCL
from .egnn import EGNN
from .radial import RadialBasis

__all__ = [
    'EGCL',
    'EGNN',
    'RadialBasis',
    'full_edge_index',
    'radius_graph',
]
