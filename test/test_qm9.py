import importlib.util
import io
import logging
import os
import os.path as osp
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from torch_enf.datasets import QM9, qm9, qm9_sources
from torch_enf.datasets.qm9 import standard_split
from torch_enf.datasets.qm9_sources import (PYG_RAW_URL,
                                            PYG_UNCHARACTERISED_URL,
                                            QM9Molecules, download_pyg_raw,
                                            pyg_raw_present, read_npz,
                                            read_qm9pack, save_npz)

FIXTURE = Path(__file__).resolve().parent / 'data' / 'qm9_fixture.npz'
SHARED = Path(__file__).resolve().parents[1] / '..' / 'shared' / 'data'
EDM_TEST_SPLIT = SHARED / 'qm9' / 'edm_test_split.npz'


@pytest.fixture
def fixture_molecules() -> QM9Molecules:
    return read_npz(str(FIXTURE))


def test_standard_split_sizes_and_disjointness(fixture_molecules):
    splits = standard_split(fixture_molecules.uncharacterised)
    assert {k: len(v) for k, v in splits.items()} == QM9.split_sizes
    union = np.concatenate(list(splits.values()))
    assert len(np.unique(union)) == 130831
    assert not np.isin(union, fixture_molecules.uncharacterised).any()


def test_fixture_test_split_is_reference_subset(tmp_path):
    dataset = QM9(str(tmp_path), split='test', source=str(FIXTURE), log=False)
    assert len(dataset) == 300
    if not EDM_TEST_SPLIT.exists():
        pytest.skip('reference split not available')
    reference = _load_reference()
    rows = np.searchsorted(reference['index'], dataset.idx.numpy())
    assert np.array_equal(reference['index'][rows], dataset.idx.numpy())
    _assert_matches_reference(dataset, reference, rows)


def _load_reference() -> dict:
    with np.load(EDM_TEST_SPLIT) as f:
        return {key: f[key] for key in ('index', 'num_atoms', 'charges',
                                        'positions')}


def _assert_matches_reference(dataset, reference, rows):
    for data, row in zip(dataset, rows):
        count = reference['num_atoms'][row]
        assert data.num_nodes == count
        assert torch.equal(data.z, torch.from_numpy(
            reference['charges'][row, :count]))
        expected = torch.from_numpy(reference['positions'][row, :count])
        expected = expected - expected.mean(dim=0)
        torch.testing.assert_close(data.pos, expected, atol=1e-4, rtol=0)


def test_data_layout(tmp_path):
    dataset = QM9(str(tmp_path), split='train', source=str(FIXTURE),
                  log=False)
    assert len(dataset) == 20
    data = dataset[0]
    assert data.pos.dtype == torch.float32 and data.h.dtype == torch.float32
    assert data.z.dtype == torch.long and data.idx.shape == (1, )
    torch.testing.assert_close(data.pos.mean(dim=0), torch.zeros(3),
                               atol=1e-5, rtol=0)
    one_hot, charge = data.h[:, :5], data.h[:, 5]
    assert torch.equal(one_hot.sum(dim=1), torch.ones(data.num_nodes))
    types = torch.tensor(QM9.atomic_numbers)
    assert torch.equal(types[one_hot.argmax(dim=1)], data.z)
    assert torch.equal(charge, data.z.float())


def test_positional_keeps_19_atom_molecules_only(tmp_path):
    dataset = QM9(str(tmp_path), split='train', positional=True,
                  source=str(FIXTURE), log=False)
    assert len(dataset) == 10
    assert all(data.num_nodes == 19 for data in dataset)
    assert 'h' not in dataset[0] and 'z' not in dataset[0]


def test_processing_is_cached(tmp_path):
    QM9(str(tmp_path), split='valid', source=str(FIXTURE), log=False)
    files = list((tmp_path / 'processed').rglob('valid.pt'))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    assert len(QM9(str(tmp_path), split='valid', source=str(FIXTURE),
                   log=False)) == 10
    assert files[0].stat().st_mtime_ns == stamp


def test_pre_filter_count_is_logged(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger='torch_enf.datasets.qm9'):
        dataset = QM9(str(tmp_path), split='test', source=str(FIXTURE),
                      pre_filter=lambda data: data.num_nodes > 15, log=False)
    removed = 300 - len(dataset)
    assert removed > 0
    assert f'removed {removed} of 300' in caplog.text


def _write_bad_npz(path, molecules, **changes):
    fields = dict(index=molecules.index, num_atoms=molecules.num_atoms,
                  atomic_numbers=molecules.atomic_numbers,
                  positions=molecules.positions,
                  uncharacterised=molecules.uncharacterised)
    fields.update(changes)
    save_npz(str(path), QM9Molecules(**fields))


def test_bad_input_names_the_molecule(tmp_path, fixture_molecules):
    m = fixture_molecules
    bad_element = m.atomic_numbers.copy()
    bad_element[m.num_atoms[0]] = 16  # an atom of the second molecule
    _write_bad_npz(tmp_path / 'element.npz', m, atomic_numbers=bad_element)
    with pytest.raises(ValueError, match=f'molecule {m.index[1]} .*16'):
        QM9(str(tmp_path), split='test', source=str(tmp_path / 'element.npz'),
            log=False)

    bad_position = m.positions.copy()
    bad_position[0, 1] = np.nan
    _write_bad_npz(tmp_path / 'nan.npz', m, positions=bad_position)
    with pytest.raises(ValueError, match=f'molecule {m.index[0]} .*finite'):
        QM9(str(tmp_path), split='test', source=str(tmp_path / 'nan.npz'),
            log=False)


def test_npz_width_and_padding_errors(tmp_path, fixture_molecules):
    with np.load(FIXTURE) as f:
        arrays = dict(f)
    arrays['positions'] = arrays['positions'][:, :28]
    np.savez(tmp_path / 'widths.npz', **arrays)
    with pytest.raises(ValueError, match='mismatched widths'):
        read_npz(str(tmp_path / 'widths.npz'))

    with np.load(FIXTURE) as f:
        arrays = dict(f)
    arrays['num_atoms'][3] -= 1
    np.savez(tmp_path / 'padding.npz', **arrays)
    with pytest.raises(ValueError, match=f"{arrays['index'][3]}: the non"):
        read_npz(str(tmp_path / 'padding.npz'))

    del arrays['uncharacterized']
    np.savez(tmp_path / 'subset.npz', **arrays)
    with pytest.raises(ValueError, match='cannot be placed'):
        read_npz(str(tmp_path / 'subset.npz'))


def _write_sdf(path, records):
    symbols = dict(zip(QM9.atomic_numbers, QM9.atom_types))
    with open(path, 'w') as f:
        for index, atomic_numbers, positions in records:
            f.write(f'gdb_{index}\n     RDKit          3D\n\n'
                    f'{len(atomic_numbers):3d}  0  0  0  0  0  0  0  0  0'
                    f'999 V2000\n')
            for z, (x, y, w) in zip(atomic_numbers, positions):
                f.write(f'{x:10.4f}{y:10.4f}{w:10.4f} {symbols[z]:<3} 0  0'
                        f'  0  0  0  0  0  0  0  0  0  0\n')
            f.write('M  END\n$$$$\n')


def _write_pyg_raw(raw, m):
    sections = np.cumsum(m.num_atoms)[:-1]
    records = list(zip(m.index, np.split(m.atomic_numbers, sections),
                       np.split(m.positions, sections)))
    # gdb9.sdf also holds uncharacterised molecules, which must be skipped:
    records += [(index, *records[0][1:]) for index in m.uncharacterised[:2]]
    records.sort(key=lambda record: record[0])
    raw.mkdir()
    _write_sdf(raw / 'gdb9.sdf', records)
    (raw / 'uncharacterized.txt').write_text(
        ' Header line\n Index  SMILES\n' +
        ''.join(f'{i:8d}  C  C  1\n' for i in m.uncharacterised) +
        ' footer\n')


def test_pyg_raw_files_give_the_same_molecules(tmp_path, fixture_molecules):
    _write_pyg_raw(tmp_path / 'raw', fixture_molecules)
    from_sdf = QM9(str(tmp_path), split='test', source='pyg', log=False)
    from_npz = QM9(str(tmp_path), split='test', source=str(FIXTURE),
                   log=False)
    assert torch.equal(from_sdf.idx, from_npz.idx)
    assert torch.equal(from_sdf.z, from_npz.z)
    torch.testing.assert_close(from_sdf.pos, from_npz.pos, atol=1e-4, rtol=0)


def _offline(monkeypatch):
    r"""Fails the test on any download."""
    def refuse(*args, **kwargs):
        pytest.fail('QM9 tried the network')
    monkeypatch.setattr(qm9, 'download_pyg_raw', refuse)
    monkeypatch.setattr(qm9_sources.urllib.request, 'urlopen', refuse)


def test_auto_source_reads_qm9pack_without_the_network(
        tmp_path, monkeypatch, fixture_molecules):
    _offline(monkeypatch)
    monkeypatch.setattr(qm9, 'qm9pack_installed', lambda: True)
    calls = []
    monkeypatch.setattr(qm9, 'read_qm9pack', lambda: calls.append(1) or
                        fixture_molecules)
    dataset = QM9(str(tmp_path), split='valid', log=False)
    assert dataset.source == 'qm9pack' and calls == [1]
    assert len(dataset) == 10
    assert osp.exists(tmp_path / 'processed' / 'qm9pack' / 'valid.pt')


def test_auto_source_prefers_local_raw_files(tmp_path, monkeypatch,
                                            fixture_molecules):
    _offline(monkeypatch)
    monkeypatch.setattr(qm9, 'qm9pack_installed', lambda: True)
    monkeypatch.setattr(qm9, 'read_qm9pack', lambda: pytest.fail(
        'qm9pack read despite the raw files'))
    _write_pyg_raw(tmp_path / 'raw', fixture_molecules)
    assert QM9(str(tmp_path), split='valid', log=False).source == 'pyg'


def test_download_writes_complete_files_only(tmp_path, monkeypatch):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, 'w') as f:
        f.writestr('gdb9.sdf', 'records')
        f.writestr('gdb9.sdf.csv', 'table')
    answers = {PYG_RAW_URL: archive.getvalue(),
               PYG_UNCHARACTERISED_URL: b'list'}

    def urlopen(url, timeout):
        if url not in answers:
            raise urllib.error.URLError('offline')
        return io.BytesIO(answers[url])
    monkeypatch.setattr(qm9_sources.urllib.request, 'urlopen', urlopen)
    raw = tmp_path / 'raw'
    download_pyg_raw(str(raw))
    assert sorted(os.listdir(raw)) == ['gdb9.sdf', 'gdb9.sdf.csv',
                                      'uncharacterized.txt']
    assert (raw / 'gdb9.sdf').read_text() == 'records'
    assert pyg_raw_present(str(raw))

    del answers[PYG_UNCHARACTERISED_URL]  # offline half-way
    other = tmp_path / 'other'
    with pytest.raises(OSError, match=f'Could not download '
                       f'{PYG_UNCHARACTERISED_URL}.*qm9pack'):
        download_pyg_raw(str(other))
    assert not pyg_raw_present(str(other))
    assert sorted(os.listdir(other)) == ['gdb9.sdf', 'gdb9.sdf.csv']


def test_missing_source_fails_fast(tmp_path):
    with pytest.raises(ValueError, match='Unknown QM9 source'):
        QM9(str(tmp_path), source=str(tmp_path / 'absent.npz'))
    with pytest.raises(ValueError, match='Unknown split'):
        QM9(str(tmp_path), split='validation', source=str(FIXTURE))


needs_qm9pack = pytest.mark.skipif(
    importlib.util.find_spec('qm9pack') is None, reason='qm9pack missing')
needs_reference = pytest.mark.skipif(not EDM_TEST_SPLIT.exists(),
                                     reason='../shared/data missing')


@needs_qm9pack
@needs_reference
def test_full_test_split_matches_reference(tmp_path):
    # Processes the full test split from qm9pack (about 20 s on 2 cores).
    dataset = QM9(str(tmp_path), split='test', source='qm9pack', log=False)
    reference = _load_reference()
    assert np.array_equal(dataset.idx.numpy(), reference['index'])
    _assert_matches_reference(dataset, reference,
                              np.arange(len(reference['index'])))


def _write_qm9pack(folder, rows):
    header = 'XYZ_file,Index,N_atoms,Elements,XYZ_Ang\n'
    for part in (1, 2, 3):
        lines = [f'"x.xyz",{i},{n},"{e}","{xyz}"\n'
                 for i, n, e, xyz in rows[part - 1::3]]
        (folder / f'qm9_part{part}.csv').write_text(header + ''.join(lines))


WATER = (3, "['O','H','H']", '[[0.,0.,0.],[0.96,0.,0.],[-0.24,0.93,0.]]')


@pytest.mark.parametrize('row, message', [
    ((7, 3, "['O','H','S']", WATER[2]), "molecule 7 has unknown element 'S'"),
    ((7, 3, WATER[1], '[[0.,0.,0.],[0.96,0.]]'), "molecule 7: 'XYZ_Ang' has "
     "5 entries for 3 atoms"),
    ((7, 2, WATER[1], WATER[2]), "molecule 7: 'Elements' has 3 entries"),
    ((7, 3, WATER[1], WATER[2].replace('0.93', '0.9x3')),
     "molecule 7: malformed coordinate '0.9x3'"),
])
def test_qm9pack_parsing_errors_name_the_molecule(tmp_path, row, message):
    _write_qm9pack(tmp_path, [(3, *WATER), row, (9, *WATER)])
    with pytest.raises(ValueError, match=message):
        read_qm9pack(str(tmp_path))


def test_qm9pack_parsing(tmp_path):
    _write_qm9pack(tmp_path, [(3, *WATER), (5, 1, "['C']", '[[1.,2.,3.]]')])
    molecules = read_qm9pack(str(tmp_path))
    molecules.validate()
    assert molecules.index.tolist() == [3, 5]
    assert molecules.atomic_numbers.tolist() == [8, 1, 1, 6]
    np.testing.assert_allclose(molecules.positions[[1, 3]],
                               [[0.96, 0., 0.], [1., 2., 3.]])
    assert len(molecules.uncharacterised) == 133885 - 2


def test_too_many_atoms_is_rejected(tmp_path):
    big = (11, 30, str(['H'] * 30).replace(' ', ''),
           str([[float(k), 0., 0.] for k in range(30)]).replace(' ', ''))
    _write_qm9pack(tmp_path, [(3, *WATER), big])
    with pytest.raises(ValueError, match='molecule 11 has 30 atoms'):
        read_qm9pack(str(tmp_path)).validate()


def test_broken_cache_is_rebuilt(tmp_path, caplog):
    dataset = QM9(str(tmp_path), split='valid', source=str(FIXTURE),
                  log=False)
    cache = dataset.processed_paths[0]
    with open(cache, 'wb') as f:
        f.write(b'\x80\x04 truncated')
    with caplog.at_level('WARNING'):
        again = QM9(str(tmp_path), split='valid', source=str(FIXTURE),
                    log=False)
    assert len(again) == len(dataset)
    assert 'unreadable' in caplog.text and cache in caplog.text
