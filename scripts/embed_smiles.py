r"""Embeds 3D conformers for a SMILES file and writes them as one SDF: a
realistic set of users' own molecules for :class:`MoleculeDataset`.

By default the SMILES are the 5,000 NCI compounds that RDKit ships
(:obj:`rdkit/Data/NCI/first_5K.smi`, one :obj:`SMILES<tab>NSC number` per
line). Every molecule is

1. parsed and sanitised by RDKit (failures are skipped);
2. reduced to its largest fragment (most heavy atoms), so that salts and
   mixtures keep their main component; formal charges are kept and written
   to the SDF (:obj:`M  CHG` lines);
3. skipped when it holds an element outside :obj:`--elements` (by default
   H C N O F P S Cl Br I, the elements of drug-like sets; the rare B, Si,
   Se, As, Hg, Sn and metals are dropped), fewer than 2 heavy atoms or, with
   explicit hydrogens, more than :obj:`--max-atoms` atoms;
4. embedded with ETKDG v3 (seeded; a second try from random coordinates)
   and optimised with MMFF94; molecules without MMFF parameters, whose
   embedding fails or whose optimisation does not converge are skipped.

Every skip reason is counted and printed with the statistics of the kept
molecules. The SDF is written atomically (:func:`torch_enf.io.atomic_path`):
an interrupted run leaves no partial file.

Usage::

    nice python scripts/embed_smiles.py data/nci5k.sdf
    python scripts/embed_smiles.py small.sdf --limit 100 --seed 1
"""
import argparse
import os
import time
from collections import Counter
from typing import List, Optional, Sequence, Tuple

from rdkit import Chem, RDConfig, RDLogger
from rdkit.Chem import AllChem
from tqdm import tqdm

from torch_enf.io import atomic_path

DEFAULT_SMILES = os.path.join(RDConfig.RDDataDir, 'NCI', 'first_5K.smi')
DEFAULT_ELEMENTS = ('H', 'C', 'N', 'O', 'F', 'P', 'S', 'Cl', 'Br', 'I')
MIN_HEAVY_ATOMS = 2
MMFF_MAX_ITERATIONS = 2000
EMBED_TIMEOUT_S = 30


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('out', help='output .sdf file')
    parser.add_argument('--smiles', default=DEFAULT_SMILES,
                        help='SMILES file, one "SMILES [name]" per line '
                        '(default: RDKit\'s NCI first_5K.smi)')
    parser.add_argument('--limit', type=int, default=None,
                        help='read only the first LIMIT SMILES')
    parser.add_argument('--seed', type=int, default=0,
                        help='ETKDG random seed (default: 0)')
    parser.add_argument('--max-atoms', type=int, default=100,
                        help='skip molecules with more atoms, hydrogens '
                        'included (default: 100)')
    parser.add_argument('--elements', default=','.join(DEFAULT_ELEMENTS),
                        help='comma-separated elements to keep (default: '
                        '%(default)s)')
    return parser.parse_args()


def read_smiles(path: str, limit: Optional[int]) -> List[Tuple[str, str]]:
    r"""The :obj:`(SMILES, name)` pairs of a SMILES file; a missing name
    becomes :obj:`"line <number>"`."""
    entries = []
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            name = fields[1] if len(fields) > 1 else f'line {number}'
            entries.append((fields[0], name))
            if limit is not None and len(entries) == limit:
                break
    return entries


def largest_fragment(mol: Chem.Mol) -> Chem.Mol:
    r"""The fragment with the most heavy atoms."""
    return max(Chem.GetMolFrags(mol, asMols=True),
               key=lambda fragment: fragment.GetNumHeavyAtoms())


def embed(smiles: str, elements: Sequence[str], max_atoms: int,
          seed: int) -> Tuple[Optional[Chem.Mol], str]:
    r"""Returns the embedded, MMFF-optimised molecule with explicit
    hydrogens and :obj:`''`, or :obj:`None` and the reason it was skipped
    (a reason naming an element starts with :obj:`"element "`)."""
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return None, 'RDKit cannot parse the SMILES'
    mol = largest_fragment(mol)
    outside = sorted({a.GetSymbol() for a in mol.GetAtoms()} - set(elements))
    if outside:
        return None, f'element {outside[0]}'
    if mol.GetNumHeavyAtoms() < MIN_HEAVY_ATOMS:
        return None, f'fewer than {MIN_HEAVY_ATOMS} heavy atoms'
    mol = Chem.AddHs(mol)
    if mol.GetNumAtoms() > max_atoms:
        return None, f'more than {max_atoms} atoms'
    if not AllChem.MMFFHasAllMoleculeParams(mol):
        return None, 'no MMFF parameters'
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    params.timeout = EMBED_TIMEOUT_S
    if AllChem.EmbedMolecule(mol, params) != 0:
        params.useRandomCoords = True
        if AllChem.EmbedMolecule(mol, params) != 0:
            return None, 'ETKDG embedding failed'
    if AllChem.MMFFOptimizeMolecule(mol, maxIters=MMFF_MAX_ITERATIONS) != 0:
        return None, 'MMFF optimisation did not converge'
    return mol, ''


def main() -> None:
    args = parse_args()
    elements = [e.strip() for e in args.elements.split(',') if e.strip()]
    RDLogger.DisableLog('rdApp.*')  # parse failures are counted instead
    entries = read_smiles(args.smiles, args.limit)
    start = time.perf_counter()
    skipped, element_counts = Counter(), Counter()
    num_atoms, num_charged, num_salts = [], 0, 0
    with atomic_path(args.out) as tmp:
        writer = Chem.SDWriter(tmp)
        for smiles, name in tqdm(entries, desc='embedding', unit='mol'):
            mol, reason = embed(smiles, elements, args.max_atoms, args.seed)
            if mol is None:
                skipped[reason] += 1
                continue
            num_salts += '.' in smiles  # several fragments
            num_charged += any(a.GetFormalCharge() for a in mol.GetAtoms())
            element_counts.update(a.GetSymbol() for a in mol.GetAtoms())
            num_atoms.append(mol.GetNumAtoms())
            mol.SetProp('_Name', name)
            mol.SetProp('smiles', smiles)
            writer.write(mol)
        writer.close()
    report(args, len(entries), num_atoms, element_counts, num_charged,
           num_salts, skipped, time.perf_counter() - start)


def report(args: argparse.Namespace, num_read: int, num_atoms: List[int],
           element_counts: Counter, num_charged: int, num_salts: int,
           skipped: Counter, seconds: float) -> None:
    print(f'Wrote {len(num_atoms)} of {num_read} molecules to {args.out} '
          f'in {seconds:.0f} s (seed {args.seed})')
    if num_atoms:
        print(f'atoms per molecule: mean {sum(num_atoms) / len(num_atoms):.1f}'
              f', min {min(num_atoms)}, max {max(num_atoms)}')
    print(f'{num_charged} molecules carry formal charges; {num_salts} were '
          f'reduced to their largest fragment')
    print('atoms per element: ' + ', '.join(
        f'{e} {n}' for e, n in element_counts.most_common()))
    print(f'skipped {sum(skipped.values())}:')
    for reason, count in skipped.most_common():
        print(f'  {count:5d}  {reason}')


if __name__ == '__main__':
    main()
