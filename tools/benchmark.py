"""Accelerator speed of the real jitted steps (pre-training, PD-ADMM with VGG19 and D), the
training loop around them, and inference; plus a CPU-only count of the step's primitives.

  python tools/benchmark.py                                   # full x4 model, bf16, batch 16
  python tools/benchmark.py --dtypes=float32,bfloat16 --batches=16,64
  python tools/benchmark.py --set=model.han_block_unroll=20 --set=model.clique_unroll=15
  python tools/benchmark.py --count                           # jaxpr primitive counts (CPU ok)
  python tools/benchmark.py --loop=50                         # the training loop vs the bare step
  python tools/benchmark.py --profile=/tmp/prof               # device-time breakdown (GPU)
  python tools/benchmark.py --inference                       # super_resolve/evaluate speed
  python tools/benchmark.py --inference --config=tiny --dtypes=float32 --steps=2  # CPU smoke
  python tools/benchmark.py --config=tiny --batches=4 --dtypes=float32 --steps=3   # CPU smoke
  python tools/benchmark.py --aot=h200                        # compile for an H200, no GPU
  python tools/benchmark.py --aot=tpu:v5e:2x4                 # compile for a v5e-8 slice

--aot=TARGET compiles (does not run) the same steps and the inference forward for an accelerator
that is not here (lfcsr_jax/perf/aot.py): kernels per execution by kind and model part, what sits
outside CUDA graphs, memory per chip and compile seconds. Needs the extra for the target:
pip install -e ".[aot]" (jax[cuda12] and jax[tpu] at the jax version).

Prints ONE JSON line last. The steps are the ones training runs: built by
`lfcsr_jax.training.steps.make_train_steps` (same shardings, same donation). The package's GPU runtime
settings (lfcsr_jax/runtime.py) are on unless --runtime_flags=0 or LFCSR_RUNTIME_FLAGS=0.
Runs on a bare accelerator image (jax, flax, optax, numpy): tensorflow, clu, pywavelets and
ml_collections are not needed (a minimal ConfigDict stands in when ml_collections is absent).
Inputs are random device arrays (never zeros), timed after a warm-up with block_until_ready,
median of --steps.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

# Hand counts (docs/design.md section 10), in FLOP (2 x MAC), for the paper's 36/144 patches.
FLOPS_PER_ADMM_ITERATION_B16 = 6.8e12
FLOPS_PER_PRETRAIN_ITERATION_B16 = 3.3e12
FLOPS_PER_INFERENCE_128 = 0.88e12
PHASES = ("pretrain", "admm")


def _ensure_ml_collections() -> None:
    """A minimal attribute-dict stand-in, so configs/x4.py loads on a bare accelerator image."""
    try:
        import ml_collections  # noqa: F401  (presence check only)
    except ImportError:
        class ConfigDict(dict):
            def __getattr__(self, name):
                try:
                    return self[name]
                except KeyError as error:
                    raise AttributeError(name) from error

            def __setattr__(self, name, value):
                self[name] = value

            def to_dict(self):
                return {k: v.to_dict() if isinstance(v, ConfigDict) else v
                        for k, v in self.items()}

        stub = types.ModuleType("ml_collections")
        stub.ConfigDict = ConfigDict
        sys.modules["ml_collections"] = stub


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(config: Any, overrides: list[str]) -> None:
    """'section.field=value' settings (JSON values, else strings); unknown fields are errors."""
    for item in overrides:
        path, _, value = item.partition("=")
        *parents, field = path.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        if field not in node:
            raise SystemExit(f"benchmark: --set {path}: no such config field")
        node[field] = _parse_value(value)


def load_config(variant: str, dtype: str, batch: int, overrides: list[str] = ()) -> Any:
    _ensure_ml_collections()
    from configs import x4

    config = x4.get_config("" if variant == "paper" else variant)
    config.model.dtype = dtype
    config.train.global_batch_size = batch
    apply_overrides(config, list(overrides))
    return config


def synthetic_batch(config: Any, batch: int, seed: int) -> dict[str, Any]:
    import numpy as np

    lr_size = config.input.lr_patch
    hr_size = lr_size * config.model.scale
    rng = np.random.default_rng(seed)
    # uint8, as the input pipeline delivers them: the step converts them itself.
    return {"lr": rng.integers(0, 256, (batch, lr_size, lr_size, 3), dtype=np.uint8),
            "hr": rng.integers(0, 256, (batch, hr_size, hr_size, 3), dtype=np.uint8)}


def _time_calls(call: Callable[[], Any], steps: int) -> tuple[float, float]:
    """(first-call seconds, median seconds of `steps` further calls)."""
    import jax

    start = time.perf_counter()
    jax.block_until_ready(call())
    first = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def _peak_memory_gib() -> float | None:
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**30


class Training:
    """What train.py builds for a run, minus the data and files: networks, mesh, placed state,
    frozen VGG19 params and the jitted steps (lfcsr_jax.training.steps.make_train_steps)."""

    def __init__(self, config: Any):
        import jax
        from jax.sharding import NamedSharding, PartitionSpec

        from lfcsr_jax.training import steps, train_state

        self.config = config
        self.networks = train_state.make_networks(config)
        self.mesh = jax.make_mesh((jax.device_count(),), ("data",),
                                  axis_types=(jax.sharding.AxisType.Auto,))
        init = functools.partial(train_state.init_train_state, config=config,
                                 networks=self.networks)
        abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
        self.shardings = train_state.state_shardings(abstract, self.mesh)
        self.batch_sharding = NamedSharding(self.mesh, PartitionSpec("data"))
        with jax.threefry_partitionable(False):
            self._init = jax.jit(init, out_shardings=self.shardings)
            self.vgg_params = jax.device_put(
                train_state.init_vgg_params(jax.random.PRNGKey(1), config, self.networks),
                NamedSharding(self.mesh, PartitionSpec()))
        self.steps = steps.make_train_steps(self.networks, self.shardings, self.mesh)
        self.host_batch = synthetic_batch(config, config.train.global_batch_size, seed=2)
        self.batch = jax.device_put(self.host_batch, self.batch_sharding)
        self._compiled: dict[str, tuple[Any, float]] = {}

    def fresh_state(self) -> Any:
        import jax

        with jax.threefry_partitionable(False):
            return self._init(jax.random.PRNGKey(0))

    def compiled(self, phase: str, state: Any) -> tuple[Any, float]:
        """(the compiled step, seconds its compile took); compiled once per phase, then reused
        by the timing, the loop and the profile."""
        if phase not in self._compiled:
            start = time.perf_counter()
            executable = self.steps[phase].lower(state, self.batch, self.vgg_params).compile()
            self._compiled[phase] = (executable, time.perf_counter() - start)
        return self._compiled[phase]


def bench_training(training: Training, steps: int, phases: tuple[str, ...]) -> dict[str, float]:
    results: dict[str, float] = {}
    for phase in phases:
        state = training.fresh_state()
        compiled, results[f"{phase}_compile_s"] = training.compiled(phase, state)
        holder = {"state": state}

        def call(compiled=compiled, holder=holder):
            holder["state"], metrics = compiled(holder["state"], training.batch,
                                                training.vgg_params)
            return metrics

        _, median = _time_calls(call, steps)
        results[f"{phase}_step_ms"] = 1e3 * median
    return results


def count_training(config: Any, phases: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """Jaxpr primitive counts per step (no compile, no device work): see lfcsr_jax/perf/op_counts.py."""
    import jax
    import jax.numpy as jnp

    from lfcsr_jax.perf import op_counts
    from lfcsr_jax.training import steps, train_state

    networks = train_state.make_networks(config)
    state = jax.eval_shape(functools.partial(train_state.init_train_state, config=config,
                                             networks=networks), jax.random.PRNGKey(0))
    vgg = jax.eval_shape(lambda k: train_state.init_vgg_params(k, config, networks),
                         jax.random.PRNGKey(1))
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype)
             for k, v in synthetic_batch(config, config.train.global_batch_size, 0).items()}
    counts = {}
    for phase in phases:
        step = functools.partial(steps.STEP_FUNCTIONS[phase], networks=networks)
        counts[phase] = op_counts.summarise(op_counts.count_primitives(step, state, batch, vgg))
    return counts


class _MemoryWriter:
    """The loop's writer without TensorBoard or files: fetches each step's metrics one step late,
    checks them as train_logging.MetricsWriter does, and keeps every log_every-th row."""

    def __init__(self, log_every: int):
        self.log_every = log_every
        self.rows: list[dict[str, float]] = []
        self.input_wait_s = 0.0

    def add_input_wait(self, seconds: float) -> None:
        self.input_wait_s += seconds

    def write_step_metrics(self, step: int, phase: str, metrics: Any) -> bool:
        import math

        import jax

        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if (step + 1) % self.log_every == 0:
            self.rows.append({"step": step + 1, **values})
        return bool(values.get("all_finite", 1.0)) and all(
            math.isfinite(v) for v in values.values())

    def flush_pending(self, pending: Any) -> None:
        if pending is not None:
            self.write_step_metrics(*pending)


class _NeverStop:
    signal_name = None

    def requested(self, step: int) -> bool:  # noqa: ARG002 (loop.StopSignal)
        return False


def bench_loop(training: Training, phase: str, steps: int) -> dict[str, float]:
    """lfcsr_jax.training.loop.TrainLoop for `steps` steps of one phase on a synthetic host stream, next
    to the bare step timed back to back: the loop's own cost per step."""
    import itertools

    import jax

    from lfcsr_jax.training import loop

    rows = [synthetic_batch(training.config, training.config.train.global_batch_size, seed)
            for seed in range(4)]
    state = training.fresh_state()
    compiled, _ = training.compiled(phase, state)
    warm = loop.TrainLoop(steps={phase: compiled}, lengths={phase: 2},
                          vgg_params=training.vgg_params,
                          batch_sharding=training.batch_sharding, stream=itertools.cycle(rows),
                          writer=_MemoryWriter(10), stop=_NeverStop())
    warm.run(state, 0)
    state = warm.state
    trainer = loop.TrainLoop(steps={phase: compiled}, lengths={phase: steps},
                             vgg_params=training.vgg_params,
                             batch_sharding=training.batch_sharding,
                             stream=itertools.cycle(rows), writer=_MemoryWriter(10),
                             stop=_NeverStop())
    start = time.perf_counter()
    trainer.run(state, 0)
    jax.block_until_ready(trainer.state)
    loop_ms = 1e3 * (time.perf_counter() - start) / steps
    state = trainer.state
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, training.batch, training.vgg_params)
    jax.block_until_ready((state, metrics))
    bare_ms = 1e3 * (time.perf_counter() - start) / steps
    return {f"{phase}_loop_ms": loop_ms, f"{phase}_bare_back_to_back_ms": bare_ms,
            f"{phase}_loop_overhead": loop_ms / bare_ms - 1.0}


def profile_training(training: Training, phase: str, out_dir: Path, steps: int) -> dict:
    """Traces `steps` steps with jax.profiler and summarises device time (trace_summary.py)."""
    import glob
    import shutil

    import jax

    from lfcsr_jax.perf import trace_summary

    state = training.fresh_state()
    compiled, _ = training.compiled(phase, state)
    names = trace_summary.hlo_op_names(compiled.as_text())
    for _ in range(3):
        state, metrics = compiled(state, training.batch, training.vgg_params)
    jax.block_until_ready(metrics)
    trace_dir = out_dir / f"trace_{phase}"
    shutil.rmtree(trace_dir, ignore_errors=True)
    start = time.perf_counter()
    with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
        for _ in range(steps):
            state, metrics = compiled(state, training.batch, training.vgg_params)
        jax.block_until_ready(metrics)
    wall_ms = 1e3 * (time.perf_counter() - start) / steps
    files = glob.glob(str(trace_dir / "**" / "*perfetto_trace.json.gz"), recursive=True)
    summary: dict[str, Any] = {"phase": phase, "traced_steps": steps,
                               "xla_flags": os.environ.get("XLA_FLAGS", "")}
    if files:
        summary.update(trace_summary.summarise(trace_summary.load_events(files[0]), steps,
                                               names, wall_ms_per_step=wall_ms))
    else:
        summary["error"] = f"no perfetto trace written under {trace_dir}"
    (out_dir / f"profile_{phase}.json").write_text(json.dumps(summary, indent=1))
    return summary


def bench_inference(config: Any, steps: int, lr_size: int = 128) -> dict[str, float]:
    import jax
    import jax.numpy as jnp

    from lfcsr_jax.models import generator

    model = generator.build_lfcsr(config.model)
    lr = jax.random.uniform(jax.random.PRNGKey(4), (1, lr_size, lr_size, 3), jnp.float32, 0, 255)
    params = generator.init_params(model, jax.random.PRNGKey(5), lr_shape=lr.shape)
    forward = jax.jit(functools.partial(generator.apply_generator, model))
    start = time.perf_counter()
    compiled = forward.lower(params, lr).compile()
    compile_s = time.perf_counter() - start
    _, median = _time_calls(lambda: compiled(params, lr), steps)
    return {"inference_compile_s": compile_s, "inference_ms": 1e3 * median,
            "inference_lr_size": lr_size}


def bench_inference_program(config: Any, steps: int, folder_images: int = 100,
                            batch: int = 0) -> dict[str, Any]:
    """What super_resolve / evaluate run (lfcsr_jax/inference/: bucketed exact forwards, params
    cast once, batches of one bucket), on random params: latency at 128x128 and 480x270 LR (a
    1080p output) with both stages, images/s over a folder of `folder_images` BSD100-size images
    (synthetic, 120x80 and 80x120 LR), and the compile count and seconds of all of it."""
    import jax
    import numpy as np

    from lfcsr_jax.inference.compile_cache import CompileStats
    from lfcsr_jax.inference.model import LoadedModel, jitted_forwards
    from lfcsr_jax.models import generator

    stats = CompileStats.snapshot()
    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in
           (config.model.to_dict() if hasattr(config.model, "to_dict") else dict(config.model)).items()}
    model_def = generator.build_lfcsr(cfg)
    params = generator.init_params(model_def, jax.random.PRNGKey(5), lr_shape=(1, 16, 16, 3))
    params = generator.cast_for_compute(params, generator.compute_dtype(cfg))
    fns = jitted_forwards(json.dumps(cfg, sort_keys=True))
    model = LoadedModel(cfg, params, *fns)
    rng = np.random.default_rng(0)
    row: dict[str, Any] = {"dtype": cfg["dtype"], "mode": "inference"}
    for name, (h, w) in (("128x128", (128, 128)), ("480x270", (270, 480))):
        lr = rng.uniform(0, 255, (h, w, 3)).astype(np.float32)
        start = time.perf_counter()
        model.predict(lr)  # compile (or cache load) + one run
        row[f"first_call_s_{name}"] = round(time.perf_counter() - start, 3)
        _, median = _time_calls(lambda lr=lr: model.predict(lr), steps)
        row[f"latency_ms_{name}"] = round(1e3 * median, 2)
    sizes = [(120, 80) if k % 2 else (80, 120) for k in range(folder_images)]
    folder = [rng.uniform(0, 255, (h, w, 3)).astype(np.float32) for h, w in sizes]
    batch = batch or (1 if jax.default_backend() == "cpu" else 8)
    groups: dict[tuple[int, int], list] = {}
    for lr in folder:
        groups.setdefault(model.bucketed_lr_shape(*lr.shape[:2]), []).append(lr)

    def run_folder():
        for members in groups.values():
            for start in range(0, len(members), batch):
                model.predict_batch(members[start:start + batch])

    run_folder()  # warm-up: compiles each (bucket, batch) shape
    start = time.perf_counter()
    run_folder()
    row["folder_images_per_s"] = round(folder_images / (time.perf_counter() - start), 2)
    row.update({"folder_images": folder_images, "folder_batch": batch,
                "compile_count": model.compile_count,
                "compile_shapes": sorted(str(k) for k in model.compiled_shapes)})
    spent = CompileStats.since(stats)
    row.update({"xla_compiles": spent["compiles"], "compile_s": spent["seconds"],
                "peak_memory_gib": _peak_memory_gib()})
    return row


def _achieved_tflops(row: dict[str, Any], batch: int, paper_patches: bool) -> None:
    if not paper_patches:
        return
    scale = batch / 16
    for key, flops in (("admm_step_ms", FLOPS_PER_ADMM_ITERATION_B16 * scale),
                       ("pretrain_step_ms", FLOPS_PER_PRETRAIN_ITERATION_B16 * scale)):
        if key in row:
            row[key.replace("_step_ms", "_tflops")] = flops / (row[key] / 1e3) / 1e12
    if "inference_ms" in row and row.get("inference_lr_size") == 128:
        row["inference_tflops"] = FLOPS_PER_INFERENCE_128 / (row["inference_ms"] / 1e3) / 1e12


def _bench_row(args: argparse.Namespace, dtype: str, batch: int, first: bool) -> dict:
    skip = set(filter(None, args.skip.split(",")))
    phases = tuple(p for p in args.phases.split(",") if p)
    config = load_config(args.config, dtype, batch, args.set)
    row: dict[str, Any] = {"dtype": dtype, "batch": batch, "set": list(args.set)}
    if args.count:
        row["counts"] = count_training(config, phases)
        return row
    if "train" not in skip or args.loop or args.profile:
        training = Training(config)
    if "train" not in skip:
        row.update(bench_training(training, args.steps, phases))
    if args.loop:
        for phase in phases:
            row.update(bench_loop(training, phase, args.loop))
    if args.profile:
        out_dir = Path(args.profile)
        out_dir.mkdir(parents=True, exist_ok=True)
        row["profile"] = {phase: profile_training(training, phase, out_dir, args.profile_steps)
                          for phase in phases}
    if "inference" not in skip and first:  # latency is for one image; once per dtype
        row.update(bench_inference(config, args.steps, args.inference_size))
    _achieved_tflops(row, batch, paper_patches=args.config == "paper")
    row["peak_memory_gib"] = _peak_memory_gib()
    return row


def _run_isolated(args: argparse.Namespace, dtype: str, batch: int, first: bool) -> dict:
    import subprocess

    command = [sys.executable, __file__, *args.argv_rest, f"--dtypes={dtype}",
               f"--batches={batch}", "--isolate=0",
               f"--skip={args.skip if first else ','.join(filter(None, [args.skip, 'inference']))}"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {"dtype": dtype, "batch": batch, "error": done.stderr[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])["results"][0]


def aot_row(args: argparse.Namespace, dtype: str, batch: int) -> dict[str, Any]:
    """--aot: every program of one (dtype, batch), compiled for args.aot."""
    from lfcsr_jax.perf import aot

    config = load_config(args.config, dtype, batch, args.set)
    target = aot.resolve_target(args.aot)
    if args.aot_devices:
        target = target.first(args.aot_devices)
    row: dict[str, Any] = {"dtype": dtype, "batch": batch, "set": list(args.set)}
    skip = set(filter(None, args.skip.split(",")))
    phases = tuple(p for p in args.phases.split(",") if p)
    if "train" not in skip:
        row.update(aot.training_programs(config, target, phases, args.aot_dump))
    if "inference" not in skip:
        for size in filter(None, args.aot_inference.split(",")):
            h, w = (int(n) for n in size.lower().split("x"))
            row[f"inference_{h}x{w}"] = aot.inference_program(config, target, (h, w),
                                                              args.aot_dump)
    return row


def print_aot_table(rows: list[dict[str, Any]]) -> None:
    """One line per compiled program, to stderr (the JSON line stays last on stdout)."""
    header = (f"{'program':<22}{'kernels':>9}{'convs':>7}{'top thunks':>11}{'outside CG':>11}"
              f"{'convs out':>10}{'GiB/chip':>10}{'headroom':>9}{'compile s':>10}")
    print(header, file=sys.stderr)
    for row in rows:
        for report in row.values():
            if not isinstance(report, dict) or "counts" not in report:
                continue
            kinds = report["counts"]["by_kind"]
            convs = sum(v for k, v in kinds.items() if k.startswith("conv_"))
            thunks = report.get("thunks", {})
            memory = report.get("memory", {})
            print(f"{report['program']:<22}{report['counts']['kernels']:>9}{convs:>7}"
                  f"{thunks.get('top_level_thunks', '-'):>11}"
                  f"{thunks.get('outside_command_buffers', '-'):>11}"
                  f"{thunks.get('convolutions_outside_command_buffers', '-'):>10}"
                  f"{memory.get('per_chip_gib', '-'):>10}{memory.get('headroom', '-'):>9}"
                  f"{report['compile_s']:>10}", file=sys.stderr)


def aot_main(args: argparse.Namespace) -> dict:
    from lfcsr_jax.perf import aot

    flags = aot.configure_environment(args.aot)  # before the backend starts
    import jax

    rows = [aot_row(args, dtype, int(batch)) for dtype in args.dtypes.split(",")
            for batch in args.batches.split(",")]
    print_aot_table(rows)
    summary = {"aot_target": args.aot, "jax": jax.__version__, "config": args.config,
               "xla_flags": flags, "results": rows}
    print(json.dumps(summary))
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="paper", help="configs/x4.py variant: paper|demo|tiny")
    parser.add_argument("--dtypes", default="bfloat16")
    parser.add_argument("--batches", default="16")
    parser.add_argument("--phases", default="pretrain,admm")
    parser.add_argument("--set", action="append", default=[],
                        help="config override section.field=value (repeatable), e.g. "
                             "model.han_block_unroll=20")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (median)")
    parser.add_argument("--inference_size", type=int, default=128)
    parser.add_argument("--skip", default="", help="comma list of parts to skip: train,inference")
    parser.add_argument("--count", action="store_true",
                        help="print jaxpr primitive counts per step instead of timing (CPU ok)")
    parser.add_argument("--loop", type=int, default=0,
                        help="also run the real training loop for N steps per phase")
    parser.add_argument("--profile", default="",
                        help="folder: trace a few steps with jax.profiler and summarise them")
    parser.add_argument("--profile_steps", type=int, default=3)
    parser.add_argument("--runtime_flags", type=int, default=1,
                        help="1: the package's GPU runtime settings (lfcsr_jax/runtime.py)")
    parser.add_argument("--inference", action="store_true",
                        help="only the inference program (super_resolve/evaluate): latency at "
                        "128x128 and 480x270 LR, images/s over a folder, compile count/seconds")
    parser.add_argument("--inference_images", type=int, default=100,
                        help="--inference: images in the synthetic BSD100-size folder")
    parser.add_argument("--inference_batch", type=int, default=0,
                        help="--inference: images per forward (0: 8 on GPU/TPU, 1 on CPU)")
    parser.add_argument("--aot", default="",
                        help="compile for TARGET without running: h200 | tpu:<topology> "
                        "(e.g. tpu:v5e:2x4); prints kernels, thunks outside CUDA graphs, memory")
    parser.add_argument("--aot_inference", default="128x128,270x480",
                        help="--aot: LR sizes HxW of the inference forwards ('' = none); "
                        "270x480 is a 1080p output")
    parser.add_argument("--aot_devices", type=int, default=0,
                        help="--aot: use only the first N devices of the target (1 = one chip "
                        "of a slice); 0 = all")
    parser.add_argument("--aot_dump", default="",
                        help="--aot: folder to keep XLA's dumps (HLO, thunk sequences) in")
    parser.add_argument("--isolate", type=int, default=1,
                        help="1: each (dtype, batch) in its own process, so peak memory is its own")
    return parser


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv_rest = [a for a in argv if not a.startswith(("--dtypes", "--batches", "--isolate",
                                                           "--skip"))]
    if not args.runtime_flags:
        os.environ["LFCSR_RUNTIME_FLAGS"] = "0"
    if args.aot:
        return aot_main(args)
    from lfcsr_jax import runtime

    runtime.configure()  # before the backend starts (jax is imported lazily below)
    import jax

    combos = [(d, int(b)) for d in args.dtypes.split(",") for b in args.batches.split(",")]
    if args.inference:
        rows = [bench_inference_program(load_config(args.config, dtype, combos[0][1], args.set),
                                        args.steps, args.inference_images, args.inference_batch)
                for dtype in args.dtypes.split(",")]
    elif args.isolate and len(combos) > 1 and not args.count:
        rows = [_run_isolated(args, dtype, batch, first=batch == combos[0][1])
                for dtype, batch in combos]
    else:
        rows = [_bench_row(args, dtype, batch, first=batch == combos[0][1])
                for dtype, batch in combos]
    device = jax.local_devices()[0]
    summary = {"device": f"{device.platform}:{getattr(device, 'device_kind', '')}",
               "jax": jax.__version__, "config": args.config,
               "xla_flags": os.environ.get("XLA_FLAGS", ""), "results": rows,
               "pytorch_reference_h200_ms": {"admm_b16": 555, "pretrain_b16": 234,
                                             "inference_128": 54}}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
