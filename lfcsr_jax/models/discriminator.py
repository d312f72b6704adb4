"""The adversarial discriminator of PD-ADMM (EDSR/SRGAN style, reduced; docs/design.md section 4).

Six conv3x3 (no bias) -> BatchNorm -> LeakyReLU(0.2) blocks, 3->64 s1, 64->64 s2, 64->128 s1,
128->128 s2, 128->256 s1, 256->256 s2, every conv padded by 1 (the authors' module pads the strided
convs by 1 too, so a 144 patch ends at 18x18), then flatten -> Linear 1024 -> LeakyReLU(0.2) ->
Linear 1 (a logit). The input is the image in [0, 255] exactly as the generator emits it: the
authors' module applies no normalisation (checked against reference_vectors/discriminator_p32).

BatchNorm follows torch.nn.BatchNorm2d so that trained PyTorch weights and running statistics port
exactly and training behaves the same: train mode normalises with the batch mean and the *biased*
batch variance, while the running variance is updated with the *unbiased* one (flax.linen.BatchNorm
stores the biased one), momentum 0.1 in PyTorch's sense, eps 1e-5. Call with
`mutable=['batch_stats']` when `train=True`.

The features are flattened channel-major (NCHW order, as PyTorch's `view(B, -1)`), so the first
Linear weight of a PyTorch checkpoint is used as-is (transposed to Flax's (in, out) layout).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# (output channels, stride) of the six conv blocks.
DISCRIMINATOR_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1), (64, 2), (128, 1), (128, 2), (256, 1), (256, 2))
HIDDEN_UNITS = 1024
LEAKY_SLOPE = 0.2
# The three stride-2 convs shrink the patch by 8.
DOWNSAMPLING = 8

# PyTorch's default Conv2d/Linear weight init (kaiming_uniform, a=sqrt(5)) is U(+-1/sqrt(fan_in)),
# i.e. variance 1/(3 fan_in); we keep that scale so a fresh discriminator starts like the authors'.
_torch_like_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class TorchBatchNorm(nn.Module):
    """BatchNorm over all but the last axis with torch.nn.BatchNorm2d semantics.

    Params: 'scale', 'bias' (float32). Collection 'batch_stats': 'mean', 'var' (the running
    statistics; 'var' is the running *unbiased* variance, as PyTorch's running_var).
    Statistics are computed in float32 whatever the compute dtype.
    """

    momentum: float = 0.1  # PyTorch convention: running = (1 - momentum) * running + momentum * batch
    epsilon: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_NxC: jax.Array, train: bool) -> jax.Array:
        channels = x_NxC.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
        running_mean = self.variable(
            "batch_stats", "mean", lambda: jnp.zeros((channels,), jnp.float32))
        running_var = self.variable(
            "batch_stats", "var", lambda: jnp.ones((channels,), jnp.float32))

        x32 = x_NxC.astype(jnp.float32)
        if train:
            reduce_axes = tuple(range(x32.ndim - 1))
            mean = jnp.mean(x32, axis=reduce_axes)
            # Two-pass variance: stable in float32 for activations with a large mean.
            var = jnp.mean(jnp.square(x32 - mean), axis=reduce_axes)
            if not self.is_initializing():
                count = x32.size // channels
                unbiased_var = var * (count / max(count - 1, 1))
                m = self.momentum
                running_mean.value = (1.0 - m) * running_mean.value + m * mean
                running_var.value = (1.0 - m) * running_var.value + m * unbiased_var
        else:
            mean, var = running_mean.value, running_var.value
        multiplier = scale * jax.lax.rsqrt(var + self.epsilon)
        y = (x32 - mean) * multiplier + bias
        return y.astype(self.dtype)


class Discriminator(nn.Module):
    """Patch discriminator; `__call__(x_BxHxWx3 in [0, 255], train) -> logits (B, 1) float32`.

    `patch_size` must equal the input's height and width (the first Linear layer is sized by it)
    and be a multiple of 8. Parameters are float32; `dtype` is the compute dtype of the convs and
    Linear layers (BatchNorm statistics and the returned logits are float32).
    """

    patch_size: int = 144
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BxHxWx3: jax.Array, train: bool) -> jax.Array:
        self._check_input(x_BxHxWx3)
        x = x_BxHxWx3.astype(self.dtype)
        for i, (features, stride) in enumerate(DISCRIMINATOR_BLOCKS):
            x = nn.Conv(
                features, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)),
                use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                kernel_init=_torch_like_kernel_init, name=f"conv{i}")(x)
            x = TorchBatchNorm(dtype=self.dtype, name=f"bn{i}")(x, train)
            x = nn.leaky_relu(x, LEAKY_SLOPE)
        # Channel-major flatten, as PyTorch's NCHW view(B, -1), so its Linear weights port as-is.
        batch = x.shape[0]
        x_BxCHW = jnp.transpose(x, (0, 3, 1, 2)).reshape(batch, -1)
        h = nn.Dense(HIDDEN_UNITS, dtype=self.dtype, param_dtype=jnp.float32,
                     kernel_init=_torch_like_kernel_init, name="dense0")(x_BxCHW)
        h = nn.leaky_relu(h, LEAKY_SLOPE)
        logit_Bx1 = nn.Dense(1, dtype=self.dtype, param_dtype=jnp.float32,
                             kernel_init=_torch_like_kernel_init, name="dense1")(h)
        return logit_Bx1.astype(jnp.float32)

    def _check_input(self, x_BxHxWx3: jax.Array) -> None:
        if self.patch_size % DOWNSAMPLING:
            raise ValueError(
                f"Discriminator.patch_size={self.patch_size} must be a multiple of {DOWNSAMPLING}")
        expected = (self.patch_size, self.patch_size, 3)
        if x_BxHxWx3.ndim != 4 or tuple(x_BxHxWx3.shape[1:]) != expected:
            raise ValueError(
                f"Discriminator(patch_size={self.patch_size}) expects input (B, {expected[0]}, "
                f"{expected[1]}, 3); got {tuple(x_BxHxWx3.shape)}")


def flattened_features(patch_size: int) -> int:
    """Input width of the first Linear layer: 256 x (patch/8)^2 (82,944 for a 144 patch)."""
    side = patch_size // DOWNSAMPLING
    return DISCRIMINATOR_BLOCKS[-1][0] * side * side
