"""Tests of lfcsr_jax.training.losses against float64 numpy restatements, hand cases and the authors' outputs."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lfcsr_jax.training import losses


def _contextual_loss_float64(x_BxhxwxC: np.ndarray, y_BxhxwxC: np.ndarray, h: float = 0.1) -> float:
    """docs/design.md section 5, written out in float64 numpy."""
    x = np.asarray(x_BxhxwxC, np.float64)
    y = np.asarray(y_BxhxwxC, np.float64)
    batch, channels = x.shape[0], x.shape[-1]
    mu = y.mean(axis=(0, 1, 2))
    xc = (x - mu).reshape(batch, -1, channels)
    yc = (y - mu).reshape(batch, -1, channels)
    xc = xc / np.maximum(np.linalg.norm(xc, axis=-1, keepdims=True), 1e-12)
    yc = yc / np.maximum(np.linalg.norm(yc, axis=-1, keepdims=True), 1e-12)
    cosine = np.clip(np.einsum("bic,bjc->bij", xc, yc), 0.0, 1.0)
    d = 1.0 - cosine
    d_rel = d / (d.min(axis=2, keepdims=True) + 1e-5)
    w = np.exp((1.0 - d_rel) / h)
    cx_ij = w / w.sum(axis=2, keepdims=True)
    cx = cx_ij.max(axis=1).mean(axis=1)
    return float(np.mean(-np.log(cx + 1e-5)))


@pytest.mark.parametrize("shape,seed", [((2, 5, 4, 8), 0), ((3, 6, 6, 16), 1), ((1, 3, 7, 4), 2)])
def test_contextual_loss_matches_float64_formula(shape, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    # A target correlated with x so that the loss is not near its saturated value.
    y = (0.6 * x + 0.8 * rng.standard_normal(shape)).astype(np.float32)
    ours = float(losses.contextual_loss(x, y))
    assert ours == pytest.approx(_contextual_loss_float64(x, y), rel=1e-6, abs=1e-6)


def test_contextual_loss_matches_authors_function(shared_data):
    vectors = np.load(shared_data / "reference_vectors" / "contextual_loss.npz")
    cases = sorted(k[len("loss"):] for k in vectors.files if k.startswith("loss"))
    assert cases, "contextual_loss.npz holds no cases"
    for case in cases:
        ours = float(losses.contextual_loss(vectors[f"x{case}"], vectors[f"y{case}"], 0.1))
        assert ours == pytest.approx(float(vectors[f"loss{case}"]), rel=1e-6), case


def test_contextual_loss_identical_inputs_give_the_minimum():
    rng = np.random.default_rng(3)
    y = rng.standard_normal((2, 4, 4, 8)).astype(np.float32)
    minimum = -math.log(1.0 + 1e-5)  # CX = 1 is the largest similarity there is
    assert float(losses.contextual_loss(y, y)) == pytest.approx(minimum, abs=1e-6)
    perturbed = y + 1.0 * rng.standard_normal(y.shape).astype(np.float32)
    assert float(losses.contextual_loss(perturbed, y)) > minimum + 1e-3


def test_contextual_loss_two_positions_by_hand():
    # Target positions y1 = (1, 0), y2 = (-1, 0): mean 0, so no centring shift.
    # Generated x1 = (1, 0) matches y1 exactly; x2 = (0, 1) is orthogonal to both.
    # cos = [[1, -1 -> 0], [0, 0]], d = [[0, 1], [1, 1]].
    # Row x1: d~ = [0, 1e5] -> CX row [1, 0]. Row x2: d~ equal -> CX row [0.5, 0.5].
    # CX_j = max_i: [1, 0.5] -> CX = 0.75.
    y = np.array([[[[1.0, 0.0], [-1.0, 0.0]]]], np.float32)
    x = np.array([[[[1.0, 0.0], [0.0, 1.0]]]], np.float32)
    assert float(losses.contextual_loss(x, y)) == pytest.approx(-math.log(0.75 + 1e-5), rel=1e-6)


def test_contextual_loss_bfloat16_features_computed_in_float32():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 4, 4, 8)).astype(np.float32)
    y = rng.standard_normal((2, 4, 4, 8)).astype(np.float32)
    x16, y16 = jnp.asarray(x, jnp.bfloat16), jnp.asarray(y, jnp.bfloat16)
    ours = losses.contextual_loss(x16, y16)
    assert ours.dtype == jnp.float32
    expected = _contextual_loss_float64(np.asarray(x16, np.float32), np.asarray(y16, np.float32))
    assert float(ours) == pytest.approx(expected, rel=1e-6)


def test_contextual_loss_gradient_is_finite_for_a_zero_centred_position():
    y = np.random.default_rng(5).standard_normal((1, 2, 2, 4)).astype(np.float32)
    x = y.copy()
    x[0, 0, 0] = y.mean(axis=(0, 1, 2))  # centres to the zero vector
    grad = jax.grad(lambda a: losses.contextual_loss(a, jnp.asarray(y)))(jnp.asarray(x))
    assert np.all(np.isfinite(np.asarray(grad)))


def test_contextual_loss_memory_at_paper_size_stays_small():
    # Batch 16, 144x144 patches -> relu3_4 features 36x36x256: 1296^2 per image, about 107 MB
    # per B x N x N matrix in float32. The gradient must not keep many of them alive.
    feats = jax.ShapeDtypeStruct((16, 36, 36, 256), jnp.float32)
    compiled = jax.jit(jax.value_and_grad(losses.contextual_loss)).lower(feats, feats).compile()
    analysis = compiled.memory_analysis()
    if analysis is None:
        pytest.skip("this backend reports no memory analysis")
    matrix_bytes = 16 * 1296 * 1296 * 4
    assert analysis.temp_size_in_bytes < 3 * matrix_bytes


def test_contextual_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="contextual_loss"):
        losses.contextual_loss(jnp.zeros((1, 2, 2, 3)), jnp.zeros((1, 2, 3, 3)))


def test_lr_band_l1_is_l1_of_four_times_the_4x4_block_means():
    rng = np.random.default_rng(6)
    y = rng.uniform(0, 255, (2, 8, 12, 3))
    hr = rng.uniform(0, 255, (2, 8, 12, 3))

    def f_down(a):  # two-level Haar LL = 4 x mean of each 4x4 block
        return 4.0 * a.reshape(2, 2, 4, 3, 4, 3).mean(axis=(2, 4))

    expected = np.mean(np.abs(f_down(y) - f_down(hr)))
    assert float(losses.lr_band_l1(y.astype(np.float32), hr.astype(np.float32))) == pytest.approx(
        expected, rel=1e-5
    )


def test_gan_losses_by_hand():
    # BCE with logits: -log(sigmoid(z)) for label 1, -log(1 - sigmoid(z)) for label 0.
    real = np.array([[2.0], [-1.0]], np.float32)
    fake = np.array([[0.5], [-3.0]], np.float32)
    sig = lambda z: 1.0 / (1.0 + np.exp(-z.astype(np.float64)))  # noqa: E731
    expected_d = np.mean(-np.log(sig(real))) + np.mean(-np.log(1.0 - sig(fake)))
    assert float(losses.discriminator_loss(real, fake)) == pytest.approx(expected_d, rel=1e-6)
    assert float(losses.discriminator_loss(np.zeros((3, 1)), np.zeros((3, 1)))) == pytest.approx(
        2.0 * math.log(2.0), rel=1e-6
    )
    expected_g = np.mean(-np.log(sig(fake)))
    assert float(losses.generator_adversarial_loss(fake)) == pytest.approx(expected_g, rel=1e-6)


def test_l1_and_lf_penalty():
    rng = np.random.default_rng(7)
    t_y, t_obj, s = (rng.standard_normal((2, 3, 3, 3)).astype(np.float32) for _ in range(3))
    expected = 1e-4 / 2 * np.mean((t_y.astype(np.float64) - t_obj + s) ** 2)
    assert float(losses.lf_penalty(t_y, t_obj, s, 1e-4)) == pytest.approx(expected, rel=1e-6)
    assert float(losses.l1(t_y, t_obj)) == pytest.approx(np.mean(np.abs(t_y - t_obj)), rel=1e-6)
    # uint8 images must not wrap around when subtracted.
    assert float(losses.l1(np.array([0], np.uint8), np.array([255], np.uint8))) == 255.0


@pytest.mark.parametrize("images_at_once", [1, 3, 4, 16])
def test_contextual_loss_grouping_does_not_change_the_value(images_at_once):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((6, 3, 3, 4)).astype(np.float32)
    y = rng.standard_normal((6, 3, 3, 4)).astype(np.float32)
    ours = float(losses.contextual_loss(x, y, 0.1, images_at_once=images_at_once))
    assert ours == pytest.approx(_contextual_loss_float64(x, y), rel=1e-6)
