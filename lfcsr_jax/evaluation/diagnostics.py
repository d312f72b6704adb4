"""Visual diagnostics: Haar subband views and LL-difference maps (the perception-distortion
plane is drawn by pd_plane.plot).

- `save_subband_views`: LL and HH of one Haar level of the luma of Y', Y and HR (paper Fig. 5).
- `save_ll_difference_maps`: |LL(Y') - LL(HR)| and |LL(Y) - LL(HR)| on one colour scale (Fig. 7);
  PD-ADMM should make the two maps alike (the LF content of Y follows Y').
All figures are written with matplotlib's Agg backend (no display needed), locally or to gs://.
"""

from __future__ import annotations

import io
from typing import Mapping

import numpy as np

from lfcsr_jax import paths
from lfcsr_jax.evaluation import metrics
from lfcsr_jax.paths import Path


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    return plt


def haar_bands_of_luma(img: np.ndarray) -> dict[str, np.ndarray]:
    """One orthonormal Haar level of the BT.601 luma (float64): {'LL','HL','LH','HH'} at half size.

    Same band convention as wavelets.py (a = top-left, b = bottom-left, c = top-right, d = bottom-right).
    """
    y = metrics.rgb_to_y(np.asarray(img, dtype=np.float64))
    y = y[: y.shape[0] // 2 * 2, : y.shape[1] // 2 * 2]
    a, b, c, d = y[0::2, 0::2], y[1::2, 0::2], y[0::2, 1::2], y[1::2, 1::2]
    return {"LL": (a + b + c + d) / 2, "HL": (-a - b + c + d) / 2, "LH": (-a + b - c + d) / 2,
            "HH": (a - b - c + d) / 2}


def save_subband_views(images: Mapping[str, np.ndarray], path: paths.PathLike, title: str = "") -> Path:
    """A grid: one row per image (e.g. Y', Y, HR), columns LL (gray) and |HH| (shared scale)."""
    plt = pyplot()
    bands = {name: haar_bands_of_luma(img) for name, img in images.items()}
    hh_max = max(float(np.percentile(np.abs(b["HH"]), 99.5)) for b in bands.values()) or 1.0
    fig, axes = plt.subplots(len(bands), 2, figsize=(6, 3 * len(bands)), dpi=110, squeeze=False)
    for row, (name, b) in enumerate(bands.items()):
        axes[row, 0].imshow(b["LL"] / 2, cmap="gray", vmin=0, vmax=255)  # LL / 2 = 2x2 mean
        axes[row, 0].set_title(f"{name}: LL", fontsize=9)
        axes[row, 1].imshow(np.abs(b["HH"]), cmap="magma", vmin=0, vmax=hh_max)
        axes[row, 1].set_title(f"{name}: |HH|", fontsize=9)
        for ax in axes[row]:
            ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, plt, path)


def ll_difference_maps(outputs: Mapping[str, np.ndarray], hr: np.ndarray) -> dict[str, np.ndarray]:
    """|LL(output) - LL(HR)| of the luma for each output (float64, half resolution)."""
    ll_hr = haar_bands_of_luma(hr)["LL"]
    return {name: np.abs(haar_bands_of_luma(img)["LL"] - ll_hr) for name, img in outputs.items()}


def save_ll_difference_maps(outputs: Mapping[str, np.ndarray], hr: np.ndarray, path: paths.PathLike,
                            title: str = "") -> Path:
    """Side-by-side LL-difference maps against HR on one colour scale, with their means."""
    plt = pyplot()
    maps = ll_difference_maps(outputs, hr)
    vmax = max(float(np.percentile(m, 99.5)) for m in maps.values()) or 1.0
    fig, axes = plt.subplots(1, len(maps), figsize=(4 * len(maps), 4), dpi=110, squeeze=False)
    for ax, (name, m) in zip(axes[0], maps.items()):
        im = ax.imshow(m, cmap="inferno", vmin=0, vmax=vmax)
        ax.set_title(f"|LL({name}) - LL(HR)|, mean {m.mean():.2f}", fontsize=9)
        ax.axis("off")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, plt, path)


def _save(fig, plt, path: paths.PathLike) -> Path:
    try:
        return save_figure(fig, path)
    finally:
        plt.close(fig)


def save_figure(fig, path: paths.PathLike) -> Path:
    """Renders `fig` in memory (format from the suffix, PNG by default), then writes it in one
    piece: matplotlib cannot write to a gs:// path, and a reader never sees half a figure."""
    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip(".").lower() or "png")
    path.parent.mkdir(parents=True, exist_ok=True)  # a no-op on an object store
    paths.write_bytes_atomic(path, buffer.getvalue())
    return path


def save_image_diagnostics(name: str, y_objective: np.ndarray, y_perceptual: np.ndarray,
                           hr: np.ndarray, out_dir: paths.PathLike) -> list[Path]:
    """Both figures for one image (uint8-quantised outputs): <name>_subbands.png, <name>_ll_diff.png."""
    out_dir = Path(out_dir)
    q_o, q_p = metrics.quantize(y_objective), metrics.quantize(y_perceptual)
    return [
        save_subband_views({"Y'": q_o, "Y": q_p, "HR": hr}, out_dir / f"{name}_subbands.png", name),
        save_ll_difference_maps({"Y'": q_o, "Y": q_p}, hr, out_dir / f"{name}_ll_diff.png", name),
    ]
