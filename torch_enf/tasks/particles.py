r"""Point-cloud tasks: the many-body systems of the E-NF paper (DW4, LJ13,
their LJ13 variant with the halved pair sum, and LJ55), judged by the test
NLL (nats per configuration on the centred subspace) and by histograms of
distances and energies of samples; and :obj:`points`, the user's own
configurations of any dimension from a :obj:`.npy` file."""
import os.path as osp
from abc import abstractmethod
from typing import Any, Dict, Optional, Tuple, Type

import numpy as np
import torch
from torch_geometric.data import Batch, Data, Dataset

from torch_enf.boltzmann import (ImportanceSamples, entropy_bracket,
                                 importance_weights, log_partition_function)
from torch_enf.datasets import (PARTICLE_SYSTEMS, ParticleSystem,
                                PointCloudDataset)
from torch_enf.flows import ENFlow
from torch_enf.io import atomic_path
from torch_enf.metrics import compare_samples
from torch_enf.systems import ParticleEnergy
from torch_enf.tasks.base import (DataConfig, EvaluationConfig,
                                  ModelOptions, Splits, Structures, Task,
                                  degenerate, likelihood_and_samples,
                                  register_task, subset, test_nll,
                                  user_data_root)

EXACT_TRACE_MAX_PARTICLES = 13
r"""Larger systems are scored with Hutchinson's estimator by default: the
exact trace costs one vector-Jacobian product per coordinate."""

SAMPLE_BATCH_NODES = 6500
r"""Sampling batches hold at most this many particles (500 LJ13
clusters)."""

QUICK = {
    ('dw4', 'fm'): dict(n_train=1000, epochs=2000, num_valid=500,
                        num_test=1000, eval_every=200, num_samples=1000,
                        lr_schedule='cosine', threads=1),
    ('dw4', 'ml'): dict(n_train=1000, epochs=25, num_valid=500,
                        num_test=1000, eval_every=5, num_samples=1000),
    ('lj13', 'fm'): dict(n_train=100, epochs=1000, num_valid=100,
                         num_test=100, eval_every=200, num_samples=200,
                         lr_schedule='cosine', threads=1),
    ('lj13', 'ml'): dict(n_train=100, epochs=15, num_valid=100,
                         num_test=100, eval_every=5, num_samples=200),
    ('lj55', 'fm'): dict(n_train=1000, epochs=20, num_valid=100,
                         num_test=100, eval_every=5, num_samples=100,
                         lr_schedule='cosine', threads=1),
    ('lj55', 'ml'): dict(n_train=100, epochs=2, num_valid=20, num_test=20,
                         eval_every=1, num_samples=20),
}
r"""The :obj:`--quick` presets per system and objective (small runs for two
CPU cores; options given explicitly override them)."""


class PointCloudTask(Task):
    r"""The shared part of the point-cloud tasks: an :class:`ENFlow` on the
    positions, configurations read from and written to :obj:`.npy` (or
    :obj:`.pt`) arrays :obj:`[S, M, n]`, and distance histograms."""
    sample_suffixes = ('.npy', '.pt')
    score_suffixes = ('.npy', )
    energy: Optional[ParticleEnergy] = None
    distance_range: Optional[Tuple[float, float]] = None
    r"""The range of the distance histograms (by default from the
    reference data)."""

    @abstractmethod
    def shape(self) -> Tuple[int, int]:
        r"""The number of particles and the dimension of the space."""

    def num_nodes(self) -> Optional[int]:
        return self.shape()[0]

    def defaults(self, objective: str, quick: bool) -> Dict[str, Any]:
        return dict(epochs=300, hidden_channels=32, num_layers=3, lr=5e-4)

    def build_model(self, options: ModelOptions, splits: Splits) -> ENFlow:
        return ENFlow(self.shape()[1], 0, options.hidden_channels,
                      options.num_layers, num_radial=options.num_radial,
                      radial_cutoff=options.radial_cutoff,
                      graph=self.graph(options, self.shape()[0]),
                      adjoint=options.adjoint,
                      prediction=options.prediction)

    def trace(self, requested: Optional[str]) -> str:
        if requested is not None:
            return requested
        return 'exact' if self.shape()[0] <= EXACT_TRACE_MAX_PARTICLES \
            else 'hutchinson'

    def evaluate(self, model: torch.nn.Module, splits: Splits,
                 evaluation: EvaluationConfig, out: str,
                 progress: bool = True) -> Dict[str, Any]:
        r"""The test NLL (and that of a published split), the distance (and
        energy) histograms of samples against the test data with a
        picture, and with :obj:`boltzmann_samples` the importance
        weights."""
        test = subset(splits.test, evaluation.num_test)
        results, estimate, samples = likelihood_and_samples(
            self, model, test, evaluation, progress,
            self.sample_batch_size())
        if evaluation.published_test:
            published = subset(self.published_split(
                evaluation.published_test), evaluation.num_test)
            other = test_nll(model, published, results['eval_trace'],
                             evaluation.solver, progress)
            results.update(published_test_nll=other.nll,
                           published_test_nll_stderr=other.stderr)
        reference = self.reference(splits)
        results.update(self.sample_metrics(samples, reference))
        self.write_samples(samples, osp.join(out, 'samples.npy'),
                           osp.join(out, 'samples.png'), reference)
        if evaluation.boltzmann_samples and self.energy is not None:
            results.update(self.boltzmann_metrics(
                model, test, estimate.values, evaluation, out,
                results['eval_trace'], progress))
        return results

    def reference(self, splits: Splits) -> Dataset:
        r"""The configurations samples are compared with: the test
        split."""
        return splits.test

    def published_split(self, path: str) -> Dataset:
        raise ValueError(f"The task '{self.name}' has no published test "
                         f"split to read {path} as")

    def sample_batch_size(self) -> int:
        return min(500, SAMPLE_BATCH_NODES // self.shape()[0])

    def sample_metrics(self, samples: Batch,
                       reference: Optional[Dataset] = None
                       ) -> Dict[str, Any]:
        if reference is None:
            return dict(num_samples=samples.num_graphs)
        comparison = compare_samples(
            self.stack_positions(samples), self.stack_positions(reference),
            self.energy, self.distance_range)
        return dict(comparison.metrics(), num_samples=samples.num_graphs,
                    num_reference=len(reference))

    def write_samples(self, samples: Batch, path: str,
                      picture: Optional[str] = None,
                      reference: Optional[Dataset] = None) -> None:
        r"""Writes the configurations :obj:`[S, M, n]` as :obj:`.npy` or
        :obj:`.pt`, and a picture of their distance (and energy)
        histograms, against :obj:`reference` data where given (the
        samples alone otherwise)."""
        self.check_suffix(path, self.sample_suffixes, 'writes')
        positions = self.stack_positions(samples)
        with atomic_path(path) as tmp, open(tmp, 'wb') as f:
            if path.endswith('.npy'):
                np.save(f, positions.numpy())
            else:
                torch.save(positions, f)
        if picture:
            from torch_enf.visualization import plot_sample_comparison
            data = self.stack_positions(reference) if reference is not None \
                else None
            comparison = compare_samples(
                positions, data if data is not None else positions,
                self.energy, self.distance_range)
            plot_sample_comparison(
                comparison, picture,
                f'{self.name}: {positions.size(0)} samples' +
                ('' if data is not None else ' (no reference data)'),
                positions if positions.size(-1) == 2 else None,
                reference=data is not None)

    def read_structures(self, path: str, model: torch.nn.Module
                        ) -> Structures:
        r"""Configurations from a :obj:`.npy` array :obj:`[S, M, n]` or
        :obj:`[S, M * n]`; rows with non-finite coordinates are
        skipped."""
        self.check_suffix(path, self.score_suffixes, 'scores')
        size, n_dims = self.shape()
        array = _load_array(path)
        if array.ndim < 2 or array.shape[1:] not in ((size, n_dims),
                                                      (size * n_dims, )):
            raise ValueError(f'{path}: expected shape [S, {size}, {n_dims}]'
                             f' or [S, {size * n_dims}] (got '
                             f'{list(array.shape)})')
        positions = torch.as_tensor(array, dtype=torch.float32).reshape(
            -1, size, n_dims)
        kept, names, skipped = [], [], []
        for k, pos in enumerate(positions):
            problem = 'non-finite coordinates' if not bool(
                torch.isfinite(pos).all()) else degenerate(pos)
            if problem:
                skipped.append(f'#{k}: {problem}')
            else:
                kept.append(Data(pos=pos))
                names.append(f'configuration {k}')
        return Structures(kept, names, skipped)

    def boltzmann_metrics(self, model: ENFlow, test: Dataset,
                          test_nll_values: torch.Tensor,
                          evaluation: EvaluationConfig, out: str,
                          trace: str, progress: bool) -> Dict[str, Any]:
        r"""Importance weights of flow samples: the ESS, :math:`\log Z`,
        the entropy :math:`H(p)` of the test data with its bracket, the gap
        NLL - H(p), and a plot of raw and reweighted sample energies.
        With Hutchinson's trace the log-weights carry its noise, which
        lowers the ESS: a conservative estimate."""
        from torch_enf.visualization import plot_reweighted_energies
        draw = importance_weights(model, self.energy,
                                  evaluation.boltzmann_samples,
                                  batch_size=self.sample_batch_size(),
                                  progress=progress, trace=trace,
                                  solver=evaluation.solver)
        test_energy = self.energy(self.stack_positions(test).double())
        bracket = entropy_bracket(test_energy, -test_nll_values,
                                  draw.log_weights)
        log_z, log_z_stderr = log_partition_function(draw.log_weights)
        plot_reweighted_energies(test_energy, draw.energy, draw.log_weights,
                                 osp.join(out, 'reweighted_energies.png'),
                                 self.name)
        return dict(self.reweighted_metrics(draw, test, out),
                    boltzmann_samples=evaluation.boltzmann_samples,
                    ess=bracket.ess, log_z=log_z, log_z_stderr=log_z_stderr,
                    entropy=bracket.entropy, entropy_stderr=bracket.stderr,
                    entropy_lower=bracket.lower,
                    entropy_upper=bracket.upper,
                    nll_minus_entropy=bracket.kl,
                    num_infinite_energy=draw.num_infinite_energy)

    def reweighted_metrics(self, draw: ImportanceSamples, test: Dataset,
                           out: str) -> Dict[str, Any]:
        r"""Further metrics of a task from the importance-weighted samples
        :obj:`draw` (none here); pictures go to :obj:`out`."""
        return {}

    def stack_positions(self, graphs) -> torch.Tensor:
        r"""The positions :obj:`[S, M, n]` of a batch or a dataset of
        configurations."""
        size, n_dims = self.shape()
        if isinstance(graphs, Batch):
            return graphs.pos.view(-1, size, n_dims)
        return torch.stack([d.pos for d in graphs])


class SystemTask(PointCloudTask):
    r"""A many-body system of :mod:`torch_enf.datasets`: data generated by
    MCMC from its energy on first use (cached under :obj:`root`), the first
    :obj:`n_train` samples for training."""
    system: Type[ParticleSystem]

    def __init__(self):
        self.energy = self.system.energy
        self.root = osp.join('data', self.name)

    def shape(self) -> Tuple[int, int]:
        return self.system.num_particles, self.system.n_dims

    def defaults(self, objective: str, quick: bool) -> Dict[str, Any]:
        defaults = dict(super().defaults(objective, quick), n_train=1000)
        if quick:
            key = 'lj13' if self.name == 'lj13-halved' else self.name
            defaults.update(QUICK[key, objective])
        return defaults

    def datasets(self, data: DataConfig, progress: bool = True,
                 log: bool = True) -> Splits:
        self.root = osp.join(data.root, self.name)
        return Splits(
            self.system(self.root, 'train', n_train=data.n_train,
                        progress=progress),
            self.system(self.root, 'valid', progress=progress),
            self.system(self.root, 'test', progress=progress))

    def published_split(self, path: str) -> Dataset:
        return self.system(self.root, 'test', source=path)


SYSTEM_DESCRIPTIONS = {
    'dw4': 'DW4, 4 particles in a 2D double-well potential (E-NF paper, '
           'Table 1)',
    'lj13': 'LJ13, 13 Lennard-Jones particles in 3D, the double-counted '
            'pair sum of the published splits',
    'lj13-halved': 'LJ13 with the physical (halved) pair sum',
    'lj55': 'LJ55, 55 Lennard-Jones particles in 3D',
}

for _name, _system in PARTICLE_SYSTEMS.items():
    register_task(_name)(type(f'{_system.__name__}Task', (SystemTask, ), dict(
        system=_system, description=SYSTEM_DESCRIPTIONS[_name],
        __doc__=f'The {_name} task: {SYSTEM_DESCRIPTIONS[_name]}.')))


@register_task('points')
class PointsTask(PointCloudTask):
    r"""The user's own point clouds: configurations of :obj:`num_nodes`
    points in :obj:`n_dims` dimensions from a :obj:`.npy` file
    :obj:`[num_samples, num_nodes, n_dims]`
    (:class:`~torch_enf.datasets.PointCloudDataset`), split by a seed.
    The shape is found in the data and kept in the model file.

    Args:
        num_nodes (int, optional): Points per configuration.
        n_dims (int, optional): The dimension of the space.
    """
    description = 'your own point clouds (.npy [S, M, n])'

    def __init__(self, num_nodes: Optional[int] = None,
                 n_dims: Optional[int] = None):
        self._shape = (num_nodes, n_dims)

    def state(self) -> Dict[str, Any]:
        return dict(name=self.name, num_nodes=self._shape[0],
                    n_dims=self._shape[1])

    def shape(self) -> Tuple[int, int]:
        if None in self._shape:
            raise ValueError("The 'points' task has no data yet: train it "
                             "with --data FILE.npy first")
        return self._shape

    def datasets(self, data: DataConfig, progress: bool = True,
                 log: bool = True) -> Splits:
        if data.files is None:
            raise ValueError("The 'points' task needs --data FILE.npy "
                             "([num_samples, num_nodes, n_dims])")
        root = user_data_root(data, 'points')
        splits = Splits(*(PointCloudDataset(
            root, data.files, split=split, seed=data.split_seed,
            log=log) for split in ('train', 'valid', 'test')))
        splits = splits._replace(train=subset(splits.train, data.n_train,
                                              data.split_seed))
        pos = splits.train[0].pos
        self._shape = (pos.size(0), pos.size(1))
        return splits


def _load_array(path: str) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise ValueError(f'{path}: not a numeric .npy array ({error})') \
            from None
    if not np.issubdtype(array.dtype, np.number) or array.size == 0:
        raise ValueError(f'{path}: expected a non-empty numeric array (got '
                         f'dtype {array.dtype}, shape {list(array.shape)})')
    return array
