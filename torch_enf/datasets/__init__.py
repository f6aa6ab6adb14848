r"""PyG data sets: QM9 (for generation and with its twelve properties),
the charged N-body system and the DW4 / LJ13 / LJ55 particle systems. The
energies and the sampler live in :mod:`torch_enf.systems` (also importable
from here)."""
from torch_enf.systems import (DoubleWellEnergy, LennardJonesEnergy,
                               MALASampler, ParticleEnergy)

from .molecules import MoleculeDataset
from .nbody import NBody
from .particles import (DW4, LJ13, LJ55, PARTICLE_SYSTEMS, LJ13Halved,
                        ParticleSystem)
from .points import PointCloudDataset
from .qm9 import QM9
from .qm9_properties import TARGETS, QM9Properties, resolve_target

__all__ = [
    'QM9',
    'QM9Properties',
    'TARGETS',
    'resolve_target',
    'NBody',
    'MoleculeDataset',
    'PointCloudDataset',
    'ParticleEnergy',
    'DoubleWellEnergy',
    'LennardJonesEnergy',
    'MALASampler',
    'ParticleSystem',
    'DW4',
    'LJ13',
    'LJ13Halved',
    'LJ55',
    'PARTICLE_SYSTEMS',
]
