r"""Moved to :mod:`torch_enf.systems.sampling`; kept so that old imports
work."""
from torch_enf.systems.sampling import MALASampler, remove_mean  # noqa: F401
