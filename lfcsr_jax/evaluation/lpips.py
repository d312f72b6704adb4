"""LPIPS (Zhang et al. 2018), AlexNet variant with the v0.1 linear heads, in JAX/Flax.

distance(x0, x1) = sum over the 5 AlexNet ReLU outputs k of
  mean_{h,w} sum_c w_kc * (n0_khwc - n1_khwc)^2,
where n = features / (channel L2 norm + 1e-10) and w_k are the non-negative v0.1 head weights.
Inputs are uint8/0-255 RGB images mapped to [-1, 1] (x / 127.5 - 1), then LPIPS's scaling layer
((x - shift) / scale, shift = (-.030, -.088, -.188), scale = (.458, .448, .450)). No crop.

Weights come from files (a local folder or a gs:// one), never from the network's model hubs:
  - AlexNet ImageNet features: torchvision's `alexnet-owt-7be5be79.pth` (a state_dict with
    `features.{0,3,6,8,10}.{weight,bias}`, OIHW), or an .npz with the same keys
    (`convert_alexnet_file`); converted by `alexnet_params_from_torchvision`.
  - Heads: `v0.1/alex.npz` (keys `lin{k}.model.1.weight`, shape (1, C_k, 1, 1)) or `alex.pth`.
A missing file raises `metrics.MetricUnavailable` naming the file, so evaluation reports LPIPS as
unavailable instead of a number from a random network.
"""

from __future__ import annotations

import functools
import io
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lfcsr_jax import paths
from lfcsr_jax.evaluation.metrics import MetricUnavailable
from lfcsr_jax.paths import Path
from lfcsr_jax.weights import state_dicts

# torchvision alexnet().features: (index, out channels, kernel, stride, padding); ReLU after each,
# max-pool 3/2 after the first two. LPIPS taps the ReLU after every conv.
ALEXNET_CONVS = ((0, 64, 11, 4, 2), (3, 192, 5, 1, 2), (6, 384, 3, 1, 1), (8, 256, 3, 1, 1),
                 (10, 256, 3, 1, 1))
HEAD_CHANNELS = tuple(c for _, c, _, _, _ in ALEXNET_CONVS)
LPIPS_SHIFT = np.array([-0.030, -0.088, -0.188], dtype=np.float32)
LPIPS_SCALE = np.array([0.458, 0.448, 0.450], dtype=np.float32)
_NORM_EPS = 1e-10
ALEXNET_FILE_PATTERNS = ("alexnet*.pth", "alexnet*.npz")


class AlexNetFeatures(nn.Module):
    """torchvision AlexNet `features` up to the last ReLU; returns the 5 ReLU outputs (NHWC)."""

    @nn.compact
    def __call__(self, x_BxHxWx3: jax.Array) -> list[jax.Array]:
        taps = []
        x = x_BxHxWx3
        for i, (index, channels, kernel, stride, pad) in enumerate(ALEXNET_CONVS):
            if i in (1, 2):  # MaxPool2d(3, 2) before conv 3 and conv 6 (floor mode = VALID).
                x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")
            x = nn.Conv(channels, (kernel, kernel), strides=(stride, stride),
                        padding=((pad, pad), (pad, pad)), precision=jax.lax.Precision.HIGHEST,
                        name=f"features_{index}")(x)
            x = nn.relu(x)
            taps.append(x)
        return taps


def alexnet_params_from_torchvision(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """torchvision alexnet state_dict (tensors or arrays, OIHW) -> AlexNetFeatures params (HWIO)."""
    params = {}
    for index, channels, kernel, _, _ in ALEXNET_CONVS:
        wkey, bkey = f"features.{index}.weight", f"features.{index}.bias"
        missing = [k for k in (wkey, bkey) if k not in state_dict]
        if missing:
            raise KeyError(f"AlexNet state_dict lacks {missing} (torchvision alexnet layout expected)")
        weight = state_dicts.to_numpy(state_dict[wkey])
        if weight.shape[0] != channels or weight.shape[2:] != (kernel, kernel):
            raise ValueError(f"{wkey}: shape {weight.shape}, expected ({channels}, C, {kernel}, {kernel})")
        params[f"features_{index}"] = {
            "kernel": np.transpose(weight, (2, 3, 1, 0)).astype(np.float32),
            "bias": state_dicts.to_numpy(state_dict[bkey]).astype(np.float32),
        }
    return params


def heads_from_state_dict(state_dict: Mapping[str, Any]) -> list[np.ndarray]:
    """lpips v0.1 head weights `lin{k}.model.1.weight` (1, C, 1, 1) -> five (C,) vectors."""
    heads = []
    for k, channels in enumerate(HEAD_CHANNELS):
        key = f"lin{k}.model.1.weight"
        if key not in state_dict:
            raise KeyError(f"LPIPS heads lack {key!r} (expected lin0..lin4 of the alex v0.1 heads)")
        w = state_dicts.to_numpy(state_dict[key]).astype(np.float32).reshape(-1)
        if w.shape != (channels,):
            raise ValueError(f"{key}: {w.size} weights, expected {channels}")
        heads.append(w)
    return heads


def _load_state_dict(path: Path) -> Mapping[str, Any]:
    try:
        return state_dicts.load_state_dict(path)  # local or gs:// (state_dicts reads both)
    except ImportError as error:
        raise MetricUnavailable(f"LPIPS: {error} (`convert_alexnet_file` writes an .npz)") from error


def find_lpips_files(lpips_dir: paths.PathLike) -> tuple[Path, Path]:
    """(AlexNet weights file, alex heads file) in `lpips_dir`, or MetricUnavailable naming the gap."""
    root = paths.location(lpips_dir) if lpips_dir else None
    if root is None or not root.is_dir():
        raise MetricUnavailable(f"LPIPS: weights folder {str(lpips_dir)!r} not found (pass --lpips_dir "
                                "with alexnet-owt-7be5be79.pth and v0.1/alex.npz)")
    head_candidates = [root / "v0.1" / "alex.npz", root / "alex.npz", root / "v0.1" / "alex.pth",
                       root / "alex.pth"]
    heads = next((p for p in head_candidates if p.is_file()), None)
    backbones = sorted(p for pattern in ALEXNET_FILE_PATTERNS for p in root.glob(pattern))
    missing = []
    if heads is None:
        missing.append("the v0.1 heads (v0.1/alex.npz or alex.pth from the lpips package)")
    if not backbones:
        missing.append("the AlexNet ImageNet weights (torchvision alexnet-owt-7be5be79.pth, or an "
                       "alexnet*.npz made by lfcsr_jax.evaluation.lpips.convert_alexnet_file)")
    if missing:
        raise MetricUnavailable(f"LPIPS: {root} lacks " + " and ".join(missing))
    return backbones[0], heads


def load_lpips_params(lpips_dir: paths.PathLike) -> dict[str, Any]:
    """{'alexnet': AlexNetFeatures params, 'heads': [5 x (C,)]} from a folder (local or gs://)."""
    backbone_file, heads_file = find_lpips_files(lpips_dir)
    return {
        "alexnet": alexnet_params_from_torchvision(_load_state_dict(backbone_file)),
        "heads": heads_from_state_dict(_load_state_dict(heads_file)),
    }


def convert_alexnet_file(pth_path: paths.PathLike, npz_path: paths.PathLike) -> Path:
    """torchvision alexnet .pth -> .npz with the conv keys only (readable without torch)."""
    state = _load_state_dict(paths.location(pth_path))
    keys = [f"features.{i}.{p}" for i, *_ in ALEXNET_CONVS for p in ("weight", "bias")]
    buffer = io.BytesIO()  # np.savez cannot write to gs://; one upload (or tmp + rename) instead
    np.savez(buffer, **{k: state_dicts.to_numpy(state[k]) for k in keys})
    target = paths.location(npz_path)
    if target.suffix != ".npz":  # as np.savez names a file given without the suffix
        target = target.with_name(target.name + ".npz")
    paths.write_bytes_atomic(target, buffer.getvalue())
    return target


def _normalise_channels(f_BxHxWxC: jax.Array) -> jax.Array:
    norm = jnp.sqrt(jnp.sum(f_BxHxWxC * f_BxHxWxC, axis=-1, keepdims=True))
    return f_BxHxWxC / (norm + _NORM_EPS)


def lpips_from_unit_range(params: Mapping[str, Any], x0_BxHxWx3: jax.Array,
                          x1_BxHxWx3: jax.Array) -> jax.Array:
    """LPIPS of images already in [-1, 1]; returns (B,)."""
    shift, scale = jnp.asarray(LPIPS_SHIFT), jnp.asarray(LPIPS_SCALE)
    net = AlexNetFeatures()
    both = jnp.concatenate([x0_BxHxWx3, x1_BxHxWx3], axis=0)
    taps = net.apply({"params": params["alexnet"]}, (both - shift) / scale)
    batch = x0_BxHxWx3.shape[0]
    total = jnp.zeros((batch,), jnp.float32)
    for feats, head in zip(taps, params["heads"]):
        n0, n1 = _normalise_channels(feats[:batch]), _normalise_channels(feats[batch:])
        weighted = jnp.sum((n0 - n1) ** 2 * jnp.asarray(head), axis=-1)
        total = total + jnp.mean(weighted, axis=(1, 2))
    return total


@functools.partial(jax.jit)
def _lpips_u8(params: Mapping[str, Any], a_HxWx3: jax.Array, b_HxWx3: jax.Array) -> jax.Array:
    to_unit = lambda x: x.astype(jnp.float32)[None] / 127.5 - 1.0
    return lpips_from_unit_range(params, to_unit(a_HxWx3), to_unit(b_HxWx3))[0]


def lpips(params: Mapping[str, Any], sr_u8: np.ndarray, hr_u8: np.ndarray) -> float:
    """LPIPS (alex, v0.1) between two uint8 RGB images of equal size (gray is repeated to RGB)."""
    sr, hr = _rgb(sr_u8), _rgb(hr_u8)
    if sr.shape != hr.shape:
        raise ValueError(f"LPIPS: SR {sr.shape} and HR {hr.shape} differ")
    return float(_lpips_u8(params, sr, hr))


def _rgb(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    return img


def random_alexnet_params(seed: int = 0) -> dict[str, Any]:
    """A randomly initialised backbone (tests and shape checks only: not a metric)."""
    return AlexNetFeatures().init(jax.random.PRNGKey(seed), jnp.zeros((1, 64, 64, 3)))["params"]


def load_scorer(lpips_dir: paths.PathLike):
    """A callable (uint8 a, uint8 b) -> float LPIPS with weights from `lpips_dir` (see
    `find_lpips_files`); raises MetricUnavailable naming the missing file."""
    params = load_lpips_params(lpips_dir)
    return functools.partial(lpips, params)
