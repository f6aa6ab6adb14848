r"""The torch-enf command and the model files, on tiny runs trained here
through :obj:`torch-enf train` on user data (point clouds from a .npy file,
molecules with S and Cl from an SDF): each sub-command, reading back what
it writes, agreement with the Python API, and one-line errors before any
work for bad input."""
import csv
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch, Data

from torch_enf.cli import main
from torch_enf.flows import SolverOptions
from torch_enf.pretrained import (available_models, load_model,
                                  load_pretrained, model_card, read_model)
from torch_enf.storage import save_model
from torch_enf.tasks import get_task

TINY = ['--hidden', 8, '--layers', 1, '--epochs', 2, '--batch-size', 8,
        '--num-valid', 4, '--num-test', 4, '--num-samples', 4, '--tol',
        1e-3, '--solver', 'midpoint', '--num-steps', 4, '--no-progress']
SMILES = ['CCO', 'CS', 'CCl', 'C=O', 'CN', 'CC', 'OCS', 'ClCCl']


def run_cli(*argv):
    return main([str(a) for a in argv])


@pytest.fixture(scope='module')
def points_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp('points')
    generator = torch.Generator().manual_seed(0)
    np.save(folder / 'points.npy',
            torch.randn(40, 4, 2, generator=generator).numpy())
    assert run_cli('train', 'points', '--data', folder / 'points.npy',
                   '--root', folder / 'data', '--out', folder / 'run',
                   *TINY) == 0
    return folder / 'run'


@pytest.fixture(scope='module')
def molecule_file(tmp_path_factory):
    Chem = pytest.importorskip('rdkit.Chem')
    from rdkit.Chem import AllChem
    path = tmp_path_factory.mktemp('mols') / 'mols.sdf'
    writer = Chem.SDWriter(str(path))
    for k in range(40):
        mol = Chem.AddHs(Chem.MolFromSmiles(SMILES[k % len(SMILES)]))
        AllChem.EmbedMolecule(mol, randomSeed=k)
        writer.write(mol)
    writer.close()
    return path


@pytest.fixture(scope='module')
def molecule_run(molecule_file):
    folder = molecule_file.parent
    assert run_cli('train', 'molecules', '--data', molecule_file,
                   '--root', folder / 'data', '--out', folder / 'run',
                   '--num-radial', 4, '--radial-cutoff', 3,
                   '--class-margin', 1, *TINY) == 0
    return folder / 'run'


def test_train_writes_a_model_file_and_valid_json(points_run):
    results = json.loads((points_run / 'results.json').read_text())
    assert results['task'] == 'points' and results['num_test'] == 4
    found = load_model(points_run / 'model.pt')
    assert found.task.state() == dict(name='points', num_nodes=4, n_dims=2)
    assert found.sampler == SolverOptions('midpoint', 1e-3, 1e-3, 4)
    assert json.loads(json.dumps(found.card['metrics']))  # plain data
    # The run folder and the model file hold the same model.
    from_folder = load_pretrained(points_run)
    for key, value in found.model.state_dict().items():
        assert torch.equal(from_folder.state_dict()[key], value)


def test_user_molecules_train_sample_and_score(molecule_run, tmp_path,
                                               capsys):
    Chem = pytest.importorskip('rdkit.Chem')
    found = load_model(molecule_run)
    assert found.model.atomic_numbers.tolist() == [1, 6, 7, 8, 16, 17]
    results = json.loads((molecule_run / 'results.json').read_text())
    assert {'atom_stability', 'validity', 'test_data'} <= set(results)
    assert results['test_data']['atom_stability'] > 0.9  # held-out data
    capsys.readouterr()
    sdf = tmp_path / 'mols.sdf'
    assert run_cli('sample', molecule_run, '-n', 6, '-o', sdf,
                   '--no-progress') == 0
    read = list(Chem.SDMolSupplier(str(sdf), removeHs=False,
                                   sanitize=False))
    assert len(read) == 6 and all(mol is not None for mol in read)
    out = capsys.readouterr().out
    assert 'midpoint, 4 steps' in out and '"atom_stability"' in out
    assert (tmp_path / 'mols.png').read_bytes()[:4] == b'\x89PNG'


def test_composition_model_on_user_molecules(molecule_file, tmp_path,
                                             capsys):
    Chem = pytest.importorskip('rdkit.Chem')
    run = tmp_path / 'run'
    assert run_cli('train', 'molecules', '--data', molecule_file, '--root',
                   tmp_path / 'data', '--out', run, '--atom-types',
                   'composition', *TINY) == 0
    flow = load_pretrained(run)
    assert type(flow).__name__ == 'CompositionFlow'
    sdf = tmp_path / 'mols.sdf'
    assert run_cli('sample', run, '-n', 12, '-o', sdf, '--no-progress') == 0
    read = list(Chem.SDMolSupplier(str(sdf), removeHs=False,
                                   sanitize=False))
    # Every sampled formula is one of the eight training molecules'.
    formulas = {Chem.rdMolDescriptors.CalcMolFormula(
        Chem.AddHs(Chem.MolFromSmiles(smiles))) for smiles in SMILES}
    assert len(read) == 12
    assert {Chem.rdMolDescriptors.CalcMolFormula(mol)
            for mol in read} <= formulas
    assert run_cli('logprob', run, sdf, '--no-progress') == 0
    with open(tmp_path / 'mols.logprob.csv') as f:
        values = [float(row['log_prob']) for row in csv.DictReader(f)]
    assert len(values) == 12 and all(np.isfinite(values))
    capsys.readouterr()  # the class margin needs flowed types
    assert run_cli('train', 'molecules', '--data', molecule_file,
                   '--atom-types', 'composition', '--class-margin', 1,
                   *TINY) == 2
    assert "apply to atom_types='flow'" in capsys.readouterr().err


def test_logprob_agrees_with_the_model(points_run, tmp_path):
    positions = torch.randn(6, 4, 2, generator=torch.Generator()
                            .manual_seed(2))
    np.save(tmp_path / 'conf.npy', positions.numpy())
    assert run_cli('logprob', points_run, tmp_path / 'conf.npy',
                   '--no-progress') == 0
    with open(tmp_path / 'conf.logprob.csv') as f:
        values = torch.tensor([float(r['log_prob'])
                               for r in csv.DictReader(f)])
    flow = load_pretrained(points_run)
    with torch.no_grad():
        expected = flow.log_prob(Batch.from_data_list(
            [Data(pos=p) for p in positions]))
    torch.testing.assert_close(values, expected.float(), atol=1e-4, rtol=0)


def test_logprob_keeps_every_score_and_names_what_it_cannot_score(
        molecule_run, tmp_path, capsys):
    # Row 2 of issue #32: atom counts the model gives zero probability are
    # named by index before any solve; the others are scored and written,
    # and the exit code says that some failed.
    path = tmp_path / 'mixed.xyz'
    path.write_text('4\nok\nC 0 0 0\nO 1.2 0 0\nH -0.5 0.9 0\n'
                    'H -0.5 -0.9 0\n'
                    '2\nbromine\nBr 0 0 0\nH 1.4 0 0\n'
                    '1\nlonely\nC 0 0 0\n'
                    '30\nhuge\n' + ''.join(f'H {k} 0 0\n' for k in range(30)))
    output = tmp_path / 'new' / 'scores.csv'
    assert run_cli('logprob', molecule_run, path, '-o', output,
                   '--no-progress') == 1
    err = capsys.readouterr().err
    assert 'skipped 3 of 4 structures' in err
    assert 'elements [35]' in err and 'fewer than 2 atoms' in err
    assert '30 atoms, which the model gives zero probability' in err
    with open(output) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and rows[0]['name'] == 'ok'
    assert np.isfinite(float(rows[0]['log_prob']))
    assert [r['log_prob'] for r in rows[1:]] == ['nan'] * 3


def test_num_steps_alone_keeps_the_cards_fixed_step_sampler(
        points_run, tmp_path, capsys):
    # Row 1 of issue #32: --num-steps without --solver changes the steps of
    # the card's sampler instead of dropping it for dopri5.
    assert run_cli('sample', points_run, '-n', 2, '-o', tmp_path / 'x.npy',
                   '--num-steps', 2, '--no-progress') == 0
    assert 'midpoint, 2 steps' in capsys.readouterr().out
    assert np.load(tmp_path / 'x.npy').shape == (2, 4, 2)


def test_outputs_are_never_overwritten_silently(points_run, tmp_path,
                                                capsys):
    # Row 6 of issue #32.
    output = tmp_path / 'missing' / 'x.npy'  # row 5: the folder is made
    assert run_cli('sample', points_run, '-n', 2, '-o', output,
                   '--no-progress') == 0
    before = output.read_bytes()
    assert run_cli('sample', points_run, '-n', 3, '-o', output,
                   '--no-progress') == 2
    assert '--overwrite' in capsys.readouterr().err
    assert output.read_bytes() == before
    assert run_cli('sample', points_run, '-n', 3, '-o', output,
                   '--overwrite', '--no-progress') == 0
    assert np.load(output).shape == (3, 4, 2)
    np.save(tmp_path / 'c.npy', np.zeros((2, 4, 2), np.float32) +
            np.arange(8, dtype=np.float32).reshape(4, 2))
    (tmp_path / 'c.logprob.csv').write_text('keep me')
    assert run_cli('logprob', points_run, tmp_path / 'c.npy') == 2
    assert (tmp_path / 'c.logprob.csv').read_text() == 'keep me'


def test_the_picture_compares_with_reference_data_only_where_there_is_some(
        points_run, tmp_path):
    pytest.importorskip('matplotlib')
    task = get_task('points', num_nodes=4, n_dims=2)
    samples = Batch.from_data_list([Data(pos=torch.randn(4, 2))
                                    for _ in range(5)])
    task.write_samples(samples, str(tmp_path / 's.npy'),
                       str(tmp_path / 's.png'))
    assert (tmp_path / 's.png').read_bytes()[:4] == b'\x89PNG'


@pytest.mark.parametrize('argv,message', [
    (['sample', '{points}', '-n', '0', '-o', 'x.npy'], '--num-samples must'),
    (['sample', '{points}', '-n', str(10**12), '-o', 'x.npy'], 'more than'),
    (['sample', 'qm9-large', '-n', '5', '-o', 'x.sdf'],
     "Unknown model 'qm9-large'"),
    (['sample', '{points}', '-n', '5', '-o', 'x.sdf'],
     "task 'points' writes .npy or .pt"),
    (['sample', '{points}', '-n', '5', '-o', 'x.npy', '--solver', 'dopri5',
      '--num-steps', '3'], 'needs a fixed-step'),
    (['sample', '{points}', '-n', '5', '-o', 'x.npy', '--num-steps', '-3'],
     '--num-steps must be positive'),
    (['sample', '{points}', '-n', '5', '-o', 'x.npy', '--solver',
      'midpoint', '--num-steps', '3', '--step-exponent', '0'],
     '--step-exponent must be positive'),
    (['sample', '{points}', '-n', '5', '-o', 'x.npy', '--device', 'cuda'],
     'CUDA is not available'),
    (['sample', '{points}', '-n', '5', '-o', 'x.npy', '--device', 'nonsense'],
     'is not a device'),
    (['sample', '{points}', '-n', '5', '-o', 'x.npy', '--threads', '-2'],
     '--threads must be positive'),
    (['sample', '{points}', '-n', '5', '-o', 'x.npy', '--batch-size', '-1'],
     '--batch-size must be positive'),
    (['sample', '{points}', '-n', '5', '-o', 'afile/x.npy'], 'is a file'),
    (['sample', '{points}', '-n', '5', '-o', 'x.npy', '--picture', 'x.txt'],
     'expected a .png'),
    (['logprob', '{points}', 'conf.npy', '--tol', '1e-30'], '--tol must lie'),
    (['logprob', '{points}', 'empty.npy'], 'non-empty numeric'),
    (['logprob', '{points}', 'strings.npy'], 'non-empty numeric'),
    (['logprob', '{points}', 'missing.npy'], 'does not exist'),
    (['evaluate', '{points}', '--out', 'afile'], 'is a file'),
    (['evaluate', '{points}', '--num-test', '0'], '--num-test must be'),
    (['train', 'points', '--data', 'missing/*.npy', '--out', 'r'],
     'missing'),
    (['sample', '{bad}', '-n', '5', '-o', 'x.npy'], 'not a torch-enf model'),
])
def test_bad_input_is_a_one_line_error_before_any_work(
        points_run, tmp_path, capsys, argv, message):
    # Row 7 of issue #32.
    bad = tmp_path / 'weights.pt'
    torch.save(torch.nn.Linear(2, 2).state_dict(), bad)
    (tmp_path / 'afile').write_text('')
    np.save(tmp_path / 'conf.npy', np.zeros((2, 4, 2), np.float32))
    np.save(tmp_path / 'empty.npy', np.zeros((0, 4, 2), np.float32))
    np.save(tmp_path / 'strings.npy', np.array(['a', 'b']))
    argv = [a.format(points=points_run, bad=bad) for a in argv]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        assert run_cli(*argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count('\n') == 1, err
    assert not (tmp_path / 'x.npy').exists()


def test_debug_shows_the_traceback(points_run, tmp_path, capsys):
    assert run_cli('sample', points_run, '-n', '0', '-o', tmp_path / 'x.npy',
                   '--debug') == 2
    assert 'Traceback' in capsys.readouterr().err


def test_resume_refuses_a_changed_model_and_names_it(points_run, tmp_path,
                                                     capsys):
    data = points_run.parent / 'points.npy'
    argv = ['train', 'points', '--data', data, '--root',
            points_run.parent / 'data', '--out', points_run, '--resume',
            *TINY]
    argv[argv.index('--hidden') + 1] = 16
    assert run_cli(*argv) == 2
    err = capsys.readouterr().err
    assert 'hidden_channels' in err and '8' in err and '16' in err


def test_evaluate_a_run_folder(points_run, tmp_path, capsys):
    assert run_cli('evaluate', points_run, '--num-test', 4,
                   '--num-samples', 4, '--out', tmp_path / 'ev',
                   '--num-steps', 2, '--no-progress') == 0
    results = json.loads((tmp_path / 'ev' / 'results.json').read_text())
    assert results['num_test'] == 4 and np.isfinite(results['test_nll'])


def test_tasks_and_models_list_everything(capsys):
    assert run_cli('tasks') == 0
    out = capsys.readouterr().out
    for name in ('dw4', 'lj13', 'lj13-halved', 'lj55', 'qm9-positional',
                 'qm9', 'molecules', 'points'):
        assert re.search(rf'^{name}\s', out, re.M), name
    assert run_cli('models') == 0
    out = capsys.readouterr().out
    for name in available_models():
        assert name in out
        num_samples = model_card(name)['metrics'].get('num_samples')
        if num_samples is not None:  # counts print in full, not as 1e+04
            assert re.search(rf'num_samples={num_samples}\b', out)
    result = subprocess.run([sys.executable, '-m', 'torch_enf', 'train',
                             'nope'], capture_output=True, text=True)
    assert result.returncode == 2 and 'invalid choice' in result.stderr


@pytest.mark.parametrize('argv', [['--help'], [], ['-h']])
def test_help_and_a_missing_command_come_from_the_full_parser(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    out = capsys.readouterr()
    if argv:
        assert exit_.value.code == 0
        assert all(command in out.out for command in
                   ('train', 'sample', 'logprob', 'evaluate', 'models'))
    else:
        assert exit_.value.code == 2
        assert out.err.startswith('usage: torch-enf [-h]')
        assert 'required: command' in out.err


def test_a_model_file_is_rebuilt_from_its_configuration_alone(
        molecule_run, tmp_path):
    found = load_model(molecule_run)
    path = str(tmp_path / 'again.pt')
    save_model(found.model, path, found.task.state(), card=dict(note='tiny'))
    stored = read_model(path)
    assert set(stored.model) == {'name', 'config'}
    assert json.loads(json.dumps(stored.model)) == stored.model
    again = load_pretrained(path)
    for key, value in found.model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value)
    with pytest.raises(ValueError, match='pass its run folder'):
        load_pretrained(str(molecule_run / 'best.pt'))
    with pytest.raises(ValueError, match='available'):
        load_pretrained('no-such-model')


@pytest.mark.parametrize('name', available_models())
def test_shipped_models_load_sample_and_score(name):
    card = model_card(name)
    for key in ('description', 'command', 'data', 'revision', 'machine',
                'metrics'):
        assert card[key], key
    found = load_model(name)
    assert not found.model.training
    generator = torch.Generator().manual_seed(0)
    coarse = SolverOptions('midpoint', num_steps=4)
    samples = found.task.sample(found.model, 3, generator=generator,
                                solver=coarse)
    log_prob = found.model.log_prob(samples, trace='hutchinson',
                                    solver=coarse)
    assert samples.num_graphs == 3
    assert torch.isfinite(log_prob).all()


def test_the_layers_stay_in_their_floors():
    # Issue #28: no argparse below the command line, and loading a model
    # imports neither the command line nor training scripts.
    package = Path(__file__).resolve().parents[1] / 'torch_enf'
    for path in package.rglob('*.py'):
        if path.name != 'cli.py':
            assert 'Namespace' not in path.read_text(), path
    source = (package / 'pretrained' / '__init__.py').read_text()
    assert 'torch_enf.cli' not in source
    assert not (package / 'experiments').exists()
    assert importlib.util.find_spec('torch_enf.tasks') is not None


def test_particle_tasks_train_data_parallel_under_torchrun(points_run,
                                                          tmp_path):
    # Row 19 of issue #32: every task trains data-parallel under torchrun,
    # rank 0 alone evaluating and writing (not two identical trainings).
    data = points_run.parent / 'points.npy'
    result = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone',
         '--nproc_per_node=2', '-m', 'torch_enf', 'train', 'points', '--data',
         str(data), '--root', str(tmp_path / 'data'), '--out',
         str(tmp_path / 'run'), *map(str, TINY)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count('test_nll=') == 2  # the summary, once
    results = json.loads((tmp_path / 'run' / 'results.json').read_text())
    assert results['world_size'] == 2
    # Each rank takes half of every epoch: 32 training clouds in batches of
    # 8 give 2 steps per epoch and process instead of 4.
    assert results['steps'] == 2 * results['epochs_completed']


def test_degenerate_structures_are_named_not_scored(points_run, tmp_path,
                                                    capsys):
    # Row 14 of issue #32: all points at one place is reported by index
    # before any solve (it took 75 s to give nan).
    positions = np.random.default_rng(0).standard_normal((3, 4, 2))
    positions[1] = 0.0
    np.save(tmp_path / 'c.npy', positions.astype(np.float32))
    assert run_cli('logprob', points_run, tmp_path / 'c.npy',
                   '--no-progress') == 1
    assert '#1: nodes 0 and 1 coincide' in capsys.readouterr().err
    with open(tmp_path / 'c.logprob.csv') as f:
        rows = list(csv.DictReader(f))
    assert [r['log_prob'] == 'nan' for r in rows] == [False, False, True]


def test_init_starts_from_the_weights_of_another_run(points_run, tmp_path):
    from torch_enf.tasks import start_from
    trained = load_pretrained(points_run)
    model = type(trained).from_config(trained.config())
    assert any(not torch.equal(a, b) for a, b in zip(
        model.state_dict().values(), trained.state_dict().values()))
    start_from(model, str(points_run / 'model.pt'))
    for name, value in trained.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    # a model file written before its configuration gained a field
    older = torch.load(points_run / 'model.pt', weights_only=False)
    del older['model']['config']['prediction']
    torch.save(older, tmp_path / 'older.pt')
    start_from(model, str(tmp_path / 'older.pt'))
    data = points_run.parent / 'points.npy'
    assert run_cli('train', 'points', '--data', data, '--root',
                   points_run.parent / 'data', '--out', tmp_path / 'more',
                   '--init', points_run, *TINY) == 0
    card = read_model(tmp_path / 'more' / 'model.pt').card
    assert card['training']['init'] == str(points_run)


def test_init_refuses_a_model_of_another_configuration(points_run,
                                                        tmp_path, capsys):
    argv = ['train', 'points', '--data', points_run.parent / 'points.npy',
            '--root', points_run.parent / 'data', '--out', tmp_path / 'x',
            '--init', points_run, *TINY]
    argv[argv.index('--hidden') + 1] = 16
    assert run_cli(*argv) == 2
    err = capsys.readouterr().err
    assert 'Cannot start from' in err and 'hidden_channels' in err
    assert not (tmp_path / 'x' / 'checkpoint.pt').exists()
