from .histograms import histogram_js_divergence, pairwise_distances
from .bonds import infer_bonds
from .particles import SampleComparison, compare_samples
from .stability import stability, stable_atoms
from .molecules import molecule_sample_metrics
from .rdkit_metrics import (molecule_metrics, molecule_smiles, novelty,
                            training_smiles, uniqueness, validity)
__all__ = [
    'pairwise_distances',
    'histogram_js_divergence',
    'infer_bonds',
    'SampleComparison',
    'compare_samples',
    'molecule_sample_metrics',
    'stability',
    'stable_atoms',
    'molecule_smiles',
    'molecule_metrics',
    'validity',
    'uniqueness',
    'novelty',
    'training_smiles',
]
