"""Kernel routes: one file per way a parameter's gradient enters ``Theta``, registered by name in ``ROUTES``.

* ``materialize``: exact per-sample gradients stored as features.
* ``ghost``: exact products of factors, for linear maps over few positions.
* ``kron``: Kronecker-factored Gaussian sketch into a shared ``k``-dimensional space.
* ``gaussian`` / ``sparse``: the paper's dense Gaussian / very sparse projections of per-sample gradients.
"""

from ._base import ROUTES, ParamShape, Route, Stores, flat_gradient, register_route
from . import materialize, ghost, kron, gaussian, sparse  # noqa: F401,E402  (registration, in this order)

__all__ = ["ROUTES", "ParamShape", "Route", "Stores", "flat_gradient", "register_route"]
