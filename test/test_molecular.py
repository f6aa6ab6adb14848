import importlib.util
import math
import os
import sys

import numpy as np
import pytest
import torch

openmm = pytest.importorskip('openmm')
testsystems = pytest.importorskip('openmmtools.testsystems')

from openmm import app, unit  # noqa: E402

from torch_enf.systems.md import (load_trajectory,  # noqa: E402
                                  simulate_alanine_dipeptide,
                                  split_trajectory)
from torch_enf.systems.molecular import (BOLTZMANN,  # noqa: E402
                                         AlanineDipeptide, dihedral, mirror,
                                         require_openmm, signed_volume)

METHYLS = ([0, 2, 3], [11, 12, 13], [19, 20, 21])


@pytest.fixture(scope='module')
def molecule():
    return AlanineDipeptide()


@pytest.fixture(scope='module')
def frames(molecule):
    r"""Thermal-looking configurations: the reference with 0.005 nm
    noise."""
    generator = torch.Generator().manual_seed(3)
    pos = molecule.initial_positions(4)
    return pos + 0.005 * torch.randn(pos.shape, generator=generator,
                                     dtype=torch.float64)


def openmm_energies(system, pos):
    r"""Energies (kJ/mol) of a fresh Reference context."""
    context = openmm.Context(system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName('Reference'))
    out = []
    for x in pos.numpy():
        context.setPositions(x * unit.nanometer)
        state = context.getState(getEnergy=True)
        out.append(state.getPotentialEnergy().value_in_unit(
            unit.kilojoule_per_mole))
    return torch.tensor(out, dtype=torch.float64)


def test_settings_and_atoms(molecule):
    assert molecule.kT == pytest.approx(0.0083144626 * 300)
    assert BOLTZMANN == 0.0083144626
    assert molecule.system.getNumConstraints() == 0
    forces = {type(f).__name__ for f in molecule.system.getForces()}
    assert 'GBSAOBCForce' in forces
    types = molecule.atom_types
    assert types.shape == (22, 4)
    assert types.sum(dim=1).eq(1).all()
    assert types.sum(dim=0).tolist() == [12, 6, 2, 2]  # H, C, N, O
    assert molecule.atomic_numbers[[8, 6, 5]].tolist() == [6, 7, 8]


@pytest.mark.parametrize('force_field', ['amber99sbildn', 'amber96'])
def test_energies_match_openmm(force_field, frames):
    # The systems are rebuilt here from openmmtools and OpenMM's force-field
    # files, independently of the module.
    reference = testsystems.AlanineDipeptideImplicit(constraints=None)
    system = reference.system
    if force_field == 'amber99sbildn':
        system = app.ForceField('amber99sbildn.xml', 'amber96_obc.xml') \
            .createSystem(reference.topology, nonbondedMethod=app.NoCutoff,
                          constraints=None)
    molecule = AlanineDipeptide(force_field)
    expected = openmm_energies(system, frames) / (0.0083144626 * 300)
    energy = molecule(frames)
    assert energy.dtype == torch.float64 and energy.shape == (4, )
    # Same platform, same double-precision arithmetic: tolerance 1e-9 kT.
    torch.testing.assert_close(energy, expected, rtol=0, atol=1e-9)
    # The flattened layout gives the same energies.
    torch.testing.assert_close(molecule(frames.flatten(1)), energy)


def test_cpu_platform_agrees(molecule, frames):
    cpu = AlanineDipeptide(platform='CPU', threads=1)
    # Single-precision forces on the CPU platform: 1e-4 kT.
    torch.testing.assert_close(cpu(frames), molecule(frames), rtol=0,
                               atol=1e-4)


def random_rotation(generator):
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator,
                                       dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    return q if torch.det(q) > 0 else -q


def test_invariances(molecule, frames):
    generator = torch.Generator().manual_seed(0)
    energy = molecule(frames)
    moved = frames @ random_rotation(generator).T \
        + torch.randn(4, 1, 3, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(molecule(moved), energy, rtol=1e-10,
                               atol=1e-8)
    # Reflections too: the Amber energy does not see chirality.
    torch.testing.assert_close(molecule(mirror(frames)), energy, rtol=1e-10,
                               atol=1e-8)
    for methyl in METHYLS:
        order = list(range(22))
        order[methyl[0]], order[methyl[1]], order[methyl[2]] = \
            methyl[1], methyl[2], methyl[0]
        torch.testing.assert_close(molecule(frames[:, order]), energy,
                                   rtol=1e-10, atol=1e-8)
    # Atoms that are not equivalent (H of N and HA of CA) do not commute.
    order = list(range(22))
    order[7], order[9] = 9, 7
    assert (molecule(frames[:, order]) - energy).abs().min() > 1.0


def test_forces_are_negative_gradient(molecule, frames):
    x = frames[:1]
    energy, forces = molecule.energy_and_forces(x)
    h = 1e-6
    for atom, axis in [(1, 0), (8, 1), (10, 2), (15, 0), (20, 1)]:
        step = torch.zeros_like(x)
        step[0, atom, axis] = h
        numeric = (molecule(x + step) - molecule(x - step)) / (2 * h)
        assert float(-forces[0, atom, axis]) == pytest.approx(
            float(numeric), rel=1e-5, abs=1e-3)
    pos = x.clone().requires_grad_(True)
    molecule(pos).mul(2.0).sum().backward()
    torch.testing.assert_close(pos.grad, -2.0 * forces)
    torch.testing.assert_close(molecule.gradient(x), -forces)


def test_overlaps_and_non_finite_give_inf(molecule):
    pos = molecule.initial_positions(4)
    pos[1, 12] = pos[1, 10]  # a methyl H onto its carbon
    pos[2, 3] = pos[2, 19] + 1e-4  # two non-bonded hydrogens
    pos[3, 0, 1] = math.nan
    before = molecule.num_infinite, molecule.num_evaluated
    pos.requires_grad_(True)
    energy = molecule(pos)
    assert torch.isfinite(energy[0])
    assert torch.isinf(energy[1:]).all() and (energy[1:] > 0).all()
    assert not torch.isnan(energy).any()
    energy[1:].sum().backward()
    assert torch.isfinite(pos.grad).all()
    assert (molecule.num_infinite - before[0],
            molecule.num_evaluated - before[1]) == (3, 4)


def test_bad_shapes(molecule):
    pos = molecule.initial_positions(2)
    for bad in (pos[0], pos[:, :21], pos.flatten(1)[:, :65],
                pos[..., :2]):
        with pytest.raises(ValueError, match=r'\[num_samples, 22, 3\]'):
            molecule(bad)


def test_missing_openmm(monkeypatch):
    monkeypatch.setitem(sys.modules, 'openmm', None)
    monkeypatch.setitem(sys.modules, 'openmmtools', None)
    with pytest.raises(ImportError, match=r'torch-enf\[md\]'):
        require_openmm()
    with pytest.raises(ImportError, match=r'torch-enf\[md\]'):
        AlanineDipeptide()
    # The module itself imports without OpenMM.
    spec = importlib.util.find_spec('torch_enf.systems.molecular')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.BOLTZMANN == BOLTZMANN


def test_dihedral_of_known_angles():
    angles = torch.tensor([-179.0, -120.0, -60.0, 0.0, 45.0, 90.0, 150.0],
                          dtype=torch.float64).deg2rad()
    # b = origin, c on the z axis, a on the x axis, d at the angle.
    pos = torch.zeros(len(angles), 4, 3, dtype=torch.float64)
    pos[:, 0, 0] = 1.3
    pos[:, 2, 2] = 1.5
    pos[:, 3] = torch.stack([0.7 * angles.cos(), 0.7 * angles.sin(),
                             1.5 + 0.4 * torch.ones_like(angles)], dim=-1)
    indices = torch.tensor([[0, 1, 2, 3]])
    torch.testing.assert_close(dihedral(pos, indices)[:, 0], angles)
    # The IUPAC sign: trans is pi, and reversing the atoms keeps the angle.
    torch.testing.assert_close(dihedral(pos, indices.flip(1))[:, 0], angles)
    assert torch.autograd.gradcheck(
        lambda x: dihedral(x, indices), pos[1:3].clone().requires_grad_())


def test_phi_psi(molecule, frames):
    names = molecule.atom_names
    assert molecule.dihedral_indices.tolist() == [[4, 6, 8, 14],
                                                  [6, 8, 14, 16]]
    assert [names[i] for i in molecule.dihedral_indices[0]] == \
        ['C', 'N', 'CA', 'C']
    angles = molecule.phi_psi(frames)
    assert angles.shape == (4, 2)
    # tleap builds the extended chain: phi = psi = 180 degrees.
    ref = molecule.phi_psi(molecule.initial_positions(1))
    torch.testing.assert_close(ref.abs(), torch.full_like(ref, math.pi),
                               rtol=0, atol=1e-3)
    mdtraj = pytest.importorskip('mdtraj')
    trajectory = mdtraj.Trajectory(
        frames.numpy(), mdtraj.Topology.from_openmm(molecule.topology))
    expected = torch.stack([
        torch.from_numpy(mdtraj.compute_phi(trajectory)[1][:, 0]),
        torch.from_numpy(mdtraj.compute_psi(trajectory)[1][:, 0])], dim=-1)
    # mdtraj works in float32.
    torch.testing.assert_close(angles, expected.double(), rtol=0,
                               atol=1e-5)


def test_chirality_and_mirror(molecule, frames):
    assert molecule.chirality_indices.tolist() == [[8, 6, 14, 10]]
    # tleap's alanine is L: positive signed volume.
    assert molecule.chirality(frames).eq(1).all()
    mirrored = mirror(frames)
    assert molecule.chirality(mirrored).eq(-1).all()
    torch.testing.assert_close(mirror(mirrored), frames, rtol=0, atol=0)
    assert molecule.chirality(mirror(mirrored)).eq(1).all()
    volume = signed_volume(frames, molecule.chirality_indices)
    torch.testing.assert_close(
        signed_volume(mirrored, molecule.chirality_indices), -volume)
    # Mirrored phi/psi: the angles change sign.
    torch.testing.assert_close(molecule.phi_psi(mirrored),
                               -molecule.phi_psi(frames))


MD = dict(num_frames=3, stride=5, equilibration_steps=12,
          minimize_iterations=5, progress=False)


def test_md_reproducible_and_shapes(tmp_path, molecule):
    path = str(tmp_path / 'ala2.npz')
    first = simulate_alanine_dipeptide(seed=7, path=path, **MD)
    second = simulate_alanine_dipeptide(seed=7, **MD)
    other = simulate_alanine_dipeptide(seed=8, **MD)
    assert first.positions.shape == (3, 22, 3)
    assert first.positions.dtype == np.float64
    assert first.energies.shape == (3, ) and first.times.shape == (3, )
    np.testing.assert_allclose(first.times, [0.005, 0.010, 0.015])
    # Bitwise identical under the same seed, different under another one.
    assert np.array_equal(first.positions, second.positions)
    assert np.array_equal(first.energies, second.energies)
    assert not np.array_equal(first.positions, other.positions)
    settings = first.settings
    assert (settings['temperature_K'], settings['time_step_fs'],
            settings['friction_per_ps'], settings['constraints']) == \
        (300.0, 1.0, 1.0, None)
    # The recorded energies are those of the molecule (CPU vs Reference).
    np.testing.assert_allclose(
        molecule(torch.from_numpy(first.positions)).numpy(),
        first.energies, rtol=0, atol=1e-4)
    loaded = load_trajectory(path)
    assert np.array_equal(loaded.positions, first.positions)
    assert np.array_equal(loaded.energies, first.energies)
    assert loaded.settings == settings
    assert os.listdir(tmp_path) == ['ala2.npz']


def test_split_trajectory():
    trajectory = simulate_alanine_dipeptide(seed=1, **{**MD,
                                                       'num_frames': 10})
    parts = split_trajectory(trajectory, (0.6, 0.2, 0.2))
    assert [len(parts[k].energies) for k in ('train', 'valid', 'test')] \
        == [6, 2, 2]
    assert np.array_equal(parts['valid'].positions,
                          trajectory.positions[6:8])
    with pytest.raises(ValueError, match='summing to 1'):
        split_trajectory(trajectory, (0.5, 0.2, 0.2))


def test_md_reference_platform_reproducible():
    runs = [simulate_alanine_dipeptide(seed=2, platform='Reference', **MD)
            for _ in range(2)]
    assert np.array_equal(runs[0].positions, runs[1].positions)


def test_float32_positions(molecule, frames):
    pos = frames.float().requires_grad_(True)
    energy = molecule(pos)
    assert energy.dtype == torch.float64
    energy.sum().backward()
    assert pos.grad.dtype == torch.float32
    torch.testing.assert_close(energy, molecule(frames), rtol=0, atol=1e-2)
