r"""Free energies of the backbone basins of a dipeptide from its dihedrals
:math:`(\phi, \psi)`, from MD frames or from (importance-weighted) flow
samples: the difference between the :math:`\alpha_R` and :math:`\beta` /
:math:`C_{7eq}` basins with a bootstrap error, and the Ramachandran free
energy surface."""
import math
from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor

ALPHA_PSI_RANGE = (-2.1, 1.0)
r"""The :math:`\psi` range (rad) of the :math:`\alpha_R` basin at
:math:`\phi < 0`; the rest of :math:`\phi < 0` is :math:`\beta` /
:math:`C_{7eq}`."""


def basin_masks(phi_psi: Tensor) -> Tuple[Tensor, Tensor]:
    r"""Masks :obj:`[B]` of the :math:`\alpha_R` basin (:math:`\phi < 0`,
    :math:`\psi` in :obj:`ALPHA_PSI_RANGE`) and of the :math:`\beta` /
    :math:`C_{7eq}` basin (the other :math:`\phi < 0`) of dihedrals
    :obj:`[B, 2]` in radians."""
    phi, psi = phi_psi.unbind(-1)
    low, high = ALPHA_PSI_RANGE
    alpha = (phi < 0) & (psi > low) & (psi < high)
    return alpha, (phi < 0) & ~alpha


def delta_f(phi_psi: Tensor, weights: Optional[Tensor] = None) -> float:
    r"""The free-energy difference :math:`\Delta F = -\ln(p_{\alpha_R} /
    p_\beta)` in :math:`k_B T` of (weighted) frames :obj:`[B, 2]`;
    :math:`\pm\infty` if a basin is empty."""
    if weights is None:
        weights = torch.ones(phi_psi.size(0), dtype=torch.float64)
    alpha, beta = basin_masks(phi_psi)
    p_alpha = float(weights[alpha].sum())
    p_beta = float(weights[beta].sum())
    if p_alpha == 0 or p_beta == 0:
        return math.inf if p_alpha == 0 else -math.inf
    return -math.log(p_alpha / p_beta)


def bootstrap_delta_f(phi_psi: Tensor, log_weights: Optional[Tensor] = None,
                      num_resamples: int = 200, block: int = 1,
                      seed: int = 0) -> Tuple[float, float]:
    r""":func:`delta_f` with self-normalised weights :math:`w_k \propto
    e^{\log w_k}` (equal weights by default) and its bootstrap standard
    error over :obj:`num_resamples` resamples of contiguous blocks of
    :obj:`block` frames (1 for independent samples, longer for correlated
    MD frames); NaN if fewer than two resamples are finite."""
    weights = None if log_weights is None else \
        torch.softmax(log_weights.double(), 0)
    value = delta_f(phi_psi, weights)
    num_blocks = max(phi_psi.size(0) // block, 1)
    generator = torch.Generator().manual_seed(seed)
    estimates = []
    for _ in range(num_resamples):
        start = torch.randint(num_blocks, (num_blocks, ),
                              generator=generator) * block
        index = (start[:, None] + torch.arange(block)).flatten()
        index = index[index < phi_psi.size(0)]
        estimates.append(delta_f(phi_psi[index], None if weights is None
                                 else weights[index]))
    finite = torch.tensor([e for e in estimates if math.isfinite(e)])
    stderr = float(finite.std()) if finite.numel() > 1 else math.nan
    return value, stderr


def free_energy_surface(phi_psi: Tensor, log_weights: Optional[Tensor] = None,
                        bins: int = 60) -> np.ndarray:
    r"""The Ramachandran free energy :math:`F = -\ln p(\phi, \psi)` in
    :math:`k_B T` of (weighted) frames on a :obj:`bins` x :obj:`bins` grid
    over :math:`[-\pi, \pi)^2` (:math:`\phi` first), shifted to a minimum
    of 0, :math:`+\infty` in empty bins."""
    weights = None if log_weights is None else \
        torch.softmax(log_weights.double(), 0).numpy()
    counts, _, _ = np.histogram2d(
        phi_psi[:, 0].numpy(), phi_psi[:, 1].numpy(), bins=bins,
        range=[[-math.pi, math.pi]] * 2, weights=weights)
    with np.errstate(divide='ignore'):
        free = -np.log(counts / counts.sum())
    return free - free[np.isfinite(free)].min()
