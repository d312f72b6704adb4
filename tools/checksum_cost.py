"""What checking a checkpoint's checksums costs at the paper model's size (configs/x4.py).

  python tools/checksum_cost.py [--config=configs/x4.py]

Builds the training state's shapes with jax.eval_shape (no compile, no real init), fills arrays of
those shapes with random numbers, and times exports.tree_checksums over them: the work each
save adds and each restore repeats (docs/design.md, section 14).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lfcsr_jax import configuration
from lfcsr_jax.training import train_state
from lfcsr_jax.weights import exports  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/x4.py")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    config = configuration.load_config_file(args.config)
    networks = train_state.make_networks(config)
    abstract = jax.eval_shape(functools.partial(train_state.init_train_state, config=config,
                                                networks=networks), jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    state = jax.tree_util.tree_map(
        lambda leaf: rng.standard_normal(leaf.shape).astype(leaf.dtype)
        if np.issubdtype(leaf.dtype, np.floating) else np.zeros(leaf.shape, leaf.dtype), abstract)
    leaves = jax.tree_util.tree_leaves(state)
    size = sum(x.nbytes for x in leaves)
    generator = train_state.generator_params(state)
    gen_size = sum(x.nbytes for x in jax.tree_util.tree_leaves(generator))
    for name, tree, nbytes in (("training state", state, size), ("export", generator, gen_size)):
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            exports.tree_checksums(tree)
            times.append(time.perf_counter() - start)
        print(f"{name}: {len(jax.tree_util.tree_leaves(tree))} arrays, {nbytes / 2**20:.1f} MiB, "
              f"checksums in {min(times):.3f} s (best of {args.repeats}), "
              f"{nbytes / min(times) / 2**30:.2f} GiB/s")


if __name__ == "__main__":
    main()
