r"""The one table of chemical elements used by the data sets, the molecule
flow, the bond metrics, the file readers and writers, and the pictures."""
from typing import Any, Dict, Tuple

SYMBOLS: Tuple[str, ...] = (
    'H', 'He', 'Li', 'Be', 'B', 'C', 'N', 'O', 'F', 'Ne', 'Na', 'Mg', 'Al',
    'Si', 'P', 'S', 'Cl', 'Ar', 'K', 'Ca', 'Sc', 'Ti', 'V', 'Cr', 'Mn', 'Fe',
    'Co', 'Ni', 'Cu', 'Zn', 'Ga', 'Ge', 'As', 'Se', 'Br', 'Kr', 'Rb', 'Sr',
    'Y', 'Zr', 'Nb', 'Mo', 'Tc', 'Ru', 'Rh', 'Pd', 'Ag', 'Cd', 'In', 'Sn',
    'Sb', 'Te', 'I', 'Xe', 'Cs', 'Ba', 'La', 'Ce', 'Pr', 'Nd', 'Pm', 'Sm',
    'Eu', 'Gd', 'Tb', 'Dy', 'Ho', 'Er', 'Tm', 'Yb', 'Lu', 'Hf', 'Ta', 'W',
    'Re', 'Os', 'Ir', 'Pt', 'Au', 'Hg', 'Tl', 'Pb', 'Bi', 'Po', 'At', 'Rn')
r"""Element symbols of atomic numbers 1 to 86, hydrogen to radon
(:obj:`SYMBOLS[z - 1]`)."""

ATOMIC_NUMBERS: Dict[str, int] = {symbol: z for z, symbol in
                                  enumerate(SYMBOLS, start=1)}
r"""Atomic number of every symbol in :obj:`SYMBOLS`."""

QM9_SYMBOLS: Tuple[str, ...] = ('H', 'C', 'N', 'O', 'F')
r"""The elements of QM9, in the order of the one-hot atom types."""

QM9_ATOMIC_NUMBERS: Tuple[int, ...] = tuple(ATOMIC_NUMBERS[s]
                                            for s in QM9_SYMBOLS)
r"""Their atomic numbers, :obj:`(1, 6, 7, 8, 9)`."""

VALENCES: Dict[str, int] = {'H': 1, 'C': 4, 'N': 3, 'O': 2, 'F': 1}
r"""The valence of the QM9 elements (bonds of a stable atom), the rule of
the E-NF and EDM papers for QM9."""

ALLOWED_VALENCES: Dict[Tuple[str, int], Tuple[int, ...]] = {
    # Neutral atoms. QM9's elements keep their single valence (VALENCES).
    # B to Bi: the allowed bond counts of the EDM paper for GEOM-drugs
    # (Hoogeboom et al., ICML 2022); S, Se and the heavier halogens also in
    # their hypervalent states (sulfones, selenones, perchlorate, periodate;
    # Greenwood & Earnshaw, Chemistry of the Elements, 2nd ed., 1997).
    ('H', 0): (1, ),
    ('B', 0): (3, ),
    ('C', 0): (4, ),
    ('N', 0): (3, ),
    ('O', 0): (2, ),
    ('F', 0): (1, ),
    ('Al', 0): (3, ),
    ('Si', 0): (4, ),
    ('P', 0): (3, 5),
    ('S', 0): (2, 4, 6),
    ('Cl', 0): (1, 3, 5, 7),
    ('As', 0): (3, 5),
    ('Se', 0): (2, 4, 6),
    ('Br', 0): (1, 3, 5),
    ('I', 0): (1, 3, 5, 7),
    ('Hg', 0): (1, 2),
    ('Bi', 0): (3, 5),
    # Charged atoms: the bond count of the isoelectronic neutral atom
    # (ammonium N+ like C, oxonium O+ like N, borate B- like C, ...).
    ('B', -1): (4, ),
    ('C', 1): (3, ),
    ('C', -1): (3, ),
    ('N', 1): (4, ),
    ('N', -1): (2, ),
    ('O', 1): (3, ),
    ('O', -1): (1, ),
    ('P', 1): (4, ),
    ('S', 1): (3, ),
    ('S', -1): (1, ),
    ('As', 1): (4, ),
    ('Se', -1): (1, ),
    ('I', 1): (2, ),
    ('F', -1): (0, ),
    ('Cl', -1): (0, ),
    ('Br', -1): (0, ),
    ('I', -1): (0, ),
}
r"""The numbers of bonds (sum of bond orders) a stable atom may have, keyed
by element symbol and formal charge. Elements and charges that are absent
have no valence rule (their stability is undefined)."""

COVALENT_RADII_PM: Dict[str, int] = dict(zip(SYMBOLS, (
    # Cordero et al., "Covalent radii revisited", Dalton Trans. 2832 (2008),
    # Table 2: C sp3, Mn, Fe, Co low spin.
    31, 28, 128, 96, 84, 76, 71, 66, 57, 58, 166, 141, 121, 111, 107, 105,
    102, 106, 203, 176, 170, 160, 153, 139, 139, 132, 126, 124, 132, 122,
    122, 120, 119, 120, 120, 116, 220, 195, 190, 175, 164, 154, 147, 146,
    142, 139, 145, 144, 142, 139, 139, 138, 139, 140, 244, 215, 207, 204,
    203, 201, 199, 198, 198, 196, 194, 192, 192, 189, 190, 187, 187, 175,
    170, 162, 151, 144, 141, 136, 136, 132, 145, 146, 148, 140, 150, 150)))
r"""Single-bond covalent radius of every element in :obj:`SYMBOLS`, in pm."""

STYLES: Dict[int, Tuple[str, str, int]] = {
    # Colours of the Jmol CPK scheme (jmol.sourceforge.net/jscolors); marker
    # sizes grow with the period.
    1: ('H', '#d9d9d9', 40),
    3: ('Li', '#cc80ff', 130),
    5: ('B', '#ffb5b5', 110),
    6: ('C', '#404040', 110),
    7: ('N', '#3050f8', 110),
    8: ('O', '#ff0d0d', 110),
    9: ('F', '#90e050', 100),
    11: ('Na', '#ab5cf2', 150),
    12: ('Mg', '#8aff00', 140),
    13: ('Al', '#bfa6a6', 140),
    14: ('Si', '#f0c8a0', 130),
    15: ('P', '#ff8000', 130),
    16: ('S', '#ffff30', 130),
    17: ('Cl', '#1ff01f', 125),
    19: ('K', '#8f40d4', 170),
    20: ('Ca', '#3dff00', 160),
    26: ('Fe', '#e06633', 145),
    29: ('Cu', '#c88033', 145),
    30: ('Zn', '#7d80b0', 145),
    33: ('As', '#bd80e3', 140),
    34: ('Se', '#ffa100', 140),
    35: ('Br', '#a62929', 140),
    50: ('Sn', '#668080', 155),
    53: ('I', '#940094', 155),
    78: ('Pt', '#d0d0e0', 160),
    79: ('Au', '#ffd123', 160),
    80: ('Hg', '#b8b8d0', 160),
    83: ('Bi', '#9e4fb5', 165),
}
r"""Pictures: atomic number to (symbol, colour, marker size)."""


def atomic_number(symbol: str) -> int:
    r"""The atomic number of an element symbol, case-insensitive
    (:obj:`"cl"`, :obj:`"CL"` and :obj:`"Cl"` are chlorine).

    Raises:
        ValueError: For a symbol that is not one of :obj:`SYMBOLS`.
    """
    z = _LOWER_CASE.get(symbol.lower())
    if z is None:
        raise ValueError(f"Unknown element {symbol!r} (known: H to Rn, atomic "
                         f"numbers 1 to {len(SYMBOLS)})")
    return z


_LOWER_CASE = {symbol.lower(): z for symbol, z in ATOMIC_NUMBERS.items()}


def atomic_number_tuple(value: Any, name: str = 'atomic_numbers'
                        ) -> Tuple[int, ...]:
    r"""The element set :obj:`value` (a sequence of atomic numbers) as a
    tuple, checked to be a non-empty sequence of positive integers, as the
    molecule models' configurations store it.

    Raises:
        ValueError: Naming :obj:`name` and the value.
    """
    numbers = tuple(value)
    if not numbers or not all(isinstance(z, int) and not isinstance(z, bool)
                              and z > 0 for z in numbers):
        raise ValueError(f"'{name}' must be positive integers (got "
                         f"{value!r})")
    return numbers
