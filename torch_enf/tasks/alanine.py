r"""The alanine-dipeptide task: a Boltzmann generator for the first molecule
of the Boltzmann-generator literature (22 atoms, AMBER ff99SB-ILDN with OBC
implicit solvent, 300 K, no constraints; :class:`~torch_enf.systems.
AlanineDipeptide`), trained on molecular dynamics made by the package
(:func:`~torch_enf.systems.simulate_alanine_dipeptide`) and judged by its
NLL, the importance weights of its samples against the force field and the
free energies of the backbone basins. Needs :obj:`pip install
"torch-enf[md]"`.

Units: the flow works in Angstrom (nm x 10): bonds are 1 to 1.5 and the
molecule a few units across, the scale of the unit Gaussian base and of
the EGNN's distances. A density in Angstrom on the :math:`D = 63`-dimensional
centred subspace relates to one in nm by :math:`\log q_{nm} = \log q_Å + 63
\ln 10`, so NLLs in nm are those reported here minus 145.06 nats; the
energies are reduced, :math:`u = E / k_B T`, and reflection invariant.

Chirality: an E(3)-equivariant flow puts half of its mass on D-alanine;
:meth:`AlanineDipeptideTask.sample` reflects D samples to L
(:meth:`~torch_enf.systems.AlanineDipeptide.to_l_chirality`), which
changes every importance log-weight by the same :math:`-\ln 2`."""
import math
import os.path as osp
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data, Dataset, InMemoryDataset

from torch_enf.boltzmann import ImportanceSamples
from torch_enf.flows import ConformerFlow
from torch_enf.systems import (AlanineDipeptide, Trajectory, load_trajectory,
                               simulate_alanine_dipeptide, split_trajectory)
from torch_enf.systems.free_energy import (bootstrap_delta_f,
                                           free_energy_surface)
from torch_enf.tasks.base import (DataConfig, ModelOptions, Splits,
                                  Structures, register_task, subset)
from torch_enf.tasks.particles import PointCloudTask

ANGSTROM_PER_NM = 10.0

NUM_ATOMS = 22

MD_NANOSECONDS = 20
r"""The length of the MD run made on first use (one frame per ps; about 30
minutes on one core)."""

SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
r"""Consecutive training, validation and test blocks of the trajectory."""

MIN_BOND = 0.5
r"""Conformations to score whose closest atoms lie nearer than this (in
Angstrom; C-H bonds are 1.09) are taken to be in nm and refused."""

MD_BLOCKS = 20
r"""Blocks of the block bootstrap of MD free energies (correlated
frames)."""

QUICK = dict(n_train=2000, epochs=2, num_valid=50, num_test=4,
             num_samples=50, eval_every=1)
r"""The :obj:`--quick` preset (a smoke run of a few minutes)."""


class ConformationDataset(InMemoryDataset):
    r"""Conformations of one molecule as graphs with :obj:`pos`
    :obj:`[M, 3]` (float32), held in memory.

    Args:
        positions (torch.Tensor): The conformations, :obj:`[S, M, 3]`.
    """
    def __init__(self, positions: Tensor):
        super().__init__(None, log=False)
        self._data, self.slices = self.collate(
            [Data(pos=pos) for pos in positions.float()])


@register_task('alanine-dipeptide')
class AlanineDipeptideTask(PointCloudTask):
    r"""Alanine dipeptide from MD: a :class:`~torch_enf.flows.ConformerFlow`
    (one type per atom, but one per methyl group's hydrogens) on positions
    in Angstrom. The data are a trajectory :obj:`.npz` of
    :func:`~torch_enf.systems.simulate_alanine_dipeptide` given as
    :obj:`files`, or, without one, a :obj:`MD_NANOSECONDS` ns run made on
    first use (seeded by :obj:`split_seed`, cached under :obj:`root`);
    cut into consecutive training, validation and test blocks.

    The evaluation adds to the point-cloud metrics the free-energy
    difference :math:`\Delta F = -\ln(p_{\alpha_R} / p_\beta)` of the test
    frames (block bootstrap), of the samples and, with importance weights,
    of the reweighted samples, and their Ramachandran surfaces as a
    picture."""
    description = ('alanine dipeptide, 22 atoms, AMBER ff99SB-ILDN + OBC '
                   'implicit solvent at 300 K, from MD (Angstrom)')

    def __init__(self):
        self._energy: Optional[AlanineDipeptide] = None

    @property
    def energy(self) -> AlanineDipeptide:
        r"""The reduced energy of configurations in Angstrom (built on
        first use: it needs OpenMM)."""
        if self._energy is None:
            self._energy = AlanineDipeptide(length_unit='angstrom')
        return self._energy

    def shape(self) -> Tuple[int, int]:
        return NUM_ATOMS, 3

    def defaults(self, objective: str, quick: bool) -> Dict[str, Any]:
        defaults = dict(epochs=100, hidden_channels=64, num_layers=4,
                        lr=5e-4, lr_schedule='cosine', batch_size=128,
                        num_valid=200, valid_tol=1e-4, num_test=100,
                        eval_every=5)
        if quick:
            defaults.update(QUICK)
        return defaults

    def datasets(self, data: DataConfig, progress: bool = True,
                 log: bool = True) -> Splits:
        path = data.files or self.simulate(data, progress, log)
        blocks = split_trajectory(self.read_trajectory(path),
                                  SPLIT_FRACTIONS)
        splits = Splits(*(ConformationDataset(torch.from_numpy(
            blocks[name].positions) * ANGSTROM_PER_NM)
            for name in ('train', 'valid', 'test')))
        return splits._replace(train=subset(splits.train, data.n_train))

    def simulate(self, data: DataConfig, progress: bool, log: bool) -> str:
        r"""The path of the task's own MD data under :obj:`data.root`, run
        first if it is not there."""
        path = osp.join(data.root, self.name,
                        f'md_{MD_NANOSECONDS}ns_seed{data.split_seed}.npz')
        if not osp.exists(path):
            if log:
                print(f'Simulating {MD_NANOSECONDS} ns of alanine dipeptide '
                      f'(seed {data.split_seed}) into {path}; about 30 '
                      f'minutes on one core', flush=True)
            simulate_alanine_dipeptide(MD_NANOSECONDS * 1000, path=path,
                                       seed=data.split_seed,
                                       progress=progress)
        return path

    def read_trajectory(self, path: str) -> Trajectory:
        r"""Reads a trajectory :obj:`.npz` and checks that it holds
        alanine dipeptide in this task's force field."""
        try:
            trajectory = load_trajectory(path)
        except (OSError, KeyError, ValueError) as error:
            raise ValueError(f'{path}: not a trajectory of '
                             f'simulate_alanine_dipeptide ({error})') \
                from None
        shape = trajectory.positions.shape
        if len(shape) != 3 or shape[1:] != (NUM_ATOMS, 3):
            raise ValueError(f'{path}: expected positions of shape [S, '
                             f'{NUM_ATOMS}, 3] in nm (got {list(shape)})')
        unit = trajectory.settings.get('length_unit')
        if unit != 'nm':
            raise ValueError(f'{path}: positions in {unit!r}; the '
                             f'trajectories of simulate_alanine_dipeptide '
                             f'are in nm')
        force_field = trajectory.settings.get('force_field')
        if force_field != self.energy.force_field:
            raise ValueError(f'{path}: simulated with the force field '
                             f'{force_field!r}, the task evaluates '
                             f'{self.energy.force_field!r}')
        return trajectory

    def build_model(self, options: ModelOptions,
                    splits: Splits) -> ConformerFlow:
        return ConformerFlow(self.energy.exchangeable_types(),
                             options.hidden_channels, options.num_layers,
                             num_radial=options.num_radial,
                             radial_cutoff=options.radial_cutoff,
                             adjoint=options.adjoint,
                             prediction=options.prediction)

    def read_structures(self, path: str, model: torch.nn.Module
                        ) -> Structures:
        r"""Conformations :obj:`[S, 22, 3]` in Angstrom from a :obj:`.npy`
        file (see :meth:`PointCloudTask.read_structures`); a file whose
        closest atoms lie nearer than :obj:`MIN_BOND` is refused as being in
        nm."""
        structures = super().read_structures(path, model)
        if structures.graphs:
            pos = torch.stack([g.pos for g in structures.graphs]).double()
            distances = torch.cdist(pos, pos)
            distances.diagonal(dim1=1, dim2=2).fill_(math.inf)
            closest = float(distances.amin(dim=(1, 2)).median())
            if closest < MIN_BOND:
                raise ValueError(f'{path}: the closest atoms lie '
                                 f'{closest:.3g} apart (median over the '
                                 f'conformations); the flow reads '
                                 f'Angstrom, these look like nm (multiply '
                                 f'by 10)')
        return structures

    def sample(self, model: torch.nn.Module, num_samples: int,
               **kwargs: Any) -> Batch:
        r"""Draws conformations and reflects those of D chirality to L."""
        samples = model.sample(num_samples, NUM_ATOMS, **kwargs)
        pos, _ = self.energy.to_l_chirality(
            samples.pos.view(-1, NUM_ATOMS, 3))
        samples.pos = pos.reshape(-1, 3)
        return samples

    def sample_metrics(self, samples: Batch,
                       reference: Optional[Dataset] = None
                       ) -> Dict[str, Any]:
        r"""The point-cloud metrics, and :math:`\Delta F` of the samples
        (and of the reference frames, with a block bootstrap)."""
        metrics = super().sample_metrics(samples, reference)
        value, stderr = bootstrap_delta_f(self.dihedrals(samples))
        metrics.update(delta_f_samples=value, delta_f_samples_stderr=stderr)
        if reference is not None:
            value, stderr = self.reference_delta_f(reference)
            metrics.update(delta_f_reference=value,
                           delta_f_reference_stderr=stderr)
        return metrics

    def reweighted_metrics(self, draw: ImportanceSamples, test: Dataset,
                           out: str) -> Dict[str, Any]:
        r""":math:`\Delta F` of the importance-weighted samples, and the
        Ramachandran surfaces of the test frames and of the samples, raw
        and reweighted (:obj:`out/ramachandran.png`)."""
        from torch_enf.visualization import plot_ramachandran
        positions, reflected = self.energy.to_l_chirality(draw.positions)
        angles = self.energy.phi_psi(positions.double())
        value, stderr = bootstrap_delta_f(angles, draw.log_weights)
        test_angles = self.dihedrals(test)
        plot_ramachandran({
            'MD (test)': free_energy_surface(test_angles),
            'flow samples': free_energy_surface(angles),
            'reweighted': free_energy_surface(angles, draw.log_weights)},
            osp.join(out, 'ramachandran.png'))
        return dict(delta_f_reweighted=value,
                    delta_f_reweighted_stderr=stderr,
                    num_reflected=int(reflected.sum()))

    def reference_delta_f(self, frames: Dataset) -> Tuple[float, float]:
        r""":math:`\Delta F` of consecutive MD frames with the standard
        error of a bootstrap over :obj:`MD_BLOCKS` blocks."""
        angles = self.dihedrals(frames)
        return bootstrap_delta_f(angles,
                                 block=max(len(angles) // MD_BLOCKS, 1))

    def dihedrals(self, graphs) -> Tensor:
        r"""The backbone dihedrals :obj:`[S, 2]` of conformations (a batch
        or a dataset)."""
        return self.energy.phi_psi(self.stack_positions(graphs).double())
