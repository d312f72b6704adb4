"""Model size and cost (the paper's Table 2): parameters, FLOPs per LR pixel, x4 inference latency.

  python -m lfcsr_jax.complexity --config=configs/x4.py [--latency_size=128] [--repeats=3]
      [--output=complexity.json] [--no_latency]

Prints one JSON object:
  params                trainable parameters of G_O (HAN), G_P (Res-clique) and the discriminator
                        (BatchNorm affine included, running statistics excluded), from
                        jax.eval_shape of the modules (nothing is allocated).
  mac_per_lr_pixel      a hand count written here from the layer shapes of the config: every conv is
                        k*k*C_in*C_out MAC per output pixel, at its resolution relative to the LR
                        image (G_O's tail at 2x and 4x, G_P at HR/2 = 4 pixels per LR pixel); layer
                        attention counts its two (11 x 11) products; global pools, channel-attention
                        1x1 convs (per image, not per pixel), activations, the Haar transforms and
                        additions are left out. FLOP = 2 MAC.
  flops_per_lr_pixel    hand count, and XLA's cost analysis of the jitted forward. XLA counts the
                        body of a scanned loop (HAN's residual groups / RCABs, the Res-clique
                        blocks) ONCE, so its number is far below the real work; it is reported only
                        as a cross-check of the unscanned layers.
  inference             measured wall time of x4 inference (both stages) of a random LR image of
                        latency_size^2 on this machine's default JAX device (median of `repeats`
                        runs after one compile run), with the achieved FLOP/s from the hand count.
docs/design.md section 10: G_O ~16.41 M MAC, G_P ~10.37 M MAC per LR pixel; D 1.46 GMAC per 144 patch.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from typing import Any, Mapping

import numpy as np

from lfcsr_jax import paths
from lfcsr_jax.configuration import load_config_file
from lfcsr_jax.errors import UserError, reports_user_errors

REFERENCE_MAC_PER_LR_PIXEL = {"objective": 16.41e6, "perceptual": 10.37e6}
XLA_SCAN_NOTE = ("XLA cost analysis counts a scanned loop body once (HAN groups/RCABs and "
                 "Res-clique blocks are nn.scan), so it under-reports; use the hand count")


def _conv(k: int, c_in: int, c_out: int, pixels_per_lr: float = 1.0) -> float:
    return k * k * c_in * c_out * pixels_per_lr


def objective_macs(model_cfg: Mapping[str, Any]) -> dict[str, float]:
    """G_O (HAN) MAC per LR pixel, by layer group."""
    f, g, r = int(model_cfg["han_features"]), int(model_cfg["han_resgroups"]), int(model_cfg["han_resblocks"])
    scale = int(model_cfg["scale"])
    n_attended = g + 1  # each group's output and the body conv's output
    upsample, res = {}, 1.0
    for i in range(int(round(math.log2(scale)))):  # conv f -> 4f then PixelShuffle(2), per x2
        upsample[f"upsample{i}"] = _conv(3, f, 4 * f, res)
        res *= 4.0
    layers = {
        "head": _conv(3, 3, f),
        "residual_groups": g * (r * 2 * _conv(3, f, f) + _conv(3, f, f)),
        "body_conv": _conv(3, f, f),
        "layer_attention_products": 2 * n_attended * n_attended * f,  # Q Q^T and A Q
        "layer_fuse": _conv(3, n_attended * f, f),
        "channel_spatial_attention": 27 * f,  # 3x3x3 conv over (channel, h, w), 1 -> 1 channel
        "fuse": _conv(3, 2 * f, f),
        **upsample,
        "tail": _conv(3, f, 3, res),
    }
    return layers


def perceptual_macs(model_cfg: Mapping[str, Any]) -> dict[str, float]:
    """G_P (wavelet Res-clique) MAC per LR pixel, by layer group (it runs at HR/2)."""
    g, stem, n = int(model_cfg["clique_growth"]), int(model_cfg["clique_stem"]), int(model_cfg["clique_blocks"])
    px = (int(model_cfg["scale"]) / 2) ** 2  # HR/2 pixels per LR pixel
    width = 4 * g  # four groups of g channels
    # Stage 1: ll1 <- ll0; lh1, hl1 <- [ll1, x0]; hh1 <- [ll1, lh1, hl1, hh0]; stage 2 mirrors it.
    block_inputs = [1, 2, 2, 4, 1, 2, 2, 4]
    block = sum(_conv(3, k * g, g) for k in block_inputs)
    return {
        "stem": _conv(3, 12, stem, px),
        "expand": _conv(3, stem, width, px),
        "res_clique_blocks": n * block * px,
        "fuse_1x1": _conv(1, n * width, stem, px),
        "tail": _conv(3, stem, 12, px),
    }


def discriminator_macs(patch: int) -> float:
    """D's MAC per HR patch (six 3x3 convs, three with stride 2, then two Linear layers)."""
    blocks = ((3, 64, 1), (64, 64, 2), (64, 128, 1), (128, 128, 2), (128, 256, 1), (256, 256, 2))
    side, total = patch, 0.0
    for c_in, c_out, stride in blocks:
        side //= stride
        total += _conv(3, c_in, c_out, side * side)
    return total + 256 * side * side * 1024 + 1024


def hand_count(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    obj, per = objective_macs(model_cfg), perceptual_macs(model_cfg)
    return {
        "objective": {"total": sum(obj.values()), "layers": obj},
        "perceptual": {"total": sum(per.values()), "layers": per},
        "total": sum(obj.values()) + sum(per.values()),
    }


# ----------------------------------------------------------------------------- jax parts


def _random_params(module, *example_args, **kwargs) -> Any:
    """Random float32 params on the module's shapes (jax.eval_shape: no init compile)."""
    import jax  # pylint: disable=import-outside-toplevel

    shapes = jax.eval_shape(lambda k: module.init(k, *example_args, **kwargs), jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    return jax.tree_util.tree_map(
        lambda s: (0.02 * rng.standard_normal(s.shape)).astype(np.float32), shapes)


def parameter_counts(model_cfg: Mapping[str, Any], hr_patch: int) -> dict[str, int]:
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

    from lfcsr_jax.models import discriminator, generator  # pylint: disable=import-outside-toplevel

    def count(module, *args, **kwargs) -> int:
        shapes = jax.eval_shape(lambda k: module.init(k, *args, **kwargs), jax.random.PRNGKey(0))
        return generator.count_params(shapes["params"])

    lr = jnp.zeros((1, 8, 8, 3))
    counts = {
        "generator_objective": count(generator.build_objective(model_cfg), lr),
        "generator_perceptual": count(generator.build_perceptual(model_cfg), jnp.zeros((1, 32, 32, 3))),
        "discriminator": count(discriminator.Discriminator(patch_size=hr_patch),
                               jnp.zeros((1, hr_patch, hr_patch, 3)), train=False),
    }
    counts["generator_total"] = counts["generator_objective"] + counts["generator_perceptual"]
    return counts


def xla_flops_per_lr_pixel(model_cfg: Mapping[str, Any], lr_size: int) -> float | None:
    """XLA's HLO cost analysis of the jitted two-stage forward (scan bodies counted once)."""
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

    from lfcsr_jax.models import generator  # pylint: disable=import-outside-toplevel

    model = generator.build_lfcsr(model_cfg)
    x = jax.ShapeDtypeStruct((1, lr_size, lr_size, 3), jnp.float32)
    params = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 8, 8, 3)))["params"],
                            jax.random.PRNGKey(0))
    lowered = jax.jit(lambda p, v: generator.apply_generator(model, p, v)).lower(params, x)
    analysis = lowered.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older JAX returned one dict per computation
        analysis = analysis[0] if analysis else {}
    flops = (analysis or {}).get("flops")
    return None if flops is None else float(flops) / lr_size**2


def measure_latency(model_cfg: Mapping[str, Any], lr_size: int, repeats: int) -> dict[str, Any]:
    """Median wall time of x4 inference (both stages) on a random lr_size^2 image."""
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

    from lfcsr_jax.models import generator  # pylint: disable=import-outside-toplevel

    model = generator.build_lfcsr(model_cfg)
    params = jax.device_put(_random_params(model, jnp.zeros((1, 8, 8, 3)))["params"])
    x = jax.device_put(np.random.default_rng(1).uniform(0, 255, (1, lr_size, lr_size, 3))
                       .astype(np.float32))
    forward = jax.jit(lambda p, v: generator.apply_generator(model, p, v))
    start = time.perf_counter()
    jax.block_until_ready(forward(params, x))
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(forward(params, x))
        times.append(time.perf_counter() - start)
    return {"lr_size": lr_size, "first_call_s (compile + run)": round(first, 3),
            "median_s": round(statistics.median(times), 4), "runs_s": [round(t, 4) for t in times],
            "device": str(jax.devices()[0]), "compute_dtype": str(model_cfg["dtype"])}


def report(model_cfg: Mapping[str, Any], hr_patch: int, lr_size: int = 128, repeats: int = 3,
           latency: bool = True) -> dict[str, Any]:
    """The whole JSON report for one model config."""
    hand = hand_count(model_cfg)
    xla = xla_flops_per_lr_pixel(model_cfg, lr_size)
    out = {
        "params": parameter_counts(model_cfg, hr_patch),
        "mac_per_lr_pixel": hand,
        "flops_per_lr_pixel": {
            "hand_objective": 2 * hand["objective"]["total"],
            "hand_perceptual": 2 * hand["perceptual"]["total"],
            "hand_total": 2 * hand["total"],
            "xla_cost_analysis": xla,
            "xla_note": XLA_SCAN_NOTE,
        },
        "reference_mac_per_lr_pixel": REFERENCE_MAC_PER_LR_PIXEL,
        "hand_over_reference": {k: hand[k]["total"] / v for k, v in REFERENCE_MAC_PER_LR_PIXEL.items()},
        "discriminator_mac_per_hr_patch": {"patch": hr_patch, "mac": discriminator_macs(hr_patch)},
        "inference_flops_hand": 2 * hand["total"] * lr_size**2,
    }
    if latency:
        measured = measure_latency(model_cfg, lr_size, repeats)
        measured["achieved_tflops_per_s"] = round(out["inference_flops_hand"] / measured["median_s"] / 1e12, 4)
        out["inference"] = measured
    return out


def load_config(spec: str):
    """`path/to/config.py[:arg]` -> its config, with a missing file or unknown variant as a
    UserError (configuration.load_config_file does the reading)."""
    try:
        return load_config_file(spec)
    except FileNotFoundError as e:
        raise UserError(f"--config: {e}") from e
    except ValueError as e:  # the config files reject an unknown variant with a ValueError
        raise UserError(f"--config={spec}: {e}") from e


@reports_user_errors("complexity")
def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m lfcsr_jax.complexity", description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="configs/x4.py[:variant]")
    p.add_argument("--latency_size", type=int, default=128, help="LR side of the timed image")
    p.add_argument("--repeats", type=int, default=3, help="timed runs after the compile run")
    p.add_argument("--no_latency", action="store_true", help="skip the (slow on CPU) timing")
    p.add_argument("--output", default="", help="also write the JSON here (local or gs://)")
    args = p.parse_args(argv)
    if args.latency_size < 1:
        raise UserError(f"--latency_size={args.latency_size} must be a positive LR side in pixels")
    if args.repeats < 1:
        raise UserError(f"--repeats={args.repeats} must be at least 1")
    if args.output and paths.location(args.output).is_dir():
        raise UserError(f"--output={args.output} is a folder; name the JSON file to write")
    config = load_config(args.config)
    model_cfg = config.model.to_dict()
    hr_patch = int(config.input.lr_patch) * int(model_cfg["scale"])
    out = report(model_cfg, hr_patch, args.latency_size, args.repeats, not args.no_latency)
    out = {"config": args.config, **out}
    text = json.dumps(out, indent=1)
    print(text)
    if args.output:  # local or gs://, written whole (a reader never sees half a JSON)
        paths.write_text_atomic(paths.location(args.output), text + "\n")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
