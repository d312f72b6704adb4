"""MATLAB-exact bicubic: reference files made by MATLAB, and values worked out by hand."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from lfcsr_jax.input.imresize import imresize, imresize_jax, modcrop, weight_matrix

# Keys cubic (a = -0.5) at distances 1.75, 0.75, 0.25, 1.25, by hand:
#   |d| in (1, 2]: -0.5|d|^3 + 2.5|d|^2 - 4|d| + 2;  |d| <= 1: 1.5|d|^3 - 2.5|d|^2 + 1.
K175, K075, K025, K125 = -0.0234375, 0.2265625, 0.8671875, -0.0703125


def _rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_uint8_path_is_bit_exact_on_set5(shared_data):
    ref = shared_data / "imresize_reference" / "Set5_EDSR_SwinIR"
    hr_files = sorted((ref / "HR").glob("*.png"))
    assert len(hr_files) == 5
    for hr_file in hr_files:
        hr = _rgb(hr_file)
        lr = _rgb(ref / "LR_bicubic" / "X4" / f"{hr_file.stem}x4.png")
        out = imresize(modcrop(hr, 4), 0.25)
        assert out.dtype == np.uint8 and out.shape == lr.shape
        assert np.count_nonzero(out != lr) == 0, hr_file.name


def test_float_path_matches_set14_mod12_within_one_value(shared_data):
    ref = shared_data / "imresize_reference" / "Set14_BasicSR_mod12"
    hr_files = sorted((ref / "GTmod12").glob("*.png"))
    assert len(hr_files) == 14
    off_by_one = 0
    for hr_file in hr_files:
        hr = _rgb(hr_file).astype(np.float64) / 255.0  # MATLAB im2double.
        lr = _rgb(ref / "LRbicx4" / hr_file.name).astype(np.int64)
        out = imresize(hr, 0.25)
        assert out.dtype == np.float64
        out_u8 = np.floor(np.clip(out * 255.0, 0, 255) + 0.5).astype(np.int64)
        diff = np.abs(out_u8 - lr)
        assert diff.max() <= 1, hr_file.name
        off_by_one += int(np.count_nonzero(diff))
    assert off_by_one <= 1


def test_x2_upscaling_matches_hand_computed_weights():
    # Rows vary only along the width, so the height pass is the identity (weights sum to 1) and
    # each output row is the 1-D MATLAB resize of f. Output column x (1-based) samples
    # u = x / 2 + 1/4: odd x = 2k+1 -> u = k + 3/4, taps k-1..k+2 at distances 1.75 .. -1.25;
    # even x = 2k -> u = k + 1/4.
    f = np.array([10.0, 200.0, 30.0, 90.0, 250.0, 0.0, 120.0])
    image = np.tile(f, (3, 1))
    out = imresize(image, 2.0)
    assert out.shape == (6, 14)
    np.testing.assert_allclose(out, np.tile(out[0], (6, 1)), atol=1e-12)
    f1 = lambda j: f[j - 1]  # 1-based, like MATLAB.
    # x = 7 (k = 3): taps 2, 3, 4, 5.
    assert out[0, 6] == pytest.approx(K175 * f1(2) + K075 * f1(3) + K025 * f1(4) + K125 * f1(5))
    # x = 8 (k = 4): u = 4.25, taps 3..6 at distances 1.25, 0.25, 0.75, 1.75.
    assert out[0, 7] == pytest.approx(K125 * f1(3) + K025 * f1(4) + K075 * f1(5) + K175 * f1(6))
    # x = 1: u = 0.75, taps 0, 1, 2 -> input 0 mirrors to 1 (symmetric padding), -1 mirrors to 2.
    assert out[0, 0] == pytest.approx(K175 * f1(2) + (K075 + K025) * f1(1) + K125 * f1(2))
    # uint8 path: the same values, rounded half away from zero and clipped.
    out_u8 = imresize(np.tile(f, (3, 1)).astype(np.uint8), 2.0)
    np.testing.assert_array_equal(out_u8[0], np.floor(np.clip(out[0], 0, 255) + 0.5))


def test_downscale_weights_have_18_taps_and_sum_to_one():
    m = weight_matrix(64, 16, 0.25)
    assert m.shape == (16, 64)
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-12)
    # An interior output pixel: 16 + 2 taps, of which the outer two have weight exactly 0
    # (kernel support 8 in input pixels each side of u, hit exactly at u -+ 8).
    assert np.count_nonzero(np.abs(m[8]) > 0) == 16
    # Output x = 9 (1-based) samples u = 9 * 4 - 1.5 = 34.5: symmetric weights around it.
    np.testing.assert_allclose(m[8, 26:34], m[8, 34:42][::-1], atol=1e-15)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_integer_scales_keep_constants_and_sizes(scale):
    image = np.full((12 * scale, 7 * scale, 3), 77, np.uint8)
    lr = imresize(image, 1.0 / scale)
    assert lr.shape == (12, 7, 3)
    assert np.all(lr == 77)
    assert imresize(lr, float(scale)).shape == image.shape


def test_output_shape_equals_scale_for_equal_factors():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 24, 3)).astype(np.uint8)
    np.testing.assert_array_equal(imresize(image, None, output_shape=(10, 6)),
                                  imresize(image, 0.25))


def test_intermediate_rounding_matters_for_uint8():
    # The uint8 path must round after the first pass: without it, the result differs somewhere.
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
    one_rounding = np.floor(np.clip(imresize(image.astype(np.float64), 0.25), 0, 255) + 0.5)
    assert np.any(imresize(image, 0.25) != one_rounding)


def test_imresize_jax_equals_numpy_float_path():
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 255, (2, 48, 40, 3)).astype(np.float32)
    down = jax.jit(lambda v: imresize_jax(v, 0.25))(jnp.asarray(x))
    up = jax.jit(lambda v: imresize_jax(v, 4.0))(jnp.asarray(x[:, :12, :10]))
    for i in range(2):
        np.testing.assert_allclose(np.asarray(down[i]), imresize(x[i].astype(np.float64), 0.25),
                                   atol=2e-3)
        np.testing.assert_allclose(np.asarray(up[i]),
                                   imresize(x[i, :12, :10].astype(np.float64), 4.0), atol=2e-3)
    assert down.shape == (2, 12, 10, 3) and up.shape == (2, 48, 40, 3)


def test_modcrop_crops_top_left():
    image = np.arange(10 * 7).reshape(10, 7)
    np.testing.assert_array_equal(modcrop(image, 4), image[:8, :4])
