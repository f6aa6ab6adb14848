r"""Chemical validity, uniqueness and novelty of 3D molecules via RDKit.

RDKit is optional (:obj:`pip install torch-enf[molecules]`); it is imported
when one of these functions is first called.

A molecule is built from its atoms (any element from H to Rn) and the bonds
inferred from its geometry (:func:`~torch_enf.metrics.bonds.infer_bonds`),
with the formal charges of :obj:`data.charge` if it has them (none
otherwise, as for generated molecules) and all hydrogens explicit, and
carries its coordinates as a 3D conformer. It is **valid** when
:func:`rdkit.Chem.SanitizeMol` accepts it (RDKit's own valence rules, which
cover every element). Following the
E-NF/EDM convention, a valid molecule made of several disconnected fragments
is still counted as valid and is represented by its largest fragment (most
atoms), whose canonical SMILES (hydrogens implicit) identifies the molecule
for uniqueness and novelty.
"""
from typing import Iterable, List, Optional, Sequence, Set

from torch_geometric.data import Batch, Data
from torch_geometric.loader import DataLoader
from tqdm import tqdm

from torch_enf.metrics.bonds import infer_bonds

MOLECULES_EXTRA_HINT = 'pip install torch-enf[molecules]'


def _chem():
    try:
        from rdkit import Chem, RDLogger
    except ImportError as error:
        raise ImportError(f"RDKit is needed for molecule metrics and SDF "
                          f"export: {MOLECULES_EXTRA_HINT}") from error
    RDLogger.DisableLog('rdApp.*')  # sanitisation failures are expected
    return Chem


def to_rdkit_molecules(data) -> list:
    r"""Builds one unsanitised :class:`rdkit.Chem.Mol` per molecule of a
    :class:`~torch_geometric.data.Batch` (or :class:`Data`) holding
    :obj:`pos` (Angstrom), :obj:`z` and, optionally, the formal
    :obj:`charge`, with the inferred bonds and a 3D conformer."""
    Chem = _chem()
    bond_types = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE,
                  3: Chem.BondType.TRIPLE}
    batch = data if isinstance(data, Batch) else Batch.from_data_list([data])
    edge_index, orders = infer_bonds(batch.pos, batch.z, batch.batch)
    ptr = batch.ptr.tolist()
    bond_molecule = batch.batch[edge_index[0]].tolist()
    bonds_per_molecule = [[] for _ in range(batch.num_graphs)]
    for molecule, (i, j), order in zip(bond_molecule, edge_index.t().tolist(),
                                       orders.tolist()):
        bonds_per_molecule[molecule].append((i - ptr[molecule],
                                             j - ptr[molecule], order))
    positions = batch.pos.detach().double().cpu().tolist()
    atomic_numbers = batch.z.tolist()
    charges = batch.charge.tolist() if getattr(batch, 'charge', None) \
        is not None else [0] * len(atomic_numbers)
    molecules = []
    for start, end, bonds in zip(ptr[:-1], ptr[1:], bonds_per_molecule):
        mol = Chem.RWMol()
        conformer = Chem.Conformer(end - start)
        for k in range(start, end):
            atom = Chem.Atom(atomic_numbers[k])
            atom.SetFormalCharge(charges[k])
            atom.SetNoImplicit(True)  # hydrogens are explicit atoms
            mol.AddAtom(atom)
            conformer.SetAtomPosition(k - start, positions[k])
        for i, j, order in bonds:
            mol.AddBond(i, j, bond_types[order])
        mol.AddConformer(conformer, assignId=True)
        molecules.append(mol.GetMol())
    return molecules


def canonical_smiles(mol) -> Optional[str]:
    r"""Canonical SMILES of the largest fragment of :obj:`mol`, or
    :obj:`None` if RDKit cannot sanitise it."""
    Chem = _chem()
    mol = Chem.Mol(mol)
    try:
        Chem.SanitizeMol(mol)
    except Exception:  # RDKit raises several sanitisation error types
        return None
    fragments = Chem.GetMolFrags(mol, asMols=True, sanitizeFrags=False)
    largest = max(fragments, key=lambda fragment: fragment.GetNumAtoms())
    return Chem.MolToSmiles(Chem.RemoveHs(largest, sanitize=False))


def molecule_smiles(data) -> List[Optional[str]]:
    r"""The canonical SMILES of every molecule of a batch (:obj:`None` for
    invalid ones), see :func:`canonical_smiles`."""
    return [canonical_smiles(mol) for mol in to_rdkit_molecules(data)]


def validity(smiles: Sequence[Optional[str]]) -> float:
    r"""Fraction of valid molecules, :math:`|\mathcal{V}| / N`, given the
    output of :func:`molecule_smiles`."""
    if len(smiles) == 0:
        raise ValueError("No molecules given")
    return sum(s is not None for s in smiles) / len(smiles)


def uniqueness(smiles: Sequence[Optional[str]]) -> float:
    r"""Fraction of distinct SMILES among the valid molecules,
    :math:`|\mathrm{set}(\mathcal{V})| / |\mathcal{V}|` (0 when none is
    valid)."""
    valid = [s for s in smiles if s is not None]
    return len(set(valid)) / len(valid) if valid else 0.0


def novelty(smiles: Sequence[Optional[str]],
            training_smiles: Set[str]) -> float:
    r"""Fraction of the distinct valid SMILES that do not occur in the
    training set, :math:`|\mathrm{set}(\mathcal{V}) \setminus
    \mathcal{T}| / |\mathrm{set}(\mathcal{V})|` (0 when none is valid)."""
    unique = {s for s in smiles if s is not None}
    return len(unique - set(training_smiles)) / len(unique) if unique \
        else 0.0


def molecule_metrics(data, training_smiles: Optional[Set[str]] = None
                     ) -> dict:
    r"""Validity, uniqueness and (with :obj:`training_smiles`) novelty of the
    molecules of a batch, computed from one pass of RDKit."""
    smiles = molecule_smiles(data)
    metrics = {'validity': validity(smiles), 'uniqueness': uniqueness(smiles)}
    if training_smiles is not None:
        metrics['novelty'] = novelty(smiles, training_smiles)
    return metrics


def training_smiles(dataset: Iterable[Data], batch_size: int = 1024,
                    progress: bool = True) -> Set[str]:
    r"""The canonical SMILES of the valid molecules of a dataset (e.g. the
    QM9 training split), computed exactly like those of generated
    molecules so that novelty compares like with like."""
    loader = DataLoader(dataset, batch_size=batch_size)
    smiles = set()
    for batch in tqdm(loader, desc='training SMILES', disable=not progress):
        smiles.update(s for s in molecule_smiles(batch) if s is not None)
    return smiles
