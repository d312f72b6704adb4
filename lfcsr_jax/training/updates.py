"""What every training step shares: batch checks, one optimizer update, the non-finite guard."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

Params = Any
Metrics = dict[str, jax.Array]


def batch_images(batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    for key in ("lr", "hr"):
        if key not in batch:
            raise ValueError(f"step: batch must hold 'lr' and 'hr' images, missing {key!r}")
    return jnp.asarray(batch["lr"], jnp.float32), jnp.asarray(batch["hr"], jnp.float32)


def apply_update(params: Params, opt_state, grads: Params, tx: optax.GradientTransformation,
                 learning_rate: jax.Array | float):
    """One optimizer step: params - learning_rate * tx(grads)."""
    direction, new_opt_state = tx.update(grads, opt_state, params)
    updates = jax.tree_util.tree_map(lambda d: -learning_rate * d, direction)
    return optax.apply_updates(params, updates), new_opt_state


def all_finite(*trees: Any) -> jax.Array:
    leaves = [x for tree in trees for x in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def select_tree(keep_new: jax.Array, new: Any, old: Any) -> Any:
    return jax.tree_util.tree_map(lambda n, o: jnp.where(keep_new, n, o), new, old)


def prefixed(prefix: str, terms: Metrics) -> Metrics:
    return {f"{prefix}/{name}": jnp.asarray(value, jnp.float32) for name, value in terms.items()}


def finish_step(state: Any, updated: dict[str, Any], metrics: Metrics, inputs: tuple,
                counter: str) -> tuple[Any, Metrics]:
    """The end every step shares: float32 metrics plus 'all_finite'; the `updated` state fields
    applied only when the inputs and metrics are finite (else the old values stay); `step` and
    the phase's `counter` advance either way."""
    ok = all_finite(*inputs, metrics)
    metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
    metrics["all_finite"] = ok
    current = {name: getattr(state, name) for name in updated}
    new_state = state.replace(step=state.step + 1, **{counter: getattr(state, counter) + 1},
                              **select_tree(ok, updated, current))
    return new_state, metrics
