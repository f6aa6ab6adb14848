r"""The torch-enf command and the model loader, on tiny models trained here:
each sub-command, reading back what it writes, agreement with the Python
API, and clear errors for bad input."""
import csv
import importlib.util
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import Batch, Data

from torch_enf.cli import main
from torch_enf.datasets import QM9
from torch_enf.experiments.particles import SYSTEMS
from torch_enf.experiments.common import run_config
from torch_enf.objectives import FlowMatching
from torch_enf.pretrained import (available_models, build_model,
                                  export_model, load_pretrained, model_card,
                                  read_model)
from torch_enf.training import fit

COMMON = dict(objective='fm', hidden=8, layers=1, tol=1e-3, eval_tol=1e-3,
              no_adjoint=False, lr=1e-3, seed=0, sample_solver='midpoint',
              sample_steps=4)
PARTICLES = dict(COMMON, system='dw4', n_train=10)
MOLECULES = dict(COMMON, positional=False, dequantizer='argmax',
                 actnorm=False, num_radial=4, radial_cutoff=3.0,
                 class_margin=1.0)


def molecules(num, generator, sizes=(3, 4, 5)):
    data_list = []
    for k in range(num):
        size = sizes[k % len(sizes)]
        types = torch.randint(0, 3, (size, ), generator=generator)
        h = torch.cat([F.one_hot(types, 5).float(),
                       torch.tensor([1.0, 6, 7])[types, None]], -1)
        data_list.append(Data(pos=1.5 * torch.randn(size, 3,
                                                    generator=generator),
                              h=h, z=torch.tensor([1, 6, 7])[types]))
    return data_list


def train_run(folder, options, data_list):
    torch.manual_seed(0)
    state_dict = None
    if not options.get('system') and not options.get('positional'):
        state_dict = {'node_count.probs': torch.tensor([0, 0, 0, 1., 1, 1])}
    model = build_model(options, state_dict)
    loader = [Batch.from_data_list(data_list[i:i + 4])
              for i in range(0, len(data_list), 4)]
    fit(model, FlowMatching(), loader, str(folder), epochs=2,
        config=run_config(argparse_namespace(options)),
        metadata=dict(options=options), progress=False,
        log=lambda line: None)
    return model


def argparse_namespace(options):
    import argparse
    return argparse.Namespace(**options)


@pytest.fixture(scope='module')
def molecule_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp('qm9-run')
    train_run(folder, MOLECULES, molecules(8, torch.Generator().manual_seed(
        0)))
    return folder


@pytest.fixture(scope='module')
def particle_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp('dw4-run')
    generator = torch.Generator().manual_seed(1)
    train_run(folder, PARTICLES, [Data(pos=torch.randn(4, 2,
                                                       generator=generator))
                                  for _ in range(8)])
    return folder


def run_cli(*argv):
    return main([str(a) for a in argv])


def test_sample_molecules_to_sdf_and_xyz(molecule_run, tmp_path, capsys):
    Chem = pytest.importorskip('rdkit.Chem')
    sdf = tmp_path / 'mols.sdf'
    assert run_cli('sample', molecule_run, '-n', 7, '-o', sdf,
                   '--no-progress') == 0
    read = list(Chem.SDMolSupplier(str(sdf), removeHs=False,
                                   sanitize=False))
    assert len(read) == 7
    assert (tmp_path / 'mols.png').read_bytes()[:4] == b'\x89PNG'
    out = capsys.readouterr().out
    assert '"atom_stability"' in out and '"validity"' in out
    xyz = tmp_path / 'mols.xyz'
    assert run_cli('sample', molecule_run, '-n', 3, '-o', xyz,
                   '--solver', 'euler', '--num-steps', 2,
                   '--no-progress') == 0
    from torch_enf.io import read_xyz
    assert len(read_xyz(str(xyz))) == 3


def test_sample_without_matplotlib_writes_samples_only(
        particle_run, tmp_path, capsys, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *args: (
        None if name == 'matplotlib' else find_spec(name, *args)))
    assert run_cli('sample', particle_run, '-n', 2, '-o',
                   tmp_path / 'x.npy', '--no-progress') == 0
    assert np.load(tmp_path / 'x.npy').shape == (2, 4, 2)
    assert not (tmp_path / 'x.png').exists()
    assert 'no picture' in capsys.readouterr().out
    # an explicit picture is refused before any sampling
    assert run_cli('sample', particle_run, '-n', 2, '-o', tmp_path / 'y.npy',
                   '--picture', tmp_path / 'y.png') == 2
    assert 'needs matplotlib' in capsys.readouterr().err
    assert not (tmp_path / 'y.npy').exists()


def test_sample_particles_to_npy_and_pt(particle_run, tmp_path):
    assert run_cli('sample', particle_run, '-n', 5, '-o',
                   tmp_path / 'x.npy', '--no-progress') == 0
    assert np.load(tmp_path / 'x.npy').shape == (5, 4, 2)
    assert run_cli('sample', particle_run, '-n', 2, '-o', tmp_path / 'x.pt',
                   '--seed', 3, '--no-progress') == 0
    assert torch.load(tmp_path / 'x.pt').shape == (2, 4, 2)


def test_sample_temperature(particle_run, tmp_path, capsys):
    for name, temperature in (('warm', '1'), ('cold', '0.5')):
        assert run_cli('sample', particle_run, '-n', 4, '-o',
                       tmp_path / f'{name}.npy', '--temperature', temperature,
                       '--no-progress') == 0
    warm, cold = (np.load(tmp_path / f'{name}.npy')
                  for name in ('warm', 'cold'))
    assert np.linalg.norm(cold) < np.linalg.norm(warm)
    assert run_cli('sample', particle_run, '-n', 2, '-o', tmp_path / 'x.npy',
                   '--temperature', '-1', '--no-progress') == 2
    assert "'temperature' must be" in capsys.readouterr().err
    assert not (tmp_path / 'x.npy').exists()


def test_logprob_agrees_with_the_model(molecule_run, tmp_path, capsys):
    pytest.importorskip('rdkit')
    from torch_enf.io import write_sdf
    generator = torch.Generator().manual_seed(5)
    structures = molecules(5, generator)
    path = tmp_path / 'given.sdf'
    write_sdf(str(path), Batch.from_data_list(structures))
    assert run_cli('logprob', molecule_run, path, '--tol', 1e-6,
                   '-o', tmp_path / 'scores.csv') == 0
    with open(tmp_path / 'scores.csv') as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5
    model = load_pretrained(str(molecule_run))
    from torch_enf.datasets.qm9 import node_features
    from torch_enf.io import read_sdf
    read_back = [Data(pos=d.pos, h=node_features(d.z))
                 for d in read_sdf(str(path))]  # coordinates as written
    torch.manual_seed(0)
    with model.flow.ode_options(rtol=1e-6, atol=1e-6), torch.no_grad():
        expected = model.log_prob(Batch.from_data_list(read_back),
                                  trace='exact')
    # The same seed gives the same dequantisation draws.
    values = torch.tensor([float(r['log_prob']) for r in rows])
    torch.testing.assert_close(values, expected, atol=2e-5, rtol=0)
    assert 'mean log-likelihood' in capsys.readouterr().out


def test_logprob_of_positions_is_exact(particle_run, tmp_path):
    positions = torch.randn(6, 4, 2, generator=torch.Generator()
                            .manual_seed(2))
    np.save(tmp_path / 'conf.npy', positions.numpy())
    assert run_cli('logprob', particle_run, tmp_path / 'conf.npy') == 0
    with open(tmp_path / 'conf.logprob.csv') as f:
        values = torch.tensor([float(r['log_prob'])
                               for r in csv.DictReader(f)])
    flow = load_pretrained(str(particle_run))
    with torch.no_grad():
        expected = flow.log_prob(Batch.from_data_list(
            [Data(pos=p) for p in positions]))
    torch.testing.assert_close(values, expected.float(), atol=1e-4, rtol=0)


def test_logprob_shows_progress_unless_told_not_to(particle_run, tmp_path,
                                                   capsys):
    np.save(tmp_path / 'conf.npy', np.random.default_rng(0)
            .standard_normal((6, 4, 2)).astype(np.float32))
    assert run_cli('logprob', particle_run, tmp_path / 'conf.npy',
                   '--batch-size', 4) == 0
    assert '6/6' in capsys.readouterr().err
    assert run_cli('logprob', particle_run, tmp_path / 'conf.npy',
                   '--batch-size', 4, '--no-progress') == 0
    assert 'log-likelihood' not in capsys.readouterr().err


def test_logprob_reports_structures_whose_solve_fails(particle_run,
                                                      tmp_path, capsys):
    np.save(tmp_path / 'conf.npy', np.random.default_rng(0)
            .standard_normal((3, 4, 2)).astype(np.float32))
    # A tolerance no float32 solve can meet: every step size collapses.
    assert run_cli('logprob', particle_run, tmp_path / 'conf.npy',
                   '--tol', 1e-30, '--no-progress',
                   '-o', tmp_path / 'scores.csv') == 0
    captured = capsys.readouterr()
    assert 'could not score 3 of 3 structures' in captured.err
    with open(tmp_path / 'scores.csv') as f:
        assert [r['log_prob'] for r in csv.DictReader(f)] == ['nan'] * 3
    assert 'mean log-likelihood nan over 0 structures' in captured.out


def test_logprob_skips_unknown_elements_with_a_count(molecule_run, tmp_path,
                                                     capsys):
    path = tmp_path / 'mixed.xyz'
    path.write_text('3\nok\nC 0 0 0\nH 1.1 0 0\nH -0.4 1 0\n'
                    '2\nsulfur\nS 0 0 0\nH 1.3 0 0\n'
                    '1\nlonely\nC 0 0 0\n')
    assert run_cli('logprob', molecule_run, path) == 0
    err = capsys.readouterr().err
    assert 'skipped 2 of 3 structures' in err
    assert 'unknown atomic numbers [16]' in err
    assert 'fewer than 2 atoms' in err


@pytest.mark.parametrize('argv,message', [
    (['sample', '{run}', '-n', '0', '-o', 'x.sdf'], 'must be a positive'),
    (['sample', 'qm9-large', '-n', '5', '-o', 'x.sdf'],
     "Unknown model 'qm9-large'"),
    (['sample', '{run}', '-n', '5', '-o', 'x.npy'], 'written as .sdf or .xyz'),
    (['sample', '{run}', '-n', '5', '-o', 'x.sdf', '--solver', 'rk4'],
     'needs \'num_steps\''),
    (['logprob', '{run}', 'missing.xyz'], 'does not exist'),
    (['sample', '{bad}', '-n', '5', '-o', 'x.sdf'], 'not a torch-enf model'),
])
def test_bad_input_is_a_one_line_error(molecule_run, tmp_path, capsys, argv,
                                       message):
    bad = tmp_path / 'weights.pt'
    torch.save(torch.nn.Linear(2, 2).state_dict(), bad)
    argv = [a.format(run=molecule_run, bad=bad) for a in argv]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        assert run_cli(*argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count('\n') == 1
    assert not (tmp_path / 'x.sdf').exists()


def test_load_pretrained_and_export(molecule_run, tmp_path):
    model = load_pretrained(str(molecule_run))
    assert not model.training
    # The run's distance features are rebuilt from its options.
    assert model.flow.dynamics.distance_expansion.offset.numel() == 4
    assert model.flow.dynamics.egnn.convs[0].edge_dim == 5
    assert model.dequantizer.margin == 1.0
    path = str(tmp_path / 'model.pt')
    export_model(str(molecule_run), path, card=dict(description='tiny'))
    exported = load_pretrained(path)
    for key, value in model.state_dict().items():
        assert torch.equal(exported.state_dict()[key], value)
    from_checkpoint = load_pretrained(str(molecule_run / 'checkpoint.pt'))
    assert set(from_checkpoint.state_dict()) == set(model.state_dict())
    with pytest.raises(ValueError, match='available'):
        load_pretrained('no-such-model')
    with pytest.raises(ValueError, match='pass its run folder'):
        load_pretrained(str(molecule_run / 'best.pt'))


def test_models_lists_shipped_models_and_module_entry_point(capsys):
    assert run_cli('models') == 0
    out = capsys.readouterr().out
    for name in available_models():
        assert name in out
        num_samples = model_card(name)['metrics'].get('num_samples')
        if num_samples is not None:  # counts print in full, not as 1e+04
            assert re.search(rf'num_samples={num_samples}\b', out)
    result = subprocess.run([sys.executable, '-m', 'torch_enf', 'train',
                             'nope'], capture_output=True, text=True)
    assert result.returncode == 2 and 'usage: torch-enf train' in \
        result.stderr


@pytest.mark.parametrize('name', available_models())
def test_shipped_models_load_sample_and_score(name):
    card = model_card(name)
    for key in ('description', 'command', 'data', 'revision', 'machine',
                'metrics'):
        assert card[key], key
    model = load_pretrained(name)
    assert not model.training
    flow = getattr(model, 'flow', model)
    generator = torch.Generator().manual_seed(0)
    with flow.ode_options(method='midpoint', num_steps=4):
        options = read_model(name).options
        if 'system' in options:
            samples = model.sample(SYSTEMS[options['system']].num_particles,
                                   3, generator)
        elif options['positional']:
            samples = model.sample(QM9.positional_num_atoms, 3, generator)
        else:
            samples = model.sample(3, generator)
        log_prob = model.log_prob(samples, trace='hutchinson')
    assert samples.num_graphs == 3
    assert torch.isfinite(log_prob).all()
