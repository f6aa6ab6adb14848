from .qm9 import QM9
from .energies import DoubleWellEnergy, LennardJonesEnergy, ParticleEnergy
from .sampling import MALASampler
from .particles import DW4, LJ13, ParticleSystem
__all__ = [
    'QM9',
    'ParticleEnergy',
    'DoubleWellEnergy',
    'LennardJonesEnergy',
    'MALASampler',
    'ParticleSystem',
    'DW4',
    'LJ13',
]
