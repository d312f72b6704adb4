"""Learning-rate schedules of the paper, and the one place where epochs become steps.

The paper (and config.optim) speaks in epochs; the steps count optimizer updates *within their
phase*: the pre-training schedule reads `TrainState.pretrain_count`, the PD-ADMM schedules read
`TrainState.admm_count`, so ADMM starts at its initial learning rate whatever the pre-training
length was (docs/design.md sections 6-7). One epoch = config.schedule.steps_per_epoch iterations.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections

Schedule = Callable[[jax.Array], jax.Array]


def epochs_to_steps(config: ml_collections.ConfigDict, epochs: float) -> int:
    """Epochs -> iterations with config.schedule.steps_per_epoch (the only such conversion)."""
    steps_per_epoch = config.schedule.steps_per_epoch
    if steps_per_epoch <= 0:
        raise ValueError(
            f"config.schedule.steps_per_epoch must be positive, got {steps_per_epoch}"
        )
    return int(round(epochs * steps_per_epoch))


def phase_steps(config: ml_collections.ConfigDict, phase: str) -> int:
    """Total iterations of a training phase: 'pretrain' or 'admm'."""
    if phase == "pretrain":
        return epochs_to_steps(config, config.schedule.pretrain_epochs)
    if phase == "admm":
        return epochs_to_steps(config, config.schedule.admm_epochs)
    raise ValueError(f"phase_steps: unknown phase {phase!r}; expected 'pretrain' or 'admm'")


def _step_decay(init_lr: float, boundaries: Sequence[int], factor: float) -> Schedule:
    """init_lr * factor ** (number of boundaries <= count); count = updates done so far."""
    boundaries_K = jnp.asarray(sorted(boundaries), dtype=jnp.int32)

    def schedule(count: jax.Array) -> jax.Array:
        passed = jnp.sum(jnp.asarray(count, jnp.int32) >= boundaries_K) if len(boundaries) else 0
        return jnp.asarray(init_lr, jnp.float32) * jnp.asarray(factor, jnp.float32) ** passed

    return schedule


def pretrain_lr(config: ml_collections.ConfigDict) -> Schedule:
    """Joint L1 pre-training: optim.pretrain_lr x decay_factor every decay_every_epochs."""
    optim = config.optim
    every = epochs_to_steps(config, optim.pretrain_decay_every_epochs)
    if every <= 0:
        raise ValueError(
            "config.optim.pretrain_decay_every_epochs must be positive, got "
            f"{optim.pretrain_decay_every_epochs}"
        )

    def schedule(count: jax.Array) -> jax.Array:
        decays = jnp.asarray(count, jnp.int32) // every
        return jnp.float32(optim.pretrain_lr) * jnp.float32(optim.pretrain_decay_factor) ** decays

    return schedule


def generator_lr(config: ml_collections.ConfigDict) -> Schedule:
    """Both generators in PD-ADMM: optim.generator_lr x decay_factor at each milestone epoch."""
    optim = config.optim
    boundaries = [epochs_to_steps(config, e) for e in optim.generator_milestones_epochs]
    return _step_decay(optim.generator_lr, boundaries, optim.generator_decay_factor)


def discriminator_lr(config: ml_collections.ConfigDict) -> Schedule:
    """The discriminator's constant rate (docs/design.md 9.5)."""
    return _step_decay(config.optim.disc_lr, [], 1.0)
