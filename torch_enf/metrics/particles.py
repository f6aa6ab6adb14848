r"""Comparison of sampled and reference configurations of a particle system
(or of molecules of one size): distance and energy histograms."""
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

from torch_enf.metrics.histograms import (histogram_js_divergence,
                                          pairwise_distances)

Range = Tuple[float, float]


@dataclass
class SampleComparison:
    r"""Interatomic distances (and energies) of samples and reference data,
    with the histogram ranges they are compared on; see
    :func:`compare_samples`."""
    dist_samples: Tensor
    dist_data: Tensor
    dist_range: Range
    energy_samples: Optional[Tensor] = None
    energy_data: Optional[Tensor] = None
    energy_range: Optional[Range] = None
    bins: int = 100

    def metrics(self) -> Dict[str, float]:
        r"""Jensen-Shannon divergences of the distance (and energy)
        histograms; mean energies, and the number of samples with a
        non-finite energy (left out of the energy histogram)."""
        out = dict(js_distances=histogram_js_divergence(
            self.dist_samples, self.dist_data, self.bins, self.dist_range))
        if self.energy_samples is None:
            return out
        finite = torch.isfinite(self.energy_samples)
        lo, hi = self.energy_range
        out.update(
            js_energy=histogram_js_divergence(
                self.energy_samples[finite].clamp(lo, hi),
                self.energy_data.clamp(lo, hi), self.bins,
                self.energy_range),
            mean_energy_samples=float(self.energy_samples[finite].mean()),
            mean_energy_data=float(self.energy_data.mean()),
            num_nonfinite_energy=int((~finite).sum()))
        return out


def compare_samples(samples: Tensor, data: Tensor,
                    energy: Optional[Callable[[Tensor], Tensor]] = None,
                    dist_range: Optional[Range] = None,
                    bins: int = 100) -> SampleComparison:
    r"""Distances of all particle pairs of every configuration, and
    energies, of :obj:`samples` and :obj:`data`.

    Args:
        samples (torch.Tensor): Sampled configurations :obj:`[S, M, n]`.
        data (torch.Tensor): Reference configurations :obj:`[D, M, n]`.
        energy (callable, optional): Maps :obj:`[B, M, n]` to :obj:`[B]`.
        dist_range ((float, float), optional): Histogram range of the
            distances. (default: zero to 1.2 times the 99.9% quantile of the
            data's)
        bins (int, optional): Histogram bins. (default: :obj:`100`)

    The energy range spans the 0.1% to 99.9% quantiles of the data's
    energies; samples outside it are clamped to its edges.
    """
    if samples.dim() != 3 or data.dim() != 3 or \
            samples.shape[1:] != data.shape[1:]:
        raise ValueError(f"'samples' and 'data' must have shapes [S, M, n] "
                         f"and [D, M, n] (got {list(samples.shape)} and "
                         f"{list(data.shape)})")
    samples, data = samples.detach().cpu().float(), data.detach().cpu().float()
    dist_samples = _distances(samples)
    dist_data = _distances(data)
    if dist_range is None:
        dist_range = (0.0, float(torch.quantile(dist_data, 0.999)) * 1.2)
    comparison = SampleComparison(dist_samples, dist_data, dist_range,
                                  bins=bins)
    if energy is not None:
        comparison.energy_samples = energy(samples)
        comparison.energy_data = energy(data)
        comparison.energy_range = (
            float(torch.quantile(comparison.energy_data, 0.001)),
            float(torch.quantile(comparison.energy_data, 0.999)))
    return comparison


def _distances(configurations: Tensor) -> Tensor:
    num, size, n_dims = configurations.shape
    batch = torch.arange(num).repeat_interleave(size)
    return pairwise_distances(configurations.reshape(-1, n_dims), batch)
