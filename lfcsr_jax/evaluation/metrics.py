"""Image-quality metrics computed the way SR papers compute them (docs/design.md section 8).

All full-reference metrics take uint8 images (SR already clamped to [0, 255] and rounded, see
`quantize`) and compute in float64 numpy:
  - PSNR and SSIM on the Y channel of ITU-R BT.601 YCbCr with the +16 offset
    (Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255), not rounded, `crop` = scale pixels removed at
    every border. SSIM is MATLAB `ssim_index` (Wang et al. 2004): 11x11 Gaussian window, sigma 1.5,
    K1 = 0.01, K2 = 0.03, L = 255, 'valid' filtering, no downsampling (unlike MATLAB's newer ssim.m).
  - `gray=True` (the HR FILE is single-channel, like Set14 'bridge'): the score is computed on the
    gray levels themselves, as the MATLAB scripts behind the published tables do for 1-channel
    files (they skip rgb2ycbcr): HR as stored, SR through MATLAB rgb2gray when its channels
    differ. This is what makes the Set14 bicubic x4 PSNR 26.00 dB; scoring bridge through BT.601
    (16 + 219 g / 255) instead gives 26.09. A 2-D array passed without gray=True is treated as
    RGB with three equal channels.
No-reference:
  - NIQE (Mittal, Soundararajan, Bovik 2013) with the LIVE pristine model. Convention (the one of
    BasicSR's `calculate_niqe` and of the PIRM 2018 scripts, which feed MATLAB's computequality.m):
    Y channel as above, `crop_border` pixels removed, then rounded to integers; the image is cut to
    a multiple of 96x96 at the top-left; 7x7 Gaussian (sigma 7/6) local normalisation with
    replicate borders; 18 AGGD features (computefeature.m) per 96x96 block at scale 1 and per 48x48 block after a
    MATLAB bicubic 1/2 resize (float, antialiased); distance to the pristine Gaussian with
    pinv of the averaged covariances. `evaluate` uses crop_border = scale (PIRM's shave of 4).
  - NRQM (Ma et al. 2017) and PI = ((10 - NRQM) + NIQE) / 2 are not here: NRQM needs the
    authors' trained regression forests (`model.mat` of chaoma99/sr-metric), which this project
    cannot read; `evaluate` refuses both when its flags are read.
A metric whose weights or model file is missing raises `MetricUnavailable`; callers report the
metric as unavailable, never a made-up number.
"""

from __future__ import annotations

import functools
import io
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
import scipy.ndimage
import scipy.special

from lfcsr_jax import paths
from lfcsr_jax.input.imresize import imresize

# BT.601 luma coefficients for RGB in [0, 255] (MATLAB rgb2ycbcr / BasicSR `rgb2ycbcr`).
_Y_COEFFS_RGB = np.array([65.481, 128.553, 24.966], dtype=np.float64) / 255.0

SSIM_WINDOW_SIZE = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
PIXEL_MAX = 255.0

NIQE_BLOCK = 96  # block side at scale 1 (blocksizerow = blocksizecol = 96, no overlap).
NIQE_WINDOW_SIZE = 7
NIQE_SIGMA = 7.0 / 6.0
# Shape-parameter grid of the AGGD moment-matching search: MATLAB's 0.2:0.001:10.
_GAMMA_GRID = 0.2 + 0.001 * np.arange(9801, dtype=np.float64)


class MetricUnavailable(RuntimeError):
    """A metric that cannot be computed here (missing weights/model file); the message says what."""


# ----------------------------------------------------------------------------- conversions


def format_metric(metric: str, value: Any) -> str:
    """A score as shown in every table and report: PSNR with 2 decimals, the others with 4;
    'n/a' for a missing or NaN value."""
    if not isinstance(value, (int, float)) or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.2f}" if metric == "psnr" else f"{value:.4f}"


def quantize(sr_float: np.ndarray) -> np.ndarray:
    """SR output on the 0-255 scale -> uint8: clamp to [0, 255] then round (as EDSR's `quantize`)."""
    return np.rint(np.clip(np.asarray(sr_float, dtype=np.float64), 0.0, 255.0)).astype(np.uint8)


def _as_rgb_f64(img: np.ndarray, what: str) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[-1] not in (1, 3):
        raise ValueError(f"{what}: expected an HxW, HxWx1 or HxWx3 image, got shape {img.shape}")
    img = img.astype(np.float64)
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    return img


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 luma with the +16 offset, float64 (H, W), for RGB (or gray) on the 0-255 scale."""
    rgb = _as_rgb_f64(img, "rgb_to_y")
    return 16.0 + rgb @ _Y_COEFFS_RGB


# MATLAB rgb2gray weights, for an RGB SR output scored against a 1-channel HR.
_GRAY_COEFFS_RGB = np.array([0.2989, 0.5870, 0.1140], dtype=np.float64)


def gray_levels(img: np.ndarray) -> np.ndarray:
    """float64 (H, W) gray of an image stored as 1-channel: the channel itself when all channels
    are equal, MATLAB rgb2gray otherwise."""
    rgb = _as_rgb_f64(img, "gray_levels")
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return rgb[..., 0]
    return rgb @ _GRAY_COEFFS_RGB


def luma(img: np.ndarray, gray: bool = False) -> np.ndarray:
    """The plane PSNR/SSIM are computed on: BT.601 Y, or `gray_levels` for 1-channel files."""
    return gray_levels(img) if gray else rgb_to_y(img)


def _crop(y_HxW: np.ndarray, crop: int) -> np.ndarray:
    if crop < 0:
        raise ValueError(f"crop must be >= 0, got {crop}")
    if crop == 0:
        return y_HxW
    if y_HxW.shape[0] <= 2 * crop or y_HxW.shape[1] <= 2 * crop:
        raise ValueError(f"image {y_HxW.shape} too small for a border crop of {crop}")
    return y_HxW[crop:-crop, crop:-crop]


def _check_pair(sr: np.ndarray, hr: np.ndarray) -> None:
    if sr.shape[:2] != hr.shape[:2]:
        raise ValueError(f"SR {sr.shape} and HR {hr.shape} differ in height/width")
    for name, img in (("SR", sr), ("HR", hr)):
        if np.asarray(img).dtype != np.uint8:
            raise ValueError(f"{name} must be uint8 (quantise SR first), got {np.asarray(img).dtype}")


# ----------------------------------------------------------------------------- PSNR / SSIM


def psnr_y(sr_u8: np.ndarray, hr_u8: np.ndarray, crop: int = 4, gray: bool = False) -> float:
    """Y-channel PSNR in dB, `crop` border pixels removed (crop = scale in SR papers)."""
    _check_pair(sr_u8, hr_u8)
    diff = _crop(luma(sr_u8, gray), crop) - _crop(luma(hr_u8, gray), crop)
    mse = float(np.mean(diff * diff))
    if mse == 0.0:
        return float("inf")
    return 10.0 * np.log10(PIXEL_MAX**2 / mse)


@functools.lru_cache(maxsize=None)
def gaussian_kernel_1d(size: int, sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian; its outer product is MATLAB fspecial('gaussian', size, sigma)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


def _filter_valid(x_HxW: np.ndarray, g: np.ndarray) -> np.ndarray:
    """MATLAB filter2(outer(g, g), x, 'valid') for a symmetric separable kernel."""
    n = g.shape[0]
    rows = np.lib.stride_tricks.sliding_window_view(x_HxW, n, axis=0) @ g
    return np.lib.stride_tricks.sliding_window_view(rows, n, axis=1) @ g


def ssim_of_y(y1_HxW: np.ndarray, y2_HxW: np.ndarray) -> float:
    """Mean SSIM of two float64 luma planes (MATLAB ssim_index, valid region)."""
    g = gaussian_kernel_1d(SSIM_WINDOW_SIZE, SSIM_SIGMA)
    c1 = (SSIM_K1 * PIXEL_MAX) ** 2
    c2 = (SSIM_K2 * PIXEL_MAX) ** 2
    mu1, mu2 = _filter_valid(y1_HxW, g), _filter_valid(y2_HxW, g)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    sigma1_sq = _filter_valid(y1_HxW * y1_HxW, g) - mu1_sq
    sigma2_sq = _filter_valid(y2_HxW * y2_HxW, g) - mu2_sq
    sigma12 = _filter_valid(y1_HxW * y2_HxW, g) - mu12
    ssim_map = ((2 * mu12 + c1) * (2 * sigma12 + c2)) / (
        (mu1_sq + mu2_sq + c1) * (sigma1_sq + sigma2_sq + c2)
    )
    return float(ssim_map.mean())


def ssim_y(sr_u8: np.ndarray, hr_u8: np.ndarray, crop: int = 4, gray: bool = False) -> float:
    """Y-channel SSIM (MATLAB ssim_index), `crop` border pixels removed first."""
    _check_pair(sr_u8, hr_u8)
    return ssim_of_y(_crop(luma(sr_u8, gray), crop), _crop(luma(hr_u8, gray), crop))


# ----------------------------------------------------------------------------- NIQE


# The LIVE pristine model shipped with the package (provenance: lfcsr_jax/data/README.md).
DEFAULT_NIQE_PARAMS = Path(__file__).resolve().parents[1] / "data" / "niqe_pris_params.npz"


def load_niqe_params(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Pristine model (mu (36,), cov (36, 36)) from BasicSR's niqe_pris_params.npz or the LIVE
    release's modelparameters.mat; `path` may be a gs:// URI."""
    path = paths.location(path)
    if not path.is_file():
        raise MetricUnavailable(
            f"NIQE: pristine model file {path} not found (need niqe_pris_params.npz from BasicSR or "
            "modelparameters.mat from the LIVE NIQE release)"
        )
    if path.suffix == ".npz":  # read whole, then parsed in memory (works for every store)
        data = np.load(io.BytesIO(path.read_bytes()))
        keys = ("mu_pris_param", "cov_pris_param")
    elif path.suffix == ".mat":
        data = scipy.io.loadmat(io.BytesIO(path.read_bytes()))
        keys = ("mu_prisparam", "cov_prisparam")
    else:
        raise ValueError(f"NIQE: {path}: expected a .npz or .mat pristine model file")
    missing = [k for k in keys if k not in data]
    if missing:
        raise ValueError(f"NIQE: {path} lacks the keys {missing}")
    mu = np.asarray(data[keys[0]], dtype=np.float64).reshape(-1)
    cov = np.asarray(data[keys[1]], dtype=np.float64)
    if mu.shape != (36,) or cov.shape != (36, 36):
        raise ValueError(f"NIQE: {path}: expected mu (36,) and cov (36, 36), got {mu.shape}, {cov.shape}")
    return mu, cov


def _aggd_params(x_NxP: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """estimateaggdparam per row: (alpha, beta_left, beta_right) by moment matching.

    beta = std_side * sqrt(gamma(1/alpha) / gamma(3/alpha)); alpha from the gamma grid (first
    minimum, as MATLAB's min).
    """
    g = _GAMMA_GRID
    r_gam = scipy.special.gamma(2 / g) ** 2 / (scipy.special.gamma(1 / g) * scipy.special.gamma(3 / g))
    neg, pos = x_NxP < 0, x_NxP > 0
    sq = x_NxP**2
    with np.errstate(invalid="ignore", divide="ignore"):
        left_std = np.sqrt(np.sum(sq * neg, axis=1) / np.sum(neg, axis=1))
        right_std = np.sqrt(np.sum(sq * pos, axis=1) / np.sum(pos, axis=1))
        gamma_hat = left_std / right_std
        r_hat = np.mean(np.abs(x_NxP), axis=1) ** 2 / np.mean(sq, axis=1)
        r_hat_norm = r_hat * (gamma_hat**3 + 1) * (gamma_hat + 1) / (gamma_hat**2 + 1) ** 2
    alpha = g[np.argmin((r_gam[None, :] - r_hat_norm[:, None]) ** 2, axis=1)]
    to_beta = np.sqrt(scipy.special.gamma(1 / alpha) / scipy.special.gamma(3 / alpha))
    return alpha, left_std * to_beta, right_std * to_beta


def _block_features(struct_HxW: np.ndarray, block: int) -> np.ndarray:
    """The 18 NIQE features (computefeature.m) of every non-overlapping block: (n_blocks, 18)."""
    h, w = struct_HxW.shape
    tiles = struct_HxW.reshape(h // block, block, w // block, block).transpose(0, 2, 1, 3)
    tiles_NxBxB = tiles.reshape(-1, block, block)
    n = tiles_NxBxB.shape[0]
    alpha, beta_l, beta_r = _aggd_params(tiles_NxBxB.reshape(n, -1))
    features = [alpha, (beta_l + beta_r) / 2]
    # circshift inside each block (MATLAB blkproc hands each block to computefeature).
    for shift in ((0, 1), (1, 0), (1, 1), (-1, 1)):
        shifted = np.roll(tiles_NxBxB, shift, axis=(1, 2))
        a, beta_l, beta_r = _aggd_params((tiles_NxBxB * shifted).reshape(n, -1))
        mean = (beta_r - beta_l) * (scipy.special.gamma(2 / a) / scipy.special.gamma(1 / a))
        features += [a, mean, beta_l, beta_r]
    return np.stack(features, axis=1)


def _local_normalise(img_HxW: np.ndarray) -> np.ndarray:
    """(x - mu) / (sigma + 1) with a 7x7 Gaussian (sigma 7/6), replicate borders (imfilter)."""
    g = gaussian_kernel_1d(NIQE_WINDOW_SIZE, NIQE_SIGMA)
    window = np.outer(g, g)
    mu = scipy.ndimage.correlate(img_HxW, window, mode="nearest")
    sigma = np.sqrt(np.abs(scipy.ndimage.correlate(img_HxW * img_HxW, window, mode="nearest") - mu * mu))
    return (img_HxW - mu) / (sigma + 1.0)


def _half_resize(img_HxW: np.ndarray) -> np.ndarray:
    return np.asarray(imresize(img_HxW.astype(np.float64), 0.5), dtype=np.float64)


def niqe_of_gray(img_HxW: np.ndarray, mu_pris: np.ndarray, cov_pris: np.ndarray) -> float:
    """NIQE of a float64 gray image on the 0-255 scale (MATLAB computequality.m, 2 scales)."""
    img = np.asarray(img_HxW, dtype=np.float64)
    h, w = (img.shape[0] // NIQE_BLOCK) * NIQE_BLOCK, (img.shape[1] // NIQE_BLOCK) * NIQE_BLOCK
    if h == 0 or w == 0:
        raise ValueError(f"NIQE needs an image of at least {NIQE_BLOCK}x{NIQE_BLOCK}, got {img.shape}")
    img = img[:h, :w]
    features = []
    for scale in (1, 2):
        features.append(_block_features(_local_normalise(img), NIQE_BLOCK // scale))
        if scale == 1:
            img = _half_resize(img)
    dist_NxF = np.concatenate(features, axis=1)
    mu_dist = np.nanmean(dist_NxF, axis=0)
    finite_rows = dist_NxF[~np.isnan(dist_NxF).any(axis=1)]
    cov_dist = np.cov(finite_rows, rowvar=False)
    inv_cov = np.linalg.pinv((cov_pris + cov_dist) / 2.0)
    diff = mu_pris - mu_dist
    return float(np.sqrt(diff @ inv_cov @ diff))


def niqe(img_u8: np.ndarray, params: tuple[np.ndarray, np.ndarray], crop_border: int = 0) -> float:
    """NIQE of an RGB/gray uint8 image: Y (BT.601, +16), border crop, rounded, then `niqe_of_gray`.

    `params` = `load_niqe_params(path)`.
    """
    y = _crop(rgb_to_y(img_u8), crop_border)
    return niqe_of_gray(np.round(y), *params)


