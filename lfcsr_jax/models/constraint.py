"""T, the transform of the PD-ADMM equality constraint T(Y) = T(Y') (docs/design.md section 6)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from lfcsr_jax.models import wavelets


def constraint_transform(x_BxHxWx3: jax.Array, config: ml_collections.ConfigDict) -> jax.Array:
    """T of the equality constraint T(Y) = T(Y'), in float32 (config.admm band and lowpass)."""
    x = jnp.asarray(x_BxHxWx3, jnp.float32)
    if config.admm.constrained_band == "low":
        return wavelets.lowpass(x, config.admm.lowpass)
    if config.admm.constrained_band == "high":
        return wavelets.highpass(x, config.admm.lowpass)
    raise ValueError(
        f"config.admm.constrained_band: unknown value {config.admm.constrained_band!r}"
    )

