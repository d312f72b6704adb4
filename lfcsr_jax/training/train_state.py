"""The training state and the static bundle a step needs (networks, optimizers, loss functions).

`TrainState` holds everything that changes during training (donated, sharded, checkpointed);
`Networks` holds everything static (closed over by the jitted steps, never traced).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from lfcsr_jax import configuration
from lfcsr_jax.models import discriminator, generator, vgg19
from lfcsr_jax.models.constraint import constraint_transform
from lfcsr_jax.models.vgg19 import VGG19Weights
from lfcsr_jax.training import losses

Params = Any
Metrics = dict[str, jax.Array]
# (networks, stage output, hr) -> (loss, named terms)
ObjectiveLossFn = Callable[..., tuple[jax.Array, Metrics]]
# (networks, stage output, hr, fake logits or None, vgg params) -> (loss, named terms)
PerceptualLossFn = Callable[..., tuple[jax.Array, Metrics]]



@dataclasses.dataclass(frozen=True, eq=False)
class Networks:
    """Everything static a step needs: modules, optimizer transforms, loss functions, config.

    Passed as a closure/static argument, never traced. The *_tx transforms produce update
    directions only (clip + Adam moments); the step multiplies by the scheduled learning rate
    (schedules.py), so learning rates come from counters in the TrainState. Tests swap the
    transforms and loss functions with dataclasses.replace.
    """

    objective: nn.Module  # stage one: LR (B,h,w,3) -> Y' (B,H,W,3), 0-255 floats
    perceptual: nn.Module  # stage two: Y' -> Y
    discriminator: nn.Module  # apply(vars, x, train=True, mutable=['batch_stats'])
    vgg: nn.Module | None  # apply({'params'}, x, layers=(name,)) -> {name: feats}
    config: ml_collections.ConfigDict
    objective_tx: optax.GradientTransformation
    perceptual_tx: optax.GradientTransformation
    discriminator_tx: optax.GradientTransformation
    pretrain_tx: optax.GradientTransformation
    objective_loss_fn: ObjectiveLossFn = losses.paper_objective_loss
    perceptual_loss_fn: PerceptualLossFn = losses.paper_perceptual_loss


def _check_admm_config(config: ml_collections.ConfigDict) -> None:
    """The same check as train.validate_config (configuration.enum_problems), for callers that
    build networks or a state without the training program (tests, tools)."""
    problems = configuration.enum_problems(config)
    if problems:
        raise ValueError("; ".join(problems))


def make_optimizers(config: ml_collections.ConfigDict) -> dict[str, optax.GradientTransformation]:
    """Direction transforms: Adam(b1, b2, eps), generators clipped by value first in ADMM.

    Pre-training has no clipping: config.admm.grad_clip belongs to the ADMM phase.
    """
    optim = config.optim
    adam = lambda: optax.scale_by_adam(b1=optim.b1, b2=optim.b2, eps=optim.eps)  # noqa: E731
    clipped = lambda: optax.chain(optax.clip(config.admm.grad_clip), adam())  # noqa: E731
    return {
        "objective_tx": clipped(),
        "perceptual_tx": clipped(),
        "discriminator_tx": adam(),
        "pretrain_tx": adam(),
    }


def make_networks(config: ml_collections.ConfigDict) -> Networks:
    """The paper's networks for `config` (sizes from config.model, D tied to the HR patch).

    config.model.remat=True rematerialises each generator block in the backward pass (less
    activation memory, about one more forward of compute); the *_unroll fields set the loops.
    """
    _check_admm_config(config)
    hr_patch = config.input.lr_patch * config.model.scale
    dtype = generator.compute_dtype(config.model)
    return Networks(
        objective=generator.build_objective(config.model),
        perceptual=generator.build_perceptual(config.model),
        discriminator=discriminator.Discriminator(patch_size=hr_patch, dtype=dtype),
        vgg=vgg19.VGG19Features(dtype=dtype),
        config=config,
        **make_optimizers(config),
    )


# ----------------------------------------------------------------------------- state
@flax.struct.dataclass
class TrainState:
    """All that changes during training; donated, sharded and checkpointed together.

    Counters: `step` counts every iteration of both phases (logging, checkpoints, RNG folding);
    `pretrain_count` / `admm_count` count the iterations of each phase and drive its learning
    rate schedule, so the ADMM schedule starts at its epoch 0 after any pre-training length.
    `dual_s` is indexed by batch slot: (global batch, *T(HR patch) shape), float32, sharded on
    the data axis like the batch.
    """

    step: jax.Array
    pretrain_count: jax.Array
    admm_count: jax.Array
    objective_params: Params
    objective_opt_state: optax.OptState
    perceptual_params: Params
    perceptual_opt_state: optax.OptState
    pretrain_opt_state: optax.OptState  # one optimizer over {'objective', 'perceptual'}
    discriminator_params: Params
    discriminator_batch_stats: Params
    discriminator_opt_state: optax.OptState
    dual_s: jax.Array


def generator_params(state: TrainState) -> dict[str, Params]:
    """The export tree of exports.save_export: {'objective': ..., 'perceptual': ...}."""
    return {"objective": state.objective_params, "perceptual": state.perceptual_params}


def _patch_shapes(config: ml_collections.ConfigDict) -> tuple[tuple[int, ...], tuple[int, ...]]:
    lr_patch = config.input.lr_patch
    hr_patch = lr_patch * config.model.scale
    return (lr_patch, lr_patch, 3), (hr_patch, hr_patch, 3)


def init_train_state(
    rng: jax.Array, config: ml_collections.ConfigDict, networks: Networks
) -> TrainState:
    """Fresh parameters, optimizer states and s = 0; jittable (config and networks are static)."""
    _check_admm_config(config)
    lr_shape, hr_shape = _patch_shapes(config)
    rng_objective, rng_perceptual, rng_disc = jax.random.split(rng, 3)
    objective_params = networks.objective.init(rng_objective, jnp.zeros((1, *lr_shape)))["params"]
    perceptual_params = networks.perceptual.init(rng_perceptual, jnp.zeros((1, *hr_shape)))[
        "params"
    ]
    disc_vars = networks.discriminator.init(rng_disc, jnp.zeros((2, *hr_shape)), train=True)
    batch = config.train.global_batch_size
    s_shape = jax.eval_shape(
        lambda x: constraint_transform(x, config), jax.ShapeDtypeStruct((batch, *hr_shape), jnp.float32)
    ).shape
    generators = {"objective": objective_params, "perceptual": perceptual_params}
    # Three separate buffers: a donated state must not hold one buffer twice.
    step, pretrain_count, admm_count = (jnp.zeros((), jnp.int32) for _ in range(3))
    return TrainState(
        step=step,
        pretrain_count=pretrain_count,
        admm_count=admm_count,
        objective_params=objective_params,
        objective_opt_state=networks.objective_tx.init(objective_params),
        perceptual_params=perceptual_params,
        perceptual_opt_state=networks.perceptual_tx.init(perceptual_params),
        pretrain_opt_state=networks.pretrain_tx.init(generators),
        discriminator_params=disc_vars["params"],
        discriminator_batch_stats=disc_vars["batch_stats"],
        discriminator_opt_state=networks.discriminator_tx.init(disc_vars["params"]),
        dual_s=jnp.zeros(s_shape, jnp.float32),
    )


def init_vgg_params(rng: jax.Array, config: ml_collections.ConfigDict, networks: Networks) -> Params:
    """Randomly initialised VGG19Weights (tests and demo; the paper loads ImageNet weights)."""
    _, hr_shape = _patch_shapes(config)
    layer = config.model.vgg_layer
    params = networks.vgg.init(rng, jnp.zeros((1, *hr_shape)), layers=(layer,))["params"]
    return VGG19Weights(params, input_convention="torchvision")  # as before the field existed


def state_shardings(abstract_state: TrainState, mesh: jax.sharding.Mesh, axis: str = "data"):
    """NamedShardings for the state: s split along its batch axis, everything else replicated."""
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    shardings = jax.tree_util.tree_map(lambda _: replicated, abstract_state)
    return shardings.replace(
        dual_s=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axis))
    )


