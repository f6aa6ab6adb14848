r"""Tests of the alanine-dipeptide Boltzmann generator in the library: the
exchangeable atom types, the chirality fix, energies in Angstrom, the basin
free energies and the :obj:`alanine-dipeptide` task end to end."""
import json
import math
import os.path as osp

import numpy as np
import pytest
import torch

pytest.importorskip('openmm')
pytest.importorskip('openmmtools')

from torch_enf.objectives import FlowMatching  # noqa: E402
from torch_enf.pretrained import load_model  # noqa: E402
from torch_enf.systems import (AlanineDipeptide, bootstrap_delta_f,  # noqa
                               delta_f, load_trajectory, save_trajectory)
from torch_enf.systems.molecular import EXCHANGEABLE, mirror  # noqa: E402
from torch_enf.tasks import (DataConfig, EvaluationConfig,  # noqa: E402
                             ModelOptions, RunConfig, get_task, train)
from torch_enf.training import FitConfig  # noqa: E402


@pytest.fixture(scope='module')
def system():
    return AlanineDipeptide()


def test_exchangeable_types_share_only_methyl_hydrogens(system):
    types = system.exchangeable_types()
    assert types.numel() == 22 and int(types.max()) + 1 == 16
    names = [(a.residue.name, a.name) for a in system.topology.atoms()]
    for residue, group in EXCHANGEABLE:
        shared = {int(types[names.index((residue, n))]) for n in group}
        assert len(shared) == 1


def test_chirality_fix_keeps_weights_up_to_a_constant(system):
    torch.manual_seed(0)
    base = system.reference_positions[None].expand(8, -1, -1)
    pos = base + 0.002 * torch.randn(8, 22, 3, dtype=torch.float64)
    is_d = torch.tensor([True, False] * 4)
    pos = torch.where(is_d[:, None, None], mirror(pos), pos)
    assert torch.equal(system.chirality(pos) < 0, is_d)
    fixed, reflected = system.to_l_chirality(pos)
    assert torch.equal(reflected, is_d)
    assert bool((system.chirality(fixed) > 0).all())
    assert torch.equal(fixed[~is_d], pos[~is_d])
    assert torch.equal(fixed[is_d], mirror(pos[is_d]))

    def log_q(x):  # a reflection-invariant density
        centred = x - x.mean(1, keepdim=True)
        return -0.5 * centred.pow(2).sum((1, 2))
    with torch.no_grad():
        difference = (-system(fixed) - log_q(fixed)) - \
            (-system(pos) - log_q(pos))
    assert torch.allclose(difference, difference[0].expand(8), atol=1e-6)


def test_energies_in_angstrom(system):
    angstrom = AlanineDipeptide(length_unit='angstrom')
    pos = system.initial_positions(2)
    assert torch.allclose(angstrom.reference_positions,
                          10 * system.reference_positions)
    x_nm = pos.clone().requires_grad_()
    x_a = (10 * pos).requires_grad_()
    energy_nm, energy_a = system(x_nm), angstrom(x_a)
    assert torch.allclose(energy_a, energy_nm, rtol=1e-12)
    grad_nm, = torch.autograd.grad(energy_nm.sum(), x_nm)
    grad_a, = torch.autograd.grad(energy_a.sum(), x_a)
    assert torch.allclose(grad_a, grad_nm / 10, rtol=1e-9)
    # Overlaps are judged in nm whatever the unit: 0.5 Angstrom apart is
    # fine (0.05 nm), 0.05 Angstrom is not.
    close = 10 * pos[:1].clone()
    close[0, 1] = close[0, 0] + torch.tensor([0.05, 0, 0],
                                             dtype=torch.float64)
    assert math.isinf(float(angstrom(close)))
    with pytest.raises(ValueError, match='length_unit'):
        AlanineDipeptide(length_unit='bohr')


def test_delta_f_of_known_populations():
    # 300 frames in alpha_R, 600 in beta, 100 with phi > 0:
    # dF = -ln(300 / 600) = ln 2.
    alpha = torch.tensor([-1.2, -0.7]).expand(300, 2)
    beta = torch.tensor([-1.5, 2.5]).expand(600, 2)
    positive = torch.tensor([1.0, 0.5]).expand(100, 2)
    phi_psi = torch.cat([alpha, beta, positive])
    assert delta_f(phi_psi) == pytest.approx(math.log(2))
    value, stderr = bootstrap_delta_f(phi_psi, num_resamples=50)
    assert value == pytest.approx(math.log(2))
    assert 0 < stderr < 0.2
    # Weights that double every alpha_R frame give dF = 0.
    log_w = torch.zeros(1000, dtype=torch.float64)
    log_w[:300] = math.log(2)
    value, _ = bootstrap_delta_f(phi_psi, log_w, num_resamples=5)
    assert value == pytest.approx(0.0, abs=1e-12)


def test_task_data_in_angstrom_and_bad_files(alanine_trajectory, tmp_path):
    task = get_task('alanine-dipeptide')
    splits = task.datasets(
        DataConfig(files=alanine_trajectory, n_train=20), progress=False)
    assert [len(s) for s in splits] == [20, 6, 6]
    frames = load_trajectory(alanine_trajectory).positions
    assert torch.allclose(splits.train[0].pos.double(),
                          10 * torch.from_numpy(frames[0]), atol=1e-5)
    # Another force field, or positions of another shape, are refused.
    md = load_trajectory(alanine_trajectory)
    other = str(tmp_path / 'amber96.npz')
    save_trajectory(other, md._replace(
        settings=dict(md.settings, force_field='amber96')))
    with pytest.raises(ValueError, match="force field 'amber96'"):
        task.datasets(DataConfig(files=other), progress=False)
    wrong = str(tmp_path / 'wrong.npz')
    save_trajectory(wrong, md._replace(positions=md.positions[:, :20]))
    with pytest.raises(ValueError, match=r'shape \[S, 22, 3\]'):
        task.datasets(DataConfig(files=wrong), progress=False)
    in_angstrom = str(tmp_path / 'angstrom.npz')
    save_trajectory(in_angstrom, md._replace(
        settings=dict(md.settings, length_unit='angstrom')))
    with pytest.raises(ValueError, match="in 'angstrom'"):
        task.datasets(DataConfig(files=in_angstrom), progress=False)
    not_npz = tmp_path / 'text.npz'
    not_npz.write_text('no archive')
    with pytest.raises(ValueError, match='not a trajectory'):
        task.datasets(DataConfig(files=str(not_npz)), progress=False)


def test_task_trains_samples_l_and_reweights(alanine_trajectory, tmp_path):
    torch.manual_seed(0)
    task = get_task('alanine-dipeptide')
    out = str(tmp_path / 'run')
    run = RunConfig(task=task.name,
                    data=DataConfig(files=alanine_trajectory),
                    model=ModelOptions(hidden_channels=8, num_layers=1),
                    fit=FitConfig(epochs=6, lr=1e-3, eval_every=3),
                    batch_size=8)
    evaluation = EvaluationConfig(num_valid=4, num_test=3, num_samples=12,
                                  boltzmann_samples=10)
    results = train(task, run, FlowMatching(), evaluation, out,
                    progress=False, log=lambda _: None)
    with open(osp.join(out, 'results.json')) as f:
        assert json.load(f)['task'] == 'alanine-dipeptide'
    history = [e['train_loss'] for e in results_history(out)]
    assert history[-1] < history[0]  # training lowers the loss
    assert 0 < results['ess'] <= 1
    for key in ('delta_f_samples', 'delta_f_reference', 'num_reflected',
                'test_nll'):
        assert key in results
    assert osp.getsize(osp.join(out, 'ramachandran.png')) > 0
    # The model file rebuilds without the run, and its samples are L.
    loaded = load_model(osp.join(out, 'model.pt'))
    assert loaded.task.name == 'alanine-dipeptide'
    samples = loaded.task.sample(
        loaded.model, 6, generator=torch.Generator().manual_seed(1))
    pos = samples.pos.view(6, 22, 3).double()
    assert bool((task.energy.chirality(pos) > 0).all())
    samples_file = np.load(osp.join(out, 'samples.npy'))
    assert samples_file.shape == (12, 22, 3)


def test_scoring_refuses_nm(alanine_trajectory, tmp_path):
    task = get_task('alanine-dipeptide')
    frames = load_trajectory(alanine_trajectory).positions[:3]
    model = task.build_model(ModelOptions(hidden_channels=8, num_layers=1),
                             None)
    good = str(tmp_path / 'angstrom.npy')
    np.save(good, 10 * frames)
    assert len(task.read_structures(good, model).graphs) == 3
    bad = str(tmp_path / 'nm.npy')
    np.save(bad, frames)
    with pytest.raises(ValueError, match='look like nm'):
        task.read_structures(bad, model)


def results_history(out):
    with open(osp.join(out, 'history.json')) as f:
        return json.load(f)['history']
