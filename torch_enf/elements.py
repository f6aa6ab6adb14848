r"""The one table of chemical elements used by the data sets, the molecule
flow, the bond metrics, the file readers and writers, and the pictures."""
from typing import Dict, Tuple

SYMBOLS: Tuple[str, ...] = (
    'H', 'He', 'Li', 'Be', 'B', 'C', 'N', 'O', 'F', 'Ne', 'Na', 'Mg', 'Al',
    'Si', 'P', 'S', 'Cl', 'Ar')
r"""Element symbols of atomic numbers 1 to 18 (:obj:`SYMBOLS[z - 1]`)."""

ATOMIC_NUMBERS: Dict[str, int] = {symbol: z for z, symbol in
                                  enumerate(SYMBOLS, start=1)}
r"""Atomic number of every symbol in :obj:`SYMBOLS`."""

QM9_SYMBOLS: Tuple[str, ...] = ('H', 'C', 'N', 'O', 'F')
r"""The elements of QM9, in the order of the one-hot atom types."""

QM9_ATOMIC_NUMBERS: Tuple[int, ...] = tuple(ATOMIC_NUMBERS[s]
                                            for s in QM9_SYMBOLS)
r"""Their atomic numbers, :obj:`(1, 6, 7, 8, 9)`."""

VALENCES: Dict[str, int] = {'H': 1, 'C': 4, 'N': 3, 'O': 2, 'F': 1}
r"""The valence of the QM9 elements (bonds of a stable atom)."""

STYLES: Dict[int, Tuple[str, str, int]] = {
    1: ('H', '#d9d9d9', 40),
    6: ('C', '#404040', 110),
    7: ('N', '#3050f8', 110),
    8: ('O', '#ff0d0d', 110),
    9: ('F', '#90e050', 100),
}
r"""Pictures: atomic number to (symbol, colour, marker size)."""
