r"""Molecules with a classical force field evaluated by OpenMM: the reduced
energies and forces of batches of configurations, as a flow needs them, and
the geometry that describes a peptide (backbone dihedrals, chirality).

The system is alanine dipeptide (Ace-Ala-Nme, 22 atoms), the molecule of the
Boltzmann-generator literature, in implicit solvent (OBC) at 300 K without
constraints. Its topology and starting coordinates are those of
:obj:`openmmtools.testsystems.AlanineDipeptideImplicit`, with two force
fields (:obj:`FORCE_FIELDS`):

* :obj:`"amber99sbildn"` (default): AMBER ff99SB-ILDN with OBC1
  implicit solvent, OpenMM's :obj:`amber99sbildn.xml` and
  :obj:`amber96_obc.xml`; the system of Dibak, Klein and Noé (2020) used
  by Klein, Krämer and Noé (NeurIPS 2023).
* :obj:`"amber96"`: the test system's own Amber prmtop, AMBER ff96 with
  OBC1 (mbondi2 radii), as used by Köhler et al. (2021) and Midgley et al.
  (2023).

Units: lengths in nanometres (OpenMM's unit, and the unit of the published
alanine-dipeptide data sets, so that these can be evaluated as they are;
multiply by 10 for the Angstrom of :mod:`torch_enf.io`); energies reduced,
:math:`u = E / k_B T` with :math:`k_B = 0.0083144626` kJ/mol/K
(:math:`k_B T = 2.494` kJ/mol at 300 K); forces in :math:`k_B T` per nm.
Energies and forces are float64. A flow that works in Angstrom evaluates
its samples with :obj:`length_unit="angstrom"` (positions, forces and
:attr:`AlanineDipeptide.reference_positions` in Angstrom).

OpenMM is imported only when a system is built:
:obj:`pip install torch-enf[md]` installs it.
"""
import math
from typing import Any, Dict, List, Tuple

import numpy as np
import torch
from torch import Tensor

from torch_enf.elements import ATOMIC_NUMBERS
from torch_enf.systems.energies import ParticleEnergy
from torch_enf.utils import check_positive_integer, check_positive_number

BOLTZMANN = 0.0083144626
r"""Boltzmann's constant :math:`k_B` in kJ/mol/K (CODATA 2018 times the
Avogadro constant)."""

FORCE_FIELDS = ('amber99sbildn', 'amber96')
r"""The force fields of :func:`alanine_dipeptide_system`."""

AMBER99SBILDN_FILES = ('amber99sbildn.xml', 'amber96_obc.xml')
r"""OpenMM's force-field files of :obj:`"amber99sbildn"`."""

ELEMENTS = ('H', 'C', 'N', 'O')
r"""The elements of alanine dipeptide, in the order of the one-hot atom
types (:attr:`OpenMMEnergy.atom_types`)."""

PLATFORMS = ('Reference', 'CPU')

NM_PER_UNIT = {'nm': 1.0, 'angstrom': 0.1}
r"""The length units of the positions, in nanometres."""

EXCHANGEABLE = (('ACE', ('H1', 'H2', 'H3')), ('ALA', ('HB1', 'HB2', 'HB3')),
                ('NME', ('H1', 'H2', 'H3')))
r"""The groups of atoms of alanine dipeptide (residue, names) that the
force field treats alike: the hydrogens of the three methyl groups."""


def require_openmm() -> Any:
    r"""Returns the :obj:`openmm` module, or raises an :class:`ImportError`
    naming the extra to install."""
    try:
        import openmm
    except ImportError as error:
        raise ImportError("Molecular systems need OpenMM and openmmtools: "
                          "pip install torch-enf[md]") from error
    return openmm


def kT(temperature: float) -> float:
    r"""The thermal energy :math:`k_B T` in kJ/mol at :obj:`temperature`
    (kelvin)."""
    check_positive_number(temperature, 'temperature')
    return BOLTZMANN * temperature


def alanine_dipeptide_system(force_field: str = 'amber99sbildn'
                             ) -> Tuple[Any, Any, np.ndarray]:
    r"""Builds alanine dipeptide in OBC implicit solvent without
    constraints, from :obj:`openmmtools.testsystems.AlanineDipeptideImplicit`
    (:obj:`constraints=None`, no cutoff, centre-of-mass motion removed).

    Args:
        force_field (str, optional): :obj:`"amber99sbildn"` or
            :obj:`"amber96"` (see the module's docstring).
            (default: :obj:`"amber99sbildn"`)

    Returns:
        The :class:`openmm.System`, the :class:`openmm.app.Topology` and the
        test system's coordinates (float64 array :obj:`[22, 3]`, nm).
    """
    if force_field not in FORCE_FIELDS:
        raise ValueError(f"Unknown force field {force_field!r} (expected "
                         f"one of {FORCE_FIELDS})")
    require_openmm()
    try:
        from openmmtools.testsystems import AlanineDipeptideImplicit
    except ImportError as error:
        raise ImportError("Alanine dipeptide needs openmmtools: pip install "
                          "torch-enf[md]") from error
    from openmm import app, unit
    test_system = AlanineDipeptideImplicit(constraints=None)
    system = test_system.system
    if force_field == 'amber99sbildn':
        system = app.ForceField(*AMBER99SBILDN_FILES).createSystem(
            test_system.topology, nonbondedMethod=app.NoCutoff,
            constraints=None, rigidWater=False)
    positions = test_system.positions.value_in_unit(unit.nanometer)
    return system, test_system.topology, np.asarray(positions, np.float64)


def backbone_dihedral_indices(topology: Any) -> Tuple[Tensor, Tensor]:
    r"""The atoms of the backbone dihedrals of every residue that has a
    neighbour on both sides, found by atom name:
    :math:`\phi_i` = C\ :sub:`i-1`-N\ :sub:`i`-CA\ :sub:`i`-C\ :sub:`i` and
    :math:`\psi_i` = N\ :sub:`i`-CA\ :sub:`i`-C\ :sub:`i`-N\ :sub:`i+1`.

    Returns:
        The indices of :math:`\phi` and of :math:`\psi`, long tensors of
        shape :obj:`[num_residues, 4]` (for alanine dipeptide
        :obj:`[[4, 6, 8, 14]]` and :obj:`[[6, 8, 14, 16]]`).
    """
    residues = [{atom.name: atom.index for atom in residue.atoms()}
                for residue in topology.residues()]
    phi, psi = [], []
    for before, residue, after in zip(residues, residues[1:],
                                      residues[2:]):
        if {'N', 'CA', 'C'} <= residue.keys() and 'C' in before \
                and 'N' in after:
            phi.append([before['C'], residue['N'], residue['CA'],
                        residue['C']])
            psi.append([residue['N'], residue['CA'], residue['C'],
                        after['N']])
    return (torch.tensor(phi, dtype=torch.long).view(-1, 4),
            torch.tensor(psi, dtype=torch.long).view(-1, 4))


def alpha_carbon_indices(topology: Any) -> Tensor:
    r"""The atoms CA, N, C, CB of every residue with a side chain (the
    stereocentres of :func:`signed_volume`), found by atom name; a long
    tensor of shape :obj:`[num_residues, 4]`."""
    indices = []
    for residue in topology.residues():
        names = {atom.name: atom.index for atom in residue.atoms()}
        if {'CA', 'N', 'C', 'CB'} <= names.keys():
            indices.append([names[name] for name in ('CA', 'N', 'C', 'CB')])
    return torch.tensor(indices, dtype=torch.long).view(-1, 4)


def dihedral(pos: Tensor, indices: Tensor) -> Tensor:
    r"""The dihedral angles of atoms :math:`(a, b, c, d)` in the IUPAC sign
    convention, differentiable,

    .. math::
        \theta = \operatorname{atan2}\left(\|\mathbf{b}_2\|\,
        \mathbf{b}_1 \cdot (\mathbf{b}_2 \times \mathbf{b}_3),\,
        (\mathbf{b}_1 \times \mathbf{b}_2) \cdot
        (\mathbf{b}_2 \times \mathbf{b}_3)\right) \in (-\pi, \pi],

    with :math:`\mathbf{b}_1 = \mathbf{x}_b - \mathbf{x}_a`,
    :math:`\mathbf{b}_2 = \mathbf{x}_c - \mathbf{x}_b` and
    :math:`\mathbf{b}_3 = \mathbf{x}_d - \mathbf{x}_c`.

    Args:
        pos (Tensor): Positions :obj:`[..., num_atoms, 3]`.
        indices (Tensor): Atoms :obj:`[K, 4]`.

    Returns:
        The angles in radians, shape :obj:`[..., K]`.
    """
    a, b, c, d = (pos[..., indices[:, k], :] for k in range(4))
    b1, b2, b3 = b - a, c - b, d - c
    n1, n2 = torch.linalg.cross(b1, b2), torch.linalg.cross(b2, b3)
    y = b2.norm(dim=-1) * (b1 * n2).sum(dim=-1)
    return torch.atan2(y, (n1 * n2).sum(dim=-1))


def signed_volume(pos: Tensor, indices: Tensor) -> Tensor:
    r"""The signed volume :math:`(\mathbf{x}_N - \mathbf{x}_{CA}) \cdot
    [(\mathbf{x}_C - \mathbf{x}_{CA}) \times (\mathbf{x}_{CB} -
    \mathbf{x}_{CA})]` of every stereocentre of :obj:`indices`
    :obj:`[K, 4]` (CA, N, C, CB; :func:`alpha_carbon_indices`), shape
    :obj:`[..., K]`, in length units cubed. It is positive for L amino
    acids (S at CA: N, C, CB counter-clockwise seen with H away) and
    changes sign under a reflection (:func:`mirror`)."""
    center = pos[..., indices[:, 0], :]
    n, c, cb = (pos[..., indices[:, k], :] - center for k in (1, 2, 3))
    return (n * torch.linalg.cross(c, cb)).sum(dim=-1)


def mirror(pos: Tensor) -> Tensor:
    r"""Reflects configurations :obj:`[..., 3]` through the plane
    :math:`x = 0` (:math:`x \mapsto -x`), which turns every L stereocentre
    into D and back, and leaves the energy unchanged."""
    return pos * pos.new_tensor([-1.0, 1.0, 1.0])


class _ReducedEnergy(torch.autograd.Function):
    r"""The energies of :meth:`OpenMMEnergy.energy_and_forces`, whose
    gradient is the negative force."""
    @staticmethod
    def forward(ctx, pos: Tensor, module: 'OpenMMEnergy') -> Tensor:
        energy, forces = module.energy_and_forces(pos)
        ctx.save_for_backward(forces)
        return energy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> Tuple[Tensor, None]:
        forces, = ctx.saved_tensors
        return -grad.to(forces.dtype)[:, None, None] * forces, None


class OpenMMEnergy(ParticleEnergy):
    r"""The reduced potential energy :math:`u(\mathbf{x}) = E(\mathbf{x}) /
    k_B T` of an OpenMM system, for batches of configurations of shape
    :obj:`[num_samples, num_atoms, 3]` (or :obj:`[num_samples,
    num_atoms * 3]`) in nm (or Angstrom, see :obj:`length_unit`); float64,
    differentiable (the gradient is the negative OpenMM force
    :math:`-\mathbf{F} / k_B T`, in :math:`k_B T` per length unit).

    A configuration with a non-finite coordinate, two atoms closer than
    :obj:`min_distance`, or an energy or force OpenMM cannot compute gets
    :math:`u = +\infty` (never NaN) and zero forces; :attr:`num_infinite`
    counts them among the :attr:`num_evaluated` configurations.

    Args:
        system (openmm.System): The system.
        topology (openmm.app.Topology): Its atoms.
        temperature (float, optional): :math:`T` in kelvin.
            (default: :obj:`300.0`)
        platform (str, optional): :obj:`"Reference"` (double precision
            throughout) or :obj:`"CPU"` (forces in single precision).
            (default: :obj:`"Reference"`)
        threads (int, optional): Threads of the CPU platform.
            (default: :obj:`1`)
        min_distance (float, optional): The closest two atoms may come, in
            nm. (default: :obj:`0.01`)
        length_unit (str, optional): The unit of the positions,
            :obj:`"nm"` or :obj:`"angstrom"` (the unit of a flow trained in
            Angstrom). (default: :obj:`"nm"`)
    """
    def __init__(self, system: Any, topology: Any,
                 temperature: float = 300.0, platform: str = 'Reference',
                 threads: int = 1, min_distance: float = 0.01,
                 length_unit: str = 'nm'):
        openmm = require_openmm()
        super().__init__(system.getNumParticles(), 3)
        check_positive_integer(threads, 'threads')
        check_positive_number(min_distance, 'min_distance')
        if platform not in PLATFORMS:
            raise ValueError(f"Unknown platform {platform!r} (expected one "
                             f"of {PLATFORMS})")
        if length_unit not in NM_PER_UNIT:
            raise ValueError(f"Unknown length_unit {length_unit!r} "
                             f"(expected one of {sorted(NM_PER_UNIT)})")
        self.length_unit = length_unit
        #: Nanometres per length unit of the positions.
        self.nm_per_unit = NM_PER_UNIT[length_unit]
        self.temperature, self.kT = temperature, kT(temperature)
        self.platform, self.min_distance = platform, min_distance
        self.system, self.topology = system, topology
        properties = {'Threads': str(threads)} if platform == 'CPU' else {}
        self.context = openmm.Context(
            system, openmm.VerletIntegrator(0.001),
            openmm.Platform.getPlatformByName(platform), properties)
        self.atom_names: List[str] = [a.name for a in topology.atoms()]
        self.atomic_numbers = torch.tensor(
            [ATOMIC_NUMBERS[a.element.symbol] for a in topology.atoms()])
        self.num_evaluated = 0
        self.num_infinite = 0

    @property
    def atom_types(self) -> Tensor:
        r"""One-hot elements :obj:`[num_atoms, 4]` in the order of
        :obj:`ELEMENTS` (H, C, N, O), float32."""
        table = torch.tensor([ATOMIC_NUMBERS[s] for s in ELEMENTS])
        return (self.atomic_numbers[:, None] == table).float()

    def positions(self, pos: Tensor) -> Tensor:
        r"""Validates :obj:`pos` and returns it with shape
        :obj:`[num_samples, num_atoms, 3]`."""
        M = self.num_particles
        if pos.dim() == 2 and pos.size(1) == M * 3:
            return pos.view(pos.size(0), M, 3)
        if pos.dim() != 3 or pos.shape[1:] != (M, 3):
            single = ' (one configuration needs pos[None])' \
                if tuple(pos.shape) == (M, 3) else ''
            raise ValueError(
                f"Positions of {self.__class__.__name__} must have shape "
                f"[num_samples, {M}, 3] or [num_samples, {M * 3}], in "
                f"{self.length_unit} (got {tuple(pos.shape)}){single}")
        return pos

    def _openmm(self, pos: np.ndarray) -> Tuple[float, np.ndarray]:
        r"""Energy (kJ/mol) and forces (kJ/mol/nm) of one configuration."""
        from openmm import OpenMMException, unit
        try:
            self.context.setPositions(pos)
            state = self.context.getState(getEnergy=True, getForces=True)
        except OpenMMException:
            return math.inf, np.zeros_like(pos)
        energy = state.getPotentialEnergy().value_in_unit(
            unit.kilojoule_per_mole)
        forces = state.getForces(asNumpy=True).value_in_unit(
            unit.kilojoule_per_mole / unit.nanometer)
        return energy, np.asarray(forces, dtype=np.float64)

    def computable(self, pos: Tensor) -> Tensor:
        r"""Whether the configurations :obj:`[B, num_atoms, 3]` have finite
        coordinates and no two atoms closer than :obj:`min_distance`, a
        boolean tensor :obj:`[B]`."""
        finite = torch.isfinite(pos).all(dim=(1, 2))
        safe = torch.where(finite[:, None, None], pos, 0.0)
        distance = torch.cdist(safe, safe)
        distance.diagonal(dim1=1, dim2=2).fill_(math.inf)
        return finite & (distance.amin(dim=(1, 2)) >= self.min_distance)

    def energy_and_forces(self, pos: Tensor) -> Tuple[Tensor, Tensor]:
        r"""The reduced energies :math:`u = E / k_B T`, float64 :obj:`[B]`,
        and forces :math:`\mathbf{F} / k_B T = -\nabla u` (per nm), float64
        :obj:`[B, num_atoms, 3]` (per length unit), of the configurations
        :obj:`pos` (in the length unit), on the device of :obj:`pos`; not
        differentiable (see :meth:`forward`)."""
        x = self.positions(pos).detach().to('cpu', torch.float64) * \
            self.nm_per_unit
        energy = torch.full((x.size(0), ), math.inf, dtype=torch.float64)
        forces = torch.zeros_like(x)
        for b in self.computable(x).nonzero().flatten().tolist():
            e, f = self._openmm(x[b].numpy())
            energy[b], forces[b] = e / self.kT, torch.from_numpy(f) / self.kT
        bad = ~torch.isfinite(energy) | ~torch.isfinite(forces).all((1, 2))
        energy[bad], forces[bad] = math.inf, 0.0
        self.num_evaluated += x.size(0)
        self.num_infinite += int(bad.sum())
        forces = forces * self.nm_per_unit
        return energy.to(pos.device), forces.to(pos.device)

    def energy(self, pos: Tensor) -> Tensor:
        return _ReducedEnergy.apply(pos, self)

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, temperature={self.temperature}, '
                f'platform={self.platform!r}, '
                f'length_unit={self.length_unit!r})')


class AlanineDipeptide(OpenMMEnergy):
    r"""Alanine dipeptide (22 atoms) in OBC implicit solvent without
    constraints (:func:`alanine_dipeptide_system`): the reduced energy
    :math:`u = E / k_B T` of configurations :obj:`[B, 22, 3]` in nm (see
    :class:`OpenMMEnergy`), its backbone dihedrals, the chirality of its
    alpha carbon and the types of its exchangeable atoms.

    Args:
        force_field (str, optional): :obj:`"amber99sbildn"` or
            :obj:`"amber96"`. (default: :obj:`"amber99sbildn"`)
        **kwargs: :obj:`temperature` (default 300 K), :obj:`platform`,
            :obj:`threads`, :obj:`min_distance` and :obj:`length_unit` of
            :class:`OpenMMEnergy`.
    """
    def __init__(self, force_field: str = 'amber99sbildn', **kwargs):
        system, topology, positions = alanine_dipeptide_system(force_field)
        super().__init__(system, topology, **kwargs)
        self.force_field = force_field
        #: The test system's coordinates :obj:`[22, 3]` (float64, in the
        #: length unit).
        self.reference_positions = torch.from_numpy(positions) / \
            self.nm_per_unit
        phi, psi = backbone_dihedral_indices(topology)
        #: The atoms of :math:`\phi` and :math:`\psi`, :obj:`[2, 4]`.
        self.dihedral_indices = torch.cat([phi, psi])
        #: The atoms CA, N, C, CB of the alpha carbon, :obj:`[1, 4]`.
        self.chirality_indices = alpha_carbon_indices(topology)

    def initial_positions(self, num_samples: int,
                          generator: Any = None,
                          dtype: torch.dtype = torch.float64) -> Tensor:
        r"""Copies of :attr:`reference_positions`, :obj:`[num_samples, 22,
        3]`, on the device of :obj:`generator` (nothing is random)."""
        device = generator.device if generator is not None else None
        pos = self.reference_positions.to(device=device, dtype=dtype)
        return pos.expand(num_samples, -1, -1).clone()

    def phi_psi(self, pos: Tensor) -> Tensor:
        r"""The backbone dihedrals :math:`(\phi, \psi)` in radians
        (:func:`dihedral`), differentiable, shape :obj:`[B, 2]`."""
        return dihedral(self.positions(pos), self.dihedral_indices)

    def chirality(self, pos: Tensor) -> Tensor:
        r"""The sign of the alpha carbon's :func:`signed_volume`: :obj:`1`
        for L-alanine, :obj:`-1` for D, shape :obj:`[B]`."""
        volume = signed_volume(self.positions(pos), self.chirality_indices)
        return torch.sign(volume[:, 0])

    def to_l_chirality(self, pos: Tensor) -> Tuple[Tensor, Tensor]:
        r"""Reflects the configurations :obj:`[B, 22, 3]` with D chirality
        at the alpha carbon (:func:`mirror`) and keeps the L ones. Returns
        the configurations, all L, and the mask :obj:`[B]` of those
        reflected.

        An E(3)-equivariant flow has a reflection-invariant density
        :math:`q`, half of whose mass lies on D configurations, which MD
        at 300 K never visits. Its samples made L this way have the density
        :math:`q_L(\mathbf{x}) = q(\mathbf{x}) + q(R\mathbf{x}) = 2
        q(\mathbf{x})` on L configurations, and :math:`u` is reflection
        invariant, so their importance log-weights are :math:`-u - \log q
        - \ln 2`: a constant offset, which self-normalised weights
        cancel."""
        reflected = self.chirality(pos) < 0
        return (torch.where(reflected[:, None, None], mirror(pos), pos),
                reflected)

    def exchangeable_types(self) -> Tensor:
        r"""One integer type per atom, :obj:`[22]`: the atoms of a group of
        :obj:`EXCHANGEABLE` (the three hydrogens of each methyl group,
        which the force field treats alike) share one, every other atom
        has its own (16 types)."""
        types: List[int] = []
        group_type: Dict[Tuple[str, str], int] = {}
        for atom in self.topology.atoms():
            residue, name = atom.residue.name, atom.name
            group = next((names for r, names in EXCHANGEABLE
                          if r == residue and name in names), None)
            if group is None:
                types.append(len(set(types)))
                continue
            if (residue, group[0]) not in group_type:
                group_type[residue, group[0]] = len(set(types))
            types.append(group_type[residue, group[0]])
        return torch.tensor(types)

    def extra_repr(self) -> str:
        return f'force_field={self.force_field!r}, {super().extra_repr()}'
