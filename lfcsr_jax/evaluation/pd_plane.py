"""The perception-distortion plane: pixel interpolation between two sources, LF consistency, plots.

- `Interpolation`: `evaluate --interpolate=A,B` scores alpha * A + (1 - alpha) * B for every
  alpha of `--alphas` (paper Fig. 3, docs/design.md section 8: the naive trade-off boundary). A and
  B are any two sources: our Y' (`Y'`, `Yp` or `objective`), our Y (`Y` or `perceptual`),
  `bicubic`, or a `--sr_dir` NAME. The blend is made from the float outputs, then quantised and
  scored like every other row.
- `lf_mae`: mean |T(Y) - T(Y')| of one image, T the constraint transform the export was trained
  with (constraint.band_transform: one-level Haar LL or a 21x21 Gaussian blur, or their high-band
  complements for the P-O order), on the raw float outputs (0-255 scale), i.e. the quantity the
  PD-ADMM dual drives to zero (paper Figs. 6, 8).
- `plot`: PSNR (up = better) against a perceptual metric (LPIPS, else NIQE; left = better), with
  our alpha curve, each interpolation curve, bicubic, every other source and reference points.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import numpy as np

from lfcsr_jax import paths
from lfcsr_jax.evaluation import diagnostics
from lfcsr_jax.models import constraint
from lfcsr_jax.paths import Path

OBJECTIVE_ALIASES = ("Y'", "Yp", "objective", "Y_O")
PERCEPTUAL_ALIASES = ("Y", "perceptual", "Y_P")
LF_TRANSFORMS = ("haar", "gaussian", "haar_high", "gaussian_high")


def canonical_source(name: str, sources: Sequence[str]) -> str:
    """"Y'", 'Y', 'bicubic' or a --sr_dir NAME; ValueError for anything else."""
    name = name.strip()
    if name in OBJECTIVE_ALIASES or name.lower() in ("yp", "objective", "y_o"):
        return "Y'"
    if name in PERCEPTUAL_ALIASES or name.lower() in ("perceptual", "y_p"):
        return "Y"
    if name.lower() == "bicubic":
        return "bicubic"
    if name in sources:
        return name
    raise ValueError(f"--interpolate: unknown source {name!r}; use Y' (or Yp, objective), Y (or "
                     f"perceptual), bicubic or a --sr_dir NAME {list(sources)}")


class Interpolation:
    """alpha * A + (1 - alpha) * B for each alpha; rows labelled `mix(A,B) a=<alpha>`."""

    def __init__(self, spec: str, alphas: Sequence[float], sources: Sequence[str], has_model: bool):
        parts = spec.split(",")
        if len(parts) != 2:
            raise ValueError(f"--interpolate={spec!r}: expected two sources, A,B")
        self.a, self.b = (canonical_source(p, sources) for p in parts)
        if self.a == self.b:
            raise ValueError(f"--interpolate={spec!r}: A and B are the same source")
        if not has_model and {"Y'", "Y"} & {self.a, self.b}:
            raise ValueError(f"--interpolate={spec!r}: Y' and Y need --checkpoint (not --model=bicubic)")
        self.alphas = list(alphas)

    @property
    def name(self) -> str:
        return f"mix({self.a},{self.b})"

    def label(self, alpha: float) -> str:
        return f"{self.name} a={alpha:g}"

    def outputs(self, outputs: Mapping[str, np.ndarray],
                stages: tuple[np.ndarray, np.ndarray] | None) -> dict[str, np.ndarray]:
        def pick(src: str) -> np.ndarray:
            if src == "Y'":
                return stages[0]
            if src == "Y":
                return stages[1]
            return outputs[src]

        a, b = pick(self.a), pick(self.b)
        return {self.label(alpha): alpha * a + (1.0 - alpha) * b for alpha in self.alphas}


def parse_lf_transform(spec: str, checkpoint: paths.PathLike) -> tuple[str, str]:
    """(lowpass, band) of T: `spec` when given, else the export's training config, else Haar LL."""
    if spec:
        if spec not in LF_TRANSFORMS:
            raise ValueError(f"--lf_transform={spec!r}: choose from {list(LF_TRANSFORMS)}")
        kind, _, high = spec.partition("_")
        return kind, "high" if high else "low"
    admm_cfg: dict[str, Any] = {}
    config_file = paths.location(checkpoint) / "config.json" if checkpoint else None
    if config_file is not None and config_file.is_file():
        admm_cfg = (json.loads(config_file.read_text()).get("config") or {}).get("admm") or {}
    return admm_cfg.get("lowpass", "haar"), admm_cfg.get("constrained_band", "low")


def lf_mae(y_objective: np.ndarray, y_perceptual: np.ndarray, lowpass: str = "haar",
           band: str = "low") -> float:
    """mean |T(Y) - T(Y')| of one image (HxWx3 floats on the 0-255 scale)."""
    both = np.stack([np.asarray(y_perceptual, np.float32), np.asarray(y_objective, np.float32)])
    t = np.asarray(constraint.band_transform(both, band, lowpass), np.float64)
    return float(np.mean(np.abs(t[0] - t[1])))


def x_metric_of(metric_names: Sequence[str]) -> str | None:
    """The plane's horizontal axis: LPIPS, else NIQE (lower is better), else SSIM as a fallback."""
    return next((m for m in ("lpips", "niqe", "ssim") if m in metric_names), None)


def _curve_of(rows: Mapping[str, Mapping[str, float]], prefix: str) -> list[tuple[float, Mapping]]:
    out = []
    for label, row in rows.items():
        if label.startswith(prefix):
            out.append((float(label[len(prefix):]), row))
    return sorted(out, key=lambda t: t[0])


def plot(rows: Mapping[str, Mapping[str, float]], path: paths.PathLike, x_metric: str, title: str = "",
         interpolations: Sequence[Interpolation] = (), sources: Sequence[str] = (),
         references: Sequence[Mapping[str, Any]] = ()) -> Path:
    """Writes the PD plane of one dataset's rows (evaluate's labels) to `path` (PNG)."""
    plt = diagnostics.pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    curve = _curve_of(rows, "alpha=")
    if curve:
        xs, ys = [r[x_metric] for _, r in curve], [r["psnr"] for _, r in curve]
        ax.plot(xs, ys, "o-", color="tab:blue", markersize=4, label="ours: alpha Y' + (1-alpha) Y")
        for (alpha, _), x, y in zip(curve, xs, ys):
            if alpha in (0.0, 1.0):
                ax.annotate("Y'" if alpha == 1.0 else "Y", (x, y), textcoords="offset points",
                            xytext=(5, 4), fontsize=9, color="tab:blue")
    styles = ["--", ":", "-."]
    for i, interp in enumerate(interpolations):
        pts = _curve_of(rows, interp.name + " a=")
        if not pts:
            continue
        xs, ys = [r[x_metric] for _, r in pts], [r["psnr"] for _, r in pts]
        ax.plot(xs, ys, styles[i % 3], marker=".", color=f"C{(i + 3) % 10}",
                label=f"alpha {interp.a} + (1-alpha) {interp.b}")
    if "bicubic" in rows:
        ax.plot(rows["bicubic"][x_metric], rows["bicubic"]["psnr"], "s", color="gray", label="bicubic")
    markers = "^vD<>ph"
    for i, name in enumerate(sources):
        if name in rows:
            ax.plot(rows[name][x_metric], rows[name]["psnr"], markers[i % len(markers)],
                    color=f"C{(i + 1) % 10}", markersize=8, label=name)
    for point in references:
        if x_metric in point:
            ax.plot(point[x_metric], point["psnr"], "*", markersize=11, label=point["label"])
    better = "higher" if x_metric == "ssim" else "lower"
    ax.set_xlabel(f"{x_metric.upper()} ({better} is better)")
    ax.set_ylabel("PSNR-Y (dB, higher is better)")
    ax.set_title(f"Perception-distortion plane {title}".strip())
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    try:
        return diagnostics.save_figure(fig, path)
    finally:
        plt.close(fig)
