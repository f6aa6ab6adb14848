r"""Train the E(n) equivariant normalizing flow on QM9 positions only.

The "QM9 positional" experiment of Satorras, Hoogeboom et al.,
"E(n) Equivariant Normalizing Flows" (NeurIPS 2021), Table 2: an
:class:`~torch_enf.flows.ENFlow` on the positions of the 19-atom molecules
of QM9 (atom types ignored), trained by flow matching (``--objective fm``,
the default) or maximum likelihood (``--objective ml``), judged by the test
NLL (nats per molecule on the centred subspace) and the Jensen-Shannon
divergence between the interatomic-distance histograms of samples and
training data (100 bins on 0-13 Angstrom).

Examples::

    python examples/qm9_positional.py --time-budget 2.5 --epochs 1000
    python examples/qm9_positional.py --quick
    torchrun --nproc_per_node=2 examples/qm9_positional.py --quick

Outputs as ``examples/qm9.py``, with the distance histograms in
``OUT/distances.png``.
"""
import sys

from torch_enf.cli import main

if __name__ == '__main__':
    sys.exit(main(['train', 'qm9-positional', *sys.argv[1:]]))
