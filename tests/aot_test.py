"""Deviceless compiles of the real programs (tools/benchmark.py --aot), tiny config, in CI.

Each run is a subprocess: XLA reads XLA_FLAGS once per process, and the GPU flag set under test
must be the one the compiler sees. The ceilings are the values this version reached (tiny config,
bf16, batch 4): a change that adds kernels or breaks a CUDA graph fails here. The paper model's
counts are printed by the tool and kept in tools/PERF_NOTES.md.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Kernels per execution, tiny config, bf16, batch 4 (lfcsr_jax/perf/compiled_counts.py).
# Reached since the RCAB's hand-written derivatives (before: 500, 1036, 116) and the ReLU's
# optimization barrier (before: 493, 1029); 32 x 32 fills its bucket and runs unmasked (before:
# masked, 116), 30 x 30 is the padded, masked forward. The attention backward without a kernel
# for the pooled vector's gradient: pre-training 491 -> 489, ADMM 1027 -> 1025; RCAB conv1's
# biased_relu: 486, 1022; attention_tail's residuals as loop slices and one array: 475, 1011.
TINY_KERNEL_CEILINGS = {"pretrain": 475, "admm": 1011, "inference_32x32": 108,
                        "inference_30x30": 116}


def _aot(target: str, *extra: str, flags: str = "capture", timeout: int = 900) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS",)}
    env["LFCSR_RUNTIME_FLAGS"] = flags
    command = [sys.executable, "tools/benchmark.py", f"--aot={target}", "--config=tiny",
               "--dtypes=bfloat16", "--batches=4", *extra]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["aot_target"] == target
    return summary["results"][0]


needs_cuda_plugin = pytest.mark.skipif(
    importlib.util.find_spec("jax_plugins.xla_cuda12") is None,
    reason="the GPU compiler is the optional extra: pip install -e '.[aot]'")
needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason="the TPU compiler is the optional extra: pip install -e '.[aot]'")


@needs_cuda_plugin
def test_h200_capture_flags_put_every_program_in_one_cuda_graph():
    row = _aot("h200", "--aot_inference=32x32,30x30")
    assert not row["inference_32x32"]["masked"] and row["inference_30x30"]["masked"]
    for name in TINY_KERNEL_CEILINGS:
        report = row[name]
        counts, thunks = report["counts"], report["thunks"]
        assert counts["kernels"] <= TINY_KERNEL_CEILINGS[name], (name, counts)
        assert counts["unknown_trip_counts"] == 0, name
        assert counts["by_kind"]["conv_forward"] > 0, name
        assert thunks["convolutions_outside_command_buffers"] == 0, (name, thunks)
        assert thunks["outside_command_buffers"] == 0, (name, thunks)
        assert thunks["host_driven_loops"] == 0, (name, thunks)
        assert thunks["top_level_thunks"] <= 20, (name, thunks)
        assert 0 < report["memory"]["per_chip_gib"] < report["memory"]["capacity_gib"]
    # The backward passes exist and are attributed to the networks they differentiate.
    by_part = row["admm"]["counts"]["by_part"]
    assert by_part["G_O_bwd"] > 0 and by_part["G_P_bwd"] > 0 and by_part["D_bwd"] > 0
    assert row["admm"]["counts"]["by_kind"]["conv_weight_gradient"] > 0
    assert row["inference_32x32"]["counts"]["by_part"].get("G_O_bwd", 0) == 0


@needs_libtpu
def test_tpu_slice_compiles_both_steps_over_all_chips_and_reports_memory():
    row = _aot("tpu:v5e:2x2", "--skip=inference")
    for name in ("pretrain", "admm"):
        report = row[name]
        assert report["chips"] == 4
        memory = report["memory"]
        assert memory["capacity_gib"] == 16.0
        assert 0 < memory["per_chip_gib"] < memory["capacity_gib"]
        assert memory["argument_gib"] > 0 and 0 < memory["headroom"] < 1
        assert report["counts"]["kernels"] > 0
        # No known_trip_count on TPU: every loop's count is read from its `i < N` condition.
        assert report["counts"]["while_loops"] > 0
        assert report["counts"]["unknown_trip_counts"] == 0
        assert "thunks" not in report  # a GPU-only structure
        # The compiler's cost analysis counts a while body once; the report says so.
        assert "note" in report["cost_analysis"]
