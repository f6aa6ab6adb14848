r"""Energies of the many-body particle systems DW4 and LJ13 used to benchmark
E(n)-equivariant normalizing flows (Köhler et al., 2020; Satorras et al.,
2021).

All energies are batched and differentiable. They take positions of shape
:obj:`[num_samples, num_particles, n_dims]` (or flattened
:obj:`[num_samples, num_particles * n_dims]`) and return one energy per
sample, of shape :obj:`[num_samples]`, in units of :math:`k_B T`.
"""
import abc
import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from torch_enf.utils import check_positive_number


class ParticleEnergy(torch.nn.Module, metaclass=abc.ABCMeta):
    r"""Base class of pairwise particle energies.

    Subclasses implement :meth:`energy` on validated positions of shape
    :obj:`[num_samples, num_particles, n_dims]`.

    Args:
        num_particles (int): Number of particles :math:`M`.
        n_dims (int): Spatial dimension :math:`n`.
    """
    def __init__(self, num_particles: int, n_dims: int):
        super().__init__()
        self.num_particles = num_particles
        self.n_dims = n_dims

    def positions(self, pos: Tensor) -> Tensor:
        r"""Validates :obj:`pos` and returns it with shape
        :obj:`[num_samples, num_particles, n_dims]`."""
        M, n = self.num_particles, self.n_dims
        if pos.dim() == 2:
            if pos.size(1) != M * n:
                raise ValueError(
                    f"Flattened positions must have width {M * n} "
                    f"({M} particles x {n} dims) for "
                    f"{self.__class__.__name__} (got {pos.size(1)})")
            return pos.view(pos.size(0), M, n)
        if pos.dim() != 3 or pos.shape[1:] != (M, n):
            raise ValueError(
                f"Positions must have shape [num_samples, {M}, {n}] or "
                f"[num_samples, {M * n}] for {self.__class__.__name__} "
                f"(got {tuple(pos.shape)})")
        return pos

    def pair_distances(self, pos: Tensor) -> Tensor:
        r"""Distances of the :math:`M(M-1)/2` unordered particle pairs
        :math:`i < j`, of shape :obj:`[num_samples, M * (M - 1) / 2]`."""
        pos = self.positions(pos)
        row, col = torch.triu_indices(self.num_particles, self.num_particles,
                                      offset=1, device=pos.device)
        return (pos[:, row] - pos[:, col]).norm(dim=-1)

    @abc.abstractmethod
    def energy(self, pos: Tensor) -> Tensor:
        r"""The energies of validated positions of shape
        :obj:`[num_samples, num_particles, n_dims]`, of shape
        :obj:`[num_samples]`; implemented by every system."""

    def initial_positions(
        self,
        num_samples: int,
        generator: Optional[torch.Generator] = None,
        dtype: torch.dtype = torch.float64,
    ) -> Tensor:
        r"""Returns random starting configurations for samplers, of shape
        :obj:`[num_samples, num_particles, n_dims]`: standard Gaussian
        positions unless a subclass knows better. Drawn on the device of
        :obj:`generator`."""
        device = generator.device if generator is not None else None
        return torch.randn(num_samples, self.num_particles, self.n_dims,
                           generator=generator, dtype=dtype, device=device)

    def forward(self, pos: Tensor) -> Tensor:
        r"""Returns the energies of shape :obj:`[num_samples]`."""
        return self.energy(self.positions(pos))

    def energy_and_gradient(self, pos: Tensor) -> Tuple[Tensor, Tensor]:
        r"""Returns the energies :math:`E(\mathbf{x})` of shape
        :obj:`[num_samples]` and their gradients
        :math:`\nabla_{\mathbf{x}} E` of the same shape as :obj:`pos`
        (computed by autograd; the forces are the negative gradients)."""
        with torch.enable_grad():
            pos = pos.detach().requires_grad_(True)
            energy = self(pos)
            gradient, = torch.autograd.grad(energy.sum(), pos)
        return energy.detach(), gradient

    def gradient(self, pos: Tensor) -> Tensor:
        r"""Returns :math:`\nabla_{\mathbf{x}} E` with the shape of
        :obj:`pos`."""
        return self.energy_and_gradient(pos)[1]

    def virial(self, pos: Tensor) -> Tensor:
        r"""The virial :math:`\mathbf{x} \cdot \nabla E(\mathbf{x})` of
        every configuration (centred first), shape :obj:`[num_samples]`.

        For samples of :math:`p \propto e^{-E}` on the
        :math:`d = (M - 1) n`-dimensional centred subspace, integration by
        parts gives :math:`\mathbb{E}_p[\mathbf{x} \cdot \nabla E] = d`
        for any translation-invariant energy that confines the particles:
        a mean far from :math:`d` shows samples that are not (yet) in
        equilibrium, or an energy other than the one they were drawn from.
        """
        pos = self.positions(pos)
        pos = pos - pos.mean(dim=1, keepdim=True)
        return (pos * self.gradient(pos)).sum(dim=(1, 2))

    @property
    def degrees_of_freedom(self) -> int:
        r"""The dimension :math:`(M - 1) n` of the centred subspace."""
        return (self.num_particles - 1) * self.n_dims

    def extra_repr(self) -> str:
        return f'num_particles={self.num_particles}, n_dims={self.n_dims}'


class DoubleWellEnergy(ParticleEnergy):
    r"""The multi-particle double-well energy (DW4 for the default four
    particles in 2D), a double-well potential in every pair distance
    :math:`d_{ij} = \| \mathbf{x}_i - \mathbf{x}_j \|`:

    .. math::
        E(\mathbf{x}) = \frac{1}{2\tau} \sum_{i \neq j}
        a (d_{ij} - d_0) + b (d_{ij} - d_0)^2 + c (d_{ij} - d_0)^4,

    where the sum over ordered pairs is halved, i.e. every unordered pair
    :math:`i < j` counts once.

    Args:
        num_particles (int, optional): Number of particles.
            (default: :obj:`4`)
        n_dims (int, optional): Spatial dimension. (default: :obj:`2`)
        a (float, optional): Linear coefficient. (default: :obj:`0.0`)
        b (float, optional): Quadratic coefficient. (default: :obj:`-4.0`)
        c (float, optional): Quartic coefficient. (default: :obj:`0.9`)
        d0 (float, optional): Distance offset :math:`d_0`.
            (default: :obj:`4.0`)
        tau (float, optional): Temperature :math:`\tau`.
            (default: :obj:`1.0`)
    """
    def __init__(self, num_particles: int = 4, n_dims: int = 2,
                 a: float = 0.0, b: float = -4.0, c: float = 0.9,
                 d0: float = 4.0, tau: float = 1.0):
        super().__init__(num_particles, n_dims)
        self.a, self.b, self.c, self.d0, self.tau = a, b, c, d0, tau

    def energy(self, pos: Tensor) -> Tensor:
        r = self.pair_distances(pos) - self.d0
        pair_energy = self.a * r + self.b * r**2 + self.c * r**4
        return pair_energy.sum(dim=-1) / self.tau

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, a={self.a}, b={self.b}, '
                f'c={self.c}, d0={self.d0}, tau={self.tau}')


class HarmonicEnergy(ParticleEnergy):
    r"""The isotropic harmonic energy on the zero-centre-of-mass subspace,

    .. math::
        E(\mathbf{x}) = \frac{1}{2\sigma^2} \sum_i \|\mathbf{x}_i -
        \bar{\mathbf{x}}\|^2, \qquad
        \log Z = \frac{(M - 1)\, n}{2} \log(2 \pi \sigma^2),

    whose Boltzmann distribution is the centred Gaussian of standard
    deviation :math:`\sigma`: a system with an exactly known partition
    function (:meth:`log_partition_function`), for testing estimators.

    Args:
        num_particles (int): Number of particles.
        n_dims (int): Spatial dimension.
        sigma (float, optional): :math:`\sigma`. (default: :obj:`1.0`)
    """
    def __init__(self, num_particles: int, n_dims: int, sigma: float = 1.0):
        super().__init__(num_particles, n_dims)
        check_positive_number(sigma, 'sigma')
        self.sigma = sigma

    def energy(self, pos: Tensor) -> Tensor:
        centred = pos - pos.mean(dim=1, keepdim=True)
        return 0.5 * centred.pow(2).sum(dim=(1, 2)) / self.sigma**2

    def log_partition_function(self) -> float:
        r"""The exact :math:`\log Z` on the centred subspace."""
        dims = (self.num_particles - 1) * self.n_dims
        return 0.5 * dims * math.log(2 * math.pi * self.sigma**2)

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, sigma={self.sigma}'


class LennardJonesEnergy(ParticleEnergy):
    r"""The Lennard-Jones cluster energy with a harmonic confinement
    (LJ13 for the default 13 particles in 3D):

    .. math::
        E(\mathbf{x}) = \frac{\epsilon}{\kappa \tau} \sum_{i \neq j}
        \left[ \left( \frac{r_m}{d_{ij}} \right)^{12}
        - 2 \left( \frac{r_m}{d_{ij}} \right)^{6} \right]
        + \frac{1}{2} \sum_i \| \mathbf{x}_i - \bar{\mathbf{x}} \|^2,

    with :math:`\bar{\mathbf{x}}` the centre of mass and :math:`\kappa = 1`
    by default: the sum runs over ordered pairs, so every unordered pair
    :math:`i < j` counts twice. This is the convention that reproduces the
    published LJ13 samples of Klein et al. (2023) (see the particle systems
    page of the docs for the comparison). With :obj:`halve_pair_sum=True`,
    :math:`\kappa = 2` as in the formula of Köhler et al. (2020) and
    Satorras et al. (2021), i.e. every unordered pair counts once.

    The energy is :math:`+\infty` (never NaN) when two particles coincide.

    Args:
        num_particles (int, optional): Number of particles.
            (default: :obj:`13`)
        n_dims (int, optional): Spatial dimension. (default: :obj:`3`)
        eps (float, optional): Well depth :math:`\epsilon`.
            (default: :obj:`1.0`)
        rm (float, optional): Distance :math:`r_m` of the pair minimum.
            (default: :obj:`1.0`)
        tau (float, optional): Temperature :math:`\tau`.
            (default: :obj:`1.0`)
        oscillator_scale (float, optional): Factor of the harmonic term
            (:obj:`0.` disables it). (default: :obj:`1.0`)
        halve_pair_sum (bool, optional): Whether the sum over ordered pairs is
            halved (:math:`\kappa = 2`). (default: :obj:`False`)
    """
    def __init__(self, num_particles: int = 13, n_dims: int = 3,
                 eps: float = 1.0, rm: float = 1.0, tau: float = 1.0,
                 oscillator_scale: float = 1.0, halve_pair_sum: bool = False):
        super().__init__(num_particles, n_dims)
        self.eps, self.rm, self.tau = eps, rm, tau
        self.oscillator_scale = oscillator_scale
        self.halve_pair_sum = halve_pair_sum

    def initial_positions(
        self,
        num_samples: int,
        generator: Optional[torch.Generator] = None,
        dtype: torch.dtype = torch.float64,
    ) -> Tensor:
        r"""Returns random starting configurations without overlapping
        particles: every configuration occupies randomly chosen sites of a
        cubic lattice with spacing :math:`r_m`, jittered by
        :math:`0.05\, r_m`."""
        M, n = self.num_particles, self.n_dims
        device = generator.device if generator is not None else None
        side = math.ceil(M**(1 / n))
        grid = torch.arange(side, dtype=dtype, device=device)
        sites = torch.cartesian_prod(*[grid] * n).view(-1, n)
        scores = torch.rand(num_samples, sites.size(0), generator=generator,
                            dtype=dtype, device=device)
        chosen = scores.argsort(dim=1)[:, :M]
        jitter = torch.randn(num_samples, M, n, generator=generator,
                             dtype=dtype, device=device)
        return self.rm * (sites[chosen] + 0.05 * jitter)

    def energy(self, pos: Tensor) -> Tensor:
        inv6 = (self.rm / self.pair_distances(pos))**6
        # Written as s (s - 2) so that coinciding particles give +inf:
        unordered_sum = (inv6 * (inv6 - 2)).sum(dim=-1)
        kappa = 2 if self.halve_pair_sum else 1
        lj = 2 * self.eps * unordered_sum / (kappa * self.tau)
        centred = pos - pos.mean(dim=1, keepdim=True)
        oscillator = 0.5 * centred.pow(2).sum(dim=(1, 2))
        return lj + self.oscillator_scale * oscillator

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, eps={self.eps}, rm={self.rm}, '
                f'tau={self.tau}, oscillator_scale={self.oscillator_scale}, '
                f'halve_pair_sum={self.halve_pair_sum}')
