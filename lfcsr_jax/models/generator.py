"""The two-stage LFc-SR generator: G_O = HAN (objective), G_P = wavelet Res-clique (perceptual).

Images are float32 NHWC on the 0-255 scale in and out. Parameters are float32 pytrees; `dtype`
only sets the compute dtype of the convolutions. Repeated blocks are `nn.scan`ned, so their
parameters carry a leading layer axis and the full x4 model compiles in seconds:
  HAN:       head, groups/{blocks/{conv1,conv2,attention/{squeeze,excite}} [G,R,...],
             conv [G,...]}, body_conv, layer_attention/gamma, layer_fuse,
             channel_spatial_attention/{kernel,bias,gamma}, fuse, upsample0, upsample1, tail
  ResClique: stem, expand, blocks/{ll1,lh1,hl1,hh1,hh2,hl2,lh2,ll2}_{conv,act} [N,...], fuse, tail
  LFcSR:     {'objective': HAN params, 'perceptual': ResClique params}
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from lfcsr_jax.models import wavelets
from lfcsr_jax.models.layers import (
    ChannelSpatialAttention,
    LayerAttention,
    ResCliqueBlock,
    ResidualGroup,
    apply_mask,
    block_loop,
    conv,
    mean_shift,
    pixel_shuffle,
    upsample_mask,
)

Dtype = Any
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


class HAN(nn.Module):
    """Holistic Attention Network, docs/design.md section 2. LR (B,h,w,3) -> SR (B,sh,sw,3)."""

    scale: int = 4
    n_resgroups: int = 10
    n_resblocks: int = 20
    features: int = 64
    reduction: int = 16
    rgb_mean: tuple[float, float, float] = DIV2K_RGB_MEAN
    rgb_range: float = 255.0
    dtype: Dtype = jnp.float32
    remat: bool = False  # rematerialise each RCAB in the backward pass (saves activation memory).
    # Loop structure only (the math is the same): RCABs per iteration of the loop inside a group,
    # and groups per iteration of the loop over groups (1 = a loop, the count = straight-line).
    block_unroll: int = 1
    group_unroll: int = 1

    def _upsample(self, x_BxhxwxC: jax.Array, mask_Bxhxwx1: jax.Array | None) -> jax.Array:
        # EDSR Upsampler: log2(scale) x [conv C->4C, PixelShuffle(2)], or one [conv C->9C, PS(3)].
        if self.scale & (self.scale - 1) == 0:
            factors = [2] * int(math.log2(self.scale))
        elif self.scale == 3:
            factors = [3]
        else:
            raise ValueError(f"HAN: scale must be a power of 2 or 3, got {self.scale}")
        for i, factor in enumerate(factors):
            expand = conv(self.features * factor * factor, 3, self.dtype, f"upsample{i}")
            # A masked map stays masked under the shuffle: padded pixels become padded blocks.
            x_BxhxwxC = pixel_shuffle(apply_mask(expand(x_BxhxwxC), mask_Bxhxwx1), factor)
            mask_Bxhxwx1 = upsample_mask(mask_Bxhxwx1, factor)
        return x_BxhxwxC

    @nn.compact
    def __call__(self, lr_Bxhxwx3: jax.Array, mask_Bxhxwx1: jax.Array | None = None) -> jax.Array:
        """`mask` (optional, 1 = valid pixel): `lr` is an image padded to a bucketed shape; every
        layer's padding is zeroed and every mean runs over valid pixels, so the valid region of
        the output equals the forward of the unpadded image (lfcsr_jax/inference/)."""
        m = mask_Bxhxwx1
        x = mean_shift(lr_Bxhxwx3, self.rgb_mean, self.rgb_range, -1.0).astype(self.dtype)
        x = apply_mask(x, m)
        head_BxhxwxC = apply_mask(conv(self.features, 3, self.dtype, "head")(x), m)

        groups = nn.scan(
            ResidualGroup,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=nn.broadcast,
            length=self.n_resgroups,
            unroll=self.group_unroll,
        )(self.n_resblocks, self.reduction, self.dtype, self.remat, self.block_unroll, name="groups")
        last_group, group_outs_GxBxhxwxC = groups(head_BxhxwxC, m)
        body_BxhxwxC = apply_mask(conv(self.features, 3, self.dtype, "body_conv")(last_group), m)

        # The authors stack newest first: [body conv, group G-1, ..., group 0]; the order fixes
        # which input channels of the 11C->C conv see which layer.
        layers_NxBxhxwxC = jnp.concatenate([body_BxhxwxC[None], group_outs_GxBxhxwxC[::-1]], axis=0)
        layers_BxNxhxwxC = jnp.moveaxis(layers_NxBxhxwxC, 0, 1)
        attended_BxNxhxwxC = LayerAttention(name="layer_attention")(layers_BxNxhxwxC)
        b, n, h, w, c = attended_BxNxhxwxC.shape
        attended_BxhxwxNC = attended_BxNxhxwxC.transpose(0, 2, 3, 1, 4).reshape(b, h, w, n * c)
        layer_BxhxwxC = apply_mask(
            conv(self.features, 3, self.dtype, "layer_fuse")(attended_BxhxwxNC), m)

        spatial_BxhxwxC = ChannelSpatialAttention(self.dtype, name="channel_spatial_attention")(
            body_BxhxwxC
        )
        fused = jnp.concatenate([spatial_BxhxwxC, layer_BxhxwxC], axis=-1)
        fused_BxhxwxC = apply_mask(conv(self.features, 3, self.dtype, "fuse")(fused), m) + head_BxhxwxC

        up_BxHxWxC = self._upsample(fused_BxhxwxC, m)
        sr = conv(3, 3, self.dtype, "tail")(up_BxHxWxC)
        return mean_shift(sr, self.rgb_mean, self.rgb_range, +1.0)


class ResClique(nn.Module):
    """Wavelet-domain Res-clique refinement, docs/design.md section 3. (B,H,W,3) -> (B,H,W,3).

    No image-level skip: the output is built entirely from the inverse Haar of the predicted bands.
    """

    n_blocks: int = 15
    growth: int = 32
    stem: int = 32
    rgb_mean: tuple[float, float, float] = DIV2K_RGB_MEAN
    rgb_range: float = 255.0
    dtype: Dtype = jnp.float32
    remat: bool = False
    unroll: int = 1  # blocks per loop iteration (n_blocks = straight-line code); same math

    @nn.compact
    def __call__(self, y_BxHxWx3: jax.Array, mask_BxHxWx1: jax.Array | None = None) -> jax.Array:
        """`mask` (optional, 1 = valid pixel, at the input's resolution): a padded input whose
        valid region has even height and width (x4 outputs always do), so the Haar blocks never
        straddle its border; the layers are masked at band resolution (half the input's)."""
        x = mean_shift(y_BxHxWx3, self.rgb_mean, self.rgb_range, -1.0).astype(self.dtype)
        x = apply_mask(x, mask_BxHxWx1)
        m = None if mask_BxHxWx1 is None else mask_BxHxWx1[:, ::2, ::2]  # band resolution
        bands_Bxhxwx12 = wavelets.haar_dwt(x)  # orthonormal Haar = the authors' DWT_Haar.
        skip_BxhxwxS = apply_mask(conv(self.stem, 3, self.dtype, "stem")(bands_Bxhxwx12), m)
        feats_Bxhxwx4G = apply_mask(conv(4 * self.growth, 3, self.dtype, "expand")(skip_BxhxwxS), m)

        _, outs_NxBxhxwx4G = block_loop(self, ResCliqueBlock, (self.growth, self.dtype),
                                        feats_Bxhxwx4G, m, self.n_blocks, self.unroll,
                                        self.remat)
        n, b, h, w, c = outs_NxBxhxwx4G.shape
        # torch.cat(mid_feats, dim=1): block-major channels, block 0 first.
        outs_BxhxwxN4G = outs_NxBxhxwx4G.transpose(1, 2, 3, 0, 4).reshape(b, h, w, n * c)

        fused = conv(self.stem, 1, self.dtype, "fuse")(outs_BxhxwxN4G)
        fused_BxhxwxS = apply_mask(nn.leaky_relu(fused, negative_slope=0.01), m) + skip_BxhxwxS
        bands_out = conv(4 * 3, 3, self.dtype, "tail")(fused_BxhxwxS)
        out = wavelets.haar_idwt(bands_out)
        return mean_shift(out, self.rgb_mean, self.rgb_range, +1.0)


class LFcSR(nn.Module):
    """Both stages: lr -> (y_objective = G_O(lr), y_perceptual = G_P(y_objective)), float32 NHWC.

    Params are {'objective': ..., 'perceptual': ...}; each subtree also applies on its own with
    `build_objective(cfg)` / `build_perceptual(cfg)`, which is what the ADMM sub-steps need.
    """

    objective: HAN
    perceptual: ResClique

    def __call__(self, lr_Bxhxwx3: jax.Array, mask_Bxhxwx1: jax.Array | None = None
                 ) -> tuple[jax.Array, jax.Array]:
        """`mask`: the LR valid-pixel mask of a bucketed input (HAN and ResClique docstrings)."""
        y_objective = self.objective(lr_Bxhxwx3, mask_Bxhxwx1)
        y_perceptual = self.perceptual(
            y_objective, upsample_mask(mask_Bxhxwx1, self.objective.scale))
        return y_objective, y_perceptual


# ----------------------------------------------------------------------------- factories

# config.model fields that change how the generators execute, never what they compute: an export
# made with other values loads and continues training unchanged.
EXECUTION_FIELDS = ("dtype", "remat", "han_block_unroll", "han_group_unroll", "clique_unroll",
                    "pretrain_unrolled")

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _field(model_cfg: Any, key: str) -> Any:
    """Reads `key` from a ConfigDict or a plain dict (an export's config.json)."""
    try:
        return model_cfg[key]
    except (KeyError, AttributeError, TypeError):
        raise ValueError(
            f"model config: missing field {key!r} (have {sorted(_keys(model_cfg))})"
        ) from None


def _keys(model_cfg: Any) -> list[str]:
    return list(model_cfg.keys()) if hasattr(model_cfg, "keys") else []


def compute_dtype(model_cfg: Any) -> Dtype:
    """The config's `dtype` string ('float32' | 'bfloat16' | 'float16') as a jnp dtype."""
    name = str(_field(model_cfg, "dtype"))
    if name not in _DTYPES:
        raise ValueError(f"model config: dtype {name!r} not in {sorted(_DTYPES)}")
    return _DTYPES[name]


def _optional(model_cfg: Any, key: str, default: Any) -> Any:
    """An execution field (loop structure, remat): absent from older exports' config.json."""
    try:
        return model_cfg[key]
    except (KeyError, AttributeError, TypeError):
        return default


def build_objective(model_cfg: Mapping[str, Any] | Any) -> HAN:
    """G_O from `config.model` (configs/x4.py) or the same keys as a dict."""
    return HAN(
        scale=int(_field(model_cfg, "scale")),
        n_resgroups=int(_field(model_cfg, "han_resgroups")),
        n_resblocks=int(_field(model_cfg, "han_resblocks")),
        features=int(_field(model_cfg, "han_features")),
        reduction=int(_field(model_cfg, "han_reduction")),
        rgb_mean=tuple(float(v) for v in _field(model_cfg, "rgb_mean")),
        rgb_range=float(_field(model_cfg, "rgb_range")),
        dtype=compute_dtype(model_cfg),
        remat=bool(_optional(model_cfg, "remat", False)),
        block_unroll=int(_optional(model_cfg, "han_block_unroll", 1)),
        group_unroll=int(_optional(model_cfg, "han_group_unroll", 1)),
    )


def build_perceptual(model_cfg: Mapping[str, Any] | Any) -> ResClique:
    """G_P from `config.model` (configs/x4.py) or the same keys as a dict."""
    return ResClique(
        n_blocks=int(_field(model_cfg, "clique_blocks")),
        growth=int(_field(model_cfg, "clique_growth")),
        stem=int(_field(model_cfg, "clique_stem")),
        rgb_mean=tuple(float(v) for v in _field(model_cfg, "rgb_mean")),
        rgb_range=float(_field(model_cfg, "rgb_range")),
        dtype=compute_dtype(model_cfg),
        remat=bool(_optional(model_cfg, "remat", False)),
        unroll=int(_optional(model_cfg, "clique_unroll", 1)),
    )


def build_lfcsr(model_cfg: Mapping[str, Any] | Any) -> LFcSR:
    """The two-stage generator; its params tree is {'objective': ..., 'perceptual': ...}."""
    return LFcSR(objective=build_objective(model_cfg), perceptual=build_perceptual(model_cfg))


def cast_for_compute(params: Any, dtype: Dtype) -> Any:
    """Floating params cast to the compute dtype, once.

    Every layer casts its float32 params to `dtype` where it uses them; done inside the scanned
    blocks, that is one convert kernel per parameter per loop iteration, forward and backward.
    Casting the whole tree before `apply` does the same arithmetic with one convert per leaf
    (the layers' own casts are then no-ops), and gradients still arrive in float32."""
    if dtype == jnp.float32:
        return params
    return jax.tree_util.tree_map(
        lambda leaf: leaf.astype(dtype) if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf,
        params)


def apply_generator(model: nn.Module, params: Any, x: jax.Array,
                    mask: jax.Array | None = None) -> Any:
    """`model.apply` (HAN, ResClique or LFcSR) with its params cast to the compute dtype once.

    `mask` (inference on bucketed shapes): the valid-pixel mask of `x`, see HAN/ResClique."""
    # Modules without a compute dtype (test stand-ins) run as given.
    dtype = getattr(model.objective if isinstance(model, LFcSR) else model, "dtype", jnp.float32)
    variables = {"params": cast_for_compute(params, dtype)}
    if mask is None:
        return model.apply(variables, x)
    return model.apply(variables, x, mask)


def init_params(
    model: nn.Module, key: jax.Array, lr_shape: tuple[int, ...] = (1, 16, 16, 3)
) -> Any:
    """Random float32 params of `model` (HAN, LFcSR: LR-shaped input; ResClique: any even H, W).

    Jitted (scanned blocks initialised op by op are far slower), and with the classic threefry:
    on CPU the partitionable threefry (jax's default) makes this init compile ~5x slower
    (13 s vs 3 s for HAN), and generator params are replicated, never sharded at init."""
    with jax.threefry_partitionable(False):
        return jax.jit(lambda k: model.init(k, jnp.zeros(lr_shape, jnp.float32))["params"])(key)


def count_params(params: Any) -> int:
    """Number of trainable scalars in a params pytree (works on ShapeDtypeStructs too)."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params))
