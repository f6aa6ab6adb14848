from .divergence import histogram_js_divergence, pairwise_distances
from .bonds import infer_bonds
from .stability import stability, stable_atoms
__all__ = [
    'pairwise_distances',
    'histogram_js_divergence',
    'infer_bonds',
    'stability',
    'stable_atoms',
]
