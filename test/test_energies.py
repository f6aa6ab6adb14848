import math

import numpy as np
import pytest
import torch

from torch_enf.datasets import (DoubleWellEnergy, LennardJonesEnergy,
                                MALASampler, ParticleEnergy)


def double_well_reference(x, a=0.0, b=-4.0, c=0.9, d0=4.0, tau=1.0):
    out = np.zeros(len(x))
    for s, conf in enumerate(x):
        for i in range(len(conf)):
            for j in range(len(conf)):
                if i != j:
                    r = np.linalg.norm(conf[i] - conf[j]) - d0
                    out[s] += (a * r + b * r**2 + c * r**4) / (2 * tau)
    return out


def lennard_jones_reference(x, halve, eps=1.0, rm=1.0, tau=1.0):
    out = np.zeros(len(x))
    for s, conf in enumerate(x):
        for i in range(len(conf)):
            for j in range(len(conf)):
                if i != j:
                    q = rm / np.linalg.norm(conf[i] - conf[j])
                    out[s] += eps * (q**12 - 2 * q**6) / tau
        out[s] = out[s] / 2 if halve else out[s]
        out[s] += 0.5 * ((conf - conf.mean(0))**2).sum()
    return out


def random_rotation(n_dims, gen):
    q, r = torch.linalg.qr(torch.randn(n_dims, n_dims, generator=gen,
                                       dtype=torch.double))
    return q * torch.sign(torch.diagonal(r))


def test_double_well_matches_double_loop():
    x = 2 * torch.randn(6, 4, 2, generator=torch.Generator().manual_seed(0),
                        dtype=torch.double)
    energy = DoubleWellEnergy(a=0.3, b=-4.0, c=0.9, d0=4.0, tau=1.7)
    ref = double_well_reference(x.numpy(), a=0.3, tau=1.7)
    assert np.allclose(energy(x).numpy(), ref)
    assert np.allclose(energy(x.view(6, 8)).numpy(), ref)
    assert energy(x).shape == (6, )


@pytest.mark.parametrize('halve', [False, True])
def test_lennard_jones_matches_double_loop(halve):
    energy = LennardJonesEnergy(halve_pair_sum=halve, eps=1.3, tau=0.8)
    x = energy.initial_positions(5, torch.Generator().manual_seed(1))
    ref = lennard_jones_reference(x.numpy(), halve, eps=1.3, tau=0.8)
    assert np.allclose(energy(x).numpy(), ref)
    assert np.allclose(energy(x.reshape(5, 39)).numpy(), ref)


def test_halving_only_changes_the_pair_term():
    x = LennardJonesEnergy().initial_positions(
        4, torch.Generator().manual_seed(2))
    full, halved = LennardJonesEnergy(), LennardJonesEnergy(
        halve_pair_sum=True)
    no_osc = LennardJonesEnergy(oscillator_scale=0.0)
    assert torch.allclose(full(x) - no_osc(x), halved(x) - 0.5 * no_osc(x))


@pytest.mark.parametrize('energy', [DoubleWellEnergy(), LennardJonesEnergy()])
def test_energies_are_e_n_and_permutation_invariant(energy):
    gen = torch.Generator().manual_seed(3)
    x = energy.initial_positions(8, gen) * 1.5
    rot = random_rotation(energy.n_dims, gen)
    shift = torch.randn(8, 1, energy.n_dims, generator=gen,
                        dtype=torch.double)
    perm = torch.randperm(energy.num_particles, generator=gen)
    reflect = torch.ones(energy.n_dims, dtype=torch.double)
    reflect[0] = -1
    e = energy(x)
    assert torch.allclose(energy(x @ rot.T + shift), e)
    assert torch.allclose(energy(x * reflect), e)
    assert torch.allclose(energy(x[:, perm]), e)


@pytest.mark.parametrize('energy', [DoubleWellEnergy(), LennardJonesEnergy()])
def test_gradient_matches_finite_differences(energy):
    x = energy.initial_positions(3, torch.Generator().manual_seed(4))
    value, grad = energy.energy_and_gradient(x)
    assert torch.equal(value, energy(x))
    assert torch.equal(grad, energy.gradient(x))
    h = 1e-6
    numeric = torch.zeros_like(x)
    for idx in np.ndindex(*x.shape[1:]):
        dx = torch.zeros_like(x)
        dx[(slice(None), *idx)] = h
        numeric[(slice(None), *idx)] = (energy(x + dx) - energy(x - dx)) / (
            2 * h)
    assert torch.allclose(grad, numeric, rtol=1e-5, atol=1e-5)


def test_coinciding_lennard_jones_particles_give_inf_not_nan():
    x = LennardJonesEnergy().initial_positions(2)
    x[0, 1] = x[0, 0]
    e = LennardJonesEnergy()(x)
    assert math.isinf(e[0]) and e[0] > 0 and torch.isfinite(e[1])


def test_bad_shapes_raise():
    energy = DoubleWellEnergy()
    with pytest.raises(ValueError, match='width 8'):
        energy(torch.randn(3, 9))
    with pytest.raises(ValueError, match=r'\[num_samples, 4, 2\]'):
        energy(torch.randn(3, 4, 3))
    with pytest.raises(ValueError, match=r'\[num_samples, 4, 2\]'):
        energy(torch.randn(8))


class GaussianEnergy(ParticleEnergy):
    r"""E(x) = 1/2 sum (x - mean)^2 / var, independently per coordinate."""
    def __init__(self, mean, var):
        mean = torch.as_tensor(mean, dtype=torch.double)
        super().__init__(mean.size(0), mean.size(1))
        self.mean, self.var = mean, torch.as_tensor(var, dtype=torch.double)

    def energy(self, pos):
        return 0.5 * ((pos - self.mean)**2 / self.var).sum(dim=(1, 2))


class HarmonicEnergy(ParticleEnergy):
    r"""E(x) = 1/2 sum_i ||x_i - mean(x)||^2 / var (translation invariant)."""
    def __init__(self, num_particles, n_dims, var):
        super().__init__(num_particles, n_dims)
        self.var = var

    def energy(self, pos):
        centred = pos - pos.mean(dim=1, keepdim=True)
        return 0.5 * centred.pow(2).sum(dim=(1, 2)) / self.var


def assert_within_chain_errors(estimates, expected, num_se=4.0):
    # estimates: [num_chains, ...] per-chain estimates. Chains are
    # independent, so their spread gives the standard error of the mean.
    se = estimates.std(dim=0) / estimates.size(0)**0.5
    error = (estimates.mean(dim=0) - expected).abs()
    assert bool((error < num_se * se).all()), (error, se)


@pytest.mark.parametrize('temperatures', [(1.0, ), (1.0, 2.0, 4.0)])
def test_mala_reproduces_gaussian_moments(temperatures):
    mean = torch.tensor([1.0, -2.0], dtype=torch.double)
    var = torch.tensor([0.25, 4.0], dtype=torch.double)
    energy = GaussianEnergy(mean=[mean.tolist()], var=[var.tolist()])
    num_chains, draws = 1000, 10
    sampler = MALASampler(energy, num_chains=num_chains, burn_in=300,
                          thinning=10, temperatures=temperatures,
                          centre=False)
    x = sampler.sample(num_chains * draws, torch.Generator().manual_seed(0),
                       progress=False).view(draws, num_chains, 2)
    assert_within_chain_errors(x.mean(dim=0), mean)
    assert_within_chain_errors(((x - mean)**2).mean(dim=0), var)
    # And the errors are small, so the test has power:
    assert torch.allclose(x.mean(dim=(0, 1)), mean, atol=0.1)
    assert torch.allclose(x.var(dim=(0, 1)), var, rtol=0.1)
    assert bool((sampler.acceptance_rate > 0.45).all())
    assert bool((sampler.acceptance_rate < 0.7).all())
    if len(temperatures) > 1:
        assert bool((sampler.swap_rate > 0.1).all())


def test_mala_centred_subspace_moments():
    # Centred coordinates of x_i ~ N(0, var) i.i.d. have variance
    # var (1 - 1/M) on the centred subspace.
    energy = HarmonicEnergy(num_particles=4, n_dims=3, var=2.0)
    sampler = MALASampler(energy, num_chains=2000, burn_in=300, thinning=5)
    x = sampler.sample(6000, torch.Generator().manual_seed(1),
                       progress=False)
    assert x.mean(dim=1).abs().max() < 1e-10
    assert abs(float(x.var()) - 2.0 * 0.75) < 0.05


def test_mala_restricts_non_invariant_energy_to_centred_subspace():
    # x_i ~ N(mu_i, v_i I) conditioned on sum_i x_i = 0 has mean
    # mu_i - v_i sum(mu) / sum(v) and variance v_i - v_i^2 / sum(v).
    mu = torch.tensor([[3.0, 0.0], [0.0, 1.0], [-1.0, 2.0]],
                      dtype=torch.double)
    var = torch.tensor([[1.0], [2.0], [0.5]], dtype=torch.double)
    energy = GaussianEnergy(mean=mu.tolist(), var=var)
    num_chains, draws = 1000, 6
    sampler = MALASampler(energy, num_chains=num_chains, burn_in=200,
                          thinning=10)
    x = sampler.sample(num_chains * draws, torch.Generator().manual_seed(4),
                       progress=False).view(draws, num_chains, 3, 2)
    expected_mean = mu - var * mu.sum(dim=0) / var.sum()
    expected_var = (var - var**2 / var.sum()).expand_as(mu)
    assert_within_chain_errors(x.mean(dim=0), expected_mean)
    assert_within_chain_errors(((x - expected_mean)**2).mean(dim=0),
                               expected_var)


def test_single_mala_step_keeps_exact_samples_exact():
    # From exact N(1, 1) samples, one step with a large fixed step size h:
    # unadjusted Langevin would give variance (1 - h)^2 + 2h = 3.25; the
    # Metropolis correction keeps N(1, 1) (stationarity) and makes the pair
    # (x, x') exchangeable (detailed balance).
    gen = torch.Generator().manual_seed(2)
    num = 40000
    energy = GaussianEnergy(mean=[[1.0]], var=[[1.0]])
    x0 = 1 + torch.randn(num, 1, 1, generator=gen, dtype=torch.double)
    sampler = MALASampler(energy, num_chains=num, burn_in=0, thinning=1,
                          step_size=1.5, centre=False)
    x1 = sampler.sample(num, gen, init=x0, progress=False)
    assert 0.2 < float(sampler.acceptance_rate) < 0.95
    assert abs(float(x1.mean()) - 1.0) < 0.03
    assert abs(float(x1.var()) - 1.0) < 0.05
    a, b = x0.view(-1), x1.view(-1)
    assert abs(float((a * b**2).mean() - (a**2 * b).mean())) < 0.05


def test_sampler_rejects_non_finite_proposals_and_is_seeded():
    energy = LennardJonesEnergy(num_particles=5)
    sampler = MALASampler(energy, num_chains=50, burn_in=20, thinning=2,
                          step_size=10.0)
    x = sampler.sample(100, torch.Generator().manual_seed(3), progress=False)
    assert bool(torch.isfinite(energy(x)).all())
    again = sampler.sample(100, torch.Generator().manual_seed(3),
                           progress=False)
    assert torch.equal(x, again)


def test_sampler_errors():
    energy = DoubleWellEnergy()
    with pytest.raises(ValueError, match='temperatures'):
        MALASampler(energy, temperatures=(2.0, 3.0))
    with pytest.raises(ValueError, match='temperatures'):
        MALASampler(energy, temperatures=(1.0, 1.0))
    with pytest.raises(ValueError, match='thinning'):
        MALASampler(energy, thinning=0)
    with pytest.raises(ValueError, match='num_samples'):
        MALASampler(energy).sample(0)
    with pytest.raises(ValueError, match='init'):
        MALASampler(energy, num_chains=3).sample(3, init=torch.zeros(2, 4, 2))
    x = torch.zeros(2, 5, 3, dtype=torch.double)
    with pytest.raises(ValueError, match='non-finite'):
        MALASampler(LennardJonesEnergy(num_particles=5),
                    num_chains=2).sample(2, init=x)


def test_virial_equals_the_degrees_of_freedom_only_in_equilibrium():
    from torch_enf.systems import HarmonicEnergy
    energy = HarmonicEnergy(5, 3, sigma=0.7)
    assert energy.degrees_of_freedom == 12
    gen = torch.Generator().manual_seed(0)
    x = 0.7 * torch.randn(4000, 5, 3, generator=gen, dtype=torch.double)
    virial = energy.virial(x + 3.0)  # translated: centred inside
    stderr = float(virial.std()) / math.sqrt(virial.numel())
    assert float(virial.mean()) == pytest.approx(12, abs=4 * stderr)
    # Too hot a sample (twice the variance) is flagged: mean about 24.
    hot = energy.virial(math.sqrt(2) * x)
    assert float(hot.mean()) > 12 + 20 * stderr


def test_virial_matches_the_definition_on_lennard_jones():
    energy = LennardJonesEnergy()
    gen = torch.Generator().manual_seed(1)
    x = energy.initial_positions(3, gen)
    expected = [(p - p.mean(0)).flatten() @ energy.gradient(
        p.unsqueeze(0)).flatten() for p in x]
    assert torch.allclose(energy.virial(x), torch.stack(expected))
