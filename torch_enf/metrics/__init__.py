from .divergence import histogram_js_divergence, pairwise_distances
__all__ = [
    'pairwise_distances',
    'histogram_js_divergence',
]
