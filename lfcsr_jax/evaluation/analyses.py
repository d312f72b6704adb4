"""The paper's analyses as additions to `evaluate` (flags, per-image hooks and extra reports).

- `--sr_dir=NAME=FOLDER` (repeatable): other methods' SR images as rows of every table and points
  of the PD plane (sources.py).
- `--interpolate=A,B` (repeatable) with `--alphas`: the pixel-interpolation curve between two
  sources on the PD plane (pd_plane.py, paper Fig. 3).
- LF-MAE: with a checkpoint, mean |T(Y) - T(Y')| per image and per dataset (`--lf_transform`
  overrides the T the export was trained with; pd_plane.lf_mae).
- `--html`: report.html in --output_dir (report.py), crops by `--html_crop` or chosen automatically.
evaluate.py calls `Extras`; everything here leaves evaluate's own rows and files unchanged, except
that the pd_plane_<dataset>.png figures are redrawn with every source and curve.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Sequence

import numpy as np

from lfcsr_jax import paths
from lfcsr_jax.evaluation import metrics, pd_plane, report, sources
from lfcsr_jax.paths import Path


def add_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("analyses")
    g.add_argument("--sr_dir", action="append", default=[], metavar="NAME=FOLDER",
                   help="another method's SR images (repeatable); FOLDER flat or FOLDER/<Set>/")
    g.add_argument("--interpolate", action="append", default=[], metavar="A,B",
                   help="score alpha*A + (1-alpha)*B for each --alphas; A, B among Y', Y, "
                        "bicubic, an --sr_dir NAME (repeatable)")
    g.add_argument("--lf_transform", default="", choices=("",) + pd_plane.LF_TRANSFORMS,
                   help="T of the LF-MAE |T(Y)-T(Y')| ('' = the export's admm.lowpass/band)")
    g.add_argument("--html", action="store_true", help="write report.html into --output_dir")
    g.add_argument("--html_crop", default="", metavar="X,Y,SIZE",
                   help="HR-pixel crop shown zoomed in the report ('' = largest |Y - Y'|)")


class Extras:
    """Per-image hooks and reports of the analyses; a no-op when no flag asks for one."""

    def __init__(self, source_set: sources.SourceSet | None,
                 interpolations: Sequence[pd_plane.Interpolation], lf_transform: tuple[str, str] | None,
                 report_dir: Path | None, crop: tuple[int, int, int] | None, alphas: Sequence[float]):
        self.source_set = source_set
        self.interpolations = list(interpolations)
        self.lf_transform = lf_transform
        self.report_dir = report_dir
        self.crop = crop
        self.alphas = list(alphas)
        self.report_images: dict[str, list[dict[str, Any]]] = {}
        self._dataset = ""

    @classmethod
    def from_args(cls, args: argparse.Namespace, is_bicubic: bool,
                  alphas: Sequence[float]) -> "Extras":
        """`alphas`: evaluate's parsed --alphas (passed in: this module sits below the program)."""
        folders = sources.parse_sr_dirs(getattr(args, "sr_dir", []))
        source_set = sources.SourceSet(folders, args.data_dir, args.scale) if folders else None
        interps = [pd_plane.Interpolation(spec, alphas, list(folders), not is_bicubic)
                   for spec in getattr(args, "interpolate", [])]
        lf = None if is_bicubic else pd_plane.parse_lf_transform(
            getattr(args, "lf_transform", ""), args.checkpoint)
        report_dir = None
        if getattr(args, "html", False):
            if not args.output_dir:
                raise SystemExit("evaluate: --html needs --output_dir")
            report_dir = paths.location(args.output_dir)
        crop = parse_crop(getattr(args, "html_crop", ""))
        return cls(source_set, interps, lf, report_dir, crop, alphas)

    # ------------------------------------------------------------------ per dataset / image

    def prepare(self, dataset: str, images: Sequence[dict[str, Any]]) -> None:
        self._dataset = dataset
        if self.source_set is not None:
            self.source_set.prepare(dataset, images)

    def extra_outputs(self, item: dict[str, Any], outputs: dict[str, np.ndarray],
                      stages: tuple[np.ndarray, np.ndarray] | None) -> dict[str, np.ndarray]:
        extra: dict[str, np.ndarray] = {}
        if self.source_set is not None:
            extra.update(self.source_set.outputs(item))
        for interp in self.interpolations:
            extra.update(interp.outputs({**outputs, **extra}, stages))
        return extra

    def after_image(self, item: dict[str, Any], record: dict[str, Any],
                    outputs: dict[str, np.ndarray],
                    stages: tuple[np.ndarray, np.ndarray] | None) -> None:
        if stages is not None and self.lf_transform is not None:
            record["lf_mae"] = pd_plane.lf_mae(stages[0], stages[1], *self.lf_transform)
        if self.report_dir is not None:
            shown = {"bicubic": outputs["bicubic"]}
            if stages is not None:
                shown["Y'"], shown["Y"] = stages
            for name in (self.source_set.names if self.source_set else []):
                shown[name] = outputs[name]
            entry = report.save_image_set(self.report_dir, self._dataset, item["name"],
                                          {k: metrics.quantize(v) for k, v in shown.items()},
                                          item["hr"], self.crop)
            entry["scores"] = {k: record[k] for k in ("bicubic", "alpha=1", "alpha=0", *shown)
                               if k in record}
            self.report_images.setdefault(self._dataset, []).append(entry)

    def finish_dataset(self, dataset: str, result: dict[str, Any]) -> None:
        values = [r["lf_mae"] for r in result["per_image"] if "lf_mae" in r]
        if values:
            result["lf_mae"] = float(np.mean(values))
            result["lf_transform"] = "-".join(self.lf_transform)

    # ------------------------------------------------------------------ reports

    def table_addendum(self, results: dict[str, Any]) -> str:
        lines = [f"| {d} | {r['count']} | {r['lf_transform']} | {r['lf_mae']:.4f} |"
                 for d, r in results.items() if "lf_mae" in r]
        if not lines:
            return ""
        return ("\n\nLF consistency between the stages, mean |T(Y) - T(Y')| (0-255 scale):\n\n"
                "| dataset | images | T (lowpass-band) | LF-MAE |\n|---|---|---|---|\n"
                + "\n".join(lines))

    def write(self, output_dir: Path, results: dict[str, Any], suite: Any, info: dict[str, Any],
              references: list[dict[str, Any]]) -> list[Path]:
        written: list[Path] = []
        addendum = self.table_addendum(results)
        if addendum:
            table = output_dir / "table.md"
            paths.write_text_atomic(table, table.read_text().rstrip("\n") + addendum + "\n")
            lf = {d: {"lf_mae": r["lf_mae"], "transform": r["lf_transform"]}
                  for d, r in results.items() if "lf_mae" in r}
            paths.write_text_atomic(output_dir / "lf_mae.json", json.dumps(lf, indent=1))
            written.append(output_dir / "lf_mae.json")
        x_metric = pd_plane.x_metric_of(suite.names)
        names = self.source_set.names if self.source_set else []
        planes = {}
        if "psnr" in suite.names and x_metric is not None:
            for dataset, result in results.items():
                planes[dataset] = pd_plane.plot(
                    result["rows"], output_dir / f"pd_plane_{dataset}.png", x_metric, dataset,
                    self.interpolations, names, [p for p in references if p["dataset"] == dataset])
                written.append(planes[dataset])
        if self.report_dir is not None:
            written.append(report.write_report(output_dir, results, suite.names, planes,
                                               self.report_images, info, suite.unavailable))
        return written


def parse_crop(text: str) -> tuple[int, int, int] | None:
    if not text:
        return None
    try:
        x, y, size = (int(t) for t in text.split(","))
    except ValueError:
        raise SystemExit(f"evaluate: --html_crop={text!r}: expected X,Y,SIZE (integers)") from None
    if size < 4 or x < 0 or y < 0:
        raise SystemExit(f"evaluate: --html_crop={text!r}: need X, Y >= 0 and SIZE >= 4")
    return x, y, size
