from pathlib import Path

import pytest
import torch
from torch_geometric.data import Batch, Data

from torch_enf.datasets import QM9

Chem = pytest.importorskip('rdkit.Chem')
from torch_enf.metrics.rdkit_metrics import (  # noqa: E402
    molecule_metrics, molecule_smiles, novelty, to_rdkit_molecules,
    training_smiles, uniqueness, validity)

FIXTURE = Path(__file__).resolve().parent / 'data' / 'qm9_fixture.npz'


@pytest.fixture(scope='module')
def test_molecules(tmp_path_factory):
    root = tmp_path_factory.mktemp('qm9')
    return list(QM9(str(root), split='test', source=str(FIXTURE), log=False))


def methane() -> Data:
    pos = torch.tensor([[0., 0., 0.], [0.63, 0.63, 0.63],
                        [-0.63, -0.63, 0.63], [-0.63, 0.63, -0.63],
                        [0.63, -0.63, -0.63]])
    return Data(pos=pos, z=torch.tensor([6, 1, 1, 1, 1]))


def test_rdkit_molecule_has_bonds_and_conformer():
    mol, = to_rdkit_molecules(methane())
    assert mol.GetNumAtoms() == 5 and mol.GetNumBonds() == 4
    position = mol.GetConformer().GetAtomPosition(1)
    assert (position.x, position.y, position.z) == pytest.approx(
        (0.63, 0.63, 0.63), abs=1e-6)


def test_smiles_of_real_molecules_match_their_formula(test_molecules):
    molecules = test_molecules[:40]
    smiles = molecule_smiles(Batch.from_data_list(molecules))
    assert len(smiles) == 40
    for data, s in zip(molecules, smiles):
        if s is None:
            continue
        mol = Chem.AddHs(Chem.MolFromSmiles(s))
        assert sorted(a.GetAtomicNum() for a in mol.GetAtoms()) == sorted(
            data.z.tolist())


def test_invalid_and_fragmented_molecules():
    # A chain H-H-H: the middle hydrogen has two bonds, which RDKit rejects.
    broken = Data(pos=torch.tensor([[0., 0., 0.], [0.74, 0., 0.],
                                    [1.48, 0., 0.]]), z=torch.tensor([1] * 3))
    two_fragments = Batch.from_data_list([methane(), methane()])
    shifted = two_fragments.pos.clone()
    shifted[5:] += torch.tensor([5., 0., 0.])
    merged = Data(pos=shifted, z=two_fragments.z)
    smiles = molecule_smiles(Batch.from_data_list([methane(), broken,
                                                   merged]))
    assert smiles == ['C', None, 'C']


def test_metric_definitions():
    smiles = ['C', 'C', 'CC', None]
    assert validity(smiles) == 0.75
    assert uniqueness(smiles) == pytest.approx(2 / 3)
    assert novelty(smiles, {'C'}) == 0.5
    assert uniqueness([None]) == 0.0 and novelty([None], set()) == 0.0
    with pytest.raises(ValueError, match='No molecules'):
        validity([])


def test_molecule_metrics_on_fixture(test_molecules):
    batch = Batch.from_data_list(test_molecules[:100])
    train = training_smiles(test_molecules[:50], batch_size=16,
                            progress=False)
    metrics = molecule_metrics(batch, training_smiles=train)
    assert metrics['validity'] > 0.9
    assert metrics['uniqueness'] == 1.0  # QM9 molecules are distinct
    # Half of the molecules are in the "training" set:
    assert 0.4 < metrics['novelty'] < 0.6
