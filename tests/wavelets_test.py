"""Haar DWT against hand-computed blocks, pywavelets, the authors' module, and its own inverse."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import pywt

from lfcsr_jax.models import wavelets


def test_single_block_by_hand():
    # a = top-left 1, c = top-right 2, b = bottom-left 3, d = bottom-right 4.
    x = jnp.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 2, 2, 1)
    ll, hl, lh, hh = np.asarray(wavelets.haar_dwt(x)).reshape(4)
    assert ll == pytest.approx((1 + 3 + 2 + 4) / 2)
    assert hl == pytest.approx((-1 - 3 + 2 + 4) / 2)  # right minus left
    assert lh == pytest.approx((-1 + 3 - 2 + 4) / 2)  # bottom minus top
    assert hh == pytest.approx((1 - 3 - 2 + 4) / 2)


def test_band_major_channel_order():
    # Channel 0 is constant 1, channel 1 is constant 2: only LL is non-zero, at index band*C + c.
    x = jnp.stack([jnp.ones((4, 4)), 2 * jnp.ones((4, 4))], axis=-1)[None]
    bands = np.asarray(wavelets.haar_dwt(x))
    np.testing.assert_allclose(bands[0, 0, 0], [2.0, 4.0, 0, 0, 0, 0, 0, 0], atol=1e-7)


def test_matches_pywavelets():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 6, 3)).astype(np.float32)
    bands = np.asarray(wavelets.haar_dwt(jnp.asarray(x))).reshape(2, 4, 3, 4, 3)
    for b in range(2):
        for c in range(3):
            ca, (ch, cv, cd) = pywt.dwt2(x[b, :, :, c].astype(np.float64), "haar")
            np.testing.assert_allclose(bands[b, :, :, 0, c], ca, atol=1e-6)
            np.testing.assert_allclose(bands[b, :, :, 1, c], -cv, atol=1e-6)
            np.testing.assert_allclose(bands[b, :, :, 2, c], -ch, atol=1e-6)
            np.testing.assert_allclose(bands[b, :, :, 3, c], cd, atol=1e-6)


def test_matches_authors_module(shared_data):
    ref = np.load(shared_data / "reference_vectors" / "haar.npz")
    np.testing.assert_allclose(wavelets.haar_dwt(jnp.asarray(ref["x"])), ref["dwt"], atol=1e-5)
    np.testing.assert_allclose(wavelets.haar_idwt(jnp.asarray(ref["dwt"])), ref["idwt_of_dwt"],
                               atol=1e-5)


@pytest.mark.parametrize("levels", [1, 2])
def test_perfect_reconstruction_and_energy(levels):
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 12, 3))
    bands = wavelets.haar_dwt(x) if levels == 1 else wavelets.haar_dwt_pyramid(x, levels)
    if levels == 1:
        rebuilt = wavelets.haar_idwt(bands)
        energy = jnp.sum(bands**2)
    else:
        assert bands[0].shape == (2, 2, 3, 12) and bands[1].shape == (2, 4, 6, 12)
        rebuilt = wavelets.haar_idwt_pyramid(bands)
        # Energy of the deepest full stack plus the high bands of each finer level.
        energy = jnp.sum(bands[0] ** 2) + jnp.sum(bands[1][..., 3:] ** 2)
    np.testing.assert_allclose(rebuilt, x, atol=1e-5)
    np.testing.assert_allclose(energy, jnp.sum(x**2), rtol=1e-5)


def test_two_level_ll_is_four_times_block_mean():
    x = jax.random.uniform(jax.random.PRNGKey(2), (1, 8, 8, 3))
    block_mean = np.asarray(x).reshape(1, 2, 4, 2, 4, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(wavelets.haar_ll(x, levels=2), 4 * block_mean, rtol=1e-5)


def test_gradients_flow_through_both_directions():
    x = jax.random.normal(jax.random.PRNGKey(3), (1, 4, 4, 2))
    # The transform is orthonormal: d/dx of 0.5*||dwt(x)||^2 is x, and likewise for the inverse.
    grad_fwd = jax.grad(lambda v: 0.5 * jnp.sum(wavelets.haar_dwt(v) ** 2))(x)
    np.testing.assert_allclose(grad_fwd, x, atol=1e-6)
    bands = wavelets.haar_dwt(x)
    grad_inv = jax.grad(lambda v: 0.5 * jnp.sum(wavelets.haar_idwt(v) ** 2))(bands)
    np.testing.assert_allclose(grad_inv, bands, atol=1e-6)


def test_jit_and_bfloat16():
    x = jax.random.normal(jax.random.PRNGKey(4), (1, 8, 8, 3))
    out = jax.jit(wavelets.haar_dwt)(x.astype(jnp.bfloat16))
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(out.astype(jnp.float32), wavelets.haar_dwt(x), atol=0.05)


def test_odd_sizes_are_refused():
    with pytest.raises(ValueError, match="even"):
        wavelets.haar_dwt(jnp.zeros((1, 5, 4, 3)))
    with pytest.raises(ValueError, match="even"):
        wavelets.haar_ll(jnp.zeros((1, 4, 6, 3)), levels=2)  # 2x3 after one level


def test_lowpass_kinds():
    x = jax.random.uniform(jax.random.PRNGKey(5), (1, 32, 32, 3))
    assert wavelets.lowpass(x, "haar").shape == (1, 16, 16, 3)
    blurred = wavelets.lowpass(x, "gaussian")
    assert blurred.shape == x.shape
    # A constant image is unchanged by the normalised blur; the high-pass of it is zero.
    const = jnp.full((1, 24, 24, 1), 7.0)
    np.testing.assert_allclose(wavelets.lowpass(const, "gaussian"), const, rtol=1e-5)
    np.testing.assert_allclose(wavelets.highpass(const, "gaussian"), 0.0, atol=1e-4)
    np.testing.assert_allclose(wavelets.highpass(const, "haar"), 0.0, atol=1e-6)
    assert wavelets.gaussian_kernel_1d(21, 3.0).shape == (21,)
    with pytest.raises(ValueError, match="unknown kind"):
        wavelets.lowpass(x, "box")


def test_gaussian_blur_matches_scipy():
    from scipy import ndimage

    x = np.random.default_rng(6).random((1, 30, 26, 1)).astype(np.float32)
    ours = np.asarray(wavelets.gaussian_blur(jnp.asarray(x)))
    # scipy's 'mirror' mode is numpy's 'reflect' (edge sample not repeated); truncate 10/3 -> 21 taps.
    ref = ndimage.gaussian_filter(x[0, :, :, 0].astype(np.float64), sigma=3.0, mode="mirror",
                                  truncate=10 / 3)
    np.testing.assert_allclose(ours[0, :, :, 0], ref, atol=1e-5)
