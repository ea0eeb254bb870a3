"""Empirical neural tangent kernels: the engine (``engine.py``), its per-parameter routes (``routes/``, a registry),
the projections, and the brute-force reference."""

from ._kernel import Kernel, fingerprint_data, fingerprint_model
from ._scales import GradientMoments, Scale, factored_inverse_root_scale, inverse_root_scale, parameter_preconditioner
from .engine import (DEFAULT_PROJECTION_DIM, available_memory, compute_kernel, gradient_moments,
                     jacobian_vector_product, jacobian_weight_product, summed_outputs_kernel)
from .projection import KernelMethod
from .reference import brute_force_ntk, jacobian, jacobian_loop, sign_gradient_kernel

__all__ = [
    "Kernel",
    "KernelMethod",
    "compute_kernel",
    "summed_outputs_kernel",
    "gradient_moments",
    "GradientMoments",
    "Scale",
    "inverse_root_scale",
    "factored_inverse_root_scale",
    "parameter_preconditioner",
    "jacobian_weight_product", "jacobian_vector_product",
    "brute_force_ntk",
    "jacobian",
    "jacobian_loop",
    "sign_gradient_kernel",
    "fingerprint_model",
    "fingerprint_data",
    "available_memory",
    "DEFAULT_PROJECTION_DIM",
]
