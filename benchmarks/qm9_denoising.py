r"""Where does a QM9 molecule model lose its sample quality?

Test molecules are noised along the paths of flow matching to a time t,
:math:`\mathbf{x}_t = (1 - t)\,\mathbf{x} + t\,\mathbf{z}` (positions and
dequantised features, :math:`\mathbf{z}` a base sample aligned to the
molecule as in training), and carried back to :math:`t = 0` by the model's
flow (midpoint steps). The atom and molecule stability and the fraction of
atom types kept, as a function of t, show which part of the generative
process breaks the molecules: t = 1 is ordinary sampling, small t tests
how precisely the field restores bond lengths and atom types near the data.
The stability of the noised molecules themselves (true types, no flow) is
printed beside it.

Usage::

    python benchmarks/qm9_denoising.py qm9 --num 300 --threads 2
    python benchmarks/qm9_denoising.py runs/qm9-fm --times 0.02 0.1 0.4 1
"""
import argparse
import json
import time

import torch
from torch_geometric.data import Batch

from torch_enf.datasets import QM9
from torch_enf.flows import SolverOptions
from torch_enf.metrics import stability
from torch_enf.objectives import FlowMatching
from torch_enf.pretrained import load_pretrained
from torch_enf.storage import atomic_save

TIMES = (0.0, 0.02, 0.05, 0.1, 0.2, 0.4, 0.7, 1.0)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('model', help='a shipped model name, a run folder '
                        'or a checkpoint of a QM9 molecule model')
    parser.add_argument('--root', default='data/QM9')
    parser.add_argument('--num', type=int, default=300,
                        help='test molecules (the first NUM of the split)')
    parser.add_argument('--times', type=float, nargs='+', default=TIMES)
    parser.add_argument('--steps-per-unit', type=int, default=50,
                        help='midpoint steps per unit of time')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--out', default=None, help='JSON file of results')
    return parser.parse_args()


@torch.no_grad()
def denoising_row(model, inputs, base, data: Batch, t: float,
                  steps_per_unit: int) -> dict:
    r"""Noise :obj:`inputs` to time :obj:`t`, carry them back and score the
    result (and the noised molecules with their true types)."""
    pos_t = (1 - t) * inputs.pos + t * base[0]
    h_t = (1 - t) * inputs.h + t * base[1]
    sizes = torch.diff(data.ptr)
    start = time.perf_counter()
    if t > 0:
        num_steps = max(1, round(t * steps_per_unit))
        out = model.flow.decode(
            pos_t, h_t, inputs.batch, start_time=t,
            solver=SolverOptions('midpoint', num_steps=num_steps))
        pos_0, h_0 = out.pos, out.h
    else:
        num_steps, pos_0, h_0 = 0, pos_t, h_t
    molecules = model.to_molecules(pos_0, h_0, sizes)
    noised = model.to_molecules(pos_t, h_t, sizes)
    noised.z = data.z  # the noised positions with their true types
    carried, raw = stability(molecules), stability(noised)
    return dict(t=t, num_steps=num_steps,
                atom_stability=carried['atom_stability'],
                molecule_stability=carried['molecule_stability'],
                types_kept=float((molecules.z == data.z).float().mean()),
                noised_atom_stability=raw['atom_stability'],
                noised_molecule_stability=raw['molecule_stability'],
                seconds=time.perf_counter() - start)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_pretrained(args.model)
    if not hasattr(model, 'to_molecules'):
        raise SystemExit(f'{args.model} is not a QM9 molecule model')
    test = QM9(args.root, 'test')
    data = Batch.from_data_list([test[i] for i in range(args.num)])
    torch.manual_seed(args.seed)
    with torch.no_grad():
        inputs = model.flow_inputs(data)
        base = FlowMatching().base_samples(model, inputs)
    rows = []
    print(f'{"t":>5} {"steps":>5} {"atoms":>7} {"mols":>7} {"types":>7}'
          f' | noised: {"atoms":>7} {"mols":>7}')
    for t in sorted(args.times):
        row = denoising_row(model, inputs, base, data, t,
                            args.steps_per_unit)
        rows.append(row)
        print(f'{t:5.2f} {row["num_steps"]:5d} '
              f'{100 * row["atom_stability"]:6.1f}% '
              f'{100 * row["molecule_stability"]:6.1f}% '
              f'{100 * row["types_kept"]:6.1f}% | noised: '
              f'{100 * row["noised_atom_stability"]:6.1f}% '
              f'{100 * row["noised_molecule_stability"]:6.1f}%', flush=True)
    if args.out:
        atomic_save(dict(model=args.model, num=args.num, seed=args.seed,
                         steps_per_unit=args.steps_per_unit,
                         threads=torch.get_num_threads(), rows=rows),
                    args.out)
        print(json.dumps(dict(written=args.out)))


if __name__ == '__main__':
    main()
