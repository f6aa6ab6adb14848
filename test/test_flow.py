import math

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch, Data

from torch_enf.flows import (ADAPTIVE_SOLVERS, DEFAULT_SOLVER,
                             ERROR_NORMS, FIXED_STEP_SOLVERS,
                             CenteredGaussian,
                             EGNNDynamics, ENFlow, ENFlowConfig,
                             EvaluationBudgetExceeded, EvaluationCount,
                             ODESolveError, PREDICTIONS, SolverOptions)
from torch_enf.flows.dynamics import ENDPOINT_TIME_OFFSET
from torch_enf.nn import full_edge_index
from torch_enf.utils import center_pos

from torch_enf.testing import assert_equivariant

from .conftest import mixed_batch

TIGHT = SolverOptions(rtol=1e-8, atol=1e-8)


def make_flow(n_dims, channels=0, head_std=0.2, **kwargs):
    options = dict(hidden_channels=16, num_layers=2, adjoint=False)
    options.update(kwargs)
    flow = ENFlow(n_dims, channels, **options).double()
    # Larger coordinate heads than at initialisation, so the flow is far from
    # the identity and every check below has something to detect.
    for conv in flow.dynamics.egnn.convs:
        torch.nn.init.normal_(conv.coord_lin2.weight, std=head_std)
    return flow.eval()


def as_batch(pos, h, batch, channels):
    data_list = []
    for g in range(int(batch.max()) + 1):
        mask = batch == g
        data = Data(pos=pos[mask])
        if channels:
            data.h = h[mask]
        data_list.append(data)
    return Batch.from_data_list(data_list)


@pytest.mark.parametrize('n_dims', [2, 3])
@pytest.mark.parametrize('channels', [0, 3])
@pytest.mark.parametrize('num_radial', [0, 8])
@pytest.mark.parametrize('prediction', PREDICTIONS)
def test_vector_field_is_equivariant(n_dims, channels, num_radial,
                                     prediction, generator):
    flow = make_flow(n_dims, channels, num_radial=num_radial,
                     radial_cutoff=3.0, prediction=prediction)
    pos, h, batch = mixed_batch([3, 6, 2, 4], n_dims, generator, channels)
    t = torch.tensor(0.3, dtype=torch.float64)

    def field(pos, h, batch):
        return flow.dynamics(t, pos, h, full_edge_index(batch), batch)

    v_pos, _ = assert_equivariant(field, pos, h, batch, ('vectors', 'node'),
                                  generator=generator)
    assert v_pos.abs().max() > 1e-3


def test_endpoint_prediction_points_from_the_predicted_clean_graph(
        generator):
    velocity = make_flow(3, 2)
    endpoint = make_flow(3, 2, prediction='endpoint')
    endpoint.load_state_dict(velocity.state_dict())
    pos, h, batch = mixed_batch([3, 5], 3, generator, 2)
    edge_index = full_edge_index(batch)
    t = torch.rand(8, generator=generator, dtype=torch.float64)
    # The velocity parametrisation returns the EGNN's displacement, whose
    # end point pos + displacement the endpoint parametrisation flows to.
    shift, h_out = velocity.dynamics(t, pos, h, edge_index, batch)
    v_pos, v_h = endpoint.dynamics(t, pos, h, edge_index, batch)
    scale = (t + ENDPOINT_TIME_OFFSET).unsqueeze(-1)
    torch.testing.assert_close(v_pos, -shift / scale)
    torch.testing.assert_close(v_h, h_out)
    assert 'prediction=endpoint' in repr(endpoint.dynamics)
    with pytest.raises(ValueError, match="'prediction' must be one of"):
        ENFlow(3, prediction='noise')


@pytest.mark.parametrize('n_dims, channels', [(2, 0), (3, 2)])
def test_round_trip_data_latent_data(n_dims, channels, generator):
    flow = make_flow(n_dims, channels)
    pos, h, batch = mixed_batch([4, 2, 5], n_dims, generator, channels)
    pos = center_pos(pos, batch)
    latent = flow.encode(as_batch(pos, h, batch, channels), solver=TIGHT)
    back = flow.decode(latent.pos, latent.h if channels else None, batch,
                       trace='exact', solver=TIGHT)
    assert (latent.pos - pos).abs().max() > 1e-2  # the map is not trivial
    torch.testing.assert_close(back.pos, pos, rtol=0, atol=1e-7)
    if channels:
        torch.testing.assert_close(back.h, h, rtol=0, atol=1e-7)
    torch.testing.assert_close(back.log_det, -latent.log_det, rtol=1e-6,
                               atol=1e-7)


def centred_basis(num_nodes, n_dims):
    r"""Orthonormal basis of the centred subspace, [M*n, (M-1)*n]."""
    centring = torch.eye(num_nodes, dtype=torch.float64) - 1.0 / num_nodes
    q, _ = torch.linalg.qr(centring[:, :num_nodes - 1])
    return torch.kron(q.contiguous(), torch.eye(n_dims, dtype=torch.float64))


@pytest.mark.parametrize('num_nodes, n_dims, channels, num_radial, '
                         'prediction',
                         [(3, 2, 0, 0, 'velocity'), (4, 3, 0, 0, 'velocity'),
                          (3, 3, 2, 0, 'velocity'), (4, 3, 0, 6, 'velocity'),
                          (4, 3, 2, 0, 'endpoint')])
def test_exact_log_prob_matches_brute_force_jacobian(num_nodes, n_dims,
                                                     channels, num_radial,
                                                     prediction, generator):
    # The end-point field divides by t + 0.01: smaller heads keep its
    # solve as far from the identity as the others', not stiffer.
    flow = make_flow(n_dims, channels, num_radial=num_radial,
                     prediction=prediction,
                     head_std=0.2 if prediction == 'velocity' else 0.005)
    pos, h, batch = mixed_batch([num_nodes], n_dims, generator, channels)
    pos = center_pos(pos, batch)

    def flow_map(state):
        x = state[:num_nodes * n_dims].reshape(num_nodes, n_dims)
        feats = state[num_nodes * n_dims:].reshape(num_nodes, channels)
        out = flow._solve(x, feats, batch, 1, 0.0, 1.0, None, False, TIGHT)
        return torch.cat([out.pos.reshape(-1), out.h.reshape(-1)])

    state = torch.cat([pos.reshape(-1), h.reshape(-1)])
    jac = torch.autograd.functional.jacobian(flow_map, state)
    basis = torch.block_diag(centred_basis(num_nodes, n_dims),
                             torch.eye(num_nodes * channels,
                                       dtype=torch.float64))
    _, log_det = torch.linalg.slogdet(basis.t() @ jac @ basis)
    z = flow_map(state)
    z_pos = z[:num_nodes * n_dims].reshape(num_nodes, n_dims)
    z_h = z[num_nodes * n_dims:]
    dim = (num_nodes - 1) * n_dims + num_nodes * channels
    expected = -0.5 * z.pow(2).sum() - 0.5 * dim * math.log(2 * math.pi) \
        + log_det
    assert z_pos.sum(0).abs().max() < 1e-10  # latents stay centred
    assert z_h.numel() == num_nodes * channels

    log_prob = flow.log_prob(as_batch(pos, h, batch, channels),
                             trace='exact', solver=TIGHT)
    assert abs(float(log_det)) > 0.05  # volume actually changes
    # Both sides carry the solver's error, larger where the field is stiff.
    tolerance = 1e-6 if prediction == 'velocity' else 1e-5
    torch.testing.assert_close(log_prob, expected.view(1), rtol=0,
                               atol=tolerance)


def test_partial_solves_round_trip(generator):
    flow = make_flow(3, 2)
    pos, h, batch = mixed_batch([4, 3], 3, generator, 2)
    pos = center_pos(pos, batch)
    data = as_batch(pos, h, batch, 2)
    state = flow.encode(data, end_time=0.4, solver=TIGHT)
    full = flow.encode(data, solver=TIGHT)
    assert (state.pos - full.pos).abs().max() > 1e-2  # stopped early
    back = flow.decode(state.pos, state.h, batch, start_time=0.4,
                       solver=TIGHT)
    torch.testing.assert_close(back.pos, pos, rtol=0, atol=1e-6)
    torch.testing.assert_close(back.h, h, rtol=0, atol=1e-6)
    default = flow.decode(full.pos, full.h, batch)
    explicit = flow.decode(full.pos, full.h, batch, start_time=1.0)
    torch.testing.assert_close(explicit.pos, default.pos, rtol=0, atol=0)
    for kwargs in (dict(start_time=0.0), dict(start_time=1.5),
                   dict(start_time=float('nan'))):
        with pytest.raises(ValueError, match="'start_time' must"):
            flow.decode(full.pos, full.h, batch, **kwargs)
    with pytest.raises(ValueError, match="'end_time' must lie in"):
        flow.encode(data, end_time=2.0)


@pytest.mark.parametrize('noise', ['rademacher', 'gaussian'])
def test_hutchinson_estimate_is_unbiased(noise, generator):
    flow = make_flow(3, 2, hutchinson_noise=noise)
    pos, h, batch = mixed_batch([4, 3], 3, generator, 2)
    data = as_batch(pos, h, batch, 2)
    exact = flow.log_prob(data, trace='exact')
    num_draws = 64
    draws = torch.stack([flow.log_prob(data, trace='hutchinson')
                         for _ in range(num_draws)])
    mean, std = draws.mean(0), draws.std(0)
    assert bool((std > 1e-3).all())  # the estimator is random
    # Within 4 standard errors of the exact value.
    bound = 4 * std / math.sqrt(num_draws) + 1e-5
    assert bool(((mean - exact).abs() < bound).all()), (mean, exact, std)


@pytest.mark.parametrize('n_dims, channels', [(2, 0), (3, 3)])
def test_batch_equals_one_by_one(n_dims, channels, generator):
    flow = make_flow(n_dims, channels)
    solver = SolverOptions(rtol=1e-9, atol=1e-9)
    pos, h, batch = mixed_batch([2, 5, 3, 4], n_dims, generator, channels)
    data = as_batch(pos, h, batch, channels)
    together = flow.log_prob(data, solver=solver)
    alone = torch.cat([flow.log_prob(g, solver=solver)
                       for g in data.to_data_list()])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-6)
    # Another batch composition gives the same values.
    reordered = Batch.from_data_list(data.to_data_list()[::-1])
    torch.testing.assert_close(flow.log_prob(reordered, solver=solver),
                               together.flip(0), rtol=0, atol=1e-6)


@pytest.mark.parametrize('n_dims', [2, 3])
def test_log_prob_is_invariant(n_dims, generator):
    flow = make_flow(n_dims, 2)
    pos, h, batch = mixed_batch([3, 5], n_dims, generator, 2)
    assert_equivariant(lambda pos, h, batch: flow.log_prob(
        as_batch(pos, h, batch, 2), solver=TIGHT), pos, h, batch, ('graph', ),
        generator=generator, rtol=1e-7, atol=1e-6)


def test_sample_returns_centred_batches_of_the_asked_sizes():
    flow = make_flow(3, 2)
    out = flow.sample(3, [3, 5, 4],
                      generator=torch.Generator().manual_seed(0))
    assert out.num_graphs == 3
    assert torch.bincount(out.batch).tolist() == [3, 5, 4]
    assert out.h.shape == (12, 2)
    torch.testing.assert_close(center_pos(out.pos, out.batch), out.pos)
    again = flow.sample(2, 4)
    assert again.pos.shape == (8, 3)


def test_temperature_scales_the_latents_before_the_inverse_map():
    flow = make_flow(3, 2)
    solver = SolverOptions(rtol=1e-9, atol=1e-9)
    sizes = torch.tensor([3, 5])
    batch = torch.repeat_interleave(torch.arange(2), sizes)
    z_pos, z_h = flow.sample_base(batch, 2, torch.Generator().manual_seed(4))
    for temperature in (1.0, 0.6):
        out = flow.sample(2, sizes, generator=torch.Generator().manual_seed(4),
                          temperature=temperature, solver=solver)
        expected = flow.decode(temperature * z_pos, temperature * z_h,
                               batch, solver=solver)
        torch.testing.assert_close(out.pos, expected.pos)
        torch.testing.assert_close(out.h, expected.h)
    default = flow.sample(2, sizes, generator=torch.Generator().manual_seed(4))
    cold = flow.sample(2, sizes, generator=torch.Generator().manual_seed(4),
                       temperature=0.6)
    assert not torch.allclose(default.pos, cold.pos)
    for bad in (0, -1.0, float('nan'), float('inf'), True, '0.5'):
        with pytest.raises(ValueError, match="'temperature' must be"):
            flow.sample(2, 3, temperature=bad)


def test_adjoint_and_direct_gradients_agree(generator):
    pos, _, batch = mixed_batch([3, 4], 2, generator)
    data = as_batch(pos, None, batch, 0)
    grads = []
    for adjoint in (False, True):
        torch.manual_seed(3)
        flow = make_flow(2, adjoint=adjoint).train()
        torch.manual_seed(4)
        flow.log_prob(data, trace='exact', solver=TIGHT).sum().backward()
        grads.append(torch.cat([
            torch.zeros_like(p).view(-1) if p.grad is None else
            p.grad.view(-1) for p in flow.parameters()
        ]))
    assert grads[0].abs().max() > 1e-3
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('adjoint', [False, True])
def test_counter_counts_the_adjoint_backward_pass(adjoint, generator):
    pos, _, batch = mixed_batch([3, 4], 2, generator)
    flow = make_flow(2, adjoint=adjoint).train()
    counter = EvaluationCount()
    loss = -flow.log_prob(as_batch(pos, None, batch, 0),
                          trace='hutchinson', counter=counter).mean()
    forward_evals = counter.value
    assert forward_evals > 0
    loss.backward()
    # Back-propagating through the solver evaluates no field; the adjoint
    # method solves the field backwards in time, after log_prob returned.
    assert (counter.value > forward_evals) == adjoint
    # The counter is the caller's: another call adds to it.
    before = counter.value
    flow.log_prob(as_batch(pos, None, batch, 0), counter=counter)
    assert counter.value > before


def test_regularization_is_positive_and_trains(generator):
    flow = make_flow(3, 1).train()
    pos, h, batch = mixed_batch([3, 4], 3, generator, 1)
    log_prob, reg = flow.log_prob(as_batch(pos, h, batch, 1),
                                  trace='hutchinson',
                                  return_regularization=True)
    assert log_prob.shape == reg.shape == (2, )
    assert bool((reg > 0).all())
    (reg.sum() - log_prob.sum()).backward()
    assert all(p.grad is not None for p in flow.dynamics.parameters())


def test_radius_graph_flow_matches_full_flow_for_a_large_radius(generator):
    pos, _, batch = mixed_batch([3, 4], 3, generator)
    data = as_batch(pos, None, batch, 0)
    torch.manual_seed(5)
    full = make_flow(3)
    torch.manual_seed(5)
    sparse = make_flow(3, graph=100.0)
    torch.testing.assert_close(sparse.log_prob(data), full.log_prob(data))


@pytest.mark.parametrize('data, message', [
    (Data(pos=torch.randn(4, 2)), 'pos'),
    (Data(pos=torch.tensor([[0., 0., float('nan')], [1., 0., 0.]])),
     'non-finite'),
    (Data(pos=torch.randn(1, 3)), 'fewer than 2 nodes'),
    (Batch.from_data_list([Data(pos=torch.randn(3, 3)),
                           Data(pos=torch.randn(1, 3))]),
     'fewer than 2 nodes'),
    (Data(x=torch.randn(3, 3)), "'pos'"),
    # An empty graph has no batch entries; the Batch still counts it.
    (Batch.from_data_list([Data(pos=torch.randn(4, 3)),
                           Data(pos=torch.zeros(0, 3))]),
     r'Graphs \[1\] have fewer than 2 nodes'),
    (Batch.from_data_list([Data(pos=torch.zeros(0, 3)),
                           Data(pos=torch.randn(4, 3))]),
     r'Graphs \[0\] have fewer than 2 nodes'),
])
def test_log_prob_bad_input(data, message):
    flow = ENFlow(3, hidden_channels=8, num_layers=1)
    with pytest.raises(ValueError, match=message):
        flow.log_prob(data)


def test_feature_and_batch_errors():
    flow = ENFlow(3, 2, hidden_channels=8, num_layers=1)
    with pytest.raises(ValueError, match="'h'"):
        flow.log_prob(Data(pos=torch.randn(3, 3)))
    with pytest.raises(ValueError, match="'h'"):
        flow.log_prob(Data(pos=torch.randn(3, 3), h=torch.randn(3, 5)))
    with pytest.raises(ValueError, match='batch'):
        flow.decode(torch.randn(4, 3), torch.randn(4, 2),
                    batch=torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match='trace'):
        flow.log_prob(Data(pos=torch.randn(3, 3), h=torch.randn(3, 2)),
                      trace='bogus')
    with pytest.raises(ValueError, match='graph'):
        ENFlow(3, graph='knn')
    with pytest.raises(ValueError, match='at least 2 nodes'):
        flow.sample(2, [3, 1])
    with pytest.raises(ValueError, match="'solver' must be a SolverOptions"):
        flow.log_prob(Data(pos=torch.randn(3, 3), h=torch.randn(3, 2)),
                      solver=dict(rtol=1e-3))


class _Exploding(torch.nn.Module):
    def forward(self, t, pos, h, edge_index, batch):
        return pos * 1e3 * (1 + pos.abs()), h


def test_diverging_solve_raises_a_clear_error():
    flow = ENFlow(3, dynamics=_Exploding(), adjoint=False)
    flow.register_parameter('dummy', torch.nn.Parameter(torch.zeros(1)))
    with pytest.raises(ODESolveError):
        flow.log_prob(Data(pos=torch.randn(4, 3)), trace='hutchinson')


def test_centered_gaussian_checks_its_support():
    prior = CenteredGaussian(3)
    batch = torch.zeros(4, dtype=torch.long)
    pos = center_pos(torch.randn(4, 3))
    expected = -0.5 * pos.pow(2).sum() - 0.5 * 9 * math.log(2 * math.pi)
    torch.testing.assert_close(prior.log_prob(pos, batch),
                               expected.view(1))
    with pytest.raises(ValueError, match='centred'):
        prior.log_prob(pos + 1.0, batch)
    sample = prior.sample(torch.tensor([0, 0, 1, 1, 1]))
    torch.testing.assert_close(center_pos(sample, torch.tensor(
        [0, 0, 1, 1, 1])), sample)


def test_custom_dynamics_are_used():
    dynamics = EGNNDynamics(2, 0, hidden_channels=8, num_layers=1)
    flow = ENFlow(2, dynamics=dynamics)
    assert flow.dynamics is dynamics
    assert 'ENFlow(n_dims=2' in repr(flow)


def test_step_budget_turns_a_stiff_solve_into_an_error():
    flow = make_flow(2)
    solver = SolverOptions(rtol=1e-12, atol=1e-12, max_num_steps=3)
    with pytest.raises(ODESolveError, match='max_num_steps'):
        flow.log_prob(Data(pos=torch.randn(4, 2, dtype=torch.float64)),
                      solver=solver)


def test_evaluation_budget_stops_a_solve_with_its_own_error():
    flow = make_flow(2)
    data = Data(pos=torch.randn(4, 2, dtype=torch.float64))
    counter = EvaluationCount()
    flow.log_prob(data, counter=counter)
    needed = counter.value
    flow.log_prob(data, solver=DEFAULT_SOLVER.replace(max_num_evals=needed))
    with pytest.raises(EvaluationBudgetExceeded,
                       match=f'budget of {needed - 1} evaluations'):
        flow.log_prob(data, solver=DEFAULT_SOLVER.replace(
            max_num_evals=needed - 1))
    with pytest.raises(ValueError, match='max_num_evals'):
        SolverOptions(max_num_evals=0)


def test_graph_error_norm_is_not_diluted_by_batch_mates():
    from torch_enf.flows.integrator import AugmentedODE
    for num_easy in (1, 9):
        batch = torch.arange(1 + num_easy).repeat_interleave(3)
        error = torch.zeros(batch.numel(), 2, dtype=torch.float64)
        error[:3] = 2.0  # all of the error sits on the first graph
        ode = AugmentedODE(None, [error], batch, 1 + num_easy, None, None,
                           False)
        trace_error = torch.zeros(1 + num_easy, dtype=torch.float64)
        assert float(ode.error_norm((error, trace_error))) == 2.0
        trace_error[-1] = 3.0
        assert float(ode.error_norm((error, trace_error))) == 3.0


def test_graph_error_norm_takes_effect_in_batches(generator):
    flow = make_flow(2)
    for conv in flow.dynamics.egnn.convs:  # a stiffer field
        torch.nn.init.normal_(conv.coord_lin2.weight, std=2.0)
    hard = Data(pos=3.0 * torch.randn(4, 2, generator=generator,
                                      dtype=torch.float64))
    easy = [Data(pos=0.1 * torch.randn(4, 2, generator=generator,
                                       dtype=torch.float64))
            for _ in range(15)]
    batch = Batch.from_data_list([hard] + easy)
    evaluations = {}
    for norm in ERROR_NORMS:
        solver = DEFAULT_SOLVER.replace(error_norm=norm)
        for name, data in (('alone', Batch.from_data_list([hard])),
                           ('batched', batch)):
            counter = EvaluationCount()
            flow.log_prob(data, solver=solver, counter=counter)
            evaluations[norm, name] = counter.value
    # Alone, both norms are the same; in a batch, the per-graph maximum
    # exceeds the root mean square over the batch, so it steps more finely.
    assert evaluations['graph', 'alone'] == evaluations['batch', 'alone']
    assert evaluations['graph', 'batched'] > evaluations['batch', 'batched']
    with pytest.raises(ValueError, match='error_norm'):
        SolverOptions(error_norm='nodes')


def test_adjoint_seminorm_gives_the_same_gradients(generator):
    pos, _, batch = mixed_batch([3, 4], 2, generator)
    data = as_batch(pos, None, batch, 0)
    grads = []
    for seminorm in (False, True):
        torch.manual_seed(3)
        flow = make_flow(2, adjoint=True, adjoint_seminorm=seminorm).train()
        flow.log_prob(data, trace='exact', solver=SolverOptions(
            rtol=1e-7, atol=1e-7)).sum().backward()
        grads.append(torch.cat([p.grad.view(-1) for p in flow.parameters()
                                if p.grad is not None]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-3, atol=1e-5)


def test_adjoint_gradients_reach_inputs_that_require_grad(generator):
    # Inputs produced by upstream modules (dequantisers, ActNorm) carry a
    # graph; the adjoint must give them the same gradient as direct backprop.
    pos, h, batch = mixed_batch([3, 4], 3, generator, 2)
    grads = []
    for adjoint in (False, True):
        torch.manual_seed(3)
        flow = make_flow(3, 2, adjoint=adjoint).train()
        scale = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
        data = as_batch(pos * scale, h * scale, batch, 2)
        flow.log_prob(data, trace='exact', solver=SolverOptions(
            rtol=1e-7, atol=1e-7)).sum().backward()
        grads.append(scale.grad)
    assert grads[0].abs() > 1e-3
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


def test_solver_options_are_checked_when_built():
    with pytest.raises(ValueError, match="'euler' needs 'num_steps'"):
        SolverOptions('euler')
    with pytest.raises(ValueError, match="Unknown ODE solver 'rk5'"):
        SolverOptions('rk5')
    for kwargs in (dict(rtol=0.0), dict(atol=-1e-5),
                   dict(rtol=float('inf')), dict(atol=float('nan')),
                   dict(rtol=True), dict(atol='1e-5'),
                   dict(method='rk4', num_steps=0),
                   dict(method='rk4', num_steps=2.5),
                   dict(max_num_steps=0)):
        with pytest.raises(ValueError):
            SolverOptions(**kwargs)
    SolverOptions(rtol=np.float32(1e-4), atol=1)  # any positive real
    assert DEFAULT_SOLVER == SolverOptions('dopri5', 1e-5, 1e-5)
    assert set(ADAPTIVE_SOLVERS) >= {'dopri5', 'bosh3'}
    assert set(FIXED_STEP_SOLVERS) >= {'euler', 'midpoint', 'rk4'}
    assert not set(ADAPTIVE_SOLVERS) & set(FIXED_STEP_SOLVERS)
    # Plain data in both directions, checked on the way back.
    options = SolverOptions('midpoint', num_steps=20)
    assert SolverOptions.from_dict(options.to_dict()) == options
    with pytest.raises(ValueError, match='num_steps'):
        options.replace(num_steps=0)
    with pytest.raises(TypeError):
        ENFlow(2, rtol=1e-4)  # solver options are per call


def test_solver_options_parse_their_short_spelling():
    assert SolverOptions.parse('dopri5:1e-4') == SolverOptions(
        'dopri5', rtol=1e-4, atol=1e-4)
    assert SolverOptions.parse('midpoint:10') == SolverOptions(
        'midpoint', num_steps=10)
    assert SolverOptions.parse('rk4:5:1.5') == SolverOptions(
        'rk4', num_steps=5, step_exponent=1.5)
    for spec in ('midpoint', 'midpoint:ten', 'dopri5:1e-4:2', 'rk5:10',
                 'euler:0', 'midpoint:10:0'):
        with pytest.raises(ValueError, match=f"Solver '{spec}'"):
            SolverOptions.parse(spec)


@pytest.mark.parametrize('method,stages', [('euler', 1), ('midpoint', 2),
                                           ('rk4', 4)])
def test_fixed_step_solvers_take_num_steps(generator, method, stages):
    pos, _, batch = mixed_batch([3, 4], 2, generator)
    data = as_batch(pos, None, batch, 0)
    flow = make_flow(2).eval()
    exact = flow.log_prob(data, solver=TIGHT)
    counter = EvaluationCount()
    approx = flow.log_prob(data, solver=SolverOptions(method, num_steps=40),
                           counter=counter)
    assert counter.value == 40 * stages
    torch.testing.assert_close(approx, exact, rtol=0, atol=5e-2)


def test_step_exponent_grids_refine_toward_the_data():
    from torch_enf.flows.integrator import step_grid
    assert torch.equal(step_grid(1.0, 0.0, 4),
                       torch.linspace(1, 0, 5, dtype=torch.float64))
    grid = step_grid(1.0, 0.0, 4, 2.0)  # sampling: from noise to data
    expected = torch.tensor([1.0, 0.5625, 0.25, 0.0625, 0.0],
                            dtype=torch.float64)
    torch.testing.assert_close(grid, expected)
    torch.testing.assert_close(step_grid(0.0, 1.0, 4, 2.0), expected.flip(0))
    steps = grid[:-1] - grid[1:]
    assert bool((steps[1:] < steps[:-1]).all())  # shrinking toward t = 0
    with pytest.raises(ValueError, match='step_exponent'):
        SolverOptions('midpoint', num_steps=4, step_exponent=0.0)


def test_step_exponent_solves_a_field_with_detail_at_the_data_end():
    # dx/dt = 1 / (t + 0.01) changes fastest near t = 0: a grid refined
    # there integrates it better at the same number of evaluations.
    from torchdiffeq import odeint
    exact = math.log(1.01 / 0.01)
    times = torch.tensor([1.0, 0.0], dtype=torch.float64)  # as sampling

    def error(exponent):
        solver = SolverOptions('midpoint', num_steps=10,
                               step_exponent=exponent)
        x = odeint(lambda t, x: 1 / (t + 0.01), torch.zeros(1).double(),
                   times, **solver.odeint_kwargs())
        return abs(float(x[0] - x[-1]) - exact)
    assert error(2.0) < error(1.0) / 3


def test_a_solver_passed_per_call_is_used_in_either_mode(generator):
    pos, _, batch = mixed_batch([3, 4], 2, generator)
    data = as_batch(pos, None, batch, 0)
    flow = make_flow(2)
    euler = SolverOptions('euler', num_steps=3)
    for mode in (True, False):
        flow.train(mode)
        counter = EvaluationCount()
        flow.log_prob(data, solver=euler, counter=counter)
        assert counter.value == 3
        counter = EvaluationCount()
        flow.sample(2, 4, solver=euler, counter=counter, batch_size=1)
        assert counter.value == 2 * 3  # one solve per chunk
        counter = EvaluationCount()
        flow.sample_with_log_prob(2, 4, solver=euler, counter=counter)
        assert counter.value == 3
        counter = EvaluationCount()
        latent = flow.encode(data, solver=euler, counter=counter)
        flow.decode(latent.pos, None, latent.batch, solver=euler,
                    counter=counter)
        assert counter.value == 6
    # Without a solver, the default (dopri5 at 1e-5) in either mode.
    values = []
    for mode in (True, False):
        counter = EvaluationCount()
        values.append(flow.train(mode).log_prob(data, counter=counter))
        assert counter.value > 6 and (counter.value - 2) % 6 == 0
    torch.testing.assert_close(values[0], values[1], rtol=0, atol=0)
    torch.testing.assert_close(values[0], flow.log_prob(
        data, solver=DEFAULT_SOLVER), rtol=0, atol=0)


def test_forward_is_log_prob(generator):
    pos, _, batch = mixed_batch([3, 4], 2, generator)
    data = as_batch(pos, None, batch, 0)
    flow = make_flow(2).eval()
    torch.testing.assert_close(flow(data), flow.log_prob(data))


def test_state_dict_holds_the_dynamics_once_and_old_checkpoints_load():
    flow = make_flow(2)
    keys = list(flow.state_dict())
    assert all(key.startswith('vector_field.dynamics.') for key in keys)
    # torch-enf 0.1 stored 'dynamics.*' and a duplicate 'ode.dynamics.*'.
    old = {}
    for key, value in flow.state_dict().items():
        short = key[len('vector_field.'):]
        old[short] = value + 1
        old['ode.' + short] = value + 1
    fresh = make_flow(2)
    fresh.load_state_dict(old)
    for key, value in fresh.state_dict().items():
        torch.testing.assert_close(value, flow.state_dict()[key] + 1)


def test_per_node_time_equals_scalar_time(generator):
    pos, h, batch = mixed_batch([3, 5], 3, generator, 2)
    flow = make_flow(3, 2)
    t = torch.tensor(0.3, dtype=torch.float64)
    v_scalar = flow.velocity(t, pos, h, batch, 2)
    v_nodes = flow.velocity(t.expand(8), pos, h, batch, 2)
    for a, b in zip(v_scalar, v_nodes):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(center_pos(v_scalar[0], batch), v_scalar[0])


def test_sampling_in_chunks(generator):
    flow = make_flow(2).eval()
    samples = flow.sample(5, [3, 4, 5, 3, 6], batch_size=2)
    assert samples.num_graphs == 5
    assert samples.ptr.diff().tolist() == [3, 4, 5, 3, 6]


def test_far_off_float32_inputs_are_accepted():
    torch.manual_seed(0)
    flow = ENFlow(3, hidden_channels=8, num_layers=1).eval()
    pos = torch.randn(10, 3)
    batch = torch.tensor([0] * 5 + [1] * 5)
    near = flow.log_prob(Data(pos=pos, batch=batch))
    far = flow.log_prob(Data(pos=pos + 1e4, batch=batch))
    torch.testing.assert_close(far, near, atol=5e-2, rtol=0)


def test_sample_counts_are_checked():
    import numpy as np
    flow = make_flow(2)
    assert flow.sample(3, np.int64(4)).num_graphs == 3
    assert flow.sample(2, torch.tensor(4)).num_graphs == 2
    assert flow.sample(np.int64(2), torch.tensor([3, 4])).num_graphs == 2
    for num_samples, num_nodes, message in (
            (0, 4, "'num_samples' must be a positive integer"),
            (2.0, 4, "'num_samples' must be a positive integer"),
            (1, 4.7, "'num_nodes' must hold integers"),
            (2, [3.5, 4], "'num_nodes' must hold integers"),
            (3, [3, 4], "'num_nodes' must be one size or 'num_samples'=3"),
            (2, None, 'a flow without an atom-count distribution needs')):
        with pytest.raises(ValueError, match=message):
            flow.sample(num_samples, num_nodes)
    with pytest.raises(ValueError, match="'num_nodes' is None"):
        flow.sample_with_log_prob(2, None)


def test_construction_is_checked():
    for kwargs, message in ((dict(n_dims=-1), "'n_dims' must be"),
                            (dict(n_dims=3, node_channels=-2),
                             "'node_channels' must be"),
                            (dict(n_dims=3, graph=True), "'graph' must be"),
                            (dict(n_dims=3, num_radial=1),
                             "'num_radial' must be"),
                            (dict(n_dims=3, num_radial=-4),
                             "'num_radial' must be"),
                            (dict(n_dims=3, num_radial=4, radial_cutoff=0.0),
                             "'radial_cutoff' must be")):
        with pytest.raises(ValueError, match=message):
            ENFlow(**kwargs)
    with pytest.raises(ValueError, match='float32 or float64'):
        ENFlow(2, hidden_channels=8, num_layers=1).half().sample(2, 3)


class _Rotation(torch.nn.Module):
    def forward(self, t, pos, h, edge_index, batch):
        return torch.stack([-pos[:, 1], pos[:, 0]], dim=-1), h


def test_custom_dynamics_without_parameters():
    flow = ENFlow(2, dynamics=_Rotation(), adjoint=False).eval()
    samples = flow.sample(2, 3)
    assert samples.pos.dtype == torch.float32
    # A rotation field is divergence free: log p is the base density.
    data = Data(pos=torch.randn(3, 2))
    expected = CenteredGaussian(2).log_prob(center_pos(data.pos),
                                            torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(flow.log_prob(data), expected, atol=1e-3,
                               rtol=0)


def _stiff_flow(coords_range, scale, seed):
    torch.manual_seed(seed)
    flow = ENFlow(3, hidden_channels=16, num_layers=2, adjoint=False,
                  coords_range=coords_range).double().eval()
    for conv in flow.dynamics.egnn.convs:
        torch.nn.init.normal_(conv.coord_lin2.weight, std=scale)
    return flow


@pytest.mark.parametrize('case', ['explodes', 'unreachable', 'crawls',
                                  'crawls-with-a-large-step-budget'])
def test_divergence_is_reported_within_a_few_hundred_evaluations(case):
    import time
    counter = EvaluationCount()
    start = time.time()
    with pytest.raises(ODESolveError, match='diverged'):
        if case == 'explodes':
            flow = _stiff_flow(1e8, 1e3, 0)
            flow.log_prob(Data(pos=torch.randn(16, 3)), trace='hutchinson',
                          counter=counter)
        elif case == 'unreachable':  # tolerances below float32 precision
            flow = ENFlow(3, hidden_channels=16, num_layers=2).eval()
            flow.log_prob(Data(pos=torch.randn(16, 3)), trace='hutchinson',
                          solver=SolverOptions(rtol=1e-14, atol=1e-14),
                          counter=counter)
        else:  # steps of 1e-5 that would take 60,000 evaluations (#32)
            flow = _stiff_flow(None, 1e3, 1)
            solver = SolverOptions(max_num_steps=10**6) \
                if case.endswith('budget') else None
            flow.sample(3, 4, solver=solver, counter=counter)
    assert counter.value < 2000
    assert time.time() - start < 30


def test_config_round_trip_gives_the_same_flow(generator):
    flow = make_flow(3, 2, num_radial=4, coords_range=None, graph=50.0,
                     hutchinson_noise='gaussian')
    config = flow.config()
    assert isinstance(config, ENFlowConfig)
    assert (config.num_radial, config.coords_range, config.graph,
            config.adjoint) == (4, None, 50.0, False)
    again = ENFlow.from_config(ENFlowConfig.from_dict(config.to_dict()))
    assert again.config() == config
    again.double().load_state_dict(flow.state_dict())
    pos, h, batch = mixed_batch([3, 4], 3, generator, 2)
    data = as_batch(pos, h, batch, 2)
    torch.testing.assert_close(again.log_prob(data), flow.log_prob(data),
                               rtol=0, atol=0)
    flow.adjoint = True  # the config follows the flow's switches
    assert flow.config().adjoint
    assert ENFlowConfig(3, 2).differences(config)[0] == (
        'adjoint', True, False)


def test_config_is_checked_and_custom_dynamics_have_none():
    for kwargs, message in ((dict(n_dims=0), "'n_dims' must be"),
                            (dict(n_dims=3, hidden_channels=0),
                             "'hidden_channels' must be"),
                            (dict(n_dims=3, adjoint=1), "'adjoint' must be"),
                            (dict(n_dims=3, aggr='max'), "'aggr' must be"),
                            (dict(n_dims=3, coords_norm=-1.0),
                             "'coords_norm' must be"),
                            (dict(n_dims=3, hutchinson_noise='uniform'),
                             "'hutchinson_noise' must be"),
                            (dict(n_dims=3, prediction='noise'),
                             "'prediction' must be one of")):
        with pytest.raises(ValueError, match=message):
            ENFlowConfig(**kwargs)
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['rtol'\]"):
        ENFlowConfig.from_dict(dict(n_dims=3, rtol=1e-4))
    assert ENFlowConfig(3, graph=5).graph == 5.0
    flow = ENFlow(2, dynamics=_Rotation())
    with pytest.raises(ValueError, match='custom dynamics'):
        flow.config()
    with pytest.raises(ValueError, match="'config' must be an ENFlowConfig"):
        ENFlow.from_config(dict(n_dims=3))


def test_model_from_config_rebuilds_a_flow(generator):
    from torch_enf.flows import FLOW_MODELS, model_config, model_from_config
    flow = make_flow(2)
    stored = model_config(flow)
    assert stored['name'] == 'enflow' and FLOW_MODELS['enflow'] is ENFlow
    assert stored['config'] == flow.config().to_dict()
    again = model_from_config(stored).double().eval()
    assert type(again) is ENFlow
    again.load_state_dict(flow.state_dict())
    pos, _, batch = mixed_batch([3, 4], 2, generator)
    data = as_batch(pos, None, batch, 0)
    torch.testing.assert_close(again.log_prob(data), flow.log_prob(data),
                               rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"Unknown flow model 'gnf' "
                       r"\(expected one of \['composition-flow', "
                       r"'conformer-flow', 'enflow', 'molecule-flow'\]"):
        model_from_config(dict(name='gnf', config={}))
    with pytest.raises(ValueError, match='Unknown flow model class'):
        model_config(torch.nn.Linear(2, 2))


def test_models_stored_before_a_field_existed_compare_with_its_default():
    from torch_enf.flows import canonical_model_config, model_config
    stored = model_config(make_flow(2))
    del stored['config']['prediction']
    assert canonical_model_config(stored) == model_config(make_flow(2))
    stored['config']['prediction'] = 'endpoint'
    assert canonical_model_config(stored) != model_config(make_flow(2))
    with pytest.raises(ValueError, match="Unknown flow model 'gnf'"):
        canonical_model_config(dict(name='gnf', config={}))


def test_flow_models_share_the_flow_model_interface(generator):
    from torch_enf.flows import FLOW_MODELS, FlowModel, model_config, \
        model_from_config
    assert all(issubclass(cls, FlowModel) for cls in FLOW_MODELS.values())

    class Incomplete(FlowModel):
        def log_prob(self, data, trace='exact', **options):
            return data.pos.new_zeros(data.num_graphs)
    with pytest.raises(TypeError, match='abstract'):
        Incomplete()
    with pytest.raises(TypeError, match='is not a FlowModel subclass'):
        FLOW_MODELS.register('linear')(torch.nn.Linear)

    # A user's subclass, registered, is stored and rebuilt under its name.
    class TemperedFlow(ENFlow):
        pass
    FLOW_MODELS.register('tempered-flow')(TemperedFlow)
    try:
        flow = TemperedFlow(2, hidden_channels=8, num_layers=1).double()
        stored = model_config(flow)
        assert stored['name'] == 'tempered-flow'
        again = model_from_config(stored).double()
        assert type(again) is TemperedFlow
        again.load_state_dict(flow.state_dict())
        pos, _, batch = mixed_batch([3, 4], 2, generator)
        data = as_batch(pos, None, batch, 0)
        # forward is log_prob, for hooks and DistributedDataParallel.
        torch.testing.assert_close(again(data), flow.log_prob(data),
                                   rtol=0, atol=0)
    finally:
        del FLOW_MODELS['tempered-flow']
