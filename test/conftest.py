import math
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1] / '..' / 'shared' / 'data'

# The tests work on tiny tensors, for which intra-op threads only add
# synchronisation; on a shared machine they can slow the suite by orders of
# magnitude.
torch.set_num_threads(1)


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(12345)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope='session')
def alanine_trajectory(tmp_path_factory):
    r"""A short MD trajectory of alanine dipeptide (60 frames; needs
    OpenMM)."""
    from torch_enf.systems.md import simulate_alanine_dipeptide
    path = str(tmp_path_factory.mktemp('md') / 'short.npz')
    simulate_alanine_dipeptide(num_frames=60, stride=50,
                               equilibration_steps=200, path=path,
                               progress=False)
    return path


def mixed_batch(sizes, n_dims, generator, channels=0, scale=1.5):
    r"""Positions (and features) of a batch of graphs of the given sizes."""
    batch = torch.repeat_interleave(torch.arange(len(sizes)),
                                    torch.tensor(sizes))
    pos = scale * torch.randn(batch.numel(), n_dims, generator=generator,
                              dtype=torch.float64)
    h = torch.randn(batch.numel(), channels, generator=generator,
                    dtype=torch.float64)
    return pos, h, batch


LOG_2PI = math.log(2 * math.pi)
