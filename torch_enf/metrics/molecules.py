r"""The sample metrics of molecule generators in one call."""
from typing import Any, Dict, Optional, Set

from torch_enf.metrics.rdkit_metrics import molecule_metrics
from torch_enf.metrics.stability import stability


def molecule_sample_metrics(data, training_smiles: Optional[Set[str]] = None
                            ) -> Dict[str, Any]:
    r"""Atom and molecule stability (:func:`stability`), RDKit validity and
    uniqueness and, with :obj:`training_smiles` (e.g. from
    :func:`training_smiles` of the training set), novelty
    (:func:`molecule_metrics`) of a batch of generated molecules with
    :obj:`pos` (Angstrom), :obj:`z` and, optionally, formal :obj:`charge`,
    plus their number. Every element from H to Rn is supported.

    If an element (and charge) of the molecules has no valence rule
    (:obj:`torch_enf.elements.ALLOWED_VALENCES`), their stability is
    undefined: both stabilities are :obj:`None` and
    :obj:`stability_undefined` says which element, while the other metrics
    are computed as usual.
    """
    metrics: Dict[str, Any] = dict(num_samples=int(data.num_graphs))
    try:
        metrics.update(stability(data))
    except ValueError as error:
        metrics.update(atom_stability=None, molecule_stability=None,
                       stability_undefined=str(error))
    metrics.update(molecule_metrics(data, training_smiles))
    return metrics
