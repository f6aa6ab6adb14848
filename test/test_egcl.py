import pytest
import torch

from torch_enf.nn import EGCL, EGNN, full_edge_index, radius_graph

from torch_enf.testing import assert_equivariant

from .conftest import mixed_batch

SIZES = [3, 5, 2, 7]

LAYER_OPTIONS = [
    dict(),
    dict(edge_inference=True, coords_norm=1.0, coords_range=3.0),
    dict(aggr='mean', coords_norm=0.5),
    dict(edge_dim=2, edge_inference=True),
]


def transform_check(model, n_dims, generator, channels, edge_dim=0,
                    graph='full', vel=False):
    r"""Checks the layer (or network) with :func:`assert_equivariant` on a
    fully connected or radius graph built from the (transformed) input;
    edge attributes are invariant functions of their node pair, so they
    follow the nodes."""
    pos, h, batch = mixed_batch(SIZES, n_dims, generator, channels)
    velocity = torch.randn(pos.shape, generator=generator,
                           dtype=torch.float64)

    def run(pos, h, batch, vel=None):
        edge_index = full_edge_index(batch) if graph == 'full' else \
            radius_graph(pos, 2.5, batch)
        source, target = edge_index
        edge_attr = None if edge_dim == 0 else \
            (h[source] * h[target])[:, :edge_dim]
        return model(h, pos, edge_index, edge_attr,
                     **({} if vel is None else dict(vel=vel)))

    kinds = ('node', 'positions') + (('vectors', ) if vel else ())
    out = assert_equivariant(run, pos, h, batch, kinds,
                             vectors=velocity if vel else None,
                             generator=generator)
    # The layer must do something for the check to mean anything.
    assert not torch.allclose(out[1], pos)
    return out


@pytest.mark.parametrize('n_dims', [2, 3])
@pytest.mark.parametrize('options', LAYER_OPTIONS)
def test_egcl_is_equivariant(n_dims, options, generator):
    conv = EGCL(4, 16, **options).double()
    # Make the coordinate update large enough to be seen.
    torch.nn.init.normal_(conv.coord_lin2.weight, std=0.5)
    transform_check(conv, n_dims, generator, 4, options.get('edge_dim', 0))


@pytest.mark.parametrize('n_dims', [2, 3])
def test_egcl_is_equivariant_on_radius_graphs(n_dims, generator):
    conv = EGCL(4, 16, 8, edge_inference=True, coords_norm=1.0).double()
    torch.nn.init.normal_(conv.coord_lin2.weight, std=0.5)
    transform_check(conv, n_dims, generator, 4, graph='radius')


def test_egcl_velocity_variant_is_equivariant(generator):
    conv = EGCL(4, 16, velocity=True, coords_norm=1.0).double()
    h, pos, vel = transform_check(conv, 3, generator, 4, vel=True)
    assert vel.shape == pos.shape


@pytest.mark.parametrize('n_dims', [2, 3])
def test_egnn_is_equivariant(n_dims, generator):
    model = EGNN(4, 16, num_layers=3, out_channels=3, edge_inference=True,
                 coords_norm=1.0, coords_range=10.0).double()
    for conv in model.convs:
        torch.nn.init.normal_(conv.coord_lin2.weight, std=0.5)
    transform_check(model, n_dims, generator, 4)


def test_mean_aggregation_is_sum_over_m_minus_one(generator):
    pos, h, batch = mixed_batch([4, 4], 3, generator, 2)
    edge_index = full_edge_index(batch)
    add = EGCL(2, 8, aggr='add').double()
    mean = EGCL(2, 8, aggr='mean').double()
    mean.load_state_dict(add.state_dict())
    shift_add = add(h, pos, edge_index)[1] - pos
    shift_mean = mean(h, pos, edge_index)[1] - pos
    torch.testing.assert_close(shift_mean, shift_add / 3)


def test_gradients_are_finite_for_coincident_points():
    conv = EGCL(2, 8, coords_norm=1.0, coords_range=2.0)
    pos = torch.zeros(3, 3, requires_grad=True)
    h = torch.randn(3, 2)
    edge_index = full_edge_index(torch.zeros(3, dtype=torch.long))
    h_out, pos_out = conv(h, pos, edge_index)
    (h_out.sum() + pos_out.pow(2).sum()).backward()
    assert torch.isfinite(pos.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in conv.parameters()
               if p.grad is not None)


def test_reset_parameters_reinitialises_every_parameter():
    conv = EGCL(3, 8, edge_inference=True, velocity=True)
    torch.manual_seed(1)
    conv.reset_parameters()
    first = [p.detach().clone() for p in conv.parameters()]
    with torch.no_grad():
        for p in conv.parameters():
            p.fill_(7.0)
    torch.manual_seed(1)
    conv.reset_parameters()
    for before, after in zip(first, conv.parameters()):
        torch.testing.assert_close(after, before)
        assert not bool((after == 7.0).all())
    # The coordinate head starts small (Xavier gain 1e-3).
    assert float(conv.coord_lin2.weight.abs().max()) < 1e-3


def test_egcl_output_channels_and_repr():
    conv = EGCL(3, 5, hidden_channels=8)
    h, pos = torch.randn(4, 3), torch.randn(4, 2)
    edge_index = full_edge_index(torch.zeros(4, dtype=torch.long))
    h_out, pos_out = conv(h, pos, edge_index)
    assert h_out.shape == (4, 5) and pos_out.shape == (4, 2)
    assert 'EGCL(3, 5' in repr(conv)


@pytest.mark.parametrize('call, message', [
    (lambda c, h, p, e: c(h[:, :2], p, e), "'h'"),
    (lambda c, h, p, e: c(h, p[:3], e), "'pos'"),
    (lambda c, h, p, e: c(h, p, e[0]), "'edge_index'"),
    (lambda c, h, p, e: c(h, p, e, torch.ones(e.size(1), 1)), 'edge_dim'),
    (lambda c, h, p, e: c(h, p.index_fill(0, torch.tensor([1]),
                                          float('nan')), e), 'non-finite'),
    (lambda c, h, p, e: c(h, p, e, vel=p), 'velocity'),
])
def test_egcl_bad_input(call, message):
    conv = EGCL(3, 8)
    h, pos = torch.randn(4, 3), torch.randn(4, 2)
    edge_index = full_edge_index(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=message):
        call(conv, h, pos, edge_index)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match='aggr'):
        EGCL(2, 4, aggr='max')
    with pytest.raises(ValueError, match='coords_norm'):
        EGCL(2, 4, coords_norm=0.0)
    with pytest.raises(ValueError, match='num_layers'):
        EGNN(2, 4, num_layers=0)
    for args, message in (((8, 16, -1), "'hidden_channels' must be an "
                                        "integer of at least 1 .got -1."),
                          ((8, 16, 0), "'hidden_channels'"),
                          ((-3, 16), "'in_channels'"),
                          ((8, -2), "'out_channels'"),
                          ((8, 16, 16.0), "'hidden_channels'"),
                          ((8, 16, None, -1), "'edge_dim'")):
        with pytest.raises(ValueError, match=message):
            EGCL(*args)


def test_overflowing_positions_are_refused_not_turned_into_nan():
    torch.manual_seed(0)
    conv = EGCL(8, 8, hidden_channels=16)
    h, pos = torch.randn(5, 8), torch.randn(5, 3)
    edge_index = full_edge_index(torch.zeros(5, dtype=torch.long))
    _, out = conv(h, pos * 1e12, edge_index)  # large, but representable
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match=r"EGCL computed non-finite "
                       r"\['pos'\] from finite inputs: squared distances up "
                       r"to [0-9.]+e\+31 overflow torch.float32"):
        conv(h, pos * 1e15, edge_index)


def test_egnn_positions_only_output():
    model = EGNN(1, 8, num_layers=2, out_channels=0)
    h_out, pos_out = model(torch.ones(5, 1), torch.randn(5, 3),
                           full_edge_index(torch.zeros(5, dtype=torch.long)))
    assert h_out.shape == (5, 0) and pos_out.shape == (5, 3)


def test_value_checks_at_entry_points_only(monkeypatch):
    from torch_enf.utils import inputs_checked, set_debug_checks
    conv = EGCL(4, 8)
    h, pos = torch.randn(5, 4), torch.randn(5, 3)
    edge_index = torch.tensor([[0, 1, 2], [1, 2, 3]])
    with pytest.raises(ValueError, match="'h' holds non-finite"):
        conv(h.index_fill(0, torch.tensor([2]), float('nan')), pos,
             edge_index)
    with inputs_checked():  # inside a checked solve: no synchronising check
        out, _ = conv(h.index_fill(0, torch.tensor([2]), float('nan')), pos,
                      edge_index)
        assert not torch.isfinite(out).all()
        set_debug_checks(True)
        try:
            with pytest.raises(ValueError, match="'pos' holds non-finite"):
                conv(h, pos.index_fill(0, torch.tensor([1]), float('inf')),
                     edge_index)
        finally:
            set_debug_checks(False)


def test_feature_dtype_mismatch_is_named():
    conv = EGCL(4, 8)
    pos, edge_index = torch.randn(3, 3), torch.tensor([[0, 1], [1, 2]])
    for h in (torch.randn(3, 4).half(), torch.ones(3, 4, dtype=torch.long)):
        with pytest.raises(ValueError, match=f"'h' has dtype {h.dtype}"):
            conv(h, pos, edge_index)


def test_egcl_follows_pyg_channel_convention():
    # PyG convolutions are Conv(in_channels, out_channels): EGCL(8, 16)
    # returns 16 features, with messages as wide as the output by default.
    conv = EGCL(8, 16)
    h, pos = torch.randn(5, 8), torch.randn(5, 3)
    edge_index = full_edge_index(torch.zeros(5, dtype=torch.long))
    h_out, _ = conv(h, pos, edge_index)
    assert h_out.shape == (5, 16) and conv.hidden_channels == 16
    # Equal widths keep the residual: a zero phi_h returns the input.
    same = EGCL(8, 8, hidden_channels=32)
    torch.nn.init.zeros_(same.node_mlp[-1].weight)
    torch.nn.init.zeros_(same.node_mlp[-1].bias)
    torch.testing.assert_close(same(h, pos, edge_index)[0], h)


def test_lazy_in_channels_match_an_eager_layer():
    h, pos = torch.randn(6, 5), torch.randn(6, 3)
    edge_index = full_edge_index(torch.zeros(6, dtype=torch.long))
    vel = torch.randn(6, 3)
    eager = EGCL(5, 7, edge_inference=True, velocity=True)
    lazy = EGCL(-1, 7, edge_inference=True, velocity=True)
    assert lazy.edge_lin1 is None and 'EGCL(-1, 7' in repr(lazy)
    # Loading weights materialises a lazy layer ...
    lazy.load_state_dict(eager.state_dict())
    assert lazy.in_channels == 5
    for out, ref in zip(lazy(h, pos, edge_index, vel=vel),
                        eager(h, pos, edge_index, vel=vel)):
        torch.testing.assert_close(out, ref)
    # ... and so does the first batch, in the layer's dtype, with the
    # parameters in the order of an eager layer.
    fresh = EGCL(-1, 7, edge_inference=True, velocity=True).double()
    h_out, _, _ = fresh(h.double(), pos.double(), edge_index,
                        vel=vel.double())
    assert h_out.dtype == torch.float64 and fresh.in_channels == 5
    assert [name for name, _ in fresh.named_parameters()] == \
        [name for name, _ in eager.named_parameters()]
    assert fresh.node_mlp[0].weight.shape == (7, 5 + 7)


def test_invariant_layer_keeps_positions_and_matches_the_full_layer():
    h, pos = torch.randn(6, 4), torch.randn(6, 3)
    edge_index = full_edge_index(torch.tensor([0, 0, 0, 1, 1, 1]))
    full = EGCL(4, 8, edge_inference=True)
    invariant = EGCL(4, 8, edge_inference=True, update_pos=False)
    assert invariant.coord_lin1 is None and invariant.coord_lin2 is None
    state = {name: value for name, value in full.state_dict().items()
             if not name.startswith('coord_lin')}
    invariant.load_state_dict(state)
    h_out, pos_out = invariant(h, pos, edge_index)
    assert pos_out is pos
    torch.testing.assert_close(h_out, full(h, pos, edge_index)[0])
    with pytest.raises(ValueError, match="'velocity=True' needs"):
        EGCL(4, 8, velocity=True, update_pos=False)


def test_invariant_layer_is_invariant(generator):
    conv = EGCL(4, 8, edge_inference=True, update_pos=False).double()
    pos, h, batch = mixed_batch(SIZES, 3, generator, 4)
    assert_equivariant(lambda p, x, b: conv(x, p, full_edge_index(b))[0],
                       pos, h, batch, ('node', ), generator=generator)
