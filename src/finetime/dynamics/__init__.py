"""Function-space dynamics of the linearized network.

* ``simulate`` (``exact.py``): real SGD on the linearized model, batch by batch (default predictor).
* ``simulate_ode`` / ``simulate_sde`` (``paper.py``): the paper's gradient flow and SDE with the effective learning rate.
* ``mse_curve`` (``closed_form.py``): MSE loss from the kernel's spectrum.
"""

from ._problem import Problem
from ._trajectory import Trajectory
from .closed_form import mse_curve, spectral_projections
from .exact import simulate
from .paper import simulate_ode, simulate_sde

__all__ = ["Problem", "Trajectory", "simulate", "simulate_ode", "simulate_sde", "mse_curve", "spectral_projections"]
