r"""Maximum-likelihood training of the continuous flows."""
from typing import Any

import torch
from torch import Tensor

from torch_enf.flows.integrator import SolverOptions
from torch_enf.objectives.base import Objective, register_objective
from torch_enf.utils import check_non_negative_number

TRAINING_SOLVER = SolverOptions(rtol=1e-4, atol=1e-4)
r"""The default solver of :class:`MaximumLikelihood`: dopri5 at
:math:`10^{-4}`, looser than the evaluation default, since a training step
only needs an unbiased-enough gradient."""


@register_objective('ml')
class MaximumLikelihood(Objective):
    r"""Regularised maximum likelihood, as in the E-NF paper,

    .. math::
        \mathcal{L}_g = -\log p(G_g) + \lambda \int_0^1 \left(
        \|f(\mathbf{z}(t), t)\|^2 + \|\boldsymbol{\epsilon}^\top
        \partial f / \partial \mathbf{z}\|^2 \right) dt,

    the negative log-likelihood of every graph (a flow's density, or a
    molecule model's variational bound) from an ODE solve with Hutchinson's
    trace, plus the kinetic-energy and Jacobian-Frobenius regulariser of
    Finlay et al. (2020) weighted by :math:`\lambda`. Every step solves the
    ODE forward and (adjoint) backward with the objective's own
    :obj:`solver`, whatever the model's mode.

    Args:
        regularization_weight (float, optional): :math:`\lambda`.
            (default: :obj:`0.0`)
        trace (str, optional): :obj:`"hutchinson"` or :obj:`"exact"`.
            (default: :obj:`"hutchinson"`)
        solver (SolverOptions, optional): The solver of the training solves.
            (default: :obj:`TRAINING_SOLVER`, dopri5 at :math:`10^{-4}`)
    """
    options = ('regularization_weight', 'trace', 'solver')

    def __init__(self, regularization_weight: float = 0.0,
                 trace: str = 'hutchinson',
                 solver: SolverOptions = TRAINING_SOLVER):
        check_non_negative_number(regularization_weight,
                                  'regularization_weight')
        if trace not in ('hutchinson', 'exact'):
            raise ValueError(f"'trace' must be 'hutchinson' or 'exact' (got "
                             f"{trace!r})")
        if not isinstance(solver, SolverOptions):
            raise ValueError(f"'solver' must be a SolverOptions (got "
                             f"{type(solver).__name__})")
        self.regularization_weight = float(regularization_weight)
        self.trace = trace
        self.solver = solver

    def __call__(self, model: torch.nn.Module, data: Any) -> Tensor:
        if self.regularization_weight == 0:
            return -model(data, trace=self.trace, solver=self.solver)
        log_prob, reg = model(data, trace=self.trace, solver=self.solver,
                              return_regularization=True)
        return -log_prob + self.regularization_weight * reg
