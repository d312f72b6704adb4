"""T, the transform of the PD-ADMM equality constraint T(Y) = T(Y') (docs/design.md section 6)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from lfcsr_jax.models import wavelets


def band_transform(x_BxHxWx3: jax.Array, band: str, lowpass: str) -> jax.Array:
    """T in float32: the `lowpass` ('haar' or 'gaussian') low band of x, or its high bands when
    `band` is 'high'."""
    x = jnp.asarray(x_BxHxWx3, jnp.float32)
    if band == "low":
        return wavelets.lowpass(x, lowpass)
    if band == "high":
        return wavelets.highpass(x, lowpass)
    raise ValueError(f"config.admm.constrained_band: unknown value {band!r}")


def constraint_transform(x_BxHxWx3: jax.Array, config: ml_collections.ConfigDict) -> jax.Array:
    """T of the equality constraint T(Y) = T(Y'), in float32 (config.admm band and lowpass)."""
    return band_transform(x_BxHxWx3, config.admm.constrained_band, config.admm.lowpass)
