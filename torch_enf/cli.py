r"""The :obj:`torch-enf` command: train, sample, score and evaluate the
flows of any task (:mod:`torch_enf.tasks`), offline, with shipped models,
model files or run folders.

.. code-block:: bash

    torch-enf models
    torch-enf tasks
    torch-enf train dw4 --quick
    torch-enf train molecules --data conformers.sdf --out runs/mine
    torch-enf sample qm9 -n 1000 -o mols.sdf
    torch-enf logprob qm9 mols.sdf -o scores.csv
    torch-enf evaluate dw4

Flags become configurations here, once (:class:`~torch_enf.tasks.RunConfig`,
:class:`~torch_enf.tasks.EvaluationConfig`,
:class:`~torch_enf.flows.SolverOptions`); everything below is library
calls. Every option and input file is checked before work starts; an error
is one line naming the option, file or structure (a traceback with
:obj:`--debug`). ``python -m torch_enf`` is the same command.
"""
import argparse
import csv
import importlib.util
import json
import math
import os
import os.path as osp
import sys
import time
import traceback
from typing import Any, Dict, List, Optional, Sequence

import torch

from torch_enf.flows import (ADAPTIVE_SOLVERS, FIXED_STEP_SOLVERS,
                             PREDICTIONS, ODESolveError, SolverOptions)
from torch_enf.utils import json_safe

PICTURE_SUFFIXES = ('.png', '.pdf', '.svg')
MAX_SAMPLES = 10 ** 7
r"""The largest :obj:`-n` accepted (about a day of sampling on a CPU)."""
TOLERANCE_RANGE = (1e-10, 1e-1)
r"""The accepted range of ODE tolerances: tighter is below float64
round-off, looser is no solve."""
SCORE_CHUNK = 200
r"""Structures scored between two appends to the CSV of :obj:`logprob`."""


class CommandError(ValueError):
    r"""A problem with the command line or its inputs, printed as one
    line."""


def main(argv: Optional[Sequence[str]] = None) -> int:
    r"""Runs the command line :obj:`argv` (default: :obj:`sys.argv[1:]`);
    returns the exit status: 0 on success, 1 when some structures could not
    be scored, 2 for bad input (one line on stderr)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser(_task_defaults(argv)).parse_args(argv)
    try:
        _check_resources(args)
        return args.run(args) or 0
    except (ValueError, FileNotFoundError, NotADirectoryError,
            PermissionError, ODESolveError) as error:
        if args.debug:
            traceback.print_exc()
        print(f'torch-enf {args.command}: error: {error}', file=sys.stderr)
        return 2


# Parsers --------------------------------------------------------------------

def _parser(train_defaults: Optional[Dict[str, Any]] = None
            ) -> argparse.ArgumentParser:
    r"""The command line; :obj:`train_defaults` are the defaults of the
    training flags (those of the task being trained)."""
    from torch_enf.tasks import TASKS
    parser = argparse.ArgumentParser(
        prog='torch-enf', description='E(n) equivariant normalizing flows: '
        'train, sample, score and evaluate.')
    commands = parser.add_subparsers(dest='command', required=True)

    p = commands.add_parser('models', help='list the shipped models')
    _common(p)
    p.set_defaults(run=_models)

    p = commands.add_parser('tasks', help='list the tasks')
    _common(p)
    p.set_defaults(run=_tasks)

    p = commands.add_parser(
        'train', help='train a model of a task',
        description='Train a flow on a task: flow matching (fm, default) '
        'or maximum likelihood (ml); select it by validation NLL, evaluate '
        'it and write OUT/model.pt, OUT/results.json, checkpoints and '
        'pictures.')
    p.add_argument('task', choices=sorted(TASKS))
    add_training_arguments(p)
    p.set_defaults(run=_train, **(train_defaults or {}))

    p = commands.add_parser('sample', help='draw samples of a model')
    _model_arguments(p)
    p.add_argument('-n', '--num-samples', type=int, required=True)
    p.add_argument('-o', '--output', required=True,
                   help='.sdf or .xyz (molecules), .npy or .pt (positions)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--temperature', type=float, default=1.0,
                   help="scale of the latents; below 1 gives sharper, less "
                   "diverse samples that no longer follow the model's "
                   "density (default: 1, faithful samples)")
    p.add_argument('--picture', default=None,
                   help='picture of the samples (default: OUTPUT with .png)')
    p.add_argument('--overwrite', action='store_true',
                   help='replace existing output files')
    p.set_defaults(run=_sample)

    p = commands.add_parser('logprob',
                            help='log-likelihood of structures in a file')
    # Small batches: an adaptive solve takes the steps of its hardest
    # structure, which costs more than the larger batches save.
    _model_arguments(p, batch_size=10)
    p.add_argument('file', help='.xyz, .sdf or .npz (molecules) or .npy '
                   '(configurations [S, M, n])')
    p.add_argument('--trace', choices=['exact', 'hutchinson'],
                   default='exact')
    p.add_argument('-o', '--output', default=None,
                   help='CSV file (default: FILE with .logprob.csv)')
    p.add_argument('--seed', type=int, default=0, help='seed of the '
                   'dequantisation noise (molecules) and Hutchinson probes')
    p.add_argument('--overwrite', action='store_true',
                   help='replace an existing CSV file')
    p.set_defaults(run=_logprob)

    p = commands.add_parser('evaluate', help="the metrics of a model's card "
                            "on its task's test split")
    _model_arguments(p)
    p.add_argument('--root', default='data', help='dataset folder')
    p.add_argument('--data', default=None, help='the data of a user task '
                   '(molecules, points); the card\'s by default')
    p.add_argument('--num-test', type=int, default=1000,
                   help='test structures, a seeded subset (default: 1000; '
                   'the exact trace of a whole particle test split takes '
                   'minutes, a QM9 one hours)')
    p.add_argument('--num-samples', type=int, default=1000,
                   help='samples for the sample metrics')
    p.add_argument('--trace', choices=['exact', 'hutchinson'], default=None,
                   help="trace of the test NLL (default: the task's)")
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out', default=None, help='folder for files and '
                   'pictures (default: runs/evaluate-MODEL)')
    p.set_defaults(run=_evaluate)
    return parser


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument('--threads', type=int, default=None)
    p.add_argument('--device', default='cpu')
    p.add_argument('--no-progress', action='store_true')
    p.add_argument('--debug', action='store_true',
                   help='show the traceback of an error')


def _solver_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument('--solver', default=None,
                   choices=ADAPTIVE_SOLVERS + FIXED_STEP_SOLVERS,
                   help="ODE solver (default: the model card's for "
                   "sampling, dopri5 for likelihoods)")
    p.add_argument('--num-steps', type=int, default=None,
                   help='steps of a fixed-step solver (with --solver, or '
                   "the card's fixed-step sampler)")
    p.add_argument('--tol', type=float, default=None,
                   help='rtol = atol of an adaptive solver')
    p.add_argument('--step-exponent', type=float, default=None,
                   help='fixed-step grid t_k = (k/K)^p: p > 1 refines the '
                   "steps toward the data (default: the card's, or 1)")


def _model_arguments(p: argparse.ArgumentParser,
                     batch_size: int = 100) -> None:
    p.add_argument('model', help='a shipped model (torch-enf models), a '
                   'model file, a training checkpoint or a run folder')
    _solver_arguments(p)
    p.add_argument('--batch-size', type=int, default=batch_size,
                   help=f'structures per ODE solve (default: {batch_size})')
    _common(p)


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    r"""The options of a training run (:obj:`torch-enf train` and the
    example scripts); a task's :meth:`~torch_enf.tasks.Task.defaults` set
    their defaults."""
    from torch_enf.flows import DEQUANTIZERS
    from torch_enf.tasks.base import ATOM_TYPE_MODELS
    from torch_enf.objectives import OBJECTIVES
    d = p.add_argument_group('data')
    d.add_argument('--data', default=None, help='your data: a file, folder '
                   'or glob (molecules: .sdf .xyz .npz; points: .npy)')
    d.add_argument('--root', default='data', help='cache folder of '
                   'generated and processed data (default: ./data)')
    d.add_argument('--n-train', type=int, default=None,
                   help='training subset (default: the whole split)')
    d.add_argument('--split-seed', type=int, default=0)
    d.add_argument('--max-num-atoms', type=int, default=None,
                   help='skip larger molecules (user data)')
    m = p.add_argument_group('model')
    m.add_argument('--hidden', type=int, default=64)
    m.add_argument('--layers', type=int, default=6)
    m.add_argument('--num-radial', type=int, default=0,
                   help='Gaussian distance features per edge (default: '
                   'none, only the squared distance)')
    m.add_argument('--radial-cutoff', type=float, default=5.0)
    m.add_argument('--prediction', choices=PREDICTIONS, default='velocity',
                   help="what the EGNN predicts: 'velocity', or 'endpoint' "
                   "(the clean graph, the velocity following from it)")
    m.add_argument('--graph', default='auto',
                   help="'full', a cutoff radius for radius graphs, or "
                   "'auto' (the task's choice: radius graphs of 5 Angstrom "
                   "for molecules of more than 100 atoms)")
    m.add_argument('--no-adjoint', action='store_true',
                   help='ml: back-propagate through the solver')
    m.add_argument('--dequantizer', choices=sorted(DEQUANTIZERS),
                   default='argmax', help='molecules: atom-type '
                   'dequantiser (fm needs argmax or uniform)')
    m.add_argument('--class-margin', type=float, default=0.0,
                   help='molecules: gap between the true atom type and the '
                   'others in the dequantised one-hot block')
    m.add_argument('--actnorm', action='store_true')
    m.add_argument('--atom-types', choices=ATOM_TYPE_MODELS, default='flow',
                   help="molecules: 'flow' carries dequantised types in the "
                   "flow (the E-NF paper); 'composition' draws the "
                   "composition from the training formulas and the "
                   "positions from a flow conditioned on the types (exact "
                   "likelihood)")
    o = p.add_argument_group('objective')
    o.add_argument('--objective', choices=sorted(OBJECTIVES), default='fm',
                   help="'fm': flow matching (no ODE solve per step); "
                   "'ml': maximum likelihood as in the E-NF paper")
    o.add_argument('--sigma', type=float, default=0.0,
                   help='fm: width of the Gaussian around the paths')
    o.add_argument('--no-align', action='store_true',
                   help='fm: no equivariant OT alignment of base samples')
    o.add_argument('--minibatch-ot', action='store_true',
                   help='fm: also exchange base samples between graphs')
    o.add_argument('--time-exponent', type=float, default=1.0,
                   help='fm: times t = u^k, u uniform')
    o.add_argument('--endpoint-weight', type=float, default=None,
                   metavar='C', help='fm: weight the loss at time t by '
                   'max(t, C)^2, the error of the predicted clean graph')
    o.add_argument('--ode-reg', type=float, default=0.0,
                   help='ml: weight of the kinetic + Jacobian regulariser')
    o.add_argument('--train-tol', type=float, default=1e-4,
                   help='ml: rtol = atol of dopri5 in training')
    f = p.add_argument_group('optimisation')
    f.add_argument('--epochs', type=int, default=100)
    f.add_argument('--batch-size', type=int, default=100)
    f.add_argument('--lr', type=float, default=5e-4)
    f.add_argument('--lr-schedule', choices=['constant', 'cosine'],
                   default='constant')
    f.add_argument('--ema', type=float, default=None, help='decay of the '
                   'moving average of the weights that is validated and '
                   'kept (default: 0.999 with fm, none with ml)')
    f.add_argument('--bf16', action=argparse.BooleanOptionalAction,
                   default=False, help='fm: bfloat16 autocast of the '
                   'network (faster on CPUs with AVX-512 BF16 and on GPUs)')
    f.add_argument('--time-budget', type=float, default=None,
                   help='hours of training over all resumed runs')
    f.add_argument('--seed', type=int, default=0)
    e = p.add_argument_group('evaluation')
    e.add_argument('--eval-every', type=int, default=None,
                   help='epochs between validations (default: ~20 per run)')
    e.add_argument('--num-valid', type=int, default=1000)
    e.add_argument('--num-test', type=int, default=None)
    e.add_argument('--num-samples', type=int, default=1000)
    e.add_argument('--trace', choices=['exact', 'hutchinson'], default=None,
                   help="trace of the test NLL (default: the task's)")
    e.add_argument('--valid-trace', choices=['exact', 'hutchinson'],
                   default=None)
    e.add_argument('--tol', type=float, default=1e-5,
                   help='rtol = atol of dopri5 for the test NLL')
    e.add_argument('--valid-tol', type=float, default=None,
                   help='rtol = atol for validation (default: --tol)')
    e.add_argument('--solver', default=None,
                   choices=ADAPTIVE_SOLVERS + FIXED_STEP_SOLVERS,
                   help='sampler of the sample metrics (default: dopri5 at '
                   '--tol)')
    e.add_argument('--num-steps', type=int, default=None,
                   help='steps of a fixed-step --solver')
    e.add_argument('--step-exponent', type=float, default=1.0,
                   help='grid t_k = (k/K)^p of a fixed-step --solver; '
                   'p > 1 refines the steps toward the data')
    e.add_argument('--boltzmann-samples', type=int, default=0,
                   help='particle systems: flow samples for importance '
                   'weights (ESS, log Z, entropy floor)')
    e.add_argument('--novelty', action='store_true',
                   help='molecules: also compare with the training set')
    e.add_argument('--published-test', default=None,
                   help='also evaluate on this .npy test split')
    r = p.add_argument_group('run')
    r.add_argument('--out', default=None,
                   help='output folder (default: runs/TASK-OBJECTIVE)')
    r.add_argument('--quick', action='store_true', help='small preset for '
                   '2 CPU cores; options given explicitly override it')
    r.add_argument('--resume', action='store_true',
                   help='continue OUT/checkpoint.pt (same configuration)')
    r.add_argument('--init', default=None, metavar='MODEL',
                   help='start from the weights of a shipped model, model '
                   'file or run folder with the same model configuration '
                   '(fine-tuning, or a finished run trained further)')
    _common(r)


TASK_DEFAULT_NAMES = {'hidden_channels': 'hidden', 'num_layers': 'layers',
                      'regularization_weight': 'ode_reg',
                      'ema_decay': 'ema'}
r"""Task defaults named by configuration field whose flag differs."""


def _task_defaults(argv: List[str]) -> Dict[str, Any]:
    r"""The defaults of :obj:`torch-enf train TASK [--objective O]
    [--quick]`: the task's (and its :obj:`--quick` preset), by flag name,
    so that flags given explicitly win; with :obj:`--atom-types
    composition`, without the task's class margin."""
    from torch_enf.tasks import TASKS, get_task
    first = argparse.ArgumentParser(add_help=False)
    # Optional here, so that '--help' and a missing command reach the full
    # parser, which prints the help or names what is missing.
    first.add_argument('command', nargs='?')
    first.add_argument('task', nargs='?')
    first.add_argument('--objective', default='fm')
    first.add_argument('--quick', action='store_true')
    first.add_argument('--atom-types', default='flow')
    known = first.parse_known_args(argv)[0]
    if known.command != 'train' or known.task not in TASKS:
        return {}
    defaults = get_task(known.task).defaults(known.objective, known.quick)
    if known.atom_types == 'composition':  # no dequantised types to space
        defaults.pop('class_margin', None)
    return {TASK_DEFAULT_NAMES.get(key, key): value
            for key, value in defaults.items()}


# Flags -> configurations ----------------------------------------------------

def run_configs(args: argparse.Namespace):
    r"""The task, run, objective and evaluation configurations of the
    training flags, each checked before anything runs."""
    from torch_enf.objectives import objective_from_name
    from torch_enf.tasks import (DataConfig, EvaluationConfig, ModelOptions,
                                 RunConfig, get_task)
    from torch_enf.training import FitConfig
    task = get_task(args.task)
    ema = args.ema if args.ema is not None else (
        0.999 if args.objective == 'fm' else None)
    if args.objective == 'fm':
        objective = objective_from_name(
            'fm', sigma=args.sigma, align=not args.no_align,
            minibatch_ot=args.minibatch_ot,
            time_exponent=args.time_exponent,
            endpoint_weight=args.endpoint_weight)
    else:
        objective = objective_from_name(
            args.objective, regularization_weight=args.ode_reg,
            solver=_tolerance(args.train_tol, '--train-tol'))
    run = RunConfig(
        task=task.name,
        data=DataConfig(args.root, args.data, args.n_train, args.split_seed,
                        args.max_num_atoms),
        model=ModelOptions(args.hidden, args.layers, args.num_radial,
                           args.radial_cutoff, _graph(args.graph),
                           not args.no_adjoint, args.dequantizer,
                           args.class_margin, args.actnorm,
                           args.atom_types, args.prediction),
        fit=FitConfig(epochs=args.epochs, lr=args.lr,
                      lr_schedule=args.lr_schedule, ema_decay=ema,
                      eval_every=args.eval_every or max(1,
                                                        args.epochs // 20),
                      bf16=args.bf16, time_budget=args.time_budget),
        objective=objective.config(), batch_size=args.batch_size,
        seed=args.seed, init=args.init)
    if args.bf16 and args.objective != 'fm':
        raise CommandError('--bf16 is for flow matching (ODE solves stay '
                           'in float32)')
    test_solver = _tolerance(args.tol, '--tol')
    evaluation = EvaluationConfig(
        num_valid=args.num_valid, num_test=args.num_test,
        num_samples=args.num_samples, valid_trace=args.valid_trace,
        trace=args.trace,
        valid_solver=_tolerance(args.valid_tol, '--valid-tol')
        if args.valid_tol else test_solver,
        solver=test_solver,
        sampler=_sampler(args.solver, args.num_steps, test_solver,
                         args.step_exponent),
        boltzmann_samples=args.boltzmann_samples, novelty=args.novelty,
        published_test=_existing_file(args.published_test,
                                      '--published-test'),
        seed=args.seed)
    return task, run, objective, evaluation


def _graph(value: str):
    if value in ('auto', 'full'):
        return value
    try:
        return float(value)
    except ValueError:
        raise CommandError(f"--graph must be 'auto', 'full' or a radius "
                           f"(got {value!r})") from None


def _tolerance(value: float, flag: str) -> SolverOptions:
    low, high = TOLERANCE_RANGE
    if not low <= value <= high:
        raise CommandError(f'{flag} must lie in [{low:g}, {high:g}] (got '
                           f'{value:g})')
    return SolverOptions('dopri5', value, value)


def _sampler(solver: Optional[str], num_steps: Optional[int],
             default: SolverOptions,
             step_exponent: float = 1.0) -> SolverOptions:
    r"""The sampler of the flags: :obj:`--solver` with its steps (and
    their grid) or the default adaptive solve; :obj:`--num-steps` needs a
    fixed-step solver."""
    if num_steps is not None and not num_steps >= 1:
        raise CommandError(f'--num-steps must be positive (got {num_steps})')
    if not step_exponent > 0:
        raise CommandError(f'--step-exponent must be positive (got '
                           f'{step_exponent})')
    if solver is None:
        if num_steps is not None:
            raise CommandError('--num-steps needs a fixed-step --solver '
                               f'({", ".join(FIXED_STEP_SOLVERS[:4])}, ...)')
        return default
    if solver in FIXED_STEP_SOLVERS and num_steps is None:
        raise CommandError(f'--solver {solver} needs --num-steps')
    return default.replace(method=solver, num_steps=num_steps
                           if solver in FIXED_STEP_SOLVERS else None,
                           step_exponent=step_exponent)


def _call_solver(args: argparse.Namespace,
                 default: SolverOptions) -> SolverOptions:
    r"""The solver of :obj:`sample`, :obj:`logprob` and :obj:`evaluate`:
    the flags change :obj:`default` (the card's sampler, or dopri5 for
    likelihoods) field by field, so :obj:`--num-steps` alone changes the
    steps of a fixed-step default and :obj:`--tol` alone the tolerance of
    an adaptive one."""
    if args.num_steps is not None and not args.num_steps >= 1:
        raise CommandError(f'--num-steps must be positive (got '
                           f'{args.num_steps})')
    method = args.solver or default.method
    if args.num_steps is not None and method not in FIXED_STEP_SOLVERS:
        raise CommandError(f'--num-steps needs a fixed-step --solver (the '
                           f'solver here is {method}, which is adaptive)')
    if method in FIXED_STEP_SOLVERS and args.num_steps is None and \
            default.num_steps is None:
        raise CommandError(f'--solver {method} needs --num-steps')
    tol = _tolerance(args.tol, '--tol') if args.tol is not None else default
    if args.step_exponent is not None and not args.step_exponent > 0:
        raise CommandError(f'--step-exponent must be positive (got '
                           f'{args.step_exponent})')
    return default.replace(
        method=method, rtol=tol.rtol, atol=tol.atol,
        num_steps=None if method in ADAPTIVE_SOLVERS else (
            args.num_steps or default.num_steps),
        step_exponent=args.step_exponent or default.step_exponent)


def _existing_file(path: Optional[str], flag: str) -> Optional[str]:
    if path is not None and not osp.isfile(path):
        raise CommandError(f'{flag} {path} is not a file')
    return path


def _check_resources(args: argparse.Namespace) -> None:
    r"""Threads, device, batch size and counts, before any work."""
    if args.threads is not None:
        if not args.threads >= 1:
            raise CommandError(f'--threads must be positive (got '
                               f'{args.threads})')
        torch.set_num_threads(args.threads)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise CommandError(f"--device {args.device!r} is not a device "
                           f"(expected 'cpu', 'cuda' or 'cuda:N')") from None
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise CommandError('--device cuda was asked for, but CUDA is not '
                           'available on this machine')
    for flag in ('batch_size', 'num_samples', 'num_test', 'epochs',
                 'num_valid', 'n_train'):
        value = getattr(args, flag, None)
        if value is not None and not value >= 1:
            raise CommandError(f"--{flag.replace('_', '-')} must be "
                               f"positive (got {value})")
    if getattr(args, 'num_samples', None) and args.num_samples > MAX_SAMPLES:
        raise CommandError(f'--num-samples {args.num_samples} is more than '
                           f'{MAX_SAMPLES:,} (draw in several runs)')


# Commands -------------------------------------------------------------------

def _models(args: argparse.Namespace) -> None:
    from torch_enf.pretrained import available_models, model_card
    for name in available_models():
        card = model_card(name)
        print(f"{name:16s} {card.get('description', '')}")
        metrics = format_results(card.get('metrics', {}))
        if metrics:
            print(f"{'':16s} {metrics}")


def _tasks(args: argparse.Namespace) -> None:
    from torch_enf.tasks import TASKS
    for name in sorted(TASKS):
        print(f'{name:16s} {TASKS[name].description}')


def _train(args: argparse.Namespace) -> None:
    from torch_enf.tasks import train
    task, run, objective, evaluation = run_configs(args)
    out = args.out or osp.join('runs', f'{task.name}-{args.objective}')
    if osp.exists(out) and not osp.isdir(out):
        raise CommandError(f'--out {out} is a file, not a folder')
    if args.resume and not osp.isfile(osp.join(out, 'checkpoint.pt')):
        raise CommandError(f'--resume: {out} holds no checkpoint.pt')
    results = train(task, run, objective, evaluation, out,
                    resume=args.resume, device=args.device,
                    progress=not args.no_progress)
    if results is not None:
        print(json.dumps(json_safe(results), indent=2))
        print(format_results(results))
        print(f"test_nll={results['test_nll']:.4f}")


def _load(args: argparse.Namespace):
    from torch_enf.pretrained import load_model
    return load_model(args.model, args.device)


def _sample(args: argparse.Namespace) -> None:
    from torch_enf.utils import check_positive_number
    check_positive_number(args.temperature, 'temperature')
    found = _load(args)
    task = found.task
    task.check_suffix(args.output, task.sample_suffixes, 'writes')
    from torch_enf.tasks.base import prepare_output
    prepare_output(args.output, args.overwrite)
    picture = _picture_path(args)
    solver = _call_solver(args, found.sampler)
    generator = torch.Generator(args.device).manual_seed(args.seed)
    start = time.time()
    samples = task.sample(found.model, args.num_samples,
                          generator=generator, batch_size=args.batch_size,
                          progress=not args.no_progress,
                          temperature=args.temperature, solver=solver)
    seconds = time.time() - start
    samples = samples.cpu()
    task.write_samples(samples, args.output, picture)
    print(f'{samples.num_graphs} samples in {seconds:.1f} s ({solver.method}'
          + (f', {solver.num_steps} steps' if solver.num_steps else '') +
          f') -> {args.output}' + (
              f', {picture}' if picture else
              ' (no picture: pip install torch-enf[plot])'))
    metrics = task.sample_metrics(samples)
    if len(metrics) > 1:
        print(json.dumps(json_safe(metrics), indent=2))


def _logprob(args: argparse.Namespace) -> int:
    from torch_enf.evaluation import log_prob_of_graphs
    from torch_enf.io import atomic_path
    from torch_enf.tasks.base import prepare_output
    if not osp.exists(args.file):
        raise CommandError(f'{args.file} does not exist')
    if osp.isdir(args.file):
        raise CommandError(f'{args.file} is a folder, not a file')
    output = args.output or osp.splitext(args.file)[0] + '.logprob.csv'
    prepare_output(output, args.overwrite)
    found = _load(args)
    solver = _call_solver(args, SolverOptions())
    structures = found.task.read_structures(args.file, found.model)
    total = len(structures.graphs) + len(structures.skipped)
    if structures.skipped:
        print(f'skipped {len(structures.skipped)} of {total} structures: ' +
              '; '.join(structures.skipped[:10]) +
              (' ...' if len(structures.skipped) > 10 else ''),
              file=sys.stderr)
    if not structures.graphs:
        raise CommandError(f'{args.file}: no structure the model can score')
    torch.manual_seed(args.seed)
    failed, scored = [], []
    with atomic_path(output) as tmp, open(tmp, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['name', 'num_atoms', 'log_prob', 'problem'])
        try:
            for start in range(0, len(structures.graphs), SCORE_CHUNK):
                chunk = structures.graphs[start:start + SCORE_CHUNK]
                values = log_prob_of_graphs(
                    found.model, chunk, args.batch_size, args.trace, solver,
                    skip_failures=True,
                    progress=not args.no_progress).tolist()
                for name, data, value in zip(
                        structures.names[start:], chunk, values):
                    problem = ''
                    if math.isnan(value):
                        problem = 'the ODE solve failed'
                        failed.append(name)
                    else:
                        scored.append(value)
                    writer.writerow([name, data.num_nodes, f'{value:.6f}',
                                     problem])
                f.flush()
        finally:  # what was scored is kept, also on an interrupt
            for skipped in structures.skipped:
                writer.writerow([skipped.split(':')[0], '', 'nan',
                                 skipped.split(': ', 1)[-1]])
    if failed:
        print(f'could not score {len(failed)} of {total} structures (their '
              f'ODE solve failed; a looser --tol may help), written as nan: '
              + ', '.join(failed[:10]) + (', ...' if len(failed) > 10
                                          else ''), file=sys.stderr)
    mean = f'{sum(scored) / len(scored):.4f}' if scored else 'nan'
    print(f'mean log-likelihood {mean} over {len(scored)} of {total} '
          f'structures -> {output}')
    return 1 if failed or structures.skipped else 0


def _evaluate(args: argparse.Namespace) -> None:
    from torch_enf.storage import atomic_save
    from torch_enf.tasks import DataConfig, EvaluationConfig
    found = _load(args)
    name = osp.basename(osp.normpath(args.model)).split('.')[0]
    out = args.out or osp.join('runs', f'evaluate-{name}')
    if osp.exists(out) and not osp.isdir(out):
        raise CommandError(f'--out {out} is a file, not a folder')
    # The test NLL is an adaptive solve at --tol; the solver flags change
    # the card's sampler.
    evaluation = EvaluationConfig(
        num_test=args.num_test, num_samples=args.num_samples,
        trace=args.trace, solver=_tolerance(args.tol, '--tol')
        if args.tol is not None else SolverOptions(),
        sampler=_call_solver(args, found.sampler), seed=args.seed)
    stored = found.card.get('training', {}).get('data', {})
    data = DataConfig(root=args.root, files=args.data or stored.get(
        'files'), max_num_atoms=stored.get('max_num_atoms'),
        split_seed=stored.get('split_seed', 0))
    splits = found.task.datasets(data, not args.no_progress,
                                 log=not args.no_progress)
    os.makedirs(out, exist_ok=True)
    results = found.task.evaluate(found.model, splits, evaluation, out,
                                  not args.no_progress)
    atomic_save(json_safe(results), osp.join(out, 'results.json'))
    print(json.dumps(json_safe(results), indent=2))
    print(format_results(results))


# Helpers --------------------------------------------------------------------

def _picture_path(args: argparse.Namespace) -> Optional[str]:
    r"""Where the picture of the samples goes, checked before any work;
    :obj:`None` when matplotlib is missing and no picture was asked for
    explicitly (an explicit :obj:`--picture` without matplotlib is an
    error)."""
    from torch_enf.tasks.base import prepare_output
    if importlib.util.find_spec('matplotlib') is None:
        if args.picture:
            raise CommandError('--picture needs matplotlib: pip install '
                               'torch-enf[plot]')
        return None
    picture = args.picture or osp.splitext(args.output)[0] + '.png'
    if osp.splitext(picture)[1].lower() not in PICTURE_SUFFIXES:
        raise CommandError(f'--picture {picture}: expected a '
                           f"{', '.join(PICTURE_SUFFIXES)} file")
    return prepare_output(picture, args.overwrite)


HEADLINE = ('test_nll', 'published_test_nll', 'js_distances',
            'atom_stability', 'molecule_stability', 'validity', 'uniqueness',
            'novelty', 'ess', 'nfe', 'num_samples')


def format_results(results: Dict[str, Any],
                   keys: Sequence[str] = HEADLINE) -> str:
    r"""One line with the headline numbers of a run: counts in full
    (``num_samples=10000``), measurements to four digits."""
    def number(value: Any) -> str:
        return str(value) if isinstance(value, int) else f'{value:.4g}'
    return ', '.join(f'{key}={number(results[key])}' for key in keys
                     if isinstance(results.get(key), (int, float)))


if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
