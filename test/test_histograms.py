import math

import numpy as np
import pytest
import torch

from torch_enf.metrics import histogram_js_divergence, pairwise_distances


def brute_force_distances(pos, batch):
    out = []
    for g in batch.unique(sorted=True).tolist():
        nodes = (batch == g).nonzero().view(-1).tolist()
        for a, i in enumerate(nodes):
            for j in nodes[a + 1:]:
                out.append(float((pos[i] - pos[j]).norm()))
    return torch.tensor(out, dtype=torch.double)


def test_pairwise_distances_mixed_size_graphs():
    gen = torch.Generator().manual_seed(0)
    sizes = [1, 4, 2, 7, 3]
    batch = torch.cat([torch.full((n, ), g) for g, n in enumerate(sizes)])
    pos = torch.randn(batch.numel(), 3, generator=gen, dtype=torch.double)
    dist = pairwise_distances(pos, batch)
    assert dist.shape == (sum(n * (n - 1) // 2 for n in sizes), )
    assert torch.allclose(dist, brute_force_distances(pos, batch))


def test_pairwise_distances_unsorted_batch_and_no_batch():
    gen = torch.Generator().manual_seed(1)
    batch = torch.tensor([1, 0, 1, 0, 1, 2, 2])
    pos = torch.randn(7, 2, generator=gen)
    dist = pairwise_distances(pos, batch)
    ref = brute_force_distances(pos, batch).float()
    assert torch.allclose(dist, ref)

    single = pairwise_distances(pos)
    assert torch.allclose(single, brute_force_distances(
        pos, torch.zeros(7, dtype=torch.long)).float())


def test_pairwise_distances_bad_shapes():
    with pytest.raises(ValueError, match='pos'):
        pairwise_distances(torch.randn(3))
    with pytest.raises(ValueError, match='batch'):
        pairwise_distances(torch.randn(3, 2), torch.zeros(4, dtype=torch.long))


def test_js_identical_samples_is_zero():
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    assert histogram_js_divergence(x, x.clone(), bins=30) == pytest.approx(
        0.0, abs=1e-12)


def test_js_disjoint_supports_is_ln2():
    a = np.random.default_rng(0).uniform(0, 1, 500)
    b = np.random.default_rng(1).uniform(2, 3, 700)
    js = histogram_js_divergence(a, b, bins=10, range=(0.0, 3.0))
    assert js == pytest.approx(math.log(2))


def test_js_symmetric_bounded_and_known_value():
    rng = np.random.default_rng(2)
    a, b = rng.normal(0, 1, 2000), rng.normal(0.5, 1.2, 3000)
    js_ab = histogram_js_divergence(a, b, bins=40, range=(-5, 5))
    js_ba = histogram_js_divergence(b, a, bins=40, range=(-5, 5))
    assert js_ab == pytest.approx(js_ba)
    assert 0 < js_ab < math.log(2)

    # Two bins holding (1, 0) and (1/2, 1/2): hand-computed value.
    p_half = 0.5 * math.log(1 / 0.75)
    q_half = 0.5 * (0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25))
    js = histogram_js_divergence([0.2], [0.2, 0.7], bins=2, range=(0, 1))
    assert js == pytest.approx(p_half + q_half)


def test_js_counts_out_of_range_samples():
    # All mass outside the range, on opposite sides: still fully disjoint.
    js = histogram_js_divergence([-5.0, -6.0], [9.0], bins=5, range=(0, 1))
    assert js == pytest.approx(math.log(2))


def test_js_errors():
    with pytest.raises(ValueError, match='empty'):
        histogram_js_divergence([], [1.0])
    with pytest.raises(ValueError, match='non-finite'):
        histogram_js_divergence([1.0, float('nan')], [1.0])
    with pytest.raises(ValueError, match='non-finite'):
        histogram_js_divergence([1.0], [float('inf')])
    with pytest.raises(ValueError, match='range'):
        histogram_js_divergence([1.0], [1.0], range=(1.0, 0.0))
