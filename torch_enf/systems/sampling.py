r"""Markov chain Monte Carlo for generating datasets of particle systems
from their energies."""
import math
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .energies import ParticleEnergy
from torch_enf.utils import check_positive_integer


def remove_mean(pos: Tensor) -> Tensor:
    r"""Removes the centre of mass of every configuration in
    :obj:`pos` of shape :obj:`[..., num_particles, n_dims]`."""
    return pos - pos.mean(dim=-2, keepdim=True)


class MALASampler:
    r"""Metropolis-adjusted Langevin (MALA) sampler with many parallel
    chains, per-chain step-size adaptation during burn-in, thinning and
    optional parallel tempering.

    Every chain targets :math:`\pi_\beta(\mathbf{x}) \propto
    \exp(-\beta E(\mathbf{x}))` with inverse temperature
    :math:`\beta = 1 / T`. From state :math:`\mathbf{x}` with step size
    :math:`h` it proposes

    .. math::
        \mathbf{y} = \mathbf{x} - h \beta \nabla E(\mathbf{x})
        + \sqrt{2h}\, \boldsymbol{\xi}, \qquad
        \boldsymbol{\xi} \sim \mathcal{N}(\mathbf{0}, \mathbf{I}),

    and accepts it with probability :math:`\min(1, \alpha)`,

    .. math::
        \alpha = \frac{\pi_\beta(\mathbf{y})\, q(\mathbf{x} \mid \mathbf{y})}
        {\pi_\beta(\mathbf{x})\, q(\mathbf{y} \mid \mathbf{x})}, \qquad
        q(\mathbf{y} \mid \mathbf{x}) \propto \exp\left(-\frac{\| \mathbf{y}
        - \mathbf{x} + h \beta \nabla E(\mathbf{x}) \|^2}{4h}\right).

    Proposals with a non-finite energy or gradient (e.g. coinciding
    Lennard-Jones particles) are rejected. With :obj:`centre=True` the
    gradient and the noise :math:`\boldsymbol{\xi}` are projected onto the
    centred subspace :math:`\sum_i \mathbf{x}_i = \mathbf{0}`, so the
    chains sample the energy restricted to that subspace (where
    translation-invariant energies are normalisable).

    During burn-in every chain adapts its step size by
    :math:`\log h \leftarrow \log h + \gamma (\min(1, \alpha) -
    \alpha^\star)` towards the target acceptance :math:`\alpha^\star`; the
    step sizes are frozen afterwards, so the production kernel is a valid
    MCMC kernel.

    With more than one temperature :math:`1 = T_0 < T_1 < \dots`, every
    chain is a ladder of replicas, and after every MALA step neighbouring
    replicas (alternately the even and the odd pairs) exchange their
    configurations with probability :math:`\min(1, \exp((\beta_r -
    \beta_{r+1})(E_r - E_{r+1})))`. Only the :math:`T_0 = 1` replicas are
    returned.

    Args:
        energy (ParticleEnergy): The energy :math:`E`.
        num_chains (int, optional): Number of parallel chains.
            (default: :obj:`1000`)
        burn_in (int, optional): MALA steps before the first sample
            (with step-size adaptation). (default: :obj:`1000`)
        thinning (int, optional): MALA steps between consecutive samples of
            a chain. (default: :obj:`10`)
        step_size (float, optional): Initial step size :math:`h`.
            (default: :obj:`1e-3`)
        target_acceptance (float, optional): Target acceptance
            :math:`\alpha^\star` of the adaptation. (default: :obj:`0.57`)
        adaptation_rate (float, optional): Adaptation rate :math:`\gamma`.
            (default: :obj:`0.1`)
        temperatures (Sequence[float], optional): Increasing temperature
            ladder starting at :obj:`1.0`. (default: :obj:`(1.0, )`)
        centre (bool, optional): Whether to sample in the centred subspace.
            (default: :obj:`True`)
        dtype (torch.dtype, optional): Floating point type of the chains.
            (default: :obj:`torch.float64`)
    """
    def __init__(
        self,
        energy: ParticleEnergy,
        num_chains: int = 1000,
        burn_in: int = 1000,
        thinning: int = 10,
        step_size: float = 1e-3,
        target_acceptance: float = 0.57,
        adaptation_rate: float = 0.1,
        temperatures: Sequence[float] = (1.0, ),
        centre: bool = True,
        dtype: torch.dtype = torch.float64,
    ):
        temperatures = [float(t) for t in temperatures]
        if not temperatures or temperatures[0] != 1.0 or any(
                t1 <= t0 for t0, t1 in zip(temperatures, temperatures[1:])):
            raise ValueError(f"'temperatures' must increase strictly from "
                             f"1.0 (got {temperatures})")
        if num_chains < 1 or burn_in < 0 or thinning < 1:
            raise ValueError(
                f"Need num_chains >= 1, burn_in >= 0 and thinning >= 1 (got "
                f"{num_chains}, {burn_in} and {thinning})")
        if not 0 < target_acceptance < 1 or step_size <= 0:
            raise ValueError(
                f"Need 0 < target_acceptance < 1 and step_size > 0 (got "
                f"{target_acceptance} and {step_size})")
        self.energy = energy
        self.num_chains = num_chains
        self.burn_in = burn_in
        self.thinning = thinning
        self.step_size = step_size
        self.target_acceptance = target_acceptance
        self.adaptation_rate = adaptation_rate
        self.temperatures = temperatures
        self.centre = centre
        self.dtype = dtype
        #: Mean acceptance rate per temperature of the last production run.
        self.acceptance_rate: Optional[Tensor] = None
        #: Mean exchange rate per neighbouring temperature pair.
        self.swap_rate: Optional[Tensor] = None
        #: Step sizes :obj:`[num_temperatures, num_chains]` after burn-in.
        self.step_sizes: Optional[Tensor] = None

    def _randn(self, shape, generator: Optional[torch.Generator],
               device: torch.device) -> Tensor:
        gen_device = generator.device if generator is not None else device
        noise = torch.randn(shape, generator=generator, device=gen_device,
                            dtype=self.dtype)
        return noise.to(device)

    def _rand(self, shape, generator: Optional[torch.Generator],
              device: torch.device) -> Tensor:
        gen_device = generator.device if generator is not None else device
        return torch.rand(shape, generator=generator, device=gen_device,
                          dtype=self.dtype).to(device)

    def _energy_and_gradient(self, pos: Tensor) -> Tuple[Tensor, Tensor]:
        # pos: [R, C, M, n] -> energies [R, C] and gradients [R, C, M, n].
        energy, gradient = self.energy.energy_and_gradient(pos.flatten(0, 1))
        gradient = gradient.view(pos.shape)
        if self.centre:
            gradient = remove_mean(gradient)
        return energy.view(pos.shape[:2]), gradient

    def _mala_step(self, state, log_step, beta, generator, adapt: bool):
        pos, energy, gradient = state
        step = log_step.exp()[..., None, None]  # [R, C, 1, 1]
        beta4 = beta[:, :, None, None]
        noise = self._randn(pos.shape, generator, pos.device)
        if self.centre:
            noise = remove_mean(noise)
        proposal = pos - step * beta4 * gradient + (2 * step).sqrt() * noise
        new_energy, new_gradient = self._energy_and_gradient(proposal)

        forward = noise.pow(2).sum(dim=(-2, -1)) / 2
        backward_residual = pos - proposal + step * beta4 * new_gradient
        backward = backward_residual.pow(2).sum(dim=(-2, -1)) / (4 * step[
            ..., 0, 0])
        log_alpha = beta * (energy - new_energy) + forward - backward
        finite = (torch.isfinite(new_energy)
                  & torch.isfinite(new_gradient).flatten(2).all(dim=-1)
                  & torch.isfinite(log_alpha))
        log_alpha = torch.where(finite, log_alpha,
                                torch.full_like(log_alpha, -math.inf))
        accept_prob = log_alpha.clamp(max=0).exp()
        accept = self._rand(accept_prob.shape, generator,
                            pos.device) < accept_prob

        if adapt:
            log_step += self.adaptation_rate * (accept_prob -
                                                self.target_acceptance)
        mask = accept[..., None, None]
        state = (torch.where(mask, proposal, pos),
                 torch.where(accept, new_energy, energy),
                 torch.where(mask, new_gradient, gradient))
        return state, accept

    def _swap(self, state, beta, parity: int, generator):
        pos, energy, gradient = state
        num_replicas = pos.size(0)
        lower = torch.arange(parity, num_replicas - 1, 2, device=pos.device)
        if lower.numel() == 0:
            return state, None
        upper = lower + 1
        log_ratio = (beta[lower] - beta[upper]) * (energy[lower] -
                                                   energy[upper])
        swap = self._rand(log_ratio.shape, generator, pos.device).log() < \
            log_ratio
        perm = torch.arange(num_replicas, device=pos.device)
        perm = perm.view(-1, 1).repeat(1, pos.size(1))  # [R, C]
        perm[lower] = torch.where(swap, upper[:, None], lower[:, None])
        perm[upper] = torch.where(swap, lower[:, None], upper[:, None])
        chain = torch.arange(pos.size(1), device=pos.device)
        state = tuple(t[perm, chain] for t in state)
        return state, (lower, swap)

    @torch.no_grad()
    def sample(
        self,
        num_samples: int,
        generator: Optional[torch.Generator] = None,
        init: Optional[Tensor] = None,
        progress: bool = True,
    ) -> Tensor:
        r"""Runs the chains and returns :obj:`num_samples` configurations of
        shape :obj:`[num_samples, num_particles, n_dims]` (centred if
        :obj:`centre=True`).

        Consecutive samples come from different chains: sample :math:`k`
        is draw :math:`\lfloor k / C \rfloor` of chain :math:`k \bmod C`.

        Args:
            num_samples (int): Number of samples to return.
            generator (torch.Generator, optional): Source of randomness for
                reproducible runs. (default: :obj:`None`)
            init (torch.Tensor, optional): Initial positions of shape
                :obj:`[num_chains, num_particles, n_dims]`, used for every
                temperature. If :obj:`None`, drawn by
                :meth:`ParticleEnergy.initial_positions` on the device of
                :obj:`generator`. (default: :obj:`None`)
            progress (bool, optional): Whether to show a progress bar.
                (default: :obj:`True`)
        """
        check_positive_integer(num_samples, 'num_samples')
        M, n = self.energy.num_particles, self.energy.n_dims
        R, C = len(self.temperatures), self.num_chains
        if init is None:
            init = self.energy.initial_positions(C, generator, self.dtype)
        elif init.shape != (C, M, n):
            raise ValueError(f"'init' must have shape [{C}, {M}, {n}] "
                             f"(got {tuple(init.shape)})")
        pos = init.to(self.dtype).unsqueeze(0).repeat(R, 1, 1, 1)
        if self.centre:
            pos = remove_mean(pos)
        state = (pos, *self._energy_and_gradient(pos))
        if not bool(torch.isfinite(state[1]).all()):
            raise ValueError("The initial positions have non-finite "
                             "energies")
        beta = pos.new_tensor([1 / t for t in self.temperatures])
        beta = beta.view(R, 1).expand(R, C)
        log_step = pos.new_full((R, C), math.log(self.step_size))

        draws_per_chain = -(-num_samples // C)
        num_steps = self.burn_in + draws_per_chain * self.thinning
        samples, accepted = [], pos.new_zeros(R)
        swaps, swap_trials = pos.new_zeros(max(R - 1, 0)), pos.new_zeros(
            max(R - 1, 0))
        for step in tqdm(range(num_steps), disable=not progress,
                         desc=f'MALA {self.energy.__class__.__name__}'):
            burning_in = step < self.burn_in
            state, accept = self._mala_step(state, log_step, beta, generator,
                                            adapt=burning_in)
            if R > 1:
                state, swapped = self._swap(state, beta, step % 2, generator)
                if swapped is not None and not burning_in:
                    lower, swap = swapped
                    swaps[lower] += swap.sum(dim=-1).to(swaps.dtype)
                    swap_trials[lower] += C
            if not burning_in:
                accepted += accept.sum(dim=-1).to(accepted.dtype)
                if (step - self.burn_in + 1) % self.thinning == 0:
                    samples.append(state[0][0].clone())

        production_steps = num_steps - self.burn_in
        self.acceptance_rate = accepted / (production_steps * C)
        self.swap_rate = swaps / swap_trials.clamp(min=1)
        self.step_sizes = log_step.exp()
        samples = torch.stack(samples).flatten(0, 1)[:num_samples]
        return remove_mean(samples) if self.centre else samples
