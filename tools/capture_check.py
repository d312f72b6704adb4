"""Does capturing the whole step in CUDA graphs change the numbers? (lfcsr_jax/runtime.py)

XLA's convolution capture has had correctness bugs, so the `capture` flag set is checked on the
card before it becomes the default: the same steps from the same state and batches, once per
flag set, each in its own process (XLA reads its flags once per process), then compared.

  python tools/capture_check.py --out=/tmp/capture            # both runs + the comparison
  python tools/capture_check.py --flags=capture --digest=x.json   # one run (what the above calls)

The digest holds every metric of every step and, per parameter group, the float64 sum and L2
norm of the final params. Agreement: metrics within bf16 tolerance (rtol 2e-2 over a few
steps), params within rtol 1e-3. Prints one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tools"))


def run_digest(args: argparse.Namespace) -> dict:
    os.environ["LFCSR_RUNTIME_FLAGS"] = args.flags
    from lfcsr_jax import runtime

    runtime.configure()
    import jax
    import numpy as np

    import benchmark  # tools/benchmark.py: the same Training set-up the timings use

    config = benchmark.load_config(args.config, args.dtype, args.batch, args.set)
    training = benchmark.Training(config)
    digest: dict = {"flags": os.environ.get("XLA_FLAGS", ""), "device": str(jax.devices()[0])}
    for phase in args.phases.split(","):
        state = training.fresh_state()
        compiled, _ = training.compiled(phase, state)
        rows = []
        for _ in range(args.steps):
            state, metrics = compiled(state, training.batch, training.vgg_params)
            rows.append({k: float(v) for k, v in jax.device_get(metrics).items()})
        groups = {}
        for name in ("objective_params", "perceptual_params", "discriminator_params"):
            leaves = [np.asarray(x, np.float64) for x in
                      jax.tree_util.tree_leaves(jax.device_get(getattr(state, name)))]
            groups[name] = {"sum": float(sum(x.sum() for x in leaves)),
                            "l2": float(np.sqrt(sum((x * x).sum() for x in leaves)))}
        digest[phase] = {"metrics": rows, "params": groups}
    return digest


def compare(a: dict, b: dict, metric_rtol: float, param_rtol: float) -> dict:
    """Worst relative differences between two digests, and whether they agree."""
    def rel(x: float, y: float) -> float:
        return abs(x - y) / max(abs(x), abs(y), 1e-6)

    worst_metric, worst_param, where = 0.0, 0.0, ""
    for phase in (k for k in a if isinstance(a[k], dict) and "metrics" in a[k]):
        for step, (ra, rb) in enumerate(zip(a[phase]["metrics"], b[phase]["metrics"])):
            for key in ra:
                d = rel(ra[key], rb[key])
                if d > worst_metric:
                    worst_metric, where = d, f"{phase} step {step} {key}"
        for group, va in a[phase]["params"].items():
            for stat, x in va.items():
                worst_param = max(worst_param, rel(x, b[phase]["params"][group][stat]))
    return {"worst_metric_rel": worst_metric, "worst_metric_at": where,
            "worst_param_rel": worst_param,
            "agree": worst_metric <= metric_rtol and worst_param <= param_rtol}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="paper")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--phases", default="pretrain,admm")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--flags", default="", help="one run under this flag set (internal)")
    parser.add_argument("--digest", default="", help="with --flags: where to write its digest")
    parser.add_argument("--sets", default="graphs,capture", help="the two flag sets compared")
    parser.add_argument("--out", default="/tmp/capture_check")
    parser.add_argument("--metric_rtol", type=float, default=2e-2)
    parser.add_argument("--param_rtol", type=float, default=1e-3)
    args = parser.parse_args(argv)
    if args.flags:
        digest = run_digest(args)
        Path(args.digest).write_text(json.dumps(digest))
        return digest
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    digests = []
    for flag_set in args.sets.split(","):
        path = out / f"digest_{flag_set}.json"
        command = [sys.executable, __file__, f"--flags={flag_set}", f"--digest={path}",
                   f"--config={args.config}", f"--dtype={args.dtype}", f"--batch={args.batch}",
                   f"--phases={args.phases}", f"--steps={args.steps}",
                   *[f"--set={s}" for s in args.set]]
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"capture_check: the {flag_set} run failed:\n{done.stderr[-3000:]}")
        digests.append(json.loads(path.read_text()))
    result = {"sets": args.sets, **compare(*digests, args.metric_rtol, args.param_rtol),
              "flags": [d["flags"] for d in digests], "device": digests[0]["device"]}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
