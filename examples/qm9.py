r"""Train the E(n) equivariant normalizing flow on QM9 molecules.

The molecule experiment of Satorras, Hoogeboom et al., "E(n) Equivariant
Normalizing Flows" (NeurIPS 2021): a :class:`~torch_enf.flows.MoleculeFlow`
(number of atoms, dequantised atom types and charges, positions) trained by
flow matching (``--objective fm``, the default, with uniform dequantisation)
or by the variational lower bound as in the paper (``--objective ml``),
then sampled and judged by atom and molecule stability, RDKit validity and
uniqueness, and the NLL bound.

Examples::

    python examples/qm9.py --time-budget 2.5 --epochs 1000   # 2 CPU cores
    python examples/qm9.py --quick                           # < 10 minutes
    python examples/qm9.py --objective ml --quick            # paper's loss
    torchrun --nproc_per_node=2 examples/qm9.py --quick

This is ``torch-enf train qm9 [options]``. Every run writes
``OUT/results.json``, ``OUT/model.pt``, ``OUT/checkpoint.pt``
(``--resume`` continues it), ``OUT/best.pt``, ``OUT/curves.png`` and the
samples as XYZ, SDF and a picture, and prints ``test_nll=<value>`` last.
``--help`` lists
all options.
"""
import sys

from torch_enf.cli import main

if __name__ == '__main__':
    sys.exit(main(['train', 'qm9', *sys.argv[1:]]))
