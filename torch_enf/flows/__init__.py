from .node_count import NodeCountDistribution

__all__ = [
    'NodeCountDistribution',
]
