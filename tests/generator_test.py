"""G_O (HAN), G_P (Res-clique) and the two-stage LFcSR: parity with the authors' modules through the
stored reference vectors, exact parameter counts, initial identities, shapes and dtypes."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import x4
from lfcsr_jax import convert
from lfcsr_jax.models import (
    build_lfcsr,
    build_objective,
    build_perceptual,
    count_params,
    init_params,
    layers,
)


def _small_cfg(dtype: str = "float32"):
    cfg = x4.get_config().model
    cfg.han_resgroups, cfg.han_resblocks, cfg.han_features, cfg.han_reduction = 2, 2, 16, 4
    cfg.clique_blocks, cfg.clique_growth, cfg.clique_stem = 2, 8, 8
    cfg.dtype = dtype
    return cfg


@pytest.fixture(scope="module")
def small_params():
    """Random params of the small two-stage model (shared: each init compiles for seconds)."""
    return init_params(build_lfcsr(_small_cfg()), jax.random.key(6), (1, 8, 8, 3))


def _regenerate(reference_dir, name: str) -> tuple[dict[str, np.ndarray], np.lib.npyio.NpzFile]:
    """The recipe of shared/data/README.md (reference_vectors): seeded normals, in json order."""
    meta = json.loads((reference_dir / f"{name}.json").read_text())
    arrays = np.load(reference_dir / f"{name}.npz")
    rng = np.random.default_rng(meta["seed"])
    state_dict = {
        p["key"]: (p["mean"] + p["std"] * rng.standard_normal(p["shape"])).astype(np.float32)
        for p in meta["params"]
    }
    state_dict.update({k: arrays[f"fixed/{k}"] for k in meta["fixed"]})
    return state_dict, arrays


def _rel_l2(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(got, np.float64) - want) / np.linalg.norm(want))


def test_han_matches_authors_reference_vectors(shared_data):
    state_dict, arrays = _regenerate(shared_data / "reference_vectors", "han_r2")
    cfg = x4.get_config().model
    cfg.han_resblocks = 2  # the reference HAN has 2 RCAB per group, everything else full size.
    params = convert.han_params_from_state_dict(state_dict, cfg)
    sr = np.asarray(jax.jit(build_objective(cfg).apply)({"params": params}, arrays["lr"]))
    assert sr.shape == arrays["sr"].shape == (1, 48, 40, 3)
    # With random weights this HAN amplifies float32 rounding: the authors' float32 output itself
    # is 5e-5 (L2) away from a float64 evaluation, and a torch float32 re-run 1.5e-4 away from it.
    # Any wiring error (e.g. LAM layer order reversed) gives ~0.5.
    assert _rel_l2(sr, arrays["sr"]) < 2e-4
    assert np.abs(sr - arrays["sr"]).max() < 1e-3 * np.abs(arrays["sr"]).max()


def test_resclique_matches_authors_reference_vectors(shared_data):
    state_dict, arrays = _regenerate(shared_data / "reference_vectors", "resclique")
    cfg = x4.get_config().model
    params = convert.resclique_params_from_state_dict(state_dict, cfg)
    y = np.asarray(jax.jit(build_perceptual(cfg).apply)({"params": params}, arrays["y_objective"]))
    assert y.shape == arrays["y_perceptual"].shape == (1, 16, 12, 3)
    assert _rel_l2(y, arrays["y_perceptual"]) < 1e-5


def test_full_size_trainable_parameter_counts():
    model = build_lfcsr(x4.get_config().model)
    shapes = jax.eval_shape(lambda k: init_params(model, k, (1, 8, 8, 3)), jax.random.key(0))
    assert set(shapes) == {"objective", "perceptual"}
    assert count_params(shapes["objective"]) == 16_071_745  # docs/design.md section 2
    assert count_params(shapes["perceptual"]) == 2_601_420  # docs/design.md section 3
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(shapes))


def test_attention_modules_start_as_identity(small_params):
    assert small_params["objective"]["layer_attention"]["gamma"] == 0.0
    assert small_params["objective"]["channel_spatial_attention"]["gamma"] == 0.0
    x = jax.random.normal(jax.random.key(2), (2, 5, 4, 16)) * 10.0
    lam = layers.LayerAttention()
    stack = jnp.stack([x, 2 * x, -x], axis=1)
    lam_params = init_params(lam, jax.random.key(3), stack.shape)
    np.testing.assert_array_equal(jax.jit(lam.apply)({"params": lam_params}, stack), stack)
    csam = layers.ChannelSpatialAttention()
    csam_params = init_params(csam, jax.random.key(4), x.shape)
    np.testing.assert_array_equal(jax.jit(csam.apply)({"params": csam_params}, x), x)


def test_csam_banded_conv_equals_a_direct_3d_convolution():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 4, 5, 6)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 3, 1, 1)).astype(np.float32)
    params = {"kernel": kernel, "bias": np.float32([0.3]), "gamma": np.float32(0.7)}
    got = layers.ChannelSpatialAttention().apply({"params": params}, x)
    # Direct 3x3x3 correlation over (channel, h, w) with zero padding, in float64.
    padded = np.pad(x[0].transpose(2, 0, 1).astype(np.float64), 1)  # (C+2, H+2, W+2)
    c, h, w = 6, 4, 5
    logits = sum(
        kernel[dc, dh, dw, 0, 0] * padded[dc : dc + c, dh : dh + h, dw : dw + w]
        for dc in range(3) for dh in range(3) for dw in range(3)
    ) + 0.3
    want = x[0] * (1 + 0.7 / (1 + np.exp(-logits.transpose(1, 2, 0))))
    np.testing.assert_allclose(np.asarray(got)[0], want, rtol=1e-5, atol=1e-5)


def test_pixel_shuffle_uses_pytorch_channel_order():
    # Input channel c*4 + i*2 + j lands on output pixel (2y+i, 2x+j), channel c.
    x = np.arange(1 * 2 * 3 * 8, dtype=np.float32).reshape(1, 2, 3, 8)
    y = np.asarray(layers.pixel_shuffle(jnp.asarray(x), 2))
    assert y.shape == (1, 4, 6, 2)
    for c in range(2):
        for i in range(2):
            for j in range(2):
                np.testing.assert_array_equal(y[0, i::2, j::2, c], x[0, :, :, c * 4 + i * 2 + j])


def test_lfcsr_shapes_params_tree_and_stage_reuse(small_params):
    cfg = _small_cfg()
    model = build_lfcsr(cfg)
    lr = jax.random.uniform(jax.random.key(5), (2, 6, 10, 3), maxval=255.0)
    params = small_params
    y_objective, y_perceptual = jax.jit(model.apply)({"params": params}, lr)
    assert y_objective.shape == y_perceptual.shape == (2, 24, 40, 3)
    assert y_objective.dtype == y_perceptual.dtype == jnp.float32
    # Each stage applies alone on its subtree (what the ADMM sub-steps do).
    alone_o = jax.jit(build_objective(cfg).apply)({"params": params["objective"]}, lr)
    alone_p = jax.jit(build_perceptual(cfg).apply)({"params": params["perceptual"]}, y_objective)
    np.testing.assert_allclose(alone_o, y_objective, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(alone_p, y_perceptual, rtol=1e-6, atol=1e-4)
    # Scanned blocks carry stacked leading axes (groups x blocks; clique blocks).
    assert params["objective"]["groups"]["blocks"]["conv1"]["kernel"].shape == (2, 2, 3, 3, 16, 16)
    assert params["perceptual"]["blocks"]["ll2_conv"]["kernel"].shape == (2, 3, 3, 32, 8)


def test_bfloat16_compute_agrees_with_float32(small_params):
    lr = jax.random.uniform(jax.random.key(7), (1, 8, 8, 3), maxval=255.0)
    params = small_params
    y32 = jax.jit(build_lfcsr(_small_cfg("float32")).apply)({"params": params}, lr)
    y16 = jax.jit(build_lfcsr(_small_cfg("bfloat16")).apply)({"params": params}, lr)
    for a, b in zip(y32, y16):
        assert b.dtype == jnp.float32  # outputs stay float32 on the 0-255 scale.
        # Outputs are ~128 +- tens; bfloat16 has 8 mantissa bits.
        assert _rel_l2(np.asarray(b), np.asarray(a)) < 2e-2
        assert float(jnp.abs(a - b).mean()) < 2.0
    bf16_params = jax.eval_shape(
        lambda k: init_params(build_lfcsr(_small_cfg("bfloat16")), k, lr.shape), jax.random.key(0)
    )
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(bf16_params))


def test_factories_accept_plain_dicts_and_name_bad_fields():
    cfg_dict = _small_cfg().to_dict()
    assert build_objective(cfg_dict) == build_objective(_small_cfg())
    assert build_perceptual(cfg_dict).growth == 8
    with pytest.raises(ValueError, match="dtype 'float8'"):
        build_objective({**cfg_dict, "dtype": "float8"})
    missing = dict(cfg_dict)
    del missing["clique_stem"]
    with pytest.raises(ValueError, match="clique_stem"):
        build_lfcsr(missing)
