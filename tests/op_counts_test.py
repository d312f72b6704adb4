"""Primitive counts of the training steps (lfcsr_jax/perf/op_counts.py): the counting rules on hand-made
programs, and a ceiling on the paper model's counts so that a change that adds kernels to the
step fails here, without a GPU (tools/PERF_NOTES.md has the before/after figures)."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from lfcsr_jax.perf import op_counts

REPO_ROOT = Path(__file__).resolve().parents[1]

# Reached by this version for the paper model (bfloat16, batch 16, 36/144 patches). Before (main
# at b280c83): ADMM 3961 convolutions / 7952 converts / 34940 primitives, pre-training
# 2825 / 4833 / 22474. The reduction count rose because the channel attention's 1x1
# convolutions became multiply-reduce math that fuses (two convolutions -> two reductions).
# Counted on uint8 batches, as the input pipeline feeds them (two converts more than float32).
# Since the RCAB's hand-written derivatives (models/layers.py attention_tail, relu): 1,200
# reductions fewer and 1,400 converts more per step, because that backward casts its per-image
# sums to float32 in the jaxpr; those casts fuse into the sums, and the compiled step launches
# fewer kernels (ADMM unrolled 8,098 -> 7,875, pre-training 5,566 -> 5,343, tools/PERF_NOTES.md).
# Since the ReLU's optimization barrier (one primitive per differentiated RCAB: pre-training
# 24,783 -> 24,984, ADMM 37,367 -> 37,568, one more for its platform_dependent): more
# primitives, fewer kernels (ADMM unrolled 7,875 -> 7,685, pre-training 5,343 -> 5,143).
# Since the attention backward's pooled-vector gradient became halving multiply-adds and the
# squeeze's two parameter gradients one batch sum (models/layers.py _attention_tail_backward):
# 2 reductions fewer and about 21 elementwise primitives more per differentiated RCAB
# (pre-training 24,984 -> 29,184, ADMM 37,568 -> 41,768); one kernel fewer per differentiated
# RCAB (pre-training 5,143 -> 4,943, ADMM unrolled 7,675 -> 7,475).
# Since the Res-clique unit's own derivative (models/layers.py biased_prelu): its parameter sums
# run in float32 (6 converts more per differentiated unit: pre-training 29,184 -> 30,024, ADMM
# 41,768 -> 42,608); one kernel fewer per unit (pre-training 4,943 -> 4,836).
# Since RCAB conv1's bias + ReLU (models/layers.py biased_relu) sums its bias gradient in float32
# (2 converts more per differentiated RCAB: pre-training 30,024 -> 30,222, ADMM 42,608 ->
# 42,806): no saved ReLU masks (pre-training temporaries 5.64 -> 5.39 GiB, 4,836 -> 4,825 kernels).
# Since attention_tail takes the 1x1 kernels as stored and keeps its (B, .) vectors as one array
# (a reshape, a concatenate and its split per differentiated RCAB: pre-training 30,222 ->
# 31,022, ADMM 42,806 -> 43,606): the looped ADMM step 16,262 -> 15,360 kernels.
# Since looped blocks scan their small parameters packed (layers.scan_over_packed_params: a
# split and a reshape per small parameter per iteration, a concatenate in the backward;
# pre-training 31,022 -> 32,314, ADMM 43,606 -> 45,560): the looped ADMM step 15,360 -> 14,188.
CEILINGS = {
    "admm": {"convolutions": 2361, "dots": 61, "reductions": 3580, "converts": 6700,
             "dynamic_update_slices": 0, "total": 45560},
    "pretrain": {"convolutions": 1625, "dots": 12, "reductions": 2666, "converts": 5063,
                 "dynamic_update_slices": 0, "total": 32314},
}


def test_scan_bodies_count_once_per_iteration_and_cond_its_costliest_branch():
    def body(carry, _):
        return jnp.sin(carry).astype(jnp.bfloat16).astype(jnp.float32), None

    def program(x):
        carry, _ = jax.lax.scan(body, x, None, length=7)
        inner = jax.lax.scan(lambda c, _: jax.lax.scan(body, c, None, length=3), carry, None,
                             length=2)[0]
        return jax.lax.cond(inner.sum() > 0, lambda v: jnp.cos(jnp.cos(v)), jnp.sin, inner)

    counts = op_counts.count_primitives(program, jnp.ones(3))
    assert counts["sin"] == 7 + 2 * 3  # the false branch's sin is not the costliest branch
    assert counts["cos"] == 2
    # Two per body execution, plus cond's boolean predicate turned into a branch index.
    assert counts["convert_element_type"] == 2 * (7 + 2 * 3) + 1
    assert "scan" not in counts and "cond" not in counts
    summary = op_counts.summarise(counts)
    assert summary["converts"] == 27 and summary["reductions"] == 1
    assert summary["total"] == sum(counts.values())


def test_gradient_of_a_convolution_counts_its_transposes():
    kernel = jnp.ones((3, 3, 2, 2))

    def loss(x):
        y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y.sum()

    forward = op_counts.count_primitives(loss, jnp.ones((1, 4, 4, 2)))
    backward = op_counts.count_primitives(jax.grad(loss), jnp.ones((1, 4, 4, 2)))
    assert forward["conv_general_dilated"] == 1
    assert backward["conv_general_dilated"] == 2  # forward (linearised) + input gradient


@pytest.fixture(scope="module")
def paper_counts():
    sys.path.insert(0, str(REPO_ROOT / "tools"))
    import benchmark  # tools/benchmark.py: the same counting `--count` prints

    config = benchmark.load_config("paper", "bfloat16", 16)
    return benchmark.count_training(config, ("pretrain", "admm"))


@pytest.mark.parametrize("phase", ["admm", "pretrain"])
def test_paper_model_step_counts_stay_at_or_under_the_ceilings(paper_counts, phase):
    counts = paper_counts[phase]
    over = {k: (counts[k], limit) for k, limit in CEILINGS[phase].items() if counts[k] > limit}
    assert not over, f"{phase}: more primitives per step than reached before: {over}"


def test_count_does_not_change_with_the_loop_structure():
    """Unrolling changes how XLA loops, not what runs: the count is the same."""
    sys.path.insert(0, str(REPO_ROOT / "tools"))
    import benchmark

    rolled = benchmark.count_training(benchmark.load_config("tiny", "float32", 4), ("pretrain",))
    unrolled = benchmark.count_training(
        benchmark.load_config("tiny", "float32", 4,
                              ["model.han_block_unroll=2", "model.clique_unroll=2"]),
        ("pretrain",))
    assert rolled == unrolled
