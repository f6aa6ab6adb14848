r"""Data-parallel training on two CPU processes (gloo): the ranks see
different data, so their parameters stay identical only if DDP averages the
gradients, including those that ENFlow's adjoint returns."""
import math
import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch_geometric.data import Data

from torch_enf.distributed import (DistributedContext, init_distributed,
                                   shard_loader, shutdown)
from torch_enf.flows import ENFlow, MoleculeFlow, NodeCountDistribution
from torch_enf.objectives import FlowMatching, MaximumLikelihood
from torch_enf.training import FitConfig, fit

WORLD_SIZE = 2
pytestmark = pytest.mark.skipif(not dist.is_available() or
                                not dist.is_gloo_available(),
                                reason='needs torch.distributed with gloo')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def dataset(seed: int, molecules: bool):
    generator = torch.Generator().manual_seed(seed)
    data_list = []
    for size in (3, 4, 5, 4, 3, 5, 4, 4):
        pos = torch.randn(size, 3, generator=generator)
        data = Data(pos=pos - pos.mean(0))
        if molecules:
            types = torch.randint(0, 5, (size, ), generator=generator)
            data.h = torch.cat([F.one_hot(types, 5).float(),
                                torch.tensor([1.0, 6, 7, 8, 9])[types, None]],
                               dim=-1)
        data_list.append(data)
    return data_list


CASES = {  # name: (molecules, dequantizer, objective)
    'enflow-adjoint': (False, None, MaximumLikelihood(1e-3)),
    'molecule-flow': (True, 'variational', MaximumLikelihood(1e-3)),
    'enflow-flow-matching': (False, None, FlowMatching()),
    'molecule-flow-matching': (True, 'uniform', FlowMatching()),
}


def build(case: str) -> torch.nn.Module:
    molecules, dequantizer, _ = CASES[case]
    torch.manual_seed(0)
    if not molecules:
        return ENFlow(3, 0, hidden_channels=8, num_layers=1, adjoint=True)
    return MoleculeFlow(NodeCountDistribution.from_num_nodes([3, 4, 5]),
                        dequantizer=dequantizer, actnorm=True,
                        hidden_channels=8, num_layers=1, adjoint=False)


def join(rank: int, port: int) -> DistributedContext:
    r"""Joins the process group of the test as :obj:`rank`, one thread."""
    os.environ.update(WORLD_SIZE=str(WORLD_SIZE), RANK=str(rank),
                      LOCAL_RANK=str(rank), MASTER_ADDR='127.0.0.1',
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    return init_distributed('cpu')


def worker(rank: int, port: int, folder: str, case: str) -> None:
    context = join(rank, port)
    try:
        molecules, _, objective = CASES[case]
        model = build(case)
        if rank == 1:  # DDP must broadcast rank 0's initial parameters
            with torch.no_grad():
                for param in model.parameters():
                    param.add_(1e-2)
        torch.manual_seed(100 + rank)  # different probes and base samples
        # The shards of one dataset differ, and each rank's dataset differs
        # as well, so only averaged gradients keep the ranks in step.
        loader = shard_loader(dataset(rank, molecules), 2, context)
        fit(model, objective, loader, os.path.join(folder, 'run'),
            FitConfig(epochs=1, lr=1e-2), context=context, progress=False,
            log=lambda line: None)
        torch.save({k: v.detach() for k, v in model.state_dict().items()},
                   os.path.join(folder, f'rank{rank}.pt'))
    finally:
        shutdown(context)


@pytest.mark.parametrize('case', list(CASES))
def test_ranks_stay_in_step(tmp_path, case):
    mp.spawn(worker, args=(free_port(), str(tmp_path), case),
             nprocs=WORLD_SIZE, join=True)
    states = [torch.load(tmp_path / f'rank{r}.pt') for r in range(2)]
    initial = build(case).state_dict()
    changed = 0
    for name, value in states[0].items():
        torch.testing.assert_close(states[1][name], value, rtol=0,
                                   atol=1e-6, msg=f'{name} differs')
        changed += int(not torch.allclose(value, initial[name]))
    assert changed > 0


class LossFailsOnRankOne(FlowMatching):
    r"""Flow matching whose loss is NaN in the second step of rank 1."""
    def __init__(self, rank: int):
        super().__init__()
        self.rank, self.calls = rank, 0

    def __call__(self, model, data):
        self.calls += 1
        loss = super().__call__(model, data)
        return loss * math.nan if (self.rank, self.calls) == (1, 2) else loss


def failing_worker(rank: int, port: int, folder: str) -> None:
    context = join(rank, port)
    try:
        loader = shard_loader(dataset(rank, False), 2, context)
        runs = dict(loss=(LossFailsOnRankOne(rank), None),
                    valid=(FlowMatching(), lambda model: math.nan))
        for name, (objective, validate) in runs.items():
            try:
                fit(build('enflow-flow-matching'), objective, loader,
                    os.path.join(folder, name), FitConfig(epochs=1),
                    validate=validate, context=context, progress=False,
                    log=lambda line: None)
            except FloatingPointError as error:
                with open(os.path.join(folder, f'{name}{rank}.txt'),
                          'w') as f:
                    f.write(str(error))
    finally:
        shutdown(context)


def test_ranks_stop_together_on_nan(tmp_path):
    # A NaN loss on rank 1 and a NaN validation on rank 0 (the only one
    # that validates) must stop both ranks, not leave one waiting.
    processes = mp.spawn(failing_worker, args=(free_port(), str(tmp_path)),
                         nprocs=WORLD_SIZE, join=False)
    deadline = time.monotonic() + 300
    while not processes.join(timeout=10):  # returns as each rank ends
        if time.monotonic() > deadline:
            for process in processes.processes:
                process.terminate()
            pytest.fail('a rank did not stop')
    for rank in range(WORLD_SIZE):
        assert 'epoch 1, step 2' in (tmp_path / f'loss{rank}.txt').read_text()
        assert 'epoch 1 is NaN' in (tmp_path / f'valid{rank}.txt').read_text()


def test_single_process_context(monkeypatch):
    monkeypatch.delenv('WORLD_SIZE', raising=False)
    context = init_distributed('cpu')
    assert context == DistributedContext(0, 1, torch.device('cpu'))
    assert context.is_main and not context.distributed
    loader = shard_loader(dataset(0, False), 3, context, shuffle=False)
    assert [b.num_graphs for b in loader] == [3, 3, 2]
