from pathlib import Path

import pytest
import torch
from torch_geometric.data import Batch

from torch_enf.datasets import QM9
from torch_enf.io import read_sdf, read_xyz, write_sdf, write_xyz

FIXTURE = Path(__file__).resolve().parent / 'data' / 'qm9_fixture.npz'


@pytest.fixture(scope='module')
def batch(tmp_path_factory):
    root = tmp_path_factory.mktemp('qm9')
    dataset = QM9(str(root), split='test', source=str(FIXTURE), log=False)
    return Batch.from_data_list(list(dataset)[:6])


def parse_xyz_by_hand(path):
    lines = Path(path).read_text().splitlines()
    frames = []
    while lines:
        count = int(lines[0])
        atoms = [line.split() for line in lines[2:2 + count]]
        frames.append((lines[1], [a[0] for a in atoms],
                       torch.tensor([[float(x) for x in a[1:]]
                                     for a in atoms])))
        lines = lines[2 + count:]
    return frames


def test_xyz_round_trip(tmp_path, batch):
    path = tmp_path / 'molecules.xyz'
    write_xyz(str(path), batch)
    frames = parse_xyz_by_hand(path)
    assert len(frames) == batch.num_graphs
    symbols = {1: 'H', 6: 'C', 7: 'N', 8: 'O', 9: 'F'}
    for g, (name, elements, pos) in enumerate(frames):
        data = batch.get_example(g)
        assert name == f'molecule {int(data.idx)}'
        assert elements == [symbols[int(z)] for z in data.z]
        torch.testing.assert_close(pos, data.pos, atol=1e-6, rtol=0)
    assert [p.name for p in tmp_path.iterdir()] == ['molecules.xyz']


def test_xyz_errors_leave_no_file(tmp_path, batch):
    bad = batch.clone()
    bad.z = bad.z.clone()
    bad.z[0] = 99
    with pytest.raises(ValueError, match='atomic number 99'):
        write_xyz(str(tmp_path / 'bad.xyz'), bad)
    with pytest.raises(ValueError, match='2 names for 6'):
        write_xyz(str(tmp_path / 'bad.xyz'), batch, names=['a', 'b'])
    assert list(tmp_path.iterdir()) == []


def test_sdf_round_trip(tmp_path, batch):
    Chem = pytest.importorskip('rdkit.Chem')
    path = tmp_path / 'molecules.sdf'
    names = [f'sample {g}' for g in range(batch.num_graphs)]
    write_sdf(str(path), batch, names=names)
    molecules = list(Chem.SDMolSupplier(str(path), removeHs=False,
                                        sanitize=False))
    assert [m.GetProp('_Name') for m in molecules] == names
    for g, mol in enumerate(molecules):
        data = batch.get_example(g)
        assert [a.GetAtomicNum() for a in mol.GetAtoms()] == data.z.tolist()
        assert mol.GetNumBonds() > 0
        pos = torch.tensor(mol.GetConformer().GetPositions(),
                           dtype=torch.float32)
        torch.testing.assert_close(pos, data.pos, atol=1e-4, rtol=0)


def test_molecule_grid_png(tmp_path, batch):
    pytest.importorskip('matplotlib')
    from torch_enf.visualization import plot_molecule_grid
    path = tmp_path / 'grid.png'
    plot_molecule_grid(batch, str(path), ncols=3)
    assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    with pytest.raises(ValueError, match='1 titles for 6'):
        plot_molecule_grid(batch, str(path), titles=['x'])


def test_missing_rdkit_names_the_extra(tmp_path, batch, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, 'rdkit', None)
    with pytest.raises(ImportError, match=r'torch-enf\[molecules\]'):
        write_sdf(str(tmp_path / 'molecules.sdf'), batch)
    assert list(tmp_path.iterdir()) == []


def test_read_xyz_inverts_write_xyz(tmp_path, batch):
    path = str(tmp_path / 'molecules.xyz')
    write_xyz(path, batch)
    molecules = read_xyz(path)
    assert len(molecules) == batch.num_graphs
    for g, molecule in enumerate(molecules):
        data = batch.get_example(g)
        assert torch.equal(molecule.z, data.z)
        torch.testing.assert_close(molecule.pos, data.pos, atol=1e-6, rtol=0)
        assert molecule.name == f'molecule {int(data.idx)}'


def test_read_sdf_inverts_write_sdf(tmp_path, batch):
    pytest.importorskip('rdkit')
    path = str(tmp_path / 'molecules.sdf')
    write_sdf(path, batch)
    molecules = read_sdf(path)
    assert len(molecules) == batch.num_graphs
    for g, molecule in enumerate(molecules):
        data = batch.get_example(g)
        assert torch.equal(molecule.z, data.z)
        assert torch.equal(molecule.charge, torch.zeros_like(data.z))
        torch.testing.assert_close(molecule.pos, data.pos, atol=1e-4, rtol=0)


@pytest.mark.parametrize('text,message', [
    ('two\nx\nH 0 0 0\n', r'line 1: expected the number of atoms'),
    ('2\nx\nH 0 0 0\n', r'line 1: the frame announces 2 atoms but the '
     r'file ends after 1'),
    ('1\nx\nXx 0 0 0\n', r"line 3: unknown element 'Xx'"),
    ('1\nx\nH 0 zero 0\n', r'line 3: coordinates must be numbers'),
    ('1\nx\nH 0 0\n', r"line 3: expected 'symbol x y z'"),
    ('1\nx\nH 0 nan 0\n', r'line 3: non-finite coordinate'),
    ('1\nx\nH 0 0 0\n0\ny\n', r'line 4: a frame needs at least one'),
    ('\n\n', r'holds no molecules'),
])
def test_read_xyz_names_file_and_line(tmp_path, text, message):
    path = tmp_path / 'bad.xyz'
    path.write_text(text)
    with pytest.raises(ValueError, match=f'bad.xyz.*{message}'):
        read_xyz(str(path))


def test_read_sdf_names_the_bad_record(tmp_path, batch):
    pytest.importorskip('rdkit')
    path = tmp_path / 'molecules.sdf'
    write_sdf(str(path), batch)
    records = path.read_text().split('$$$$\n')
    lines = records[1].splitlines()
    lines[3] = 'garbage counts line'
    records[1] = '\n'.join(lines) + '\n'
    path.write_text('$$$$\n'.join(records))
    start = len(records[0].splitlines()) + 2
    with pytest.raises(ValueError, match=rf'line {start + 3} \(record 2 '
                       rf'from line {start}\): expected the counts line'):
        read_sdf(str(path))
    (tmp_path / 'empty.sdf').write_text('')
    with pytest.raises(ValueError, match='holds no molecules'):
        read_sdf(str(tmp_path / 'empty.sdf'))
