r"""Tests of :class:`torch_enf.flows.CompositionFlow` and its parts: the
distribution over compositions and the flow conditioned on node inputs."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import Batch, Data

from torch_enf.flows import (CompositionDistribution, CompositionFlow,
                             CompositionFlowConfig, ENFlow, ENFlowConfig,
                             NodeCountDistribution, SolverOptions,
                             model_config, model_from_config)
from torch_enf.flows.composition import compositions_of
from torch_enf.objectives import FlowMatching
from torch_enf.testing import permutation_within_graphs, random_orthogonal

ATOMIC_NUMBERS = torch.tensor([1, 6, 7, 8, 9])
TIGHT = SolverOptions(rtol=1e-10, atol=1e-10)
# (types of the training molecules): sizes 3 and 4, five compositions
TRAINING = [[0, 0, 1], [1, 0, 0], [0, 1, 2], [0, 0, 1, 3], [1, 1, 0, 0],
            [0, 3, 3, 1], [2, 2, 0]]


def training_types():
    types = torch.tensor(sum(TRAINING, []))
    batch = torch.repeat_interleave(
        torch.arange(len(TRAINING)), torch.tensor([len(t) for t in
                                                   TRAINING]))
    return types, batch


def molecule(types, generator):
    types = torch.as_tensor(types)
    h = torch.cat([F.one_hot(types, 5).float(),
                   ATOMIC_NUMBERS[types, None].float()], dim=-1)
    pos = 1.5 * torch.randn(types.numel(), 3, generator=generator)
    return Data(pos=pos.double(), h=h.double(), z=ATOMIC_NUMBERS[types])


def make_model(smoothing=1e-2):
    types, batch = training_types()
    model = CompositionFlow(
        NodeCountDistribution.from_num_nodes([len(t) for t in TRAINING]),
        CompositionDistribution.from_types(types, batch, 5, smoothing),
        hidden_channels=8, num_layers=2, adjoint=False).double()
    for conv in model.flow.dynamics.egnn.convs:
        torch.nn.init.normal_(conv.coord_lin2.weight, std=0.2)
    return model


@pytest.mark.parametrize('num_atoms', [3, 4, 2])  # 2: no training molecule
def test_composition_distribution_sums_to_one_over_all_orders(num_atoms):
    types, batch = training_types()
    dist = CompositionDistribution.from_types(types, batch, 4, 0.05)
    every = torch.tensor(list(itertools.product(range(4),
                                                repeat=num_atoms)))
    graphs = torch.arange(every.size(0)).repeat_interleave(num_atoms)
    probs = dist.log_prob(every.view(-1), graphs, every.size(0)).exp()
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-12)
    # The orders of one composition are equally likely.
    comp = compositions_of(every.view(-1), graphs, every.size(0), 4)
    same = (comp == comp[0]).all(-1)
    assert torch.allclose(probs[same], probs[0])


def test_composition_distribution_log_prob_of_seen_and_unseen_formulas():
    types, batch = training_types()
    eps = 0.01
    dist = CompositionDistribution.from_types(types, batch, 5, eps)
    pi = torch.bincount(types, minlength=5).double() / types.numel()
    # C2H (types 0, 0, 1) is two of the four training molecules of 3 atoms.
    expected = math.log((1 - eps) * 2 / 4 / 3 + eps * float(
        pi[0] ** 2 * pi[1]))
    got = dist.log_prob(torch.tensor([1, 0, 0]), torch.zeros(3, dtype=int), 1)
    assert float(got) == pytest.approx(expected, rel=1e-12)
    # An unseen formula of seen types has only the smoothing's mass.
    unseen = dist.log_prob(torch.tensor([3, 3, 3]), torch.zeros(3, dtype=int),
                           1)
    assert float(unseen) == pytest.approx(math.log(eps * float(pi[3]) ** 3))
    with pytest.raises(ValueError, match=r'Graph 0 holds atom type\(s\) '
                       r'\[4\]'):
        dist.log_prob(torch.tensor([4, 0, 0]), torch.zeros(3, dtype=int), 1)


def test_composition_samples_follow_the_training_formulas():
    types, batch = training_types()
    dist = CompositionDistribution.from_types(types, batch, 5, 1e-6)
    generator = torch.Generator().manual_seed(0)
    sizes = torch.tensor([3] * 2000 + [4] * 2000)
    sampled = dist.sample(sizes, generator)
    graphs = torch.repeat_interleave(torch.arange(sizes.numel()), sizes)
    comp = compositions_of(sampled, graphs, sizes.numel(), 5)
    table = dist.compositions
    assert ((comp[:, None] == table).all(-1).any(-1)).all()
    # C2H is half of the training molecules of three atoms.
    c2h = torch.tensor([2, 1, 0, 0, 0])
    share = float((comp[:2000] == c2h).all(-1).double().mean())
    assert share == pytest.approx(0.5, abs=0.04)
    # The atoms of one molecule come in random order.
    firsts = sampled[torch.cat([torch.zeros(1, dtype=int),
                                sizes.cumsum(0)[:-1]])]
    assert len(set(firsts.tolist())) >= 3


def test_conditional_flow_matches_the_brute_force_jacobian(generator):
    flow = ENFlow(3, 0, hidden_channels=8, num_layers=2, adjoint=False,
                  context_channels=2).double()
    for conv in flow.dynamics.egnn.convs:
        torch.nn.init.normal_(conv.coord_lin2.weight, std=0.2)
    pos = torch.randn(4, 3, generator=generator, dtype=torch.float64)
    pos = pos - pos.mean(0)
    context = torch.tensor([[1., 0.], [0., 1.], [1., 0.], [0., 1.]],
                           dtype=torch.float64)
    batch = torch.zeros(4, dtype=torch.long)

    def flow_map(x):
        return flow._solve(x.view(4, 3), pos.new_zeros(4, 0), batch, 1, 0.0,
                           1.0, None, False, TIGHT,
                           context=context).pos.reshape(-1)

    jac = torch.autograd.functional.jacobian(flow_map, pos.reshape(-1))
    centring = torch.eye(4, dtype=torch.float64) - 0.25
    q, _ = torch.linalg.qr(centring[:, :3])
    basis = torch.kron(q.contiguous(), torch.eye(3, dtype=torch.float64))
    _, log_det = torch.linalg.slogdet(basis.t() @ jac @ basis)
    z = flow_map(pos.reshape(-1))
    expected = -0.5 * z.pow(2).sum() - 4.5 * math.log(2 * math.pi) + log_det
    log_prob = flow.log_prob(Data(pos=pos, x=context), solver=TIGHT)
    assert abs(float(log_det)) > 0.05
    torch.testing.assert_close(log_prob, expected.view(1), rtol=0, atol=1e-6)
    # The node inputs reach the field: other inputs, another density.
    other = flow.log_prob(Data(pos=pos, x=context.flip(-1)), solver=TIGHT)
    assert abs(float(other - log_prob)) > 1e-3
    with pytest.raises(ValueError, match='needs node inputs'):
        flow.log_prob(Data(pos=pos))


def test_log_prob_is_the_sum_of_its_exact_parts(generator):
    model = make_model()
    data = Batch.from_data_list([molecule(t, generator) for t in
                                 ([0, 0, 1, 3], [2, 2, 0], [0, 3, 1])])
    log_prob = model.log_prob(data, solver=TIGHT)
    types = data.h[:, :5].argmax(-1)
    sizes = data.ptr.diff()
    flow_part = model.flow.log_prob(
        Data(pos=data.pos, x=data.h[:, :5], batch=data.batch), solver=TIGHT)
    expected = flow_part + model.node_count.log_prob(sizes).double() + \
        model.composition.log_prob(types, data.batch, 3)
    torch.testing.assert_close(log_prob, expected)
    # Batched and one by one agree.
    single = torch.cat([model.log_prob(Batch.from_data_list([d]),
                                       solver=TIGHT)
                        for d in data.to_data_list()])
    torch.testing.assert_close(single, log_prob, rtol=1e-7, atol=1e-7)


def test_log_prob_is_invariant_to_isometries_and_atom_orders(generator):
    model = make_model()
    data = Batch.from_data_list([molecule(t, generator) for t in
                                 ([0, 0, 1, 3], [2, 2, 0])])
    log_prob = model.log_prob(data, solver=TIGHT)
    rotation = random_orthogonal(3, generator)
    perm = permutation_within_graphs(data.batch, generator)
    moved = data.clone()
    moved.pos = (data.pos @ rotation.t() + 3.0)[perm]
    moved.h = data.h[perm]
    torch.testing.assert_close(model.log_prob(moved, solver=TIGHT),
                               log_prob, rtol=1e-7, atol=1e-7)
    # Moving the atoms without their types changes the molecule.
    swapped = data.clone()
    swapped.pos = data.pos[perm]
    assert not torch.allclose(model.log_prob(swapped, solver=TIGHT),
                              log_prob, atol=1e-4)


def test_samples_have_training_compositions_and_round_trip(generator):
    model = make_model(smoothing=1e-9)
    samples = model.sample(40, generator=generator,
                           solver=SolverOptions('midpoint', num_steps=8))
    assert samples.num_graphs == 40
    assert set(samples.ptr.diff().tolist()) <= {3, 4}
    assert torch.equal(samples.z, ATOMIC_NUMBERS[samples.h[:, :5].argmax(-1)])
    comp = compositions_of(samples.h[:, :5].argmax(-1), samples.batch, 40, 5)
    assert ((comp[:, None] == model.composition.compositions).all(-1)
            .any(-1)).all()
    assert torch.isfinite(model.log_prob(samples,
                                         trace='hutchinson')).all()
    # encode is the inverse of the sampler's decode, given the types
    latent = model.encode(samples, solver=TIGHT)
    back = model.flow.decode(latent.pos, None, latent.batch, solver=TIGHT,
                             context=samples.h[:, :5])
    torch.testing.assert_close(back.pos, samples.pos, rtol=0, atol=1e-5)


def test_flow_matching_trains_the_conditional_flow(generator):
    model = make_model()
    data = Batch.from_data_list([molecule(t, generator) for t in TRAINING])
    objective = FlowMatching(generator=torch.Generator().manual_seed(1))
    loss = objective(model, data)
    assert loss.shape == (len(TRAINING), )
    loss.mean().backward()
    grads = [p.grad for p in model.flow.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().max()) > 0 for g in grads)
    # The alignment permutes atoms of one type only.
    inputs = model.flow_inputs(data)
    assert torch.equal(inputs.node_type, data.h[:, :5].argmax(-1))
    assert torch.equal(inputs.context, data.h[:, :5])


def test_config_round_trip(generator):
    model = make_model()
    data = Batch.from_data_list([molecule([0, 0, 1], generator)])
    stored = model_config(model)
    assert stored['name'] == 'composition-flow'
    rebuilt = model_from_config(stored).double()
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.config() == model.config()
    torch.testing.assert_close(rebuilt.log_prob(data, solver=TIGHT),
                               model.log_prob(data, solver=TIGHT))


def test_bad_inputs_are_named(generator):
    model = make_model()
    data = molecule([0, 0, 1], generator)
    data.h[1, :5] = torch.tensor([0.5, 0.5, 0, 0, 0], dtype=torch.float64)
    with pytest.raises(ValueError, match='atom 1 .*one-hot|one-hot.*atom 1'):
        model.log_prob(Batch.from_data_list([data]))
    with pytest.raises(ValueError, match="'pos' and 'h'"):
        model.log_prob(Batch.from_data_list([Data(pos=torch.randn(3, 3))]))
    with pytest.raises(ValueError, match='context_channels=5'):
        CompositionFlowConfig(ENFlowConfig(3, 6), max_num_nodes=4,
                              num_compositions=3)
    with pytest.raises(ValueError, match='smoothing'):
        CompositionDistribution(torch.zeros(1, 2), torch.ones(1),
                                torch.ones(2) / 2, smoothing=0)
