r"""Physical systems: particle energies (DW4, LJ13, harmonic), the MCMC
sampler that generates their data, and molecules with OpenMM force fields
(alanine dipeptide; needs ``pip install torch-enf[md]``) with their MD
driver. Physics, not data sets: the PyG data
sets of :mod:`torch_enf.datasets` are built from these."""
from .energies import (DoubleWellEnergy, HarmonicEnergy, LennardJonesEnergy,
                       ParticleEnergy)
from .md import (Trajectory, load_trajectory, save_trajectory,
                 simulate_alanine_dipeptide, split_trajectory)
from .molecular import AlanineDipeptide, OpenMMEnergy
from .free_energy import (basin_masks, bootstrap_delta_f, delta_f,
                          free_energy_surface)
from .sampling import MALASampler, remove_mean

__all__ = [
    'ParticleEnergy',
    'DoubleWellEnergy',
    'LennardJonesEnergy',
    'HarmonicEnergy',
    'MALASampler',
    'remove_mean',
    'OpenMMEnergy',
    'AlanineDipeptide',
    'Trajectory',
    'simulate_alanine_dipeptide',
    'save_trajectory',
    'load_trajectory',
    'split_trajectory',
    'basin_masks',
    'delta_f',
    'bootstrap_delta_f',
    'free_energy_surface',
]
