r"""The task registry and the configurations of training runs: every
built-in task is registered with its defaults, flags become checked
configurations once, and a task builds the model its data needs."""
import pytest
import torch
from torch_geometric.data import Batch, Data

from torch_enf.cli import _parser, _task_defaults, run_configs
from torch_enf.config import Config
from torch_enf.flows import CompositionFlow, SolverOptions
from torch_enf.tasks import (TASKS, DataConfig, EvaluationConfig,
                             ModelOptions, RunConfig, Splits, get_task,
                             task_from_state)
from torch_enf.training import FitConfig

BUILT_IN = ('dw4', 'lj13', 'lj13-halved', 'lj55', 'qm9-positional', 'qm9',
            'molecules', 'points')


def configs(*argv):
    argv = ['train', *argv]
    return run_configs(_parser(_task_defaults(argv)).parse_args(argv))


def test_every_task_is_registered_and_rebuilt_from_its_state():
    assert set(BUILT_IN) <= set(TASKS)
    for name in BUILT_IN:
        task = get_task(name)
        assert task.name == name and task.description
        assert task_from_state(task.state()).state() == task.state()
    with pytest.raises(ValueError, match='Unknown task'):
        get_task('nope')


def test_the_trace_of_larger_systems_is_hutchinson_by_default():
    assert get_task('lj55').trace(None) == 'hutchinson'
    assert get_task('lj13').trace(None) == 'exact'
    assert get_task('lj55').trace('exact') == 'exact'


def test_flags_become_configurations_with_task_defaults():
    task, run, objective, evaluation = configs('dw4', '--quick')
    assert run.data.n_train == 1000 and run.fit.epochs == 2000
    assert run.fit.lr_schedule == 'cosine' and run.fit.ema_decay == 0.999
    assert run.model.hidden_channels == 32 and run.model.num_layers == 3
    assert evaluation.num_test == 1000
    # Explicit flags win over the task's presets.
    _, run, _, _ = configs('dw4', '--quick', '--epochs', '7')
    assert run.fit.epochs == 7
    _, run, objective, evaluation = configs(
        'qm9', '--objective', 'ml', '--train-tol', '1e-3', '--solver',
        'midpoint', '--num-steps', '10')
    assert run.model.dequantizer == 'variational'
    assert objective.config()['solver']['rtol'] == 1e-3
    assert evaluation.sampler == SolverOptions('midpoint', 1e-5, 1e-5, 10)
    _, _, _, evaluation = configs('dw4', '--solver', 'midpoint',
                                  '--num-steps', '10', '--step-exponent',
                                  '1.5')
    assert evaluation.sampler.step_exponent == 1.5
    assert run.fit.ema_decay is None


@pytest.mark.parametrize('argv,message', [
    (['dw4', '--num-radial', '1'],
     "'num_radial' must be 0 or an integer of at least 2"),
    (['dw4', '--radial-cutoff', '0'], 'radial_cutoff must be positive'),
    (['qm9', '--class-margin', '-1'], 'class_margin must be non-negative'),
    (['dw4', '--num-steps', '3'], 'needs a fixed-step --solver'),
    (['dw4', '--solver', 'rk4'], 'needs --num-steps'),
    (['dw4', '--solver', 'rk4', '--num-steps', '4', '--step-exponent',
      '-1'], '--step-exponent must be positive'),
    (['dw4', '--tol', '1e-30'], '--tol must lie'),
    (['dw4', '--graph', 'sparse'], "--graph must be 'auto', 'full'"),
    (['dw4', '--objective', 'ml', '--bf16'], '--bf16 is for flow matching'),
    (['dw4', '--lr', '-1'], 'lr'),
    (['dw4', '--published-test', 'missing.npy'], 'is not a file'),
])
def test_bad_options_are_refused_before_anything_runs(argv, message):
    with pytest.raises(ValueError, match=message):
        configs(*argv)


def test_run_configurations_round_trip_as_plain_data():
    _, run, _, evaluation = configs('molecules', '--data', 'x.sdf')
    assert isinstance(run, Config)
    assert RunConfig.from_dict(run.to_dict()) == run
    assert EvaluationConfig.from_dict(evaluation.to_dict()) == evaluation
    changed = run.replace(model=run.model.replace(hidden_channels=7))
    assert ('model.hidden_channels', run.model.hidden_channels, 7) in \
        run.differences(changed)
    with pytest.raises(ValueError, match="unknown field"):
        DataConfig.from_dict(dict(root='data', colour='red'))


def test_molecule_task_builds_a_flow_for_the_elements_of_its_data():
    task = get_task('molecules', atomic_numbers=[1, 6, 16])
    from torch_enf.datasets.molecules import node_features
    data = [Data(pos=torch.randn(n, 3), z=torch.tensor([6, 16] + [1] * (
        n - 2)), h=node_features(torch.tensor([6, 16] + [1] * (n - 2)),
                                 [1, 6, 16])) for n in (3, 5, 120)]

    def in_memory(graphs):  # a list with the storage of an InMemoryDataset
        sized = type('Sized', (list, ), {})(graphs)
        sized.slices = dict(pos=torch.tensor(
            [0] + [d.num_nodes for d in graphs]).cumsum(0))
        sized._data = Batch.from_data_list(graphs)
        return sized

    model = task.build_model(ModelOptions(hidden_channels=8, num_layers=1,
                                          class_margin=1.5),
                             Splits(in_memory(data), data, data))
    assert model.dequantizer.margin == 1.5
    assert model.atomic_numbers.tolist() == [1, 6, 16]
    assert model.flow.graph == 5.0  # 120 atoms: radius graphs
    assert float(model.node_count.probs[4]) == 0
    assert float(model.node_count.probs[120]) > 0
    small = task.build_model(ModelOptions(hidden_channels=8, num_layers=1),
                             Splits(in_memory(data[:2]), data, data))
    assert small.flow.graph == 'full'
    forced = task.build_model(ModelOptions(hidden_channels=8, num_layers=1,
                                           graph='full'),
                              Splits(in_memory(data), data, data))
    assert forced.flow.graph == 'full'
    by_formula = task.build_model(
        ModelOptions(hidden_channels=8, num_layers=1,
                     atom_types='composition'),
        Splits(in_memory(data[:2]), data, data))
    assert isinstance(by_formula, CompositionFlow)
    assert by_formula.flow.context_channels == 3
    # C S H, C S H3: two formulas, hydrogen the most frequent type
    assert by_formula.composition.compositions.tolist() == [[1, 1, 1],
                                                             [3, 1, 1]]
    assert by_formula.composition.type_probs.argmax() == 0
    with pytest.raises(ValueError, match="atom_types='flow'"):
        ModelOptions(atom_types='composition', class_margin=2.0)
    with pytest.raises(ValueError, match='atom_types must be one of'):
        ModelOptions(atom_types='formula')


def test_fit_config_checks_its_fields():
    with pytest.raises(ValueError):
        FitConfig(epochs=0)
    assert FitConfig.from_dict(FitConfig(epochs=3).to_dict()) == \
        FitConfig(epochs=3)


def test_distance_features_reach_the_network():
    task, run, _, _ = configs('dw4', '--num-radial', '8', '--radial-cutoff',
                              '4')
    splits = Splits([], [], [])
    dynamics = task.build_model(run.model, splits).dynamics
    assert dynamics.distance_expansion.offset[-1] == 4.0
    assert dynamics.egnn.convs[0].edge_dim == 9
    _, plain, _, _ = configs('dw4')
    assert task.build_model(plain.model, splits).dynamics \
        .distance_expansion is None
