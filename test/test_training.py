r"""The training driver: atomic checkpoints, model selection, bit-identical
resume that refuses changed options, moving averages, adaptive clipping and
the time budget."""
import json
import math
import os

import pytest
import torch
from torch_geometric.data import Data

from torch_enf.flows import ENFlow, ODESolveError
from torch_enf.evaluation import log_prob_of_graphs
from torch_enf.storage import atomic_save, load_checkpoint
from torch_enf.training import (ExponentialMovingAverage, clip_gradients,
                                fit, out_of_time)
from torch_enf.utils import graph_sizes


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError('killed while writing')


def test_atomic_save_keeps_old_file_when_writing_fails(tmp_path):
    path = str(tmp_path / 'checkpoint.pt')
    atomic_save({'step': 1}, path)
    with pytest.raises(RuntimeError, match='killed while writing'):
        atomic_save({'step': 2, 'bad': Unpicklable()}, path)
    assert torch.load(path) == {'step': 1}
    assert os.listdir(tmp_path) == ['checkpoint.pt']  # no temporary left


def test_atomic_save_json(tmp_path):
    path = str(tmp_path / 'sub' / 'results.json')
    atomic_save({'test_nll': 8.1}, path)
    with open(path) as f:
        assert json.load(f) == {'test_nll': 8.1}


def test_clip_gradients_limits_outliers():
    parameter = torch.nn.Parameter(torch.zeros(4))
    history = []
    for _ in range(10):
        parameter.grad = torch.full((4, ), 0.5)  # norm 1
        assert clip_gradients([parameter], history) == pytest.approx(1.0)
    parameter.grad = torch.full((4, ), 50.0)  # norm 100, an outlier
    assert clip_gradients([parameter], history) == pytest.approx(100.0)
    # Recent norms are all 1: the limit is max(1.5 * 1 + 2 * 0, floor=1).
    assert float(parameter.grad.norm()) == pytest.approx(1.5)
    assert history[-1] == pytest.approx(1.5)


def test_out_of_time():
    assert not out_of_time(1e9, None)
    assert not out_of_time(3599.0, 1.0)
    assert out_of_time(3600.0, 1.0)
    assert out_of_time(1800.0, 0.5)


class Quadratic:
    r"""A stand-in objective: per-sample loss |w * x - 1|^2 of a linear
    model, whose random batches come from PyTorch's global generator."""
    def config(self):
        return dict(name='quadratic')

    def __call__(self, model, batch):
        return (model(batch) - 1).pow(2).sum(-1)


def data():
    generator = torch.Generator().manual_seed(3)
    return [torch.randn(4, 3, generator=generator) for _ in range(6)]


def run_fit(tmp_path, epochs, **kwargs):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    loader = torch.utils.data.DataLoader(data(), batch_size=2, shuffle=True)
    kwargs.setdefault('validate', lambda m: float(m.weight.detach().abs()
                                                  .sum()))
    kwargs.setdefault('lr', 1e-2)
    kwargs.setdefault('log', lambda line: None)
    state = fit(model, Quadratic(), loader, str(tmp_path), epochs=epochs,
                progress=False, **kwargs)
    return model, state


def test_fit_keeps_best_model_and_resumes_bit_identically(tmp_path):
    straight, state = run_fit(tmp_path / 'a', 4, config=dict(hidden=8))
    assert state.epoch == 4 and state.step == 12
    assert [h['epoch'] for h in state.history] == [1, 2, 3, 4]
    best = min(state.history, key=lambda h: h['valid'])
    assert state.best_epoch == best['epoch']
    assert state.best_valid == best['valid']

    run_fit(tmp_path / 'b', 2, config=dict(hidden=8))
    resumed, state = run_fit(tmp_path / 'b', 4, config=dict(hidden=8),
                             resume=True)
    assert state.epoch == 4 and len(state.history) == 4
    for name, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name
    checkpoint = load_checkpoint(str(tmp_path / 'b' / 'checkpoint.pt'))
    assert checkpoint['config'] == dict(hidden=8)
    assert checkpoint['objective'] == dict(name='quadratic')
    assert sorted(os.listdir(tmp_path / 'b')) == [
        'best.pt', 'checkpoint.pt', 'curves.png', 'history.json']


def test_resume_refuses_changed_options(tmp_path):
    run_fit(tmp_path, 1, config=dict(hidden=8, lr=0.1))
    with pytest.raises(ValueError, match=r'hidden: checkpoint 8, now 16'):
        run_fit(tmp_path, 2, config=dict(hidden=16, lr=0.1), resume=True)
    with pytest.raises(ValueError, match='moving average'):
        run_fit(tmp_path, 2, config=dict(hidden=8, lr=0.1), resume=True,
                ema_decay=0.9)


def test_resume_compares_the_options_the_caller_names(tmp_path):
    run_fit(tmp_path, 1, config=dict(hidden=8, num_samples=100))
    # num_samples became an option that may change: no longer named, it
    # no longer has to match the checkpoint
    model, state = run_fit(tmp_path, 2, config=dict(hidden=8), resume=True)
    assert state.epoch == 2
    # an option the checkpoint does not know must still match
    with pytest.raises(ValueError, match=r'width: checkpoint None, now 3'):
        run_fit(tmp_path, 3, config=dict(hidden=8, width=3), resume=True)


def test_checkpoints_of_another_kind_are_refused(tmp_path):
    path = str(tmp_path / 'checkpoint.pt')
    torch.save(torch.nn.Linear(2, 2).state_dict(), path)  # plain weights
    with pytest.raises(ValueError, match='not a training checkpoint'):
        load_checkpoint(path)
    with pytest.raises(ValueError, match='not a training checkpoint'):
        run_fit(tmp_path, 1, resume=True)


def test_fit_time_budget_stops_inside_the_epoch(tmp_path):
    model, state = run_fit(tmp_path, 10, time_budget=1e-9)
    assert state.stopped_by_budget
    assert state.epoch == 1 and state.step == 1  # stopped after one step
    assert 'valid' in state.history[-1]  # the last epoch is validated
    # Resuming a run whose budget is spent trains and validates no further.
    best = (tmp_path / 'best.pt').read_bytes()
    model, resumed = run_fit(tmp_path, 10, time_budget=1e-9, resume=True,
                             validate=lambda m: -1.0)
    assert resumed.stopped_by_budget
    assert (resumed.epoch, resumed.step) == (1, 1)
    assert (tmp_path / 'best.pt').read_bytes() == best


def test_fit_rejects_bad_options(tmp_path):
    for kwargs in (dict(epochs=0), dict(epochs=2.5), dict(lr=-1.0),
                   dict(lr=math.inf), dict(ema_decay=1.0),
                   dict(clip='huge'), dict(time_budget=0.0)):
        kwargs.setdefault('epochs', 1)
        epochs = kwargs.pop('epochs')
        with pytest.raises(ValueError):
            run_fit(tmp_path, epochs, **kwargs)
    assert not os.path.exists(tmp_path / 'checkpoint.pt')


def test_moving_average_is_validated_and_saved(tmp_path):
    model, state = run_fit(tmp_path, 3, ema_decay=0.5, validate=None)
    best = torch.load(tmp_path / 'best.pt')
    assert not torch.equal(best['weight'], model.weight.detach())
    checkpoint = load_checkpoint(str(tmp_path / 'checkpoint.pt'))
    assert torch.equal(checkpoint['ema']['model']['weight'], best['weight'])


def test_exponential_moving_average_formula():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = ExponentialMovingAverage(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # warm-up decay min(0.9, 2 / 11)
    assert float(ema.model.weight) == pytest.approx(1 - 2 / 11)
    for _ in range(200):
        ema.update(model)
    assert float(ema.model.weight) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError):
        ExponentialMovingAverage(model, decay=1.5)


def test_cosine_schedule_decays_to_one_percent(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = torch.utils.data.DataLoader(data(), batch_size=2)
    fit(model, Quadratic(), loader, str(tmp_path), epochs=4, lr=0.1,
        optimizer=optimizer, lr_schedule='cosine', progress=False,
        log=lambda line: None)
    total = 4 * len(loader)
    progress = (total - 1) / total  # the last step's progress
    expected = 0.1 * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))
    assert optimizer.param_groups[0]['lr'] == pytest.approx(expected)
    assert expected < 0.003  # from 0.1 down towards 0.001
    with pytest.raises(ValueError, match='lr_schedule'):
        fit(model, Quadratic(), loader, str(tmp_path), epochs=1,
            lr_schedule='linear')


def test_fit_cleans_interrupted_writes_and_uses_the_umask(tmp_path):
    (tmp_path / '.tmp-abc123checkpoint.pt').write_bytes(b'half written')
    lines = []
    run_fit(tmp_path, 1, log=lines.append)
    assert not any(p.name.startswith('.tmp-') for p in tmp_path.iterdir())
    assert any('interrupted run' in line for line in lines)
    umask = os.umask(0)
    os.umask(umask)
    for name in ('checkpoint.pt', 'best.pt', 'history.json'):
        mode = (tmp_path / name).stat().st_mode & 0o777
        assert mode == 0o666 & ~umask, (name, oct(mode))


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

    def log_prob(self, data, trace=None, return_regularization=False):
        self.calls.append(graph_sizes(data.batch, data.num_graphs).tolist())
        return super().log_prob(data, trace, return_regularization)


def decay_graphs(sizes):
    generator = torch.Generator().manual_seed(0)
    return [Data(pos=torch.randn(m, 2, generator=generator,
                                 dtype=torch.float64)) for m in sizes]


def test_log_prob_of_graphs_solves_a_stiff_graph_apart():
    flow = RecordingFlow(2, dynamics=StiffDecay(), eval_rtol=1e-7,
                         eval_atol=1e-7, adjoint=False).eval()
    graphs = decay_graphs([3, 4, 5, 3, 4, 2, 4, 3])
    values = log_prob_of_graphs(flow, graphs, batch_size=4,
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
    flow = ENFlow(2, hidden_channels=8, num_layers=2, eval_rtol=1e-9,
                  eval_atol=1e-9).double().eval()
    graphs = decay_graphs([5, 2, 4, 3, 6])
    values = log_prob_of_graphs(flow, graphs, batch_size=2,
                                first_budget=1)  # every batch split
    for graph, value in zip(graphs, values):
        expected = flow.log_prob(graph)
        assert float(value) == pytest.approx(float(expected), abs=1e-6)
    with pytest.raises(ValueError, match='empty'):
        log_prob_of_graphs(flow, [])


def test_log_prob_of_graphs_names_the_graph_whose_solve_fails():
    flow = ENFlow(2, dynamics=StiffDecay(), max_num_steps=5,
                  adjoint=False).eval()
    graphs = decay_graphs([3, 5, 4])
    with pytest.raises(ODESolveError, match='graph 1: .*max_num_steps'):
        log_prob_of_graphs(flow, graphs, batch_size=3)
    values = log_prob_of_graphs(flow, graphs, batch_size=3,
                                skip_failures=True)
    assert torch.isnan(values).tolist() == [False, True, False]
