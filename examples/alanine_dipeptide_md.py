r"""Reference data for an alanine-dipeptide Boltzmann generator (issue #31):
Langevin dynamics with OpenMM (AMBER ff99SB-ILDN, OBC implicit solvent,
300 K, no constraints, 1 fs steps), one frame per picosecond, written to an
``.npz`` file with its settings, then the backbone dihedral populations.
Needs ``pip install torch-enf[md]``::

    python examples/alanine_dipeptide_md.py --ns 20 --seed 0 \
        --out data/alanine/md_20ns_seed0.npz
"""
import argparse
import json
import time

import torch

from torch_enf.systems import (AlanineDipeptide, load_trajectory,
                               simulate_alanine_dipeptide)


def basin_populations(phi_psi: torch.Tensor) -> dict:
    r"""Fractions of frames in the coarse Ramachandran regions: with
    :math:`\phi < 0`, the right-handed helix :math:`\alpha_R`
    (:math:`-2.1 < \psi < 1` rad, about :math:`-120°` to :math:`57°`) and
    the extended :math:`\beta` / :math:`C_{7eq}` basin (the other
    :math:`\psi`); and :math:`\phi > 0` (:math:`\alpha_L`,
    :math:`C_{7ax}`)."""
    phi, psi = phi_psi.unbind(-1)
    left = phi < 0
    alpha_r = left & (psi > -2.1) & (psi < 1.0)
    return {'phi<0, alpha_R (-2.1 < psi < 1)': float(alpha_r.double().mean()),
            'phi<0, beta (other psi)': float((left & ~alpha_r).double()
                                              .mean()),
            'phi>0': float((~left).double().mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--ns', type=float, default=20.0,
                        help='nanoseconds to simulate after equilibration')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', required=True, help='the .npz to write')
    args = parser.parse_args()
    if args.ns <= 0:
        parser.error(f'--ns must be positive (got {args.ns})')
    start = time.time()
    simulate_alanine_dipeptide(num_frames=round(args.ns * 1000),
                               path=args.out, seed=args.seed)
    seconds = time.time() - start
    trajectory = load_trajectory(args.out)
    system = AlanineDipeptide()
    phi_psi = system.phi_psi(torch.as_tensor(trajectory.positions))
    print(json.dumps({'frames': len(trajectory.positions),
                      'wall_clock_seconds': round(seconds, 1),
                      'populations': basin_populations(phi_psi)},
                     indent=1))


if __name__ == '__main__':
    main()
