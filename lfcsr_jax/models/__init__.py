"""Networks of LFc-SR: the two generator stages (generator.py) and their blocks (layers.py)."""

from lfcsr_jax.models.generator import (
    HAN,
    LFcSR,
    ResClique,
    build_lfcsr,
    build_objective,
    build_perceptual,
    compute_dtype,
    count_params,
    init_params,
)

__all__ = [
    "HAN",
    "LFcSR",
    "ResClique",
    "build_lfcsr",
    "build_objective",
    "build_perceptual",
    "compute_dtype",
    "count_params",
    "init_params",
]
