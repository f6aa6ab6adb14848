r"""Small helpers shared by the layers, the flows and the data sets: graph
sizes, centring of point clouds and input validation."""
import contextlib
import math
import numbers
from typing import Any, Callable, Dict, Iterator, Optional, Type

import torch
from torch import Tensor

_checks = dict(debug=False, depth=0)


def num_graphs_of(batch: Tensor, num_graphs: Optional[int] = None) -> int:
    r"""Returns the number of graphs described by the assignment vector
    :obj:`batch` (one more than its largest entry)."""
    if num_graphs is not None:
        return num_graphs
    return int(batch.max()) + 1 if batch.numel() > 0 else 0


def graph_sizes(batch: Tensor, num_graphs: Optional[int] = None) -> Tensor:
    r"""Returns the number of nodes :math:`M_g` of every graph, shape
    :obj:`[num_graphs]`."""
    return torch.bincount(batch, minlength=num_graphs_of(batch, num_graphs))


def default_batch(num_nodes: int, device: torch.device) -> Tensor:
    r"""The assignment vector of a single graph with :obj:`num_nodes`
    nodes."""
    return torch.zeros(num_nodes, dtype=torch.long, device=device)


def scatter_sum(src: Tensor, index: Tensor, dim_size: int) -> Tensor:
    r"""Sums the rows of :obj:`src` into :obj:`dim_size` buckets given by
    :obj:`index` (native :meth:`torch.Tensor.index_add_` into fresh zeros,
    differentiable to any order)."""
    out = src.new_zeros((dim_size, ) + src.shape[1:])
    return out.index_add_(0, index, src)


def scatter_mean(src: Tensor, index: Tensor, dim_size: int) -> Tensor:
    r"""Averages the rows of :obj:`src` per bucket of :obj:`index`; empty
    buckets give zero."""
    total = scatter_sum(src, index, dim_size)
    count = torch.bincount(index, minlength=dim_size).clamp_(min=1)
    return total / count.view((-1, ) + (1, ) * (src.dim() - 1)).to(src.dtype)


def center_pos(pos: Tensor, batch: Optional[Tensor] = None,
               num_graphs: Optional[int] = None) -> Tensor:
    r"""Removes the centre of mass of every graph,

    .. math::
        \mathbf{x}_i \leftarrow \mathbf{x}_i - \frac{1}{M_g}
        \sum_{j \in g} \mathbf{x}_j,

    which is the orthogonal projection onto the zero-centre-of-mass
    subspace of dimension :math:`(M_g - 1) n`.

    Args:
        pos (torch.Tensor): Node positions of shape :obj:`[N, n]`.
        batch (torch.Tensor, optional): Graph assignment of shape :obj:`[N]`.
        num_graphs (int, optional): The number of graphs in the batch.
    """
    if batch is None:
        return pos - pos.mean(dim=0, keepdim=True)
    size = num_graphs_of(batch, num_graphs)
    return pos - scatter_mean(pos, batch, size).index_select(0, batch)


def center_pos_exact(pos: Tensor, batch: Optional[Tensor] = None,
                     num_graphs: Optional[int] = None) -> Tensor:
    r""":func:`center_pos` computed in float64, for inputs far from the
    origin: positions shifted by :math:`10^4` in float32 come out centred
    to the precision of their own scale, not of the shift."""
    return center_pos(pos.double(), batch, num_graphs).to(pos.dtype)


def check_batch_vector(batch: Tensor, num_nodes: int, name: str = 'batch'
                       ) -> None:
    r"""Raises :class:`ValueError` unless :obj:`batch` is a sorted, 1-D
    assignment vector of length :obj:`num_nodes` without empty graphs."""
    if batch.dim() != 1 or batch.numel() != num_nodes:
        raise ValueError(f"'{name}' must have shape [{num_nodes}] to match "
                         f"the number of nodes (got {list(batch.shape)})")
    if batch.dtype not in (torch.long, torch.int32, torch.int64):
        raise ValueError(f"'{name}' must hold integer graph indices "
                         f"(got dtype {batch.dtype})")
    if num_nodes == 0:
        return
    if int(batch[0]) != 0 or bool((batch.diff() < 0).any()):
        raise ValueError(f"'{name}' must be sorted and start at 0, as PyG "
                         f"batches are")
    if bool((batch.diff() > 1).any()):
        raise ValueError(f"'{name}' skips a graph index: every graph needs at "
                         f"least one node")


def _is_finite_real(value: Any) -> bool:
    r"""Whether :obj:`value` is a finite real number (Python or NumPy; not a
    boolean, NaN or inf)."""
    return not isinstance(value, bool) and \
        isinstance(value, numbers.Real) and math.isfinite(value)


def check_positive_number(value: Any, name: str) -> None:
    r"""Raises :class:`ValueError` unless :obj:`value` is a positive finite
    real number (Python or NumPy; not a boolean, NaN or inf)."""
    if not (_is_finite_real(value) and value > 0):
        raise ValueError(f"'{name}' must be a positive finite number (got "
                         f"{value!r})")


def check_positive_integer(value: Any, name: str) -> None:
    r"""Raises :class:`ValueError` unless :obj:`value` is a positive integer
    (Python or NumPy; not a boolean)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) \
            or value < 1:
        raise ValueError(f"'{name}' must be a positive integer (got "
                         f"{value!r})")


def check_num_radial(value: Any, name: str = 'num_radial',
                     allow_zero: bool = True) -> None:
    r"""Raises :class:`ValueError` unless :obj:`value` is a valid number of
    radial basis functions: an integer of at least 2 (one Gaussian has no
    spacing to set its width), or :obj:`0` (none) with
    :obj:`allow_zero`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) \
            or value < 0 or value == 1 or (value == 0 and not allow_zero):
        allowed = '0 or an integer' if allow_zero else 'an integer'
        raise ValueError(f"'{name}' must be {allowed} of at least 2 "
                         f"(got {value!r})")


def check_time(value: Any, name: str) -> float:
    r"""Returns :obj:`value` as a float if it is a time in :math:`(0, 1]`,
    the time span of the flows, and raises :class:`ValueError`
    otherwise."""
    check_positive_number(value, name)
    if value > 1:
        raise ValueError(f"'{name}' must lie in (0, 1], the time span of "
                         f"the flow (got {value!r})")
    return float(value)


def check_non_negative_number(value: Any, name: str) -> None:
    r"""Raises :class:`ValueError` unless :obj:`value` is a finite real
    number of at least zero (not a boolean, NaN or inf)."""
    if not (_is_finite_real(value) and value >= 0):
        raise ValueError(f"'{name}' must be a non-negative finite number "
                         f"(got {value!r})")


def check_finite(tensor: Tensor, name: str) -> None:
    r"""Raises :class:`ValueError` if :obj:`tensor` holds NaN or inf."""
    if not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).any(dim=-1).sum()) \
            if tensor.dim() > 1 else int((~torch.isfinite(tensor)).sum())
        raise ValueError(f"'{name}' holds non-finite values (NaN or inf) in "
                         f"{bad} row(s)")


def check_node_matrix(tensor: Tensor, num_nodes: int, width: int,
                      name: str) -> None:
    r"""Raises :class:`ValueError` unless :obj:`tensor` has shape
    :obj:`[num_nodes, width]` and is finite."""
    if tensor.dim() != 2 or tensor.size(0) != num_nodes or \
            tensor.size(1) != width:
        raise ValueError(f"'{name}' must have shape [{num_nodes}, {width}] "
                         f"(got {list(tensor.shape)})")
    check_finite(tensor, name)


def check_finite_graphs(tensor: Tensor, batch: Tensor, num_graphs: int,
                        name: str) -> None:
    r"""Raises :class:`ValueError` naming the graphs (by index in the
    batch) whose rows of the node-wise :obj:`tensor` hold NaN or inf."""
    finite = torch.isfinite(tensor).all(dim=-1)
    if bool(finite.all()):
        return
    bad = torch.unique(batch[~finite]).tolist()
    raise ValueError(f"'{name}' holds non-finite values (NaN or inf) in "
                     f"graph(s) {bad[:10]}"
                     f"{' and more' if len(bad) > 10 else ''} of "
                     f"{num_graphs}")


def set_debug_checks(enabled: bool) -> None:
    r"""With :obj:`True`, every layer checks its inputs for NaN and inf even
    inside the flows' ODE solves and flow-matching steps (each check costs a
    host-device synchronisation); by default inputs are checked once, at the
    public entry points (:meth:`ENFlow.log_prob`, :meth:`ENFlow.sample`,
    :meth:`ENFlow.encode`, :meth:`ENFlow.decode`, flow-matching inputs, or
    a layer called directly)."""
    _checks['debug'] = bool(enabled)


@contextlib.contextmanager
def inputs_checked() -> Iterator[None]:
    r"""Marks a block whose inputs were checked already, so that the layers
    inside skip their own value checks (unless :func:`set_debug_checks`)."""
    _checks['depth'] += 1
    try:
        yield
    finally:
        _checks['depth'] -= 1


def checking_values() -> bool:
    r"""Whether a layer should check its inputs' values now (never while
    :func:`torch.compile` traces: a check would break the graph)."""
    if torch.compiler.is_compiling():
        return False
    return _checks['debug'] or _checks['depth'] == 0


class Registry(Dict[str, type]):
    r"""Names of the subclasses of an extension point (dequantisers,
    objectives): :meth:`register` is a class decorator that adds a subclass
    under a name (also stored as its :obj:`name` attribute) and
    :meth:`create` builds one by name.

    Args:
        base (type): The base class every entry derives from.
        kind (str): What the entries are, for error messages.
    """
    def __init__(self, base: type, kind: str):
        super().__init__()
        self.base = base
        self.kind = kind

    def register(self, name: str) -> Callable[[Type], Type]:
        def add(cls: Type) -> Type:
            if not (isinstance(cls, type) and issubclass(cls, self.base)):
                raise TypeError(f"{cls!r} is not a {self.base.__name__} "
                                f"subclass")
            if name in self:
                raise ValueError(f"A {self.kind} named {name!r} is "
                                 f"registered already")
            cls.name = name
            self[name] = cls
            return cls
        return add

    def create(self, name: str, **kwargs: Any) -> Any:
        if name not in self:
            raise ValueError(f"Unknown {self.kind} {name!r} (expected one "
                             f"of {sorted(self)})")
        return self[name](**kwargs)


def json_safe(value: Any) -> Any:
    r"""Results as valid JSON: non-finite floats (an undefined standard
    error, a failed metric) become :obj:`None`, written as :obj:`null`,
    in nested dictionaries and lists."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
