r"""Tests of ``examples/alanine_dipeptide.py``: its options and a tiny
end-to-end run (the library parts it uses are tested in
``test_alanine_task.py``)."""
import importlib.util
import json
import math
import os.path as osp

import pytest
import torch

pytest.importorskip('openmm')
pytest.importorskip('openmmtools')

from torch_enf.pretrained import load_model  # noqa: E402

EXAMPLE = osp.join(osp.dirname(__file__), '..', 'examples',
                   'alanine_dipeptide.py')


@pytest.fixture(scope='module')
def example():
    spec = importlib.util.spec_from_file_location('alanine_example',
                                                  EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bad_options_are_refused(example, alanine_trajectory):
    with pytest.raises(SystemExit):
        example.parse_args(['--data', alanine_trajectory, '--budget', '0'])
    with pytest.raises(SystemExit):
        example.parse_args(['--data', alanine_trajectory + '.missing'])
    with pytest.raises(SystemExit):
        example.parse_args(['--data', alanine_trajectory,
                            '--num-samples', '0'])


def test_end_to_end(example, alanine_trajectory, tmp_path):
    torch.set_num_threads(1)
    results = example.main([
        '--data', alanine_trajectory, '--run-dir', str(tmp_path / 'run'),
        '--results', str(tmp_path / 'results'), '--budget', '0.05',
        '--epochs', '1', '--hidden', '8', '--layers', '1',
        '--batch-size', '8', '--max-train', '16', '--num-valid', '4',
        '--num-test', '2', '--num-samples', '12', '--sample-steps', '2',
        '--sample-batch', '6', '--bootstrap', '5'])
    with open(tmp_path / 'results' / 'results.json') as f:
        stored = json.load(f)
    assert set(example.RESULT_KEYS) <= set(stored)
    assert stored['training']['steps'] == 2
    assert stored['samples']['num_samples'] == 12
    assert 0 < stored['ess'] <= 1
    assert math.isfinite(stored['test_nll']['nll_angstrom'])
    assert stored['test_nll']['nll_nm'] == pytest.approx(
        stored['test_nll']['nll_angstrom'] - 63 * math.log(10))
    for key in ('md', 'flow_raw', 'flow_reweighted'):
        assert {'value', 'stderr'} <= set(stored['delta_f'][key])
    assert results['samples']['num_mirrored'] <= 12
    for name in ('ramachandran.png', 'energies.png'):
        assert osp.getsize(tmp_path / 'results' / name) > 0
    # The run folder holds a model file that the command line reads.
    loaded = load_model(str(tmp_path / 'run' / 'model.pt'))
    assert loaded.task.name == 'alanine-dipeptide'
    assert loaded.sampler.num_steps == 2
