r"""The charged N-body system of the EGNN paper (Satorras et al., 2021,
Section 5.1) as a PyG dataset, with a vectorised simulator.

The protocol is that of the paper's official code (files
:obj:`n_body_system/dataset/synthetic_sim.py`,
:obj:`n_body_system/dataset/generate_dataset.py`,
:obj:`n_body_system/dataset_nbody.py` and :obj:`main_nbody.py` of
`vgsatorras/egnn <https://github.com/vgsatorras/egnn>`_, its
:obj:`nbody_small` data set), which follows the charged-particle system of
Kipf et al. (2018, "Neural Relational Inference") in 3D:

* 5 particles of unit mass with charges :math:`q_i = \pm 1`, each sign with
  probability :math:`1/2`;
* initial positions :math:`\mathcal{N}(0, 1)` per coordinate, initial
  velocities of norm exactly :math:`0.5` in uniformly random directions;
* the initial state is reflected once into the box :math:`[-5, 5]^3`
  (positions beyond a wall are mirrored, their velocity points inwards);
  the box plays no part afterwards (the official code comments the walls
  out of the integration loop);
* Coulomb forces of strength :math:`k = 1` (:func:`coulomb_forces`), each
  Cartesian component of the total force on a particle clamped to
  :math:`\pm 0.1 / \Delta t = \pm 100` (it acts in close encounters of
  opposite charges, at some point before the target frame of about 45 % of
  the trajectories);
* time step :math:`\Delta t = 10^{-3}`, integrated by a kick-drift
  (symplectic Euler / leapfrog) scheme started with one full kick
  (:func:`simulate`);
* trajectories of 5,000 steps sampled every 100 steps (49 frames, frame
  :math:`k` after :math:`100 (k + 1)` steps); the input is frame 30 (after
  3,100 steps), the target frame 40 (after 4,100 steps): positions 1,000
  steps ahead;
* 3,000 training, 2,000 validation and 2,000 test trajectories (the
  official code generates 10,000 training trajectories and uses the first
  3,000).

Only the distribution is the official one: the random numbers (and so the
trajectories) differ. No noise is added to the observations.
"""
import hashlib
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch_geometric.data import Data, InMemoryDataset

from .cache import load_processed
from torch_enf.io import atomic_path
from torch_enf.nn.graph import full_edge_index
from torch_enf.utils import check_positive_integer

SPLITS = ('train', 'valid', 'test')

NUM_PARTICLES = 5
STRENGTH = 1.0  #: Interaction strength :math:`k`.
TIME_STEP = 1e-3  #: :math:`\Delta t`.
MAX_FORCE = 0.1 / TIME_STEP  #: Clamp of every force component.
BOX_SIZE = 5.0  #: Half-width of the box the initial state is reflected into.
POS_STD = 1.0  #: Standard deviation of the initial coordinates.
VEL_NORM = 0.5  #: Norm of every initial velocity.
SAMPLE_EVERY = 100  #: Steps between the frames of a trajectory.
INPUT_FRAME = 30  #: Frame of the inputs (after 3,100 steps).
TARGET_FRAME = 40  #: Frame of the target positions (after 4,100 steps).


def frame_step(frame: int) -> int:
    r"""The number of integration steps after which frame :obj:`frame` of a
    trajectory is recorded: :math:`100 (k + 1)` (the official code
    overwrites the initial state with the first sample)."""
    return SAMPLE_EVERY * (frame + 1)


def coulomb_forces(pos: Tensor, charge: Tensor, strength: float = STRENGTH,
                   max_force: Optional[float] = MAX_FORCE) -> Tensor:
    r"""The Coulomb forces between charged particles,

    .. math::
        \mathbf{F}_i = k \sum_{j \neq i} q_i q_j
        \frac{\mathbf{x}_i - \mathbf{x}_j}{\|\mathbf{x}_i - \mathbf{x}_j\|^3},

    (like charges repel), every Cartesian component clamped to
    :math:`[-F_{max}, F_{max}]`. The clamp, a safeguard of the official
    simulator, acts only in close encounters (distances below about
    :math:`0.1`) and breaks rotation equivariance and momentum conservation
    where it acts.

    Args:
        pos (torch.Tensor): Positions of shape :obj:`[..., N, 3]`.
        charge (torch.Tensor): Charges of shape :obj:`[..., N, 1]`
            (broadcast to the positions).
        strength (float, optional): :math:`k`. (default: :obj:`1.0`)
        max_force (float, optional): :math:`F_{max}`, or :obj:`None` for no
            clamp. (default: :obj:`100.0`)

    Returns:
        torch.Tensor: Forces of shape :obj:`[..., N, 3]`.
    """
    charge = charge.expand(*pos.shape[:-1], 1)
    field = _ForceField(charge, strength, max_force)
    return _from_internal(field(_to_internal(pos)), pos.shape)


def _to_internal(x: Tensor) -> Tensor:
    r""":obj:`[..., N, 3]` to the simulator's layout :obj:`[N, 3, B]`, with
    the trajectories last and contiguous, which vectorises the per-pair
    arithmetic."""
    return x.reshape(-1, *x.shape[-2:]).permute(1, 2, 0).contiguous()


def _from_internal(x: Tensor, shape: torch.Size) -> Tensor:
    return x.permute(2, 0, 1).reshape(shape)


class _ForceField:
    r"""The clamped Coulomb forces of fixed charges on positions in the
    layout :obj:`[N, 3, B]`, computed once per unordered pair."""
    def __init__(self, charge: Tensor, strength: float,
                 max_force: Optional[float]):
        num_particles = charge.size(-2)
        self.source, self.target = torch.triu_indices(
            num_particles, num_particles, 1, device=charge.device)
        q = _to_internal(charge)[:, 0]  # [N, B]
        self.scale = strength * (q[self.source] * q[self.target]).unsqueeze(1)
        self.max_force = max_force

    def __call__(self, x: Tensor) -> Tensor:
        diff = x[self.source] - x[self.target]  # [pairs, 3, B]
        dist2 = (diff * diff).sum(1, keepdim=True)
        pair = self.scale * dist2.pow(-1.5) * diff
        force = torch.zeros_like(x).index_add_(0, self.source, pair)
        force = force.index_add_(0, self.target, pair, alpha=-1)
        if self.max_force is not None:
            force = force.clamp_(-self.max_force, self.max_force)
        return force


def coulomb_energy(pos: Tensor, vel: Tensor, charge: Tensor,
                   strength: float = STRENGTH) -> Tensor:
    r"""The total energy of charged particles of unit mass,

    .. math::
        E = \frac{1}{2} \sum_i \|\mathbf{v}_i\|^2 + k \sum_{i < j}
        \frac{q_i q_j}{\|\mathbf{x}_i - \mathbf{x}_j\|}.

    Args:
        pos (torch.Tensor): Positions of shape :obj:`[..., N, 3]`.
        vel (torch.Tensor): Velocities of shape :obj:`[..., N, 3]`.
        charge (torch.Tensor): Charges of shape :obj:`[..., N, 1]`.
        strength (float, optional): :math:`k`. (default: :obj:`1.0`)

    Returns:
        torch.Tensor: Energies of shape :obj:`[...]`.
    """
    dist = (pos.unsqueeze(-2) - pos.unsqueeze(-3)).pow(2).sum(-1).sqrt()
    eye = torch.eye(pos.size(-2), dtype=torch.bool, device=pos.device)
    pair = (charge * charge.transpose(-1, -2) / dist).masked_fill(eye, 0.0)
    return 0.5 * vel.pow(2).sum((-1, -2)) + 0.5 * strength * pair.sum(
        (-1, -2))


def initial_states(num_trajectories: int, generator: torch.Generator,
                   num_particles: int = NUM_PARTICLES,
                   box_size: Optional[float] = BOX_SIZE
                   ) -> Tuple[Tensor, Tensor, Tensor]:
    r"""Draws the initial states of the charged system (float64): charges
    :math:`\pm 1` with probability :math:`1/2`, coordinates
    :math:`\mathcal{N}(0, 1)`, velocities of norm :math:`0.5` in random
    directions, reflected once into the box :math:`[-b, b]^3`
    (:func:`reflect_into_box`).

    The states are drawn trajectory after trajectory, so the first
    :math:`m` trajectories do not depend on :obj:`num_trajectories`.

    Args:
        num_trajectories (int): Number of trajectories :math:`B`.
        generator (torch.Generator): The (CPU) source of randomness.
        num_particles (int, optional): :math:`N`. (default: :obj:`5`)
        box_size (float, optional): :math:`b`, or :obj:`None` for no box.
            (default: :obj:`5.0`)

    Returns:
        :obj:`(pos, vel, charge)` of shapes :obj:`[B, N, 3]`,
        :obj:`[B, N, 3]` and :obj:`[B, N, 1]`.
    """
    check_positive_integer(num_trajectories, 'num_trajectories')
    check_positive_integer(num_particles, 'num_particles')
    shape, options = (num_particles, 3), dict(generator=generator,
                                              dtype=torch.float64)
    pos, vel, charge = [], [], []
    for _ in range(num_trajectories):
        sign = torch.rand(num_particles, 1, **options) < 0.5
        charge.append(torch.where(sign, -1.0, 1.0).double())
        pos.append(POS_STD * torch.randn(shape, **options))
        direction = torch.randn(shape, **options)
        vel.append(VEL_NORM * direction / direction.norm(dim=-1,
                                                         keepdim=True))
    pos, vel, charge = torch.stack(pos), torch.stack(vel), torch.stack(charge)
    if box_size is not None:
        pos, vel = reflect_into_box(pos, vel, box_size)
    return pos, vel, charge


def reflect_into_box(pos: Tensor, vel: Tensor, box_size: float
                     ) -> Tuple[Tensor, Tensor]:
    r"""Mirrors every coordinate beyond a wall of :math:`[-b, b]^3` at that
    wall, :math:`x \mapsto \pm 2b - x`, and turns its velocity component
    inwards (elastic collision), once.

    Args:
        pos (torch.Tensor): Positions of shape :obj:`[..., 3]`.
        vel (torch.Tensor): Velocities of shape :obj:`[..., 3]`.
        box_size (float): :math:`b`.
    """
    over, under = pos > box_size, pos < -box_size
    pos = torch.where(over, 2 * box_size - pos, pos)
    pos = torch.where(under, -2 * box_size - pos, pos)
    vel = torch.where(over, -vel.abs(), torch.where(under, vel.abs(), vel))
    return pos, vel


def simulate(pos: Tensor, vel: Tensor, charge: Tensor, steps: Sequence[int],
             time_step: float = TIME_STEP, strength: float = STRENGTH,
             max_force: Optional[float] = MAX_FORCE
             ) -> Tuple[Tensor, Tensor]:
    r"""Integrates all trajectories at once with the official kick-drift
    scheme: one kick :math:`\mathbf{v} \leftarrow \mathbf{v} + \Delta t\,
    \mathbf{F}(\mathbf{x})`, then per step

    .. math::
        \mathbf{x}_{n} = \mathbf{x}_{n-1} + \Delta t\, \mathbf{v}_{n},
        \qquad \mathbf{v}_{n+1} = \mathbf{v}_{n} + \Delta t\,
        \mathbf{F}(\mathbf{x}_{n}),

    recording :math:`(\mathbf{x}_n, \mathbf{v}_n)` at the requested steps:
    the recorded velocity is the one that moved the particles in step
    :math:`n` (the half-step velocity of the leapfrog reading of the
    scheme), as in the official code. Unit masses; see
    :func:`coulomb_forces` for the forces.

    Args:
        pos (torch.Tensor): Initial positions of shape :obj:`[..., N, 3]`.
        vel (torch.Tensor): Initial velocities of shape :obj:`[..., N, 3]`.
        charge (torch.Tensor): Charges of shape :obj:`[..., N, 1]`.
        steps (sequence of int): Increasing positive step counts to record.
        time_step (float, optional): :math:`\Delta t`. (default:
            :obj:`1e-3`)
        strength (float, optional): :math:`k`. (default: :obj:`1.0`)
        max_force (float, optional): Clamp of every force component, or
            :obj:`None`. (default: :obj:`100.0`)

    Returns:
        :obj:`(pos, vel)`, each of shape :obj:`[len(steps), ..., N, 3]`.
    """
    steps = list(steps)
    if not steps or any(not isinstance(s, int) or s < 1 for s in steps) \
            or steps != sorted(set(steps)):
        raise ValueError(f"'steps' must be increasing positive integers "
                         f"(got {steps})")
    forces = _ForceField(charge.expand(*pos.shape[:-1], 1), strength,
                         max_force)
    shape = pos.shape
    pos, vel = _to_internal(pos), _to_internal(vel)
    vel = vel + time_step * forces(pos)
    record = set(steps)
    out_pos, out_vel = [], []
    for step in range(1, steps[-1] + 1):
        pos = pos + time_step * vel
        if step in record:
            out_pos.append(_from_internal(pos, shape))
            out_vel.append(_from_internal(vel, shape))
        if step < steps[-1]:
            vel = vel + time_step * forces(pos)
    return torch.stack(out_pos), torch.stack(out_vel)


class NBody(InMemoryDataset):
    r"""The charged 5-body system of the `"E(n) Equivariant Graph Neural
    Networks" <https://arxiv.org/abs/2102.09844>`_ paper (Section 5.1):
    predict the positions of 5 charged particles 1,000 time steps ahead
    from their positions, velocities and charges. See the module
    documentation for the protocol.

    Every sample is a :class:`~torch_geometric.data.Data` object with

    * :obj:`pos` :obj:`[5, 3]`: the input positions (frame 30);
    * :obj:`vel` :obj:`[5, 3]`: the input velocities (frame 30);
    * :obj:`charge` :obj:`[5, 1]`: the charges, :math:`\pm 1`;
    * :obj:`y` :obj:`[5, 3]`: the target positions (frame 40);
    * :obj:`edge_index` :obj:`[2, 20]`: the fully connected graph (all
      ordered pairs :math:`j \to i`, :math:`i \neq j`), on which the paper's
      models pass messages; batching offsets it as usual.

    All tensors are float32 (simulated in float64). A split is simulated on
    first use (a few seconds) from a :class:`torch.Generator` seeded with
    :attr:`split_seeds`, and cached in :obj:`root/processed` under a name
    that encodes its settings.

    Args:
        root (str): Root directory of the cache.
        split (str, optional): :obj:`"train"`, :obj:`"valid"` or
            :obj:`"test"`. (default: :obj:`"train"`)
        n_train (int, optional): If set, only the first :obj:`n_train`
            trajectories of the training split are used (the official
            :obj:`max_training_samples`). (default: :obj:`None`)
        num_samples (int, optional): Number of trajectories to simulate for
            the split instead of :attr:`split_sizes`. The first :math:`m`
            trajectories are the same for every :obj:`num_samples`.
            (default: :obj:`None`)
        transform (callable, optional): A function applied to every sample
            on access. (default: :obj:`None`)
        force_reload (bool, optional): Whether to simulate the split again.
            (default: :obj:`False`)

    Raises:
        ValueError: For an unknown split, non-positive sizes, or
            :obj:`n_train` beyond the simulated training trajectories.
    """
    #: Number of simulated trajectories per split (the paper's sizes).
    split_sizes: Dict[str, int] = {'train': 3000, 'valid': 2000, 'test': 2000}
    #: Seed of the simulation's :class:`torch.Generator` per split.
    split_seeds: Dict[str, int] = {'train': 0, 'valid': 1, 'test': 2}

    def __init__(
        self,
        root: str,
        split: str = 'train',
        n_train: Optional[int] = None,
        num_samples: Optional[int] = None,
        transform: Optional[Callable] = None,
        force_reload: bool = False,
    ):
        if split not in SPLITS:
            raise ValueError(f"Unknown split {split!r} (expected one of "
                             f"{SPLITS})")
        if n_train is not None:
            if split != 'train':
                raise ValueError(f"'n_train' only applies to the 'train' "
                                 f"split (got split {split!r})")
            check_positive_integer(n_train, 'n_train')
        if num_samples is not None:
            check_positive_integer(num_samples, 'num_samples')
        self.split = split
        self.num_samples = num_samples or self.split_sizes[split]
        if n_train is not None and n_train > self.num_samples:
            raise ValueError(f"'n_train' ({n_train}) exceeds the "
                             f"{self.num_samples} simulated training "
                             f"trajectories (raise 'num_samples')")
        super().__init__(root, transform, force_reload=force_reload)
        load_processed(self)
        if n_train is not None:
            self._indices = range(n_train)

    @property
    def raw_file_names(self):
        return []

    @property
    def processed_file_names(self) -> str:
        return f'nbody_{self.split}_{self.num_samples}_{self._cache_key()}.pt'

    def _cache_key(self) -> str:
        settings = (NUM_PARTICLES, STRENGTH, TIME_STEP, MAX_FORCE, BOX_SIZE,
                    POS_STD, VEL_NORM, frame_step(INPUT_FRAME),
                    frame_step(TARGET_FRAME), self.split_seeds[self.split])
        return hashlib.sha1(repr(settings).encode()).hexdigest()[:12]

    def process(self):
        generator = torch.Generator().manual_seed(self.split_seeds[self.split])
        pos, vel, charge = initial_states(self.num_samples, generator)
        pos, vel = simulate(pos, vel, charge, [frame_step(INPUT_FRAME),
                                               frame_step(TARGET_FRAME)])
        edge_index = full_edge_index(torch.zeros(NUM_PARTICLES,
                                                 dtype=torch.long))
        data_list = [
            Data(pos=pos[0, k].float(), vel=vel[0, k].float(),
                 charge=charge[k].float(), y=pos[1, k].float(),
                 edge_index=edge_index)
            for k in range(self.num_samples)
        ]
        with atomic_path(self.processed_paths[0]) as tmp:
            self.save(data_list, tmp)

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}({len(self)}, split={self.split})'
