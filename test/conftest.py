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
