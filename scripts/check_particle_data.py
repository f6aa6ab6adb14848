r"""Equilibrium checks of a generated particle data set.

For every split: the mean energy and the mean virial
:math:`\mathbf{x} \cdot \nabla E`, which must equal the :math:`(M-1) n`
degrees of freedom in equilibrium (:meth:`ParticleEnergy.virial`); for the
training split also the mean energy of its first and second half (earlier
and later draws of the same chains), which must agree if the burn-in was
long enough. Standard errors treat the samples as independent::

    python scripts/check_particle_data.py lj55 --json lj55_data.json
"""
import argparse
import json
import math
import os.path as osp

import torch

from torch_enf.datasets import PARTICLE_SYSTEMS as SYSTEMS


def mean_and_stderr(values: torch.Tensor) -> dict:
    return dict(mean=float(values.mean()),
                stderr=float(values.std()) / math.sqrt(values.numel()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('system', choices=SYSTEMS)
    parser.add_argument('--root', default='data')
    parser.add_argument('--json', default=None)
    args = parser.parse_args()
    system = SYSTEMS[args.system]
    energy = system.energy
    report = dict(system=args.system,
                  degrees_of_freedom=energy.degrees_of_freedom)
    for split in ('train', 'valid', 'test'):
        dataset = system(osp.join(args.root, args.system), split,
                         progress=False)
        pos = torch.stack([data.pos for data in dataset]).double()
        energies = energy(pos)
        row = dict(num_samples=len(dataset),
                   energy=mean_and_stderr(energies),
                   virial=mean_and_stderr(energy.virial(pos)))
        if split == 'train':
            half = len(dataset) // 2
            row['energy_first_half'] = mean_and_stderr(energies[:half])
            row['energy_second_half'] = mean_and_stderr(energies[half:])
        report[split] = row
        print(f"{split:5s} {row['num_samples']:6d} samples  energy "
              f"{row['energy']['mean']:9.3f} ± {row['energy']['stderr']:.3f}"
              f"  virial {row['virial']['mean']:8.2f} ± "
              f"{row['virial']['stderr']:.2f} (expected "
              f"{energy.degrees_of_freedom})")
    train = report['train']
    print(f"train energy, first / second half: "
          f"{train['energy_first_half']['mean']:.3f} / "
          f"{train['energy_second_half']['mean']:.3f}")
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(report, f, indent=2)


if __name__ == '__main__':
    main()
