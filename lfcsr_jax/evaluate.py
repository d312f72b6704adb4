"""Evaluate an LFc-SR export (or bicubic) on the SR benchmarks with the paper's protocol.

  python -m lfcsr_jax.evaluate --checkpoint=EXPORT_DIR --data_dir=DATA --output_dir=OUT \
      [--datasets=Set5,Set14,BSD100,Urban100,Manga109] [--metrics=psnr,ssim,lpips,niqe] \
      [--lpips_dir=DIR] [--niqe_params=FILE] [--alphas=0,0.1,...,1] [--reference_points=paper|FILE]
  python -m lfcsr_jax.evaluate --model=bicubic --data_dir=DATA

For every image the generator runs ONCE; the objective output Y' (alpha = 1), the perceptual
output Y (alpha = 0) and the blends alpha Y' + (1 - alpha) Y (the paper's Eq. 14 trade-off curve)
are all computed from that one forward pass, quantised to uint8 and scored (metrics.py: Y-PSNR and
SSIM with crop = scale, LPIPS on the full RGB image, NIQE on Y with crop = scale). A bicubic row is
added for reference. Outputs in --output_dir: table.md (also printed), results.csv, results.json
(means and per-image values), pd_plane_<dataset>.png, and with --save_images the SR PNGs.
Metrics whose weights were not given are reported as unavailable, with the reason. NRQM and PI
(Ma et al.; PI = ((10 - NRQM) + NIQE) / 2) are refused when the flags are read: they need the
authors' trained regression forests (model.mat, MATLAB TreeBagger), which nothing here reads.
Data layout: DATA/<Set>/HR + DATA/<Set>/LR_bicubic/X4 (EDSR / SelfExSR layout), or HR only (LR made
with the MATLAB-exact imresize).
Every location (--checkpoint, --data_dir, --output_dir, --sr_dir, --lpips_dir, --niqe_params,
--reference_points) may be a local path or a gs:// URI (lfcsr_jax/paths.py).
A requested dataset that is absent altogether is skipped and listed as skipped under the table; one
that exists but is incomplete or damaged (a missing LR file, a size mismatch, a truncated image)
stops the run with an error naming the file. Flags and the output folder are checked before any
scoring; user errors end with one `evaluate: error: ...` line and exit status 2.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np

from lfcsr_jax import paths
from lfcsr_jax.errors import UserError, reports_user_errors
from lfcsr_jax.evaluation import metrics
from lfcsr_jax.inference.compile_cache import (CompileStats, compile_summary,
                                                configure_compilation_cache)
from lfcsr_jax.inference.model import load_model
from lfcsr_jax.inference.settings import BUCKET, add_flags
from lfcsr_jax.paths import Path, check_output_dir

DEFAULT_DATASETS = "Set5,Set14,BSD100,Urban100,Manga109"
DEFAULT_ALPHAS = ",".join(f"{a / 10:g}" for a in range(11))
METRIC_NAMES = ("psnr", "ssim", "lpips", "niqe")
LOWER_IS_BETTER = {"lpips", "niqe"}
# Perceptual metrics of the field that this project cannot compute, and why.
_NRQM_NEEDS = ("needs Ma et al.'s trained NRQM model, model.mat (regression forests saved by "
               "MATLAB's TreeBagger, from the chaoma99/sr-metric repository), and this project "
               "has no reader for that file")
REFUSED_METRICS = {"nrqm": _NRQM_NEEDS,
                   "pi": f"PI = ((10 - NRQM) + NIQE) / 2, and NRQM {_NRQM_NEEDS}"}
# The paper's Table 1 (PSNR / SSIM / NRQM / LPIPS of LFc-SR), docs/design.md section 8, and the
# bicubic values every SR paper prints: `--reference_points=paper`.
PAPER_REFERENCE_POINTS = [
    {"label": "LFc-SR (paper)", "dataset": "Set5", "psnr": 31.79, "ssim": 0.8910, "lpips": 0.0776},
    {"label": "LFc-SR (paper)", "dataset": "Set14", "psnr": 27.87, "ssim": 0.8282, "lpips": 0.1423},
    {"label": "LFc-SR (paper)", "dataset": "BSD100", "psnr": 26.84, "ssim": 0.7010, "lpips": 0.187},
    {"label": "LFc-SR (paper)", "dataset": "Urban100", "psnr": 26.28, "ssim": 0.9636, "lpips": 0.1235},
    {"label": "LFc-SR (paper)", "dataset": "Manga109", "psnr": 30.20, "ssim": 0.9804, "lpips": 0.0627},
]

Predictor = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


# ----------------------------------------------------------------------------- metrics


def parse_metrics(text: str) -> list[str]:
    """The metric names of a --metrics value; a refused or unknown name is a UserError."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    check_metric_names(names)
    return names


def check_metric_names(names: Sequence[str]) -> None:
    for name in names:
        if name in REFUSED_METRICS:
            raise UserError(f"--metrics: {name} cannot be computed here: it "
                            f"{REFUSED_METRICS[name]}; choose from {', '.join(METRIC_NAMES)}")
    unknown = [n for n in names if n not in METRIC_NAMES]
    if unknown:
        raise UserError(f"--metrics: unknown {unknown}; choose from {list(METRIC_NAMES)}")


class MetricSuite:
    """The requested metrics that can be computed; `unavailable` maps the others to a reason."""

    def __init__(self, names: Sequence[str], scale: int, lpips_dir: str = "", niqe_params: str = ""):
        check_metric_names(names)
        self.scale = scale
        self.unavailable: dict[str, str] = {}
        self._lpips = None
        self._niqe = None
        if "lpips" in names:
            try:
                from lfcsr_jax.evaluation import lpips  # pylint: disable=import-outside-toplevel

                self._lpips = lpips.load_scorer(lpips_dir)
            except metrics.MetricUnavailable as e:
                self.unavailable["lpips"] = str(e)
        if "niqe" in names:
            try:  # default: the LIVE pristine model shipped with the package (metrics.py)
                self._niqe = metrics.load_niqe_params(niqe_params or metrics.DEFAULT_NIQE_PARAMS)
            except metrics.MetricUnavailable as e:
                self.unavailable["niqe"] = str(e)
        self.names = [n for n in names if n not in self.unavailable]

    def score(self, sr_u8: np.ndarray, hr_u8: np.ndarray, gray: bool = False) -> dict[str, float]:
        """Metric values of one SR image; `gray`: the HR file is 1-channel (see metrics.py)."""
        out = {}
        if "psnr" in self.names:
            out["psnr"] = metrics.psnr_y(sr_u8, hr_u8, crop=self.scale, gray=gray)
        if "ssim" in self.names:
            out["ssim"] = metrics.ssim_y(sr_u8, hr_u8, crop=self.scale, gray=gray)
        if self._lpips is not None:
            out["lpips"] = float(self._lpips(sr_u8, hr_u8))
        if self._niqe is not None:
            out["niqe"] = metrics.niqe(sr_u8, self._niqe, crop_border=self.scale)
        return out


# ----------------------------------------------------------------------------- data and models


class DatasetAbsent(FileNotFoundError):
    """No folder of the requested benchmark at all (skipped, and listed as skipped)."""


def load_dataset(data_dir: paths.PathLike, name: str, scale: int) -> list[dict[str, Any]]:
    """[{'name', 'lr', 'hr', 'hr_gray'}] (uint8 RGB) of one benchmark.

    DatasetAbsent when there is no folder for it; UserError naming the file when the folder
    exists but is incomplete or damaged (a missing LR file, a size mismatch, a truncated image).
    'hr_gray' is True when the HR file is single-channel (scored on gray levels, metrics.py).
    """
    from lfcsr_jax.input import benchmarks  # pylint: disable=import-outside-toplevel

    try:
        directory = benchmarks.find_benchmark(paths.location(data_dir), name)
    except FileNotFoundError as e:
        raise DatasetAbsent(str(e)) from e
    try:
        items = [dict(item) for item in benchmarks.load_benchmark(directory, scale=scale)]
    except UserError as e:
        raise UserError(f"dataset {name} ({directory}) is damaged: {e}") from e
    except (OSError, ValueError) as e:  # missing LR file, size mismatch, unreadable index.csv
        raise UserError(f"dataset {name} ({directory}) is incomplete or damaged: {e}") from e
    gray_names = _single_channel_names(directory)
    for item in items:
        item.setdefault("hr_gray", item["name"] in gray_names)
    return items


_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N")


def _single_channel_names(directory: Path) -> set[str]:
    """Names (file stem, stem without _HR, index.csv canonical name) of 1-channel HR files."""
    from PIL import Image  # pylint: disable=import-outside-toplevel

    from lfcsr_jax.input import benchmarks, image_io  # pylint: disable=import-outside-toplevel

    canonical = benchmarks.benchmark_names(directory)
    names: set[str] = set()
    for sub in ("HR", "hr", "GTmod12", "image_SRF_4", "."):
        if not (directory / sub).is_dir():
            continue
        for path in image_io.list_images(directory / sub):
            with path.open("rb") as f, Image.open(f) as img:  # reads the header only
                if img.mode in _GRAY_MODES:
                    names |= {path.stem, path.stem.removesuffix("_HR"), canonical.get(path.name, "")}
        break
    return names - {""}


def bicubic_predictor(scale: int) -> Predictor:
    """MATLAB bicubic upscaling of the uint8 LR (uint8 in -> uint8 out, as in the papers' tables)."""
    from lfcsr_jax.input.imresize import imresize  # pylint: disable=import-outside-toplevel

    def predict(lr_u8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        up = imresize(lr_u8, scale).astype(np.float32)
        return up, up

    return predict


def model_predictor(checkpoint: paths.PathLike, dtype: str = "", bucket: int | None = None
                    ) -> tuple[Predictor, dict[str, Any]]:
    """(lr uint8 HxWx3 -> (Y', Y) float32 on the 0-255 scale, model config) from an export.

    The predictor is `LoadedModel.predict` (bucketed exact shapes; `.__self__` is the
    model, whose compile_count the summary reports)."""
    model = load_model(checkpoint, dtype=dtype, bucket=BUCKET if bucket is None else bucket)
    return model.predict, model.config


# ----------------------------------------------------------------------------- the loop


def evaluate_images(predict: Predictor, images: Sequence[dict[str, Any]], alphas: Sequence[float],
                    suite: MetricSuite, is_bicubic: bool, progress_label: str = "",
                    save_dir: Path | None = None,
                    diagnostics_dir: Path | None = None, extras: Any = None) -> dict[str, Any]:
    """Scores every row (bicubic, then each alpha) of one dataset: {'rows': {label: {metric:
    mean}}, 'per_image': [{'name', label: {metric: value}}]}.

    `extras` (analyses.Extras) adds rows (other methods, interpolations) and per-image values."""
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel

    from concurrent.futures import ThreadPoolExecutor  # pylint: disable=import-outside-toplevel

    bicubic = bicubic_predictor(suite.scale)
    per_image = []
    labels: list[str] = []  # the rows; every image has the same ones
    # The next image's forward runs in a worker thread while this one is scored (JAX and most of
    # the metrics' numpy release the GIL), so the device does not wait for the metrics.
    pool = ThreadPoolExecutor(max_workers=1)
    ahead = None if is_bicubic or not images else pool.submit(predict, images[0]["lr"])
    for index, item in enumerate(tqdm(images, desc=progress_label, unit="img", leave=False,
                                      file=sys.stderr)):
        record: dict[str, Any] = {"name": item["name"]}
        outputs = {"bicubic": bicubic(item["lr"])[0]}
        stages = None
        if not is_bicubic:
            y_objective, y_perceptual = ahead.result()
            if index + 1 < len(images):
                ahead = pool.submit(predict, images[index + 1]["lr"])
            stages = (y_objective, y_perceptual)
            for alpha in alphas:
                outputs[alpha_label(alpha)] = alpha * y_objective + (1.0 - alpha) * y_perceptual
            if diagnostics_dir is not None:
                from lfcsr_jax.evaluation import (diagnostics)  # pylint: disable=import-outside-toplevel

                diagnostics.save_image_diagnostics(item["name"], y_objective, y_perceptual,
                                                   item["hr"], diagnostics_dir)
        if extras is not None:
            outputs.update(extras.extra_outputs(item, outputs, stages))
        labels = labels or list(outputs)
        for label, sr in outputs.items():
            sr_u8 = metrics.quantize(sr)
            record[label] = suite.score(sr_u8, item["hr"], gray=bool(item.get("hr_gray")))
            if save_dir is not None:
                _save_png(save_dir / label.replace("=", "") / f"{item['name']}.png", sr_u8)
        if extras is not None:
            extras.after_image(item, record, outputs, stages)
        per_image.append(record)
    pool.shutdown(wait=True)
    rows = {label: {m: float(np.mean([r[label][m] for r in per_image])) for m in suite.names}
            for label in labels}
    return {"rows": rows, "per_image": per_image, "count": len(per_image)}


def alpha_label(alpha: float) -> str:
    return f"alpha={alpha:g}"


def _save_png(path: Path, img_u8: np.ndarray) -> None:
    from lfcsr_jax.input import image_io  # pylint: disable=import-outside-toplevel

    image_io.write_png(path, img_u8)


def parse_alphas(text: str) -> list[float]:
    try:
        alphas = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"--alphas: expected comma-separated numbers, got {text!r}") from None
    bad = [a for a in alphas if not 0.0 <= a <= 1.0]
    if not alphas or bad:
        raise UserError(f"--alphas: need values in [0, 1], got {text!r}")
    return sorted(set(alphas))


def load_reference_points(spec: str) -> list[dict[str, Any]]:
    """'' -> none; 'paper' -> the paper's Table 1; else a JSON file: a list of
    {"label", "dataset", "psnr", and any of "ssim", "lpips", "niqe"}."""
    if not spec:
        return []
    if spec == "paper":
        return list(PAPER_REFERENCE_POINTS)
    path = paths.location(spec)
    if not path.is_file():
        raise UserError(f"--reference_points: {path} not found")
    try:
        points = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"--reference_points: {path} is not JSON ({e})") from e
    if not isinstance(points, list) or not all(
            isinstance(p, dict) and {"label", "dataset", "psnr"} <= p.keys() for p in points):
        raise UserError(f"{path}: expected a JSON list of objects with label, dataset, psnr")
    return points


# ----------------------------------------------------------------------------- reports


def format_table(results: dict[str, Any], metric_names: Sequence[str]) -> str:
    """Markdown: one line per (dataset, row) with the mean of each metric."""
    header = "| dataset | output | images | " + " | ".join(metric_names) + " |"
    lines = [header, "|" + "---|" * (3 + len(metric_names))]
    for dataset, result in results.items():
        for label, row in result["rows"].items():
            cells = [metrics.format_metric(m, row.get(m)) for m in metric_names]
            lines.append(f"| {dataset} | {_describe(label)} | {result['count']} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


def _describe(label: str) -> str:
    return {"alpha=1": "Y' (alpha=1)", "alpha=0": "Y (alpha=0)"}.get(label, label)


def write_reports(output_dir: Path, results: dict[str, Any], suite: MetricSuite,
                  info: dict[str, Any]) -> list[Path]:
    output_dir.mkdir(parents=True, exist_ok=True)  # a no-op on an object store
    table = format_table(results, suite.names)
    notes = [f"- {name}: unavailable: {why}" for name, why in suite.unavailable.items()]
    if info.get("missing_datasets"):
        notes.append(f"- skipped (not found): {', '.join(info['missing_datasets'])}")
    paths.write_text_atomic(output_dir / "table.md",
                            table + "\n" + ("\n" + "\n".join(notes) + "\n" if notes else ""))
    rows = io.StringIO()  # csv's own line ends (\r\n), written unchanged as with newline=""
    writer = csv.writer(rows)
    writer.writerow(["dataset", "output", "images", *suite.names])
    for dataset, result in results.items():
        for label, row in result["rows"].items():
            writer.writerow([dataset, label, result["count"], *[row[m] for m in suite.names]])
    paths.write_text_atomic(output_dir / "results.csv", rows.getvalue())
    payload = {"info": info, "unavailable": suite.unavailable, "results": results}
    paths.write_text_atomic(output_dir / "results.json",
                            json.dumps(payload, indent=1, default=_json_default))
    written = [output_dir / "table.md", output_dir / "results.csv", output_dir / "results.json"]
    # The PD planes are drawn once, with every source, by analyses.Extras.write (pd_plane.plot).
    return written


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value)}")


# ----------------------------------------------------------------------------- program


def build_parser() -> argparse.ArgumentParser:
    from lfcsr_jax.input import image_io  # pylint: disable=import-outside-toplevel

    p = argparse.ArgumentParser(prog="python -m lfcsr_jax.evaluate",
                                description=__doc__.split("\n")[0],
                                epilog=image_io.ORIENTATION_NOTE)
    p.add_argument("--checkpoint", default="", help="export directory (exports.save_export)")
    p.add_argument("--model", default="lfcsr", choices=("lfcsr", "bicubic"),
                   help="'bicubic' evaluates MATLAB bicubic upscaling; no checkpoint needed")
    p.add_argument("--data_dir", required=True, help="folder holding <Set>/HR (+ LR_bicubic/X4)")
    p.add_argument("--datasets", default=DEFAULT_DATASETS)
    p.add_argument("--metrics", default="psnr,ssim,lpips,niqe")
    p.add_argument("--lpips_dir", default="", help="alexnet-owt-7be5be79.pth + v0.1/alex.npz")
    p.add_argument("--niqe_params", default="",
                   help="niqe_pris_params.npz or modelparameters.mat (default: the shipped LIVE model)")
    p.add_argument("--alphas", default=DEFAULT_ALPHAS, help="blend weights of Y' (1) and Y (0)")
    p.add_argument("--output_dir", default="", help="where table.md/results.*/plots go ('' = none)")
    p.add_argument("--save_images", action="store_true", help="also write the SR PNGs")
    p.add_argument("--save_diagnostics", action="store_true",
                   help="Haar LL/HH views and LL-difference maps per image (paper Figs. 5, 7)")
    p.add_argument("--reference_points", default="", help="'paper' or a JSON file for the plot")
    p.add_argument("--scale", type=int, default=4)
    add_flags(p)  # --dtype, --bucket, --xla_cache_dir
    p.add_argument("--max_images", type=int, default=0, help="first N images per set (0 = all)")
    from lfcsr_jax.evaluation import analyses  # pylint: disable=import-outside-toplevel

    analyses.add_flags(p)  # --sr_dir, --interpolate, --lf_transform, --html, ...
    return p


def _check_object_store_locations(args: argparse.Namespace, is_bicubic: bool) -> None:
    """Every gs:// flag, once, before anything is read (lfcsr_jax/object_store.py)."""
    from lfcsr_jax import object_store  # pylint: disable=import-outside-toplevel

    reads = [("--data_dir", args.data_dir), ("--lpips_dir", args.lpips_dir),
             ("--niqe_params", args.niqe_params)]
    if not is_bicubic:
        reads.append(("--checkpoint", args.checkpoint))
    if args.reference_points != "paper":
        reads.append(("--reference_points", args.reference_points))
    reads += [("--sr_dir", spec.partition("=")[2]) for spec in getattr(args, "sr_dir", [])]
    object_store.check_locations([(flag, value, True) for flag, value in reads]
                                 + [("--output_dir", args.output_dir, False)])


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluates and writes the reports; returns {'results', 'table', 'unavailable', 'files'}."""
    is_bicubic = args.model == "bicubic"
    metric_names = parse_metrics(args.metrics)
    _check_object_store_locations(args, is_bicubic)
    if not is_bicubic and not args.checkpoint:
        raise UserError("give --checkpoint=EXPORT_DIR or --model=bicubic")
    if args.max_images < 0:
        raise UserError(f"--max_images={args.max_images} must be >= 0 (0 = all images)")
    if args.scale <= 0:
        raise UserError(f"--scale={args.scale} must be positive")
    if args.output_dir:  # before any scoring, which can take hours on the paper model
        check_output_dir(args.output_dir, "--output_dir")
    alphas = parse_alphas(args.alphas)
    suite = MetricSuite(metric_names, args.scale, args.lpips_dir, args.niqe_params)
    for name, why in suite.unavailable.items():
        print(f"[evaluate] {name} unavailable: {why}", file=sys.stderr)
    references = load_reference_points(args.reference_points)
    compile_before = None
    if is_bicubic:
        predict, info = bicubic_predictor(args.scale), {"model": "bicubic"}
    else:
        configure_compilation_cache(getattr(args, "xla_cache_dir", ""))
        compile_before = CompileStats.snapshot()
        predict, model_cfg = model_predictor(args.checkpoint, args.dtype,
                                             getattr(args, "bucket", None))
        info = {"model": "lfcsr", "checkpoint": str(paths.location(args.checkpoint)),
                "model_config": model_cfg}
        if int(model_cfg.get("scale", args.scale)) != args.scale:
            raise UserError(f"the export is x{model_cfg['scale']}, --scale={args.scale}")
    info.update({"alphas": alphas, "metrics": suite.names, "scale": args.scale})
    from lfcsr_jax.evaluation import analyses  # pylint: disable=import-outside-toplevel

    extras = analyses.Extras.from_args(args, is_bicubic, alphas)
    results, missing = {}, []
    output_dir = paths.location(args.output_dir) if args.output_dir else None
    save_root = output_dir / "images" if args.save_images and output_dir else None
    diag_root = (output_dir / "diagnostics"
                 if args.save_diagnostics and args.output_dir and not is_bicubic else None)
    start = time.time()
    for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        try:
            images = load_dataset(args.data_dir, name, args.scale)
        except DatasetAbsent as e:
            print(f"[evaluate] skipping {name}: {e}", file=sys.stderr)
            missing.append(name)
            continue
        if args.max_images:
            images = images[: args.max_images]
        extras.prepare(name, images)
        results[name] = evaluate_images(predict, images, alphas, suite, is_bicubic, name,
                                        save_root / name if save_root else None,
                                        diag_root / name if diag_root else None, extras)
        extras.finish_dataset(name, results[name])
    if not results:
        raise UserError(f"none of the datasets {args.datasets} found under {args.data_dir}")
    info.update({"missing_datasets": missing, "seconds": round(time.time() - start, 1)})
    model = getattr(predict, "__self__", None) if compile_before is not None else None
    if model is not None:
        info["compiles"] = {"model_shapes": model.compile_count,
                            **CompileStats.since(compile_before)}
        print(f"[evaluate] {compile_summary(model, info['compiles'])}", file=sys.stderr)
    table = format_table(results, suite.names) + extras.table_addendum(results)
    if missing:
        table += f"\n\nskipped (not found under {args.data_dir}): {', '.join(missing)}"
    print(table)
    files = []
    if args.output_dir:
        files = write_reports(output_dir, results, suite, info)
        files += extras.write(output_dir, results, suite, info, references)
    return {"results": results, "table": table, "unavailable": suite.unavailable, "files": files,
            "missing_datasets": missing, "compiles": info.get("compiles")}


@reports_user_errors("evaluate")
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    from lfcsr_jax import runtime

    runtime.configure()  # GPU runtime settings, before the JAX backend starts
    main()
