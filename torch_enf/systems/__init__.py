r"""Physical systems: particle energies (DW4, LJ13, harmonic) and the MCMC
sampler that generates their data. Physics, not data sets: the PyG data
sets of :mod:`torch_enf.datasets` are built from these."""
from .energies import (DoubleWellEnergy, HarmonicEnergy, LennardJonesEnergy,
                       ParticleEnergy)
from .sampling import MALASampler, remove_mean

__all__ = [
    'ParticleEnergy',
    'DoubleWellEnergy',
    'LennardJonesEnergy',
    'HarmonicEnergy',
    'MALASampler',
    'remove_mean',
]
