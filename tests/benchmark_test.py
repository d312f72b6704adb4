"""tools/benchmark.py runs on the tiny config (so it never rots), and bfloat16 compute computes
the same method as float32 (the optimised step vs the plain one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_prints_one_json_line_on_tiny_config():
    env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="1", XLA_FLAGS="", JAX_PLATFORMS="cpu")
    done = subprocess.run(
        # One dtype: the script's per-dtype rows are one loop, and bfloat16 steps are checked
        # against float32 by test_bfloat16_step_computes_the_same_method_as_float32 (this test
        # took 177 s with both dtypes on 2 cores).
        [sys.executable, "tools/benchmark.py", "--config=tiny", "--dtypes=float32",
         "--batches=4", "--steps=2", "--inference_size=16", "--loop=2"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["device"].startswith("cpu")
    rows = {row["dtype"]: row for row in summary["results"]}
    assert set(rows) == {"float32"}
    for row in rows.values():
        assert "error" not in row, row.get("error")
        for key in ("admm_step_ms", "pretrain_step_ms", "admm_compile_s", "inference_ms"):
            assert row[key] > 0, key
        # The real training loop (lfcsr_jax.training.loop.TrainLoop) ran next to the bare step.
        for key in ("admm_loop_ms", "pretrain_loop_ms", "admm_bare_back_to_back_ms"):
            assert row[key] > 0, key
    assert "xla_gpu_enable_command_buffer" in summary["xla_flags"]  # runtime.py applied


def test_benchmark_count_prints_primitive_counts_without_compiling():
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    done = subprocess.run(
        [sys.executable, "tools/benchmark.py", "--config=tiny", "--count", "--runtime_flags=0"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["xla_flags"] == ""  # --runtime_flags=0 leaves XLA_FLAGS alone
    counts = summary["results"][0]["counts"]
    for phase in ("pretrain", "admm"):
        assert counts[phase]["convolutions"] > 0
        assert counts[phase]["total"] >= sum(v for k, v in counts[phase].items() if k != "total")


def test_benchmark_inference_reports_latency_throughput_and_compiles():
    env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="1", XLA_FLAGS="", JAX_PLATFORMS="cpu")
    done = subprocess.run(
        [sys.executable, "tools/benchmark.py", "--config=tiny", "--inference", "--dtypes=float32",
         "--steps=1", "--inference_images=6"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    row = json.loads(done.stdout.strip().splitlines()[-1])["results"][0]
    for key in ("latency_ms_128x128", "latency_ms_480x270", "folder_images_per_s", "compile_s"):
        assert row[key] > 0, key
    # 128x128, 480x270 (in its 288x480 bucket), and the folder's two BSD100 buckets.
    assert row["compile_count"] == 4 and row["xla_compiles"] >= 4


def _one_admm_step(dtype: str) -> dict[str, float]:
    import functools

    import jax
    import numpy as np

    from configs import x4
    from lfcsr_jax.training import admm, train_state

    config = x4.get_config("tiny")
    config.model.dtype = dtype
    networks = train_state.make_networks(config)
    with jax.threefry_partitionable(False):
        state = jax.jit(functools.partial(train_state.init_train_state, config=config,
                                          networks=networks))(jax.random.PRNGKey(0))
        vgg = train_state.init_vgg_params(jax.random.PRNGKey(1), config, networks)
    rng = np.random.default_rng(0)
    batch = {"lr": rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8),
             "hr": rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)}
    step = jax.jit(functools.partial(admm.admm_step, networks=networks))
    _, metrics = step(state, batch, vgg)
    return {k: float(v) for k, v in jax.device_get(metrics).items()}


def test_bfloat16_step_computes_the_same_method_as_float32():
    import jax
    import numpy as np

    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        plain, fast = _one_admm_step("float32"), _one_admm_step("bfloat16")
    finally:
        jax.config.update("jax_disable_most_optimizations", previous)
    assert fast["all_finite"] == 1.0
    # Losses of the same parameters and batch: bf16 convolutions carry ~3 significant digits.
    for key in ("loss/objective_l1", "loss/output_l1", "loss/lr_band_l1", "loss/contextual",
                "loss/discriminator", "admm/residual_l1"):
        np.testing.assert_allclose(fast[key], plain[key], rtol=3e-2, err_msg=key)
