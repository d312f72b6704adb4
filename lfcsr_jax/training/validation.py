"""Validation during training: paper-protocol PSNR/SSIM (and LPIPS) of both stages, samples.

Every process computes the same numbers on its local copy of the (replicated) generator params,
so no collective is needed; only process 0 writes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from lfcsr_jax import paths
from lfcsr_jax.evaluation import lpips, metrics, report
from lfcsr_jax.input import imresize, input_pipeline
from lfcsr_jax.models.generator import apply_generator
from lfcsr_jax.training import train_state


def best_metric_modes(config: ml_collections.ConfigDict) -> dict[str, str]:
    """Validation metrics whose best checkpoint is kept: PSNR always, LPIPS when configured."""
    modes = {"psnr_perceptual": "max"}
    if config.train.lpips_dir:
        modes["lpips_perceptual"] = "min"
    return modes


def local_copy(tree: Any) -> Any:
    """This process's copy of replicated arrays, as single-device arrays usable by plain jit."""
    return jax.tree_util.tree_map(lambda x: x.addressable_data(0), tree)


class Validator:
    """Runs both stages on the validation images and scores them as the paper does."""

    def __init__(self, config: ml_collections.ConfigDict, networks: Any):
        self.scale = config.model.scale
        self.images = input_pipeline.load_validation_set(config.input, config.model.scale)
        self._about = _run_description(config)
        self._started = time.monotonic()  # this process' wall time, for the summary.
        self.networks = networks
        self._forward = jax.jit(self._both_stages)
        self.lpips = _load_lpips(config.train.lpips_dir)
        # NIQE beside PSNR/SSIM by default: the LIVE pristine model ships with the package.
        self.niqe = metrics.load_niqe_params(metrics.DEFAULT_NIQE_PARAMS)
        self._last_outputs: tuple[list[np.ndarray], list[np.ndarray]] | None = None
        self.bicubic = self._score_bicubic(imresize)

    def _both_stages(self, generator_params: dict[str, Any], lr_Bxhxwx3: jax.Array):
        y_objective = apply_generator(self.networks.objective, generator_params["objective"],
                                      lr_Bxhxwx3)
        y_perceptual = apply_generator(self.networks.perceptual, generator_params["perceptual"],
                                       y_objective)
        return y_objective, y_perceptual

    def _score_bicubic(self, imresize_module) -> dict[str, float]:
        upscaled = [imresize_module.imresize(image["lr"], self.scale) for image in self.images]
        return self._score("bicubic", upscaled)

    def _score(self, label: str, outputs: list[np.ndarray]) -> dict[str, float]:
        psnrs, ssims, lpipss, niqes = [], [], [], []
        for image, output in zip(self.images, outputs):
            sr_u8 = metrics.quantize(output)
            psnrs.append(metrics.psnr_y(sr_u8, image["hr"], crop=self.scale))
            ssims.append(metrics.ssim_y(sr_u8, image["hr"], crop=self.scale))
            if min(sr_u8.shape[:2]) - 2 * self.scale >= metrics.NIQE_BLOCK:
                niqes.append(metrics.niqe(sr_u8, self.niqe, crop_border=self.scale))
            if self.lpips is not None:
                lpipss.append(float(self.lpips(sr_u8, image["hr"])))
        scores = {f"psnr_{label}": float(np.mean(psnrs)), f"ssim_{label}": float(np.mean(ssims))}
        if lpipss:
            scores[f"lpips_{label}"] = float(np.mean(lpipss))
        if niqes:
            scores[f"niqe_{label}"] = float(np.mean(niqes))
        return scores

    def validate(self, state: Any, step: int, writer: Any) -> dict[str, float]:
        params = local_copy(train_state.generator_params(state))
        objective_out, perceptual_out = [], []
        for image in self.images:
            lr = jnp.asarray(image["lr"], jnp.float32)[None]
            y_objective, y_perceptual = self._forward(params, lr)
            objective_out.append(np.asarray(y_objective[0]))
            perceptual_out.append(np.asarray(y_perceptual[0]))
        self._last_outputs = (objective_out, perceptual_out)
        scores = {**self._score("objective", objective_out),
                  **self._score("perceptual", perceptual_out), **self.bicubic}
        writer.write_validation(step, scores)
        logging.info("validation at step %d: %s", step,
                     ", ".join(f"{k}={v:.4f}" for k, v in sorted(scores.items())))
        return scores

    def sample_images(self, state: Any, local_batch: dict[str, np.ndarray]) -> dict[str, Any]:
        """LR (nearest-upscaled), Y', Y and HR crops of the current batch, side by side."""
        params = local_copy(train_state.generator_params(state))
        lr = jnp.asarray(local_batch["lr"][:4], jnp.float32)
        y_objective, y_perceptual = self._forward(params, lr)
        lr_big = np.repeat(np.repeat(local_batch["lr"][:4], self.scale, 1), self.scale, 2)
        row = np.concatenate([lr_big, metrics.quantize(np.asarray(y_objective)),
                              metrics.quantize(np.asarray(y_perceptual)),
                              local_batch["hr"][:4]], axis=2)
        return {"samples/lr_objective_perceptual_hr": row}

    def write_summary(self, workdir: paths.Path, step: int, scores: dict[str, float],
                      export_dir: paths.Path) -> None:
        if jax.process_index() != 0:
            return
        paths.write_text_atomic(workdir / "summary.json", json.dumps(
            {"step": step, "validation": scores, "export": str(export_dir)}, indent=2))
        names = ", ".join(image["name"] for image in self.images)
        lines = [
            f"# Run summary (step {step})", "",
            f"Validation on {len(self.images)} images ({names}), Y-channel PSNR/SSIM, crop "
            f"{self.scale}:", "",
            "| output | PSNR (dB) | SSIM | NIQE (lower is better) |", "|---|---|---|---|",
        ]
        for label in ("bicubic", "objective", "perceptual"):
            lines.append(f"| {label} | {scores.get(f'psnr_{label}', float('nan')):.2f} | "
                         f"{scores.get(f'ssim_{label}', float('nan')):.4f} | "
                         f"{scores.get(f'niqe_{label}', float('nan')):.2f} |")
        lines += ["", *ROW_EXPLANATIONS, "", *_verdict(scores), "", *self._about,
                  f"- This process ran {(time.monotonic() - self._started) / 60:.1f} min "
                  "(training, validation, export).", "",
                  f"Generator export for evaluation: `{export_dir}`", ""]
        report_html = self._write_report(workdir, scores)
        if report_html is not None:
            shown = report_html.relative_to(workdir)
            lines += [f"Visual report of the validation images (bicubic, Y', Y, HR, zoomed crops, "
                      f"an alpha slider): [{shown}]({shown})",
                      ""]
        text = "\n".join(lines)
        paths.write_text_atomic(workdir / "summary.md", text)
        print(text, flush=True)

    def _write_report(self, workdir: paths.Path, scores: dict[str, float]) -> paths.Path | None:
        """report/report.html of the last validated outputs (report.py); None if none."""
        if self._last_outputs is None:
            return None
        out_dir = workdir / "report"
        upscaled = [_bicubic_upscale(image["lr"], self.scale) for image in self.images]
        entries = []
        for i, (image, y_o, y_p) in enumerate(zip(self.images, *self._last_outputs)):
            shown = {"bicubic": upscaled[i], "Y'": y_o, "Y": y_p}
            entries.append(report.save_image_set(
                out_dir, "validation", f"image_{i}", {k: metrics.quantize(v) for k, v in shown.items()},
                image["hr"], None))
        names = ("psnr", "ssim", "niqe", "lpips")
        rows = {row: {m: scores[f"{m}_{key}"] for m in names if f"{m}_{key}" in scores}
                for row, key in (("bicubic", "bicubic"), ("alpha=1", "objective"),
                                 ("alpha=0", "perceptual"))}
        used = [m for m in names if m in rows["alpha=1"]]
        results = {"validation": {"rows": rows, "count": len(self.images)}}
        return report.write_report(out_dir, results, used, {}, {"validation": entries},
                                   {"model": "validation images of this run"}, {})


# One line per row of the summary table, so that a newcomer reads it right.
ROW_EXPLANATIONS = (
    "How to read the rows (higher PSNR/SSIM = closer to the true high-resolution pixels; lower "
    "NIQE = more natural-looking image statistics, judged without the original):",
    "- **bicubic**: the low-resolution input enlarged x4 by bicubic interpolation; the baseline to "
    "beat.",
    "- **objective** (Y', stage 1, HAN): trained for fidelity; it should beat bicubic in PSNR/SSIM.",
    "- **perceptual** (Y, stage 2, wavelet Res-clique, PD-ADMM): trades some PSNR for a more "
    "natural look; judge it by NIQE (lower), not by PSNR.",
)


def _verdict(scores: dict[str, float]) -> list[str]:
    """What this run's numbers say, in words (the same rule whatever they are)."""
    lines = []
    if "psnr_objective" in scores and "psnr_bicubic" in scores:
        gain = scores["psnr_objective"] - scores["psnr_bicubic"]
        lines.append(f"- Y' is {abs(gain):.2f} dB {'above' if gain >= 0 else 'below'} bicubic in "
                     "PSNR" + ("." if gain >= 0 else ": it has not yet learned to beat it."))
    if "niqe_perceptual" in scores and "niqe_objective" in scores:
        better = scores["niqe_perceptual"] < scores["niqe_objective"]
        lines.append(
            f"- Y's NIQE is {'lower (better)' if better else 'higher (worse)'} than Y' "
            f"({scores['niqe_perceptual']:.2f} vs {scores['niqe_objective']:.2f})"
            + ("." if better else ": this run's perceptual stage does not show the paper's "
               "perceptual gain (it needs far more PD-ADMM training and ImageNet VGG19 weights)."))
    return lines


def _run_description(config: ml_collections.ConfigDict) -> list[str]:
    """What was trained on what, for the summary: the data, the steps and the model size."""
    inp, sched = config.input, config.schedule
    steps = {"pretrain": sched.pretrain_epochs * sched.steps_per_epoch,
             "admm": sched.admm_epochs * sched.steps_per_epoch}
    phases = " + ".join(f"{steps[p]:,} {'pre-training' if p == 'pretrain' else 'PD-ADMM'}"
                        for p in config.train.phases)
    lines = [f"- Trained {phases} steps, batch {config.train.global_batch_size} of "
             f"{inp.lr_patch}x{inp.lr_patch} LR patches"
             + (f", from {config.train.init_checkpoint}" if config.train.init_checkpoint else "")
             + f"; HAN {config.model.han_resgroups} groups x {config.model.han_resblocks} RCAB x "
             f"{config.model.han_features} features, {config.model.clique_blocks} Res-clique "
             "blocks."]
    if inp.source == "skimage":
        train_names = ", ".join(Path(n).stem for n in input_pipeline.SKIMAGE_TRAIN)
        lines += [
            f"- Training photos ({len(input_pipeline.SKIMAGE_TRAIN)}, scikit-image): "
            f"{train_names}. The validation photos above are other scenes, never trained on.",
            "- This is the offline demo: a small model trained for minutes on a few photos. The "
            "paper's model (HAN 10 x 20 RCAB x 64, 15 Res-clique blocks) trains 600,000 steps on "
            "DIV2K's 800 photos, days on an accelerator; expect far larger gains from it.",
        ]
    elif inp.source == "tfds":
        lines.append(f"- Training data: TFDS {inp.tfds_name} 'train'; validation: its "
                     "'validation' split.")
    else:
        lines.append(f"- Training data: {inp.hr_dir}; validation: {inp.val_hr_dir or 'none'}.")
    if not config.loss.vgg_weights and "admm" in config.train.phases:
        lines.append("- The contextual loss used a random VGG19 (no ImageNet weights given).")
    return lines


def _bicubic_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
    return imresize.imresize(lr, scale)


def _load_lpips(lpips_dir: str):
    """An LPIPS scorer (uint8 a, uint8 b) -> float, or None when no weights are configured."""
    if not lpips_dir:
        return None
    return lpips.load_scorer(lpips_dir)
