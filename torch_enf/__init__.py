r"""torch-enf: E(n)-equivariant graph neural networks and normalizing flows
for PyTorch Geometric."""
import torch_enf.nn
import torch_enf.flows
import torch_enf.datasets
import torch_enf.metrics
import torch_enf.objectives  # noqa: F401

__version__ = '0.1.0'

__all__ = ['__version__']
