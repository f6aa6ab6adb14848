r"""Molecular dynamics of alanine dipeptide with OpenMM, to generate the
training, validation and test configurations of a Boltzmann generator.

Langevin dynamics (:obj:`openmm.LangevinMiddleIntegrator`) at 300 K,
friction 1/ps and a 1 fs step, without constraints, of the systems of
:mod:`torch_enf.systems.molecular`: minimisation, equilibration, then
:obj:`num_frames` frames saved every :obj:`stride` steps. Positions are in
nm, energies reduced (:math:`u = E / k_B T`), as in
:class:`~torch_enf.systems.molecular.AlanineDipeptide`.
"""
import json
import time
from numbers import Integral
from typing import Any, Dict, NamedTuple, Optional, Sequence

import numpy as np
from tqdm.auto import tqdm

from torch_enf.io import atomic_path
from torch_enf.systems.molecular import (PLATFORMS, alanine_dipeptide_system,
                                         kT, require_openmm)
from torch_enf.utils import (check_non_negative_number,
                             check_positive_integer, check_positive_number)

SPLITS = ('train', 'valid', 'test')


class Trajectory(NamedTuple):
    r"""Frames of :func:`simulate_alanine_dipeptide` (or
    :func:`load_trajectory`)."""
    positions: np.ndarray  #: :obj:`[N, 22, 3]`, nm, float64.
    energies: np.ndarray  #: :obj:`[N]`, reduced (:math:`k_B T`), float64.
    times: np.ndarray  #: :obj:`[N]`, ps since the end of equilibration.
    settings: Dict[str, Any]  #: The run's settings and measurements.


def seeds(seed: int) -> Sequence[int]:
    r"""The positive 31-bit seeds of the integrator's noise and of the
    initial velocities drawn from :obj:`seed` (OpenMM reads :obj:`0` as
    "pick one at random")."""
    state = np.random.SeedSequence(seed).generate_state(2)
    return [int(s) % (2**31 - 1) + 1 for s in state]


def simulate_alanine_dipeptide(
    num_frames: int,
    stride: int = 1000,
    equilibration_steps: int = 100_000,
    path: Optional[str] = None,
    force_field: str = 'amber99sbildn',
    temperature: float = 300.0,
    friction: float = 1.0,
    time_step: float = 1.0,
    seed: int = 0,
    platform: str = 'Reference',
    threads: int = 1,
    minimize_iterations: int = 0,
    progress: bool = True,
) -> Trajectory:
    r"""Runs Langevin dynamics of alanine dipeptide from the test system's
    coordinates: energy minimisation (OpenMM's L-BFGS), equilibration
    with velocities drawn at :obj:`temperature`, then :obj:`num_frames`
    frames, one every :obj:`stride` steps (1 ps by default; the
    :math:`\phi`/:math:`\psi` transitions take nanoseconds, so frames are
    decorrelated only in the fast degrees of freedom). Writes them to
    :obj:`path` (:func:`save_trajectory`) if given.

    Reproducibility: the integrator's noise and the initial velocities are
    seeded from :obj:`seed` (:func:`seeds`), so a run is bitwise identical
    when repeated with the same settings, OpenMM version, platform, thread
    count and machine (tested); other platforms, thread counts or CPUs
    change the rounding and so the trajectory.

    Args:
        num_frames (int): Frames :math:`N` to save.
        stride (int, optional): Steps between frames. (default: :obj:`1000`)
        equilibration_steps (int, optional): Steps after minimisation before
            the first frame. (default: :obj:`100_000`, 100 ps)
        path (str, optional): :obj:`.npz` file to write.
        force_field (str, optional): See
            :func:`~torch_enf.systems.molecular.alanine_dipeptide_system`.
            (default: :obj:`"amber99sbildn"`)
        temperature (float, optional): Kelvin. (default: :obj:`300.0`)
        friction (float, optional): Collision rate in 1/ps.
            (default: :obj:`1.0`)
        time_step (float, optional): Femtoseconds. (default: :obj:`1.0`)
        seed (int, optional): Seed of the run. (default: :obj:`0`)
        platform (str, optional): :obj:`"Reference"` or :obj:`"CPU"`. For
            these 22 atoms the Reference platform measured 1,357 ns/day on
            one thread against 149 for the CPU platform (2026-12-06, see
            :obj:`docs/source/_static/results/alanine_md_speed.json`).
            (default: :obj:`"Reference"`)
        threads (int, optional): Threads of the CPU platform.
            (default: :obj:`1`)
        minimize_iterations (int, optional): Most minimiser iterations,
            :obj:`0` until converged. (default: :obj:`0`)
        progress (bool, optional): Whether to show a progress bar.
            (default: :obj:`True`)
    """
    openmm = require_openmm()
    from openmm import unit
    check_positive_integer(num_frames, 'num_frames')
    check_positive_integer(stride, 'stride')
    check_positive_integer(threads, 'threads')
    for value, name in ((equilibration_steps, 'equilibration_steps'),
                        (minimize_iterations, 'minimize_iterations')):
        if isinstance(value, bool) or not isinstance(value, Integral) \
                or value < 0:
            raise ValueError(f"'{name}' must be a non-negative integer (got "
                             f"{value!r})")
    check_positive_number(time_step, 'time_step')
    check_non_negative_number(friction, 'friction')
    if platform not in PLATFORMS:
        raise ValueError(f"Unknown platform {platform!r} (expected one of "
                         f"{PLATFORMS})")
    thermal = kT(temperature)
    system, _, start = alanine_dipeptide_system(force_field)
    noise_seed, velocity_seed = seeds(seed)
    integrator = openmm.LangevinMiddleIntegrator(
        temperature * unit.kelvin, friction / unit.picosecond,
        time_step * unit.femtosecond)
    integrator.setRandomNumberSeed(noise_seed)
    properties = {'Threads': str(threads)} if platform == 'CPU' else {}
    context = openmm.Context(system, integrator,
                             openmm.Platform.getPlatformByName(platform),
                             properties)
    context.setPositions(start)
    openmm.LocalEnergyMinimizer.minimize(context, 10.0, minimize_iterations)
    context.setVelocitiesToTemperature(temperature * unit.kelvin,
                                       velocity_seed)
    positions = np.empty((num_frames, system.getNumParticles(), 3))
    energies = np.empty(num_frames)
    bar = tqdm(total=equilibration_steps + num_frames * stride, unit='step',
               disable=not progress, desc='alanine dipeptide MD')
    for _ in range(equilibration_steps // stride):
        integrator.step(stride)
        bar.update(stride)
    integrator.step(equilibration_steps % stride)
    bar.update(equilibration_steps % stride)
    begin = time.perf_counter()
    for k in range(num_frames):
        integrator.step(stride)
        bar.update(stride)
        state = context.getState(getPositions=True, getEnergy=True)
        positions[k] = state.getPositions(asNumpy=True).value_in_unit(
            unit.nanometer)
        energies[k] = state.getPotentialEnergy().value_in_unit(
            unit.kilojoule_per_mole) / thermal
    seconds = time.perf_counter() - begin
    bar.close()
    nanoseconds = num_frames * stride * time_step * 1e-6
    settings = dict(
        system='alanine dipeptide', force_field=force_field,
        solvent='OBC1 implicit', constraints=None,
        temperature_K=temperature, kT_kJ_per_mol=thermal,
        friction_per_ps=friction, time_step_fs=time_step, stride=stride,
        equilibration_steps=equilibration_steps, num_frames=num_frames,
        minimize_iterations=minimize_iterations, seed=seed,
        platform=platform, threads=threads,
        openmm_version=openmm.__version__, length_unit='nm',
        energy_unit='kT', production_seconds=seconds,
        ns_per_day=nanoseconds / seconds * 86400)
    times = np.arange(1, num_frames + 1) * stride * time_step * 1e-3
    trajectory = Trajectory(positions, energies, times, settings)
    if path is not None:
        save_trajectory(path, trajectory)
    return trajectory


def save_trajectory(path: str, trajectory: Trajectory) -> None:
    r"""Writes :obj:`trajectory` atomically (:func:`torch_enf.io.atomic_path`)
    as a NumPy archive with arrays :obj:`positions`, :obj:`energies`,
    :obj:`times` and :obj:`settings` (a JSON string)."""
    with atomic_path(path) as tmp, open(tmp, 'wb') as f:
        np.savez(f, positions=trajectory.positions,
                 energies=trajectory.energies, times=trajectory.times,
                 settings=np.array(json.dumps(trajectory.settings)))


def load_trajectory(path: str) -> Trajectory:
    r"""Reads a file of :func:`save_trajectory`."""
    with np.load(path, allow_pickle=False) as archive:
        return Trajectory(archive['positions'], archive['energies'],
                          archive['times'],
                          json.loads(str(archive['settings'])))


def split_trajectory(trajectory: Trajectory,
                     fractions: Sequence[float] = (0.8, 0.1, 0.1)
                     ) -> Dict[str, Trajectory]:
    r"""Cuts :obj:`trajectory` into consecutive :obj:`"train"`,
    :obj:`"valid"` and :obj:`"test"` blocks of the given fractions of its
    frames (rounded down; the test block takes the rest). Blocks in time,
    not shuffled frames, so that neighbouring, correlated frames do not
    fall into different sets."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) \
            or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"'fractions' must be three non-negative numbers "
                         f"summing to 1 (got {tuple(fractions)})")
    n = len(trajectory.energies)
    train = int(fractions[0] * n)
    valid = train + int(fractions[1] * n)
    bounds = ((0, train), (train, valid), (valid, n))
    return {name: Trajectory(trajectory.positions[a:b],
                             trajectory.energies[a:b],
                             trajectory.times[a:b], trajectory.settings)
            for name, (a, b) in zip(SPLITS, bounds)}
