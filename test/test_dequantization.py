import math

import pytest
import torch
import torch.nn.functional as F

from torch_enf.flows import (ActNorm, ArgmaxDequantizer, UniformDequantizer,
                             VariationalDequantizer)
from torch_enf.nn import full_edge_index
from torch_enf.utils import center_pos

from torch_enf.testing import permutation_within_graphs, random_orthogonal

ATOMIC_NUMBERS = torch.tensor([1, 6, 7, 8, 9])


def discrete_features(sizes, generator):
    r"""QM9-style features (one-hot over 5 types, atomic number) and
    positions of a batch of molecules."""
    batch = torch.repeat_interleave(torch.arange(len(sizes)),
                                    torch.tensor(sizes))
    types = torch.randint(0, 5, (batch.numel(), ), generator=generator)
    h = torch.cat([F.one_hot(types, 5).double(),
                   ATOMIC_NUMBERS[types, None].double()], dim=-1)
    pos = torch.randn(batch.numel(), 3, generator=generator,
                      dtype=torch.float64)
    return h, pos, batch


def variational(**kwargs):
    deq = VariationalDequantizer(hidden_channels=16, num_layers=2,
                                 **kwargs).double()
    # Non-zero read-out, so that the posterior depends on (h, pos).
    torch.nn.init.normal_(deq.net.lin_out.weight, std=0.05)
    torch.nn.init.normal_(deq.net.lin_out.bias, std=0.3)
    return deq


def argmax_with_margin():
    return ArgmaxDequantizer(margin=1.5)


@pytest.mark.parametrize('make', [UniformDequantizer, variational,
                                  ArgmaxDequantizer, argmax_with_margin])
def test_round_trip_is_exact(make, generator):
    deq = make()
    h, pos, batch = discrete_features([3, 5, 4], generator)
    h_cont, log_q = deq(h, pos, batch)
    assert h_cont.shape == h.shape and log_q.shape == (3, )
    assert torch.isfinite(log_q).all()
    assert not torch.equal(h_cont, h)
    assert torch.equal(deq.inverse(h_cont), h)


def test_uniform_cells_and_zero_log_q(generator):
    h, pos, batch = discrete_features([6, 2], generator)
    h_cont, log_q = UniformDequantizer()(h, pos, batch)
    noise = h_cont - h
    assert bool(((noise >= 0) & (noise < 1)).all())
    assert torch.equal(log_q, torch.zeros(2, dtype=h.dtype))


@torch.no_grad()
def test_variational_log_q_matches_direct_density(generator):
    r"""One node: rebuild eps from v by inverting the maps and evaluate
    log N(eps) + log |d eps / d v| directly."""
    deq = variational()
    h, pos, batch = discrete_features([2], generator)
    v, log_q = deq(h, pos, batch)
    params, _ = deq.net(h, pos, torch.tensor([[1, 0], [0, 1]]))
    mean, log_scale = params.chunk(2, dim=-1)
    total = 0.0
    for i in range(2):
        k = int(h[i, :5].argmax())
        top = v[i, k]
        eps = torch.empty(6, dtype=v.dtype)
        log_det = 0.0  # log |d v / d eps|
        for c in range(5):
            if c == k:
                eps[c] = top
                continue
            gap = top - v[i, c]                  # = softplus(top - eps_c)
            eps[c] = top - torch.log(torch.expm1(gap))
            log_det += math.log(torch.sigmoid(top - eps[c]))
        frac = v[i, 5] - h[i, 5]
        eps[5] = torch.log(frac / (1 - frac))
        log_det += math.log(frac * (1 - frac))
        normal = torch.distributions.Normal(mean[i], log_scale[i].exp())
        total += float(normal.log_prob(eps).sum()) - log_det
    assert float(log_q[0]) == pytest.approx(total, abs=1e-6)


@torch.no_grad()
def test_argmax_dequantizer_is_a_fixed_untrained_posterior(generator):
    fixed = ArgmaxDequantizer().double()
    untrained = VariationalDequantizer(hidden_channels=8).double()
    assert not fixed.trainable and untrained.trainable
    assert list(fixed.parameters()) == []
    h, pos, batch = discrete_features([3, 5], generator)
    noise = torch.randn(h.shape, generator=generator, dtype=h.dtype)
    for a, b in zip(fixed(h, pos, batch, noise=noise),
                    untrained(h, pos, batch, noise=noise)):
        torch.testing.assert_close(a, b)


@torch.no_grad()
@pytest.mark.parametrize('make', [ArgmaxDequantizer, variational])
def test_margin_separates_the_classes_and_keeps_log_q(make, generator):
    h, pos, batch = discrete_features([4, 6], generator)
    noise = torch.randn(h.shape, generator=generator, dtype=h.dtype)
    torch.manual_seed(0)
    plain = make().double()
    torch.manual_seed(0)
    shifted = make(margin=2.0).double()
    v_plain, log_q_plain = plain(h, pos, batch, noise=noise)
    v, log_q = shifted(h, pos, batch, noise=noise)
    torch.testing.assert_close(log_q, log_q_plain)
    one_hot = h[:, :5].bool()
    winner = v[:, :5][one_hot]
    losers = v[:, :5][~one_hot].view(-1, 4)
    assert bool((losers <= winner[:, None] - 2.0).all())
    torch.testing.assert_close(v[:, :5][~one_hot],
                               v_plain[:, :5][~one_hot] - 2.0)
    torch.testing.assert_close(winner, v_plain[:, :5][one_hot])
    torch.testing.assert_close(v[:, 5:], v_plain[:, 5:])
    with pytest.raises(ValueError, match="'margin' must be"):
        make(margin=-1.0)


def test_variational_log_q_integrates_to_one():
    r"""Two classes, no integer column, a constant posterior: q is a density
    on the half-plane v_0 > v_1 (true class 0), so it integrates to one."""
    deq = VariationalDequantizer(2, 0, hidden_channels=8,
                                 num_layers=1).double()
    torch.nn.init.constant_(deq.net.lin_out.bias, 0.3)
    h = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    pos = torch.tensor([[0.0, 0, 0], [1.0, 0, 0]], dtype=torch.float64)
    params, _ = deq.net(h, pos, torch.tensor([[1, 0], [0, 1]]))
    mean, log_scale = params[0].chunk(2)
    grid = torch.linspace(-8, 9, 801, dtype=torch.float64)
    v0, v1 = torch.meshgrid(grid, grid, indexing='ij')
    inside = v1 < v0
    eps1 = v0 - torch.log(torch.expm1((v0 - v1).clamp(min=1e-12)))
    normal = torch.distributions.Normal(mean, log_scale.exp())
    density = (normal.log_prob(torch.stack([v0, eps1], -1)).sum(-1) -
               F.logsigmoid(v0 - eps1)).exp() * inside
    step = float(grid[1] - grid[0])
    assert float(density.sum()) * step**2 == pytest.approx(1.0, abs=2e-2)


def test_variational_log_q_is_invariant(generator):
    deq = variational()
    h, pos, batch = discrete_features([4, 5], generator)
    noise = torch.randn(h.shape, generator=generator, dtype=h.dtype)
    rotation = random_orthogonal(3, generator)
    perm = permutation_within_graphs(batch, generator)
    _, log_q = deq(h, pos, batch, noise=noise)
    moved = pos @ rotation.t() + torch.tensor([1.0, -2.0, 3.0],
                                              dtype=pos.dtype)
    _, log_q_moved = deq(h, moved, batch, noise=noise)
    _, log_q_perm = deq(h[perm], pos[perm], batch, noise=noise[perm])
    torch.testing.assert_close(log_q_moved, log_q, atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(log_q_perm, log_q, atol=1e-8, rtol=1e-8)
    other_pos = pos.clone()
    other_pos[0] += 1.0
    assert not torch.allclose(deq(h, other_pos, batch, noise=noise)[1],
                              log_q)


def test_variational_posterior_is_permutation_equivariant(generator):
    r"""The Gaussian parameters of a node do not depend on node order."""
    deq = variational()
    h, pos, batch = discrete_features([4, 5], generator)
    perm = permutation_within_graphs(batch, generator)
    edges = full_edge_index(batch, 2)
    params, _ = deq.net(h, pos, edges)
    params_perm, _ = deq.net(h[perm], pos[perm], edges)
    torch.testing.assert_close(params_perm, params[perm])


@pytest.mark.parametrize('make', [UniformDequantizer, variational])
def test_bad_inputs(make, generator):
    deq = make()
    h, pos, batch = discrete_features([3], generator)
    with pytest.raises(ValueError, match='shape'):
        deq(h[:, :5], pos, batch)
    with pytest.raises(ValueError, match='one-hot'):
        deq(h * 2, pos, batch)
    bad_charge = h.clone()
    bad_charge[0, 5] = 1.5
    with pytest.raises(ValueError, match='integers'):
        deq(bad_charge, pos, batch)
    nan = h.clone()
    nan[0, 5] = float('nan')
    with pytest.raises(ValueError, match='non-finite'):
        deq(nan, pos, batch)
    with pytest.raises(ValueError, match='shape'):
        deq.inverse(h[:, :4])
    with pytest.raises(ValueError, match='classes'):
        UniformDequantizer(num_classes=1)


def test_actnorm_log_det_by_brute_force(generator):
    r"""The log-determinant on the centred subspace counts (M-1) n position
    dimensions: compare with the Jacobian in an orthonormal basis of it."""
    M, n, channels = 4, 3, 2
    norm = ActNorm(n, channels).double()
    with torch.no_grad():
        norm.pos_log_scale.fill_(0.3)
        norm.h_log_scale.copy_(torch.tensor([-0.2, 0.5]))
        norm.h_shift.copy_(torch.tensor([1.0, -1.0]))
    # Orthonormal basis of the centred subspace of R^{M x n}.
    projector = torch.eye(M, dtype=torch.float64) - 1.0 / M
    basis_m = torch.linalg.svd(projector).U[:, :M - 1].contiguous()  # [M, M-1]
    basis = torch.kron(basis_m, torch.eye(n, dtype=torch.float64))

    def map_coordinates(coords):
        pos = (basis @ coords[:(M - 1) * n]).reshape(M, n)
        h = coords[(M - 1) * n:].reshape(M, channels)
        pos_out, h_out, _ = norm(pos, h)
        return torch.cat([basis.t() @ pos_out.reshape(-1),
                          h_out.reshape(-1)])

    coords = torch.randn((M - 1) * n + M * channels, generator=generator,
                         dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(map_coordinates, coords)
    brute = torch.linalg.slogdet(jacobian).logabsdet
    pos = (basis @ coords[:(M - 1) * n]).reshape(M, n)
    _, _, log_det = norm(pos, coords[(M - 1) * n:].reshape(M, channels))
    assert float(log_det) == pytest.approx(float(brute), abs=1e-8)
    assert float(log_det) == pytest.approx((M - 1) * n * 0.3 + M * 0.3,
                                           abs=1e-6)


def test_actnorm_initialize_and_inverse(generator):
    h, pos, batch = discrete_features([5, 7], generator)
    pos = center_pos(3.0 * pos, batch)
    norm = ActNorm(3, 6).double()
    norm.initialize(pos, h, batch)
    pos_out, h_out, log_det = norm(pos, h, batch)
    sizes = torch.tensor([5.0, 7.0], dtype=torch.float64)
    assert float(pos_out.pow(2).sum() / ((sizes - 1).sum() * 3)) == \
        pytest.approx(1.0, rel=1e-4)
    torch.testing.assert_close(h_out.mean(0), torch.zeros(6,
                                                          dtype=h.dtype),
                               atol=1e-6, rtol=0)
    pos_back, h_back = norm.inverse(pos_out, h_out)
    torch.testing.assert_close(pos_back, pos)
    torch.testing.assert_close(h_back, h)
    assert log_det.shape == (2, )
    with pytest.raises(ValueError, match="'h'"):
        norm(pos, h[:, :5], batch)
