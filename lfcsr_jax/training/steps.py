"""The one place that jits the training steps: sharded, donated, one signature for every phase.

Every phase's step is `(state, batch, vgg_params) -> (state, metrics)`. `train.py` and
`tools/benchmark.py` both build their steps here, so the benchmark times exactly what training runs.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
from jax.sharding import NamedSharding, PartitionSpec

from lfcsr_jax.training import admm, pretrain
from lfcsr_jax.training.train_state import Networks, TrainState

Step = Callable[[TrainState, dict[str, jax.Array], Any], tuple[TrainState, dict[str, jax.Array]]]

STEP_FUNCTIONS = {"pretrain": pretrain.pretrain_step, "admm": admm.admm_step}


def _straight_line(networks: Networks) -> Networks:
    """The generators with the RCAB loop inside each group and the Res-clique block loop
    unrolled (same params, same math). The loop over HAN's groups stays: fully straight-line
    HAN did not compile in 150 s, this compiled in 53 s (H200)."""
    objective, perceptual = networks.objective, networks.perceptual
    return dataclasses.replace(
        networks,
        objective=objective.clone(block_unroll=objective.n_resblocks),
        perceptual=perceptual.clone(unroll=perceptual.n_blocks))


def phase_networks(networks: Networks, phase: str, platform: str = "gpu") -> Networks:
    """The networks a phase's step runs on `platform` (a jax device platform).

    `model.pretrain_unrolled`: on a GPU pre-training runs the generators as straight-line code,
    measured faster for that step on an H200 (56.6 vs 72.4 ms, bf16 batch 16), while the ADMM
    step, with three generator passes, was faster with loops (106.7 vs 115.2 ms;
    tools/PERF_NOTES.md). On a TPU the step keeps its loops: XLA's TPU compiler takes minutes
    over the straight-line program, paid at every start and phase switch (docs/design.md
    section 13, tools/PERF_NOTES.md)."""
    model = networks.config.model
    if phase == "pretrain" and model.get("pretrain_unrolled", False) and platform != "tpu":
        return _straight_line(networks)
    return networks


def make_train_steps(networks: Networks, state_shardings: TrainState, mesh: jax.sharding.Mesh,
                     data_axis: str = "data") -> dict[str, Step]:
    """{phase: jitted step}: the batch split along `data_axis`, VGG19 params and metrics
    replicated, the state sharded by `state_shardings` and donated (updated in place)."""
    replicated = NamedSharding(mesh, PartitionSpec())
    split = NamedSharding(mesh, PartitionSpec(data_axis))
    batch_shardings = {"lr": split, "hr": split}
    platform = mesh.devices.flat[0].platform
    return {
        phase: jax.jit(functools.partial(step, networks=phase_networks(networks, phase, platform)),
                       in_shardings=(state_shardings, batch_shardings, replicated),
                       out_shardings=(state_shardings, replicated), donate_argnums=0)
        for phase, step in STEP_FUNCTIONS.items()
    }
