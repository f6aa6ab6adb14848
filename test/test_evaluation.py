r"""Likelihoods of lists and loaders of graphs: stiff graphs are solved
apart from their batch, the values agree with batched :meth:`log_prob` in
input order, and a graph whose own solve fails is named."""
import math

import pytest
import torch
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from torch_enf.evaluation import evaluate_nll, log_prob_of_graphs
from torch_enf.flows import ENFlow, EvaluationCount, ODESolveError, \
    SolverOptions
from torch_enf.utils import graph_sizes


class StiffDecay(torch.nn.Module):
    r"""Dynamics dx/dt = -k x, with k = 300 for graphs of five nodes (stiff
    for dopri5: hundreds of evaluations) and k = 1 otherwise (a few)."""
    def __init__(self):
        super().__init__()
        self.rate = torch.nn.Parameter(torch.ones((), dtype=torch.float64))

    def forward(self, t, pos, h, edge_index, batch):
        sizes = graph_sizes(batch, int(batch.max()) + 1)
        rate = torch.where(sizes == 5, 300.0, 1.0).to(pos) * self.rate
        return -rate[batch].unsqueeze(-1) * pos, h


class RecordingFlow(ENFlow):
    r"""An :class:`ENFlow` that records the graphs of every batch that
    :meth:`log_prob` is called with."""
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def log_prob(self, data, trace='exact', **kwargs):
        self.calls.append(graph_sizes(data.batch, data.num_graphs).tolist())
        return super().log_prob(data, trace, **kwargs)


def decay_graphs(sizes):
    generator = torch.Generator().manual_seed(0)
    return [Data(pos=torch.randn(m, 2, generator=generator,
                                 dtype=torch.float64)) for m in sizes]


def test_log_prob_of_graphs_solves_a_stiff_graph_apart():
    flow = RecordingFlow(2, dynamics=StiffDecay(), adjoint=False).eval()
    graphs = decay_graphs([3, 4, 5, 3, 4, 2, 4, 3])
    values = log_prob_of_graphs(flow, graphs, batch_size=4,
                                solver=SolverOptions('dopri5', 1e-7, 1e-7),
                                first_budget=200)
    solved = [sizes for sizes in flow.calls if 5 in sizes]
    assert solved[-1] == [5]  # the stiff graph ended up alone
    assert max(len(sizes) for sizes in flow.calls) == 4
    # dx/dt = -k x over [0, 1] scales every graph by e^-k: the exact
    # log-density is the base density of the latent minus k (M - 1) n.
    for graph, value in zip(graphs, values):
        m = graph.num_nodes
        k = 300.0 if m == 5 else 1.0
        z = graph.pos - graph.pos.mean(0)
        z = z * math.exp(-k)
        base = flow.pos_prior.log_prob(z, torch.zeros(m, dtype=torch.long),
                                       1)
        assert float(value) == pytest.approx(float(base) - k * (m - 1) * 2,
                                             rel=1e-5)


def test_log_prob_of_graphs_agrees_with_batched_log_prob_in_input_order():
    flow = ENFlow(2, hidden_channels=8, num_layers=2).double().eval()
    tight = SolverOptions('dopri5', 1e-9, 1e-9)
    graphs = decay_graphs([5, 2, 4, 3, 6])
    values = log_prob_of_graphs(flow, graphs, batch_size=2, solver=tight,
                                first_budget=1)  # every batch split
    for graph, value in zip(graphs, values):
        expected = flow.log_prob(graph, solver=tight)
        assert float(value) == pytest.approx(float(expected), abs=1e-6)
    with pytest.raises(ValueError, match='empty'):
        log_prob_of_graphs(flow, [])


def test_log_prob_of_graphs_names_the_graph_whose_solve_fails():
    flow = ENFlow(2, dynamics=StiffDecay(), adjoint=False).eval()
    few_steps = SolverOptions(max_num_steps=5)
    graphs = decay_graphs([3, 5, 4])
    with pytest.raises(ODESolveError, match='graph 1: '):
        log_prob_of_graphs(flow, graphs, batch_size=3, solver=few_steps)
    values = log_prob_of_graphs(flow, graphs, batch_size=3,
                                solver=few_steps, skip_failures=True)
    assert torch.isnan(values).tolist() == [False, True, False]


def test_evaluate_nll_reports_the_mean_and_the_evaluations_per_solve():
    flow = ENFlow(2, hidden_channels=8, num_layers=1).eval()
    graphs = decay_graphs([3, 4, 5, 3])
    loader = DataLoader([Data(pos=g.pos.float()) for g in graphs],
                        batch_size=2)
    euler = SolverOptions('euler', num_steps=3)
    estimate = evaluate_nll(flow, loader, solver=euler, progress=False)
    assert estimate.num_graphs == 4 and estimate.num_evals == 3
    counter = EvaluationCount()
    with torch.no_grad():
        expected = -flow.log_prob(next(iter(loader)), solver=euler,
                                  counter=counter)
    assert counter.value == 3
    torch.testing.assert_close(estimate.values[:2], expected.double())
    assert estimate.nll == pytest.approx(float(estimate.values.mean()))
