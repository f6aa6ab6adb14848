import math

import pytest
import torch
from torch_geometric.data import Data

from torch_enf.flows import NodeCountDistribution


def test_log_prob_matches_the_histogram():
    dist = NodeCountDistribution.from_num_nodes([3, 3, 5, 3])
    expected = torch.tensor([math.log(0.75), math.log(0.25)])
    torch.testing.assert_close(dist.log_prob(torch.tensor([3, 5])), expected)
    assert dist.max_nodes == 5


def test_unseen_count_raises_unless_smoothed():
    with pytest.raises(ValueError, match='Node count 4 has zero'):
        NodeCountDistribution.from_num_nodes([3, 5]).log_prob(
            torch.tensor([3, 4]))
    with pytest.raises(ValueError, match='Node count 9'):
        NodeCountDistribution.from_num_nodes([3, 5]).log_prob(
            torch.tensor(9))
    smoothed = NodeCountDistribution.from_num_nodes([3, 5], smoothing=1.0)
    # counts 1..5 are [0, 0, 1, 0, 1] + 1 -> total 7
    torch.testing.assert_close(smoothed.log_prob(torch.tensor([4, 3])),
                               torch.tensor([math.log(1 / 7),
                                             math.log(2 / 7)]))


def test_sample_follows_the_distribution_and_generator():
    dist = NodeCountDistribution(torch.tensor([0., 1., 0., 3.]))
    samples = dist.sample(20000, generator=torch.Generator().manual_seed(0))
    assert samples.dtype == torch.long and samples.shape == (20000, )
    assert set(samples.unique().tolist()) == {1, 3}
    assert abs((samples == 3).float().mean().item() - 0.75) < 0.02
    again = dist.sample(20000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(samples, again)


def test_from_dataset_and_buffer_in_state_dict():
    dataset = [Data(pos=torch.randn(n, 3)) for n in (2, 2, 4)]
    dist = NodeCountDistribution.from_dataset(dataset)
    assert 'probs' in dist.state_dict()
    torch.testing.assert_close(dist.probs,
                               torch.tensor([0., 0., 2 / 3, 0., 1 / 3]))


@pytest.mark.parametrize('histogram, message', [
    (torch.tensor([[1., 2.]]), 'vector'),
    (torch.tensor([0., -1., 2.]), 'non-negative'),
    (torch.tensor([1., 2.]), 'without nodes'),
    (torch.tensor([0., 0.]), 'empty'),
])
def test_bad_histograms(histogram, message):
    with pytest.raises(ValueError, match=message):
        NodeCountDistribution(histogram)


def test_bad_num_nodes():
    with pytest.raises(ValueError, match='positive'):
        NodeCountDistribution.from_num_nodes([0, 3])
    with pytest.raises(ValueError, match='integers'):
        NodeCountDistribution.from_num_nodes([3]).log_prob(
            torch.tensor([2.5]))
