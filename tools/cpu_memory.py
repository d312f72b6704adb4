"""Estimated activation memory (estimate_activation_bytes) against measured peak RSS.

  JAX_PLATFORMS=cpu python tools/cpu_memory.py [--config=configs/x4.py:demo] [--sizes=64,128,256]

For each LR size, a fresh process loads a random export of the config's model, then runs one
whole-image forward (compile included, as for a new image size in super_resolve) and reports
the peak resident memory above what it held before the forward, beside the estimate that CPU
auto-tiling compares with the available host memory (docs/design.md, section 13).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _export(config_spec: str, directory: Path) -> None:
    import jax
    import numpy as np

    from lfcsr_jax import configuration
    from lfcsr_jax.weights import exports
    from lfcsr_jax.models import generator

    model_cfg = configuration.load_config_file(config_spec).model.to_dict()
    model_cfg["dtype"] = "float32"
    model = generator.build_lfcsr(model_cfg)
    shapes = jax.eval_shape(lambda k: generator.init_params(model, k, (1, 8, 8, 3)),
                            jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(
        lambda s: (0.05 * rng.standard_normal(s.shape)).astype(np.float32), shapes)
    exports.save_export(directory, params, model_cfg)


def _measure(export: str, size: int) -> dict:
    import numpy as np

    from lfcsr_jax import super_resolve
    from lfcsr_jax.inference.model import load_model

    model = load_model(export, "float32", 0)
    lr = np.random.default_rng(0).integers(0, 256, (size, size, 3)).astype(np.uint8)
    before = _rss_bytes()
    super_resolve.super_resolve_array(model, lr, alpha=0.0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"size": size, "estimate": model.activation_bytes(size, size),
            "measured": peak - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/x4.py:demo")
    parser.add_argument("--sizes", default="64,128,256")
    parser.add_argument("--_measure", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._measure:
        print(json.dumps(_measure(args._measure[0], int(args._measure[1]))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        _export(args.config, Path(tmp) / "export")
        for size in (int(s) for s in args.sizes.split(",")):
            out = subprocess.run([sys.executable, __file__, "--_measure", f"{tmp}/export",
                                  str(size)], capture_output=True, text=True, check=True,
                                 env=dict(os.environ, JAX_PLATFORMS="cpu"))
            row = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"LR {size}x{size}: estimate {row['estimate'] / 2**20:8.1f} MiB, measured peak "
                  f"{row['measured'] / 2**20:8.1f} MiB above the loaded model "
                  f"(ratio {row['measured'] / row['estimate']:.2f})", flush=True)


if __name__ == "__main__":
    main()
