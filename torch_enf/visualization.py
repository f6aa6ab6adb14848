r"""Pictures of 3D molecules and of sample statistics (needs
:obj:`matplotlib`, imported lazily)."""
import math
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Batch

from torch_enf.elements import STYLES
from torch_enf.io import atomic_path
from torch_enf.metrics.bonds import infer_bonds
from torch_enf.metrics.particles import SampleComparison

ELEMENT_STYLE = STYLES
UNKNOWN_STYLE = ('?', '#ff1493', 110)


def plot_molecule_grid(data, path: str, ncols: int = 4,
                       titles: Optional[Sequence[str]] = None,
                       panel_size: float = 3.0, dpi: int = 120) -> None:
    r"""Draws the molecules of a :class:`~torch_geometric.data.Batch` (or a
    single :class:`~torch_geometric.data.Data`) as a grid of 3D renders:
    atoms coloured by element (H light grey, C dark grey, N blue, O red,
    F green, S yellow, Cl bright green, ...: :obj:`torch_enf.elements.STYLES`;
    elements without a style pink) and the inferred bonds
    (:func:`~torch_enf.metrics.bonds.infer_bonds`) as lines, one line per
    bond order. Molecules without :obj:`z` are drawn as point clouds.

    Args:
        data (Batch or Data): Molecules with :obj:`pos` in Angstrom.
        path (str): Output image, format from its extension (e.g.
            :obj:`.png`); written atomically.
        ncols (int, optional): Panels per row. (default: :obj:`4`)
        titles (list of str, optional): One title per molecule.
        panel_size (float, optional): Panel edge in inches.
        dpi (int, optional): Resolution.
    """
    plt = _pyplot()
    batch = data if isinstance(data, Batch) else Batch.from_data_list([data])
    if titles is not None and len(titles) != batch.num_graphs:
        raise ValueError(f"Got {len(titles)} titles for {batch.num_graphs} "
                         f"molecules")
    if ncols < 1:
        raise ValueError(f"'ncols' must be positive, got {ncols}")
    z = getattr(batch, 'z', None)
    bonds = infer_bonds(batch.pos, z, batch.batch) if z is not None else None
    nrows = math.ceil(batch.num_graphs / ncols)
    figure = plt.figure(figsize=(panel_size * ncols, panel_size * nrows))
    for g in range(batch.num_graphs):
        axes = figure.add_subplot(nrows, ncols, g + 1, projection='3d')
        _draw_molecule(axes, batch, g, bonds)
        axes.set_title(titles[g] if titles is not None else
                       _default_title(batch, g), fontsize=9)
    _save(figure, path, dpi)


def plot_sample_comparison(comparison: SampleComparison, path: str,
                           title: str = '',
                           points: Optional[Tensor] = None,
                           reference: bool = True, dpi: int = 120) -> None:
    r"""Histograms of the interatomic distances (and energies) of samples
    against reference data, from :func:`~torch_enf.metrics.compare_samples`;
    with :obj:`points` (2D configurations :obj:`[S, M, 2]`) also a scatter
    of the first particle against the others.

    Args:
        comparison (SampleComparison): The distances and energies.
        path (str): Output image; written atomically.
        title (str, optional): Figure title.
        points (torch.Tensor, optional): Sampled 2D configurations.
        reference (bool, optional): Whether :obj:`comparison` holds
            reference data; without it only the samples are drawn (a
            comparison of samples with themselves would show no
            difference). (default: :obj:`True`)
        dpi (int, optional): Resolution.
    """
    plt = _pyplot()
    panels = [('interatomic distance', comparison.dist_data,
               comparison.dist_samples, comparison.dist_range)]
    if comparison.energy_samples is not None:
        finite = torch.isfinite(comparison.energy_samples)
        panels.append(('energy', comparison.energy_data,
                       comparison.energy_samples[finite],
                       comparison.energy_range))
    num = len(panels) + int(points is not None)
    figure, axes = plt.subplots(1, num, figsize=(4.2 * num, 3.5),
                                squeeze=False)
    for ax, (label, data, samples, limits) in zip(axes[0], panels):
        drawn = ((data, 'data'), (samples, 'samples')) if reference \
            else ((samples, 'samples'), )
        for values, name in drawn:
            ax.hist(values.numpy(), comparison.bins, range=limits,
                    density=True, alpha=0.5, label=name)
        ax.set_xlabel(label)
        ax.legend()
    if points is not None:
        ax = axes[0, -1]
        shown = points[:300].detach().cpu()
        ax.scatter(*shown[:, 0].t().numpy(), s=4, label='particle 1')
        ax.scatter(*shown[:, 1:].reshape(-1, 2).t().numpy(), s=2, alpha=0.5,
                   label='other particles')
        ax.set_aspect('equal')
        ax.legend(fontsize=7)
    figure.suptitle(title)
    _save(figure, path, dpi)


def plot_reweighted_energies(energy_data: Tensor, energy_samples: Tensor,
                             log_weights: Tensor, path: str, title: str = '',
                             bins: int = 80, dpi: int = 120) -> None:
    r"""Energy histograms of the data, of the raw flow samples and of the
    samples reweighted by their importance weights
    (:mod:`torch_enf.boltzmann`), on the 0.1% to 99.9% range of the
    data's energies."""
    from torch_enf.boltzmann import weighted_histogram
    plt = _pyplot()
    lo = float(torch.quantile(energy_data.double(), 0.001))
    hi = float(torch.quantile(energy_data.double(), 0.999))
    edges = torch.linspace(lo, hi, bins + 1)
    centres, width = (edges[1:] + edges[:-1]) / 2, (hi - lo) / bins
    finite = torch.isfinite(energy_samples)
    figure, ax = plt.subplots(figsize=(5, 3.5))
    for values, weights, label in (
            (energy_data, torch.zeros(energy_data.numel()), 'data'),
            (energy_samples[finite], torch.zeros(int(finite.sum())),
             'flow samples'),
            (energy_samples[finite], log_weights[finite], 'reweighted')):
        density = weighted_histogram(values.double(), weights.double(), bins,
                                     (lo, hi)) / width
        ax.step(centres.numpy(), density.numpy(), where='mid', label=label)
    ax.set_xlabel('energy (kT)')
    ax.set_ylabel('density')
    ax.set_title(title)
    ax.legend()
    _save(figure, path, dpi)


def plot_ramachandran(surfaces: Dict[str, np.ndarray], path: str,
                      vmax: float = 10.0, dpi: int = 120) -> None:
    r"""One panel per Ramachandran free-energy surface (title to
    :func:`~torch_enf.systems.free_energy.free_energy_surface`),
    :math:`\phi` horizontal, in :math:`k_B T` up to :obj:`vmax`."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(surfaces), squeeze=False,
                                figsize=(4.2 * len(surfaces), 3.8))
    extent = [-math.pi, math.pi, -math.pi, math.pi]
    for ax, (title, free) in zip(axes[0], surfaces.items()):
        image = ax.imshow(np.ma.masked_invalid(free.T), origin='lower',
                          extent=extent, cmap='viridis', vmin=0, vmax=vmax)
        ax.set(title=title, xlabel=r'$\phi$ (rad)', ylabel=r'$\psi$ (rad)')
    figure.colorbar(image, ax=list(axes[0]), label=r'$F$ ($k_BT$)')
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format='png', dpi=dpi)
    plt.close(figure)


def _pyplot():
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("Plotting needs matplotlib: pip install "
                          "torch-enf[plot]") from error
    return plt


def _save(figure, path: str, dpi: int) -> None:
    import matplotlib.pyplot as plt
    figure.tight_layout()
    suffix = path.rsplit('.', 1)[-1] if '.' in path else 'png'
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=suffix, dpi=dpi)
    plt.close(figure)


def _default_title(batch: Batch, g: int) -> str:
    idx = getattr(batch, 'idx', None)
    return f'QM9 {int(idx[g])}' if idx is not None else f'molecule {g}'


def _draw_molecule(axes, batch: Batch, g: int, bonds) -> None:
    start, end = int(batch.ptr[g]), int(batch.ptr[g + 1])
    pos = batch.pos[start:end].detach().cpu()
    z = getattr(batch, 'z', None)
    styles = [ELEMENT_STYLE.get(int(n), UNKNOWN_STYLE)
              for n in z[start:end]] if z is not None else \
        [UNKNOWN_STYLE] * (end - start)
    if bonds is not None:
        edge_index, orders = bonds
        inside = (edge_index[0] >= start) & (edge_index[0] < end)
        for (i, j), order in zip(edge_index[:, inside].t().tolist(),
                                 orders[inside].tolist()):
            segment = pos[[i - start, j - start]].numpy()
            axes.plot(*segment.T, color='#7f7f7f', linewidth=1.2 * order,
                      zorder=1)
    axes.scatter(*pos.numpy().T, c=[s[1] for s in styles],
                 s=[s[2] for s in styles], edgecolors='black',
                 linewidths=0.4, depthshade=False, zorder=2)
    radius = float(pos.abs().max()) + 0.5
    for set_limits in (axes.set_xlim, axes.set_ylim, axes.set_zlim):
        set_limits(-radius, radius)
    axes.set_box_aspect((1, 1, 1), zoom=1.4)
    axes.set_axis_off()
