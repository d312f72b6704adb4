"""The losses of LFc-SR (docs/design.md section 5): all on the 0-255 image scale, means over elements.

L_O = L1(Y', HR);  L_P = 0.1 L_CX(VGG(Y), VGG(HR)) + 1.0 L1(f_down(Y), f_down(HR)) + 0.001 L_Gen(Y);
the ADMM penalty rho/2 * mean((T(Y) - T(Y') + s)^2). Every loss is computed in float32, whatever
dtype the networks ran in.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from lfcsr_jax.models import wavelets
from lfcsr_jax.models.vgg19 import vgg_input

# Additive guards of the authors' contextual loss (Mechrez et al. as in PDASR's functional.py).
_CX_RELATIVE_EPS = 1e-5
_CX_LOG_EPS = 1e-5
_NORMALISE_EPS = 1e-12  # torch.nn.functional.normalize's floor on the norm.


def _f32(x: jax.Array) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


def l1(a: jax.Array, b: jax.Array) -> jax.Array:
    """Mean absolute difference over all elements (torch L1Loss, reduction='mean')."""
    return jnp.mean(jnp.abs(_f32(a) - _f32(b)))


def _l2_normalise(v_NxC: jax.Array) -> jax.Array:
    # x / max(|x|, eps) like torch's F.normalize, written with rsqrt of the squared norm so the
    # gradient stays finite for an all-zero vector (d|x|/dx is undefined at 0).
    squared = jnp.sum(v_NxC * v_NxC, axis=-1, keepdims=True)
    return v_NxC * jax.lax.rsqrt(jnp.maximum(squared, _NORMALISE_EPS**2))


def _contextual_similarity_one(x_NxC: jax.Array, y_MxC: jax.Array, bandwidth: float) -> jax.Array:
    """CX(x, y) of one image: generated positions i in x, target positions j (and k) in y."""
    cosine_NxM = jnp.clip(_l2_normalise(x_NxC) @ _l2_normalise(y_MxC).T, 0.0, 1.0)
    distance_NxM = 1.0 - cosine_NxM
    # Relative distance: each generated i is compared with its nearest target position.
    nearest_Nx1 = jnp.min(distance_NxM, axis=1, keepdims=True)
    relative_NxM = distance_NxM / (nearest_Nx1 + _CX_RELATIVE_EPS)
    # w_ij / sum_k w_ik with w = exp((1 - d~)/h): a softmax over k (stable for any h).
    cx_NxM = jax.nn.softmax((1.0 - relative_NxM) / bandwidth, axis=1)
    # For each target j the best-matching generated i, averaged over targets.
    return jnp.mean(jnp.max(cx_NxM, axis=0))


def contextual_loss(
    x_feats_BxhxwxC: jax.Array,
    y_feats_BxhxwxC: jax.Array,
    bandwidth: float = 0.1,
    images_at_once: int = 4,
) -> jax.Array:
    """Contextual loss of generated features x against target features y (docs/design.md 5).

    Memory: one hw x hw similarity per image (1296^2 for a 144 patch, 6.7 MB in float32).
    `images_at_once` images are processed together (vmap) and the groups one after another
    (lax.map), each group rematerialised in the backward pass (jax.checkpoint), so at most
    `images_at_once` similarity matrices and their few intermediates are alive at any time.
    Image b goes to group row b // k (k = B / images_at_once), so a batch sharded in contiguous
    blocks over devices stays local when images_at_once is a multiple of the device count.
    """
    if x_feats_BxhxwxC.shape != y_feats_BxhxwxC.shape or x_feats_BxhxwxC.ndim != 4:
        raise ValueError(
            "contextual_loss: x and y must be NHWC features of one shape, got "
            f"{x_feats_BxhxwxC.shape} and {y_feats_BxhxwxC.shape}"
        )
    if images_at_once < 1:
        raise ValueError(f"contextual_loss: images_at_once must be >= 1, got {images_at_once}")
    x = _f32(x_feats_BxhxwxC)
    y = _f32(y_feats_BxhxwxC)
    batch, height, width, channels = x.shape
    # Centre both by the target's per-channel mean over batch and space jointly.
    target_mean_C = jnp.mean(y, axis=(0, 1, 2))
    x_BxNxC = (x - target_mean_C).reshape(batch, height * width, channels)
    y_BxNxC = (y - target_mean_C).reshape(batch, height * width, channels)

    together = math.gcd(batch, images_at_once)
    steps = batch // together

    def grouped(a_BxNxC: jax.Array) -> jax.Array:  # (B, N, C) -> (steps, together, N, C)
        return jnp.swapaxes(a_BxNxC.reshape(together, steps, height * width, channels), 0, 1)

    @jax.checkpoint
    def group_similarity(xy):
        return jax.vmap(lambda a, b: _contextual_similarity_one(a, b, bandwidth))(*xy)

    cx_SxT = jax.lax.map(group_similarity, (grouped(x_BxNxC), grouped(y_BxNxC)))
    return jnp.mean(-jnp.log(cx_SxT + _CX_LOG_EPS))


def lr_band_l1(y_BxHxWx3: jax.Array, hr_BxHxWx3: jax.Array) -> jax.Array:
    """L_LF of Eq. 6: L1 between the two-level Haar LL bands (f_down) of output and HR."""
    return l1(wavelets.haar_ll(_f32(y_BxHxWx3), levels=2), wavelets.haar_ll(_f32(hr_BxHxWx3), levels=2))


def discriminator_loss(real_logits_Bx1: jax.Array, fake_logits_Bx1: jax.Array) -> jax.Array:
    """Vanilla GAN: BCE(D(HR), 1) + BCE(D(Y), 0), each a mean over the batch."""
    real = optax.sigmoid_binary_cross_entropy(_f32(real_logits_Bx1), jnp.ones_like(_f32(real_logits_Bx1)))
    fake = optax.sigmoid_binary_cross_entropy(_f32(fake_logits_Bx1), jnp.zeros_like(_f32(fake_logits_Bx1)))
    return jnp.mean(real) + jnp.mean(fake)


def generator_adversarial_loss(fake_logits_Bx1: jax.Array) -> jax.Array:
    """Non-saturating generator loss BCE(D(Y), 1)."""
    logits = _f32(fake_logits_Bx1)
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, jnp.ones_like(logits)))


def lf_penalty(t_y: jax.Array, t_y_obj: jax.Array, s: jax.Array, rho: float) -> jax.Array:
    """ADMM augmented term rho/2 * mean((T(Y) - T(Y') + s)^2) (mean reduction, docs/design.md 6)."""
    residual = _f32(t_y) - _f32(t_y_obj) + _f32(s)
    return 0.5 * rho * jnp.mean(residual * residual)


# ----------------------------------------------------------------------------- composition
# The two stage losses of the paper, as (networks, ...) functions so that tests and ablations can
# swap them (train_state.Networks.objective_loss_fn / perceptual_loss_fn).
def paper_objective_loss(networks: Any, y_BxHxWx3: jax.Array, hr_BxHxWx3: jax.Array):
    """L_O = L1(output, HR)."""
    loss = l1(y_BxHxWx3, hr_BxHxWx3)
    return loss, {"objective_l1": loss}


def paper_perceptual_loss(
    networks: Any,
    y_BxHxWx3: jax.Array,
    hr_BxHxWx3: jax.Array,
    fake_logits_Bx1: jax.Array | None,
    vgg_params: Any,
):
    """L_P = w_cx L_CX(VGG(Y), VGG(HR)) + w_lf L1(f_down(Y), f_down(HR)) + w_gan L_Gen(Y).

    Terms with weight 0 are not computed (no VGG pass when contextual_weight == 0).
    """
    cfg = networks.config.loss
    terms: dict[str, jax.Array] = {}
    total = jnp.float32(0.0)
    if cfg.contextual_weight:
        layer = networks.config.model.vgg_layer
        y_feats = vgg_features(networks, vgg_params, y_BxHxWx3, layer)
        hr_feats = jax.lax.stop_gradient(vgg_features(networks, vgg_params, hr_BxHxWx3, layer))
        terms["contextual"] = contextual_loss(y_feats, hr_feats, cfg.contextual_bandwidth)
        total = total + cfg.contextual_weight * terms["contextual"]
    if cfg.lr_band_weight:
        terms["lr_band_l1"] = lr_band_l1(y_BxHxWx3, hr_BxHxWx3)
        total = total + cfg.lr_band_weight * terms["lr_band_l1"]
    if cfg.gan_weight:
        terms["generator_adv"] = generator_adversarial_loss(fake_logits_Bx1)
        total = total + cfg.gan_weight * terms["generator_adv"]
    terms["perceptual_total"] = total
    return total, terms


def vgg_features(networks: Any, vgg_params: Any, images: jax.Array, layer: str):
    """`vgg_params` is a models.vgg19.VGG19Weights: the input follows the weights' convention."""
    if networks.vgg is None:
        raise ValueError("admm: config.loss.contextual_weight > 0 needs networks.vgg")
    normalised = vgg_input(images, vgg_params.input_convention,
                           networks.config.loss.vgg_input_scaling)
    return networks.vgg.apply({"params": vgg_params.params}, normalised, layers=(layer,))[layer]
