r"""Boltzmann-generator tools: importance weights of flow samples against a
known energy, the effective sample size, free energies (:math:`\log Z`)
and the entropy floor of the NLL.

For a system with energy :math:`E` (in :math:`k_B T`) the target is
:math:`p(\mathbf{x}) = e^{-E(\mathbf{x})} / Z` on the zero-centre-of-mass
subspace, where the flows' densities :math:`q` live too. Samples
:math:`\mathbf{x}_k \sim q` get the log-weights

.. math::
    \log w_k = -E(\mathbf{x}_k) - \log q(\mathbf{x}_k),
    \qquad \mathbb{E}_q[w] = Z,

which make observables unbiased (:func:`reweight`), estimate
:math:`\log Z` (:func:`log_partition_function`) and measure the flow
(:func:`effective_sample_size`). With data from :math:`p`, the NLL of the
flow is :math:`H(p) + \mathrm{KL}(p \,\|\, q)`, where the entropy
:math:`H(p) = \mathbb{E}_p[E] + \log Z` is the floor no model can beat;
:func:`entropy_bracket` bounds it from both sides.
"""
import math
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor
from torch_geometric.data import Batch

from torch_enf.flows.integrator import SolverOptions
from torch_enf.systems import ParticleEnergy
from torch_enf.utils import check_positive_integer


class ImportanceSamples(NamedTuple):
    r"""The result of :func:`importance_weights`.

    Attributes:
        samples (torch_geometric.data.Batch): The flow samples.
        positions (torch.Tensor): Their positions,
            :obj:`[num_samples, M, n]`.
        log_q (torch.Tensor): Their log-density under the flow.
        energy (torch.Tensor): Their energies (:math:`+\infty` allowed).
        log_weights (torch.Tensor): :math:`-E - \log q`; :math:`-\infty`
            where the energy is infinite (the weight is zero).
        num_infinite_energy (int): How many samples have infinite energy.
    """
    samples: Batch
    positions: Tensor
    log_q: Tensor
    energy: Tensor
    log_weights: Tensor
    num_infinite_energy: int


@torch.no_grad()
def importance_weights(flow: torch.nn.Module, energy: ParticleEnergy,
                       num_samples: int, batch_size: Optional[int] = None,
                       generator: Optional[torch.Generator] = None,
                       progress: bool = False, trace: str = 'exact',
                       solver: Optional[SolverOptions] = None,
                       temperature: float = 1.0) -> ImportanceSamples:
    r"""Draws :obj:`num_samples` configurations from :obj:`flow` (an
    :class:`~torch_enf.flows.ENFlow`) with
    :meth:`~torch_enf.flows.ENFlow.sample_with_log_prob` and computes their
    importance log-weights against :obj:`energy`. :math:`\log q` comes from
    the exact trace by default; :obj:`trace="hutchinson"` (for systems where
    the exact trace is too costly) adds the estimator's noise to every
    log-weight, which lowers the ESS in expectation (a conservative
    estimate). :obj:`solver` is the ODE solver of the draws (default:
    :obj:`~torch_enf.flows.DEFAULT_SOLVER`); its error enters
    :math:`\log q` and so the weights. With :obj:`temperature`
    :math:`\tau < 1` the proposal is the flow's tempered distribution
    :math:`q_\tau` (latents scaled by :math:`\tau`), whose exact density
    the weights use, so they stay unbiased.

    Raises:
        ValueError: If the energy's particle count or dimension does not
            match the flow's, :obj:`num_samples` is not positive, or an
            energy is NaN (the count is given; nothing is dropped).
    """
    check_positive_integer(num_samples, 'num_samples')
    if energy.n_dims != flow.n_dims:
        raise ValueError(f'The energy is {energy.n_dims}-dimensional, the '
                         f'flow {flow.n_dims}-dimensional')
    samples, log_q = flow.sample_with_log_prob(
        num_samples, energy.num_particles, generator=generator,
        batch_size=batch_size, progress=progress, trace=trace,
        temperature=temperature, solver=solver)
    positions = samples.pos.view(num_samples, energy.num_particles,
                                 energy.n_dims)
    values = energy(positions.double()).to(log_q.dtype)
    if bool(torch.isnan(values).any()):
        raise ValueError(f'The energy is NaN for '
                         f'{int(torch.isnan(values).sum())} of '
                         f'{num_samples} samples')
    if bool((values == float('-inf')).any()):
        raise ValueError(f'The energy is -inf for '
                         f'{int((values == float("-inf")).sum())} of '
                         f'{num_samples} samples: the Boltzmann weight is '
                         f'not normalisable')
    log_weights = -values - log_q
    return ImportanceSamples(samples, positions, log_q, values, log_weights,
                             int(torch.isinf(values).sum()))


def effective_sample_size(log_weights: Tensor) -> float:
    r"""Kish's effective sample size as a fraction of the samples,

    .. math::
        \frac{\mathrm{ESS}}{N} = \frac{(\sum_k w_k)^2}{N \sum_k w_k^2}
        \in (0, 1],

    computed from log-weights (1 for equal weights, about :math:`1/N` when
    one weight dominates). Weights of zero (:math:`-\infty`) count as
    samples."""
    log_weights = _check_log_weights(log_weights)
    log_ess = 2 * torch.logsumexp(log_weights, 0) - \
        torch.logsumexp(2 * log_weights, 0)
    return float(log_ess.exp()) / log_weights.numel()


def log_partition_function(log_weights: Tensor) -> Tuple[float, float]:
    r"""The importance-sampling estimate of :math:`\log Z`,

    .. math::
        \log \hat{Z} = \log \frac{1}{N} \sum_k w_k,

    and its standard error by the delta method,
    :math:`\sqrt{\widehat{\mathrm{Var}}(w) / N} / \bar{w}`. The estimate is
    consistent; for finite :math:`N` it is biased low (Jensen), and a
    small ESS makes the error bar unreliable."""
    log_weights = _check_log_weights(log_weights)
    count = log_weights.numel()
    log_mean = torch.logsumexp(log_weights, 0) - math.log(count)
    ratios = (log_weights - log_mean).exp()  # w_k / mean(w)
    stderr = float(ratios.std() / math.sqrt(count)) if count > 1 \
        else float('inf')
    return float(log_mean), stderr


def log_partition_upper_bound(energy_data: Tensor,
                              log_q_data: Tensor) -> Tuple[float, float]:
    r"""The forward bound from samples of :math:`p` (*e.g.* the test
    data),

    .. math::
        \log Z \leq \mathbb{E}_p[-E(\mathbf{x}) - \log q(\mathbf{x})] =
        \log Z + \mathrm{KL}(p \,\|\, q),

    with its standard error."""
    values = (-energy_data.double() - log_q_data.double()).detach()
    if values.numel() == 0 or not bool(torch.isfinite(values).all()):
        raise ValueError('The data need finite energies and log-densities')
    stderr = float(values.std() / math.sqrt(values.numel())) \
        if values.numel() > 1 else float('inf')
    return float(values.mean()), stderr


class EntropyBracket(NamedTuple):
    r"""What :func:`entropy_bracket` finds, in nats on the centred
    subspace.

    Attributes:
        entropy (float): :math:`\hat{H}(p) = \overline{E}_{\text{data}} +
            \log \hat{Z}` (importance-sampling estimate).
        lower (float): :math:`\overline{E}_{\text{data}} +
            \mathbb{E}_q[\log w] \leq H(p)` (the reverse bound).
        upper (float): :math:`\overline{E}_{\text{data}} + \text{forward
            bound} = \text{NLL} \geq H(p)`.
        kl (float): :math:`\text{NLL} - \hat{H}(p)`, the estimate of
            :math:`\mathrm{KL}(p \,\|\, q)`: how far the flow is from
            perfect.
        stderr (float): Standard error of :obj:`entropy` (data mean and
            :math:`\log \hat{Z}`).
        ess (float): Effective sample size fraction of the flow samples.
    """
    entropy: float
    lower: float
    upper: float
    kl: float
    stderr: float
    ess: float


def entropy_bracket(energy_data: Tensor, log_q_data: Tensor,
                    log_weights: Tensor) -> EntropyBracket:
    r"""The Boltzmann entropy :math:`H(p) = \mathbb{E}_p[E] + \log Z` of the
    data's distribution, the floor of every model's NLL, from the energies
    and flow log-densities of data (:obj:`energy_data`,
    :obj:`log_q_data`) and the log-weights of flow samples. Only the mean
    of :obj:`log_q_data` enters, so a single value (minus a test NLL
    measured elsewhere) serves as well."""
    energy_data, log_q_data = energy_data.detach(), log_q_data.detach()
    mean_energy = float(energy_data.double().mean())
    log_z, log_z_stderr = log_partition_function(log_weights)
    finite = log_weights[torch.isfinite(log_weights)]
    reverse = float(finite.double().mean()) if finite.numel() else -math.inf
    upper_log_z, _ = log_partition_upper_bound(energy_data, log_q_data)
    energy_stderr = float(energy_data.double().std() /
                          math.sqrt(energy_data.numel()))
    entropy = mean_energy + log_z
    nll = float(-log_q_data.double().mean())
    return EntropyBracket(entropy, mean_energy + reverse,
                          mean_energy + upper_log_z, nll - entropy,
                          math.hypot(energy_stderr, log_z_stderr),
                          effective_sample_size(log_weights))


def reweight(values: Tensor, log_weights: Tensor) -> float:
    r"""The self-normalised importance-sampling estimate of
    :math:`\mathbb{E}_p[f]` from :obj:`values` :math:`f(\mathbf{x}_k)` of
    flow samples."""
    log_weights = _check_log_weights(log_weights)
    if values.shape != log_weights.shape:
        raise ValueError(f"'values' {list(values.shape)} and 'log_weights' "
                         f"{list(log_weights.shape)} must match")
    weights = torch.softmax(log_weights.double(), 0)
    return float((weights * values.double()).sum())


def weighted_histogram(values: Tensor, log_weights: Tensor, bins: int,
                       range: Tuple[float, float]) -> Tensor:
    r"""A normalised histogram of :obj:`values` with importance weights
    (samples outside :obj:`range` are dropped from the histogram), shape
    :obj:`[bins]`; its bin probabilities estimate those under :math:`p`."""
    log_weights = _check_log_weights(log_weights)
    weights = torch.softmax(log_weights.double(), 0)
    lo, hi = range
    index = ((values.double() - lo) / (hi - lo) * bins).floor().long()
    inside = (index >= 0) & (index < bins)
    counts = torch.zeros(bins, dtype=torch.float64).index_add_(
        0, index[inside], weights[inside])
    return counts / counts.sum().clamp(min=torch.finfo(counts.dtype).tiny)


def _check_log_weights(log_weights: Tensor) -> Tensor:
    if log_weights.dim() != 1 or log_weights.numel() == 0:
        raise ValueError(f"'log_weights' must be a non-empty vector (got "
                         f"shape {list(log_weights.shape)})")
    if bool(torch.isnan(log_weights).any()) or \
            bool((log_weights == float('inf')).any()):
        raise ValueError('The log-weights hold NaN or +inf')
    if not bool(torch.isfinite(log_weights).any()):
        raise ValueError('Every weight is zero (all log-weights are -inf)')
    return log_weights.detach().double()
