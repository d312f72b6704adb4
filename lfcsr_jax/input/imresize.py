"""MATLAB-exact bicubic `imresize`, as the SR field makes its low-resolution images.

MATLAB's `imresize(I, s, 'bicubic')` (facts in ../shared/design/ECOSYSTEM.md "Resizing"):
Keys cubic with a = -0.5; when shrinking, the kernel is widened by 1/s (antialiasing, 16 + 2
taps at x1/4); output pixel x (1-based) samples input position u = x/s + 0.5 (1 - 1/s); weights
are normalised per output pixel; out-of-range taps are mirrored (symmetric padding); separable,
the dimension with the smaller scale first (rows for equal scales). uint8 input is rounded half
away from zero and clipped to [0, 255] after EACH 1-D pass; float input stays float (the caller
rounds).

Each 1-D pass is a dense (out, in) weight matrix applied with einsum; the matrices are cached by
(in_size, out_size, scale), so resizing many same-sized images costs one matrix product per pass.
"""

from __future__ import annotations

import functools
import math

import jax.numpy as jnp
import numpy as np

_TAPS = 4.0  # support of the Keys cubic kernel, before widening.


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys cubic convolution kernel with a = -0.5 (MATLAB's `cubic`)."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return near + far


@functools.lru_cache(maxsize=256)
def weight_matrix(in_size: int, out_size: int, scale: float) -> np.ndarray:
    """(out_size, in_size) float64 matrix M with resized = M @ signal, MATLAB `contributions`."""
    antialias = scale < 1.0
    width = _TAPS / scale if antialias else _TAPS
    x = np.arange(1, out_size + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)  # 1-based input position sampled by output x.
    left = np.floor(u - width / 2.0)
    taps = int(math.ceil(width)) + 2
    idx_OxT = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]  # 1-based input indices.
    dist_OxT = u[:, None] - idx_OxT
    w_OxT = scale * _cubic(scale * dist_OxT) if antialias else _cubic(dist_OxT)
    w_OxT = w_OxT / w_OxT.sum(axis=1, keepdims=True)
    # Symmetric padding: index sequence 1..n, n..1 repeated (MATLAB's `aux` trick).
    mirror = np.concatenate([np.arange(in_size), np.arange(in_size)[::-1]])
    src_OxT = mirror[np.mod(idx_OxT.astype(np.int64) - 1, 2 * in_size)]
    m_OxI = np.zeros((out_size, in_size), np.float64)
    # Taps landing on the same mirrored pixel add up, exactly as MATLAB's sparse accumulation.
    np.add.at(m_OxI, (np.repeat(np.arange(out_size), taps), src_OxT.ravel()), w_OxT.ravel())
    m_OxI.setflags(write=False)
    return m_OxI


def _round_uint8(x: np.ndarray) -> np.ndarray:
    """MATLAB's double -> uint8 cast: clip to [0, 255], round half away from zero."""
    return np.floor(np.clip(x, 0.0, 255.0) + 0.5).astype(np.uint8)


def _plan(in_hw: tuple[int, int], scale: float | None,
          output_shape: tuple[int, int] | None) -> list[tuple[int, int, int, float]]:
    """[(axis, in_size, out_size, scale)] in MATLAB's pass order (smaller scale first)."""
    if output_shape is None:
        if scale is None or scale <= 0:
            raise ValueError(f"imresize: need a positive scale or output_shape, got {scale!r}")
        scales = (float(scale), float(scale))
        out_hw = tuple(int(math.ceil(scale * n)) for n in in_hw)
    else:
        out_hw = tuple(int(n) for n in output_shape)
        if len(out_hw) != 2 or min(out_hw) < 1:
            raise ValueError(f"imresize: output_shape must be (H, W) >= 1, got {output_shape!r}")
        # MATLAB derives each axis' scale from the sizes when given an output size.
        scales = tuple(o / i for o, i in zip(out_hw, in_hw)) if scale is None else (scale, scale)
    order = sorted(range(2), key=lambda a: scales[a])  # stable: rows first on ties.
    return [(a, in_hw[a], out_hw[a], scales[a]) for a in order]


def _apply(m_OxI: np.ndarray, x: np.ndarray, axis: int) -> np.ndarray:
    if axis == 0:
        return np.einsum("oh,hw...->ow...", m_OxI, x, optimize=True)
    return np.einsum("ow,hw...->ho...", m_OxI, x, optimize=True)


def imresize(image: np.ndarray, scale: float | None, *,
             output_shape: tuple[int, int] | None = None) -> np.ndarray:
    """MATLAB `imresize(image, scale, 'bicubic')` of an HxW or HxWxC array.

    scale < 1 shrinks (0.25 for x4 LR). uint8 in -> uint8 out with MATLAB's per-pass rounding;
    float in -> float64 out, unrounded. `output_shape=(H, W)` sets the size (scale may be None).
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise ValueError(f"imresize: expected HxW or HxWxC, got shape {image.shape}")
    is_uint8 = image.dtype == np.uint8
    if not is_uint8 and not np.issubdtype(image.dtype, np.floating):
        raise TypeError(f"imresize: expected uint8 or float input, got {image.dtype}")
    x = image.astype(np.float64)
    for axis, n_in, n_out, s in _plan(image.shape[:2], scale, output_shape):
        x = _apply(weight_matrix(n_in, n_out, s), x, axis)
        if is_uint8:
            x = _round_uint8(x).astype(np.float64)
    return x.astype(np.uint8) if is_uint8 else x


def imresize_jax(x_BxHxWxC: jnp.ndarray, scale: float) -> jnp.ndarray:
    """Float bicubic resize inside jit: `imresize`'s matrices as constants; no rounding."""
    if not jnp.issubdtype(x_BxHxWxC.dtype, jnp.floating):
        x_BxHxWxC = x_BxHxWxC.astype(jnp.float32)
    height, width = x_BxHxWxC.shape[1:3]
    out = x_BxHxWxC
    for axis, n_in, n_out, s in _plan((height, width), scale, None):
        m_OxI = jnp.asarray(weight_matrix(n_in, n_out, s), dtype=x_BxHxWxC.dtype)
        spec = "oh,bhwc->bowc" if axis == 0 else "ow,bhwc->bhoc"
        out = jnp.einsum(spec, m_OxI, out, precision="highest")
    return out


def modcrop(image: np.ndarray, scale: int) -> np.ndarray:
    """Top-left crop so height and width are multiples of `scale` (the field's HR convention)."""
    height, width = image.shape[:2]
    return image[: height - height % scale, : width - width % scale]
