r"""The training driver: atomic checkpoints, model selection, bit-identical
resume that refuses changed options, moving averages, adaptive clipping and
the time budget."""
import json
import math
import os

import pytest
import torch

from torch_enf.flows import ENFlow
from torch_enf.objectives import FlowMatching
from torch_enf.storage import atomic_save, load_checkpoint
from torch_enf.training import (Checkpointer, ExponentialMovingAverage,
                                FitConfig, FitState, LRSchedule,
                                clip_gradients, fit, out_of_time)


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
    def __init__(self, name='quadratic'):
        self.name = name

    def config(self):
        return dict(name=self.name)

    def __call__(self, model, batch):
        return (model(batch) - 1).pow(2).sum(-1)


def data():
    generator = torch.Generator().manual_seed(3)
    return [torch.randn(4, 3, generator=generator) for _ in range(6)]


def run_fit(tmp_path, epochs, lr=1e-2, objective=None, loader=None,
            **kwargs):
    r"""Fits a linear model; :obj:`kwargs` are the fields of the
    :class:`FitConfig` and the keyword arguments of :func:`fit`."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    loader = loader or torch.utils.data.DataLoader(data(), batch_size=2,
                                                   shuffle=True)
    fields = {name: kwargs.pop(name) for name in list(kwargs)
              if name in FitConfig.__dataclass_fields__}
    kwargs.setdefault('validate', lambda m: float(m.weight.detach().abs()
                                                  .sum()))
    kwargs.setdefault('log', lambda line: None)
    state = fit(model, objective or Quadratic(), loader, str(tmp_path),
                FitConfig(epochs, lr=lr, **fields), progress=False, **kwargs)
    return model, state


def test_fit_keeps_best_model_and_resumes_bit_identically(tmp_path):
    straight, state = run_fit(tmp_path / 'a', 4, run_config=dict(hidden=8))
    assert state.epoch == 4 and state.step == 12
    assert [h['epoch'] for h in state.history] == [1, 2, 3, 4]
    best = min(state.history, key=lambda h: h['valid'])
    assert state.best_epoch == best['epoch']
    assert state.best_valid == best['valid']

    run_fit(tmp_path / 'b', 2, run_config=dict(hidden=8))
    resumed, state = run_fit(tmp_path / 'b', 4, run_config=dict(hidden=8),
                             resume=True, metadata=dict(note='resumed'))
    assert state.epoch == 4 and len(state.history) == 4
    for name, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name
    checkpoint = load_checkpoint(str(tmp_path / 'b' / 'checkpoint.pt'))
    assert checkpoint['run'] == dict(
        hidden=8, fit=FitConfig(4, lr=1e-2).to_dict(),
        objective=dict(name='quadratic'))
    assert checkpoint['metadata'] == dict(note='resumed')
    assert sorted(os.listdir(tmp_path / 'b')) == [
        'best.pt', 'checkpoint.pt', 'curves.png', 'history.json']


def test_resume_refuses_changed_options(tmp_path):
    run_fit(tmp_path, 1, run_config=dict(hidden=8, lr=0.1))
    with pytest.raises(ValueError, match=r'hidden: checkpoint 8, now 16'):
        run_fit(tmp_path, 2, run_config=dict(hidden=16, lr=0.1), resume=True)
    with pytest.raises(ValueError,
                       match=r'fit.ema_decay: checkpoint None, now 0.9'):
        run_fit(tmp_path, 2, run_config=dict(hidden=8, lr=0.1), resume=True,
                ema_decay=0.9)
    # one error names every differing field, nested ones with dots
    with pytest.raises(ValueError) as error:
        run_fit(tmp_path, 2, run_config=dict(hidden=16, lr=0.1), resume=True,
                lr=0.5, objective=Quadratic(name='cubic'))
    for part in ('hidden: checkpoint 8, now 16',
                 'fit.lr: checkpoint 0.01, now 0.5',
                 "objective.name: checkpoint 'quadratic', now 'cubic'"):
        assert part in str(error.value)


def test_resume_may_change_the_resumable_fields_only(tmp_path):
    assert FitConfig.RESUMABLE_FIELDS == {'epochs', 'time_budget',
                                          'eval_every'}
    run_fit(tmp_path, 1, run_config=dict(hidden=8))
    model, state = run_fit(tmp_path, 3, run_config=dict(hidden=8),
                           resume=True, eval_every=2, time_budget=5.0)
    assert state.epoch == 3
    assert load_checkpoint(str(tmp_path / 'checkpoint.pt'))['run']['fit'] \
        == FitConfig(3, lr=1e-2, eval_every=2, time_budget=5.0).to_dict()


def test_resume_compares_every_stored_option(tmp_path):
    run_fit(tmp_path, 1, run_config=dict(hidden=8, num_samples=100))
    # an option the run no longer names must still match the checkpoint
    with pytest.raises(ValueError,
                       match=r'num_samples: checkpoint 100, now None'):
        run_fit(tmp_path, 2, run_config=dict(hidden=8), resume=True)
    # and an option the checkpoint does not know as well
    with pytest.raises(ValueError, match=r'width: checkpoint None, now 3'):
        run_fit(tmp_path, 3, run_config=dict(hidden=8, num_samples=100,
                                             width=3), resume=True)
    # unless the caller says what a run stored without it meant
    _, state = run_fit(tmp_path, 2, run_config=dict(hidden=8, num_samples=100,
                                                    width=3), resume=True,
                       canonical_run=lambda stored: dict(stored, width=3))
    assert state.epoch == 2


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
    # A larger budget continues the run.
    model, resumed = run_fit(tmp_path, 2, time_budget=1.0, resume=True)
    assert not resumed.stopped_by_budget
    assert (resumed.epoch, resumed.step) == (2, 4)


@pytest.mark.parametrize('fields, name', [
    (dict(epochs=0), 'epochs'), (dict(epochs=2.5), 'epochs'),
    (dict(lr=-1.0), 'lr'), (dict(lr=math.inf), 'lr'),
    (dict(lr_schedule='linear'), 'lr_schedule'),
    (dict(ema_decay=1.0), 'ema_decay'), (dict(eval_every=0), 'eval_every'),
    (dict(clip='huge'), 'clip'), (dict(clip=0.0), 'clip'),
    (dict(bf16='yes'), 'bf16'), (dict(time_budget=0.0), 'time_budget'),
])
def test_fit_config_rejects_bad_options(fields, name):
    fields = dict(dict(epochs=1), **fields)
    with pytest.raises(ValueError, match=f"'{name}'"):
        FitConfig(**fields)


def test_fit_config_is_plain_data():
    config = FitConfig(10, lr_schedule='cosine', ema_decay=0.999, clip=2.0,
                       bf16=True, time_budget=1.5)
    assert FitConfig.from_dict(json.loads(json.dumps(config.to_dict()))) \
        == config
    assert config.replace(epochs=20).differences(config) == [
        ('epochs', 20, 10)]


def test_fit_rejects_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="'config' must be a FitConfig"):
        fit(torch.nn.Linear(3, 2), Quadratic(), data(), str(tmp_path),
            dict(epochs=1))
    with pytest.raises(ValueError, match="'run_config' must not hold"):
        run_fit(tmp_path, 1, run_config=dict(fit=1))
    assert not os.path.exists(tmp_path / 'checkpoint.pt')


def test_fit_refuses_an_empty_loader(tmp_path):
    flow = ENFlow(2, hidden_channels=8, num_layers=1)
    with pytest.raises(ValueError, match="'train_loader' is empty"):
        fit(flow, FlowMatching(), [], str(tmp_path / 'run'),
            FitConfig(epochs=2))
    assert not os.path.exists(tmp_path / 'run')


class FailsAt(Quadratic):
    r"""The quadratic loss, :obj:`value` from optimiser step :obj:`step`
    (counted from one) on."""
    def __init__(self, step, value):
        super().__init__()
        self.calls, self.step, self.value = 0, step, value

    def __call__(self, model, batch):
        self.calls += 1
        loss = super().__call__(model, batch)
        return loss * self.value if self.calls >= self.step else loss


@pytest.mark.parametrize('value', [math.nan, math.inf])
def test_non_finite_training_loss_stops_the_run(tmp_path, value):
    with pytest.raises(FloatingPointError, match=r'epoch 2, step 5'):
        run_fit(tmp_path, 3, objective=FailsAt(5, value), validate=None)
    checkpoint = load_checkpoint(str(tmp_path / 'checkpoint.pt'))
    assert checkpoint['state']['epoch'] == 1  # the last good epoch
    best = torch.load(tmp_path / 'best.pt')
    for name, weight in checkpoint['model'].items():
        assert torch.equal(best[name], weight) and weight.isfinite().all()
    with pytest.raises(FloatingPointError, match=r'epoch 1, step 1'):
        run_fit(tmp_path / 'first', 3, objective=FailsAt(1, value))
    assert not os.path.exists(tmp_path / 'first' / 'best.pt')


def test_nan_validation_stops_the_run(tmp_path):
    values = iter([2.0, math.nan])
    with pytest.raises(FloatingPointError, match='epoch 2'):
        run_fit(tmp_path, 3, validate=lambda model: next(values))
    checkpoint = load_checkpoint(str(tmp_path / 'checkpoint.pt'))
    assert checkpoint['state']['epoch'] == 1
    assert checkpoint['state']['best_epoch'] == 1
    with pytest.raises(FloatingPointError, match='epoch 1'):
        run_fit(tmp_path / 'first', 3, validate=lambda model: math.nan)
    assert not os.path.exists(tmp_path / 'first' / 'best.pt')


def test_bf16_autocast_trains(tmp_path):
    model, state = run_fit(tmp_path, 2, bf16=True)
    assert state.step == 6
    assert all(math.isfinite(h['train_loss']) for h in state.history)


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
    fit(model, Quadratic(), loader, str(tmp_path),
        FitConfig(epochs=4, lr=0.1, lr_schedule='cosine'),
        optimizer=optimizer, progress=False, log=lambda line: None)
    total = 4 * len(loader)
    progress = (total - 1) / total  # the last step's progress
    expected = 0.1 * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))
    assert optimizer.param_groups[0]['lr'] == pytest.approx(expected)
    assert expected < 0.003  # from 0.1 down towards 0.001


@pytest.mark.parametrize('schedule', ['constant', 'cosine'])
def test_custom_optimizer_keeps_its_learning_rates(tmp_path, schedule):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD([dict(params=[model.weight], lr=0.05),
                                 dict(params=[model.bias], lr=0.2)])
    loader = torch.utils.data.DataLoader(data(), batch_size=6)  # one step
    fit(model, Quadratic(), loader, str(tmp_path),
        FitConfig(epochs=2, lr=1.0, lr_schedule=schedule),
        optimizer=optimizer, progress=False, log=lambda line: None)
    # the second (last) step runs at progress 1/2 of the cosine
    factor = 1.0 if schedule == 'constant' else 0.01 + 0.99 * 0.5
    assert [group['lr'] for group in optimizer.param_groups] == \
        pytest.approx([0.05 * factor, 0.2 * factor])


def test_lr_schedule_follows_steps_or_time_whichever_is_further():
    optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0)
    schedule = LRSchedule(optimizer, 'cosine', total_steps=100,
                          time_budget=1.0)
    assert schedule.progress(10, 1800.0) == pytest.approx(0.5)
    assert schedule.progress(75, 1800.0) == pytest.approx(0.75)
    assert schedule.progress(200, 0.0) == 1.0
    schedule.update(50, 0.0)
    assert optimizer.param_groups[0]['lr'] == pytest.approx(0.505)
    assert optimizer.param_groups[0]['initial_lr'] == 1.0
    assert LRSchedule(optimizer).factor(99, 1e9) == 1.0
    with pytest.raises(ValueError, match="'schedule'"):
        LRSchedule(optimizer, 'linear')


def test_checkpointer_writes_and_resumes(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    files = Checkpointer(str(tmp_path), model, optimizer,
                         run=dict(fit=dict(epochs=1), hidden=8))
    assert files.resume() is None  # nothing to resume yet
    (tmp_path / '.tmp-xyzbest.pt').write_bytes(b'')
    assert files.prepare() == ['.tmp-xyzbest.pt']
    state = FitState()
    state.add_epoch(dict(epoch=1, step=3, train_loss=1.0), keep_last=False)
    files.end_epoch(state, model, best=False, final=False)
    assert sorted(os.listdir(tmp_path)) == ['checkpoint.pt', 'history.json']
    other = Checkpointer(str(tmp_path), torch.nn.Linear(3, 2), optimizer,
                         run=dict(fit=dict(epochs=5), hidden=8))
    assert other.resume() == state  # epochs may change
    torch.testing.assert_close(other.model.state_dict(), model.state_dict())
    with pytest.raises(ValueError, match=r'hidden: checkpoint 8, now 9'):
        Checkpointer(str(tmp_path), model, optimizer,
                     run=dict(fit=dict(epochs=1), hidden=9)).resume()


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
