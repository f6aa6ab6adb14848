r"""PyTorch 2 and PyG integration: torch.compile with fullgraph, bfloat16
autocast and PyG's Explainer on models built from EGCL."""
import pytest
import torch
from torch_geometric.explain import Explainer, GNNExplainer
from torch_geometric.explain.algorithm.utils import clear_masks, set_masks

from torch_enf.flows import EGNNDynamics
from torch_enf.nn import EGCL, EGNN, full_edge_index

BATCH = torch.repeat_interleave(torch.arange(3), torch.tensor([4, 5, 3]))
OTHER_BATCH = torch.repeat_interleave(torch.arange(2), torch.tensor([7, 6]))


def inputs(batch, channels, seed):
    generator = torch.Generator().manual_seed(seed)
    n = batch.numel()
    return (torch.randn(n, channels, generator=generator),
            torch.randn(n, 3, generator=generator), full_edge_index(batch))


def egcl():
    return EGCL(8, 16, edge_inference=True, coords_norm=1.0,
                coords_range=2.0), 8


def egnn():
    return EGNN(8, 16, num_layers=2, out_channels=4, edge_inference=True,
                coords_norm=1.0), 8


@pytest.mark.parametrize('make', [egcl, egnn], ids=['EGCL', 'EGNN'])
def test_compile_fullgraph_matches_eager(make):
    torch.manual_seed(0)
    module, channels = make()
    compiled = torch.compile(module, fullgraph=True, dynamic=True)
    for seed, batch in ((0, BATCH), (1, OTHER_BATCH)):  # sizes vary
        h, pos, edge_index = inputs(batch, channels, seed)
        for out, ref in zip(compiled(h, pos, edge_index),
                            module(h, pos, edge_index)):
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('options', [{}, {'cpp_wrapper': True}],
                         ids=['python-wrapper', 'cpp-wrapper'])
def test_compile_fullgraph_dynamics_matches_eager(options):
    # The C++ wrapper is what makes compiling pay off on tiny graphs (see
    # the benchmarks page); forward and backward must match eager with it.
    torch.manual_seed(0)
    dynamics = EGNNDynamics(3, 6, hidden_channels=16, num_layers=2)
    compiled = torch.compile(dynamics, fullgraph=True, dynamic=True,
                             options=options)
    h, pos, edge_index = inputs(BATCH, 6, 0)
    t = torch.full((BATCH.numel(), ), 0.3)  # per-node times
    outputs, grads = [], []
    for module in (compiled, dynamics):
        pos_leaf = pos.clone().requires_grad_()
        dpos, dh = module(t, pos_leaf, h, edge_index, BATCH)
        outputs.append((dpos, dh))
        grads.append(torch.autograd.grad(dpos.pow(2).sum() + dh.sum(),
                                         [pos_leaf, *dynamics.parameters()]))
    for out, ref in zip(*outputs):
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for out, ref in zip(*grads):
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize('make', [egcl, egnn], ids=['EGCL', 'EGNN'])
def test_bfloat16_autocast_forward_backward(make):
    torch.manual_seed(0)
    module, channels = make()
    h, pos, edge_index = inputs(BATCH, channels, 0)
    pos.requires_grad_()
    reference = module(h, pos, edge_index)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        h_out, pos_out = module(h, pos, edge_index)
        loss = h_out.float().pow(2).sum() + pos_out.pow(2).sum()
    loss.backward()
    # Positions stay float32 (the linear layers run in bf16).
    assert pos_out.dtype == torch.float32
    torch.testing.assert_close(pos_out, reference[1], atol=5e-2, rtol=5e-2)
    torch.testing.assert_close(h_out.float(), reference[0], atol=0.1,
                               rtol=0.1)
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for p in module.parameters() if p.requires_grad
               and p.grad is not None)
    assert torch.isfinite(pos.grad).all()


class EnergyModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = EGCL(4, 4, hidden_channels=16, edge_inference=True,
                         coords_norm=1.0)
        self.lin = torch.nn.Linear(4, 1)

    def forward(self, x, edge_index, pos):
        h, _ = self.conv(x, pos, edge_index)
        return self.lin(h).sum(0, keepdim=True)


def test_explainer_on_egcl():
    torch.manual_seed(0)
    model = EnergyModel()
    x, pos, edge_index = inputs(torch.zeros(6, dtype=torch.long), 4, 0)
    explainer = Explainer(model, algorithm=GNNExplainer(epochs=10),
                          explanation_type='model', edge_mask_type='object',
                          model_config=dict(mode='regression',
                                            task_level='graph',
                                            return_type='raw'))
    explanation = explainer(x, edge_index, pos=pos)
    assert explanation.edge_mask.shape == (edge_index.size(1), )
    assert torch.isfinite(explanation.edge_mask).all()
    # A zero mask removes every edge: no messages and no coordinate shift.
    set_masks(model, torch.zeros(edge_index.size(1)), edge_index,
              apply_sigmoid=False)
    h_masked, pos_masked = model.conv(x, pos, edge_index)
    clear_masks(model)
    assert torch.equal(pos_masked, pos)
    h_isolated, _ = model.conv(x, pos, edge_index[:, :0])
    torch.testing.assert_close(h_masked, h_isolated)
