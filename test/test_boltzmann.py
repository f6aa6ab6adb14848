r"""Importance weights, effective sample size, log Z and the entropy
bracket, against a harmonic system whose partition function is known."""
import math

import pytest
import torch
from torch_geometric.data import Batch, Data

from torch_enf.boltzmann import (effective_sample_size, entropy_bracket,
                                 importance_weights, log_partition_function,
                                 log_partition_upper_bound, reweight,
                                 weighted_histogram)
from torch_enf.flows import ENFlow, SolverOptions
from torch_enf.systems import DoubleWellEnergy, HarmonicEnergy
from torch_enf.testing import permutation_within_graphs, random_orthogonal


SOLVER = SolverOptions(rtol=1e-7, atol=1e-7)


def near_identity_flow(n_dims=2):
    torch.manual_seed(0)
    return ENFlow(n_dims, hidden_channels=8, num_layers=1).double().eval()


def test_harmonic_log_z_is_recovered_with_ess_near_one():
    energy = HarmonicEnergy(4, 2)
    flow = near_identity_flow()
    draw = importance_weights(flow, energy, 400, solver=SOLVER,
                              generator=torch.Generator().manual_seed(1))
    assert draw.positions.shape == (400, 4, 2)
    assert effective_sample_size(draw.log_weights) > 0.99
    log_z, stderr = log_partition_function(draw.log_weights)
    exact = energy.log_partition_function()  # 3 log(2 pi)
    assert exact == pytest.approx(3 * math.log(2 * math.pi))
    assert log_z == pytest.approx(exact, abs=max(5 * stderr, 1e-3))
    # Data from p (exact Gaussian samples) bracket the entropy.
    generator = torch.Generator().manual_seed(2)
    data = torch.randn(400, 4, 2, generator=generator, dtype=torch.float64)
    data = data - data.mean(1, keepdim=True)
    log_q = flow.log_prob(Batch.from_data_list([Data(pos=p) for p in data]),
                          solver=SOLVER)
    bracket = entropy_bracket(energy(data), log_q, draw.log_weights)
    exact_entropy = 3.0 + exact  # E_p[E] = (M - 1) n / 2
    assert bracket.lower <= bracket.entropy + 1e-9 <= bracket.upper + 2e-9
    assert bracket.entropy == pytest.approx(exact_entropy,
                                            abs=5 * bracket.stderr)
    assert abs(bracket.kl) < 0.05 and bracket.ess > 0.99


def test_reweighting_recovers_a_wider_target():
    energy = HarmonicEnergy(3, 2, sigma=1.2)
    draw = importance_weights(near_identity_flow(), energy, 4000,
                              solver=SOLVER,
                              generator=torch.Generator().manual_seed(3))
    ess = effective_sample_size(draw.log_weights)
    assert 0.3 < ess < 0.99
    radius2 = draw.positions.pow(2).sum(dim=(1, 2))
    exact = 4 * 1.2 ** 2  # (M - 1) n sigma^2
    assert float(radius2.mean()) == pytest.approx(4.0, rel=0.1)  # q's
    assert reweight(radius2, draw.log_weights) == pytest.approx(
        exact, rel=0.08)
    hist = weighted_histogram(radius2, draw.log_weights, 20, (0.0, 20.0))
    assert hist.shape == (20, ) and float(hist.sum()) == pytest.approx(1.0)
    log_z, _ = log_partition_function(draw.log_weights)
    assert log_z == pytest.approx(energy.log_partition_function(), abs=0.1)


def test_tempered_proposals_have_exact_densities():
    flow = near_identity_flow()
    # Latents scaled by 0.8 match a harmonic target of width 0.8: equal
    # weights and its log Z, only if log q_tau is the tempered density.
    narrow = HarmonicEnergy(4, 2, sigma=0.8)
    draw = importance_weights(flow, narrow, 400, solver=SOLVER,
                              temperature=0.8,
                              generator=torch.Generator().manual_seed(5))
    assert effective_sample_size(draw.log_weights) > 0.99
    assert draw.positions.pow(2).sum(dim=(1, 2)).mean() == pytest.approx(
        6 * 0.8**2, rel=0.1)  # (M - 1) n sigma^2
    log_z, stderr = log_partition_function(draw.log_weights)
    assert log_z == pytest.approx(narrow.log_partition_function(),
                                  abs=max(5 * stderr, 1e-3))
    # The weights of a narrower proposal still give the unbiased log Z of
    # a wider target.
    wide = HarmonicEnergy(4, 2)
    draw = importance_weights(flow, wide, 4000, solver=SOLVER,
                              temperature=0.8,
                              generator=torch.Generator().manual_seed(6))
    assert effective_sample_size(draw.log_weights) < 0.95
    log_z, stderr = log_partition_function(draw.log_weights)
    assert log_z == pytest.approx(wide.log_partition_function(),
                                  abs=max(5 * stderr, 0.02))
    # log q_tau(x) = log p_tau(z) + log |det dz/dx| for the encoded sample.
    samples, log_q = flow.sample_with_log_prob(
        3, 4, temperature=0.5, solver=SOLVER,
        generator=torch.Generator().manual_seed(7))
    latent = flow.encode(samples, solver=SOLVER)
    torch.testing.assert_close(flow.base_log_prob(latent, 0.5) +
                               latent.log_det, log_q, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match='temperature'):
        flow.sample_with_log_prob(2, 4, temperature=0.0)


def test_ess_of_equal_and_dominated_weights():
    assert effective_sample_size(torch.zeros(50)) == pytest.approx(1.0)
    dominated = torch.full((50, ), -40.0)
    dominated[7] = 0.0
    assert effective_sample_size(dominated) == pytest.approx(1 / 50,
                                                             rel=1e-6)
    with_zero = torch.tensor([0.0, 0.0, float('-inf')])
    assert effective_sample_size(with_zero) == pytest.approx(2 / 3)


def test_sampled_log_q_matches_log_prob_and_weights_are_invariant(
        generator):
    flow = near_identity_flow(3)
    for conv in flow.dynamics.egnn.convs:  # a flow far from the identity
        torch.nn.init.normal_(conv.coord_lin2.weight, std=0.3)
    energy = DoubleWellEnergy(5, 3)
    # log q of a sample and of its moved copy come from separate solves.
    tight = SolverOptions(rtol=1e-9, atol=1e-9)
    draw = importance_weights(flow, energy, 6, batch_size=4, solver=tight,
                              generator=torch.Generator().manual_seed(0))
    samples = draw.samples
    torch.testing.assert_close(flow.log_prob(samples, solver=tight),
                               draw.log_q, atol=1e-5, rtol=0)
    q = random_orthogonal(3, generator)
    perm = permutation_within_graphs(samples.batch, generator)
    moved = Batch.from_data_list([Data(pos=p) for p in (
        samples.pos @ q.t() + 1.0)[perm].view(6, 5, 3)])
    log_w = -energy(moved.pos.view(6, 5, 3)) - flow.log_prob(moved,
                                                             solver=tight)
    torch.testing.assert_close(log_w, draw.log_weights, atol=1e-5, rtol=0)
    # The draws follow the solver they are given.
    euler = SolverOptions('euler', num_steps=2)
    coarse = importance_weights(flow, energy, 6, solver=euler,
                                generator=torch.Generator().manual_seed(0))
    samples, log_q = flow.sample_with_log_prob(
        6, 5, solver=euler, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(coarse.samples.pos, samples.pos, rtol=0,
                               atol=0)
    torch.testing.assert_close(coarse.log_q, log_q, rtol=0, atol=0)
    assert not torch.allclose(coarse.log_q, draw.log_q, atol=1e-3)


def test_bad_input():
    flow = near_identity_flow()
    with pytest.raises(ValueError, match='3-dimensional, the flow 2'):
        importance_weights(flow, HarmonicEnergy(4, 3), 10)
    with pytest.raises(ValueError, match="'num_samples' must be"):
        importance_weights(flow, HarmonicEnergy(4, 2), 0)

    class Broken(HarmonicEnergy):
        def energy(self, pos):
            out = super().energy(pos)
            out[::2] = float('nan')
            return out

    with pytest.raises(ValueError, match='NaN for 3 of 6 samples'):
        importance_weights(flow, Broken(4, 2), 6)
    for bad in (torch.tensor([]), torch.tensor([float('nan'), 0.0]),
                torch.full((3, ), float('-inf'))):
        with pytest.raises(ValueError):
            effective_sample_size(bad)
    with pytest.raises(ValueError):
        log_partition_upper_bound(torch.tensor([1.0, float('inf')]),
                                  torch.zeros(2))


def test_hutchinson_log_weights_are_unbiased_and_noisier():
    energy = HarmonicEnergy(4, 2)
    flow = near_identity_flow()
    exact = importance_weights(flow, energy, 200, solver=SOLVER,
                               generator=torch.Generator().manual_seed(3))
    torch.manual_seed(4)  # the Hutchinson probes
    noisy = importance_weights(flow, energy, 200, solver=SOLVER,
                               generator=torch.Generator().manual_seed(3),
                               trace='hutchinson')
    assert torch.allclose(noisy.positions, exact.positions, atol=1e-6)
    error = noisy.log_q - exact.log_q
    assert float(error.abs().max()) > 0  # a different, noisy estimate
    assert abs(float(error.mean())) < 4 * float(error.std()) / 200**0.5
    assert effective_sample_size(noisy.log_weights) <= \
        effective_sample_size(exact.log_weights) + 1e-6
