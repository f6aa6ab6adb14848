import importlib.util
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.data import Data
from torch_geometric.datasets.qm9 import HAR2EV, atomrefs
from torch_geometric.loader import DataLoader
from torch_geometric.nn.models import SchNet

from torch_enf.datasets.qm9 import standard_split
from torch_enf.datasets.qm9_properties import (ATOM_REFERENCES,
                                               HARTREE_TO_MEV, TARGETS,
                                               QM9Properties, node_features,
                                               resolve_target)
from torch_enf.datasets.qm9_sources import (PROPERTY_COLUMNS, read_npz,
                                            read_qm9pack)
from torch_enf.nn.models.property import (EGNNRegressor,
                                          RadiusInteractionGraph,
                                          TorchDimeNetPlusPlus, triplets)
from torch_enf.testing import assert_equivariant

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / 'test' / 'data' / 'qm9_fixture.npz'
NAMES = [target.name for target in TARGETS]

# Methane, QM9 index 1, as in qm9pack's qm9_part1.csv.
METHANE_XYZ = ('[[-0.0126981359,1.0858041578,0.0080009958],'
               '[0.002150416,-0.0060313176,0.0019761204],'
               '[1.0117308433,1.4637511618,0.0002765748],'
               '[-0.540815069,1.4475266138,-0.8766437152],'
               '[-0.5238136345,1.4379326443,0.9063972942]]')
METHANE_PROPERTIES = ['0.', '13.21', '-0.3877', '0.1171', '0.5048',
                      '35.3641', '0.044749', '-40.47893', '-40.476062',
                      '-40.475117', '-40.498597', '6.469']


def load_example():
    spec = importlib.util.spec_from_file_location(
        'qm9_property_example', ROOT / 'examples' / 'qm9_property.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_csv_folder(folder: Path, indices, properties=METHANE_PROPERTIES):
    r"""A qm9pack-like folder holding methane under the given QM9 indices,
    spread over the three parts, and the list of uncharacterised ones."""
    header = ['XYZ_file', 'Index', 'N_atoms', 'Elements', 'XYZ_Ang',
              *PROPERTY_COLUMNS]
    parts = np.array_split(np.asarray(indices), 3)
    for part, part_indices in enumerate(parts, start=1):
        lines = [','.join(header)]
        for index in part_indices:
            lines.append(','.join([
                f'"dsgdb9nsd_{index:06d}.xyz"', str(index), '5',
                '"[\'C\',\'H\',\'H\',\'H\',\'H\']"', f'"{METHANE_XYZ}"',
                *properties]))
        (folder / f'qm9_part{part}.csv').write_text('\n'.join(lines) + '\n')
    uncharacterised = read_npz(str(FIXTURE)).uncharacterised
    (folder / 'uncharacterized.txt').write_text(
        '\n'.join(str(i) for i in uncharacterised) + '\n')
    return uncharacterised


def split_indices(uncharacterised, per_split=2):
    splits = standard_split(uncharacterised)
    return {name: index[:per_split] for name, index in splits.items()}


def test_resolve_target_by_name_and_index():
    assert [resolve_target(name).index for name in NAMES] == list(range(12))
    assert resolve_target('HOMO').name == 'homo'
    assert resolve_target('u0').name == 'U0'
    assert resolve_target(11).name == 'Cv'
    assert resolve_target('2').name == 'homo'
    assert [t.unit for t in TARGETS] == ['D', 'bohr^3'] + ['meV'] * 3 + [
        'bohr^2'] + ['meV'] * 5 + ['cal/mol K']


@pytest.mark.parametrize('bad, message', [
    ('homo_lumo', 'Unknown QM9 target'), (12, '0 to 11'), (-1, '0 to 11'),
    ('12', '0 to 11'), (True, 'name or an index')])
def test_resolve_target_errors(bad, message):
    with pytest.raises(ValueError, match=message) as info:
        resolve_target(bad)
    if message == 'Unknown QM9 target':
        assert all(name in str(info.value) for name in NAMES)


def test_atom_references_agree_with_pyg():
    # PyG's table holds U0, U, H, G in eV for H, C, N, O, F.
    for column, target in zip(range(1, 5), range(7, 11)):
        np.testing.assert_allclose(ATOM_REFERENCES[:, column] * HAR2EV,
                                   atomrefs[target], atol=1e-4, rtol=0)


def test_dataset_units_features_and_split(tmp_path):
    uncharacterised = write_csv_folder(tmp_path, [])
    wanted = split_indices(uncharacterised)
    write_csv_folder(tmp_path, sorted(np.concatenate(list(wanted.values()))))
    for split, indices in wanted.items():
        dataset = QM9Properties(str(tmp_path / 'root'), split,
                                source=str(tmp_path), log=False)
        assert sorted(dataset.idx.tolist()) == sorted(indices.tolist())
    data = dataset[0]
    assert data.y.shape == (1, 12) and data.x.shape == (5, 15)
    assert torch.equal(data.z, torch.tensor([6, 1, 1, 1, 1]))
    torch.testing.assert_close(data.pos.mean(0), torch.zeros(3), atol=1e-6,
                               rtol=0)
    y = data.y[0].double()
    expected = {
        'mu': 0.0, 'alpha': 13.21, 'homo': -0.3877 * HARTREE_TO_MEV,
        'gap': 0.5048 * HARTREE_TO_MEV, 'r2': 35.3641,
        'zpve': 0.044749 * HARTREE_TO_MEV,
        # Atomisation energy: minus one C and four H atom references.
        'U0': (-40.47893 + 37.846772 + 4 * 0.500273) * HARTREE_TO_MEV,
        'G': (-40.498597 + 37.861317 + 4 * 0.510927) * HARTREE_TO_MEV,
        'Cv': 6.469 - 5 * 2.981}
    for name, value in expected.items():
        assert float(y[resolve_target(name).index]) == pytest.approx(
            value, rel=1e-6, abs=1e-6), name
    # PyG's methane U0 atomisation energy is -17.1720 eV.
    assert float(y[7]) == pytest.approx(-17172.0, abs=0.5)
    carbon = torch.zeros(15)
    carbon[3:6] = torch.tensor([1.0, 6 / 9, 36 / 81])
    torch.testing.assert_close(data.x[0], carbon)
    torch.testing.assert_close(node_features(data.z), data.x)


def test_properties_are_optional_and_parse_errors_are_located(tmp_path):
    write_csv_folder(tmp_path, [1, 2, 3])
    assert read_qm9pack(str(tmp_path)).properties is None
    assert read_qm9pack(str(tmp_path), properties=True).properties.shape == \
        (3, 12)
    bad = list(METHANE_PROPERTIES)
    bad[3] = 'n/a'
    write_csv_folder(tmp_path, [1, 2, 3], properties=bad)
    with pytest.raises(ValueError, match=r"qm9_part1\.csv line 2, column "
                       r"'LUMO_au': 'n/a'"):
        read_qm9pack(str(tmp_path), properties=True)


@pytest.mark.parametrize('num_radial, readout', [(0, 'graph'), (8, 'graph'),
                                                 (0, 'atom')])
def test_regressor_is_invariant(generator, num_radial, readout):
    model = EGNNRegressor(in_channels=15, hidden_channels=16, num_layers=3,
                          out_channels=2, num_radial=num_radial,
                          radial_cutoff=4.0, readout=readout).double()
    z = torch.tensor([6, 1, 1, 1, 1, 8, 1, 1, 7, 6, 9])
    batch = torch.tensor([0] * 5 + [1] * 3 + [2] * 3)
    pos = torch.randn(11, 3, generator=generator, dtype=torch.float64)
    out, = assert_equivariant(lambda p, h, b: model(h, p, b), pos,
                              node_features(z).double(), batch,
                              outputs=('graph', ), generator=generator,
                              atol=1e-9, rtol=1e-9)
    assert out.shape == (3, 2)
    assert not torch.allclose(out, model(node_features(z).double(),
                                         1.1 * pos, batch))
    if num_radial:  # every layer reads the Gaussians
        assert all(layer.edge_dim == num_radial for layer in model.layers)
        model(node_features(z).double(), pos, batch).sum().backward()
        for layer in model.layers:
            assert layer.edge_lin1.weight.grad[:, -num_radial:].abs().sum() > 0


@pytest.mark.parametrize('num_radial', [1, -2, 2.5, True])
def test_regressor_refuses_bad_radial_bases(num_radial):
    with pytest.raises(ValueError, match="'num_radial' must be 0 or an "
                       "integer of at least 2"):
        EGNNRegressor(num_radial=num_radial)
    with pytest.raises(ValueError, match="'radial_cutoff' must be a "
                       "positive"):
        EGNNRegressor(num_radial=4, radial_cutoff=0.0)


def test_atom_readout_sums_the_decoded_atoms(generator):
    model = EGNNRegressor(in_channels=15, hidden_channels=16, num_layers=2,
                          readout='atom').double()
    z = torch.tensor([6, 1, 1, 8, 1, 7, 6])
    pos = torch.randn(7, 3, generator=generator, dtype=torch.float64)
    batch = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    out = model(node_features(z).double(), pos, batch)
    # One molecule's prediction is the sum over its atoms of the decoded
    # features, each computed with the molecule's own graph.
    h = model.embedding(node_features(z[:3]).double())
    edge_index = torch.tensor([[j for i in range(3) for j in range(3)
                                if i != j],
                               [i for i in range(3) for j in range(3)
                                if i != j]])
    for layer in model.layers:
        h = layer(h, pos[:3], edge_index)[0]
    expected = model.graph_decoder(model.node_decoder(h)).sum(0)
    torch.testing.assert_close(out[0], expected)
    # The paper's readout decodes the pooled features instead: another
    # function of the same parameters.
    model.readout = 'graph'
    assert not torch.allclose(model(node_features(z).double(), pos, batch),
                              out)
    with pytest.raises(ValueError, match="'readout' must be one of"):
        EGNNRegressor(readout='mean')


def molecules(generator, sizes=(7, 4, 9), spread=2.0):
    batch = torch.repeat_interleave(torch.arange(len(sizes)),
                                    torch.tensor(sizes))
    pos = spread * torch.randn(batch.numel(), 3, generator=generator,
                               dtype=torch.float64)
    z = torch.tensor([1, 6, 7, 8, 9])[torch.randint(
        0, 5, (batch.numel(), ), generator=generator)]
    return z, pos, batch


def brute_force_edges(pos, r, batch, max_num_neighbors=None):
    r"""All pairs within r, in reversed order (order must not matter)."""
    pairs = [(j, i) for i, j in itertools.permutations(range(len(pos)), 2)
             if batch[i] == batch[j] and float((pos[i] - pos[j]).norm()) <= r]
    return torch.tensor(pairs[::-1], dtype=torch.long).t()


def brute_force_triplets(edge_index, num_nodes):
    edges = edge_index.t().tolist()
    found = [(e2, e1) for e1, (j, i) in enumerate(edges)
             for e2, (k, j2) in enumerate(edges) if j2 == j and k != i]
    idx_kj, idx_ji = torch.tensor(found, dtype=torch.long).t()
    source, target = edge_index
    return (target, source, target[idx_ji], source[idx_ji], source[idx_kj],
            idx_kj, idx_ji)


def test_triplets_match_brute_force(generator):
    _, pos, batch = molecules(generator)
    edge_index = brute_force_edges(pos, 3.0, batch)
    got = triplets(edge_index, pos.size(0))
    expected = brute_force_triplets(edge_index, pos.size(0))
    assert got[5].numel() > 50
    key = lambda t: t[6] * pos.size(0) + t[4]  # noqa: E731
    # Same triplets, in PyG's order: by edge j -> i, then by k.
    assert torch.equal(key(got), torch.sort(key(expected)).values)
    order = torch.argsort(key(expected))
    for a, b in zip(got[2:], expected[2:]):
        assert torch.equal(a, b[order])
    assert torch.equal(got[2], got[0][got[6]])  # i of the edge j -> i


def test_schnet_graph_matches_brute_force(generator):
    z, pos, batch = molecules(generator)
    ours = SchNet(hidden_channels=16, num_filters=16, num_interactions=2,
                  num_gaussians=10, cutoff=3.0,
                  interaction_graph=RadiusInteractionGraph(3.0)).double()

    def brute_force(pos, batch):
        edge_index = brute_force_edges(pos, 3.0, batch)
        return edge_index, (pos[edge_index[0]] -
                            pos[edge_index[1]]).norm(dim=-1)

    reference = SchNet(hidden_channels=16, num_filters=16,
                       num_interactions=2, num_gaussians=10, cutoff=3.0,
                       interaction_graph=brute_force).double()
    reference.load_state_dict(ours.state_dict())
    torch.testing.assert_close(ours(z, pos, batch),
                               reference(z, pos, batch))
    assert not torch.allclose(ours(z, pos, batch),
                              ours(z, pos, torch.zeros_like(batch)).sum(0))


def test_dimenet_graph_and_triplets_match_brute_force(generator):
    z, pos, batch = molecules(generator)
    model = TorchDimeNetPlusPlus(
        hidden_channels=16, out_channels=1, num_blocks=2, int_emb_size=8,
        basis_emb_size=4, out_emb_channels=16, num_spherical=3,
        num_radial=4, cutoff=3.0, output_initializer='glorot_orthogonal'
    ).double()
    out = model(z, pos, batch)
    model.radius_graph = brute_force_edges
    model.triplets = brute_force_triplets
    torch.testing.assert_close(out, model(z, pos, batch))
    assert out.shape == (3, 1) and bool(out.abs().min() > 0)


def synthetic_dataset(generator, count):
    r"""Molecules whose target (column 2) is an invariant function of
    their atoms: the number of heavy atoms plus the sum of the inverse
    distances."""
    data_list = []
    for _ in range(count):
        size = int(torch.randint(3, 8, (1, ), generator=generator))
        z, pos, _ = molecules(generator, (size, ), spread=1.0)
        dist = torch.cdist(pos, pos)[torch.triu_indices(size, size, 1)
                                     .unbind()]
        y = torch.zeros(1, 12)
        y[0, 2] = float((z > 1).sum()) + float((1 / dist).clamp(max=5).sum())
        data_list.append(Data(x=node_features(z), z=z, pos=pos.float(),
                              y=y))
    return data_list


@pytest.mark.parametrize('bf16', [False, True])
def test_training_lowers_validation_mae(generator, bf16, monkeypatch):
    example = load_example()
    trims = []
    release = example.release_freed_memory
    monkeypatch.setattr(example, 'release_freed_memory',
                        lambda: trims.append(release()))
    train = synthetic_dataset(generator, 256)
    valid = synthetic_dataset(generator, 64)
    model = EGNNRegressor(in_channels=15, hidden_channels=32, num_layers=2)
    predict = lambda model, data: model(data.x, data.pos,  # noqa: E731
                                        data.batch, data.num_graphs)
    y = torch.cat([data.y[:, 2] for data in train]).double()
    mean, mad = float(y.mean()), float((y - y.mean()).abs().mean())
    train_loader = DataLoader(train, batch_size=32, shuffle=True)
    valid_loader = DataLoader(valid, batch_size=64)
    before = example.evaluate(model, predict, valid_loader, 2, mean, mad,
                              torch.device('cpu'))
    dtypes = set()  # (training?, dtype) of the first linear layer's output
    linear = next(m for m in model.modules()
                  if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(
        lambda module, inputs, out: dtypes.add((module.training, out.dtype)))
    history = example.fit(model, predict, train_loader, valid_loader, 2,
                          mean, mad, budget_s=1e6, max_steps=300,
                          num_evals=4, bf16=bf16, progress=False)
    assert history['steps'] == 300 and len(history['valid_curve']) == 4
    train_dtype = torch.bfloat16 if bf16 else torch.float32
    assert dtypes == {(True, train_dtype), (False, torch.float32)}
    assert len(trims) == 300 // example.TRIM_EVERY
    assert history['best_valid_mae'] < 0.5 * before
    assert history['best_valid_mae'] < 0.5 * mad  # beats the mean
    # The best parameters are the ones loaded.
    assert example.evaluate(model, predict, valid_loader, 2, mean, mad,
                            torch.device('cpu')) == pytest.approx(
                                history['best_valid_mae'], rel=1e-5)


@pytest.mark.parametrize('options, message', [
    (['--target', 'enthalpy'], 'homo, lumo, gap'),
    (['--target', '12'], '0 to 11'),
    (['--budget', '0'], '--budget must be a positive'),
    (['--budget', 'nan'], '--budget must be a positive'),
    (['--num-train', '100001'], '--num-train 100001 exceeds'),
    (['--batch-size', '0'], '--batch-size must be positive'),
    (['--num-radial', '1'], "'--num-radial' must be 0 or an integer"),
    (['--model', 'schnet', '--num-radial', '50'],
     '--num-radial is an option of the egnn model'),
    (['--model', 'dimenet++', '--readout', 'atom'],
     '--readout is an option of the egnn model')])
def test_cli_rejects_bad_options_before_reading_data(tmp_path, options,
                                                     message):
    example = load_example()
    root = tmp_path / 'root'
    with pytest.raises(SystemExit, match=message):
        example.main(['--root', str(root), '--out', str(tmp_path / 'out'),
                      *options])
    assert not root.exists()


def test_result_names_carry_the_options_that_differ_from_the_paper():
    example = load_example()
    name = lambda argv: example.result_name(  # noqa: E731
        example.parse_args(argv))
    assert name([]) == 'egnn'
    assert name(['--model', 'dimenet++']) == 'dimenetpp'
    assert name(['--num-radial', '50']) == 'egnn-rbf50'
    assert name(['--readout', 'atom', '--lr', '5e-4']) == 'egnn-atom-lr5e-04'
    assert name(['--batch-size', '32', '--lr', '2e-3']) == 'egnn-lr2e-03-bs32'
