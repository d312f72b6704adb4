"""Orthonormal Haar wavelets on NHWC arrays, and the low-pass operators of the LF constraint.

Band convention (REFERENCE.md section 1): for each 2x2 block with a = top-left,
b = bottom-left, c = top-right, d = bottom-right,
  LL = (a+b+c+d)/2, HL = (-a-b+c+d)/2, LH = (-a+b-c+d)/2, HH = (a-b-c+d)/2,
stacked band-major on channels: [LL(C), HL(C), LH(C), HH(C)].
The transform is a reshape into 2x2 blocks and one einsum with the 4x2x2 filter bank, which XLA
lowers to a cheap transpose-and-multiply on every backend (no convolution needed).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

BANDS = ("LL", "HL", "LH", "HH")

# HAAR_FILTERS_KxIxJ[k, i, j]: weight of block pixel (row i, column j) in band k.
# a = (0,0), b = (1,0), c = (0,1), d = (1,1).
HAAR_FILTERS_KxIxJ = 0.5 * np.array(
    [
        [[1, 1], [1, 1]],  # LL
        [[-1, 1], [-1, 1]],  # HL: right column minus left column
        [[-1, -1], [1, 1]],  # LH: bottom row minus top row
        [[1, -1], [-1, 1]],  # HH: diagonal
    ],
    dtype=np.float32,
)


def _check_even(x: jax.Array, what: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"{what}: expected an NHWC array, got shape {x.shape}")
    height, width = x.shape[1], x.shape[2]
    if height % 2 or width % 2:
        raise ValueError(
            f"{what}: height and width must be even for a Haar level, got {height}x{width}"
        )


def _haar_dwt_once(x_BxHxWxC: jax.Array) -> jax.Array:
    _check_even(x_BxHxWxC, "haar_dwt")
    b, h, w, c = x_BxHxWxC.shape
    blocks = x_BxHxWxC.reshape(b, h // 2, 2, w // 2, 2, c)
    filters = jnp.asarray(HAAR_FILTERS_KxIxJ, dtype=x_BxHxWxC.dtype)
    bands_BxhxwxKxC = jnp.einsum("byixjc,kij->byxkc", blocks, filters)
    return bands_BxhxwxKxC.reshape(b, h // 2, w // 2, 4 * c)


def haar_dwt(x_BxHxWxC: jax.Array, levels: int = 1) -> jax.Array:
    """Haar analysis. One level gives (B, H/2, W/2, 4C), band-major [LL, HL, LH, HH].

    With levels > 1 the LL band is decomposed again; the result is a list of full band stacks,
    deepest level first: [level-n bands, ..., level-1 bands] (`haar_idwt_pyramid` inverts it).
    """
    if levels < 1:
        raise ValueError(f"haar_dwt: levels must be >= 1, got {levels}")
    if levels == 1:
        return _haar_dwt_once(x_BxHxWxC)
    pyramid = []
    current = x_BxHxWxC
    channels = x_BxHxWxC.shape[-1]
    for _ in range(levels):
        bands = _haar_dwt_once(current)
        pyramid.append(bands)
        current = bands[..., :channels]
    return pyramid[::-1]


def haar_idwt(bands_BxhxwxK: jax.Array) -> jax.Array:
    """Inverse of one Haar level: (B, h, w, 4C) band-major -> (B, 2h, 2w, C). Exact."""
    if bands_BxhxwxK.ndim != 4 or bands_BxhxwxK.shape[-1] % 4:
        raise ValueError(
            f"haar_idwt: expected NHWC with 4*C band-major channels, got {bands_BxhxwxK.shape}"
        )
    b, h, w, k = bands_BxhxwxK.shape
    c = k // 4
    bands = bands_BxhxwxK.reshape(b, h, w, 4, c)
    filters = jnp.asarray(HAAR_FILTERS_KxIxJ, dtype=bands_BxhxwxK.dtype)
    # The filter bank is orthonormal, so the synthesis is its transpose.
    blocks = jnp.einsum("byxkc,kij->byixjc", bands, filters)
    return blocks.reshape(b, 2 * h, 2 * w, c)


def haar_idwt_pyramid(pyramid: list[jax.Array]) -> jax.Array:
    """Inverse of `haar_dwt(x, levels>1)`: rebuilds each LL from the deeper level."""
    current = haar_idwt(pyramid[0])
    for bands in pyramid[1:]:
        channels = bands.shape[-1] // 4
        current = haar_idwt(jnp.concatenate([current, bands[..., channels:]], axis=-1))
    return current


def haar_ll(x_BxHxWxC: jax.Array, levels: int = 1) -> jax.Array:
    """The LL band after `levels` levels: 2**levels x the mean of each 2**levels block."""
    current = x_BxHxWxC
    channels = x_BxHxWxC.shape[-1]
    for _ in range(levels):
        current = _haar_dwt_once(current)[..., :channels]
    return current


def haar_high_bands(x_BxHxWxC: jax.Array) -> jax.Array:
    """One-level [HL, LH, HH] bands, (B, H/2, W/2, 3C): what the P-O ablation constrains."""
    channels = x_BxHxWxC.shape[-1]
    return _haar_dwt_once(x_BxHxWxC)[..., channels:]


@functools.lru_cache(maxsize=8)
def gaussian_kernel_1d(size: int = 21, sigma: float = 3.0) -> np.ndarray:
    """Normalised 1-D Gaussian taps; the 2-D 21x21 kernel of the paper is its outer product."""
    if size % 2 != 1:
        raise ValueError(f"gaussian kernel size must be odd, got {size}")
    offsets = np.arange(size, dtype=np.float64) - size // 2
    taps = np.exp(-(offsets**2) / (2.0 * sigma**2))
    return (taps / taps.sum()).astype(np.float32)


def gaussian_blur(x_BxHxWxC: jax.Array, size: int = 21, sigma: float = 3.0) -> jax.Array:
    """Separable Gaussian blur with reflect padding, same size output (paper Sec. 4.3 ablation)."""
    if x_BxHxWxC.ndim != 4:
        raise ValueError(f"gaussian_blur: expected NHWC, got shape {x_BxHxWxC.shape}")
    taps = jnp.asarray(gaussian_kernel_1d(size, sigma), dtype=x_BxHxWxC.dtype)
    radius = size // 2
    padded = jnp.pad(
        x_BxHxWxC, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="reflect"
    )
    height, width = x_BxHxWxC.shape[1], x_BxHxWxC.shape[2]
    rows = sum(taps[i] * padded[:, i : i + height, :, :] for i in range(size))
    return sum(taps[i] * rows[:, :, i : i + width, :] for i in range(size))


def lowpass(x_BxHxWxC: jax.Array, kind: str = "haar") -> jax.Array:
    """T_LF of the paper: one-level Haar LL at half resolution ('haar') or a Gaussian blur."""
    if kind == "haar":
        return haar_ll(x_BxHxWxC, levels=1)
    if kind == "gaussian":
        return gaussian_blur(x_BxHxWxC)
    raise ValueError(f"lowpass: unknown kind {kind!r}; expected 'haar' or 'gaussian'")


def highpass(x_BxHxWxC: jax.Array, kind: str = "haar") -> jax.Array:
    """The complement of `lowpass`: Haar [HL, LH, HH] bands, or x minus its Gaussian blur."""
    if kind == "haar":
        return haar_high_bands(x_BxHxWxC)
    if kind == "gaussian":
        return x_BxHxWxC - gaussian_blur(x_BxHxWxC)
    raise ValueError(f"highpass: unknown kind {kind!r}; expected 'haar' or 'gaussian'")
