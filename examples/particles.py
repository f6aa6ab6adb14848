r"""Train an E(n) equivariant normalizing flow on DW4 or LJ13.

The many-body experiments of Satorras, Hoogeboom et al., "E(n) Equivariant
Normalizing Flows" (NeurIPS 2021), Table 1. The flow is trained by flow
matching (``--objective fm``, the default: one vector-field evaluation per
step) or by maximum likelihood as in the paper (``--objective ml``: an ODE
solve per step), selected by validation NLL, and judged by the exact test
NLL (nats per configuration on the centred subspace).

Examples::

    python examples/particles.py --system dw4 --quick     # ~5 min on 2 cores
    python examples/particles.py --system lj13 --n-train 100 --epochs 4000
    python examples/particles.py --system dw4 --objective ml --quick
    python examples/particles.py --system dw4 --sweep     # Table 1 sizes

Every run writes ``OUT/results.json``, ``OUT/checkpoint.pt`` (``--resume``
continues it), ``OUT/best.pt``, ``OUT/curves.png`` and ``OUT/samples.png``,
and prints ``test_nll=<value>`` last. ``--help`` lists all options.
"""
from torch_enf.experiments import particles

if __name__ == '__main__':
    particles.main()
