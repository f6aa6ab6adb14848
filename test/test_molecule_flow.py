import math

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import Batch, Data

from torch_enf.flows import (ENFlow, ENFlowConfig, EvaluationCount,
                             MoleculeFlow, MoleculeFlowConfig,
                             NodeCountDistribution, SolverOptions,
                             UniformDequantizer, VariationalDequantizer,
                             model_config, model_from_config)

ATOMIC_NUMBERS = torch.tensor([1, 6, 7, 8, 9])
SIZES = [3, 5, 4]
SOLVER = SolverOptions(rtol=1e-6, atol=1e-6)


def molecule(num_atoms, generator):
    types = torch.randint(0, 5, (num_atoms, ), generator=generator)
    h = torch.cat([F.one_hot(types, 5).float(),
                   ATOMIC_NUMBERS[types, None].float()], dim=-1)
    pos = 1.5 * torch.randn(num_atoms, 3, generator=generator)
    return Data(pos=pos - pos.mean(0), h=h, z=ATOMIC_NUMBERS[types])


def make_model(dequantizer='variational', actnorm=True):
    node_count = NodeCountDistribution.from_num_nodes(SIZES + [5, 5])
    flow = ENFlow(3, 6, hidden_channels=8, num_layers=1, adjoint=False)
    model = MoleculeFlow(node_count, flow, dequantizer=dequantizer,
                         actnorm=actnorm).double()
    for conv in model.flow.dynamics.egnn.convs:
        torch.nn.init.normal_(conv.coord_lin2.weight, std=0.2)
    return model


class NodeWiseNoise(VariationalDequantizer):
    r"""A variational dequantiser whose noise is a fixed function of each
    (centred) node, so batched and single evaluations see the same draw."""
    def forward(self, h, pos, batch=None, generator=None, noise=None):
        noise = torch.sin(7.0 * pos.pow(2).sum(-1, keepdim=True) +
                          torch.arange(6, dtype=pos.dtype))
        return super().forward(h, pos, batch, noise=noise)


def test_log_prob_per_graph_equals_one_by_one(generator):
    dequantizer = NodeWiseNoise(hidden_channels=8, num_layers=1)
    torch.nn.init.normal_(dequantizer.net.lin_out.weight, std=0.3)
    model = make_model(dequantizer).eval()
    data_list = [molecule(m, generator) for m in SIZES]
    model.initialize(Batch.from_data_list(data_list))
    batched = model.log_prob(Batch.from_data_list(data_list), solver=SOLVER)
    single = torch.cat([model.log_prob(Batch.from_data_list([data]),
                                       solver=SOLVER) for data in data_list])
    assert batched.shape == (len(SIZES), )
    assert torch.isfinite(batched).all()
    torch.testing.assert_close(single, batched, atol=1e-3, rtol=1e-4)


def test_log_prob_terms(generator):
    r"""With uniform dequantisation and no ActNorm the bound is
    log p(M) + log p_flow(x, (h + u) / a) - M sum(log a)."""
    model = make_model('uniform', actnorm=False).eval()
    data = molecule(4, generator)
    torch.manual_seed(1)
    total = model.log_prob(Batch.from_data_list([data]), solver=SOLVER)
    torch.manual_seed(1)
    h_cont, _ = UniformDequantizer().double()(
        data.h.double(), data.pos.double())
    scale = torch.tensor([4.0] * 5 + [10.0], dtype=torch.float64)
    flow = model.flow.log_prob(Data(pos=data.pos.double(),
                                    h=h_cont / scale), solver=SOLVER)
    expected = math.log(1 / 5) + float(flow) - 4 * float(scale.log().sum())
    assert float(total) == pytest.approx(expected, abs=1e-6)


def test_training_step_reaches_every_part(generator):
    model = make_model('variational', actnorm=True).train()
    batch = Batch.from_data_list([molecule(m, generator) for m in SIZES])
    log_prob, reg = model(batch, trace='hutchinson',
                          return_regularization=True)
    (-log_prob.mean() + 1e-3 * reg.mean()).backward()
    for name, part in (('dequantizer', model.dequantizer),
                       ('actnorm', model.actnorm), ('flow', model.flow)):
        grads = [p.grad for p in part.parameters() if p.grad is not None]
        assert any(float(g.abs().sum()) > 0 for g in grads), name
    # The posterior's mean/log-scale read-out always gets a gradient.
    assert model.dequantizer.net.lin_out.weight.grad.abs().sum() > 0


def test_sample_gives_valid_molecules():
    model = make_model().eval()
    generator = torch.Generator().manual_seed(0)
    samples = model.sample(6, generator=generator)
    sizes = torch.diff(samples.ptr)
    assert samples.num_graphs == 6
    assert set(sizes.tolist()) <= {3, 4, 5}
    assert set(samples.z.tolist()) <= set(ATOMIC_NUMBERS.tolist())
    one_hot = samples.h[:, :5]
    assert torch.equal(one_hot.sum(-1), torch.ones(len(samples.z),
                                                   dtype=one_hot.dtype))
    torch.testing.assert_close(ATOMIC_NUMBERS[one_hot.argmax(-1)].to(
        samples.z.dtype), samples.z)
    assert torch.equal(samples.h[:, 5], samples.h[:, 5].floor())
    assert samples.pos.shape == (len(samples.z), 3)


def test_to_molecules_inverts_flow_inputs(generator):
    model = make_model(actnorm=True).eval()
    data = Batch.from_data_list([molecule(m, generator) for m in SIZES])
    model.initialize(data)
    inputs = model.flow_inputs(data)
    assert not torch.equal(inputs.h, data.h.double())  # dequantised
    molecules = model.to_molecules(inputs.pos, inputs.h, SIZES)
    assert torch.equal(molecules.ptr, data.ptr)
    torch.testing.assert_close(molecules.h, data.h.double())
    assert torch.equal(molecules.z, data.z)
    # float32 data, centred again in float64
    torch.testing.assert_close(molecules.pos, data.pos.double(), rtol=0,
                               atol=1e-6)
    with pytest.raises(ValueError, match="'sizes' add up to 11 atoms"):
        model.to_molecules(inputs.pos, inputs.h, [3, 4, 4])


def test_sample_temperature_reaches_the_flow():
    model = make_model().eval()
    default = model.sample(4, generator=torch.Generator().manual_seed(2))
    same = model.sample(4, generator=torch.Generator().manual_seed(2),
                        temperature=1.0)
    cold = model.sample(4, generator=torch.Generator().manual_seed(2),
                        temperature=0.5)
    torch.testing.assert_close(same.pos, default.pos)
    assert torch.equal(cold.ptr, default.ptr)  # the same sizes
    assert cold.pos.norm() < default.pos.norm()
    with pytest.raises(ValueError, match="'temperature'"):
        model.sample(4, temperature=0.0)


def test_dequantizer_by_name_with_arguments():
    model = MoleculeFlow(NodeCountDistribution.from_num_nodes([3]),
                         dequantizer='argmax', dequantizer_margin=2.0,
                         hidden_channels=8, num_layers=1)
    assert type(model.dequantizer).__name__ == 'ArgmaxDequantizer'
    assert model.dequantizer.margin == 2.0
    assert model.dequantizer.num_classes == 5


def test_bad_inputs(generator):
    model = make_model()
    data = molecule(4, generator)
    with pytest.raises(ValueError, match="'h'"):
        model.log_prob(Batch.from_data_list([Data(pos=data.pos)]))
    with pytest.raises(ValueError, match='one-hot'):
        model.log_prob(Batch.from_data_list([Data(pos=data.pos,
                                                  h=2 * data.h)]))
    with pytest.raises(ValueError, match='probability'):
        model.log_prob(Batch.from_data_list([molecule(7, generator)]))
    with pytest.raises(ValueError, match='fewer than 2'):
        MoleculeFlow(NodeCountDistribution.from_num_nodes([1, 3]))
    with pytest.raises(ValueError, match='dequantizer'):
        MoleculeFlow(NodeCountDistribution.from_num_nodes([3]),
                     dequantizer='gumbel')
    with pytest.raises(ValueError, match="needs the dequantizer by name"):
        MoleculeFlow(NodeCountDistribution.from_num_nodes([3]),
                     dequantizer=UniformDequantizer(5),
                     dequantizer_margin=1.0)
    with pytest.raises(ValueError, match="'dequantizer_margin' applies to "
                       "the threshold dequantizers, not 'uniform'"):
        MoleculeFlow(NodeCountDistribution.from_num_nodes([3]),
                     dequantizer='uniform', dequantizer_margin=1.0)
    with pytest.raises(ValueError, match=r'Graphs \[1\] have fewer than 2'):
        model.log_prob(Batch.from_data_list([
            data, Data(pos=torch.zeros(0, 3), h=torch.zeros(0, 6),
                       z=torch.zeros(0, dtype=torch.long))]))
    with pytest.raises(ValueError, match='node_channels'):
        MoleculeFlow(NodeCountDistribution.from_num_nodes([3]),
                     ENFlow(3, 2, hidden_channels=8, num_layers=1))
    with pytest.raises(ValueError, match='feature_scale'):
        MoleculeFlow(NodeCountDistribution.from_num_nodes([3]),
                     feature_scale=[1.0, 0.0, 1, 1, 1, 1],
                     hidden_channels=8, num_layers=1)
    with pytest.raises(ValueError, match='num_samples'):
        model.sample(0)


def test_sample_with_explicit_sizes_and_a_solver():
    model = make_model().eval()
    counter = EvaluationCount()
    euler = SolverOptions('euler', num_steps=4)
    samples = model.sample(3, [5, 2, 4], generator=torch.Generator(),
                           solver=euler, counter=counter)
    assert samples.ptr.diff().tolist() == [5, 2, 4]  # 2 atoms: p(M) = 0
    assert counter.value == 4
    assert set(samples.z.tolist()) <= set(ATOMIC_NUMBERS.tolist())
    assert model.sample(2, 3).ptr.diff().tolist() == [3, 3]
    with pytest.raises(ValueError, match="'num_samples'=2 sizes"):
        model.sample(2, [3, 4, 5])


def test_encode_and_decode_are_inverse(generator):
    model = make_model('argmax', actnorm=True).eval()
    data = Batch.from_data_list([molecule(m, generator) for m in SIZES])
    model.initialize(data)
    counter = EvaluationCount()
    latent = model.encode(data, solver=SOLVER, counter=counter)
    assert latent.log_det.shape == (3, ) and counter.value > 0
    molecules = model.decode(latent.pos, latent.h, latent.batch,
                             solver=SOLVER, counter=counter)
    assert torch.equal(molecules.ptr, data.ptr)
    assert torch.equal(molecules.z, data.z)
    torch.testing.assert_close(molecules.h, data.h.double())
    torch.testing.assert_close(molecules.pos, data.pos.double(), rtol=0,
                               atol=1e-4)


@pytest.mark.parametrize('dequantizer', ['variational', 'argmax'])
def test_config_round_trip_and_model_from_config(dequantizer, generator):
    model = MoleculeFlow(NodeCountDistribution.from_num_nodes(SIZES),
                         dequantizer=dequantizer, dequantizer_margin=0.5,
                         actnorm=True, feature_scale=[2.0] * 5 + [8.0],
                         hidden_channels=8, num_layers=1).double().eval()
    data = Batch.from_data_list([molecule(m, generator) for m in SIZES])
    model.initialize(data)
    config = model.config()
    assert config == MoleculeFlowConfig(
        flow=ENFlowConfig(3, 6, 8, 1), max_num_nodes=5,
        dequantizer=dequantizer, dequantizer_margin=0.5,
        feature_scale=(2.0, ) * 5 + (8.0, ), actnorm=True)
    stored = model_config(model)
    assert stored == dict(name='molecule-flow', config=config.to_dict())
    # Without a node count, a placeholder of the right size that the state
    # dict overwrites.
    again = model_from_config(stored).double().eval()
    assert type(again) is MoleculeFlow and again.config() == config
    assert not torch.equal(again.node_count.probs, model.node_count.probs)
    again.load_state_dict(model.state_dict())
    assert torch.equal(again.node_count.probs, model.node_count.probs)
    for other in (model, again):
        torch.manual_seed(3)
        values = other.log_prob(data)
    torch.manual_seed(3)
    torch.testing.assert_close(model.log_prob(data), values, rtol=0, atol=0)
    node_count = NodeCountDistribution.from_num_nodes(SIZES)
    assert torch.equal(MoleculeFlow.from_config(
        config, node_count).node_count.probs, node_count.probs)
    with pytest.raises(ValueError, match='support up to 4 atoms'):
        MoleculeFlow.from_config(
            config, NodeCountDistribution.from_num_nodes([3, 4]))


def test_molecule_flow_config_is_checked():
    flow = ENFlowConfig(3, 6)
    with pytest.raises(ValueError, match="'flow.node_channels' must equal "
                       "the feature width 4 .3 one-hot classes"):
        MoleculeFlowConfig(flow, 9, atomic_numbers=(1, 6, 8))
    for kwargs, message in ((dict(max_num_nodes=1), "'max_num_nodes'"),
                            (dict(dequantizer='gumbel'), 'Unknown dequant'),
                            (dict(dequantizer_margin=-1.0),
                             "'dequantizer_margin'"),
                            (dict(feature_scale=(1.0, ) * 5),
                             "'feature_scale' must hold 6"),
                            (dict(atomic_numbers=(1, 6, 0, 7, 8)),
                             "'atomic_numbers'")):
        with pytest.raises(ValueError, match=message):
            MoleculeFlowConfig(**dict(dict(flow=flow, max_num_nodes=9),
                                      **kwargs))
    config = MoleculeFlowConfig(flow, 9)
    assert MoleculeFlowConfig.from_dict(config.to_dict()) == config
    model = MoleculeFlow(NodeCountDistribution.from_num_nodes([3]),
                         dequantizer=UniformDequantizer(5),
                         hidden_channels=8, num_layers=1)
    with pytest.raises(ValueError, match='dequantizer instance'):
        model.config()
