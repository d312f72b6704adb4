"""Accelerator speed of the real jitted steps: pre-training, PD-ADMM (with VGG19 and D), inference.

  python tools/benchmark.py                      # full x4 model, fp32 + bf16, batch 16 and 64
  python tools/benchmark.py --config=tiny --batches=4 --dtypes=float32 --steps=3   # CPU smoke

Prints ONE JSON line: per (dtype, batch) the median step times, compile times, peak device
memory and achieved TFLOP/s from the hand-counted FLOPs of REFERENCE.md section 10.
Runs on a bare accelerator image (jax, flax, optax, orbax, numpy): tensorflow, clu, pywavelets
and ml_collections are not needed (a minimal ConfigDict stands in when ml_collections is absent).
Inputs are synthetic random device arrays (never zeros), timed after a warm-up with
block_until_ready, median of --steps.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
import types
from pathlib import Path

import jax
import jax.numpy as jnp

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

# Hand counts (REFERENCE.md section 10), in FLOP (2 x MAC), for the paper's 36/144 patches.
FLOPS_PER_ADMM_ITERATION_B16 = 6.8e12
FLOPS_PER_PRETRAIN_ITERATION_B16 = 3.3e12
FLOPS_PER_INFERENCE_128 = 0.88e12


def _ensure_ml_collections() -> None:
    """A minimal attribute-dict stand-in, so configs/x4.py loads on a bare accelerator image."""
    try:
        import ml_collections  # noqa: F401  (presence check only)
    except ImportError:
        class ConfigDict(dict):
            def __getattr__(self, name):
                try:
                    return self[name]
                except KeyError as error:
                    raise AttributeError(name) from error

            def __setattr__(self, name, value):
                self[name] = value

            def to_dict(self):
                return {k: v.to_dict() if isinstance(v, ConfigDict) else v
                        for k, v in self.items()}

        stub = types.ModuleType("ml_collections")
        stub.ConfigDict = ConfigDict
        sys.modules["ml_collections"] = stub


def _load_config(variant: str, dtype: str, batch: int):
    _ensure_ml_collections()
    from configs import x4

    config = x4.get_config("" if variant == "paper" else variant)
    config.model.dtype = dtype
    config.train.global_batch_size = batch
    return config


def _synthetic_batch(config, batch: int, seed: int) -> dict[str, jax.Array]:
    lr_size = config.input.lr_patch
    hr_size = lr_size * config.model.scale
    key_lr, key_hr = jax.random.split(jax.random.PRNGKey(seed))
    return {"lr": jax.random.uniform(key_lr, (batch, lr_size, lr_size, 3), jnp.float32, 0, 255),
            "hr": jax.random.uniform(key_hr, (batch, hr_size, hr_size, 3), jnp.float32, 0, 255)}


def _time_calls(call, steps: int) -> tuple[float, float]:
    """(compile+first-call seconds, median seconds of `steps` further calls)."""
    start = time.perf_counter()
    jax.block_until_ready(call())
    first = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def _peak_memory_gib() -> float | None:
    stats = jax.local_devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**30


def bench_training(config, steps: int) -> dict[str, float]:
    from lfcsr_jax import admm

    networks = admm.make_networks(config)
    rng = jax.random.PRNGKey(0)
    vgg_params = admm.init_vgg_params(jax.random.PRNGKey(1), config, networks)
    batch = _synthetic_batch(config, config.train.global_batch_size, seed=2)
    init = jax.jit(functools.partial(admm.init_train_state, config=config, networks=networks))
    results: dict[str, float] = {}
    for name in ("pretrain", "admm"):
        state = init(rng)
        if name == "pretrain":
            fn = jax.jit(functools.partial(admm.pretrain_step, networks=networks),
                         donate_argnums=0)
            args = (batch, vgg_params)
        else:
            fn = jax.jit(functools.partial(admm.admm_step, networks=networks), donate_argnums=0)
            args = (batch, vgg_params, jax.random.PRNGKey(3))
        start = time.perf_counter()
        compiled = fn.lower(state, *args).compile()
        results[f"{name}_compile_s"] = time.perf_counter() - start
        holder = {"state": state}

        def call(compiled=compiled, args=args, holder=holder):
            holder["state"], metrics = compiled(holder["state"], *args)
            return metrics

        _, median = _time_calls(call, steps)
        results[f"{name}_step_ms"] = 1e3 * median
    return results


def bench_inference(config, steps: int, lr_size: int = 128) -> dict[str, float]:
    from lfcsr_jax.models import generator

    model = generator.build_lfcsr(config.model)
    lr = jax.random.uniform(jax.random.PRNGKey(4), (1, lr_size, lr_size, 3), jnp.float32, 0, 255)
    params = generator.init_params(model, jax.random.PRNGKey(5), lr_shape=lr.shape)
    forward = jax.jit(lambda p, x: model.apply({"params": p}, x))
    start = time.perf_counter()
    compiled = forward.lower(params, lr).compile()
    compile_s = time.perf_counter() - start
    _, median = _time_calls(lambda: compiled(params, lr), steps)
    return {"inference_compile_s": compile_s, "inference_ms": 1e3 * median,
            "inference_lr_size": lr_size}


def _achieved_tflops(row: dict[str, float], batch: int, paper_patches: bool) -> None:
    if not paper_patches:
        return
    scale = batch / 16
    for key, flops in (("admm_step_ms", FLOPS_PER_ADMM_ITERATION_B16 * scale),
                       ("pretrain_step_ms", FLOPS_PER_PRETRAIN_ITERATION_B16 * scale)):
        if key in row:
            row[key.replace("_step_ms", "_tflops")] = flops / (row[key] / 1e3) / 1e12
    if "inference_ms" in row and row.get("inference_lr_size") == 128:
        row["inference_tflops"] = FLOPS_PER_INFERENCE_128 / (row["inference_ms"] / 1e3) / 1e12


def _bench_row(args, dtype: str, batch: int, first: bool) -> dict:
    skip = set(filter(None, args.skip.split(",")))
    config = _load_config(args.config, dtype, batch)
    row: dict = {"dtype": dtype, "batch": batch}
    if "train" not in skip:
        row.update(bench_training(config, args.steps))
    if "inference" not in skip and first:  # latency is for one image; once per dtype
        row.update(bench_inference(config, args.steps, args.inference_size))
    _achieved_tflops(row, batch, paper_patches=args.config == "paper")
    row["peak_memory_gib"] = _peak_memory_gib()
    return row


def _run_isolated(args, dtype: str, batch: int, first: bool) -> dict:
    import subprocess

    command = [sys.executable, __file__, f"--config={args.config}", f"--dtypes={dtype}",
               f"--batches={batch}", f"--steps={args.steps}",
               f"--inference_size={args.inference_size}", "--isolate=0",
               f"--skip={args.skip if first else ','.join(filter(None, [args.skip, 'inference']))}"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {"dtype": dtype, "batch": batch, "error": done.stderr[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])["results"][0]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="paper", help="configs/x4.py variant: paper|demo|tiny")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--batches", default="16,64")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (median)")
    parser.add_argument("--inference_size", type=int, default=128)
    parser.add_argument("--skip", default="", help="comma list of parts to skip: train,inference")
    parser.add_argument("--isolate", type=int, default=1,
                        help="1: each (dtype, batch) in its own process, so peak memory is its own")
    args = parser.parse_args(argv)
    combos = [(d, int(b)) for d in args.dtypes.split(",") for b in args.batches.split(",")]
    if args.isolate and len(combos) > 1:
        rows = [_run_isolated(args, dtype, batch, first=batch == combos[0][1])
                for dtype, batch in combos]
    else:
        rows = [_bench_row(args, dtype, batch, first=batch == combos[0][1])
                for dtype, batch in combos]
    device = jax.local_devices()[0]
    summary = {"device": f"{device.platform}:{getattr(device, 'device_kind', '')}",
               "jax": jax.__version__, "config": args.config, "results": rows,
               "pytorch_reference_h200_ms": {"admm_b16": 555, "pretrain_b16": 234,
                                             "inference_128": 54}}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
