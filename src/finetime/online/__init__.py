"""finetime during training: refine the prediction with the run's own losses (``Refiner``), and callbacks for
Hugging Face ``Trainer`` (``finetime.online.hf``) and Lightning (``finetime.online.lightning``)."""

from ._fit import Refined, extend_curve, fit_exponential, fit_power_law, refine_curve, warp_posterior
from .refiner import Calibration, Estimate, Refiner, ThresholdEstimate, load_calibration, refine, time_interval

__all__ = ["Refiner", "Estimate", "ThresholdEstimate", "Calibration", "load_calibration", "refine", "time_interval",
           "Refined", "refine_curve", "warp_posterior", "extend_curve", "fit_exponential", "fit_power_law"]
