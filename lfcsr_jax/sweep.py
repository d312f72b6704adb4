"""Ablation sweeps: one training per value of one config field, then one evaluation of each export.

  python -m lfcsr_jax.sweep --config=configs/ablation_regularizer.py \
      --values=admm.lambda_r=0,1e-3,1e-2,1e-1 --workdir=DIR \
      [--set=schedule.admm_epochs=50 ...] [--data_dir=../shared/data/benchmarks] \
      [--datasets=Set5,Set14] [--metrics=psnr,ssim,niqe] [--max_images=0] [--alphas=0,0.5,1]

Any field can be swept (`admm.method=admm,regularizer`, `admm.lowpass=haar,gaussian`,
`admm.order=objective_first,perceptual_first`); values are converted to the field's type.
Each value trains in DIR/<field>=<value>/ with the normal training program, which resumes from its
own checkpoints; a setting whose export and summary exist is not trained again, and its evaluation
(DIR/<field>=<value>/eval/) is reused when it was made with the same evaluation arguments. So a
rerun of the same command skips finished settings and resumes an interrupted one.
Writes DIR/sweep_table.md, DIR/sweep.json, DIR/pd_plane_<dataset>.png (Y' and Y of every setting
on PSNR vs LPIPS/NIQE) and DIR/lf_mae_<dataset>.png (LF-MAE |T(Y) - T(Y')| against the value).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
from typing import Any, Sequence

from lfcsr_jax import configuration, paths
from lfcsr_jax.errors import UserError, reports_user_errors
from lfcsr_jax.evaluation import metrics


class SweepError(UserError):
    """A bad --config, --values or --set."""


def load_config(spec: str):
    """'configs/file.py[:arg]' -> the ConfigDict of its get_config(arg)."""
    try:
        return configuration.load_config_file(spec)
    except FileNotFoundError as error:
        raise SweepError(f"--config: {error}") from error


def _convert(text: str, current: Any, field: str) -> Any:
    if isinstance(current, bool):
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise SweepError(f"{field}: {text!r} is not a boolean")
    try:
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
    except ValueError:
        raise SweepError(f"{field}: {text!r} is not a {type(current).__name__}") from None
    if isinstance(current, (tuple, list)):
        return tuple(type(current[0])(t) if current else t for t in text.split(":") if t)
    return text


def set_field(config, field: str, text: str) -> Any:
    """Sets config.<field> (dotted) from text, converted to the field's type; returns the value."""
    *parents, leaf = field.split(".")
    node = config
    for name in parents:
        if name not in node:
            raise SweepError(f"unknown config field {field!r}")
        node = node[name]
    if leaf not in node:
        raise SweepError(f"unknown config field {field!r}")
    value = _convert(text, node[leaf], field)
    with config.unlocked() if hasattr(config, "unlocked") else contextlib.nullcontext():
        node[leaf] = value
    return value


def parse_values(spec: str) -> tuple[str, list[str]]:
    field, sep, values = spec.partition("=")
    items = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not field.strip() or not items:
        raise SweepError(f"--values={spec!r}: expected FIELD=V1,V2,...")
    return field.strip(), items


def setting_dir(workdir: paths.Path, field: str, value: str) -> paths.Path:
    return workdir / re.sub(r"[^A-Za-z0-9_.=+-]", "_", f"{field}={value}")


def train_setting(config, directory: paths.Path) -> None:
    """Trains (or resumes) one setting unless its export and summary already exist."""
    if (directory / "export" / "config.json").is_file() and (directory / "summary.json").is_file():
        print(f"[sweep] {directory.name}: trained, skipping", flush=True)
        return
    from lfcsr_jax.training import train  # pylint: disable=import-outside-toplevel

    print(f"[sweep] {directory.name}: training in {directory}", flush=True)
    train.validate_config(config)
    code = train.train_and_evaluate(config, str(directory))
    if code != 0 or not (directory / "export" / "config.json").is_file():
        raise SystemExit(f"sweep: training of {directory.name} stopped (exit code {code}); "
                         "rerun the same command to resume")


def evaluate_setting(directory: paths.Path, eval_args: list[str]) -> dict[str, Any]:
    """evaluate's results of one export (reused when made with the same arguments)."""
    from lfcsr_jax import evaluate  # pylint: disable=import-outside-toplevel

    out_dir = directory / "eval"
    stamp = out_dir / "sweep_eval_args.json"
    args = [f"--checkpoint={directory / 'export'}", f"--output_dir={out_dir}", *eval_args]
    if stamp.is_file() and json.loads(stamp.read_text()) == args and (out_dir / "results.json").is_file():
        print(f"[sweep] {directory.name}: evaluated, reusing {out_dir}", flush=True)
    else:
        evaluate.main(args)
        paths.write_text_atomic(stamp, json.dumps(args))
    return json.loads((out_dir / "results.json").read_text())


def _numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def write_outputs(workdir: paths.Path, field: str,
                  settings: list[dict[str, Any]]) -> list[paths.Path]:
    """sweep_table.md, sweep.json and the figures; returns the written paths."""
    from lfcsr_jax.evaluation import (diagnostics, pd_plane)  # pylint: disable=import-outside-toplevel

    metric_names = settings[0]["results"]["info"]["metrics"]
    datasets = list(settings[0]["results"]["results"])
    cols = [f"{stage} {m}" for stage in ("Y'", "Y") for m in metric_names]
    lines = [f"| {field} | dataset | " + " | ".join(cols) + " | LF-MAE |",
             "|" + "---|" * (3 + len(cols))]
    for s in settings:
        for d in datasets:
            res = s["results"]["results"][d]
            cells = [metrics.format_metric(m, res["rows"].get(label, {}).get(m))
                     for label in ("alpha=1", "alpha=0") for m in metric_names]
            lf = res.get("lf_mae")
            lines.append(f"| {s['value']} | {d} | " + " | ".join(cells)
                         + f" | {'n/a' if lf is None else f'{lf:.4f}'} |")
    written = [workdir / "sweep_table.md", workdir / "sweep.json"]
    paths.write_text_atomic(written[0], "\n".join(lines) + "\n")
    paths.write_text_atomic(written[1], json.dumps(
        [{"value": s["value"], "dir": str(s["dir"]), "results": s["results"]["results"]}
         for s in settings], indent=1))
    print("\n".join(lines), flush=True)
    plt = diagnostics.pyplot()
    x_metric = pd_plane.x_metric_of(metric_names)
    values = [s["value"] for s in settings]
    for d in datasets:
        if "psnr" in metric_names and x_metric:
            fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
            for stage, label, marker in (("alpha=1", "Y'", "o"), ("alpha=0", "Y", "^")):
                xs = [s["results"]["results"][d]["rows"][stage][x_metric] for s in settings]
                ys = [s["results"]["results"][d]["rows"][stage]["psnr"] for s in settings]
                ax.plot(xs, ys, marker + "-", label=f"{label} per setting")
                for v, x, y in zip(values, xs, ys):
                    ax.annotate(f"{v}", (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
            bic = settings[0]["results"]["results"][d]["rows"]["bicubic"]
            ax.plot(bic[x_metric], bic["psnr"], "s", color="gray", label="bicubic")
            ax.set_xlabel(f"{x_metric.upper()} ({'higher' if x_metric == 'ssim' else 'lower'} is better)")
            ax.set_ylabel("PSNR-Y (dB)")
            ax.set_title(f"{d}: sweep of {field}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            fig.tight_layout()
            diagnostics.save_figure(fig, workdir / f"pd_plane_{d}.png")
            plt.close(fig)
            written.append(workdir / f"pd_plane_{d}.png")
        lf = [s["results"]["results"][d].get("lf_mae") for s in settings]
        if all(v is not None for v in lf):
            fig, ax = plt.subplots(figsize=(5.5, 4.0), dpi=120)
            if _numeric(values):
                ax.plot(values, lf, "o-")
                positive = [v for v in values if v > 0]
                if min(values) >= 0 and positive and max(positive) / min(positive) > 20:
                    if len(positive) == len(values):
                        ax.set_xscale("log")
                    else:
                        ax.set_xscale("symlog", linthresh=min(positive))
            else:
                ax.plot(range(len(values)), lf, "o-")
                ax.set_xticks(range(len(values)), [str(v) for v in values])
            ax.set_xlabel(field)
            ax.set_ylabel("LF-MAE mean |T(Y) - T(Y')|")
            ax.set_title(f"{d}: LF consistency")
            ax.grid(alpha=0.3)
            fig.tight_layout()
            diagnostics.save_figure(fig, workdir / f"lf_mae_{d}.png")
            plt.close(fig)
            written.append(workdir / f"lf_mae_{d}.png")
    return written


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lfcsr_jax.sweep", description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="config file[:arg], e.g. configs/x4.py:tiny")
    p.add_argument("--values", required=True, help="FIELD=V1,V2,... e.g. admm.lambda_r=0,1e-3")
    p.add_argument("--workdir", required=True)
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="fixed override for every setting (repeatable), e.g. schedule.admm_epochs=5")
    p.add_argument("--data_dir", default="../shared/data/benchmarks")
    p.add_argument("--datasets", default="Set5,Set14")
    p.add_argument("--metrics", default="psnr,ssim,niqe")
    p.add_argument("--alphas", default="0,0.5,1")
    p.add_argument("--max_images", type=int, default=0)
    p.add_argument("--lpips_dir", default="")
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    import os  # pylint: disable=import-outside-toplevel

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    field, values = parse_values(args.values)
    from lfcsr_jax import object_store  # pylint: disable=import-outside-toplevel

    object_store.check_locations([("--workdir", args.workdir, False),
                                  ("--data_dir", args.data_dir, True),
                                  ("--lpips_dir", args.lpips_dir, True)])
    workdir = paths.location(args.workdir)
    eval_args = [f"--data_dir={paths.location(args.data_dir)}", f"--datasets={args.datasets}",
                 f"--metrics={args.metrics}", f"--alphas={args.alphas}",
                 f"--max_images={args.max_images}"]
    if args.lpips_dir:
        eval_args.append(f"--lpips_dir={args.lpips_dir}")
    configs = []
    for text in values:  # every config is built and checked before any training starts
        config = load_config(args.config)
        for override in args.set:
            name, sep, value = override.partition("=")
            if not sep:
                raise SweepError(f"--set={override!r}: expected FIELD=VALUE")
            set_field(config, name.strip(), value.strip())
        value = set_field(config, field, text)
        configs.append((text, value, config))
    # The configs' own gs:// fields (weights, data), once, before the first training.
    object_store.check_locations(sorted({location for _, _, config in configs
                                         for location in object_store.config_locations(config)}))
    workdir.mkdir(parents=True, exist_ok=True)
    try:  # TensorFlow only reads data; it must not take GPU memory from JAX (as in main.py).
        import tensorflow as tf  # pylint: disable=import-outside-toplevel

        tf.config.set_visible_devices([], "GPU")
    except (ImportError, RuntimeError):
        pass
    settings = []
    for text, value, config in configs:
        directory = setting_dir(workdir, field, text)
        train_setting(config, directory)
        settings.append({"value": value, "dir": directory,
                         "results": evaluate_setting(directory, eval_args)})
    files = write_outputs(workdir, field, settings)
    return {"settings": settings, "files": files}


@reports_user_errors("sweep")
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    from lfcsr_jax import runtime

    runtime.configure()  # GPU runtime settings, before the JAX backend starts (as every program)
    main()
