"""PD-ADMM training of the two-stage generator: one state dataclass and pure step functions.

One ADMM iteration (REFERENCE.md section 6, paper Eqs. 12-13), all inside one jitted function:
  1. discriminator step on Y = G_P(G_O(X)) (detached) and the HR batch;
  2. stage-two step (13a): L_P(Y) + rho/2 mean((T(Y) - T(Y') + s)^2), Y' constant;
  3. stage-one step (13b): fresh G_P forward with the new stage-two params, then
     L_O(Y') + rho/2 mean((T(Y) - T(Y') + s)^2), Y constant;
  4. dual step: fresh forward with both new param sets, s <- s + T(Y) - T(Y') (no rho factor).
Each step is one optimizer update. Stage one (the HAN, field `objective_*`) maps LR -> Y', stage
two (the Res-clique network, field `perceptual_*`) maps Y' -> Y; the field names follow the
networks (and the export format), whatever loss each stage gets.

Variants, all config values (config.admm):
  method 'admm' | 'regularizer' (Eq. 7: one joint objective L_1 + L_2 + lambda_r mean|T(Y)-T(Y')|
    differentiated through both stages, lambda_r = 0 = the unconstrained two-stage model);
  lowpass 'haar' (one-level LL, HR/2) | 'gaussian' (21x21, sigma 3, full resolution);
  constrained_band 'low' (T = lowpass) | 'high' (T = the complement: Haar HL/LH/HH, or x - blur);
  order 'objective_first' (paper O-P) | 'perceptual_first' (P-O: stage one gets L_P and the
    discriminator judges Y', stage two gets L_O). The paper's P-O model is order
    'perceptual_first' with constrained_band 'high': the objective stage two keeps the high
    bands of the perceptual stage one.

Sharing of forward passes: G_O(X) with the old params is the same in steps 1-3 and G_P(Y') with
the old params is the same in steps 1-2, so each is run once with `jax.vjp` and its pullback is
reused (exact, and about 1.1 TFLOP less per batch-16 iteration than re-running them).

Metrics (float32 scalars, plus the bool 'all_finite'): 'loss/<term>' for every loss term
('objective_l1', 'contextual', 'lr_band_l1', 'generator_adv', 'perceptual_total',
'discriminator', 'stage_one_total', 'stage_two_total', 'output_l1' = L1(Y, HR)),
'admm/penalty_stage_one|two', 'admm/residual_l1' = mean|T(Y) - T(Y')| after the step (the
regularizer method reports it before its update), 'admm/s_norm' (L2) and 'admm/s_rms',
'grad_norm/objective|perceptual|discriminator' (before clipping), 'disc/real_logit|fake_logit|
real_prob|fake_prob' (batch means from the D step), 'lr/generator|discriminator' ('lr/pretrain').

Non-finite input or loss: the whole update is skipped (params, optimizer states, BatchNorm stats
and s keep their old values), the counters still advance, and metrics['all_finite'] is False so
the training program can stop cleanly.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from lfcsr_jax import configuration, losses, schedules, wavelets

Params = Any
Metrics = dict[str, jax.Array]
# (networks, stage output, hr) -> (loss, named terms)
ObjectiveLossFn = Callable[..., tuple[jax.Array, Metrics]]
# (networks, stage output, hr, fake logits or None, vgg params) -> (loss, named terms)
PerceptualLossFn = Callable[..., tuple[jax.Array, Metrics]]

_METHODS = configuration.ADMM_METHODS
_BANDS = configuration.CONSTRAINED_BANDS
_ORDERS = configuration.STAGE_ORDERS
_LOWPASS = configuration.LOWPASS_KINDS


# ----------------------------------------------------------------------------- loss terms
def paper_objective_loss(networks: "Networks", y_BxHxWx3: jax.Array, hr_BxHxWx3: jax.Array):
    """L_O = L1(output, HR)."""
    loss = losses.l1(y_BxHxWx3, hr_BxHxWx3)
    return loss, {"objective_l1": loss}


def paper_perceptual_loss(
    networks: "Networks",
    y_BxHxWx3: jax.Array,
    hr_BxHxWx3: jax.Array,
    fake_logits_Bx1: jax.Array | None,
    vgg_params: Params,
):
    """L_P = w_cx L_CX(VGG(Y), VGG(HR)) + w_lf L1(f_down(Y), f_down(HR)) + w_gan L_Gen(Y).

    Terms with weight 0 are not computed (no VGG pass when contextual_weight == 0).
    """
    cfg = networks.config.loss
    terms: Metrics = {}
    total = jnp.float32(0.0)
    if cfg.contextual_weight:
        layer = networks.config.model.vgg_layer
        y_feats = _vgg_features(networks, vgg_params, y_BxHxWx3, layer)
        hr_feats = jax.lax.stop_gradient(_vgg_features(networks, vgg_params, hr_BxHxWx3, layer))
        terms["contextual"] = losses.contextual_loss(y_feats, hr_feats, cfg.contextual_bandwidth)
        total = total + cfg.contextual_weight * terms["contextual"]
    if cfg.lr_band_weight:
        terms["lr_band_l1"] = losses.lr_band_l1(y_BxHxWx3, hr_BxHxWx3)
        total = total + cfg.lr_band_weight * terms["lr_band_l1"]
    if cfg.gan_weight:
        terms["generator_adv"] = losses.generator_adversarial_loss(fake_logits_Bx1)
        total = total + cfg.gan_weight * terms["generator_adv"]
    terms["perceptual_total"] = total
    return total, terms


def _vgg_features(networks: "Networks", vgg_params: Any, images: jax.Array, layer: str):
    """`vgg_params` is a models.vgg19.VGG19Weights: the input follows the weights' convention."""
    from lfcsr_jax.models.vgg19 import vgg_input

    if networks.vgg is None:
        raise ValueError("admm: config.loss.contextual_weight > 0 needs networks.vgg")
    normalised = vgg_input(images, vgg_params.input_convention,
                           networks.config.loss.vgg_input_scaling)
    return networks.vgg.apply({"params": vgg_params.params}, normalised, layers=(layer,))[layer]


# ----------------------------------------------------------------------------- static bundle
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
    objective_loss_fn: ObjectiveLossFn = paper_objective_loss
    perceptual_loss_fn: PerceptualLossFn = paper_perceptual_loss


def _check_admm_config(config: ml_collections.ConfigDict) -> None:
    admm = config.admm
    for key, value, allowed in (
        ("method", admm.method, _METHODS),
        ("constrained_band", admm.constrained_band, _BANDS),
        ("order", admm.order, _ORDERS),
        ("lowpass", admm.lowpass, _LOWPASS),
    ):
        if value not in allowed:
            raise ValueError(f"config.admm.{key}: unknown value {value!r}; expected one of {allowed}")


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


def make_networks(config: ml_collections.ConfigDict, remat: bool = False) -> Networks:
    """The paper's networks for `config` (sizes from config.model, D tied to the HR patch).

    remat=True rematerialises each generator block in the backward pass (less activation
    memory, about one more forward of compute).
    """
    _check_admm_config(config)
    from lfcsr_jax.models import discriminator, generator, vgg19  # heavy; only when needed

    hr_patch = config.input.lr_patch * config.model.scale
    dtype = generator.compute_dtype(config.model)
    return Networks(
        objective=generator.build_objective(config.model, remat=remat),
        perceptual=generator.build_perceptual(config.model, remat=remat),
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
    """The export tree of checkpointing.save_export: {'objective': ..., 'perceptual': ...}."""
    return {"objective": state.objective_params, "perceptual": state.perceptual_params}


def constraint_transform(x_BxHxWx3: jax.Array, config: ml_collections.ConfigDict) -> jax.Array:
    """T of the equality constraint T(Y) = T(Y'), in float32 (config.admm band and lowpass)."""
    x = jnp.asarray(x_BxHxWx3, jnp.float32)
    if config.admm.constrained_band == "low":
        return wavelets.lowpass(x, config.admm.lowpass)
    if config.admm.constrained_band == "high":
        return wavelets.highpass(x, config.admm.lowpass)
    raise ValueError(
        f"config.admm.constrained_band: unknown value {config.admm.constrained_band!r}"
    )


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
    from lfcsr_jax.models.vgg19 import VGG19Weights

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


# ----------------------------------------------------------------------------- helpers
def _images(batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    for key in ("lr", "hr"):
        if key not in batch:
            raise ValueError(f"admm: batch must hold 'lr' and 'hr' images, missing {key!r}")
    return jnp.asarray(batch["lr"], jnp.float32), jnp.asarray(batch["hr"], jnp.float32)


def _update(params: Params, opt_state, grads: Params, tx: optax.GradientTransformation, lr):
    """One optimizer step: params - lr * tx(grads)."""
    direction, new_opt_state = tx.update(grads, opt_state, params)
    updates = jax.tree_util.tree_map(lambda d: -lr * d, direction)
    return optax.apply_updates(params, updates), new_opt_state


def _all_finite(*trees: Any) -> jax.Array:
    leaves = [x for tree in trees for x in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def _select(keep_new: jax.Array, new: Any, old: Any) -> Any:
    return jax.tree_util.tree_map(lambda n, o: jnp.where(keep_new, n, o), new, old)


def _prefixed(prefix: str, terms: Metrics) -> Metrics:
    return {f"{prefix}/{name}": jnp.asarray(value, jnp.float32) for name, value in terms.items()}


def _stage_roles(config: ml_collections.ConfigDict) -> tuple[str, str]:
    """Which loss each stage gets: (stage one, stage two)."""
    if config.admm.order == "objective_first":
        return "objective", "perceptual"
    return "perceptual", "objective"


def _discriminate(networks: Networks, d_params, d_stats, images):
    logits, new_vars = networks.discriminator.apply(
        {"params": d_params, "batch_stats": d_stats}, images, train=True, mutable=["batch_stats"]
    )
    return logits, new_vars["batch_stats"]


def _stage_output_loss(role: str, out, hr, d_params, d_stats, vgg_params, networks: Networks):
    """Loss of one stage's output for its role; returns (loss, (terms, BatchNorm stats))."""
    if role == "objective":
        loss, terms = networks.objective_loss_fn(networks, out, hr)
        return loss, (terms, d_stats)
    logits = None
    if networks.config.loss.gan_weight:
        # BatchNorm in training mode updates its running stats here too, as torch does.
        logits, d_stats = _discriminate(networks, d_params, d_stats, out)
    loss, terms = networks.perceptual_loss_fn(networks, out, hr, logits, vgg_params)
    return loss, (terms, d_stats)


# ----------------------------------------------------------------------------- sub-steps
def discriminator_update(state: TrainState, real, fake, lr, networks: Networks):
    """Vanilla-GAN D step: fake then real pass (BatchNorm batch statistics per pass)."""

    def loss_fn(d_params):
        fake_logits, stats = _discriminate(networks, d_params, state.discriminator_batch_stats, fake)
        real_logits, stats = _discriminate(networks, d_params, stats, real)
        loss = losses.discriminator_loss(real_logits, fake_logits)
        return loss, (stats, real_logits, fake_logits)

    (loss, (stats, real_logits, fake_logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.discriminator_params
    )
    params, opt_state = _update(
        state.discriminator_params, state.discriminator_opt_state, grads, networks.discriminator_tx, lr
    )
    real_logits = jnp.asarray(real_logits, jnp.float32)
    fake_logits = jnp.asarray(fake_logits, jnp.float32)
    metrics = {
        "loss/discriminator": loss,
        "disc/real_logit": jnp.mean(real_logits),
        "disc/fake_logit": jnp.mean(fake_logits),
        "disc/real_prob": jnp.mean(jax.nn.sigmoid(real_logits)),
        "disc/fake_prob": jnp.mean(jax.nn.sigmoid(fake_logits)),
        "grad_norm/discriminator": optax.tree.norm(grads),
    }
    return params, stats, opt_state, metrics


def _admm_generator_updates(state, fwd, hr, d_params, d_stats, vgg_params, lr_g, networks):
    """Steps 13a (stage two, stage-one output constant) then 13b (stage one, Y constant)."""
    config = networks.config
    role_one, role_two = _stage_roles(config)
    rho = config.admm.rho
    s = state.dual_s

    # 13a: stage two. The pullback of G_P at the old params and Y' is reused from the forward.
    t_one = constraint_transform(fwd["out_one"], config)

    def loss_two(out_two):
        loss, (terms, stats) = _stage_output_loss(
            role_two, out_two, hr, d_params, d_stats, vgg_params, networks
        )
        penalty = losses.lf_penalty(constraint_transform(out_two, config), t_one, s, rho)
        return loss + penalty, (terms, penalty, stats)

    (total_two, (terms_two, penalty_two, d_stats)), g_out_two = jax.value_and_grad(
        loss_two, has_aux=True
    )(fwd["out_two"])
    g_perceptual, _ = fwd["pullback_two"](g_out_two)
    perceptual_params, perceptual_opt = _update(
        state.perceptual_params, state.perceptual_opt_state, g_perceptual, networks.perceptual_tx, lr_g
    )

    # 13b: stage one, after a fresh stage-two forward with the new params (held constant).
    out_two_fresh = networks.perceptual.apply({"params": perceptual_params}, fwd["out_one"])
    t_two = jax.lax.stop_gradient(constraint_transform(out_two_fresh, config))

    def loss_one(out_one):
        loss, (terms, stats) = _stage_output_loss(
            role_one, out_one, hr, d_params, d_stats, vgg_params, networks
        )
        penalty = losses.lf_penalty(t_two, constraint_transform(out_one, config), s, rho)
        return loss + penalty, (terms, penalty, stats)

    (total_one, (terms_one, penalty_one, d_stats)), g_out_one = jax.value_and_grad(
        loss_one, has_aux=True
    )(fwd["out_one"])
    (g_objective,) = fwd["pullback_one"](g_out_one)
    objective_params, objective_opt = _update(
        state.objective_params, state.objective_opt_state, g_objective, networks.objective_tx, lr_g
    )
    metrics = {
        **_shared_generator_metrics(terms_one, terms_two, g_objective, g_perceptual),
        "loss/stage_one_total": total_one,
        "loss/stage_two_total": total_two,
        "admm/penalty_stage_one": penalty_one,
        "admm/penalty_stage_two": penalty_two,
    }
    new = _generator_fields(objective_params, objective_opt, perceptual_params, perceptual_opt)
    return new, d_stats, metrics


def _shared_generator_metrics(terms_one, terms_two, g_objective, g_perceptual) -> Metrics:
    return {
        **_prefixed("loss", terms_one),
        **_prefixed("loss", terms_two),
        "grad_norm/objective": optax.tree.norm(g_objective),
        "grad_norm/perceptual": optax.tree.norm(g_perceptual),
    }


def _generator_fields(objective_params, objective_opt, perceptual_params, perceptual_opt):
    """The TrainState fields a generator update replaces."""
    return dict(
        objective_params=objective_params,
        objective_opt_state=objective_opt,
        perceptual_params=perceptual_params,
        perceptual_opt_state=perceptual_opt,
    )


def _regularizer_generator_updates(state, fwd, hr, d_params, d_stats, vgg_params, lr_g, networks):
    """Eq. 7: L_1(Y') + L_2(Y) + lambda_r mean|T(Y) - T(Y')|, gradients through both stages."""
    config = networks.config
    role_one, role_two = _stage_roles(config)

    def joint(out_one, out_two):
        loss_one, (terms_one, stats) = _stage_output_loss(
            role_one, out_one, hr, d_params, d_stats, vgg_params, networks
        )
        loss_two, (terms_two, stats) = _stage_output_loss(
            role_two, out_two, hr, d_params, stats, vgg_params, networks
        )
        gap = constraint_transform(out_two, config) - constraint_transform(out_one, config)
        regulariser = jnp.mean(jnp.abs(gap))
        total = loss_one + loss_two + config.admm.lambda_r * regulariser
        return total, (terms_one, terms_two, loss_one, loss_two, regulariser, stats)

    (total, aux), (g_out_one, g_out_two) = jax.value_and_grad(joint, argnums=(0, 1), has_aux=True)(
        fwd["out_one"], fwd["out_two"]
    )
    terms_one, terms_two, loss_one, loss_two, regulariser, d_stats = aux
    g_perceptual, g_out_one_through_two = fwd["pullback_two"](g_out_two)
    (g_objective,) = fwd["pullback_one"](g_out_one + g_out_one_through_two)
    perceptual_params, perceptual_opt = _update(
        state.perceptual_params, state.perceptual_opt_state, g_perceptual, networks.perceptual_tx, lr_g
    )
    objective_params, objective_opt = _update(
        state.objective_params, state.objective_opt_state, g_objective, networks.objective_tx, lr_g
    )
    metrics = {
        **_shared_generator_metrics(terms_one, terms_two, g_objective, g_perceptual),
        "loss/stage_one_total": loss_one,
        "loss/stage_two_total": loss_two,
        "loss/joint_total": total,
        "admm/regulariser": regulariser,
    }
    new = _generator_fields(objective_params, objective_opt, perceptual_params, perceptual_opt)
    return new, d_stats, metrics


def _two_stage_forward(state: TrainState, lr_img, networks: Networks) -> dict[str, Any]:
    """Y' = G_O(X), Y = G_P(Y') at the current params, with both pullbacks for reuse."""
    out_one, pullback_one = jax.vjp(
        lambda p: networks.objective.apply({"params": p}, lr_img), state.objective_params
    )
    out_two, pullback_two = jax.vjp(
        lambda p, y: networks.perceptual.apply({"params": p}, y), state.perceptual_params, out_one
    )
    return dict(out_one=out_one, out_two=out_two, pullback_one=pullback_one, pullback_two=pullback_two)


def dual_residual(objective_params, perceptual_params, lr_img, networks: Networks) -> jax.Array:
    """T(Y) - T(Y') from a fresh forward: the ADMM constraint residual r."""
    out_one = networks.objective.apply({"params": objective_params}, lr_img)
    out_two = networks.perceptual.apply({"params": perceptual_params}, out_one)
    config = networks.config
    return constraint_transform(out_two, config) - constraint_transform(out_one, config)


# ----------------------------------------------------------------------------- steps
def admm_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    vgg_params: Params,
    rng: jax.Array,
    networks: Networks,
) -> tuple[TrainState, Metrics]:
    """One PD-ADMM iteration (or the Eq. 7 regularizer iteration): D, stage two, stage one, dual.

    The step draws no random numbers today; `rng` is accepted (fold in state.step for any
    future use) so the training program's call never changes.
    """
    del rng
    config = networks.config
    lr_img, hr = _images(batch)
    lr_g = schedules.generator_lr(config)(state.admm_count)
    lr_d = schedules.discriminator_lr(config)(state.admm_count)

    fwd = _two_stage_forward(state, lr_img, networks)
    role_one, _ = _stage_roles(config)
    fake = fwd["out_one"] if role_one == "perceptual" else fwd["out_two"]
    d_params, d_stats, d_opt, d_metrics = discriminator_update(
        state, hr, jax.lax.stop_gradient(fake), lr_d, networks
    )
    gen_updates = (
        _admm_generator_updates
        if config.admm.method == "admm"
        else _regularizer_generator_updates
    )
    new, d_stats, g_metrics = gen_updates(
        state, fwd, hr, d_params, d_stats, vgg_params, lr_g, networks
    )
    if config.admm.method == "admm":
        residual = dual_residual(new["objective_params"], new["perceptual_params"], lr_img, networks)
        dual_s = state.dual_s + residual
    else:  # no dual variable; report the residual of this step's forward
        residual = constraint_transform(fwd["out_two"], config) - constraint_transform(
            fwd["out_one"], config
        )
        dual_s = state.dual_s

    metrics = {**d_metrics, **g_metrics}
    metrics["loss/output_l1"] = losses.l1(fwd["out_two"], hr)
    metrics["admm/residual_l1"] = jnp.mean(jnp.abs(residual))
    metrics["admm/s_norm"] = jnp.sqrt(jnp.sum(dual_s * dual_s))
    metrics["admm/s_rms"] = jnp.sqrt(jnp.mean(dual_s * dual_s))
    metrics["lr/generator"] = lr_g
    metrics["lr/discriminator"] = lr_d
    ok = _all_finite(lr_img, hr, metrics)
    metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
    metrics["all_finite"] = ok

    updated = dict(
        new,
        discriminator_params=d_params,
        discriminator_batch_stats=d_stats,
        discriminator_opt_state=d_opt,
        dual_s=dual_s,
    )
    current = {name: getattr(state, name) for name in updated}
    new_state = state.replace(
        step=state.step + 1,
        admm_count=state.admm_count + 1,
        **_select(ok, updated, current),
    )
    return new_state, metrics


def pretrain_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    vgg_params: Params,
    networks: Networks,
) -> tuple[TrainState, Metrics]:
    """Joint L1 pre-training: L1(Y', HR) + L1(Y, HR), G_P's gradient flowing into G_O.

    `vgg_params` is unused (same call shape as admm_step for the training program).
    """
    del vgg_params
    lr_img, hr = _images(batch)
    lr = schedules.pretrain_lr(networks.config)(state.pretrain_count)

    def loss_fn(generators):
        out_one = networks.objective.apply({"params": generators["objective"]}, lr_img)
        out_two = networks.perceptual.apply({"params": generators["perceptual"]}, out_one)
        l1_one, l1_two = losses.l1(out_one, hr), losses.l1(out_two, hr)
        return l1_one + l1_two, (l1_one, l1_two)

    generators = generator_params(state)
    (total, (l1_one, l1_two)), grads = jax.value_and_grad(loss_fn, has_aux=True)(generators)
    new_generators, new_opt = _update(generators, state.pretrain_opt_state, grads, networks.pretrain_tx, lr)
    metrics = {
        "loss/pretrain_total": total,
        "loss/objective_l1": l1_one,
        "loss/output_l1": l1_two,
        "grad_norm/objective": optax.tree.norm(grads["objective"]),
        "grad_norm/perceptual": optax.tree.norm(grads["perceptual"]),
        "lr/pretrain": lr,
    }
    ok = _all_finite(lr_img, hr, metrics)
    metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
    metrics["all_finite"] = ok
    updated = dict(
        objective_params=new_generators["objective"],
        perceptual_params=new_generators["perceptual"],
        pretrain_opt_state=new_opt,
    )
    current = {name: getattr(state, name) for name in updated}
    new_state = state.replace(
        step=state.step + 1,
        pretrain_count=state.pretrain_count + 1,
        **_select(ok, updated, current),
    )
    return new_state, metrics


def make_admm_step(networks: Networks):
    """admm_step jitted with the state donated: (state, batch, vgg_params, rng) -> (state, metrics)."""
    return jax.jit(functools.partial(admm_step, networks=networks), donate_argnums=0)


def make_pretrain_step(networks: Networks):
    """pretrain_step jitted with the state donated: (state, batch, vgg_params) -> (state, metrics)."""
    return jax.jit(functools.partial(pretrain_step, networks=networks), donate_argnums=0)
