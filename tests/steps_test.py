"""The execution settings of the generators change how a step runs, never what it computes:
rematerialisation and unrolled loops give the same updated state as the plain step, and the
parameter cast to the compute dtype changes nothing in float32."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import x4
from lfcsr_jax.models import generator
from lfcsr_jax.training import pretrain, train_state


@pytest.fixture(autouse=True)
def _fast_compiles():
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


def _one_pretrain_step(**model_fields):
    config = x4.get_config("tiny")
    config.train.global_batch_size = 2
    for field, value in model_fields.items():
        config.model[field] = value
    networks = train_state.make_networks(config)
    with jax.threefry_partitionable(False):
        state = jax.jit(functools.partial(train_state.init_train_state, config=config,
                                          networks=networks))(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    side = config.input.lr_patch
    batch = {"lr": rng.uniform(0, 255, (2, side, side, 3)).astype(np.float32),
             "hr": rng.uniform(0, 255, (2, 4 * side, 4 * side, 3)).astype(np.float32)}
    step = jax.jit(functools.partial(pretrain.pretrain_step, networks=networks))
    new_state, metrics = step(state, batch, None)
    return train_state.generator_params(new_state), metrics


@pytest.fixture(scope="module")
def plain():
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        return _one_pretrain_step()
    finally:
        jax.config.update("jax_disable_most_optimizations", previous)


@pytest.mark.parametrize("fields", [
    {"remat": True},
    {"han_block_unroll": 2, "han_group_unroll": 2, "clique_unroll": 2},
])
def test_execution_settings_give_the_same_step(plain, fields):
    params, metrics = _one_pretrain_step(**fields)
    plain_params, plain_metrics = plain
    np.testing.assert_allclose(float(metrics["loss/pretrain_total"]),
                               float(plain_metrics["loss/pretrain_total"]), rtol=1e-6)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5,
                                                atol=1e-7), params, plain_params)


def test_cast_for_compute_is_identity_in_float32_and_casts_floats_only():
    tree = {"w": jnp.ones((2, 2), jnp.float32), "n": jnp.arange(3)}
    assert generator.cast_for_compute(tree, jnp.float32) is tree
    cast = generator.cast_for_compute(tree, jnp.bfloat16)
    assert cast["w"].dtype == jnp.bfloat16 and cast["n"].dtype == tree["n"].dtype


def test_execution_fields_are_known_to_the_export_check():
    """An export trained with other loop settings must load: those fields never compare."""
    model = x4.get_config("").model
    for field in ("remat", "han_block_unroll", "han_group_unroll", "clique_unroll", "dtype"):
        assert field in model and field in generator.EXECUTION_FIELDS


def test_pretraining_runs_the_generators_without_block_loops_and_admm_with_them():
    from lfcsr_jax.training import steps

    config = x4.get_config("tiny")
    networks = train_state.make_networks(config)
    pretrain_nets = steps.phase_networks(networks, "pretrain")
    assert pretrain_nets.objective.block_unroll == config.model.han_resblocks
    assert pretrain_nets.perceptual.unroll == config.model.clique_blocks
    assert steps.phase_networks(networks, "admm") is networks
    # On a TPU the loops stay (its compiler takes minutes over straight-line code).
    assert steps.phase_networks(networks, "pretrain", "tpu") is networks
    config.model.pretrain_unrolled = False
    assert steps.phase_networks(train_state.make_networks(config), "pretrain").objective \
        .block_unroll == config.model.han_block_unroll
