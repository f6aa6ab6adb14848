r"""What the experiments share: the training options, their checks, the
objective they select, and the call of :func:`torch_enf.training.fit`."""
import argparse
import os
import os.path as osp
from typing import Any, Callable, Dict, Iterable, Optional, Sequence

import torch

from torch_enf.distributed import DistributedContext
from torch_enf.flows import SolverOptions
from torch_enf.objectives import OBJECTIVES, Objective, objective_from_name
from torch_enf.evaluation import evaluate_nll
from torch_enf.training import FitState, fit

RESUMABLE_OPTIONS = frozenset({
    'epochs', 'time_budget', 'resume', 'threads', 'device', 'no_progress',
    'num_test', 'num_samples', 'sample_solver', 'sample_steps', 'eval_tol',
    'published_test', 'novelty', 'quick', 'out', 'root', 'sweep',
    'valid_tol', 'boltzmann_samples', 'eval_trace'})
r"""Options that may change when a run is resumed (run length, evaluation,
resources); all others must equal those stored in the checkpoint."""

RADIAL_OPTIONS = ('num_radial', 'radial_cutoff')
r"""The options of the distance features of the network."""

EMA_DECAY = {'fm': 0.999, 'ml': None}
r"""The default moving average of the weights per objective: flow-matching
models are evaluated with the average, as diffusion models are."""


def add_training_arguments(parser: argparse.ArgumentParser,
                           lr: float) -> None:
    r"""The options of every experiment: objective, optimisation, solver,
    evaluation, budget and resources."""
    p = parser.add_argument_group('training')
    p.add_argument('--objective', choices=sorted(OBJECTIVES), default='fm',
                   help="'fm': flow matching (fast, no ODE solve per step); "
                   "'ml': maximum likelihood as in the E-NF paper")
    p.add_argument('--epochs', type=int, default=100)
    p.add_argument('--batch-size', type=int, default=100)
    p.add_argument('--lr', type=float, default=lr)
    p.add_argument('--lr-schedule', choices=['constant', 'cosine'],
                   default='constant',
                   help='cosine: decay to 1%% of --lr over the epochs or the '
                   'time budget, whichever ends first')
    p.add_argument('--hidden', type=int, default=64)
    p.add_argument('--layers', type=int, default=6)
    p.add_argument('--num-radial', type=int, default=0,
                   help='Gaussian distance features per edge (default: '
                   'none, only the squared distance)')
    p.add_argument('--radial-cutoff', type=float, default=5.0,
                   help='last centre of the distance Gaussians')
    p.add_argument('--ema', type=float, default=None,
                   help='decay of the moving average of the weights that is '
                   'validated and kept (default: 0.999 with fm, none with ml)')
    p.add_argument('--sigma', type=float, default=0.0,
                   help='fm: width of the Gaussian around the paths')
    p.add_argument('--no-align', action='store_true',
                   help='fm: no equivariant OT alignment of base samples')
    p.add_argument('--minibatch-ot', action='store_true',
                   help='fm: also exchange base samples between graphs')
    p.add_argument('--time-exponent', type=float, default=1.0,
                   help='fm: times t = u^k, u uniform; k > 1 trains more '
                   'near the data')
    p.add_argument('--ode-reg', type=float, default=0.0,
                   help='ml: weight of the kinetic + Jacobian regulariser')
    p.add_argument('--tol', type=float, default=1e-4,
                   help='ml: rtol = atol of dopri5 in training')
    p.add_argument('--no-adjoint', action='store_true',
                   help='ml: back-propagate through the solver')
    p.add_argument('--bf16', action='store_true',
                   help='fm: bfloat16 autocast of the network in training '
                   '(faster on CPUs with AVX-512 BF16 and on GPUs)')
    p.add_argument('--seed', type=int, default=0)
    e = parser.add_argument_group('evaluation')
    e.add_argument('--eval-tol', type=float, default=1e-5,
                   help='rtol = atol of dopri5 for validation and test')
    e.add_argument('--valid-tol', type=float, default=None,
                   help='rtol = atol for validation (default: --eval-tol)')
    e.add_argument('--eval-every', type=int, default=None,
                   help='epochs between validations (default: ~20 per run)')
    e.add_argument('--num-valid', type=int, default=1000,
                   help='validation graphs used for model selection')
    e.add_argument('--num-test', type=int, default=None,
                   help='test graphs (default: the whole test split)')
    e.add_argument('--num-samples', type=int, default=1000,
                   help='graphs sampled for the sample metrics')
    e.add_argument('--sample-solver', default=None,
                   help='solver for sampling (default: dopri5 at --eval-tol)')
    e.add_argument('--sample-steps', type=int, default=None,
                   help='steps of a fixed-step --sample-solver')
    r = parser.add_argument_group('run')
    r.add_argument('--out', default=None, help='output folder')
    r.add_argument('--quick', action='store_true',
                   help='small preset for 2 CPU cores; options given '
                   'explicitly override it')
    r.add_argument('--resume', action='store_true',
                   help='continue OUT/checkpoint.pt (same options)')
    r.add_argument('--time-budget', type=float, default=None,
                   help='hours of training, over all resumed runs; the '
                   'epoch in progress ends at the next step, is validated, '
                   'then the model is tested as usual')
    r.add_argument('--threads', type=int, default=None)
    r.add_argument('--device', default='cpu')
    r.add_argument('--no-progress', action='store_true')


def parse(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]],
          presets: Callable[[argparse.Namespace], Dict[str, Any]]
          ) -> argparse.Namespace:
    r"""Parses :obj:`argv`; with :obj:`--quick`, :obj:`presets(known)`
    become the defaults, so options given explicitly still win. Every
    option is checked before anything runs."""
    known = parser.parse_known_args(argv)[0]
    if known.quick:
        parser.set_defaults(**presets(known))
    args = parser.parse_args(argv)
    if args.ema is None:
        args.ema = EMA_DECAY[args.objective]
    check_arguments(args)
    return args


def check_arguments(args: argparse.Namespace) -> None:
    r"""Raises :class:`ValueError` naming the first bad option, so that no
    run fails after training because of one."""
    positive = ['epochs', 'batch_size', 'hidden', 'layers', 'num_valid',
                'num_samples', 'lr', 'tol', 'eval_tol']
    optional_positive = ['eval_every', 'num_test', 'time_budget', 'threads',
                         'radial_cutoff',
                         'sample_steps', 'valid_tol']
    for name in positive + optional_positive:
        value = getattr(args, name)
        if value is None and name in optional_positive:
            continue
        if not value > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive "
                             f"(got {value})")
    if args.num_radial < 0 or args.num_radial == 1:
        raise ValueError(f'--num-radial must be at least 2, or 0 for none '
                         f'(the Gaussians are spaced between 0 and '
                         f'--radial-cutoff; got {args.num_radial})')
    if args.ema is not None and not 0 < args.ema < 1:
        raise ValueError(f'--ema must lie in (0, 1) (got {args.ema})')
    if args.bf16 and args.objective != 'fm':
        raise ValueError('--bf16 is for flow matching (ODE solves stay in '
                         'float32)')
    if not args.time_exponent > 0:
        raise ValueError(f'--time-exponent must be positive (got '
                         f'{args.time_exponent})')
    if args.sigma < 0 or args.ode_reg < 0:
        raise ValueError('--sigma and --ode-reg must be non-negative')
    sampling_options(args)  # checks the sampling solver
    SolverOptions('dopri5', args.tol, args.tol)
    torch.device(args.device)  # a malformed device name raises here
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        raise ValueError('--device cuda was asked for, but CUDA is not '
                         'available')


def validation_nll(args: argparse.Namespace, loader: Iterable, trace: str,
                   progress: bool) -> Callable[[torch.nn.Module], float]:
    r"""The validation function of :func:`train`: the NLL of the graphs of
    :obj:`loader`, at :obj:`--valid-tol` if given."""
    tol = args.valid_tol or args.eval_tol

    def validate(model: torch.nn.Module) -> float:
        flow = getattr(model, 'flow', model)  # the ENFlow of a MoleculeFlow
        with flow.ode_options(rtol=tol, atol=tol):
            return evaluate_nll(model, loader, trace, 'valid', progress).nll
    return validate


def sampling_options(args: argparse.Namespace) -> Dict[str, Any]:
    r"""The :meth:`~torch_enf.flows.ENFlow.ode_options` for sampling
    (checked), empty for the flow's evaluation solver."""
    if args.sample_solver is None:
        if args.sample_steps is not None:
            raise ValueError('--sample-steps needs a fixed-step '
                             '--sample-solver')
        return {}
    options = dict(method=args.sample_solver, num_steps=args.sample_steps)
    SolverOptions('dopri5').update(**options)
    return options


def radial_options(args: argparse.Namespace) -> Dict[str, Any]:
    r"""The distance features of the network, as given (the options of runs
    that predate them hold none: the network's defaults apply)."""
    return {name: getattr(args, name) for name in RADIAL_OPTIONS
            if hasattr(args, name)}


def build_objective(args: argparse.Namespace) -> Objective:
    r"""The objective the options select."""
    if args.objective == 'fm':
        return objective_from_name('fm', sigma=args.sigma,
                                   align=not args.no_align,
                                   minibatch_ot=args.minibatch_ot,
                                   time_exponent=args.time_exponent)
    return objective_from_name(args.objective,
                               regularization_weight=args.ode_reg)


def run_config(args: argparse.Namespace) -> Dict[str, Any]:
    r"""The options that define a run (stored in its checkpoint). The
    distance options are left out of a network without distance features,
    where the cutoff has no effect, and a class margin of zero, so that
    runs from before these options existed still resume."""
    config = {key: value for key, value in sorted(vars(args).items())
              if key not in RESUMABLE_OPTIONS}
    if not config.get('num_radial'):
        for name in RADIAL_OPTIONS:
            config.pop(name, None)
    if not config.get('class_margin'):
        config.pop('class_margin', None)
    return config


def train(model: torch.nn.Module, args: argparse.Namespace,
          train_loader: Iterable, out: str,
          validate: Callable[[torch.nn.Module], float],
          context: Optional[DistributedContext] = None) -> FitState:
    r"""Runs :func:`~torch_enf.training.fit` with the options of
    :obj:`args`, then loads the selected weights into :obj:`model`."""
    state = fit(model, build_objective(args), train_loader, out,
                epochs=args.epochs, validate=validate,
                eval_every=args.eval_every or max(1, args.epochs // 20),
                lr=args.lr, lr_schedule=args.lr_schedule, ema_decay=args.ema,
                autocast=torch.bfloat16 if args.bf16 else None,
                time_budget=args.time_budget, resume=args.resume,
                config=run_config(args), metadata=dict(options=vars(args)),
                context=context,
                progress=not args.no_progress)
    model.load_state_dict(torch.load(osp.join(out, 'best.pt'),
                                     map_location=next(
                                         model.parameters()).device))
    return state


def run_summary(args: argparse.Namespace, state: FitState) -> Dict[str, Any]:
    r"""What every results file records about the training run."""
    return dict(objective=args.objective, epochs=args.epochs,
                epochs_completed=state.epoch, steps=state.step,
                stopped_by_budget=state.stopped_by_budget,
                time_budget_h=args.time_budget, batch_size=args.batch_size,
                lr=args.lr, ema=args.ema, best_epoch=state.best_epoch,
                best_valid_nll=state.best_valid,
                training_wall_clock_s=state.wall_clock_s,
                eval_tol=args.eval_tol, threads=torch.get_num_threads(),
                device=args.device)


def prepare_run(args: argparse.Namespace, default_out: str) -> str:
    r"""Threads and seed from the options; returns the output folder."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = args.out or default_out
    os.makedirs(out, exist_ok=True)
    return out


def subset(dataset, num: Optional[int], seed: Optional[int] = None):
    r"""The first :obj:`num` graphs of :obj:`dataset` (a random subset with
    :obj:`seed`), or all of them."""
    if num is None or num >= len(dataset):
        return dataset
    if seed is None:
        return dataset[:num]
    generator = torch.Generator().manual_seed(seed)
    return dataset[torch.randperm(len(dataset), generator=generator)[:num]]


def format_results(results: Dict[str, Any], keys: Iterable[str]) -> str:
    r"""One line with the headline numbers of a run: counts in full
    (``num_samples=10000``), measurements to four digits."""
    def number(value: Any) -> str:
        return str(value) if isinstance(value, int) else f'{value:.4g}'
    return ', '.join(f'{key}={number(results[key])}' for key in keys
                     if isinstance(results.get(key), (int, float)))
