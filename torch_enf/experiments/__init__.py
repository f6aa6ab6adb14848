r"""The experiments of the E-NF paper as library functions with their
command-line options: :mod:`~torch_enf.experiments.particles` (DW4, LJ13)
and :mod:`~torch_enf.experiments.qm9` (QM9 positional and QM9). The
scripts in :obj:`examples/` call their :obj:`main`."""
