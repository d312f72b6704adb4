"""Joint L1 pre-training of both stages (docs/design.md section 7), one jittable step."""

from __future__ import annotations

from typing import Any

import jax
import optax

from lfcsr_jax.models.generator import apply_generator
from lfcsr_jax.training import losses, schedules
from lfcsr_jax.training.train_state import Networks, TrainState, generator_params
from lfcsr_jax.training.updates import apply_update, batch_images, finish_step

Params = Any
Metrics = dict[str, jax.Array]


def pretrain_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    vgg_params: Params,
    networks: Networks,
) -> tuple[TrainState, Metrics]:
    """Joint L1 pre-training: L1(Y', HR) + L1(Y, HR), G_P's gradient flowing into G_O.

    `vgg_params` is unused: every step has the signature (state, batch, vgg_params) -> (state,
    metrics), so the training loop and the benchmark call any phase the same way.
    """
    del vgg_params  # the frozen VGG19 is only read by the ADMM phase's contextual loss
    lr_images, hr = batch_images(batch)
    learning_rate = schedules.pretrain_lr(networks.config)(state.pretrain_count)

    def loss_fn(generators):
        out_one = apply_generator(networks.objective, generators["objective"], lr_images)
        out_two = apply_generator(networks.perceptual, generators["perceptual"], out_one)
        l1_one, l1_two = losses.l1(out_one, hr), losses.l1(out_two, hr)
        return l1_one + l1_two, (l1_one, l1_two)

    generators = generator_params(state)
    (total, (l1_one, l1_two)), grads = jax.value_and_grad(loss_fn, has_aux=True)(generators)
    new_generators, new_opt = apply_update(generators, state.pretrain_opt_state, grads, networks.pretrain_tx, learning_rate)
    metrics = {
        "loss/pretrain_total": total,
        "loss/objective_l1": l1_one,
        "loss/output_l1": l1_two,
        "grad_norm/objective": optax.tree.norm(grads["objective"]),
        "grad_norm/perceptual": optax.tree.norm(grads["perceptual"]),
        "learning_rate/pretrain": learning_rate,
    }
    updated = dict(
        objective_params=new_generators["objective"],
        perceptual_params=new_generators["perceptual"],
        pretrain_opt_state=new_opt,
    )
    return finish_step(state, updated, metrics, (lr_images, hr), counter="pretrain_count")

