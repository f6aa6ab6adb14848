r"""The same results on a GPU as on the CPU (skipped without CUDA): the code
is device-agnostic, so tensors follow the model's device."""
import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import Batch, Data

from torch_enf.flows import (ENFlow, EvaluationCount, MoleculeFlow,
                             NodeCountDistribution, SolverOptions)
from torch_enf.objectives import FlowMatching, flow_matching_loss
from torch_enf.training import fit

from .conftest import mixed_batch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason='needs CUDA')
CUDA = torch.device('cuda')


def molecules(generator, sizes=(3, 5, 4, 6)):
    data_list = []
    for size in sizes:
        types = torch.randint(0, 5, (size, ), generator=generator)
        h = torch.cat([F.one_hot(types, 5).float(),
                       torch.tensor([1.0, 6, 7, 8, 9])[types, None]], -1)
        data_list.append(Data(pos=torch.randn(size, 3, generator=generator),
                              h=h))
    return Batch.from_data_list(data_list)


def test_log_prob_and_sampling_match_the_cpu(generator):
    torch.manual_seed(0)
    flow = ENFlow(3, 2, hidden_channels=16, num_layers=2).double().eval()
    solver = SolverOptions(rtol=1e-8, atol=1e-8)
    pos, h, batch = mixed_batch([3, 5, 4], 3, generator, 2)
    data = Data(pos=pos, h=h, batch=batch)
    expected = flow.log_prob(data, solver=solver)
    flow_gpu = flow.to(CUDA)
    torch.testing.assert_close(
        flow_gpu.log_prob(data.to(CUDA), solver=solver).cpu(), expected,
        rtol=1e-6, atol=1e-6)
    counter = EvaluationCount()
    samples = flow_gpu.sample(2, [3, 4], counter=counter,
                              generator=torch.Generator(CUDA).manual_seed(0),
                              solver=SolverOptions('rk4', num_steps=5))
    assert samples.pos.device.type == 'cuda'
    assert counter.value == 20


def test_molecule_sampling_with_explicit_sizes_on_the_gpu():
    torch.manual_seed(0)
    model = MoleculeFlow(NodeCountDistribution.from_num_nodes([3, 4, 5, 6]),
                         hidden_channels=16, num_layers=2).to(CUDA).eval()
    samples = model.sample(3, torch.tensor([4, 6, 3], device=CUDA),
                           solver=SolverOptions('midpoint', num_steps=4))
    assert samples.pos.device.type == 'cuda'
    assert samples.ptr.diff().tolist() == [4, 6, 3]


def test_flow_matching_loss_matches_the_cpu(generator):
    torch.manual_seed(0)
    model = MoleculeFlow(NodeCountDistribution.from_num_nodes([3, 4, 5, 6]),
                         dequantizer='uniform', hidden_channels=16,
                         num_layers=2).double()
    data = molecules(generator)
    torch.manual_seed(1)
    inputs = model.flow_inputs(data)
    z_pos, z_h = model.sample_base(inputs.batch, inputs.num_graphs)
    t = torch.rand(inputs.num_graphs, dtype=torch.float64)
    expected = flow_matching_loss(model, inputs, z_pos, z_h, t)
    model = model.to(CUDA)
    on_gpu = flow_matching_loss(
        model, type(inputs)(*[x.to(CUDA) if torch.is_tensor(x) else x
                              for x in inputs]),
        z_pos.to(CUDA), z_h.to(CUDA), t.to(CUDA))
    torch.testing.assert_close(on_gpu.cpu(), expected)


def test_fit_with_bf16_autocast_on_cuda(tmp_path, generator):
    torch.manual_seed(0)
    model = MoleculeFlow(NodeCountDistribution.from_num_nodes([3, 4, 5, 6]),
                         dequantizer='uniform', hidden_channels=16,
                         num_layers=2).to(CUDA)
    loader = [molecules(generator) for _ in range(4)]
    state = fit(model, FlowMatching(), loader, str(tmp_path), epochs=2,
                ema_decay=0.9, autocast=torch.bfloat16, progress=False,
                log=lambda line: None)
    assert state.step == 8
    assert all(torch.isfinite(p).all() for p in model.parameters())
    samples = model.sample(4)
    assert samples.pos.device.type == 'cuda'
