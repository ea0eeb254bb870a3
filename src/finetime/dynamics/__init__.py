"""Function-space dynamics of the linearized model.

* ``_driver.solve``: the one simulation loop (a stepper, a recorder, checkpoint hooks).
* ``exact.py``: ``ExactStepper`` / ``simulate``: real training of the linearized model, batch by batch, with the
  optimizer's own function-space rule (``finetime.optim``); the default.
* ``paper.py``: ``simulate_ode`` / ``simulate_sde``: the paper's gradient flow and SDE with the effective learning rate.
* ``head.py``: ``simulate_head``: a linear head on frozen features trained in weight space by the optimizer's
  ``torch.optim`` twin (exact for any optimizer; Adam with a frozen backbone).
* ``sign.py``: ``simulate_sign_descent``: sign descent on the asymmetric SignGD kernel (Malladi et al. 2023's
  kernel view of early Adam; a baseline).
* ``closed_form.py``: ``mse_curve``: MSE loss from the kernel's spectrum.
"""

from ._driver import Recorder, Stepper, solve
from ._problem import Problem
from ._trajectory import Trajectory
from .closed_form import mse_curve, spectral_projections
from .exact import ExactStepper, resolve_plan, simulate
from .head import HeadStepper, simulate_head
from .paper import OdeStepper, SdeStepper, simulate_ode, simulate_sde
from .sign import SignStepper, simulate_sign_descent

__all__ = ["Problem", "Trajectory", "Recorder", "Stepper", "solve", "simulate", "ExactStepper", "resolve_plan",
           "simulate_head", "HeadStepper", "simulate_ode", "simulate_sde", "OdeStepper", "SdeStepper", "mse_curve",
           "spectral_projections", "SignStepper", "simulate_sign_descent"]
