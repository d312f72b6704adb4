"""The hand-written derivatives of the RCAB (layers.relu, layers.attention_tail) against autodiff
of the plain math, restated here: same values, same gradients (docs/design.md section 13)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lfcsr_jax.models import generator, layers


def _plain_attention(conv, bias, squeeze, excite):
    """RCAN channel attention of conv + bias, as the authors write it (GAP, 1x1, ReLU, 1x1,
    sigmoid, scale), with jax.nn and a matrix product."""
    mapped = conv + bias
    pooled = mapped.mean(axis=(1, 2))
    hidden = jax.nn.relu(pooled @ squeeze[0] + squeeze[1])
    scale = jax.nn.sigmoid(hidden @ excite[0] + excite[1])
    return mapped * scale[:, None, None, :]


def _attention_tail_of_matrices(conv, bias, squeeze, excite):
    """layers.attention_tail takes the 1x1 kernels as stored, (1, 1, in, out)."""
    return layers.attention_tail(conv, bias, (squeeze[0][None, None], squeeze[1]),
                                 (excite[0][None, None], excite[1]))


def _random_inputs(key, dtype, batch=3, height=5, width=7, channels=16, reduced=4):
    keys = jax.random.split(key, 6)
    conv = jax.random.normal(keys[0], (batch, height, width, channels), dtype)
    bias = jax.random.normal(keys[1], (channels,), dtype)
    squeeze = (jax.random.normal(keys[2], (channels, reduced), dtype),
               0.1 * jax.random.normal(keys[3], (reduced,), dtype))
    excite = (jax.random.normal(keys[4], (reduced, channels), dtype),
              0.1 * jax.random.normal(keys[5], (channels,), dtype))
    return conv, bias, squeeze, excite


def test_attention_tail_value_and_every_gradient_match_autodiff_in_float64():
    with jax.enable_x64(True):
        conv, bias, squeeze, excite = _random_inputs(jax.random.PRNGKey(0), jnp.float64)
        target = jax.random.normal(jax.random.PRNGKey(1), conv.shape, jnp.float64)

        def loss(function):
            return lambda *args: jnp.sum((function(*args) - target) ** 2)

        ours, our_grads = jax.value_and_grad(loss(_attention_tail_of_matrices), (0, 1, 2, 3))(
            conv, bias, squeeze, excite)
        plain, plain_grads = jax.value_and_grad(loss(_plain_attention), (0, 1, 2, 3))(
            conv, bias, squeeze, excite)
        # The attention's pooled-vector math runs in float32 by design: 1e-6, not 1e-12. A wrong
        # term in the backward would be off by the size of the gradient itself.
        np.testing.assert_allclose(ours, plain, rtol=1e-6)
        # Some hidden units must be inactive, or the ReLU branch of the backward is untested.
        hidden = (conv + bias).mean(axis=(1, 2)) @ squeeze[0] + squeeze[1]
        assert bool(jnp.any(hidden < 0)) and bool(jnp.any(hidden > 0))
        for ours_leaf, plain_leaf in zip(jax.tree.leaves(our_grads), jax.tree.leaves(plain_grads)):
            assert ours_leaf.shape == plain_leaf.shape
            scale = float(jnp.max(jnp.abs(plain_leaf)))
            np.testing.assert_allclose(ours_leaf, plain_leaf, atol=1e-6 * scale)


def test_relu_derivative_reads_the_output_and_equals_jax_nn_relu_including_zero():
    x = jnp.array([-2.0, -0.0, 0.0, 1e-30, 3.0])
    np.testing.assert_array_equal(layers.relu(x), jax.nn.relu(x))
    ours = jax.grad(lambda v: jnp.sum(layers.relu(v) * jnp.arange(1.0, 6.0)))(x)
    theirs = jax.grad(lambda v: jnp.sum(jax.nn.relu(v) * jnp.arange(1.0, 6.0)))(x)
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(ours, [0.0, 0.0, 0.0, 4.0, 5.0])


def _plain_rcab(params, x):
    def conv(y, p):
        return jax.lax.conv_general_dilated(
            y, p["kernel"], (1, 1), ((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["bias"]

    y = jax.nn.relu(conv(x, params["conv1"]))
    conv2 = conv(y, params["conv2"]) - params["conv2"]["bias"]
    attention = params["attention"]
    squeeze = (attention["squeeze"]["kernel"][0, 0], attention["squeeze"]["bias"])
    excite = (attention["excite"]["kernel"][0, 0], attention["excite"]["bias"])
    return x + _plain_attention(conv2, params["conv2"]["bias"], squeeze, excite)


def test_rcab_forward_and_parameter_gradients_match_the_plain_block_in_float32():
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 6, 5, 32))
    block = layers.RCAB(reduction=16)
    params = block.init(jax.random.PRNGKey(3), x)["params"]
    # Non-zero biases everywhere (they initialise to zero), so the bias gradients are exercised.
    params = jax.tree.map(
        lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(4), p.shape), params)
    target = jax.random.normal(jax.random.PRNGKey(5), x.shape)

    def loss(function):
        return lambda p: jnp.sum((function(p) - target) ** 2)

    ours, our_grads = jax.value_and_grad(loss(lambda p: block.apply({"params": p}, x)[0]))(params)
    plain, plain_grads = jax.value_and_grad(loss(lambda p: _plain_rcab(p, x)))(params)
    np.testing.assert_allclose(ours, plain, rtol=1e-5)
    assert jax.tree.structure(our_grads) == jax.tree.structure(plain_grads)
    for (path, ours_leaf), plain_leaf in zip(jax.tree_util.tree_leaves_with_path(our_grads),
                                             jax.tree.leaves(plain_grads)):
        scale = float(jnp.max(jnp.abs(plain_leaf)))
        assert scale > 0, path
        np.testing.assert_allclose(ours_leaf, plain_leaf, atol=2e-5 * scale,
                                   err_msg=jax.tree_util.keystr(path))


def test_forward_only_attention_equals_the_plain_math_banded_or_not_masked_or_not():
    """attention_tail undifferentiated and ChannelAttention's masked path run the forward-only
    form: banded pool + squeeze from the band sums above 64 x 64 pixels, the plain pool below.
    Against a float64 numpy restatement, for both sizes, with the pool's divisor the pixel
    count or a per-image valid count."""
    for height, width in ((96, 80), (20, 24)):  # 7,680 pixels: banded; 480: plain
        with jax.enable_x64(True):
            conv, bias, squeeze, excite = _random_inputs(
                jax.random.PRNGKey(2), jnp.float64, batch=2, height=height, width=width)
        conv, bias = np.asarray(conv), np.asarray(bias)
        squeeze = tuple(np.asarray(w) for w in squeeze)
        excite = tuple(np.asarray(w) for w in excite)
        mapped = conv + bias
        for pixels in (height * width, np.array([[height * width / 3.0], [1000.0]])):
            pooled = mapped.sum(axis=(1, 2)) / pixels
            hidden = np.maximum(pooled @ squeeze[0] + squeeze[1], 0.0)
            expected = mapped / (1.0 + np.exp(-(hidden @ excite[0] + excite[1])))[:, None, None]
            ours = layers._scaled_by_attention(  # pylint: disable=protected-access
                jnp.asarray(mapped, jnp.float32), jnp.asarray(pixels, jnp.float32),
                tuple(jnp.asarray(w, jnp.float32) for w in squeeze),
                tuple(jnp.asarray(w, jnp.float32) for w in excite))
            np.testing.assert_allclose(np.asarray(ours), expected, rtol=2e-5,
                                       atol=2e-5 * np.abs(expected).max())
        tail = _attention_tail_of_matrices(
            *(jnp.asarray(a, jnp.float32) for a in (conv, bias)),
            tuple(jnp.asarray(w, jnp.float32) for w in squeeze),
            tuple(jnp.asarray(w, jnp.float32) for w in excite))
        pooled = mapped.mean(axis=(1, 2))
        hidden = np.maximum(pooled @ squeeze[0] + squeeze[1], 0.0)
        expected = mapped / (1.0 + np.exp(-(hidden @ excite[0] + excite[1])))[:, None, None]
        np.testing.assert_allclose(np.asarray(tail), expected, rtol=2e-5,
                                   atol=2e-5 * np.abs(expected).max())


def test_pool_bands_divide_the_height_within_the_second_stage_budget():
    # Hand-counted: the largest divisor of the height with bands x 64 channels <= 4096.
    assert layers._pool_bands(128, 64) == 64  # pylint: disable=protected-access
    assert layers._pool_bands(288, 64) == 48  # pylint: disable=protected-access
    assert layers._pool_bands(37, 64) == 37  # pylint: disable=protected-access
    assert layers._pool_bands(97, 64) == 1  # pylint: disable=protected-access
    assert layers._pool_bands(96, 8) == 96  # pylint: disable=protected-access


@pytest.mark.parametrize("row_sums_first", [False, True])
def test_biased_prelu_value_and_every_gradient_match_autodiff_in_float64(monkeypatch,
                                                                         row_sums_first):
    """layers.biased_prelu (the Res-clique unit's bias + PReLU, with one sum for both parameter
    gradients) against autodiff of PReLU(conv + bias) written with jnp.where, in both of its
    forms: whole sums for a small batch, row sums first for a large one."""
    if row_sums_first:
        monkeypatch.setattr(layers, "ONE_KERNEL_SUM_PIXELS", 0)
    with jax.enable_x64(True):
        keys = jax.random.split(jax.random.PRNGKey(6), 4)
        conv = jax.random.normal(keys[0], (3, 4, 5, 6), jnp.float64)
        bias = 0.3 * jax.random.normal(keys[1], (6,), jnp.float64)
        slope = jnp.linspace(-0.5, 0.7, 6, dtype=jnp.float64)  # negative slopes too
        target = jax.random.normal(keys[2], conv.shape, jnp.float64)

        def plain(c, b, a):
            x = c + b
            return jnp.where(x >= 0, x, a * x)

        def loss(function):
            return lambda *args: jnp.sum((function(*args) - target) ** 2)

        ours, our_grads = jax.value_and_grad(loss(layers.biased_prelu), (0, 1, 2))(
            conv, bias, slope)
        theirs, their_grads = jax.value_and_grad(loss(plain), (0, 1, 2))(conv, bias, slope)
        assert bool(jnp.any(conv + bias < 0)) and bool(jnp.any(conv + bias > 0))
        np.testing.assert_allclose(ours, theirs, rtol=1e-12)
        for ours_leaf, their_leaf in zip(our_grads, their_grads):
            assert ours_leaf.shape == their_leaf.shape
            # The sums run in float32 by design (as in bf16 training): 1e-6 of the gradient.
            np.testing.assert_allclose(ours_leaf, their_leaf,
                                       atol=1e-6 * float(jnp.max(jnp.abs(their_leaf))))


def test_biased_relu_value_and_gradients_match_autodiff_in_float64_including_zero():
    """layers.biased_relu (RCAB conv1's bias + ReLU, its mask recomputed from the output) against
    autodiff of jax.nn.relu(conv + bias); exact zeros of the biased map take the zero branch."""
    with jax.enable_x64(True):
        conv = jax.random.normal(jax.random.PRNGKey(7), (2, 3, 4, 5), jnp.float64)
        bias = jnp.linspace(-0.4, 0.4, 5, dtype=jnp.float64)
        conv = conv.at[0, 0, 0].set(-bias)  # a whole pixel at exactly 0 after the bias
        weights = jax.random.normal(jax.random.PRNGKey(8), conv.shape, jnp.float64)

        def loss(function):
            return lambda c, b: jnp.sum(function(c, b) * weights)

        ours, our_grads = jax.value_and_grad(loss(layers.biased_relu), (0, 1))(conv, bias)
        theirs, their_grads = jax.value_and_grad(
            loss(lambda c, b: jax.nn.relu(c + b)), (0, 1))(conv, bias)
        np.testing.assert_allclose(ours, theirs, rtol=1e-12)
        np.testing.assert_array_equal(our_grads[0], their_grads[0])
        assert float(jnp.abs(our_grads[0][0, 0, 0]).max()) == 0.0
        np.testing.assert_allclose(our_grads[1], their_grads[1], rtol=1e-6)


def test_looped_blocks_with_packed_parameters_match_straight_line_blocks():
    """A residual group (rematerialised) and the Res-clique (not) run their block loops over
    packed small parameters (layers.scan_over_packed_params); straight-line blocks (unroll =
    number of blocks) run nn.scan as it created the params. Same params: same output and the
    same gradient for every parameter."""
    x = jax.random.normal(jax.random.PRNGKey(9), (2, 6, 6, 32))
    image = jax.random.uniform(jax.random.PRNGKey(10), (2, 12, 12, 3)) * 255.0
    cases = [
        (lambda unroll: layers.ResidualGroup(n_resblocks=3, reduction=16, remat=True,
                                             unroll=unroll), x),
        (lambda unroll: generator.ResClique(n_blocks=3, growth=8, stem=8, unroll=unroll),
         image),
    ]
    for make, inputs in cases:
        looped, straight = make(1), make(3)
        # Random values for every parameter (shapes from init, without compiling it): non-zero
        # biases and slopes of both signs, so every packed parameter's gradient is exercised.
        shapes = jax.eval_shape(looped.init, jax.random.PRNGKey(11), inputs)["params"]
        leaves, treedef = jax.tree.flatten(shapes)
        params = jax.tree.unflatten(treedef, [
            0.2 * jax.random.normal(jax.random.PRNGKey(12 + i), leaf.shape)
            for i, leaf in enumerate(leaves)])

        def loss(module):
            def value(p):
                out = module.apply({"params": p}, inputs)
                out = out[0] if isinstance(out, tuple) else out
                return jnp.sum(jnp.sin(out))
            return value

        ours, our_grads = jax.jit(jax.value_and_grad(loss(looped)))(params)
        theirs, their_grads = jax.jit(jax.value_and_grad(loss(straight)))(params)
        np.testing.assert_allclose(ours, theirs, rtol=1e-5)
        for (path, ours_leaf), their_leaf in zip(
                jax.tree_util.tree_leaves_with_path(our_grads), jax.tree.leaves(their_grads)):
            scale = float(jnp.max(jnp.abs(their_leaf)))
            assert scale > 0, path
            np.testing.assert_allclose(ours_leaf, their_leaf, atol=2e-5 * scale,
                                       err_msg=jax.tree_util.keystr(path))


def test_pack_small_leaves_round_trips_and_keeps_big_leaves_apart():
    stacked = {"kernel": jnp.arange(2 * 5000.0).reshape(2, 5000),
               "bias": jnp.arange(6.0).reshape(2, 3),
               "slope": jnp.arange(8.0).reshape(2, 2, 2)}
    big, packed, unpack = layers.pack_small_leaves(stacked, 2)
    assert packed.shape == (2, 3 + 4)  # flattening order: bias, kernel, slope
    assert sum(leaf is not None for leaf in big) == 1
    for i in range(2):
        block = unpack([None if leaf is None else leaf[i] for leaf in big], packed[i])
        for name in stacked:
            np.testing.assert_array_equal(block[name], stacked[name][i])
    # Small leaves of different dtypes are not packed: every leaf passes through unchanged.
    mixed = {**stacked, "slope": stacked["slope"].astype(jnp.bfloat16)}
    big, packed, unpack = layers.pack_small_leaves(mixed, 2)
    assert packed is None and all(leaf is not None for leaf in big)
    block = unpack([leaf[1] for leaf in big], None)
    for name in mixed:
        assert block[name].dtype == mixed[name].dtype
        np.testing.assert_array_equal(block[name], mixed[name][1])


@pytest.mark.parametrize("terms", [1, 3, 4, 5])
def test_times_columns_is_the_matrix_product_for_any_number_of_terms(terms):
    """layers._times_columns sums by halving (odd counts add the leftover term): x @ matrix.T,
    against numpy in float64, in both orders."""
    rng = np.random.default_rng(terms)
    x, matrix = rng.normal(size=(3, terms)), rng.normal(size=(6, terms))
    with jax.enable_x64(True):
        for reverse in (False, True):
            ours = layers._times_columns(  # pylint: disable=protected-access
                jnp.asarray(x), jnp.asarray(matrix), reverse=reverse)
            np.testing.assert_allclose(np.asarray(ours), x @ matrix.T, rtol=1e-12, atol=1e-12)
