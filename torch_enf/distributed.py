r"""Small helpers to train the flows with
:class:`~torch.nn.parallel.DistributedDataParallel` under :obj:`torchrun`.

Gradient averaging through the adjoint: :class:`~torch_enf.flows.ENFlow`
back-propagates with :func:`torchdiffeq.odeint_adjoint`, a custom autograd
function that takes the dynamics' parameters as explicit inputs and returns
their gradients from its backward pass. Autograd then accumulates those into
:obj:`param.grad` through the ordinary accumulation nodes, which is where DDP
registers its all-reduce hooks, so DDP averages these gradients like any
other (checked by :obj:`test/test_distributed.py`: parameters of ranks that
see different data stay identical). No manual all-reduce is needed.
"""
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler
from torch_geometric.loader import DataLoader


@dataclass
class DistributedContext:
    r"""Where this process sits in a (possibly single-process) job.

    Attributes:
        rank (int): Global rank, :obj:`0` without :obj:`torchrun`.
        world_size (int): Number of processes.
        device (torch.device): The device of this process.
    """
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        r"""Whether this process logs, evaluates and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        r"""Whether more than one process takes part."""
        return self.world_size > 1


def init_distributed(device: str = 'cpu') -> DistributedContext:
    r"""Initialises the default process group from the environment variables
    set by :obj:`torchrun` (:obj:`WORLD_SIZE`, :obj:`RANK`,
    :obj:`LOCAL_RANK`, :obj:`MASTER_ADDR`, :obj:`MASTER_PORT`) when
    :obj:`WORLD_SIZE > 1`, with the :obj:`gloo` backend on CPU and
    :obj:`nccl` on CUDA (one GPU per local rank). A single process gets a
    context of world size one and no process group.

    Args:
        device (str, optional): :obj:`"cpu"` or :obj:`"cuda"`.
    """
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    device = torch.device(device)
    if world_size <= 1:
        return DistributedContext(0, 1, device)
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    if device.type == 'cuda':
        device = torch.device('cuda', local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            'nccl' if device.type == 'cuda' else 'gloo',
            init_method='env://')
    return DistributedContext(dist.get_rank(), world_size, device)


def shutdown(context: DistributedContext) -> None:
    r"""Destroys the process group of a distributed context."""
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(context: DistributedContext) -> None:
    r"""Waits for all processes (no-op in a single process)."""
    if context.distributed:
        dist.barrier()


def mean_over_processes(value: float, context: DistributedContext) -> float:
    r"""The mean of a Python number over all processes."""
    if not context.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64,
                          device=context.device)
    dist.all_reduce(tensor)
    return float(tensor) / context.world_size


def any_over_processes(flag: bool, context: DistributedContext) -> bool:
    r"""Whether :obj:`flag` holds in at least one process, so that all
    processes take the same branch (*e.g.* stop together)."""
    return mean_over_processes(float(flag), context) > 0


def broadcast_from_main(value: float, context: DistributedContext) -> float:
    r"""Rank 0's :obj:`value` (a Python number) in every process; the other
    processes' :obj:`value` is ignored."""
    if not context.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64,
                          device=context.device)
    dist.broadcast(tensor, src=0)
    return float(tensor)


def shard_loader(dataset: Dataset, batch_size: int,
                 context: DistributedContext, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False) -> DataLoader:
    r"""A PyG :class:`~torch_geometric.loader.DataLoader` over this
    process's shard (a :class:`DistributedSampler`; call
    :obj:`loader.sampler.set_epoch(epoch)` every epoch), or over the whole
    dataset in a single process."""
    if not context.distributed:
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle,
                          drop_last=drop_last)
    sampler = DistributedSampler(dataset, context.world_size, context.rank,
                                 shuffle=shuffle, seed=seed,
                                 drop_last=drop_last)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                      drop_last=drop_last)


def wrap_model(module: torch.nn.Module, context: DistributedContext
               ) -> torch.nn.Module:
    r"""The module in :class:`~torch.nn.parallel.DistributedDataParallel`
    when distributed (parameters broadcast from rank 0), as it is otherwise.
    DDP hooks into :obj:`forward`, so the module's forward must run the
    whole loss (see :func:`torch_enf.training.fit`).

    :obj:`find_unused_parameters` is on: parts of a model may get no
    gradient from an objective (the last EGNN layer's unread outputs when
    back-propagating through the solver; the data-side ActNorm under flow
    matching), and DDP would otherwise wait for them forever."""
    if not context.distributed:
        return module
    device_ids: Optional[list] = [context.device.index] \
        if context.device.type == 'cuda' else None
    return torch.nn.parallel.DistributedDataParallel(
        module, device_ids=device_ids, find_unused_parameters=True)
