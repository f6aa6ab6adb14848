import importlib.util
import os.path as osp
import time

import pytest
import torch
from torch_geometric.loader import DataLoader

from torch_enf.datasets.nbody import (NBody, coulomb_energy, coulomb_forces,
                                      initial_states, simulate)
from torch_enf.nn.graph import full_edge_index
from torch_enf.nn.models.nbody import (EGNNDynamicsPredictor,
                                       GNNDynamicsPredictor)
from torch_enf.testing import (assert_equivariant, permutation_within_graphs,
                               random_orthogonal)
from torch_enf.training import LRSchedule

EXAMPLE = osp.join(osp.dirname(__file__), '..', 'examples', 'nbody.py')
DT = 1e-3


def load_example():
    spec = importlib.util.spec_from_file_location('nbody_example', EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def states(num, seed=0):
    return initial_states(num, torch.Generator().manual_seed(seed))


def min_distance(pos):
    dist = (pos.unsqueeze(-2) - pos.unsqueeze(-3)).norm(dim=-1)
    dist = dist + 1e9 * torch.eye(pos.size(-2), dtype=pos.dtype)
    return dist.flatten(-2).amin(-1)


def test_initial_states_follow_the_protocol():
    pos, vel, charge = states(200)
    assert pos.shape == vel.shape == (200, 5, 3) and pos.dtype == torch.double
    assert set(charge.unique().tolist()) == {-1.0, 1.0}
    torch.testing.assert_close(vel.norm(dim=-1),
                               torch.full((200, 5), 0.5, dtype=torch.double))
    assert pos.abs().max() <= 5.0
    assert 0.9 < float(pos.std()) < 1.1


def test_energy_is_conserved_without_close_encounters():
    # The kick-drift scheme is leapfrog: with the velocities synchronised
    # to the positions, v_n + dt/2 F(x_n), its energy error stays
    # O(dt^2 |dF/dx|) ~ 1e-6 / r^3, below 1e-4 relative while all pairs stay
    # beyond r = 0.3. There every force component is at most
    # 4 / 0.3^2 < 45, so the clamp at 100 never acts. The half-step
    # velocities that are recorded miss the energy by O(dt |F| |v|).
    pos, vel, charge = states(64)
    steps = list(range(10, 2001, 10))
    traj_pos, traj_vel = simulate(pos, vel, charge, steps)
    synced = traj_vel + 0.5 * DT * coulomb_forces(traj_pos, charge)
    energy = coulomb_energy(traj_pos, synced, charge)
    far = min_distance(traj_pos).amin(0) > 0.3
    assert far.sum() >= 10
    drift = ((energy - energy[0]).abs().amax(0) / energy[0].abs())[far]
    assert float(drift.max()) < 1e-3
    # A real check: the energy of the opposite force law is not conserved.
    wrong = coulomb_energy(traj_pos, synced, charge, strength=-1.0)
    wrong_drift = (wrong - wrong[0]).abs().amax(0) / wrong[0].abs()
    assert float(wrong_drift[far].min()) > 1e-3


def test_total_momentum_is_conserved_without_clamp():
    pos, vel, charge = states(64)
    _, traj_vel = simulate(pos, vel, charge, [1, 500, 1000, 2000],
                           max_force=None)
    momentum = traj_vel.sum(-2)
    torch.testing.assert_close(momentum, momentum[:1].expand_as(momentum),
                               atol=1e-10, rtol=0)
    assert float(momentum.abs().max()) > 0.1  # not trivially zero


def test_simulation_is_deterministic_under_a_seed():
    a, b, c = states(8, seed=3), states(8, seed=3), states(8, seed=4)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert not torch.equal(a[0], c[0])
    # The first trajectories do not depend on how many are drawn.
    assert torch.equal(states(20, seed=3)[0][:8], a[0])
    assert torch.equal(simulate(*a, [300])[0], simulate(*b, [300])[0])


def test_rotating_and_translating_the_state_moves_the_trajectory():
    pos, vel, charge = states(16)
    q = random_orthogonal(3, torch.Generator().manual_seed(0))
    shift = torch.tensor([1.5, -2.0, 0.5], dtype=torch.double)
    steps = [100, 500, 1000]
    traj_pos, traj_vel = simulate(pos, vel, charge, steps, max_force=None)
    moved_pos, moved_vel = simulate(pos @ q.t() + shift, vel @ q.t(), charge,
                                    steps, max_force=None)
    torch.testing.assert_close(moved_pos, traj_pos @ q.t() + shift,
                               atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(moved_vel, traj_vel @ q.t(), atol=1e-8,
                               rtol=1e-8)


def test_coulomb_forces_repel_like_charges():
    pos = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]], dtype=torch.double)
    like = coulomb_forces(pos, torch.ones(2, 1, dtype=torch.double))
    torch.testing.assert_close(like[1], torch.tensor([0.25, 0.0, 0.0],
                                                     dtype=torch.double))
    unlike = coulomb_forces(pos, torch.tensor([[1.0], [-1.0]]).double())
    torch.testing.assert_close(unlike, -like)
    close = coulomb_forces(pos * 0.01, torch.ones(2, 1, dtype=torch.double))
    assert float(close.abs().max()) == 100.0  # the official clamp


def test_dataset(tmp_path):
    data = NBody(str(tmp_path), 'valid', num_samples=12)
    assert len(data) == 12 and repr(data) == 'NBody(12, split=valid)'
    sample = data[0]
    assert sample.pos.shape == sample.vel.shape == sample.y.shape == (5, 3)
    assert sample.charge.shape == (5, 1)
    assert torch.equal(sample.edge_index,
                       full_edge_index(torch.zeros(5, dtype=torch.long)))
    # The target is 1,000 steps of the simulation ahead of the input.
    pos, vel, charge = initial_states(1, torch.Generator().manual_seed(1))
    frames, _ = simulate(pos, vel, charge, [3100, 4100])
    torch.testing.assert_close(sample.pos, frames[0, 0].float())
    torch.testing.assert_close(sample.y, frames[1, 0].float())
    # Cached, deterministic, and keyed by the split and its size.
    again = NBody(str(tmp_path / 'other'), 'valid', num_samples=8)
    assert torch.equal(again[7].y, data[7].y)
    test = NBody(str(tmp_path), 'test', num_samples=12)
    assert not torch.equal(test[0].pos, sample.pos)
    train = NBody(str(tmp_path), 'train', num_samples=12, n_train=5)
    assert len(train) == 5
    batch = next(iter(DataLoader(train, batch_size=5)))
    assert batch.edge_index.shape == (2, 100)


def test_dataset_errors(tmp_path):
    root = str(tmp_path)
    with pytest.raises(ValueError, match='Unknown split'):
        NBody(root, 'val')
    with pytest.raises(ValueError, match='n_train'):
        NBody(root, 'train', n_train=0)
    with pytest.raises(ValueError, match='num_samples'):
        NBody(root, 'test', num_samples=-3)
    with pytest.raises(ValueError, match='exceeds the 3000'):
        NBody(root, 'train', n_train=3001)
    with pytest.raises(ValueError, match="only applies to the 'train'"):
        NBody(root, 'valid', n_train=10)
    with pytest.raises(ValueError, match='steps'):
        simulate(*states(2), [100, 50])


def egnn_call(model):
    def function(pos, charge, batch, vel):
        return model(pos, vel, charge, full_edge_index(batch))
    return function


def graphs(num_graphs=3, seed=0):
    pos, vel, charge = states(num_graphs, seed)
    batch = torch.arange(num_graphs).repeat_interleave(5)
    return pos.view(-1, 3), vel.view(-1, 3), charge.view(-1, 1), batch


def test_egnn_is_e3_and_permutation_equivariant():
    torch.manual_seed(0)
    model = EGNNDynamicsPredictor(hidden_channels=32).double()
    pos, vel, charge, batch = graphs()
    generator = torch.Generator().manual_seed(1)
    for reflect in (True, False):
        assert_equivariant(egnn_call(model), pos, charge, batch,
                           vectors=vel, generator=generator, reflect=reflect,
                           atol=1e-10, rtol=1e-10)


def test_gnn_is_not_rotation_equivariant():
    torch.manual_seed(0)
    model = GNNDynamicsPredictor(hidden_channels=32).double()
    pos, vel, charge, batch = graphs()
    generator = torch.Generator().manual_seed(1)
    with pytest.raises(AssertionError, match='not equivariant'):
        assert_equivariant(egnn_call(model), pos, charge, batch, vectors=vel,
                           generator=generator, reflect=False,
                           translate=False, permute=False)
    # It is permutation-equivariant.
    perm = permutation_within_graphs(batch, generator)
    out = egnn_call(model)(pos, charge, batch, vel)
    moved = egnn_call(model)(pos[perm], charge[perm], batch, vel[perm])
    torch.testing.assert_close(moved, out[perm], atol=1e-10, rtol=1e-10)


def test_model_errors():
    with pytest.raises(ValueError, match='num_layers'):
        EGNNDynamicsPredictor(num_layers=0)
    with pytest.raises(ValueError, match='hidden_channels'):
        GNNDynamicsPredictor(hidden_channels=0)


@pytest.mark.parametrize('model_class', [EGNNDynamicsPredictor,
                                         GNNDynamicsPredictor])
def test_training_lowers_the_validation_error(tmp_path, model_class):
    torch.manual_seed(0)
    example = load_example()
    train = NBody(str(tmp_path), 'train', num_samples=100)
    valid = NBody(str(tmp_path), 'valid', num_samples=100)
    train_loader = DataLoader(train, batch_size=25, shuffle=True)
    valid_loader = DataLoader(valid, batch_size=100)
    model = model_class(hidden_channels=32, num_layers=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    schedule = LRSchedule(optimizer, 'cosine', total_steps=200)
    before = example.evaluate(model, valid_loader, torch.device('cpu'))
    start = time.perf_counter()
    for epoch in range(50):  # 200 steps
        example.train_epoch(model, train_loader, optimizer, schedule,
                            4 * epoch, start, torch.device('cpu'))
    after = example.evaluate(model, valid_loader, torch.device('cpu'))
    assert after < 0.5 * before
    # The last step ran at the cosine's end, near 1 % of the initial rate.
    assert optimizer.param_groups[0]['lr'] == pytest.approx(
        1e-3 * schedule.factor(199, 0.0))
    assert optimizer.param_groups[0]['lr'] < 2e-5


def test_example_rejects_bad_input(tmp_path, capsys):
    example = load_example()
    for argv in (['--time-budget', '0'], ['--epochs', '-1'],
                 ['--num-train', '0'], ['--model', 'mlp'], ['--ema', '1']):
        with pytest.raises(SystemExit):
            example.main(argv + ['--root', str(tmp_path)])
    with pytest.raises(ValueError, match='exceeds'):
        example.main(['--num-train', '5000', '--root', str(tmp_path),
                      '--out', str(tmp_path / 'out')])
    assert not (tmp_path / 'out').exists()


def test_example_validates_and_saves_the_moving_average(tmp_path):
    example = load_example()
    out = tmp_path / 'out'
    argv = ['--root', str(tmp_path / 'nbody'), '--num-train', '200',
            '--epochs', '3', '--eval-every', '1', '--hidden-channels', '8',
            '--num-layers', '1']
    raw = example.main(argv + ['--out', str(tmp_path / 'raw')])
    results = example.main(argv + ['--out', str(out), '--ema', '0.9'])
    # The same seed trains the same raw weights; what is saved and scored
    # is their average.
    assert results['test_mse'] != raw['test_mse']
    model = EGNNDynamicsPredictor(8, 1)
    model.load_state_dict(torch.load(out / 'model.pt'))
    raw_state = torch.load(tmp_path / 'raw' / 'model.pt')
    assert any(not torch.equal(value, raw_state[key])
               for key, value in model.state_dict().items())
    test = NBody(str(tmp_path / 'nbody'), 'test')
    mse = example.evaluate(model, DataLoader(test, 100),
                           torch.device('cpu'))
    assert mse == pytest.approx(results['test_mse'], rel=1e-6)
    assert results['settings']['ema'] == 0.9
    assert results['best_valid_mse'] == min(
        record['valid_mse'] for record in results['history'])


def test_train_epoch_averages_and_clips_every_step(tmp_path):
    from torch_enf.training import ExponentialMovingAverage
    example = load_example()
    torch.manual_seed(0)
    loader = DataLoader(NBody(str(tmp_path), 'train', num_samples=40),
                        batch_size=10)
    model = EGNNDynamicsPredictor(8, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    schedule = LRSchedule(optimizer, 'constant', total_steps=4)
    ema = ExponentialMovingAverage(model, 0.5)
    flat = torch.nn.utils.parameters_to_vector
    first = flat(model.parameters()).detach().clone()
    grad_norms = []
    example.train_epoch(model, loader, optimizer, schedule, 0,
                        time.perf_counter(), torch.device('cpu'), ema,
                        grad_norms)
    assert ema.num_updates == len(loader) == 4
    # Clipping recorded the norm of every step.
    assert len(grad_norms) == 4 and all(n > 0 for n in grad_norms)
    # The average lags behind the trained weights.
    average, last = flat(ema.model.parameters()), flat(model.parameters())
    assert 0 < (average - first).norm() < (last - first).norm()
    assert (average - last).norm() > 0
