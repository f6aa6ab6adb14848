r"""The sample metrics of molecule generators in one call."""
from typing import Dict, Optional, Set

from torch_enf.metrics.rdkit_metrics import molecule_metrics
from torch_enf.metrics.stability import stability


def molecule_sample_metrics(data, training_smiles: Optional[Set[str]] = None
                            ) -> Dict[str, float]:
    r"""Atom and molecule stability (:func:`stability`), RDKit validity and
    uniqueness and, with :obj:`training_smiles` (e.g. from
    :func:`training_smiles` of the training set), novelty
    (:func:`molecule_metrics`) of a batch of generated molecules with
    :obj:`pos` (Angstrom), :obj:`z` and, optionally, formal :obj:`charge`,
    plus their number. Every element from H to Rn is supported.

    Raises:
        ValueError: If an element (and charge) of the molecules has no
            valence rule (:obj:`torch_enf.elements.ALLOWED_VALENCES`), so
            that their stability is undefined; the error names the element.
    """
    metrics = dict(num_samples=int(data.num_graphs))
    metrics.update(stability(data))
    metrics.update(molecule_metrics(data, training_smiles))
    return metrics
