r"""Radial basis features of interatomic distances."""
from torch import Tensor
from torch_geometric.nn.models.schnet import GaussianSmearing

from torch_enf.utils import check_num_radial, check_positive_number


class RadialBasis(GaussianSmearing):
    r"""Gaussian features of the distance of every edge, computed from its
    squared distance :math:`d_{ij}^2` (what an :class:`EGCL` already has),

    .. math::
        \mathbf{e}_{ij} = \left(\exp\left(-\frac{(d_{ij} - \mu_k)^2}
        {2\delta^2}\right)\right)_{k=1}^{K},

    with centres :math:`\mu_k` evenly spaced on :math:`[0, r_c]` and the
    width :math:`\delta` their spacing: SchNet's distance features (PyG's
    :class:`~torch_geometric.nn.models.schnet.GaussianSmearing`, whose
    buffer :obj:`offset` holds the centres). They let a layer resolve
    differences of distance far finer than the raw :math:`d_{ij}^2` does.
    The distance is taken from :math:`\max(d_{ij}^2, 10^{-12})`, so that
    the gradient stays finite where two nodes coincide.

    Args:
        cutoff (float): The last centre :math:`r_c`, in the units of the
            positions.
        num_radial (int): The number :math:`K \geq 2` of Gaussians.

    Shapes:
        - **input:** squared distances :math:`(|\mathcal{E}|)` or
          :math:`(|\mathcal{E}|, 1)`
        - **output:** features :math:`(|\mathcal{E}|, K)`
    """
    def __init__(self, cutoff: float, num_radial: int) -> None:
        check_positive_number(cutoff, 'radial_cutoff')
        check_num_radial(num_radial, allow_zero=False)
        super().__init__(0.0, cutoff, num_radial)
        self.cutoff = cutoff
        self.num_radial = num_radial

    def forward(self, dist2: Tensor) -> Tensor:
        return super().forward(dist2.clamp_min(1e-12).sqrt())

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(cutoff={self.cutoff}, '
                f'num_radial={self.num_radial})')

