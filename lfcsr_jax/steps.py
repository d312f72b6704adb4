"""The one place that jits the training steps: sharded, donated, one signature for every phase.

Every phase's step is `(state, batch, vgg_params) -> (state, metrics)`. `train.py` and
`tools/benchmark.py` both build their steps here, so the benchmark times exactly what training runs.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
from jax.sharding import NamedSharding, PartitionSpec

from lfcsr_jax import admm, pretrain
from lfcsr_jax.train_state import Networks, TrainState

Step = Callable[[TrainState, dict[str, jax.Array], Any], tuple[TrainState, dict[str, jax.Array]]]

STEP_FUNCTIONS = {"pretrain": pretrain.pretrain_step, "admm": admm.admm_step}


def make_train_steps(networks: Networks, state_shardings: TrainState, mesh: jax.sharding.Mesh,
                     data_axis: str = "data") -> dict[str, Step]:
    """{phase: jitted step}: the batch split along `data_axis`, VGG19 params and metrics
    replicated, the state sharded by `state_shardings` and donated (updated in place)."""
    replicated = NamedSharding(mesh, PartitionSpec())
    split = NamedSharding(mesh, PartitionSpec(data_axis))
    batch_shardings = {"lr": split, "hr": split}
    return {
        phase: jax.jit(functools.partial(step, networks=networks),
                       in_shardings=(state_shardings, batch_shardings, replicated),
                       out_shardings=(state_shardings, replicated), donate_argnums=0)
        for phase, step in STEP_FUNCTIONS.items()
    }
