from .divergence import histogram_js_divergence, pairwise_distances
from .bonds import infer_bonds
from .stability import stability, stable_atoms
from .rdkit_metrics import (molecule_metrics, molecule_smiles, novelty,
                            training_smiles, uniqueness, validity)
__all__ = [
    'pairwise_distances',
    'histogram_js_divergence',
    'infer_bonds',
    'stability',
    'stable_atoms',
    'molecule_smiles',
    'molecule_metrics',
    'validity',
    'uniqueness',
    'novelty',
    'training_smiles',
]
