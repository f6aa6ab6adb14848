r"""Molecule tasks: *QM9 positional* (an :class:`~torch_enf.flows.ENFlow`
on the positions of the 19-atom QM9 molecules, judged by the test NLL and
the Jensen-Shannon divergence of interatomic distances), *QM9* (a
:class:`~torch_enf.flows.MoleculeFlow` of atom count, types, charges and
positions, judged by the NLL bound and the stability, validity, uniqueness
and novelty of samples) and :obj:`molecules`, the same model on the user's
own molecules (:obj:`.sdf`, :obj:`.xyz`, :obj:`.npz`)."""
import os.path as osp
from typing import Any, Callable, Dict, Optional, Sequence, Union

import torch
from torch_geometric.data import Batch, Data, Dataset

from torch_enf.datasets import QM9, MoleculeDataset
from torch_enf.datasets.molecules import node_features
from torch_enf.flows import (CompositionDistribution, CompositionFlow,
                             ENFlow, ENFlowConfig, MoleculeFlow,
                             MoleculeFlowConfig, NodeCountDistribution)
from torch_enf.io import read_molecules, write_sdf, write_xyz
from torch_enf.tasks.base import (DataConfig, EvaluationConfig,
                                  ModelOptions, Splits, Structures, Task,
                                  degenerate, likelihood_and_samples,
                                  register_task, subset, user_data_root)
from torch_enf.tasks.particles import PointCloudTask

DISTANCE_RANGE = (0.0, 13.0)
r"""The range of the QM9 distance histograms (Angstrom, 100 bins, as in the
paper)."""

QUICK = dict(n_train=512, epochs=5, batch_size=16, lr=1e-3,
             hidden_channels=32, num_layers=3, num_valid=128, num_test=256,
             eval_every=1, trace='hutchinson', num_samples=256,
             train_tol=1e-3, tol=1e-3)
r"""The :obj:`--quick` preset of the QM9 tasks (minutes on 2 cores)."""

RADIUS_GRAPH_ATOMS = 100
r"""User molecules train on radius graphs (:obj:`RADIUS_GRAPH_CUTOFF`
Angstrom, rebuilt at every evaluation) when the largest has more atoms than
this; fully connected graphs up to it. On the NCI set (30 atoms on average,
up to 100) radius graphs were only 1.2 to 1.6 times faster per step and
gave six times fewer valid molecules (1.6 % against 9.6 % after the same
10 minutes; ``benchmarks/nci_graph_switch.sh``)."""

RADIUS_GRAPH_CUTOFF = 5.0


@register_task('qm9-positional')
class QM9PositionalTask(PointCloudTask):
    r"""QM9 positional: the positions of the 19-atom QM9 molecules
    (13,832 training molecules of the standard split)."""
    description = ('positions of the 19-atom QM9 molecules (E-NF paper, '
                   'Table 2)')
    default_trace = 'exact'
    distance_range = DISTANCE_RANGE

    def shape(self):
        return QM9.positional_num_atoms, 3

    def trace(self, requested: Optional[str]) -> str:
        return requested or self.default_trace

    def defaults(self, objective: str, quick: bool) -> Dict[str, Any]:
        return _qm9_defaults(quick, lr=2e-4)

    def datasets(self, data: DataConfig, progress: bool = True,
                 log: bool = True) -> Splits:
        return _qm9_splits(data, positional=True, log=log)

    def evaluate(self, model: torch.nn.Module, splits: Splits,
                 evaluation: EvaluationConfig, out: str,
                 progress: bool = True) -> Dict[str, Any]:
        r"""The test NLL, and the JS divergence of the interatomic
        distances of samples and training molecules (as in the paper),
        with a picture."""
        test = subset(splits.test, evaluation.num_test, evaluation.seed)
        results, _, samples = likelihood_and_samples(self, model, test,
                                                     evaluation, progress)
        results.update(self.sample_metrics(samples, splits.train))
        self.write_samples(samples, osp.join(out, 'samples.npy'),
                           osp.join(out, 'distances.png'), splits.train)
        return results

    def read_structures(self, path: str, model: torch.nn.Module
                        ) -> Structures:
        r"""19-atom structures of an :obj:`.xyz` or :obj:`.sdf` file (their
        positions), or configurations of a :obj:`.npy` array."""
        if path.lower().endswith('.npy'):
            return super().read_structures(path, model)
        return _read_molecule_file(path, lambda molecule: (
            None if molecule.num_nodes == 19 else
            f'{molecule.num_nodes} atoms (the positional model has 19)'),
            lambda molecule: Data(pos=molecule.pos))


class MoleculeTask(Task):
    r"""The shared part of the molecule tasks: a :class:`MoleculeFlow`
    over the element set of the data with :math:`p(M)` from the training
    sizes, molecules written as :obj:`.sdf` or :obj:`.xyz`, and the
    stability, validity, uniqueness and novelty of samples beside the
    same metrics of held-out data."""
    sample_suffixes = ('.sdf', '.xyz')
    score_suffixes = ('.sdf', '.xyz', '.npz')
    default_trace = 'hutchinson'
    atomic_numbers: Sequence[int] = ()

    def build_model(self, options: ModelOptions, splits: Splits
                    ) -> Union[MoleculeFlow, CompositionFlow]:
        r"""A :class:`MoleculeFlow`, or with :obj:`options.atom_types`
        :obj:`"composition"` a :class:`CompositionFlow`, whose
        :math:`p(M)` (and compositions) come from the whole training
        split."""
        train = splits.train
        sizes = _split_sizes(train)
        node_count = NodeCountDistribution.from_num_nodes(sizes)
        num_classes = len(self.atomic_numbers)
        composition = options.atom_types == 'composition'
        flow = ENFlowConfig(
            3, 0 if composition else num_classes + 1,
            options.hidden_channels, options.num_layers,
            num_radial=options.num_radial,
            radial_cutoff=options.radial_cutoff,
            graph=self.graph(options, int(sizes.max())),
            adjoint=options.adjoint,
            context_channels=num_classes if composition else 0,
            prediction=options.prediction)
        if composition:
            types = _split_types(train, num_classes)
            batch = torch.repeat_interleave(
                torch.arange(sizes.numel()), sizes)
            return CompositionFlow(
                node_count, CompositionDistribution.from_types(
                    types, batch, num_classes),
                ENFlow.from_config(flow), self.atomic_numbers)
        config = MoleculeFlowConfig(
            flow=flow, atomic_numbers=tuple(self.atomic_numbers),
            dequantizer=options.dequantizer,
            dequantizer_margin=options.class_margin,
            feature_scale=None, actnorm=options.actnorm,
            max_num_nodes=int(sizes.max()))
        model = MoleculeFlow.from_config(config, node_count)
        if options.actnorm:
            model.initialize(Batch.from_data_list(train[:500]))
        return model

    def evaluate(self, model: torch.nn.Module, splits: Splits,
                 evaluation: EvaluationConfig, out: str,
                 progress: bool = True) -> Dict[str, Any]:
        r"""The test NLL bound, the sample metrics beside those of the same
        number of test molecules, and the samples as XYZ, SDF and a
        picture."""
        test = subset(splits.test, evaluation.num_test, evaluation.seed)
        results, _, samples = likelihood_and_samples(self, model, test,
                                                     evaluation, progress)
        reference = splits.train if evaluation.novelty else None
        results.update(self.sample_metrics(samples, reference))
        held_out = Batch.from_data_list(list(subset(
            splits.test, evaluation.num_samples, evaluation.seed)))
        results['test_data'] = self.sample_metrics(held_out, reference)
        self.write_samples(samples, osp.join(out, 'samples.sdf'),
                           osp.join(out, 'samples.png'))
        write_xyz(osp.join(out, 'samples.xyz'), samples)
        return results

    def sample_metrics(self, samples: Batch,
                       reference: Optional[Dataset] = None
                       ) -> Dict[str, Any]:
        r"""Stability, validity and uniqueness (and novelty against the
        molecules of :obj:`reference`)."""
        from torch_enf.metrics import (molecule_sample_metrics,
                                       training_smiles)
        known = training_smiles(reference, progress=False) \
            if reference is not None else None
        return molecule_sample_metrics(samples, known)

    def write_samples(self, samples: Batch, path: str,
                      picture: Optional[str] = None) -> None:
        self.check_suffix(path, self.sample_suffixes, 'writes')
        (write_sdf if path.lower().endswith('.sdf') else write_xyz)(
            path, samples)
        if picture:
            from torch_enf.visualization import plot_molecule_grid
            plot_molecule_grid(Batch.from_data_list(
                samples.to_data_list()[:16]), picture)

    def read_structures(self, path: str, model: torch.nn.Module
                        ) -> Structures:
        r"""The molecules of a file whose elements the model knows and
        whose atom count it gives non-zero probability."""
        known = model.atomic_numbers.cpu().tolist()
        probs = model.node_count.probs.cpu()

        def problem(molecule: Data) -> Optional[str]:
            unknown = sorted(set(molecule.z.tolist()) - set(known))
            if unknown:
                return (f'elements {unknown} the model does not know '
                        f'(known: {known})')
            size = molecule.num_nodes
            if size >= probs.numel() or float(probs[size]) == 0:
                support = torch.nonzero(probs).view(-1).tolist()
                return (f'{size} atoms, which the model gives zero '
                        f'probability (it knows {support[0]} to '
                        f'{support[-1]} atoms)')
            return None

        return _read_molecule_file(path, problem, lambda molecule: Data(
            pos=molecule.pos, z=molecule.z,
            h=node_features(molecule.z, known)))


@register_task('qm9')
class QM9Task(MoleculeTask):
    r"""QM9: molecules of up to 29 atoms (H, C, N, O, F) in the standard
    split of generative modelling."""
    description = ('QM9 molecules: atom count, types, charges and positions '
                   '(E-NF paper, Table 3)')
    atomic_numbers = QM9.atomic_numbers

    def defaults(self, objective: str, quick: bool) -> Dict[str, Any]:
        return _qm9_defaults(quick, lr=5e-4, dequantizer='argmax'
                             if objective == 'fm' else 'variational')

    def datasets(self, data: DataConfig, progress: bool = True,
                 log: bool = True) -> Splits:
        return _qm9_splits(data, positional=False, log=log)


@register_task('molecules')
class MoleculesTask(MoleculeTask):
    r"""The user's own molecules: conformers from :obj:`.sdf`,
    :obj:`.xyz` (multi-frame) or :obj:`.npz` files
    (:class:`~torch_enf.datasets.MoleculeDataset`), with the element set
    and :math:`p(M)` found in the data and a seeded 80/10/10 split written
    beside the processed data. Data sets whose largest molecule has more
    than :obj:`RADIUS_GRAPH_ATOMS` atoms train on radius graphs (unless
    :obj:`graph` says otherwise).

    Args:
        atomic_numbers (sequence of int, optional): The element set (found
            in the data when training; kept in the model file).
    """
    description = 'your own molecules (.sdf, .xyz, .npz)'

    def __init__(self, atomic_numbers: Optional[Sequence[int]] = None):
        self.atomic_numbers = tuple(atomic_numbers or ())

    def state(self) -> Dict[str, Any]:
        return dict(name=self.name, atomic_numbers=list(self.atomic_numbers))

    def defaults(self, objective: str, quick: bool) -> Dict[str, Any]:
        return dict(epochs=1000, batch_size=64, lr=4e-3, hidden_channels=64,
                    num_layers=4, num_radial=16, class_margin=2.0,
                    lr_schedule='cosine', ema_decay=0.999, eval_every=25,
                    num_valid=128, valid_tol=1e-3, num_test=256,
                    trace='hutchinson',
                    solver='midpoint', num_steps=25, tol=1e-4,
                    regularization_weight=1e-3, bf16=objective == 'fm',
                    novelty=True, time_budget=0.48,
                    dequantizer='argmax' if objective == 'fm'
                    else 'variational')

    def graph(self, options: ModelOptions, max_num_nodes: int):
        r"""Radius graphs of :obj:`RADIUS_GRAPH_CUTOFF` Angstrom for
        :obj:`graph="auto"` when the largest molecule has more than
        :obj:`RADIUS_GRAPH_ATOMS` atoms."""
        if options.graph == 'auto' and max_num_nodes > RADIUS_GRAPH_ATOMS:
            return RADIUS_GRAPH_CUTOFF
        return super().graph(options, max_num_nodes)

    def datasets(self, data: DataConfig, progress: bool = True,
                 log: bool = True) -> Splits:
        if data.files is None:
            raise ValueError("The 'molecules' task needs --data (an .sdf, "
                             ".xyz or .npz file, a folder or a glob)")
        root = user_data_root(data, 'molecules')
        options = dict(atomic_numbers=self.atomic_numbers or None,
                       max_num_atoms=data.max_num_atoms,
                       seed=data.split_seed, log=log)
        splits = Splits(*(MoleculeDataset(root, data.files, split, **options)
                          for split in ('train', 'valid', 'test')))
        self.atomic_numbers = tuple(splits.train.atomic_numbers)
        return splits._replace(train=subset(splits.train, data.n_train,
                                            data.split_seed))


def _qm9_defaults(quick: bool, **task_options: Any) -> Dict[str, Any]:
    r"""The training defaults of the QM9 tasks (the E-NF paper's network
    and regulariser), with :obj:`QUICK` on top for :obj:`--quick`."""
    defaults = dict(epochs=3000, batch_size=128, hidden_channels=64,
                    num_layers=6, regularization_weight=1e-3, **task_options)
    if quick:
        defaults.update(QUICK)
    return defaults


def _qm9_splits(data: DataConfig, positional: bool, log: bool) -> Splits:
    root = osp.join(data.root, 'QM9')
    source = data.files or 'auto'

    def split(name: str) -> QM9:
        return QM9(root, name, positional=positional, source=source,
                   log=log)

    return Splits(subset(split('train'), data.n_train, data.split_seed),
                  split('valid'), split('test'))


def _split_sizes(dataset: Dataset) -> torch.Tensor:
    r"""The atom counts of the whole split under :obj:`dataset` (a subset
    of it included), so that :math:`p(M)` knows every size of the split."""
    return torch.diff(dataset.slices['pos'])


def _split_types(dataset: Dataset, num_classes: int) -> torch.Tensor:
    r"""The atom type of every atom of the whole split under
    :obj:`dataset`, in the order of :func:`_split_sizes`."""
    return dataset._data.h[:, :num_classes].argmax(-1)


def _read_molecule_file(path: str,
                        problem: Callable[[Data], Optional[str]],
                        graph: Callable[[Data], Data]) -> Structures:
    r"""Reads every structure of a molecule file, keeping those without a
    :obj:`problem` as :obj:`graph(molecule)`, and describing the rest (and
    those the reader could not parse) by index and name."""
    found = read_molecules(path, on_error='skip')
    kept, names, skipped = [], [], [f'#{entry.index}: {entry.message}'
                                    for entry in found.skipped]
    for index, molecule in zip(found.indices, found.molecules):
        name = getattr(molecule, 'name', None) or f'structure {index}'
        reason = 'fewer than 2 atoms' if molecule.num_nodes < 2 \
            else degenerate(molecule.pos) or problem(molecule)
        if reason is not None:
            skipped.append(f'#{index} ({name}): {reason}')
            continue
        kept.append(graph(molecule))
        names.append(name)
    return Structures(kept, names, skipped)
