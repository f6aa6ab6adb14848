r"""Moved to :mod:`torch_enf.systems.energies`; kept so that old imports
work."""
from torch_enf.systems.energies import (  # noqa: F401
    DoubleWellEnergy, LennardJonesEnergy, ParticleEnergy)
