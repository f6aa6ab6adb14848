r"""Tests of ``examples/alanine_dipeptide.py``: the chirality fix, the basin
free-energy difference, and a tiny end-to-end run."""
import importlib.util
import json
import math
import os.path as osp

import pytest
import torch

pytest.importorskip('openmm')
pytest.importorskip('openmmtools')

from torch_enf.systems import AlanineDipeptide  # noqa: E402
from torch_enf.systems.md import simulate_alanine_dipeptide  # noqa: E402
from torch_enf.systems.molecular import mirror  # noqa: E402

EXAMPLE = osp.join(osp.dirname(__file__), '..', 'examples',
                   'alanine_dipeptide.py')


@pytest.fixture(scope='module')
def example():
    spec = importlib.util.spec_from_file_location('alanine_example',
                                                  EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def system():
    return AlanineDipeptide()


@pytest.fixture(scope='module')
def trajectory(tmp_path_factory):
    path = str(tmp_path_factory.mktemp('md') / 'short.npz')
    simulate_alanine_dipeptide(num_frames=60, stride=50,
                               equilibration_steps=200, path=path,
                               progress=False)
    return path


def test_atom_types_share_only_methyl_hydrogens(example, system):
    types = example.atom_types(system)
    assert types.numel() == 22 and int(types.max()) + 1 == 16
    names = [(a.residue.name, a.name) for a in system.topology.atoms()]
    for residue, group in example.EXCHANGEABLE:
        shared = {int(types[names.index((residue, n))]) for n in group}
        assert len(shared) == 1


def test_chirality_fix(example, system):
    torch.manual_seed(0)
    base = system.reference_positions[None].expand(8, -1, -1)
    pos = base + 0.002 * torch.randn(8, 22, 3, dtype=torch.float64)
    is_d = torch.tensor([True, False] * 4)
    pos = torch.where(is_d[:, None, None], mirror(pos), pos)
    assert torch.equal(system.chirality(pos) < 0, is_d)
    fixed, reflected = example.fix_chirality(pos, system)
    assert torch.equal(reflected, is_d)
    assert bool((system.chirality(fixed) > 0).all())
    assert torch.equal(fixed[~is_d], pos[~is_d])
    assert torch.equal(fixed[is_d], mirror(pos[is_d]))
    # A reflection-invariant density (here of the distances to the centre)
    # gives log-weights that differ from those before the fix by a
    # constant (zero here; ln 2 for the density of the fixed samples).
    def log_q(x):
        centred = x - x.mean(1, keepdim=True)
        return -0.5 * centred.pow(2).sum((1, 2))
    with torch.no_grad():
        before = -system(pos) - log_q(pos)
        after = -system(fixed) - log_q(fixed)
    difference = after - before
    assert torch.allclose(difference, difference[0].expand(8), atol=1e-6)


def test_delta_f_of_known_populations(example):
    # 300 frames in alpha_R, 600 in beta, 100 with phi > 0:
    # dF = -ln(300 / 600) = ln 2.
    alpha = torch.tensor([-1.2, -0.7]).expand(300, 2)
    beta = torch.tensor([-1.5, 2.5]).expand(600, 2)
    positive = torch.tensor([1.0, 0.5]).expand(100, 2)
    phi_psi = torch.cat([alpha, beta, positive])
    assert example.delta_f(phi_psi) == pytest.approx(math.log(2))
    value, stderr = example.bootstrap_delta_f(phi_psi, num_resamples=50)
    assert value == pytest.approx(math.log(2))
    assert 0 < stderr < 0.2
    # Weights that double every alpha_R frame give dF = 0.
    log_w = torch.zeros(1000, dtype=torch.float64)
    log_w[:300] = math.log(2)
    value, _ = example.bootstrap_delta_f(phi_psi, log_w, num_resamples=5)
    assert value == pytest.approx(0.0, abs=1e-12)


def test_bad_options_are_refused(example, trajectory):
    with pytest.raises(SystemExit):
        example.parse_args(['--data', trajectory, '--budget', '0'])
    with pytest.raises(SystemExit):
        example.parse_args(['--data', trajectory + '.missing'])
    with pytest.raises(SystemExit):
        example.parse_args(['--data', trajectory, '--num-samples', '0'])


def test_end_to_end(example, trajectory, tmp_path):
    torch.set_num_threads(1)
    results = example.main([
        '--data', trajectory, '--run-dir', str(tmp_path / 'run'),
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
