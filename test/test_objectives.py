r"""Training objectives: equivariant OT alignment, flow matching (its
symmetries, reproducibility, and that it trains a flow whose exact
likelihood improves), maximum likelihood, the registries and bad input."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import Batch, Data

from torch_enf.flows import (DEQUANTIZERS, Dequantizer, ENFlow, MoleculeFlow,
                             NodeCountDistribution, SolverOptions,
                             UniformDequantizer, register_dequantizer)
from torch_enf.objectives import (OBJECTIVES, TRAINING_SOLVER, FlowMatching,
                                  MaximumLikelihood, Objective,
                                  align_base_samples, kabsch, match_graphs,
                                  objective_from_config, objective_from_name,
                                  optimal_permutation, register_objective,
                                  transport_cost)
from torch_enf.utils import center_pos

from torch_enf.testing import permutation_within_graphs, random_orthogonal

from .conftest import mixed_batch


def centred_batch(sizes, n_dims, generator, channels=0):
    pos, h, batch = mixed_batch(sizes, n_dims, generator, channels)
    return center_pos(pos, batch), h, batch


def small_flow(n_dims=3, channels=0):
    torch.manual_seed(0)
    return ENFlow(n_dims, channels, hidden_channels=16, num_layers=2).double()


# Alignment ------------------------------------------------------------------

def test_kabsch_recovers_an_orthogonal_map(generator):
    x, _, batch = centred_batch([5, 7], 3, generator)
    maps = [random_orthogonal(3, generator, reflect=r) for r in (True, False)]
    z = torch.cat([x[batch == g] @ maps[g] for g in range(2)])  # R^T x
    rotation = kabsch(x, z, batch, 2)
    for g in range(2):
        torch.testing.assert_close(rotation[g], maps[g])


@pytest.mark.parametrize('with_types', [False, True])
def test_alignment_never_increases_the_cost(generator, with_types):
    sizes = [3, 9, 6, 12]
    x, h, batch = centred_batch(sizes, 3, generator, channels=2)
    z, z_h, _ = centred_batch(sizes, 3, generator, channels=2)
    node_type = torch.randint(0, 3, (batch.numel(), ), generator=generator) \
        if with_types else None
    before = transport_cost(x, z, batch, 4, h, z_h)
    perm = optimal_permutation(x, z, batch, 4, h, z_h, node_type)
    after_perm = transport_cost(x, z[perm], batch, 4, h, z_h[perm])
    assert bool((after_perm <= before + 1e-12).all())
    aligned, aligned_h = align_base_samples(x, z, batch, 4, h, z_h,
                                            node_type, iterations=4)
    after = transport_cost(x, aligned, batch, 4, h, aligned_h)
    assert bool((after <= after_perm + 1e-12).all())
    assert float(after.sum()) < 0.8 * float(before.sum())
    # The aligned base sample keeps its shape: centred, same pair distances
    # up to the permutation.
    torch.testing.assert_close(center_pos(aligned, batch), aligned)
    assert torch.equal(perm.sort().values, torch.arange(batch.numel()))
    assert bool((batch[perm] == batch).all())  # stays inside its graph


def test_permutation_respects_atom_types(generator):
    sizes = [8, 10]
    x, _, batch = centred_batch(sizes, 3, generator)
    z, _, _ = centred_batch(sizes, 3, generator)
    node_type = torch.randint(0, 3, (batch.numel(), ), generator=generator)
    perm = optimal_permutation(x, z, batch, 2, node_type=node_type)
    assert torch.equal(node_type[perm], node_type)
    # Brute force on a small graph: the Hungarian optimum is optimal.
    x1, z1 = x[:8], z[:8]
    cost = torch.cdist(x1, z1).pow(2)
    best = min(float(cost[torch.arange(8), torch.tensor(p)].sum())
               for p in _permutations_within(node_type[:8]))
    assert float(cost[torch.arange(8), perm[:8]].sum()) == pytest.approx(best)


def _permutations_within(types):
    import itertools
    groups = [torch.nonzero(types == t).view(-1).tolist()
              for t in types.unique()]
    for choice in itertools.product(*[itertools.permutations(g)
                                      for g in groups]):
        perm = [0] * types.numel()
        for group, image in zip(groups, choice):
            for i, j in zip(group, image):
                perm[i] = j
        yield perm


@pytest.mark.parametrize('with_types', [False, True])
def test_small_graphs_brute_force_equals_hungarian(generator, monkeypatch,
                                                   with_types):
    from torch_enf.objectives import alignment
    sizes = [2, 3, 4, 5, 5, 4, 6]
    x, h, batch = centred_batch(sizes, 3, generator, channels=1)
    z, z_h, _ = centred_batch(sizes, 3, generator, channels=1)
    node_type = torch.randint(0, 2, (batch.numel(), ), generator=generator) \
        if with_types else None
    brute = optimal_permutation(x, z, batch, 7, h, z_h, node_type)
    monkeypatch.setattr(alignment, 'BRUTE_FORCE_MAX_NODES', 0)
    hungarian = optimal_permutation(x, z, batch, 7, h, z_h, node_type)
    torch.testing.assert_close(
        transport_cost(x, z[brute], batch, 7, h, z_h[brute]),
        transport_cost(x, z[hungarian], batch, 7, h, z_h[hungarian]))
    if with_types:
        assert torch.equal(node_type[brute], node_type)


def test_permuted_data_get_permuted_pairs(generator):
    sizes = [6, 9]
    x, h, batch = centred_batch(sizes, 3, generator, channels=1)
    z, z_h, _ = centred_batch(sizes, 3, generator, channels=1)
    perm = permutation_within_graphs(batch, generator)
    aligned, aligned_h = align_base_samples(x, z, batch, 2, h, z_h)
    aligned_p, aligned_h_p = align_base_samples(x[perm], z, batch, 2,
                                                h[perm], z_h)
    torch.testing.assert_close(aligned_p, aligned[perm])
    torch.testing.assert_close(aligned_h_p, aligned_h[perm])


def test_minibatch_matching_swaps_whole_graphs_of_equal_size(generator):
    sizes = [4, 5, 4, 4, 5, 3]
    x, _, batch = centred_batch(sizes, 3, generator)
    z, z_h, _ = centred_batch(sizes, 3, generator, channels=2)
    z = z * torch.linspace(0.5, 2.0, batch.numel()).unsqueeze(-1)
    matched, matched_h = match_graphs(x, z, batch, len(sizes), z_h)
    graphs_z = [z[batch == g] for g in range(len(sizes))]
    for g in range(len(sizes)):
        block = matched[batch == g]
        sources = [k for k, other in enumerate(graphs_z)
                   if other.shape == block.shape and torch.equal(other, block)]
        assert len(sources) == 1 and sizes[sources[0]] == sizes[g]
        torch.testing.assert_close(matched_h[batch == g],
                                   z_h[batch == sources[0]])

    def radius_cost(base):
        total = 0.0
        for g in range(len(sizes)):
            rx = x[batch == g].norm(dim=-1).sort().values
            rz = base[batch == g].norm(dim=-1).sort().values
            total += float((rx - rz).pow(2).sum())
        return total

    assert radius_cost(matched) <= radius_cost(z) + 1e-12


# Flow matching --------------------------------------------------------------

def fm_loss(flow, pos, batch, h=None, seed=7, **kwargs):
    data = Data(pos=pos, batch=batch) if h is None else \
        Data(pos=pos, h=h, batch=batch)
    torch.manual_seed(seed)
    return FlowMatching(**kwargs)(flow, data)


@pytest.mark.parametrize('kwargs', [dict(), dict(align=False),
                                    dict(sigma=0.1, minibatch_ot=True,
                                         time_exponent=2.0)])
def test_flow_matching_is_translation_invariant_and_reproducible(
        generator, kwargs):
    flow = small_flow(3, 2)
    pos, h, batch = mixed_batch([4, 6, 4], 3, generator, 2)
    loss = fm_loss(flow, pos, batch, h, **kwargs)
    assert loss.shape == (3, )
    torch.testing.assert_close(fm_loss(flow, pos, batch, h, **kwargs), loss,
                               rtol=0, atol=0)
    shifted = pos + torch.tensor([3.0, -1.0, 2.0], dtype=pos.dtype)
    torch.testing.assert_close(fm_loss(flow, shifted, batch, h, **kwargs),
                               loss)
    generator_loss = FlowMatching(generator=torch.Generator().manual_seed(1),
                                  **kwargs)
    again = FlowMatching(generator=torch.Generator().manual_seed(1), **kwargs)
    data = Data(pos=pos, h=h, batch=batch)
    torch.testing.assert_close(generator_loss(flow, data), again(flow, data),
                               rtol=0, atol=0)


def test_flow_matching_is_permutation_invariant_with_alignment(generator):
    flow = small_flow(3, 2)
    pos, h, batch = mixed_batch([5, 7], 3, generator, 2)
    perm = permutation_within_graphs(batch, generator)
    torch.testing.assert_close(fm_loss(flow, pos[perm], batch, h[perm]),
                               fm_loss(flow, pos, batch, h))


@pytest.mark.parametrize('align', [True, False])
def test_flow_matching_rotation_moves_to_the_base_sample(generator, align,
                                                         monkeypatch):
    r"""The loss of rotated data with base sample z equals the loss of the
    data with base sample R^T z; as z and R^T z are equally likely, the
    expected loss is rotation and reflection invariant."""
    flow = small_flow(3, 1)
    pos, h, batch = centred_batch([4, 6], 3, generator, 1)
    q = random_orthogonal(3, generator)
    z_pos, z_h = flow.sample_base(batch, 2, generator)

    def loss(data_pos, base_pos):
        monkeypatch.setattr(flow, 'sample_base',
                            lambda *args: (base_pos, z_h))
        return fm_loss(flow, data_pos, batch, h, align=align)

    torch.testing.assert_close(loss(pos @ q.t(), z_pos), loss(pos, z_pos @ q))


def test_flow_matching_trains_the_likelihood():
    r"""A few hundred flow-matching steps on a toy system (noisy triangles in
    2D) lower the exact NLL of held-out data by a wide margin, and the
    trained flow samples and evaluates through its ordinary methods."""
    generator = torch.Generator().manual_seed(0)
    triangle = torch.tensor([[0.0, 1.0], [-0.87, -0.5], [0.87, -0.5]])

    def draw(num):
        pos = triangle + 0.05 * torch.randn(num, 3, 2, generator=generator)
        angle = 2 * math.pi * torch.rand(num, generator=generator)
        rot = torch.stack([torch.stack([angle.cos(), -angle.sin()], -1),
                           torch.stack([angle.sin(), angle.cos()], -1)], -2)
        pos = pos @ rot.transpose(-1, -2)
        return Batch.from_data_list([Data(pos=p) for p in pos])

    torch.manual_seed(0)
    flow = ENFlow(2, hidden_channels=32, num_layers=3)
    test = draw(200)
    flow.eval()
    before = float(-flow.log_prob(test).mean())
    flow.train()
    objective = FlowMatching()
    optimizer = torch.optim.Adam(flow.parameters(), lr=2e-3)
    for _ in range(300):
        loss = objective(flow, draw(64)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    flow.eval()
    after = float(-flow.log_prob(test).mean())
    assert after < before - 3.0, (before, after)
    samples = flow.sample(100, 3)
    sides = (samples.pos.view(100, 3, 1, 2) -
             samples.pos.view(100, 1, 3, 2)).norm(dim=-1)
    # Most sampled triangles have sides close to the data's 1.73.
    assert float((sides[:, [0, 0, 1], [1, 2, 2]] - 1.73).abs().median()) \
        < 0.2


def test_flow_matching_on_molecules(generator):
    node_count = NodeCountDistribution.from_num_nodes([3, 4, 5])
    types = torch.randint(0, 5, (12, ), generator=generator)
    h = torch.cat([F.one_hot(types, 5).float(),
                   torch.tensor([1.0, 6, 7, 8, 9])[types, None]], -1)
    pos = torch.randn(12, 3, generator=generator)
    batch = torch.tensor([0] * 3 + [1] * 4 + [2] * 5)
    data = Data(pos=pos, h=h, batch=batch)
    torch.manual_seed(0)
    model = MoleculeFlow(node_count, dequantizer='uniform', actnorm=True,
                         hidden_channels=8, num_layers=1)
    model.initialize(data)
    loss = FlowMatching()(model, data)
    assert loss.shape == (3, ) and bool(torch.isfinite(loss).all())
    loss.mean().backward()
    assert model.flow.dynamics.egnn.lin_in.weight.grad is not None
    assert model.actnorm.pos_log_scale.grad is None  # data side held fixed
    inputs = model.flow_inputs(data)
    assert torch.equal(inputs.node_type, types)
    variational = MoleculeFlow(node_count, dequantizer='variational',
                               hidden_channels=8, num_layers=1)
    with pytest.raises(ValueError, match="dequantizer='uniform'"):
        FlowMatching()(variational, data)


def test_flow_matching_rejects_bad_input(generator):
    flow = small_flow(3, 0)
    pos, _, batch = mixed_batch([3, 1, 4], 3, generator)
    with pytest.raises(ValueError, match=r'Graphs \[1\] have fewer than 2'):
        fm_loss(flow, pos, batch)
    pos, _, batch = mixed_batch([3, 4, 4], 3, generator)
    pos[5, 1] = float('nan')
    with pytest.raises(ValueError, match=r'non-finite.*graph\(s\) \[1\]'):
        fm_loss(flow, pos, batch)
    feature_flow = small_flow(3, 2)
    with pytest.raises(ValueError, match=r"'h' must have shape \[11, 2\]"):
        fm_loss(feature_flow, pos.nan_to_num(), batch,
                torch.zeros(11, 3, dtype=pos.dtype))
    with pytest.raises(TypeError, match='flow_inputs'):
        FlowMatching()(torch.nn.Linear(2, 2), Data(pos=pos))
    for kwargs in (dict(sigma=-1.0), dict(sigma=math.inf),
                   dict(align_iterations=0), dict(align_iterations=True),
                   dict(time_exponent=0.0), dict(time_exponent=math.nan),
                   dict(endpoint_weight=0.0), dict(endpoint_weight=1.5)):
        with pytest.raises(ValueError):
            FlowMatching(**kwargs)
    # NumPy scalars are numbers like any other.
    FlowMatching(sigma=np.float32(0.1), align_iterations=np.int64(2))
    with pytest.raises(ValueError, match="'regularization_weight'"):
        MaximumLikelihood(regularization_weight=math.inf)


# Maximum likelihood and the registries ---------------------------------------

def test_maximum_likelihood_is_the_negative_log_prob(generator):
    flow = small_flow(2, 0).eval()
    pos, _, batch = mixed_batch([3, 4], 2, generator)
    data = Data(pos=pos, batch=batch)
    torch.testing.assert_close(MaximumLikelihood(trace='exact')(flow, data),
                               -flow.log_prob(data, solver=TRAINING_SOLVER))
    # The objective's own solver, in either mode of the model.
    euler = SolverOptions('euler', num_steps=3)
    for mode in (True, False):
        torch.testing.assert_close(
            MaximumLikelihood(trace='exact', solver=euler)(
                flow.train(mode), data),
            -flow.log_prob(data, solver=euler), rtol=0, atol=0)
    assert not torch.allclose(-flow.log_prob(data, solver=euler),
                              -flow.log_prob(data))
    torch.manual_seed(1)
    log_prob, reg = flow.log_prob(data, trace='hutchinson',
                                  solver=TRAINING_SOLVER,
                                  return_regularization=True)
    torch.manual_seed(1)
    loss = MaximumLikelihood(0.5)(flow, data)
    torch.testing.assert_close(loss, -log_prob + 0.5 * reg)
    with pytest.raises(ValueError):
        MaximumLikelihood(-1.0)
    with pytest.raises(ValueError, match="'solver' must be a SolverOptions"):
        MaximumLikelihood(solver=dict(rtol=1e-4))


def test_objective_registry():
    assert OBJECTIVES['fm'] is FlowMatching
    assert OBJECTIVES['ml'] is MaximumLikelihood
    objective = objective_from_name('fm', sigma=0.1)
    assert objective.config() == dict(name='fm', sigma=0.1, align=True,
                                      align_iterations=3, minibatch_ot=False,
                                      time_exponent=1.0, endpoint_weight=None)
    assert 'FlowMatching(sigma=0.1' in repr(objective)
    with pytest.raises(ValueError, match="Unknown objective 'kl'"):
        objective_from_name('kl')
    with pytest.raises(ValueError, match=r"Unknown objective 'kl' \(expected"):
        objective_from_config(dict(name='kl'))
    with pytest.raises(ValueError, match=r"Unknown option\(s\) \['tol'\]"):
        objective_from_config(dict(name='ml', tol=1e-4))

    @register_objective('test-zero')
    class Zero(Objective):
        def __call__(self, model, data):
            return data.pos.new_zeros(1)

    try:
        assert objective_from_name('test-zero').config() == dict(
            name='test-zero')
        with pytest.raises(ValueError, match='registered already'):
            register_objective('test-zero')(Zero)
    finally:
        del OBJECTIVES['test-zero']
    with pytest.raises(TypeError):
        register_objective('not-an-objective')(int)


def test_dequantizer_registry():
    assert DEQUANTIZERS['uniform'] is UniformDequantizer
    assert not UniformDequantizer().trainable
    assert DEQUANTIZERS['variational']().trainable

    @register_dequantizer('test-shifted')
    class Shifted(UniformDequantizer):
        pass

    try:
        model = MoleculeFlow(NodeCountDistribution.from_num_nodes([3]),
                             dequantizer='test-shifted', hidden_channels=8,
                             num_layers=1)
        assert isinstance(model.dequantizer, Shifted)
        assert isinstance(model.dequantizer, Dequantizer)
    finally:
        del DEQUANTIZERS['test-shifted']
    with pytest.raises(ValueError, match="Unknown dequantizer 'gumbel'"):
        MoleculeFlow(NodeCountDistribution.from_num_nodes([3]),
                     dequantizer='gumbel')


def test_time_exponent_moves_the_times_towards_the_data(generator,
                                                        monkeypatch):
    flow = small_flow(2, 0)
    pos, _, batch = mixed_batch([3] * 2000, 2, generator)
    seen = {}

    def velocity(t, pos, h, batch, num_graphs):
        seen['t'] = t
        return torch.zeros_like(pos), torch.zeros_like(h)

    monkeypatch.setattr(flow, 'velocity', velocity)
    for exponent in (1.0, 3.0):
        fm_loss(flow, pos, batch, align=False, time_exponent=exponent)
        # E[u^k] = 1 / (k + 1) for u ~ U[0, 1]
        assert float(seen['t'].mean()) == pytest.approx(1 / (exponent + 1),
                                                        abs=0.02)


def test_endpoint_weight_is_the_error_of_the_predicted_clean_graph(
        generator, monkeypatch):
    flow = small_flow(3, 2)
    pos, h, batch = mixed_batch([4, 6, 5, 3], 3, generator, 2)
    seen = {}
    velocity = flow.velocity

    def spy(t, *args):
        seen['t'], seen['inputs'] = t, args[:2]
        seen['v'] = velocity(t, *args)
        return seen['v']

    monkeypatch.setattr(flow, 'velocity', spy)
    plain = fm_loss(flow, pos, batch, h)
    weighted = fm_loss(flow, pos, batch, h, endpoint_weight=0.3)
    t = seen['t'][batch.new_tensor([0, 4, 10, 15])]
    torch.testing.assert_close(weighted, plain * t.clamp_min(0.3) ** 2)
    # Above the floor: || x_t - t f(x_t) - x ||^2 per degree of freedom.
    s = seen['t'].unsqueeze(-1)
    centred = center_pos(pos, batch, 4)
    error = (seen['inputs'][0] - s * seen['v'][0] - centred).pow(2).sum(-1) \
        + (seen['inputs'][1] - s * seen['v'][1] - h).pow(2).sum(-1)
    sizes = torch.tensor([4.0, 6.0, 5.0, 3.0], dtype=pos.dtype)
    endpoint = torch.zeros(4, dtype=pos.dtype).index_add_(0, batch, error) \
        / ((sizes - 1) * 3 + sizes * 2)
    above = t >= 0.3
    assert above.any()
    torch.testing.assert_close(weighted[above], endpoint[above])


@pytest.mark.parametrize('objective', [
    MaximumLikelihood(),
    MaximumLikelihood(0.1, 'exact', SolverOptions('midpoint', num_steps=8)),
    FlowMatching(sigma=0.05, align=False, time_exponent=2.0),
    FlowMatching(endpoint_weight=0.2),
])
def test_objective_config_is_plain_data_and_round_trips(objective):
    import json
    stored = objective.config()
    assert json.loads(json.dumps(stored)) == stored
    again = objective_from_config(stored)
    assert type(again) is type(objective)
    assert again.config() == stored
    if isinstance(objective, MaximumLikelihood):
        assert stored['solver'] == objective.solver.to_dict()
        assert again.solver == objective.solver
    assert MaximumLikelihood().solver == SolverOptions(rtol=1e-4, atol=1e-4)
