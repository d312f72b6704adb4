"""VGG19 feature extractor in the torchvision `vgg19().features` layout (frozen, for L_CX).

16 conv3x3 (padding 1) + ReLU layers in five blocks of 2, 2, 4, 4, 4 convs, with a 2x2 stride-2
max-pool (floor) between blocks. Parameters are named 'conv{block}_{i}' with a 'kernel' (HWIO)
and 'bias', float32; the `dtype` field is the compute dtype.

The network takes an ALREADY NORMALISED RGB image; which normalisation depends on where the
weights came from, so it is a property of the weights, not of the network:
  'torchvision' (torchvision ImageNet weights): x / 255 then ImageNet mean/std per channel.
  'caffe' (Keras applications weights, converted from the original Caffe model; our converter has
      already reordered the first conv to RGB): x in 0-255 minus the Caffe per-channel mean, no
      division by a standard deviation.
Hence frozen weights travel as `VGG19Weights` (params + their convention), and `vgg_input` (the
one normaliser) turns a 0-255 image into the form a convention requires.
"""

from __future__ import annotations

from typing import Any, Iterable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

# (channels, number of convs) of the five blocks.
VGG19_BLOCKS: tuple[tuple[int, int], ...] = ((64, 2), (128, 2), (256, 4), (512, 4), (512, 4))
VGG19_CONV_NAMES: tuple[str, ...] = tuple(
    f"conv{b}_{i}" for b, (_, n) in enumerate(VGG19_BLOCKS, 1) for i in range(1, n + 1))
# Every output a caller may request: pre-activation 'convB_I' and post-activation 'reluB_I'.
VGG19_LAYER_NAMES: tuple[str, ...] = tuple(
    name for conv in VGG19_CONV_NAMES for name in (conv, "relu" + conv[len("conv"):]))

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
# Mean pixel of the Caffe VGG training set (Keras `preprocess_input(mode='caffe')`), RGB order.
CAFFE_MEAN_RGB = (123.68, 116.779, 103.939)
INPUT_CONVENTIONS = ("torchvision", "caffe")


@flax.struct.dataclass
class VGG19Weights:
    """Frozen VGG19 params and the input convention they were trained with.

    A pytree: the params are its leaves (placed, sharded and passed to the jitted step like any
    array tree); `input_convention` is static, so it is part of the compiled program and the loss
    reads it at trace time. Loaders return this, never bare params, so the convention cannot be
    dropped on the way from the weights file to the loss.
    """

    params: Any  # {'conv1_1': {'kernel': HWIO, 'bias'}, ...}
    input_convention: str = flax.struct.field(pytree_node=False)

    def __post_init__(self):
        if self.input_convention not in INPUT_CONVENTIONS:
            raise ValueError(f"VGG19Weights: input_convention {self.input_convention!r} not in "
                             f"{INPUT_CONVENTIONS}")


def _depth(layer: str) -> int:
    if layer not in VGG19_LAYER_NAMES:
        raise ValueError(f"unknown VGG19 layer {layer!r}; expected one of {VGG19_LAYER_NAMES}")
    return VGG19_LAYER_NAMES.index(layer)


class VGG19Features(nn.Module):
    """`__call__(x_BxHxWx3 normalised RGB, layers) -> {layer: features (B, h, w, C)}`.

    Only the convs up to the deepest requested layer are run (and created at init: initialise
    with layers=('relu5_4',) to get all 16 convs; extra params are ignored by shallower calls).
    """

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BxHxWx3: jax.Array,
                 layers: Iterable[str] = ("relu3_4",)) -> dict[str, jax.Array]:
        wanted = tuple(layers)
        if not wanted:
            raise ValueError("VGG19Features: `layers` is empty")
        deepest = max(_depth(layer) for layer in wanted)
        x = x_BxHxWx3.astype(self.dtype)
        features: dict[str, jax.Array] = {}
        conv_index = 0
        for block, (channels, n_convs) in enumerate(VGG19_BLOCKS, 1):
            if block > 1:
                x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
            for i in range(1, n_convs + 1):
                x = nn.Conv(channels, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                            param_dtype=jnp.float32, name=f"conv{block}_{i}")(x)
                if f"conv{block}_{i}" in wanted:
                    features[f"conv{block}_{i}"] = x
                x = nn.relu(x)
                if f"relu{block}_{i}" in wanted:
                    features[f"relu{block}_{i}"] = x
                conv_index += 1
                if 2 * conv_index > deepest:
                    return features
        return features


def vgg_input(images_BxHxWx3: jax.Array, convention: str,
              scaling: str = "as_weights") -> jax.Array:
    """RGB images on the 0-255 scale -> the input VGG weights of `convention` require.

    `scaling` is config.loss.vgg_input_scaling: 'as_weights' gives exactly what the convention
    requires; 'reference' reproduces the authors' code, which fed 0-255 values into the 0-1
    ImageNet statistics (docs/design.md 9.3); it is defined for 'torchvision' weights only
    (train.validate_config rejects it with a 'caffe' weights file).
    """
    x = images_BxHxWx3.astype(jnp.float32)
    imagenet_mean = jnp.asarray(IMAGENET_MEAN_RGB, jnp.float32)
    imagenet_std = jnp.asarray(IMAGENET_STD_RGB, jnp.float32)
    if (convention, scaling) == ("torchvision", "as_weights"):
        return (x / 255.0 - imagenet_mean) / imagenet_std
    if (convention, scaling) == ("torchvision", "reference"):
        return (x - imagenet_mean) / imagenet_std
    if (convention, scaling) == ("caffe", "as_weights"):
        return x - jnp.asarray(CAFFE_MEAN_RGB, jnp.float32)
    raise ValueError(f"no VGG input for weights of convention {convention!r} (one of "
                     f"{INPUT_CONVENTIONS}) with vgg_input_scaling {scaling!r}")
