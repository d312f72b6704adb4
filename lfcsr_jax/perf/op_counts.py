"""Counts the primitives a jitted function executes, from its jaxpr, loops multiplied out.

On a GPU the training step's time is set by how many small kernels it launches, and that number
follows the number of convolutions, dots, reductions, converts and dynamic-update-slices in the
program. This count needs no accelerator, so CI can hold it down (tests/op_counts_test.py).

Rules: a `scan` body counts `length` times; a `cond` counts its costliest branch; a `while`
counts its body once (its trip count is not static; the training step has none); every other
primitive with a sub-jaxpr (pjit, custom_jvp/vjp, remat, shard_map) counts its sub-jaxpr once.
"""

from __future__ import annotations

import collections
from typing import Any, Callable

import jax
from jax.extend import core as jex_core

# Groups reported by `tools/benchmark.py --count`: primitive name -> group.
GROUPS = {
    "conv_general_dilated": "convolutions",
    "dot_general": "dots",
    "reduce_sum": "reductions",
    "reduce_max": "reductions",
    "reduce_min": "reductions",
    "reduce_prod": "reductions",
    "reduce_and": "reductions",
    "reduce_or": "reductions",
    "argmax": "reductions",
    "argmin": "reductions",
    "reduce_precision": "converts",
    "convert_element_type": "converts",
    "dynamic_update_slice": "dynamic_update_slices",
}
REPORTED = ("convolutions", "dots", "reductions", "converts", "dynamic_update_slices", "total")


def _sub_jaxprs(eqn: Any) -> list[Any]:
    subs = []
    for value in eqn.params.values():
        for item in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(item, jex_core.ClosedJaxpr):
                subs.append(item.jaxpr)
            elif isinstance(item, jex_core.Jaxpr):
                subs.append(item)
    return subs


def count_jaxpr(jaxpr: Any) -> collections.Counter:
    """Primitive name -> executions, for one (open) jaxpr."""
    counts: collections.Counter = collections.Counter()
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        subs = _sub_jaxprs(eqn)
        if name == "cond":
            branches = [count_jaxpr(sub) for sub in subs]
            counts.update(max(branches, key=lambda c: sum(c.values())) if branches else {})
        elif subs:
            times = int(eqn.params["length"]) if name == "scan" else 1
            for sub in subs:
                for prim, n in count_jaxpr(sub).items():
                    counts[prim] += times * n
        if not subs:
            counts[name] += 1
    return counts


def count_primitives(fn: Callable[..., Any], *args: Any) -> collections.Counter:
    """Primitive executions of `fn(*args)`; args may be arrays or jax.ShapeDtypeStructs."""
    closed = jax.make_jaxpr(fn)(*args)
    return count_jaxpr(closed.jaxpr)


def summarise(counts: collections.Counter) -> dict[str, int]:
    """The reported groups (see GROUPS) plus the total of every primitive."""
    summary = {group: 0 for group in REPORTED}
    for prim, n in counts.items():
        group = GROUPS.get(prim)
        if group:
            summary[group] += n
        summary["total"] += n
    return summary
