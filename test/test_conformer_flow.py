r"""Tests of :class:`torch_enf.flows.ConformerFlow`: the flow over the
conformations of one molecule with fixed atom types."""
import pytest
import torch
from torch_geometric.data import Batch, Data

from torch_enf.flows import (ConformerFlow, ConformerFlowConfig,
                             SolverOptions, model_config, model_from_config)
from torch_enf.objectives import FlowMatching
from torch_enf.testing import random_orthogonal

# Atoms 1, 2, 3 exchangeable (a methyl group's hydrogens), 0 and 4 not.
TYPES = (0, 1, 1, 1, 2)
SOLVER = SolverOptions('dopri5', 1e-7, 1e-7)


@pytest.fixture
def flow():
    torch.manual_seed(0)
    flow = ConformerFlow(TYPES, hidden_channels=16, num_layers=2).double()
    # A non-trivial field: scale up the (tiny) last layers of phi_x.
    with torch.no_grad():
        for name, p in flow.named_parameters():
            if 'coord_lin2' in name:
                p.mul_(300)
    return flow


def molecules(num: int) -> Batch:
    generator = torch.Generator().manual_seed(1)
    return Batch.from_data_list([
        Data(pos=torch.randn(len(TYPES), 3, generator=generator,
                             dtype=torch.float64)) for _ in range(num)])


def test_config_round_trip(flow):
    stored = model_config(flow)
    assert stored['name'] == 'conformer-flow'
    assert stored['config']['atom_types'] == list(TYPES)
    rebuilt = model_from_config(stored).double()
    assert rebuilt.config() == flow.config()
    rebuilt.load_state_dict(flow.state_dict())
    data = molecules(2)
    assert torch.equal(rebuilt.log_prob(data, solver=SOLVER),
                       flow.log_prob(data, solver=SOLVER))


def test_bad_configurations():
    with pytest.raises(ValueError, match='atom_types'):
        ConformerFlowConfig(atom_types=(0, ))
    with pytest.raises(ValueError, match='atom_types'):
        ConformerFlowConfig(atom_types=(0, -1, 2))
    with pytest.raises(ValueError, match='hidden_channels'):
        ConformerFlowConfig(atom_types=(0, 1), hidden_channels=0)


def test_density_symmetries(flow):
    data = molecules(1)
    log_p = flow.log_prob(data, solver=SOLVER)
    q = random_orthogonal(3, torch.Generator().manual_seed(2), True,
                          torch.float64)
    moved = Data(pos=data.pos @ q.t() + 3.0)
    assert torch.allclose(flow.log_prob(moved, solver=SOLVER), log_p,
                          atol=1e-6)
    # Swapping two hydrogens of the methyl group leaves the density alone;
    # swapping atoms of different types does not.
    same = Data(pos=data.pos[[0, 2, 1, 3, 4]])
    assert torch.allclose(flow.log_prob(same, solver=SOLVER), log_p,
                          atol=1e-6)
    other = Data(pos=data.pos[[4, 1, 2, 3, 0]])
    assert not torch.allclose(flow.log_prob(other, solver=SOLVER), log_p,
                              atol=1e-3)


def test_sampling_and_inverse(flow):
    samples = flow.sample(3, generator=torch.Generator().manual_seed(0),
                          solver=SOLVER)
    assert samples.num_graphs == 3 and samples.pos.shape == (15, 3)
    latent = flow.encode(samples, solver=SOLVER)
    back = flow.decode(latent.pos, batch=samples.batch, solver=SOLVER)
    assert torch.allclose(back.pos, samples.pos, atol=1e-5)


def test_wrong_sizes_are_refused(flow):
    with pytest.raises(ValueError, match='graph 1 has 4'):
        flow.log_prob(Batch.from_data_list([
            Data(pos=torch.randn(5, 3, dtype=torch.float64)),
            Data(pos=torch.randn(4, 3, dtype=torch.float64))]))
    with pytest.raises(ValueError, match="molecule's 5 atoms"):
        flow.sample(2, 6)


def test_flow_matching_permutes_within_types(flow):
    inputs = flow.flow_inputs(molecules(2))
    assert inputs.node_type.tolist() == list(TYPES) * 2
    loss = FlowMatching()(flow, molecules(4))
    assert loss.shape == (4, ) and bool(torch.isfinite(loss).all())
