"""updates.py: batch checks, one optimizer update, the non-finite guard, metric prefixes."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import struct

from lfcsr_jax.training import updates


def test_batch_images_are_float32_and_both_are_required():
    lr, hr = updates.batch_images({"lr": np.ones((1, 2, 2, 3), np.uint8),
                                   "hr": np.ones((1, 8, 8, 3), np.uint8)})
    assert lr.dtype == jnp.float32 and hr.dtype == jnp.float32 and hr.shape == (1, 8, 8, 3)
    with pytest.raises(ValueError, match="missing 'hr'"):
        updates.batch_images({"lr": np.ones((1, 2, 2, 3))})


def test_apply_update_is_params_minus_rate_times_the_direction():
    params = {"w": jnp.array([1.0, 2.0])}
    tx = optax.identity()  # the direction is the gradient itself; the rate is applied outside
    new, _ = updates.apply_update(params, tx.init(params), {"w": jnp.array([0.5, -1.0])}, tx, 0.1)
    np.testing.assert_allclose(new["w"], [0.95, 2.1], rtol=1e-6)


def test_all_finite_and_select_tree():
    assert bool(updates.all_finite({"a": jnp.ones(3)}, [jnp.zeros(())]))
    assert not bool(updates.all_finite({"a": jnp.array([1.0, jnp.nan])}))
    assert not bool(updates.all_finite({"a": jnp.array([jnp.inf])}))
    new, old = {"a": jnp.ones(2)}, {"a": jnp.zeros(2)}
    np.testing.assert_array_equal(updates.select_tree(jnp.bool_(True), new, old)["a"], [1, 1])
    np.testing.assert_array_equal(updates.select_tree(jnp.bool_(False), new, old)["a"], [0, 0])


def test_prefixed_names_and_float32():
    out = updates.prefixed("d", {"loss": 1, "acc": jnp.float16(0.5)})
    assert set(out) == {"d/loss", "d/acc"} and all(v.dtype == jnp.float32 for v in out.values())


@struct.dataclass
class _State:
    step: jnp.ndarray
    admm_count: jnp.ndarray
    w: jnp.ndarray


def test_finish_step_keeps_old_fields_when_not_finite_and_counts_either_way():
    state = _State(step=jnp.int32(4), admm_count=jnp.int32(1), w=jnp.zeros(2))
    good, metrics = updates.finish_step(state, {"w": jnp.ones(2)}, {"loss": 2}, (jnp.ones(1),),
                                        "admm_count")
    np.testing.assert_array_equal(good.w, [1, 1])
    assert int(good.step) == 5 and int(good.admm_count) == 2
    assert bool(metrics["all_finite"]) and metrics["loss"].dtype == jnp.float32
    bad, metrics = updates.finish_step(state, {"w": jnp.ones(2)}, {"loss": jnp.nan},
                                       (jnp.ones(1),), "admm_count")
    np.testing.assert_array_equal(bad.w, [0, 0])  # the update is dropped
    assert int(bad.step) == 5 and int(bad.admm_count) == 2
    assert not bool(metrics["all_finite"])
