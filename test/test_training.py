r"""The book-keeping of the training scripts: atomic checkpoints, keeping
the best model, resumable state, adaptive clipping and the time budget."""
import json
import os

import pytest
import torch

from torch_enf.training import (atomic_save, clip_gradients, finish_epoch,
                                out_of_time, train_epoch)


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


def test_finish_epoch_keeps_best_model_and_resumable_state(tmp_path):
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    state = dict(epoch=0, history=[], best_valid=float('inf'),
                 best_epoch=None)
    weights = {}
    for epoch, valid in [(1, 5.0), (2, None), (3, 3.0), (4, 4.0)]:
        with torch.no_grad():
            model.weight.fill_(epoch)
        weights[epoch] = model.weight.clone()
        record = dict(epoch=epoch, train_nll=1.0)
        if valid is not None:
            record['valid_nll'] = valid
        finish_epoch(state, record, model, optimizer, str(tmp_path),
                     rng=torch.get_rng_state())

    assert state['best_epoch'] == 3 and state['best_valid'] == 3.0
    best = torch.load(tmp_path / 'best.pt')
    assert torch.equal(best['weight'], weights[3])
    ckpt = torch.load(tmp_path / 'checkpoint.pt', weights_only=False)
    assert ckpt['state']['epoch'] == 4
    assert [h['epoch'] for h in ckpt['state']['history']] == [1, 2, 3, 4]
    assert torch.equal(ckpt['model']['weight'], weights[4])
    assert torch.equal(ckpt['rng'], torch.get_rng_state())


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


class CountingModel(torch.nn.Module):
    r"""Stands in for a flow: returns a per-graph log-likelihood and
    regulariser from one parameter and counts its calls."""
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))
        self.calls = 0

    def forward(self, batch, trace, return_regularization):
        self.calls += 1
        log_prob = -(self.weight * batch).pow(2).sum(-1)
        return log_prob, torch.zeros_like(log_prob)


def test_train_epoch_stops_when_asked():
    model = CountingModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = [torch.randn(4, 3) for _ in range(10)]
    nll = train_epoch(model, loader, optimizer, [], progress=False,
                      stop=lambda: model.calls >= 3)
    assert model.calls == 3
    assert float(model.weight) < 1.0  # the steps were taken
    assert nll > 0

    model = CountingModel()
    train_epoch(model, loader, torch.optim.SGD(model.parameters(), lr=0.01),
                [], progress=False)
    assert model.calls == len(loader)  # no stop: the whole epoch
