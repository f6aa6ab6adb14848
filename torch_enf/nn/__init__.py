r"""E(n)-equivariant layers and graph construction."""
from .graph import full_edge_index, radius_graph
from .egcl import EGCL
from .egnn import EGNN

__all__ = [
    'EGCL',
    'EGNN',
    'full_edge_index',
    'radius_graph',
]
