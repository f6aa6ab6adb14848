from .qm9 import QM9
__all__ = [
    'QM9',
]
