import pytest
import torch

import torch_enf.nn.graph as graph_module
from torch_enf.nn import RadialBasis, full_edge_index, radius_graph


def brute_force_pairs(batch, pos=None, r=None):
    edges = set()
    for i in range(batch.numel()):
        for j in range(batch.numel()):
            if i == j or batch[i] != batch[j]:
                continue
            if r is not None and float((pos[i] - pos[j]).norm()) > r:
                continue
            edges.add((j, i))
    return edges


def as_set(edge_index):
    return set(map(tuple, edge_index.t().tolist()))


def test_full_edge_index_matches_brute_force():
    batch = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 3])
    edge_index = full_edge_index(batch)
    assert edge_index.size(1) == 3 * 2 + 2 * 1 + 0 + 5 * 4
    assert as_set(edge_index) == brute_force_pairs(batch)
    # Sorted by target, then source.
    key = edge_index[1] * 100 + edge_index[0]
    assert torch.equal(key, key.sort().values)


def test_full_edge_index_never_crosses_graphs(generator):
    sizes = torch.randint(1, 9, (20, ), generator=generator)
    batch = torch.repeat_interleave(torch.arange(20), sizes)
    edge_index = full_edge_index(batch)
    assert torch.equal(batch[edge_index[0]], batch[edge_index[1]])
    assert bool((edge_index[0] != edge_index[1]).all())
    assert edge_index.size(1) == int((sizes * (sizes - 1)).sum())


@pytest.mark.parametrize('bad', [
    torch.tensor([1, 1, 0]),
    torch.tensor([0, 0, 2]),
    torch.tensor([[0, 0]]),
])
def test_full_edge_index_rejects_bad_batch(bad):
    with pytest.raises(ValueError, match='batch'):
        full_edge_index(bad)


@pytest.mark.parametrize('n_dims', [2, 3])
def test_radius_graph_matches_brute_force(n_dims, generator):
    batch = torch.repeat_interleave(torch.arange(4), torch.tensor([5, 1, 7,
                                                                   9]))
    pos = 2 * torch.randn(batch.numel(), n_dims, generator=generator)
    edge_index = radius_graph(pos, 2.0, batch)
    assert as_set(edge_index) == brute_force_pairs(batch, pos, 2.0)
    assert 0 < edge_index.size(1) < full_edge_index(batch).size(1)


def test_radius_graph_max_num_neighbors_keeps_nearest(generator):
    pos = torch.randn(30, 3, generator=generator)
    edge_index = radius_graph(pos, 10.0, max_num_neighbors=4)
    assert bool((torch.bincount(edge_index[1], minlength=30) == 4).all())
    dist = torch.cdist(pos, pos)
    dist.fill_diagonal_(float('inf'))
    nearest = dist.topk(4, dim=0, largest=False).indices  # [4, 30]
    expected = {(int(j), i) for i in range(30) for j in nearest[:, i]}
    assert as_set(edge_index) == expected


def test_radius_graph_errors():
    pos = torch.randn(4, 3)
    with pytest.raises(ValueError, match="'r' must be a positive"):
        radius_graph(pos, 0.0)
    with pytest.raises(ValueError, match='pos'):
        radius_graph(pos.view(-1), 1.0)
    with pytest.raises(ValueError, match='max_num_neighbors'):
        radius_graph(pos, 1.0, max_num_neighbors=0)
    with pytest.raises(ValueError, match='batch'):
        radius_graph(pos, 1.0, batch=torch.tensor([0, 0, 1]))


def test_torch_cluster_path_agrees_with_pure_torch(generator, monkeypatch):
    torch_cluster = pytest.importorskip('torch_cluster')
    batch = torch.repeat_interleave(torch.arange(3), torch.tensor([6, 2, 8]))
    pos = 2 * torch.randn(batch.numel(), 3, generator=generator)
    with_cluster = radius_graph(pos, 2.5, batch, max_num_neighbors=3)
    monkeypatch.setattr(graph_module, 'torch_cluster', None)
    without = radius_graph(pos, 2.5, batch, max_num_neighbors=3)
    assert torch_cluster is not None
    assert torch.equal(with_cluster, without)


@pytest.mark.parametrize('n_dims', [2, 3])
def test_cell_list_equals_all_pairs(n_dims, monkeypatch):
    generator = torch.Generator().manual_seed(n_dims)
    sizes = torch.tensor([150, 3, 90, 1])
    batch = torch.repeat_interleave(torch.arange(4), sizes)
    pos = 5 * torch.rand(batch.numel(), n_dims, generator=generator) - 2
    monkeypatch.setattr(graph_module, 'torch_cluster', None)
    monkeypatch.setattr(graph_module, 'CELL_LIST_MIN_NODES', 10 ** 9)
    expected = radius_graph(pos, 0.9, batch)
    bounded = radius_graph(pos, 0.9, batch, max_num_neighbors=4)
    monkeypatch.setattr(graph_module, 'CELL_LIST_MIN_NODES', 0)
    assert torch.equal(radius_graph(pos, 0.9, batch), expected)
    assert torch.equal(radius_graph(pos, 0.9, batch, max_num_neighbors=4),
                       bounded)
    assert expected.size(1) > 500


def test_radial_basis_matches_schnet_gaussians_on_squared_distances():
    basis = RadialBasis(cutoff=4.0, num_radial=5).double()
    dist = torch.tensor([0.1, 0.5, 1.0, 3.9, 7.0], dtype=torch.float64)
    expected = torch.exp(-0.5 * ((dist[:, None] - torch.linspace(
        0, 4, 5, dtype=torch.float64)) / 1.0) ** 2)
    torch.testing.assert_close(basis(dist.pow(2)), expected)
    torch.testing.assert_close(basis(dist.pow(2)[:, None]), expected)
    # Coinciding nodes keep a finite gradient.
    dist2 = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    basis(dist2).sum().backward()
    assert torch.isfinite(dist2.grad).all()
    # The centres keep the buffer name of PyG's GaussianSmearing, under
    # which the pretrained flows store them.
    assert list(basis.state_dict()) == ['offset']


@pytest.mark.parametrize('num_radial', [0, 1, 2.5, True])
def test_radial_basis_refuses_fewer_than_two_gaussians(num_radial):
    with pytest.raises(ValueError, match="'num_radial' must be an integer "
                       "of at least 2"):
        RadialBasis(4.0, num_radial)
    with pytest.raises(ValueError, match="'radial_cutoff' must be a "
                       "positive"):
        RadialBasis(0.0, 4)
