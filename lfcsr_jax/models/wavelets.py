"""Orthonormal Haar wavelets on NHWC arrays, and the low-pass operators of the LF constraint.

Band convention (docs/design.md section 1): for each 2x2 block with a = top-left,
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

# HAAR_FILTERS_KxIxJ[k, i, j]: weight of block pixel (row i, column j) in band k (K = 4 bands).
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


def haar_dwt(x_BxHxWxC: jax.Array) -> jax.Array:
    """One Haar analysis level: (B, H, W, C) -> (B, H/2, W/2, 4C), band-major [LL, HL, LH, HH]."""
    _check_even(x_BxHxWxC, "haar_dwt")
    b, height, width, c = x_BxHxWxC.shape
    blocks = x_BxHxWxC.reshape(b, height // 2, 2, width // 2, 2, c)
    filters = jnp.asarray(HAAR_FILTERS_KxIxJ, dtype=x_BxHxWxC.dtype)
    bands_BxH2xW2xKxC = jnp.einsum("byixjc,kij->byxkc", blocks, filters)
    return bands_BxH2xW2xKxC.reshape(b, height // 2, width // 2, 4 * c)


def haar_dwt_pyramid(x_BxHxWxC: jax.Array, levels: int) -> list[jax.Array]:
    """`levels` Haar levels, each decomposing the previous LL band: the full band stacks,
    deepest level first [(B, H/2**n, W/2**n, 4C), ..., (B, H/2, W/2, 4C)]
    (`haar_idwt_pyramid` inverts it)."""
    if levels < 1:
        raise ValueError(f"haar_dwt_pyramid: levels must be >= 1, got {levels}")
    pyramid = []
    current = x_BxHxWxC
    channels = x_BxHxWxC.shape[-1]
    for _ in range(levels):
        bands = haar_dwt(current)
        pyramid.append(bands)
        current = bands[..., :channels]
    return pyramid[::-1]


def haar_idwt(bands_BxH2xW2xKC: jax.Array) -> jax.Array:
    """Inverse of one Haar level: (B, H/2, W/2, 4C) band-major -> (B, H, W, C). Exact."""
    if bands_BxH2xW2xKC.ndim != 4 or bands_BxH2xW2xKC.shape[-1] % 4:
        raise ValueError(
            f"haar_idwt: expected NHWC with 4*C band-major channels, got {bands_BxH2xW2xKC.shape}"
        )
    b, half_height, half_width, kc = bands_BxH2xW2xKC.shape
    c = kc // 4
    bands_BxH2xW2xKxC = bands_BxH2xW2xKC.reshape(b, half_height, half_width, 4, c)
    filters = jnp.asarray(HAAR_FILTERS_KxIxJ, dtype=bands_BxH2xW2xKC.dtype)
    # The filter bank is orthonormal, so the synthesis is its transpose.
    blocks = jnp.einsum("byxkc,kij->byixjc", bands_BxH2xW2xKxC, filters)
    return blocks.reshape(b, 2 * half_height, 2 * half_width, c)


def haar_idwt_pyramid(pyramid: list[jax.Array]) -> jax.Array:
    """Inverse of `haar_dwt_pyramid`: rebuilds each LL from the deeper level."""
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
        current = haar_dwt(current)[..., :channels]
    return current


def haar_high_bands(x_BxHxWxC: jax.Array) -> jax.Array:
    """One-level [HL, LH, HH] bands, (B, H/2, W/2, 3C): what the P-O ablation constrains."""
    channels = x_BxHxWxC.shape[-1]
    return haar_dwt(x_BxHxWxC)[..., channels:]


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
