"""Building blocks of the two generators (docs/design.md sections 2-3), NHWC, flax.linen.

Every block keeps its parameters in float32 (`param_dtype`) and computes in `dtype`.
Channel orders follow the authors' PyTorch modules so that their weights import unchanged
(see lfcsr_jax/convert.py): PixelShuffle uses PyTorch's (c, i, j) channel order and every
concatenation keeps the order of the corresponding `torch.cat`.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# PyTorch's default Conv init: kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
TORCH_CONV_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def conv(
    features: int, kernel: int = 3, dtype: Dtype = jnp.float32, name: str | None = None
) -> nn.Conv:
    """A 'same'-padded conv with bias (PyTorch `padding=k//2`), float32 params."""
    return nn.Conv(
        features,
        (kernel, kernel),
        padding=kernel // 2,
        use_bias=True,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=TORCH_CONV_INIT,
        name=name,
    )


def apply_mask(x_BxHxWxC: jax.Array, mask_BxHxWx1: jax.Array | None) -> jax.Array:
    """Zeroes the padded region of a bucketed input (mask 1 = valid pixel, 0 = padding).

    Inference runs images padded up to a few bucketed shapes (lfcsr_jax/inference/). Zeroing
    the padding after every layer makes each 'same' convolution see the zeros it would see at the
    true border, so the cropped output equals the unpadded forward. None (training, exact shapes)
    returns `x` untouched: no extra op in the graph."""
    if mask_BxHxWx1 is None:
        return x_BxHxWxC
    return x_BxHxWxC * mask_BxHxWx1.astype(x_BxHxWxC.dtype)


def upsample_mask(mask_BxHxWx1: jax.Array | None, factor: int) -> jax.Array | None:
    """The valid-pixel mask at `factor` x the resolution (each pixel becomes a factor^2 block)."""
    if mask_BxHxWx1 is None:
        return None
    return jnp.repeat(jnp.repeat(mask_BxHxWx1, factor, axis=1), factor, axis=2)


def pixel_shuffle(x_BxHxWxC: jax.Array, factor: int = 2) -> jax.Array:
    """PyTorch PixelShuffle on NHWC: channel c*f*f + i*f + j -> pixel (f*y+i, f*x+j), channel c."""
    b, h, w, channels = x_BxHxWxC.shape
    c = channels // (factor * factor)
    x = x_BxHxWxC.reshape(b, h, w, c, factor, factor)
    x = x.transpose(0, 1, 4, 2, 5, 3)  # (b, h, i, w, j, c)
    return x.reshape(b, h * factor, w * factor, c)


def mean_shift(
    x_BxHxWx3: jax.Array, rgb_mean: Sequence[float], rgb_range: float, sign: float
) -> jax.Array:
    """The frozen MeanShift of EDSR-style nets (std 1): x + sign * rgb_range * mean, in float32."""
    mean = jnp.asarray(rgb_mean, jnp.float32) * rgb_range
    return x_BxHxWx3.astype(jnp.float32) + sign * mean


@jax.custom_jvp
def relu(x: jax.Array) -> jax.Array:
    """max(x, 0), differentiated from its OUTPUT (out > 0 exactly where x > 0).

    jax.nn.relu's derivative reads its input, so the backward keeps a 1-byte mask of the whole
    pre-activation map as an extra residual, computed by a kernel of its own. Reading the
    output, which the next convolution's weight gradient keeps anyway, lets cuDNN fuse the ReLU
    into the convolution before it (docs/design.md section 13)."""
    return jnp.maximum(x, 0)


@relu.defjvp
def _relu_jvp(primals: tuple[jax.Array], tangents: tuple[jax.Array]) -> tuple[jax.Array, jax.Array]:
    out = relu(primals[0])
    # On a GPU the barrier keeps XLA from rewriting `max(x, 0) > 0` as `x > 0`: that reads the
    # pre-activation in the backward, so the convolution must write it out and cannot take the
    # ReLU inside (200 kernels of the pre-training step, docs/design.md section 13). Elsewhere
    # it could only stop fusion.
    positive = jax.lax.platform_dependent(
        out, cuda=jax.lax.optimization_barrier, default=lambda value: value) > 0
    return out, jnp.where(positive, tangents[0], jnp.zeros_like(tangents[0]))


@jax.custom_vjp
def biased_relu(conv_BxHxWxC: jax.Array, bias_C: jax.Array) -> jax.Array:
    """relu(conv + bias) for a conv output whose bias was kept apart (ConvBiasApart).

    Same math and derivative as `relu` on the biased map (from the output, behind the barrier).
    Its own gradient exists for what the backward keeps: `relu`'s derivative rule makes the
    forward save the 1-byte mask of where the map is positive, for every block, beside the
    output that the next convolution's weight gradient keeps anyway. Here the backward computes
    the mask from that output (docs/design.md section 13)."""
    return jnp.maximum(conv_BxHxWxC + bias_C.astype(conv_BxHxWxC.dtype), 0)


def _biased_relu_forward(conv_BxHxWxC, bias_C):
    out = biased_relu(conv_BxHxWxC, bias_C)
    return out, (out, bias_C)


def _biased_relu_backward(residuals, grad_BxHxWxC):
    out, bias_C = residuals
    positive = jax.lax.platform_dependent(
        out, cuda=jax.lax.optimization_barrier, default=lambda value: value) > 0
    grad_mapped = jnp.where(positive, grad_BxHxWxC, jnp.zeros_like(grad_BxHxWxC))
    # The bias gradient accumulates in float32 (autodiff summed in the compute dtype).
    grad_bias_C = jnp.sum(grad_mapped.astype(jnp.float32), axis=(0, 1, 2))
    return grad_mapped, grad_bias_C.astype(bias_C.dtype)


biased_relu.defvjp(_biased_relu_forward, _biased_relu_backward)


class PReLU(nn.Module):
    """Per-channel PReLU, slopes initialised to 0.25 like torch.nn.PReLU."""

    init_slope: float = 0.25

    @nn.compact
    def slope(self, channels: int) -> jax.Array:
        """The (C,) float32 slopes."""
        return self.param("slope", nn.initializers.constant(self.init_slope), (channels,),
                          jnp.float32)

    def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
        slope_C = self.slope(x_BxHxWxC.shape[-1]).astype(x_BxHxWxC.dtype)
        return jnp.where(x_BxHxWxC >= 0, x_BxHxWxC, slope_C * x_BxHxWxC)


# Up to this many pixels per batch the two parameter sums of biased_prelu are left whole:
# measured on the deviceless H200 compile, 1,024 (tiny config) costs one kernel more per unit
# with the rows summed first, 82,944 (the paper's training batch) one kernel fewer. Sizes in
# between are not measured.
ONE_KERNEL_SUM_PIXELS = 4096


@jax.custom_vjp
def biased_prelu(conv_BxHxWxC: jax.Array, bias_C: jax.Array, slope_C: jax.Array) -> jax.Array:
    """PReLU(conv + bias) for a conv output whose bias was kept apart (ConvBiasApart).

    Same math as PReLU on the biased map. Its own gradient exists so that the bias and slope
    gradients, both sums over every pixel of the batch, finish in ONE reduction (of their row
    sums side by side): XLA splits a sum over that many pixels into two kernels, and two
    separate sums cost a second-stage kernel more (docs/design.md section 13)."""
    return _biased_prelu_forward(conv_BxHxWxC, bias_C, slope_C)[0]


def _biased_prelu_forward(conv_BxHxWxC, bias_C, slope_C):
    mapped_BxHxWxC = conv_BxHxWxC + bias_C.astype(conv_BxHxWxC.dtype)
    slope = slope_C.astype(mapped_BxHxWxC.dtype)
    out = jnp.where(mapped_BxHxWxC >= 0, mapped_BxHxWxC, slope * mapped_BxHxWxC)
    # The biased map is the residual, so that the bias add stays inside the cuDNN convolution.
    return out, (mapped_BxHxWxC, bias_C, slope_C)


def _biased_prelu_backward(residuals, grad_BxHxWxC):
    mapped_BxHxWxC, bias_C, slope_C = residuals
    negative = mapped_BxHxWxC < 0
    slope = slope_C.astype(grad_BxHxWxC.dtype)
    grad_mapped = jnp.where(negative, slope * grad_BxHxWxC, grad_BxHxWxC)
    grad_f32 = grad_mapped.astype(jnp.float32)
    grad_slope_terms = jnp.where(negative, grad_BxHxWxC.astype(jnp.float32)
                                 * mapped_BxHxWxC.astype(jnp.float32), 0.0)
    batch, height, width, channels = grad_BxHxWxC.shape
    if batch * height * width <= ONE_KERNEL_SUM_PIXELS:
        # Few pixels: XLA sums both in one kernel, the one that writes the map's gradient.
        return (grad_mapped, jnp.sum(grad_f32, axis=(0, 1, 2)).astype(bias_C.dtype),
                jnp.sum(grad_slope_terms, axis=(0, 1, 2)).astype(slope_C.dtype))
    # Sums along each image row first (short enough to be one kernel, sibling reductions of the
    # same shape that XLA computes in the pass that writes the map's gradient), then ONE sum of
    # both over every row.
    row_sums_BxHx2C = jnp.concatenate(
        [jnp.sum(grad_f32, axis=2), jnp.sum(grad_slope_terms, axis=2)], axis=-1)
    sums_2C = jnp.sum(row_sums_BxHx2C, axis=(0, 1))
    return (grad_mapped, sums_2C[:channels].astype(bias_C.dtype),
            sums_2C[channels:].astype(slope_C.dtype))


biased_prelu.defvjp(_biased_prelu_forward, _biased_prelu_backward)


class PooledDense(nn.Module):
    """A 1x1 convolution applied to a pooled (B, C) vector, written as the matrix product it is.

    Params keep nn.Conv's layout and names (kernel (1, 1, in, out), bias (out,)), so converted
    weights and checkpoints are unchanged. On the (B, C) vector XLA fuses it with the activations
    around it, where a 1x1 conv on a (B, 1, 1, C) map is a convolution kernel of its own."""

    features: int

    @nn.compact
    def params(self, in_features: int) -> tuple[jax.Array, jax.Array]:
        """The (1, 1, in, out) kernel and the (out,) bias as stored, float32."""
        kernel = self.param(
            "kernel", TORCH_CONV_INIT, (1, 1, in_features, self.features), jnp.float32
        )
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        return kernel, bias

    def weights(self, in_features: int) -> tuple[jax.Array, jax.Array]:
        """The (in, out) matrix and the (out,) bias, float32."""
        return _as_matrix(self.params(in_features))

    def __call__(self, x_BxC: jax.Array) -> jax.Array:
        matrix_CxF, bias_F = self.weights(x_BxC.shape[-1])
        return _pooled_dense(x_BxC, matrix_CxF, bias_F)


def _as_matrix(kernel_and_bias: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """(1, 1, in, out) kernel and bias -> (in, out) matrix and bias."""
    kernel_11xCxF, bias_F = kernel_and_bias
    return kernel_11xCxF[0, 0], bias_F


def _pooled_dense(x_BxC: jax.Array, matrix_CxF: jax.Array, bias_F: jax.Array) -> jax.Array:
    # Broadcast-multiply-reduce in float32 rather than a dot: on (B, C) x (C, C/r) shapes a
    # dot is a library call of its own, while a reduction fuses with its neighbours.
    products_BxCxF = x_BxC.astype(jnp.float32)[:, :, None] * matrix_CxF.astype(jnp.float32)
    return jnp.sum(products_BxCxF, axis=1) + bias_F.astype(jnp.float32)


class ConvBiasApart(nn.Module):
    """nn.Conv's 'same' conv with bias (same params, names and init), returning the conv output
    WITHOUT the bias and the bias itself, so that the caller adds the bias where its gradient is
    cheapest (attention_tail)."""

    features: int
    kernel: int = 3
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxHxWxC: jax.Array) -> tuple[jax.Array, jax.Array]:
        kernel_HxWxCxF = self.param(
            "kernel", TORCH_CONV_INIT,
            (self.kernel, self.kernel, x_BxHxWxC.shape[-1], self.features), jnp.float32,
        )
        bias_F = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        pad = self.kernel // 2
        conv_BxHxWxF = jax.lax.conv_general_dilated(
            x_BxHxWxC.astype(self.dtype), kernel_HxWxCxF.astype(self.dtype), (1, 1),
            ((pad, pad), (pad, pad)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return conv_BxHxWxF, bias_F


def _excitation(pooled_BxC: jax.Array, squeeze: tuple[jax.Array, jax.Array],
                excite: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """squeeze -> ReLU -> excite -> sigmoid on the pooled vector: (hidden_BxR, sigmoid_BxC)."""
    hidden_BxR = nn.relu(_pooled_dense(pooled_BxC, *squeeze))
    return hidden_BxR, nn.sigmoid(_pooled_dense(hidden_BxR, *excite))


def _excite_sigmoid(hidden_BxR: jax.Array, excite: tuple[jax.Array, jax.Array]) -> jax.Array:
    """sigmoid(hidden @ excite + bias), the product written as R multiply-adds (R = C/r, 4 in
    the paper) rather than a reduction, so that it never needs a reduction kernel of its own."""
    matrix_RxC, bias_C = (w.astype(jnp.float32) for w in excite)
    logits_BxC = bias_C + hidden_BxR[:, 0, None] * matrix_RxC[0]
    for r in range(1, matrix_RxC.shape[0]):
        logits_BxC = logits_BxC + hidden_BxR[:, r, None] * matrix_RxC[r]
    return nn.sigmoid(logits_BxC)


# Up to this many pixels per image a whole-map pool is one kernel and the plain form is as
# short or shorter (measured, deviceless H200 compile: 64 x 64 x 64 the same, 32 x 32 x 8 one
# kernel fewer); from 128 x 128 XLA splits the pool and the banded form saves a kernel.
SMALL_POOL_PIXELS = 64 * 64
# Values the pool's second stage reduces per output (bands x channels) at most.
SECOND_STAGE_VALUES = 4096


def _pool_bands(height: int, channels: int) -> int:
    """How many horizontal bands the pool's first stage sums separately: the most that divide
    the height with bands x channels <= SECOND_STAGE_VALUES, small enough for the second stage
    to be one kernel; each band then holds few enough pixels for the first stage to be one
    kernel at inference sizes."""
    limit = max(SECOND_STAGE_VALUES // channels, 1)
    return max(k for k in range(1, min(height, limit) + 1) if height % k == 0)


def _scaled_by_attention(x_BxHxWxC: jax.Array, pixels_Bx1: jax.Array | float,
                         squeeze: tuple[jax.Array, jax.Array],
                         excite: tuple[jax.Array, jax.Array]) -> jax.Array:
    """x * sigmoid(excite(relu(squeeze(mean pool(x))))), the forward-only form (inference).

    On an inference-sized map XLA splits a whole-map pool into two reductions; here the first
    is explicit (sums over horizontal bands, _pool_bands) and the second carries the squeeze
    (linearity: mean pool @ W = sum over bands and channels of band sums times W, / pixels), so
    the pool and the squeeze take two kernels instead of three (docs/design.md section 13).
    `pixels`: what the pool divides by (per image where masked)."""
    batch, height, width, channels = x_BxHxWxC.shape
    if height * width <= SMALL_POOL_PIXELS:
        pooled_BxC = jnp.sum(x_BxHxWxC.astype(jnp.float32), axis=(1, 2)) / pixels_Bx1
        _, sigmoid_BxC = _excitation(pooled_BxC, squeeze, excite)
        return x_BxHxWxC * sigmoid_BxC.astype(x_BxHxWxC.dtype)[:, None, None, :]
    bands = _pool_bands(height, channels)
    banded = x_BxHxWxC.astype(jnp.float32).reshape(batch, bands, height // bands, width, channels)
    band_sums_BxKxC = jnp.sum(banded, axis=(2, 3))
    matrix_CxR, bias_R = (w.astype(jnp.float32) for w in squeeze)
    summed_BxR = jnp.sum(band_sums_BxKxC[:, :, :, None] * matrix_CxR, axis=(1, 2))
    hidden_BxR = jnp.maximum(summed_BxR / pixels_Bx1 + bias_R, 0.0)
    sigmoid_BxC = _excite_sigmoid(hidden_BxR, excite)
    return x_BxHxWxC * sigmoid_BxC.astype(x_BxHxWxC.dtype)[:, None, None, :]


def _times_columns(x_BxR: jax.Array, matrix_CxR: jax.Array, reverse: bool = False) -> jax.Array:
    """x @ matrix.T, summed over R (= C/r, 4 in the paper) by halving rather than by a reduction:
    elementwise math that XLA fuses into the one consumer, where a reduction would be a kernel
    of its own. `reverse` adds the halves the other way round (same value up to rounding), so
    that XLA does not merge two uses into one shared result with two consumers."""
    terms_BxCxR = x_BxR[:, None, :] * matrix_CxR[None, :, :]
    while terms_BxCxR.shape[-1] > 1:
        half = terms_BxCxR.shape[-1] // 2
        low, high = terms_BxCxR[..., :half], terms_BxCxR[..., half:2 * half]
        summed = high + low if reverse else low + high
        if terms_BxCxR.shape[-1] % 2:
            summed = summed.at[..., :1].add(terms_BxCxR[..., -1:])
        terms_BxCxR = summed
    return terms_BxCxR[..., 0]


@jax.custom_vjp
def attention_tail(conv_BxHxWxC: jax.Array, bias_C: jax.Array,
                   squeeze: tuple[jax.Array, jax.Array],
                   excite: tuple[jax.Array, jax.Array]) -> jax.Array:
    """Channel attention of (conv + bias), for a conv output whose bias was kept apart.

    Same math as ChannelAttention on `conv + bias` (no mask). Its own gradient exists for one
    reason (docs/design.md section 13): the bias gradient, a sum over every pixel of the whole
    batch, follows from the two per-image sums that the attention's backward needs anyway
    (sum of g and of g * conv), so the backward reads the map in ONE reduction pass instead of a
    second full-size reduction for the bias. Undifferentiated (inference) it runs the
    forward-only form; differentiated, the forward that keeps the pooled vector for the
    backward (on training-sized maps the pool is one kernel, so that form costs nothing).
    `squeeze`, `excite`: (kernel, bias) as stored, kernels (1, 1, in, out): inside a block loop
    the backward then reads the loop's own parameter slices rather than a stacked copy of the
    (in, out) matrices (JAX keeps a residual that is a loop input without stacking it)."""
    mapped_BxHxWxC = conv_BxHxWxC + bias_C.astype(conv_BxHxWxC.dtype)
    pixels = mapped_BxHxWxC.shape[1] * mapped_BxHxWxC.shape[2]
    return _scaled_by_attention(mapped_BxHxWxC, pixels, _as_matrix(squeeze), _as_matrix(excite))


def _attention_tail_forward(conv_BxHxWxC, bias_C, squeeze, excite):
    mapped_BxHxWxC = conv_BxHxWxC + bias_C.astype(conv_BxHxWxC.dtype)
    pooled_BxC = jnp.mean(mapped_BxHxWxC.astype(jnp.float32), axis=(1, 2))
    hidden_BxR, sigmoid_BxC = _excitation(pooled_BxC, _as_matrix(squeeze), _as_matrix(excite))
    scale_BxC = sigmoid_BxC.astype(conv_BxHxWxC.dtype)
    out = mapped_BxHxWxC * scale_BxC[:, None, None, :]
    # The biased map is the residual, not the bare conv output: then XLA can keep the bias add
    # inside the cuDNN convolution (a bare conv output kept for the backward would have to be
    # written out, and the add become a kernel of its own).
    # The three (B, .) vectors the backward needs travel as one array: inside a block loop each
    # residual is stacked by a kernel of its own every iteration.
    vectors_BxV = jnp.concatenate([pooled_BxC, sigmoid_BxC, hidden_BxR], axis=1)
    return out, (mapped_BxHxWxC, bias_C, squeeze, excite, vectors_BxV)


def _attention_tail_backward(residuals, grad_BxHxWxC):
    mapped_BxHxWxC, bias_C, squeeze, excite, vectors_BxV = residuals
    channels = mapped_BxHxWxC.shape[-1]
    pooled_BxC, sigmoid_BxC, hidden_BxR = jnp.split(vectors_BxV, [channels, 2 * channels], axis=1)
    dtype = mapped_BxHxWxC.dtype
    pixels = mapped_BxHxWxC.shape[1] * mapped_BxHxWxC.shape[2]
    grad_f32 = grad_BxHxWxC.astype(jnp.float32)
    # The two per-image sums: sibling reductions of one input, which XLA fuses into one pass.
    grad_sum_BxC = jnp.sum(grad_f32, axis=(1, 2))
    grad_scale_BxC = jnp.sum(grad_f32 * mapped_BxHxWxC.astype(jnp.float32), axis=(1, 2))
    # Back through sigmoid, excite, ReLU and squeeze on the pooled vector.
    grad_excite_BxC = grad_scale_BxC * sigmoid_BxC * (1.0 - sigmoid_BxC)
    excite_matrix_RxC = excite[0][0, 0].astype(jnp.float32)
    grad_excite_matrix = jnp.sum(hidden_BxR[:, :, None] * grad_excite_BxC[:, None, :], axis=0)
    # The ReLU's derivative inside the reduction, so that no kernel of its own applies it.
    active_BxR = (hidden_BxR > 0).astype(jnp.float32)
    grad_hidden_BxR = jnp.sum(grad_excite_BxC[:, None, :] * excite_matrix_RxC
                              * active_BxR[:, :, None], axis=2)
    squeeze_matrix_CxR = squeeze[0][0, 0].astype(jnp.float32)
    # The squeeze's matrix and bias gradients as ONE reduction over the batch: the pooled vector
    # with a column of ones, whose row of the product is the bias gradient.
    pooled_ones_BxC1 = jnp.concatenate([pooled_BxC, jnp.ones_like(pooled_BxC[:, :1])], axis=1)
    grad_squeeze_C1xR = jnp.sum(pooled_ones_BxC1[:, :, None] * grad_hidden_BxR[:, None, :], axis=0)
    grad_squeeze_matrix, grad_squeeze_bias_R = grad_squeeze_C1xR[:-1], grad_squeeze_C1xR[-1]
    # The pooled vector's gradient as R multiply-adds, once for the map's gradient and once, in
    # the other order (so that XLA does not merge the two), inside the bias gradient's sum: each
    # fuses into its one consumer instead of being a kernel of its own.
    scale_BxC = sigmoid_BxC.astype(dtype).astype(jnp.float32)
    grad_pooled_BxC = _times_columns(grad_hidden_BxR, squeeze_matrix_CxR)
    grad_conv = grad_f32 * scale_BxC[:, None, None, :] + (grad_pooled_BxC / pixels)[:, None, None, :]
    grad_pooled_again_BxC = _times_columns(grad_hidden_BxR, squeeze_matrix_CxR, reverse=True)
    grad_bias_C = jnp.sum(scale_BxC * grad_sum_BxC + grad_pooled_again_BxC, axis=0)
    return (
        grad_conv.astype(dtype),
        grad_bias_C.astype(bias_C.dtype),
        (grad_squeeze_matrix[None, None].astype(squeeze[0].dtype),
         grad_squeeze_bias_R.astype(squeeze[1].dtype)),
        (grad_excite_matrix[None, None].astype(excite[0].dtype),
         jnp.sum(grad_excite_BxC, axis=0).astype(excite[1].dtype)),
    )


attention_tail.defvjp(_attention_tail_forward, _attention_tail_backward)


class ChannelAttention(nn.Module):
    """RCAN channel attention: GAP -> 1x1 C->C/r -> ReLU -> 1x1 C/r->C -> sigmoid -> scale.

    The squeeze/excite maps run on the pooled (B, C) vector as float32 dense math (PooledDense):
    the arithmetic of the 1x1 convolutions on a 1x1 map, without their kernel launches.
    `bias` (C,): `x` is a conv output whose bias is still to be added (ConvBiasApart); the
    attention adds it, and without a mask differentiates through attention_tail."""

    reduction: int = 16
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxHxWxC: jax.Array, mask_BxHxWx1: jax.Array | None = None,
                 bias_C: jax.Array | None = None) -> jax.Array:
        """`mask` (1 = valid): the pool is the mean over valid pixels; `x` must be 0 elsewhere."""
        channels = x_BxHxWxC.shape[-1]
        squeeze = PooledDense(channels // self.reduction, name="squeeze").params(channels)
        excite = PooledDense(channels, name="excite").params(channels // self.reduction)
        if mask_BxHxWx1 is None and bias_C is not None:
            return attention_tail(x_BxHxWxC, bias_C, squeeze, excite)
        squeeze, excite = _as_matrix(squeeze), _as_matrix(excite)
        if bias_C is not None:
            x_BxHxWxC = apply_mask(x_BxHxWxC + bias_C.astype(x_BxHxWxC.dtype), mask_BxHxWx1)
        if mask_BxHxWx1 is None:
            pixels = x_BxHxWxC.shape[1] * x_BxHxWxC.shape[2]
        else:
            pixels = jnp.maximum(jnp.sum(mask_BxHxWx1.astype(jnp.float32), axis=(1, 2)), 1.0)
        return _scaled_by_attention(x_BxHxWxC, pixels, squeeze, excite)


class RCAB(nn.Module):
    """Residual channel-attention block; a scan body: (carry, mask) -> (carry, None).

    The scan broadcasts `mask` (None, or the valid-pixel mask of a bucketed input) to every block."""

    reduction: int = 16
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxHxWxC: jax.Array, mask_BxHxWx1: jax.Array | None = None
                 ) -> tuple[jax.Array, None]:
        channels = x_BxHxWxC.shape[-1]
        if mask_BxHxWx1 is None:
            y = biased_relu(*ConvBiasApart(channels, 3, self.dtype, name="conv1")(x_BxHxWxC))
        else:
            y = apply_mask(relu(conv(channels, 3, self.dtype, "conv1")(x_BxHxWxC)), mask_BxHxWx1)
        conv2_BxHxWxC, bias2_C = ConvBiasApart(channels, 3, self.dtype, name="conv2")(y)
        y = ChannelAttention(self.reduction, self.dtype, name="attention")(
            conv2_BxHxWxC, mask_BxHxWx1, bias2_C)
        return x_BxHxWxC + y, None


class ResidualGroup(nn.Module):
    """n RCABs (scanned) -> conv3x3, plus the group input; a scan body that also emits its output
    so that the layer attention can see every group's output."""

    n_resblocks: int = 20
    reduction: int = 16
    dtype: Dtype = jnp.float32
    remat: bool = False
    unroll: int = 1  # RCABs per loop iteration; n_resblocks = straight-line code, no loop

    @nn.compact
    def __call__(self, x_BxHxWxC: jax.Array, mask_BxHxWx1: jax.Array | None = None
                 ) -> tuple[jax.Array, jax.Array]:
        y, _ = block_loop(self, RCAB, (self.reduction, self.dtype), x_BxHxWxC, mask_BxHxWx1,
                          self.n_resblocks, self.unroll, self.remat)
        y = apply_mask(conv(x_BxHxWxC.shape[-1], 3, self.dtype, "conv")(y), mask_BxHxWx1)
        out = x_BxHxWxC + y
        return out, out


def block_loop(parent: nn.Module, block_type: type[nn.Module], block_args: tuple,
               carry: jax.Array, broadcast: jax.Array | None, length: int, unroll: int,
               remat: bool) -> tuple[jax.Array, Any]:
    """`length` blocks of `block_type(*block_args)` in a row, params stacked along axis 0 under
    `parent`'s "blocks": (carry, broadcast) -> (carry, stacked per-block outputs).

    Call from `parent`'s compact method. `nn.scan` creates the params and runs straight-line
    blocks (unroll = length), which stack nothing per iteration; a loop scans the small
    parameters packed (scan_over_packed_params), which on straight-line blocks would only add
    kernels (pre-training +29, deviceless H200)."""
    looped = unroll < length
    if parent.is_initializing() or not looped or not parent.has_variable("params", "blocks"):
        block = nn.remat(block_type) if remat else block_type
        blocks = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=nn.broadcast,
            length=length,
            unroll=unroll,
        )(*block_args, name="blocks")
        return blocks(carry, broadcast)
    return scan_over_packed_params(block_type(*block_args, parent=None),
                                   parent.variables["params"]["blocks"], carry, broadcast,
                                   length, unroll, remat)


def scan_over_packed_params(block: nn.Module, stacked: Any, carry: jax.Array,
                            broadcast: jax.Array | None, length: int, unroll: int,
                            remat: bool) -> tuple[jax.Array, Any]:
    """The loop `nn.scan(block, variable_axes={"params": 0}, in_axes=nn.broadcast, ...)` runs,
    for params that scan created (`stacked`, axis 0 = block), with the small parameters scanned
    as ONE packed array.

    In the backward, each scanned input's gradient is stacked by a kernel of its own every
    iteration: 8 per RCAB and 24 per Res-clique block with one input per parameter, 3 and 9
    with the biases, slopes and 1x1 kernels packed (docs/design.md section 13). The parameter
    tree, and so checkpoints and converted weights, are unchanged; the packing happens per call.
    `block` is an unbound module (parent=None); `broadcast` reaches every iteration unchanged."""
    big, packed, unpack = pack_small_leaves(stacked, length)

    def body(carry_in: jax.Array, params_of_block: tuple) -> tuple[jax.Array, Any]:
        return block.apply({"params": unpack(*params_of_block)}, carry_in, broadcast)

    if remat:
        body = jax.checkpoint(body)
    return jax.lax.scan(body, carry, (big, packed), unroll=unroll)


# A scanned parameter with at most this many values per block travels in the packed array.
PACKED_LEAF_SIZE = 4096


def pack_small_leaves(stacked: Any, length: int) -> tuple[Any, jax.Array | None, Any]:
    """Splits a tree of (length, ...) arrays into the big leaves (kept as they are, None where
    small), the small ones concatenated as one (length, P) array, and `unpack(big_i, packed_i)`,
    which rebuilds one block's tree from one iteration's slices. Small leaves must share a dtype
    (the compute dtype, after generator.cast_for_compute); otherwise nothing is packed."""
    leaves, treedef = jax.tree_util.tree_flatten(stacked)
    small = [leaf.size // length <= PACKED_LEAF_SIZE for leaf in leaves]
    if len({leaf.dtype for leaf, is_small in zip(leaves, small) if is_small}) != 1:
        small = [False] * len(leaves)
    big = [None if is_small else leaf for leaf, is_small in zip(leaves, small)]
    shapes = [leaf.shape[1:] for leaf in leaves]
    packed = None
    if any(small):
        packed = jnp.concatenate([leaf.reshape(length, -1) for leaf, is_small
                                  in zip(leaves, small) if is_small], axis=1)

    sizes = [math.prod(shape) for shape, is_small in zip(shapes, small) if is_small]
    offsets = list(itertools.accumulate(sizes))[:-1]

    def unpack(big_i: list[jax.Array | None], packed_i: jax.Array | None) -> Any:
        # One split (its transpose, in the backward, is one concatenate).
        pieces = iter(jnp.split(packed_i, offsets) if packed_i is not None else [])
        rebuilt = [next(pieces).reshape(shape) if is_small else leaf_i
                   for leaf_i, shape, is_small in zip(big_i, shapes, small)]
        return jax.tree_util.tree_unflatten(treedef, rebuilt)

    return big, packed, unpack


class LayerAttention(nn.Module):
    """HAN's LAM over N feature maps (B, N, H, W, C): out = gamma * softmax(rowmax(E) - E) Q + Q,
    E = Q Q^T with Q the (B, N, HWC) flattening. gamma is a scalar initialised to 0.

    On a bucketed (padded) input no mask is needed: the padding is zero in every map, so it adds
    nothing to E (a sum, not a mean), and gamma * A Q + Q stays zero there."""

    @nn.compact
    def __call__(self, features_BxNxHxWxC: jax.Array) -> jax.Array:
        gamma = self.param("gamma", nn.initializers.zeros, (), jnp.float32)
        b, n = features_BxNxHxWxC.shape[:2]
        q_BxNxD = features_BxNxHxWxC.reshape(b, n, -1)
        # The energies are sums over H*W*C products: float32 accumulation keeps the softmax sane
        # under bfloat16 compute. The flattening order (HWC vs PyTorch's CHW) does not change E.
        energy_BxNxN = jnp.einsum(
            "bnd,bmd->bnm", q_BxNxD, q_BxNxD, preferred_element_type=jnp.float32
        )
        energy_BxNxN = jnp.max(energy_BxNxN, axis=-1, keepdims=True) - energy_BxNxN
        attention_BxNxN = jax.nn.softmax(energy_BxNxN, axis=-1).astype(q_BxNxD.dtype)
        out_BxNxD = jnp.einsum("bnm,bmd->bnd", attention_BxNxN, q_BxNxD)
        out_BxNxD = gamma.astype(q_BxNxD.dtype) * out_BxNxD + q_BxNxD
        return out_BxNxD.reshape(features_BxNxHxWxC.shape)


def _band_kernel_3x3xCxC(kernel_DxHxW: jax.Array, channels: int) -> jax.Array:
    """A 3x3x3 single-channel 3D conv over (channel, h, w) as an ordinary 2D conv C->C:
    tap (dh, dw) gets the banded matrix W[ci, co] = k[ci - co + 1, dh, dw] (|ci - co| <= 1),
    whose edges reproduce the zero padding along the channel axis."""
    bands = [jnp.eye(channels, k=1 - dc, dtype=kernel_DxHxW.dtype) for dc in range(3)]
    bands_DxCxC = jnp.stack(bands)
    return jnp.einsum("dhw,dio->hwio", kernel_DxHxW, bands_DxCxC)


def _symmetric_uniform(bound: float) -> nn.initializers.Initializer:
    def init(key: jax.Array, shape: Sequence[int], dtype: Dtype = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class ChannelSpatialAttention(nn.Module):
    """HAN's CSAM: M = sigmoid(Conv3d_{1->1, 3x3x3}(F)) over (channel, h, w); out = F * gamma*M + F.

    The 3D conv runs as one banded 2D conv C->C (same MACs as a dense conv, GPU-friendly) instead
    of a 1-channel 3D conv. Its kernel is stored as Flax's 3D layout (D, H, W, in=1, out=1).
    On a bucketed input with zero padding the output is zero there too (F * (...) + F with F = 0),
    and the conv sees the true border's zeros, so it needs no mask."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
        # PyTorch Conv3d default init: fan_in = 27.
        bound = 27.0 ** -0.5
        kernel = self.param("kernel", _symmetric_uniform(bound), (3, 3, 3, 1, 1), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (1,), jnp.float32)
        gamma = self.param("gamma", nn.initializers.zeros, (), jnp.float32)
        channels = x_BxHxWxC.shape[-1]
        kernel_2d = _band_kernel_3x3xCxC(kernel[..., 0, 0], channels).astype(self.dtype)
        logits = jax.lax.conv_general_dilated(
            x_BxHxWxC.astype(self.dtype),
            kernel_2d,
            window_strides=(1, 1),
            padding=((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        mask = nn.sigmoid(logits + bias.astype(self.dtype))
        return x_BxHxWxC * (gamma.astype(self.dtype) * mask) + x_BxHxWxC


class ResCliqueBlock(nn.Module):
    """Res-clique block (two stages over four g-channel groups ll, lh, hl, hh), plus its input.

    Stage 1: ll1 = F(ll0); lh1 = F([ll1, lh0]); hl1 = F([ll1, hl0]); hh1 = F([ll1, lh1, hl1, hh0]).
    Stage 2: hh2 = F(hh1); hl2 = F([hl1, hh2]); lh2 = F([lh1, hh2]); ll2 = F([ll1, lh2, hl2, hh2]).
    F = conv3x3 + per-channel PReLU. A scan body that also emits its output (all are fused later).
    """

    growth: int = 32
    dtype: Dtype = jnp.float32

    def _unit(self, name: str, mask: jax.Array | None, *inputs: jax.Array) -> jax.Array:
        x = jnp.concatenate(inputs, axis=-1) if len(inputs) > 1 else inputs[0]
        if mask is None:  # training and full buckets: one sum for both parameter gradients
            conv_out, bias = ConvBiasApart(self.growth, 3, self.dtype, name=f"{name}_conv")(x)
            slope = PReLU(name=f"{name}_act").slope(self.growth)
            return biased_prelu(conv_out, bias, slope)
        x = apply_mask(conv(self.growth, 3, self.dtype, f"{name}_conv")(x), mask)
        return PReLU(name=f"{name}_act")(x)  # PReLU(0) = 0: the padding stays zero

    @nn.compact
    def __call__(self, x_BxHxWx4G: jax.Array, mask_BxHxWx1: jax.Array | None = None
                 ) -> tuple[jax.Array, jax.Array]:
        """`mask`: None, or the valid-pixel mask at band resolution (broadcast by the scan)."""
        g, m = self.growth, mask_BxHxWx1
        if x_BxHxWx4G.shape[-1] != 4 * g:
            raise ValueError(f"ResCliqueBlock: expected {4 * g} channels, got {x_BxHxWx4G.shape}")
        ll0, lh0, hl0, hh0 = (x_BxHxWx4G[..., k * g : (k + 1) * g] for k in range(4))
        ll1 = self._unit("ll1", m, ll0)
        lh1 = self._unit("lh1", m, ll1, lh0)
        hl1 = self._unit("hl1", m, ll1, hl0)
        hh1 = self._unit("hh1", m, ll1, lh1, hl1, hh0)
        hh2 = self._unit("hh2", m, hh1)
        hl2 = self._unit("hl2", m, hl1, hh2)
        lh2 = self._unit("lh2", m, lh1, hh2)
        ll2 = self._unit("ll2", m, ll1, lh2, hl2, hh2)
        out = jnp.concatenate([ll2, lh2, hl2, hh2], axis=-1) + x_BxHxWx4G
        return out, out
