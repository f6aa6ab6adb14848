r"""The symmetry checker of torch_enf.testing catches what it should."""
import pytest
import torch

from torch_enf.nn import EGCL, full_edge_index
from torch_enf.testing import (assert_equivariant, permutation_within_graphs,
                               random_orthogonal)
from torch_enf.utils import center_pos

BATCH = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2])


def test_helpers(generator):
    for reflect in (True, False):
        q = random_orthogonal(3, generator, reflect)
        torch.testing.assert_close(q @ q.t(), torch.eye(3, dtype=q.dtype))
        assert float(torch.det(q)) == pytest.approx(-1 if reflect else 1)
    perm = permutation_within_graphs(BATCH, generator)
    assert torch.equal(BATCH[perm], BATCH)
    assert torch.equal(perm.sort().values, torch.arange(9))


def test_accepts_equivariant_and_rejects_broken_functions(generator):
    pos = torch.randn(9, 3, generator=generator, dtype=torch.float64)
    h = torch.randn(9, 4, generator=generator, dtype=torch.float64)
    conv = EGCL(4, 8, coords_norm=1.0).double()
    torch.nn.init.normal_(conv.coord_lin2.weight, std=0.5)

    def layer(pos, h, batch):
        return conv(h, pos, full_edge_index(batch))

    assert_equivariant(layer, pos, h, BATCH, ('node', 'positions'),
                       generator=generator)
    assert_equivariant(lambda pos, h, batch: center_pos(pos, batch), pos,
                       None, BATCH, ('vectors', ), generator=generator)
    with pytest.raises(AssertionError, match=r'output 1 \(positions\)'):
        assert_equivariant(lambda pos, h, batch: (h, pos.abs()), pos, h,
                           BATCH, ('node', 'positions'), generator=generator)
    with pytest.raises(AssertionError, match=r'output 0 \(node\)'):
        assert_equivariant(lambda pos, h, batch: pos[:, :1], pos, h, BATCH,
                           ('node', ), generator=generator)
    # Translation-dependent but rotation-equivariant: caught only when
    # translating.
    assert_equivariant(lambda pos, h, batch: pos * 2, pos, None, BATCH,
                       ('vectors', ), generator=generator, translate=False)
    with pytest.raises(AssertionError):
        assert_equivariant(lambda pos, h, batch: pos * 2, pos, None, BATCH,
                           ('vectors', ), generator=generator)
    with pytest.raises(ValueError, match='Unknown output kinds'):
        assert_equivariant(layer, pos, h, BATCH, ('scalar', ))
