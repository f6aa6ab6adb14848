import itertools
from pathlib import Path

import pytest
import torch
from torch_geometric.data import Batch, Data

from torch_enf.datasets import QM9
from torch_enf.metrics.bonds import (DOUBLE_BOND_PM, SINGLE_BOND_PM,
                                     TRIPLE_BOND_PM, infer_bonds)
from torch_enf.metrics.stability import stability, stable_atoms

FIXTURE = Path(__file__).resolve().parent / 'data' / 'qm9_fixture.npz'
SYMBOL = {1: 'H', 6: 'C', 7: 'N', 8: 'O', 9: 'F'}
VALENCE = {'H': 1, 'C': 4, 'N': 3, 'O': 2, 'F': 1}


def reference_order(a: str, b: str, distance_pm: float) -> int:
    r"""Straightforward per-pair lookup, written independently of the
    vectorised tables."""
    def length(table):
        return table.get(a + b, table.get(b + a))

    order = 0
    tables = [(SINGLE_BOND_PM, 10), (DOUBLE_BOND_PM, 5), (TRIPLE_BOND_PM, 3)]
    for k, (table, margin) in enumerate(tables, 1):
        if length(table) is not None and distance_pm < length(table) + margin:
            order = k
    return order


def reference_stability(molecules):
    stable_atom_count = atom_count = stable_molecule_count = 0
    for data in molecules:
        symbols = [SYMBOL[int(z)] for z in data.z]
        bond_sum = [0] * len(symbols)
        for i, j in itertools.combinations(range(len(symbols)), 2):
            d = 100 * float((data.pos[i] - data.pos[j]).norm())
            order = reference_order(symbols[i], symbols[j], d)
            bond_sum[i] += order
            bond_sum[j] += order
        ok = [s == VALENCE[e] for s, e in zip(bond_sum, symbols)]
        stable_atom_count += sum(ok)
        atom_count += len(ok)
        stable_molecule_count += all(ok)
    return stable_atom_count / atom_count, stable_molecule_count / len(
        molecules)


@pytest.fixture(scope='module')
def fixture_test_split(tmp_path_factory):
    root = tmp_path_factory.mktemp('qm9')
    return QM9(str(root), split='test', source=str(FIXTURE), log=False)


def test_stability_matches_per_pair_reference(fixture_test_split):
    molecules = list(fixture_test_split)[:60]
    # Make a few molecules unstable so both outcomes are exercised:
    for data in molecules[::7]:
        data.pos = data.pos * 1.15
    result = stability(Batch.from_data_list(molecules))
    atom, molecule = reference_stability(molecules)
    assert 0 < molecule < 1
    assert result['atom_stability'] == pytest.approx(atom, abs=1e-6)
    assert result['molecule_stability'] == pytest.approx(molecule, abs=1e-6)


def test_fixture_stability_is_high(fixture_test_split):
    result = stability(Batch.from_data_list(list(fixture_test_split)))
    assert result['atom_stability'] > 0.98
    assert result['molecule_stability'] > 0.9


def test_bond_orders_of_small_molecules():
    # HCN: H-C 1.07 A, C#N 1.16 A.
    pos = torch.tensor([[-1.07, 0., 0.], [0., 0., 0.], [1.16, 0., 0.]])
    edge_index, order = infer_bonds(pos, torch.tensor([1, 6, 7]))
    assert edge_index.tolist() == [[0, 1], [1, 2]]
    assert order.tolist() == [1, 3]
    # Formaldehyde C=O at 1.21 A; an F-F pair has no double-bond length.
    _, order = infer_bonds(torch.tensor([[0., 0., 0.], [1.21, 0., 0.]]),
                           torch.tensor([6, 8]))
    assert order.tolist() == [2]
    _, order = infer_bonds(torch.tensor([[0., 0., 0.], [1.0, 0., 0.]]),
                           torch.tensor([9, 9]))
    assert order.tolist() == [1]


def test_no_bonds_across_molecules():
    pos = torch.tensor([[0., 0., 0.], [0.74, 0., 0.], [0.1, 0., 0.]])
    batch = torch.tensor([0, 0, 1])
    z = torch.tensor([1, 1, 1])
    edge_index, _ = infer_bonds(pos, z, batch)
    assert edge_index.tolist() == [[0], [1]]
    atom_ok, molecule_ok = stable_atoms(pos, z, batch)
    assert atom_ok.tolist() == [True, True, False]
    assert molecule_ok.tolist() == [True, False]


def test_single_data_and_errors():
    h2 = Data(pos=torch.tensor([[0., 0., 0.], [0.74, 0., 0.]]),
              z=torch.tensor([1, 1]))
    assert stability(h2) == {'atom_stability': 1.0,
                             'molecule_stability': 1.0}
    with pytest.raises(ValueError, match='Unknown atomic number 99'):
        stability(Data(pos=torch.zeros(2, 3), z=torch.tensor([1, 99])))
    with pytest.raises(ValueError, match='Stability is undefined for He'):
        stability(Data(pos=torch.zeros(2, 3), z=torch.tensor([1, 2])))
    with pytest.raises(ValueError, match='non-finite'):
        stability(Data(pos=torch.full((2, 3), float('nan')),
                       z=torch.tensor([1, 1])))
    with pytest.raises(ValueError, match="needs 'pos' and 'z'"):
        stability(Data(pos=torch.zeros(2, 3)))
