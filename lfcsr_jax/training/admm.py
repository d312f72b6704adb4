"""PD-ADMM training of the two-stage generator: one state dataclass and pure step functions.

One ADMM iteration (docs/design.md section 6, paper Eqs. 12-13), all inside one jitted function:
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
real_prob|fake_prob' (batch means from the D step), 'learning_rate/generator|discriminator' ('learning_rate/pretrain').

Non-finite input or loss: the whole update is skipped (params, optimizer states, BatchNorm stats
and s keep their old values), the counters still advance, and metrics['all_finite'] is False so
the training program can stop cleanly.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from lfcsr_jax.models.constraint import constraint_transform
from lfcsr_jax.models.generator import apply_generator
from lfcsr_jax.training import losses, schedules
from lfcsr_jax.training.train_state import Networks, TrainState
from lfcsr_jax.training.updates import apply_update, batch_images, finish_step, prefixed

Params = Any
Metrics = dict[str, jax.Array]


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
def discriminator_update(state: TrainState, real, fake, learning_rate, networks: Networks):
    """Vanilla-GAN D step: fake then real pass (BatchNorm batch statistics per pass)."""

    def loss_fn(d_params):
        fake_logits, stats = _discriminate(networks, d_params, state.discriminator_batch_stats, fake)
        real_logits, stats = _discriminate(networks, d_params, stats, real)
        loss = losses.discriminator_loss(real_logits, fake_logits)
        return loss, (stats, real_logits, fake_logits)

    (loss, (stats, real_logits, fake_logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.discriminator_params
    )
    params, opt_state = apply_update(
        state.discriminator_params, state.discriminator_opt_state, grads, networks.discriminator_tx, learning_rate
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


def _admm_generator_updates(state, fwd, hr, d_params, d_stats, vgg_params, generator_learning_rate, networks):
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
    perceptual_params, perceptual_opt = apply_update(
        state.perceptual_params, state.perceptual_opt_state, g_perceptual, networks.perceptual_tx, generator_learning_rate
    )

    # 13b: stage one, after a fresh stage-two forward with the new params (held constant).
    out_two_fresh = apply_generator(networks.perceptual, perceptual_params, fwd["out_one"])
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
    objective_params, objective_opt = apply_update(
        state.objective_params, state.objective_opt_state, g_objective, networks.objective_tx, generator_learning_rate
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
        **prefixed("loss", terms_one),
        **prefixed("loss", terms_two),
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


def _regularizer_generator_updates(state, fwd, hr, d_params, d_stats, vgg_params, generator_learning_rate, networks):
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
    perceptual_params, perceptual_opt = apply_update(
        state.perceptual_params, state.perceptual_opt_state, g_perceptual, networks.perceptual_tx, generator_learning_rate
    )
    objective_params, objective_opt = apply_update(
        state.objective_params, state.objective_opt_state, g_objective, networks.objective_tx, generator_learning_rate
    )
    metrics = {
        **_shared_generator_metrics(terms_one, terms_two, g_objective, g_perceptual),
        "loss/stage_one_total": loss_one,
        "loss/stage_two_total": loss_two,
        "loss/joint_total": total,
        "admm/regularizer": regulariser,
    }
    new = _generator_fields(objective_params, objective_opt, perceptual_params, perceptual_opt)
    return new, d_stats, metrics


def _two_stage_forward(state: TrainState, lr_images, networks: Networks) -> dict[str, Any]:
    """Y' = G_O(X), Y = G_P(Y') at the current params, with both pullbacks for reuse."""
    out_one, pullback_one = jax.vjp(
        lambda p: apply_generator(networks.objective, p, lr_images), state.objective_params
    )
    out_two, pullback_two = jax.vjp(
        lambda p, y: apply_generator(networks.perceptual, p, y), state.perceptual_params, out_one
    )
    return dict(out_one=out_one, out_two=out_two, pullback_one=pullback_one, pullback_two=pullback_two)


def dual_residual(objective_params, perceptual_params, lr_images, networks: Networks) -> jax.Array:
    """T(Y) - T(Y') from a fresh forward: the ADMM constraint residual r."""
    out_one = apply_generator(networks.objective, objective_params, lr_images)
    out_two = apply_generator(networks.perceptual, perceptual_params, out_one)
    config = networks.config
    return constraint_transform(out_two, config) - constraint_transform(out_one, config)


# ----------------------------------------------------------------------------- steps
def admm_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    vgg_params: Params,
    networks: Networks,
) -> tuple[TrainState, Metrics]:
    """One PD-ADMM iteration (or the Eq. 7 regularizer iteration): D, stage two, stage one, dual.

    Same signature as pretrain.pretrain_step once `networks` is bound. The step draws no random
    numbers; a future one would fold state.step into a key held in the state.
    """
    config = networks.config
    lr_images, hr = batch_images(batch)
    generator_learning_rate = schedules.generator_lr(config)(state.admm_count)
    disc_learning_rate = schedules.discriminator_lr(config)(state.admm_count)

    fwd = _two_stage_forward(state, lr_images, networks)
    role_one, _ = _stage_roles(config)
    fake = fwd["out_one"] if role_one == "perceptual" else fwd["out_two"]
    d_params, d_stats, d_opt, d_metrics = discriminator_update(
        state, hr, jax.lax.stop_gradient(fake), disc_learning_rate, networks
    )
    gen_updates = (
        _admm_generator_updates
        if config.admm.method == "admm"
        else _regularizer_generator_updates
    )
    new, d_stats, g_metrics = gen_updates(
        state, fwd, hr, d_params, d_stats, vgg_params, generator_learning_rate, networks
    )
    if config.admm.method == "admm":
        residual = dual_residual(new["objective_params"], new["perceptual_params"], lr_images, networks)
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
    metrics["learning_rate/generator"] = generator_learning_rate
    metrics["learning_rate/discriminator"] = disc_learning_rate
    updated = dict(
        new,
        discriminator_params=d_params,
        discriminator_batch_stats=d_stats,
        discriminator_opt_state=d_opt,
        dual_s=dual_s,
    )
    return finish_step(state, updated, metrics, (lr_images, hr), counter="admm_count")

