"""Y-PSNR / SSIM / NIQE against hand values, scikit-image, MATLAB's published NIQE and a loop-based
float64 restatement of the NIQE paper written here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import skimage.data
import skimage.metrics

from lfcsr_jax.evaluation import metrics


def test_quantize_clips_and_rounds():
    x = np.array([-3.0, 0.4, 0.6, 254.7, 300.0])
    np.testing.assert_array_equal(metrics.quantize(x), np.array([0, 0, 1, 255, 255], np.uint8))
    assert metrics.quantize(x).dtype == np.uint8


def test_rgb_to_y_hand_values_and_gray():
    assert metrics.rgb_to_y(np.zeros((1, 1, 3), np.uint8))[0, 0] == pytest.approx(16.0)
    assert metrics.rgb_to_y(np.full((1, 1, 3), 255, np.uint8))[0, 0] == pytest.approx(235.0)
    red = np.array([[[255, 0, 0]]], np.uint8)
    assert metrics.rgb_to_y(red)[0, 0] == pytest.approx(16 + 65.481)
    gray = np.array([[100]], np.uint8)
    assert metrics.rgb_to_y(gray)[0, 0] == pytest.approx(16 + 219 * 100 / 255)
    np.testing.assert_allclose(metrics.rgb_to_y(gray[..., None]), metrics.rgb_to_y(gray))


def test_psnr_hand_value_and_crop():
    hr = np.full((20, 20, 3), 100, np.uint8)
    sr = hr + 1
    # A uniform +1 on R=G=B moves Y by 219/255.
    expected = 20 * math.log10(255 / (219 / 255))
    assert metrics.psnr_y(sr, hr, crop=4) == pytest.approx(expected, abs=1e-10)
    sr_border = hr.copy()
    sr_border[:4] = 0  # only inside the cropped border
    assert metrics.psnr_y(sr_border, hr, crop=4) == float("inf")
    assert metrics.psnr_y(sr_border, hr, crop=0) < 30
    with pytest.raises(ValueError, match="uint8"):
        metrics.psnr_y(hr.astype(np.float32), hr)


def test_ssim_matches_scikit_image_gaussian_valid():
    rng = np.random.default_rng(1)
    hr = skimage.data.astronaut()[100:180, 150:250]
    sr = np.clip(hr.astype(int) + rng.integers(-20, 21, hr.shape), 0, 255).astype(np.uint8)
    y_sr = metrics.rgb_to_y(sr)[4:-4, 4:-4]
    y_hr = metrics.rgb_to_y(hr)[4:-4, 4:-4]
    # scikit-image with these options is Wang et al.'s ssim_index; its mean is over the valid region.
    expected = skimage.metrics.structural_similarity(
        y_sr, y_hr, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    got = metrics.ssim_y(sr, hr, crop=4)
    assert got == pytest.approx(expected, abs=1e-10)
    assert got < 0.95
    assert metrics.ssim_y(hr, hr) == pytest.approx(1.0)


# ------------------------------------------------------------------ NIQE, restated from the paper


def _cubic(x: float) -> float:
    ax = abs(x)
    if ax <= 1:
        return 1.5 * ax**3 - 2.5 * ax**2 + 1
    if ax <= 2:
        return -0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2
    return 0.0


def _matlab_half_matrix(n_in: int) -> np.ndarray:
    """MATLAB imresize(., 0.5, 'bicubic') along one axis: antialiased kernel, mirrored borders."""
    n_out, scale, width = math.ceil(n_in / 2), 0.5, 4 / 0.5
    mirror = list(range(n_in)) + list(range(n_in - 1, -1, -1))
    m = np.zeros((n_out, n_in))
    for x in range(1, n_out + 1):
        u = x / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - width / 2)
        for k in range(left, left + math.ceil(width) + 2):
            m[x - 1, mirror[(k - 1) % len(mirror)]] += scale * _cubic(scale * (u - k))
        m[x - 1] /= m[x - 1].sum()
    return m


def _aggd(vec: np.ndarray) -> tuple[float, float, float]:
    gam = np.array([0.2 + 0.001 * i for i in range(9801)])
    g = np.vectorize(math.gamma)
    r_gam = g(2 / gam) ** 2 / (g(1 / gam) * g(3 / gam))
    left = math.sqrt(np.mean(vec[vec < 0] ** 2))
    right = math.sqrt(np.mean(vec[vec > 0] ** 2))
    gh = left / right
    rhat = np.mean(np.abs(vec)) ** 2 / np.mean(vec**2)
    rhatnorm = rhat * (gh**3 + 1) * (gh + 1) / (gh**2 + 1) ** 2
    alpha = gam[int(np.argmin((r_gam - rhatnorm) ** 2))]
    f = math.sqrt(math.gamma(1 / alpha) / math.gamma(3 / alpha))
    return alpha, left * f, right * f


def _niqe_reference(img: np.ndarray, mu_pris: np.ndarray, cov_pris: np.ndarray) -> float:
    x = np.arange(7) - 3.0
    g1 = np.exp(-x * x / (2 * (7 / 6) ** 2))
    window = np.outer(g1, g1) / np.outer(g1, g1).sum()
    img = img[: img.shape[0] // 96 * 96, : img.shape[1] // 96 * 96]
    feats_per_scale = []
    for scale in (1, 2):
        padded = np.pad(img, 3, mode="edge")
        padded_sq = np.pad(img * img, 3, mode="edge")
        mu = np.zeros_like(img)
        mu_sq = np.zeros_like(img)
        for di in range(7):
            for dj in range(7):
                mu += window[di, dj] * padded[di:di + img.shape[0], dj:dj + img.shape[1]]
                mu_sq += window[di, dj] * padded_sq[di:di + img.shape[0], dj:dj + img.shape[1]]
        struct = (img - mu) / (np.sqrt(np.abs(mu_sq - mu * mu)) + 1)
        b = 96 // scale
        rows = []
        for bi in range(img.shape[0] // b):
            for bj in range(img.shape[1] // b):
                blk = struct[bi * b:(bi + 1) * b, bj * b:(bj + 1) * b]
                a, bl, br = _aggd(blk.ravel())
                feat = [a, (bl + br) / 2]
                for shift in ((0, 1), (1, 0), (1, 1), (-1, 1)):
                    a, bl, br = _aggd((blk * np.roll(blk, shift, axis=(0, 1))).ravel())
                    feat += [a, (br - bl) * math.gamma(2 / a) / math.gamma(1 / a), bl, br]
                rows.append(feat)
        feats_per_scale.append(np.array(rows))
        img = _matlab_half_matrix(img.shape[0]) @ img @ _matlab_half_matrix(img.shape[1]).T
    feats = np.concatenate(feats_per_scale, axis=1)
    diff = mu_pris - feats.mean(axis=0)
    return math.sqrt(diff @ np.linalg.pinv((cov_pris + np.cov(feats.T)) / 2) @ diff)


@pytest.fixture(scope="module")
def niqe_params(shared_data):
    return metrics.load_niqe_params(shared_data / "weights/niqe/niqe_pris_params.npz")


def test_niqe_matches_loop_restatement(niqe_params):
    img_u8 = skimage.data.astronaut()[:192, 100:388]
    expected = _niqe_reference(np.round(metrics.rgb_to_y(img_u8)), *niqe_params)
    assert metrics.niqe(img_u8, niqe_params) == pytest.approx(expected, rel=1e-9)


def test_niqe_matches_matlab_on_baboon(shared_data, niqe_params):
    from lfcsr_jax.input.image_io import read_image

    # BasicSR documents MATLAB R2021a niqe = 5.7296 for baboon.png (Y channel, no crop); Set14
    # img_001 is baboon (index.csv).
    baboon = read_image(shared_data / "benchmarks/Set14/HR/img_001_SRF_4_HR.png")
    assert metrics.niqe(baboon, niqe_params, crop_border=0) == pytest.approx(5.7296, abs=2e-4)


def test_niqe_mat_and_npz_agree_and_missing_file(shared_data, tmp_path):
    mu_npz, cov_npz = metrics.load_niqe_params(shared_data / "weights/niqe/niqe_pris_params.npz")
    mu_mat, cov_mat = metrics.load_niqe_params(shared_data / "weights/niqe/modelparameters.mat")
    np.testing.assert_allclose(mu_npz, mu_mat)
    np.testing.assert_allclose(cov_npz, cov_mat)
    with pytest.raises(metrics.MetricUnavailable, match="not found"):
        metrics.load_niqe_params(tmp_path / "missing.npz")


