r"""Writes the small QM9 fixture used by the tests, read from the `qm9pack`
package: 300 molecules of the standard test split, 20 training molecules (10
of them with the 19 atoms of the positional subset) and 10 validation
molecules, with the list of uncharacterised QM9 indices so that the fixture
can be split like the full dataset.

Usage: python scripts/make_qm9_fixture.py [--out test/data/qm9_fixture.npz]
"""
import argparse

import numpy as np

from torch_enf.datasets.qm9 import POSITIONAL_NUM_ATOMS, standard_split
from torch_enf.datasets.qm9_sources import read_qm9pack, save_npz


def choose(candidates: np.ndarray, count: int,
           rng: np.random.RandomState) -> np.ndarray:
    return rng.choice(candidates, size=count, replace=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default='test/data/qm9_fixture.npz')
    args = parser.parse_args()

    molecules = read_qm9pack()
    molecules.validate()
    splits = standard_split(molecules.uncharacterised)
    rng = np.random.RandomState(12345)
    nineteen = molecules.index[molecules.num_atoms == POSITIONAL_NUM_ATOMS]
    train_nineteen = np.intersect1d(splits['train'], nineteen)
    chosen = np.concatenate([
        choose(splits['test'], 300, rng),
        choose(np.setdiff1d(splits['train'], train_nineteen), 10, rng),
        choose(train_nineteen, 10, rng),
        choose(splits['valid'], 10, rng),
    ])
    fixture = molecules.select(np.isin(molecules.index, chosen))
    save_npz(args.out, fixture)
    print(f'Wrote {len(fixture.index)} molecules to {args.out}')


if __name__ == '__main__':
    main()
