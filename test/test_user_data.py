import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch, Data

from torch_enf.datasets import MoleculeDataset, PointCloudDataset
from torch_enf.datasets.molecules import draw_split, node_features
from torch_enf.datasets.qm9 import node_features as qm9_node_features
from torch_enf.io import read_molecules, read_npz, read_sdf, read_xyz
from torch_enf.metrics import (infer_bonds, molecule_sample_metrics,
                               stability)
from torch_enf.metrics.rdkit_metrics import molecule_smiles

WATER = [('O', (0.0, 0.0, 0.0)), ('H', (0.96, 0.0, 0.0)),
         ('H', (-0.24, 0.93, 0.0))]


def molblock(name, atoms, bonds=(), properties=()):
    r"""A V2000 record: atoms as (symbol, xyz) or (symbol, xyz, charge
    code), bonds as (i, j, order), properties as 'M  ...' lines."""
    lines = [name, '  torch_enf', '',
             f'{len(atoms):3d}{len(bonds):3d}  0  0  0  0  0  0  0  0999 '
             f'V2000']
    for symbol, (x, y, z), *code in atoms:
        lines.append(f'{x:10.4f}{y:10.4f}{z:10.4f} {symbol:<3} 0'
                     f'{(code or [0])[0]:3d}  0  0  0  0  0  0  0  0  0  0')
    lines += [f'{i:3d}{j:3d}{order:3d}  0' for i, j, order in bonds]
    return '\n'.join(lines + list(properties) + ['M  END', '$$$$']) + '\n'


def xyz_frame(name, atoms):
    return '\n'.join([str(len(atoms)), name] + [
        f'{symbol} {x} {y} {z}' for symbol, (x, y, z) in atoms]) + '\n'


def embedded(smiles, seed=0):
    r"""An RDKit conformer (ETKDG + MMFF) of :obj:`smiles` as Data."""
    Chem = pytest.importorskip('rdkit.Chem')
    from rdkit.Chem import AllChem
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    assert AllChem.EmbedMolecule(mol, randomSeed=seed) == 0
    AllChem.MMFFOptimizeMolecule(mol)
    atoms = list(mol.GetAtoms())
    return Data(pos=torch.tensor(mol.GetConformer().GetPositions(),
                                 dtype=torch.float32),
                z=torch.tensor([a.GetAtomicNum() for a in atoms]),
                charge=torch.tensor([a.GetFormalCharge() for a in atoms]))


# Readers ------------------------------------------------------------------

def test_sdf_reads_charges_from_both_places(tmp_path):
    ammonium = [('N', (0, 0, 0)), ('H', (1.0, 0, 0)), ('H', (-0.3, 1, 0)),
                ('H', (-0.3, -0.5, 0.8)), ('H', (-0.3, -0.5, -0.8))]
    # The atom block's charge field: code 3 is +1.
    block = [(ammonium[0][0], ammonium[0][1], 3)] + ammonium[1:]
    path = tmp_path / 'ions.sdf'
    path.write_text(molblock('field', block) + molblock(
        'M CHG', ammonium, properties=['M  CHG  1   1   1']) + molblock(
        'water', WATER))
    molecules = read_sdf(str(path))
    assert [m.name for m in molecules] == ['field', 'M CHG', 'water']
    assert molecules[0].charge.tolist() == [1, 0, 0, 0, 0]
    assert molecules[1].charge.tolist() == [1, 0, 0, 0, 0]
    assert molecules[2].z.tolist() == [8, 1, 1]
    assert molecules[2].pos.dtype == torch.float32
    assert molecules[2].charge.dtype == torch.long


def test_sdf_agrees_with_rdkit(tmp_path):
    Chem = pytest.importorskip('rdkit.Chem')
    path = str(tmp_path / 'zwitterion.sdf')
    data = embedded('C[N+](C)(C)CC(=O)[O-]')
    mol = Chem.AddHs(Chem.MolFromSmiles('C[N+](C)(C)CC(=O)[O-]'))
    conformer = Chem.Conformer(mol.GetNumAtoms())
    for k, xyz in enumerate(data.pos.double().tolist()):
        conformer.SetAtomPosition(k, xyz)
    mol.AddConformer(conformer)
    writer = Chem.SDWriter(path)
    writer.write(mol)
    writer.close()
    molecule, = read_sdf(path)
    assert torch.equal(molecule.z, data.z)
    assert torch.equal(molecule.charge, data.charge)
    torch.testing.assert_close(molecule.pos, data.pos, atol=1e-4, rtol=0)


def test_truncated_sdf_names_file_and_line(tmp_path):
    path = tmp_path / 'cut.sdf'
    text = molblock('water', WATER) + molblock('water', WATER)
    path.write_text('\n'.join(text.splitlines()[:-4]) + '\n')
    # The second record starts at line 10 (9 lines per record); its counts
    # line 13 announces atoms on lines 14 to 16, and the file stops at 14.
    with pytest.raises(ValueError, match=r"cut\.sdf, line 13 \(record 2 "
                       r"from line 10\): the record announces 3 atoms and 0 "
                       r"bonds but ends after 1 of their lines"):
        read_sdf(str(path))
    path.write_text(molblock('water', WATER).replace('M  END\n', ''))
    with pytest.raises(ValueError, match=r"line 7 .*without its 'M  END'"):
        read_sdf(str(path))


@pytest.mark.parametrize('reader', [read_sdf, read_xyz, read_molecules])
def test_binary_folder_and_missing_files(tmp_path, reader):
    suffix = '.xyz' if reader is read_xyz else '.sdf'
    binary = tmp_path / f'binary{suffix}'
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(ValueError, match=rf'binary{suffix} is a binary '
                       r'file'):
        reader(str(binary))
    latin = tmp_path / f'latin{suffix}'
    latin.write_bytes(b'1\nCaf\xe9\nH 0 0 0\n')
    with pytest.raises(ValueError, match=r'line 2: byte 5 is not UTF-8'):
        reader(str(latin))
    compressed = tmp_path / f'packed{suffix}'
    compressed.write_bytes(gzip.compress(b'1\nx\nH 0 0 0\n'))
    with pytest.raises(ValueError, match='gzip-compressed'):
        reader(str(compressed))
    folder = tmp_path / f'folder{suffix}'
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match='is a folder'):
        reader(str(folder))
    with pytest.raises(FileNotFoundError, match='does not exist'):
        reader(str(tmp_path / f'missing{suffix}'))


def test_tolerant_mode_reports_skipped_structures(tmp_path):
    path = tmp_path / 'mixed.xyz'
    path.write_text(xyz_frame('ok', WATER) + '3\nbad atom\nO 0 0 0\n'
                    'H x 0 0\nH 0 1 0\n' + xyz_frame('ok too', WATER)
                    + '2\nnot finite\nH 0 0 0\nH 0 0 1e40\n')
    with pytest.raises(ValueError, match=r'mixed\.xyz, line 9: coordinates '
                       r'must be numbers'):
        read_molecules(str(path))
    file = read_molecules(str(path), on_error='skip')
    assert [m.name for m in file.molecules] == ['ok', 'ok too']
    assert file.indices == [0, 2]
    assert [(s.index, s.line, s.reason) for s in file.skipped] == [
        (1, 9, 'malformed'), (3, 19, 'non-finite coordinates')]
    assert 'mixed.xyz, line 19' in file.skipped[1].message

    sdf = tmp_path / 'mixed.sdf'
    sdf.write_text(molblock('a', WATER) + molblock(
        'b', [('Xx', (0, 0, 0)), ('H', (1, 0, 0))]) + molblock('c', WATER))
    file = read_molecules(str(sdf), on_error='skip')
    assert [m.name for m in file.molecules] == ['a', 'c']
    skipped, = file.skipped
    assert (skipped.index, skipped.line, skipped.reason) == (
        1, 14, 'unknown element')
    with pytest.raises(ValueError, match="on_error"):
        read_molecules(str(sdf), on_error='ignore')


def test_npz_layouts(tmp_path):
    path = str(tmp_path / 'trajectory.npz')
    pos = np.random.default_rng(0).normal(size=(4, 3, 3))
    np.savez(path, pos=pos, z=np.array([8, 1, 1]))
    frames = read_npz(path)
    assert len(frames) == 4 and frames[3].z.tolist() == [8, 1, 1]
    torch.testing.assert_close(frames[3].pos, torch.tensor(
        pos[3], dtype=torch.float32))
    assert frames[0].charge.tolist() == [0, 0, 0]

    padded = str(tmp_path / 'padded.npz')
    np.savez(padded, pos=pos, z=np.array([[8, 1, 1], [6, 8, 0],
                                          [1, 1, 0], [9, 0, 0]]),
             charges=np.array([[0] * 3, [-1, 1, 0], [0] * 3, [0] * 3]))
    file = read_molecules(padded, on_error='skip')
    assert [m.z.tolist() for m in file.molecules] == [[8, 1, 1], [6, 8],
                                                      [1, 1], [9]]
    assert file.molecules[1].charge.tolist() == [-1, 1]

    ragged = str(tmp_path / 'ragged.npz')
    flat = pos.reshape(-1, 3).copy()
    flat[5, 1] = np.nan
    np.savez(ragged, pos=flat, z=np.ones(12, dtype=np.int64),
             num_atoms=np.array([2, 5, 5]))
    file = read_molecules(ragged, on_error='skip')
    assert [m.num_nodes for m in file.molecules] == [2, 5]
    assert file.indices == [0, 2]
    assert file.skipped[0].message.endswith(
        'structure 1: non-finite coordinate of atom 3 (in float32)')

    np.savez(ragged, pos=flat, z=np.ones(12, dtype=np.int64),
             num_atoms=np.array([2, 5]))
    with pytest.raises(ValueError, match="'num_atoms' must hold positive "
                       "integers summing to the 12 atoms"):
        read_npz(ragged)
    np.savez(ragged, positions=flat)
    with pytest.raises(ValueError, match=r"lacks the arrays \['pos', 'z'\]"):
        read_npz(ragged)


# Datasets -----------------------------------------------------------------

def water_frames(count, seed=0):
    rng = np.random.default_rng(seed)
    return ''.join(
        xyz_frame(f'water {k}', [(s, tuple(np.add(xyz, rng.normal(
            scale=0.05, size=3)).round(4))) for s, xyz in WATER])
        for k in range(count))


def test_node_features_agree_with_qm9():
    z = torch.tensor([1, 6, 7, 8, 9, 6, 1])
    assert torch.equal(node_features(z, (1, 6, 7, 8, 9)),
                       qm9_node_features(z))
    h = node_features(torch.tensor([16, 1]), [1, 6, 16])
    assert h.tolist() == [[0, 0, 1, 16], [1, 0, 0, 1]]
    with pytest.raises(ValueError, match='Atomic number 17 is not one of'):
        node_features(torch.tensor([17]), [1, 6])


def test_dataset_caches_until_a_file_changes(tmp_path, monkeypatch):
    path = tmp_path / 'waters.xyz'
    path.write_text(water_frames(20))
    calls = []
    process = MoleculeDataset.process
    monkeypatch.setattr(MoleculeDataset, 'process',
                        lambda self: calls.append(1) or process(self))
    root = str(tmp_path / 'root')
    first = MoleculeDataset(root, str(path), log=False)
    assert len(calls) == 1
    second = MoleculeDataset(root, str(path), split='test', log=False)
    assert len(calls) == 1
    assert len(first) == 16 and len(second) == 2
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    MoleculeDataset(root, str(path), log=False)
    assert len(calls) == 2


def test_dataset_graphs_and_element_discovery(tmp_path):
    path = tmp_path / 'mixture.sdf'
    h2s = [('S', (0, 0, 0)), ('H', (1.34, 0, 0)), ('H', (-0.3, 1.3, 0))]
    path.write_text(molblock('water', WATER) + molblock('h2s', h2s))
    dataset = MoleculeDataset(str(tmp_path / 'root'), str(path),
                              fractions=(1, 0, 0), log=False)
    assert dataset.atomic_numbers == [1, 8, 16]
    water, hydrogen_sulfide = dataset
    assert water.h.tolist()[0] == [0, 1, 0, 8]
    assert hydrogen_sulfide.h.tolist()[0] == [0, 0, 1, 16]
    assert hydrogen_sulfide.name == 'h2s'
    assert hydrogen_sulfide.idx.tolist() == [1]
    torch.testing.assert_close(water.pos.mean(dim=0), torch.zeros(3),
                               atol=1e-6, rtol=0)
    assert water.charge.tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="The 'valid' split is empty"):
        MoleculeDataset(str(tmp_path / 'root'), str(path), split='valid',
                        fractions=(1, 0, 0), log=False)


def test_split_is_seeded_disjoint_and_recorded(tmp_path):
    path = tmp_path / 'waters.xyz'
    path.write_text(water_frames(30))
    root = tmp_path / 'root'
    splits = {name: MoleculeDataset(str(root), str(path), split=name,
                                    seed=3, log=False)
              for name in ('train', 'valid', 'test')}
    members = {name: sorted(int(d.idx) for d in dataset)
               for name, dataset in splits.items()}
    assert [len(m) for m in members.values()] == [24, 3, 3]
    assert sorted(sum(members.values(), [])) == list(range(30))
    recorded = json.loads((root / 'split.json').read_text())
    assert {name: recorded[name] for name in members} == members
    assert recorded['seed'] == 3
    assert recorded['files'] == [[str(path), 30]]
    assert draw_split(range(30), 3, (0.8, 0.1, 0.1)) == members
    assert draw_split(range(30), 4, (0.8, 0.1, 0.1)) != members
    with pytest.warns(UserWarning, match='drawing a new split'):
        other = MoleculeDataset(str(root), str(path), seed=4, log=False)
    assert sorted(int(d.idx) for d in other) != members['train']
    with pytest.raises(ValueError, match="'test' split would hold no "
                       "structure: 0.01 of 30"):
        MoleculeDataset(str(tmp_path / 'small'), str(path),
                        fractions=(0.9, 0.09, 0.01), log=False)


def test_dataset_skips_and_reports(tmp_path, capsys):
    folder = tmp_path / 'files'
    folder.mkdir()
    (folder / 'a.xyz').write_text(
        xyz_frame('water', WATER) + xyz_frame('ion', [('Na', (0, 0, 0))])
        + xyz_frame('nan', [('H', (0, 0, 0)), ('H', (0, 0, 'nan'))]))
    ethane = [('C', (0, 0, 0)), ('C', (1.54, 0, 0))] + [
        ('H', (x, 1.0, 0)) for x in (-0.4, -0.4, -0.4, 1.9, 1.9, 1.9)]
    (folder / 'b.sdf').write_text(
        molblock('h2s', [('S', (0, 0, 0)), ('H', (1.34, 0, 0)),
                         ('H', (-0.3, 1.3, 0))])
        + molblock('ethane', ethane) + molblock('water', WATER))
    (folder / 'notes.txt').write_text('not a molecule file')
    dataset = MoleculeDataset(
        str(tmp_path / 'root'), str(folder), atomic_numbers=[1, 8, 6],
        max_num_atoms=6, fractions=(1, 0, 0))
    report = capsys.readouterr().err
    assert 'Kept 2 of 6 structures, skipped 4' in report
    reasons = sorted((Path(s.path).name, s.index, s.reason)
                     for s in dataset.skipped)
    assert reasons == [('a.xyz', 1, 'single atom'),
                       ('a.xyz', 2, 'non-finite coordinates'),
                       ('b.sdf', 0, 'element outside atomic_numbers'),
                       ('b.sdf', 1, 'too many atoms')]
    assert '1  too many atoms' in report
    assert dataset.atomic_numbers == [1, 8, 6]
    assert [int(d.idx) for d in dataset] == [0, 5]
    assert dataset[0].h.size(1) == 4
    cached = MoleculeDataset(
        str(tmp_path / 'root'), str(folder), atomic_numbers=[1, 8, 6],
        max_num_atoms=6, fractions=(1, 0, 0))
    assert cached.skipped == dataset.skipped


def test_dataset_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='name no molecule file'):
        MoleculeDataset(str(tmp_path / 'root'), str(tmp_path / '*.sdf'))
    with pytest.raises(FileNotFoundError, match='does not exist'):
        MoleculeDataset(str(tmp_path / 'root'), str(tmp_path / 'none.sdf'))
    path = tmp_path / 'atoms.xyz'
    path.write_text(xyz_frame('a', [('H', (0, 0, 0))]) * 3)
    with pytest.raises(ValueError, match='No structure .* is left after '
                       "skipping: {'single atom': 3}"):
        MoleculeDataset(str(tmp_path / 'root'), str(path), log=False)
    with pytest.raises(ValueError, match="'fractions' must be three"):
        MoleculeDataset(str(tmp_path / 'root'), str(path),
                        fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="'atomic_numbers' must be"):
        MoleculeDataset(str(tmp_path / 'root'), str(path),
                        atomic_numbers=[1, 1])


def test_point_cloud_dataset(tmp_path):
    path = tmp_path / 'clouds.npy'
    np.save(path, np.random.default_rng(0).normal(size=(20, 4, 2)))
    train = PointCloudDataset(str(tmp_path / 'root'), str(path), log=False)
    test = PointCloudDataset(str(tmp_path / 'root'), str(path),
                             split='test', log=False)
    assert len(train) == 16 and len(test) == 2
    assert train[0].pos.shape == (4, 2)
    torch.testing.assert_close(train[0].pos.mean(dim=0), torch.zeros(2),
                               atol=1e-6, rtol=0)
    assert not {int(d.idx) for d in train} & {int(d.idx) for d in test}


@pytest.mark.parametrize('array,message', [
    (np.zeros((5, 6)), r'must have shape \[num_samples, num_nodes, n_dims\]'
     r', got \[5, 6\]'),
    (np.zeros((0, 3, 3)), r'needs at least 1 sample of 2 nodes'),
    (np.zeros((4, 1, 3)), r'needs at least 1 sample of 2 nodes'),
    (np.array([['a']]), 'must hold real numbers'),
    (np.array([[[0.0, 0]] * 2, [[np.inf, 0]] * 2, [[0, 0]] * 2,
               [[0, np.nan]] * 2]), r'2 of 4 configurations hold '
     r'non-finite entries \(in float32\), e\.g\. configurations \[1, 3\]'),
])
def test_point_cloud_errors(tmp_path, array, message):
    path = tmp_path / 'bad.npy'
    np.save(path, array)
    with pytest.raises(ValueError, match=message):
        PointCloudDataset(str(tmp_path / 'root'), str(path), log=False)


# Metrics ------------------------------------------------------------------

@pytest.mark.parametrize('smiles', ['c1ccsc1', 'CCCl', 'CC[Se]C', 'CBr',
                                    'CS(C)(=O)=O', 'OP(O)(O)=O'])
def test_non_qm9_molecules_are_stable_and_valid(smiles):
    Chem = pytest.importorskip('rdkit.Chem')
    data = embedded(smiles)
    assert stability(data) == {'atom_stability': 1.0,
                               'molecule_stability': 1.0}
    expected = Chem.MolToSmiles(Chem.MolFromSmiles(smiles))
    assert molecule_smiles(data) == [expected]


def test_formal_charges_enter_stability_and_validity():
    pytest.importorskip('rdkit')
    ammonium = embedded('C[N+](C)(C)C')
    assert stability(ammonium)['molecule_stability'] == 1.0
    assert molecule_smiles(ammonium) == ['C[N+](C)(C)C']
    neutral = Data(pos=ammonium.pos, z=ammonium.z)  # as a flow samples it
    assert stability(neutral)['molecule_stability'] == 0.0
    assert molecule_smiles(neutral) == [None]


def test_bonds_fall_back_to_covalent_radii():
    # B-C is not tabulated: 84 + 76 pm covalent radii, plus the 10 pm margin.
    z = torch.tensor([5, 6])
    for distance, bonded in ((1.60, True), (1.69, True), (1.71, False)):
        pos = torch.tensor([[0., 0., 0.], [distance, 0., 0.]])
        assert (infer_bonds(pos, z)[0].size(1) == 1) == bonded


def test_element_without_valence_rule():
    pytest.importorskip('rdkit')
    # Sodium methoxide's Na-O bond: bonds and validity are defined,
    # stability is not.
    data = Data(pos=torch.tensor([[0., 0., 0.], [2.0, 0., 0.],
                                  [3.4, 0., 0.]]),
                z=torch.tensor([11, 8, 6]))
    assert infer_bonds(data.pos, data.z)[1].tolist() == [1, 1]
    with pytest.raises(ValueError, match=r'Stability is undefined for Na '
                       r'\(atomic number 11\) with formal charge 0'):
        stability(data)
    # The sample metrics say so and compute the others (a run's evaluation
    # must not fail after training because of one element).
    metrics = molecule_sample_metrics(Batch.from_data_list([data]))
    assert metrics['atom_stability'] is None
    assert 'Stability is undefined for Na' in metrics['stability_undefined']
    assert metrics['validity'] == 1.0
    assert len(molecule_smiles(data)) == 1


def test_sample_metrics_of_user_molecules():
    pytest.importorskip('rdkit')
    molecules = [embedded('c1ccsc1'), embedded('c1ccsc1', seed=1),
                 embedded('CCCl')]
    metrics = molecule_sample_metrics(Batch.from_data_list(molecules),
                                      training_smiles={'c1ccsc1'})
    assert metrics == pytest.approx({
        'num_samples': 3, 'atom_stability': 1.0, 'molecule_stability': 1.0,
        'validity': 1.0, 'uniqueness': 2 / 3, 'novelty': 1 / 2})
