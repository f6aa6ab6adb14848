r"""Which atoms of sampled molecules are unstable, and why: per element, the
fraction of atoms whose sum of inferred bond orders is not an allowed
valence (:func:`torch_enf.metrics.stability.stable_atoms`, the rule of
the package's atom stability), split into atoms with too few bonds
(*under*: a bond too long for its order, or missing) and too many
(*over*). Reads the SDF written by ``torch-enf sample``; only positions
and elements are used, the bonds are inferred again::

    torch-enf sample qm9 -n 10000 --seed 1 -o qm9_10k.sdf
    python benchmarks/qm9_unstable_atoms.py qm9_10k.sdf \
        --json docs/source/_static/results/qm9_endpoint_2p5h_unstable.json
"""
import argparse
from collections import Counter
from typing import Dict

import torch

from torch_enf.elements import SYMBOLS
from torch_enf.metrics.bonds import infer_bonds, valences
from torch_enf.metrics.stability import allowed_valences
from torch_enf.storage import atomic_save
from torch_enf.utils import scatter_sum


def count_unstable(path: str) -> Dict[str, Dict[str, int]]:
    r"""Per element symbol: its atoms, and its unstable atoms with fewer
    (:obj:`under`) or more (:obj:`over`) bond orders than its nominal
    valence."""
    from rdkit import Chem
    counts: Dict[str, Counter] = {}
    supplier = Chem.SDMolSupplier(path, removeHs=False, sanitize=False)
    for index, mol in enumerate(supplier):
        if mol is None:
            raise ValueError(f'{path}: molecule {index} could not be read')
        z = torch.tensor([atom.GetAtomicNum() for atom in mol.GetAtoms()])
        pos = torch.tensor(mol.GetConformer().GetPositions(),
                           dtype=torch.float32)
        edge_index, order = infer_bonds(pos, z)
        bond_sum = scatter_sum(order.repeat(2), edge_index.flatten(),
                               z.numel())
        stable = allowed_valences(bond_sum, z)
        under = bond_sum < valences(z)
        for element, ok, few in zip(z.tolist(), stable.tolist(),
                                    under.tolist()):
            count = counts.setdefault(SYMBOLS[element - 1], Counter())
            count['atoms'] += 1
            if not ok:
                count['under' if few else 'over'] += 1
    return {symbol: dict(atoms=c['atoms'], under=c['under'],
                         over=c['over']) for symbol, c in counts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('sdf', help='molecules written by torch-enf sample')
    parser.add_argument('--json', default=None, help='write the counts here')
    args = parser.parse_args()
    counts = count_unstable(args.sdf)
    for symbol, c in counts.items():
        share = (c['under'] + c['over']) / c['atoms']
        print(f"{symbol:2s} {c['atoms']:7d} atoms, {share:6.1%} unstable: "
              f"{c['under']} under, {c['over']} over")
    if args.json:
        atomic_save(dict(sdf=args.sdf, elements=counts), args.json)


if __name__ == '__main__':
    main()
