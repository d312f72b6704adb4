"""The training loop: pre-training then PD-ADMM, with checkpoints, resume, logging and validation.

Global batch semantics: `config.train.global_batch_size` is the batch of ONE optimisation step
summed over every device of every host (the paper's 16). Each process reads
global_batch_size / process_count examples per step (its own slots of the global batch) and the
jitted step sees one global array sharded along the ('data',) mesh axis; the dual variable s is
sharded the same way, everything else is replicated.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from lfcsr_jax import admm, checkpointing, schedules, train_logging, validation
# A configuration or input problem, reported as one clear line before any compute (main.py).
from lfcsr_jax.cli_errors import UserError


PHASES = ("pretrain", "admm")
METHODS = ("admm", "regularizer")
INPUT_SOURCES = ("tfds", "folder", "paired", "skimage")


# ----------------------------------------------------------------------------- configuration


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Checks every value the run depends on; raises UserError naming the field."""
    problems: list[str] = []
    model, inp, train = config.model, config.input, config.train
    if model.scale != 4:
        problems.append(f"model.scale={model.scale}: LFc-SR is defined for x4 only")
    hr_patch = inp.lr_patch * model.scale
    if inp.lr_patch <= 0 or hr_patch % 8:
        problems.append(
            f"input.lr_patch={inp.lr_patch}: the HR patch (lr_patch*scale={hr_patch}) must be a "
            "positive multiple of 8 (two Haar levels and three stride-2 discriminator convs)")
    if model.dtype not in ("float32", "bfloat16"):
        problems.append(f"model.dtype={model.dtype!r}: expected 'float32' or 'bfloat16'")
    if config.admm.method not in METHODS:
        problems.append(f"admm.method={config.admm.method!r}: expected one of {METHODS}")
    if config.admm.lowpass not in ("haar", "gaussian"):
        problems.append(f"admm.lowpass={config.admm.lowpass!r}: expected 'haar' or 'gaussian'")
    if config.admm.constrained_band not in ("low", "high"):
        problems.append(
            f"admm.constrained_band={config.admm.constrained_band!r}: expected 'low' or 'high'")
    if config.loss.vgg_input_scaling not in ("imagenet", "reference"):
        problems.append(f"loss.vgg_input_scaling={config.loss.vgg_input_scaling!r}: expected "
                        "'imagenet' or 'reference'")
    unknown_phases = [p for p in train.phases if p not in PHASES]
    if unknown_phases or not train.phases:
        problems.append(f"train.phases={tuple(train.phases)}: expected a non-empty subset of "
                        f"{PHASES}")
    batch = train.global_batch_size
    devices, processes = jax.device_count(), jax.process_count()
    if batch <= 0:
        problems.append(f"train.global_batch_size={batch} must be positive")
    elif batch % devices or batch % processes:
        problems.append(f"train.global_batch_size={batch} must be divisible by the device count "
                        f"({devices}) and the process count ({processes})")
    problems += _check_input_paths(inp)
    for field, path in (("loss.vgg_weights", config.loss.vgg_weights),
                        ("train.init_checkpoint", train.init_checkpoint),
                        ("train.lpips_dir", train.lpips_dir)):
        if path and not Path(path).exists():
            problems.append(f"{field}={path!r}: no such file or directory")
    problems += _check_weight_paths(config)
    if train.lpips_dir and Path(train.lpips_dir).is_dir():
        from lfcsr_jax import lpips

        try:
            lpips.find_lpips_files(train.lpips_dir)
        except lpips.MetricUnavailable as missing:
            problems.append(f"train.lpips_dir: {missing}")
    for field in ("log_every_steps", "checkpoint_every_steps", "eval_every_steps",
                  "image_every_steps", "keep_checkpoints"):
        if train[field] <= 0:
            problems.append(f"train.{field}={train[field]} must be positive")
    if not problems:
        problems += _check_training_images(inp)  # reads files: only once the rest is sound
    if problems:
        raise UserError("invalid configuration: " + "; ".join(problems))


def _check_weight_paths(config: ml_collections.ConfigDict) -> list[str]:
    """vgg_weights must be a convert-vgg19 .npz; init_checkpoint an export, not a workdir."""
    problems = []
    vgg, init = Path(config.loss.vgg_weights or ""), Path(config.train.init_checkpoint or "")
    if config.loss.vgg_weights and vgg.exists() and (vgg.is_dir() or vgg.suffix != ".npz"):
        problems.append(f"loss.vgg_weights={str(vgg)!r}: expected the .npz written by "
                        "`python -m lfcsr_jax.convert vgg19 --input ... --output vgg19.npz`")
    if config.train.init_checkpoint and init.exists():
        if (init / "export" / "config.json").is_file() or (init / "checkpoints").is_dir():
            problems.append(f"train.init_checkpoint={str(init)!r} is a training workdir; pass "
                            f"its export, {str(init / 'export')!r}")
        elif not (init / "config.json").is_file():
            problems.append(f"train.init_checkpoint={str(init)!r}: not an export directory (no "
                            "config.json; see checkpointing.save_export / convert pdasr)")
    return problems


def _check_training_images(inp: ml_collections.ConfigDict) -> list[str]:
    """Names a truncated or unreadable image file in the folders before the ~30 s of set-up.

    PIL's verify() reads every chunk and checks the PNG CRCs without decoding pixels, so a
    truncated file is found at a fraction of the cost of the decode that follows.
    """
    folders = [inp[f] for f in ("hr_dir", "lr_dir", "val_hr_dir", "val_lr_dir")
               if inp.source in ("folder", "paired") and inp[f] and Path(inp[f]).is_dir()]
    return [problem for folder in folders for problem in _unreadable_images(str(folder))]


@functools.lru_cache(maxsize=16)  # validate_config runs twice per start (main, then train)
def _unreadable_images(folder: str) -> tuple[str, ...]:
    from PIL import Image

    from lfcsr_jax import image_io

    problems = []
    for folder in [folder]:
        try:
            files = image_io.list_images(folder)
        except FileNotFoundError as e:
            problems.append(str(e))
            continue
        for path in files:
            try:
                with Image.open(path) as img:
                    img.verify()
            except Exception as e:  # noqa: BLE001 (PIL raises many types for broken files)
                problems.append(f"{path}: unreadable or truncated image ({type(e).__name__}: "
                                f"{e}); fix or remove it")
    return tuple(problems)


def _check_input_paths(inp: ml_collections.ConfigDict) -> list[str]:
    if inp.source not in INPUT_SOURCES:
        return [f"input.source={inp.source!r}: expected one of {INPUT_SOURCES}"]
    needed = {"folder": ("hr_dir",), "paired": ("hr_dir", "lr_dir")}.get(inp.source, ())
    problems = []
    for field in needed:
        if not inp[field]:
            problems.append(f"input.{field} must be set for input.source={inp.source!r}")
        elif not Path(inp[field]).is_dir():
            problems.append(f"input.{field}={inp[field]!r}: no such directory")
    for field in ("val_hr_dir", "val_lr_dir"):
        if inp[field] and not Path(inp[field]).is_dir():
            problems.append(f"input.{field}={inp[field]!r}: no such directory")
    return problems


def phase_lengths(config: ml_collections.ConfigDict) -> dict[str, int]:
    """Steps of each configured phase, in order (epochs -> steps happens in schedules.py)."""
    return {phase: schedules.phase_steps(config, phase) for phase in config.train.phases}


def phase_at(step: int, lengths: dict[str, int]) -> tuple[str | None, int]:
    """(phase, step within the phase) for a global step; (None, 0) once every phase is done."""
    start = 0
    for phase, length in lengths.items():
        if step < start + length:
            return phase, step - start
        start += length
    return None, 0


# ----------------------------------------------------------------------------- workdir


def _claim_workdir(workdir: Path, config: ml_collections.ConfigDict) -> None:
    """Writes config.json once; refuses a workdir that another configuration wrote."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "config.json"
    ours = json.loads(config.to_json_best_effort(sort_keys=True))
    if config_file.exists():
        theirs = json.loads(config_file.read_text())
        if _without_run_fields(theirs) != _without_run_fields(ours) and \
                not config.train.allow_config_change:
            raise UserError(
                f"{workdir} holds a run with another configuration ({config_file}); use a new "
                "--workdir or pass --config.train.allow_config_change=True")
    if jax.process_index() == 0:
        tmp = config_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(ours, indent=2, sort_keys=True))
        tmp.replace(config_file)


def _without_run_fields(config_dict: dict[str, Any]) -> dict[str, Any]:
    """Fields that may change between a run and its resumption without changing the method."""
    trimmed = json.loads(json.dumps(config_dict))
    for field in ("allow_config_change", "distributed", "log_every_steps", "image_every_steps",
                  "eval_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
        trimmed.get("train", {}).pop(field, None)
    return trimmed


# ----------------------------------------------------------------------------- sharding


def make_mesh() -> jax.sharding.Mesh:
    # Auto axes: XLA propagates shardings through the networks' reshapes (pixel shuffle, Haar);
    # only the step's inputs and outputs carry explicit shardings.
    return jax.make_mesh((jax.device_count(),), ("data",),
                         axis_types=(jax.sharding.AxisType.Auto,))


def global_batch(local_batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, Any]:
    return {name: jax.make_array_from_process_local_data(sharding, value)
            for name, value in local_batch.items()}


# ----------------------------------------------------------------------------- preemption


class StopRequest:
    """Set by SIGTERM/SIGINT (a TPU VM preemption or Ctrl-C); checked between steps.

    A signal that arrives while a train step compiles (tens of seconds at the start and at the
    phase switch, during which Python signal handlers cannot run) ends the process at once
    through a watcher thread woken by `signal.set_wakeup_fd`: compiling first and then saving
    would overrun a preemption notice, and the last checkpoint still stands (any save in flight
    is awaited before each compile, see `guard_compiles`).
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}
        self._compiling = False
        self._wakeup: tuple[int, int] | None = None
        self._previous_wakeup = -1

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        self._previous_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        self._wakeup = (read_fd, write_fd)
        threading.Thread(target=self._watch, args=(read_fd,), daemon=True,
                         name="stop-during-compile").start()

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self._wakeup is not None:
            signal.set_wakeup_fd(self._previous_wakeup)
            os.close(self._wakeup[1])  # the watcher reads EOF and ends
            self._wakeup = None

    def _watch(self, read_fd: int) -> None:
        try:
            while True:
                received = os.read(read_fd, 1)
                if not received:
                    return
                if self._compiling and received[0] in (signal.SIGTERM, signal.SIGINT):
                    name = signal.Signals(received[0]).name
                    print(f"Stopped by {name} while a train step was compiling: exiting without "
                          "a new checkpoint (the last one stands). Rerun the same command to "
                          "resume.", flush=True)
                    os._exit(0)
        finally:
            os.close(read_fd)

    def guard_compiles(self, steps: dict[str, Callable],
                       before_compile: Callable[[], None]) -> dict[str, Callable]:
        """The steps, each marking its first call (trace + compile) as a compile window."""

        def guarded(name: str, fn: Callable) -> Callable:
            compiled = False

            def call(*args):
                nonlocal compiled
                if compiled:
                    return fn(*args)
                before_compile()  # no save in flight while an exit is possible
                logging.info("Compiling the %s step (a stop signal now exits at once, keeping "
                             "the last checkpoint)", name)
                self._compiling = True
                try:
                    out = fn(*args)
                finally:
                    self._compiling = False
                compiled = True
                return out

            return call

        return {name: guarded(name, fn) for name, fn in steps.items()}

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 (signal API)
        self.signal_name = signal.Signals(signum).name

    def requested(self) -> bool:
        local = self.signal_name is not None
        if jax.process_count() == 1:
            return local
        # Every host must agree, or the ones that stop would hang the others' collectives.
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.array(local))))


# ----------------------------------------------------------------------------- inputs and outputs


def train_stream(config: ml_collections.ConfigDict, start_step: int) -> Iterator[dict]:
    """This process's slots of every global batch, from `start_step` on (restorable by step)."""
    from lfcsr_jax import input_pipeline

    return input_pipeline.create_train_iterator(
        config.input, scale=config.model.scale,
        global_batch_size=config.train.global_batch_size, seed=config.seed,
        start_step=start_step, process_index=jax.process_index(),
        process_count=jax.process_count())


def load_vgg_params(config: ml_collections.ConfigDict, networks: Any) -> Any:
    """Frozen VGG19 weights: converted ImageNet weights when configured, else random (demo)."""
    if config.loss.vgg_weights:
        from lfcsr_jax import vgg_weights

        return vgg_weights.load_vgg19_params(config.loss.vgg_weights)
    logging.warning("loss.vgg_weights is empty: the contextual loss uses a RANDOM VGG19 "
                    "(fine for tests and the demo; convert ImageNet weights for real training)")
    return admm.init_vgg_params(jax.random.PRNGKey(config.seed + 1), config, networks)


def maybe_load_init_checkpoint(config: ml_collections.ConfigDict, state: Any) -> Any:
    """Starts from an export (e.g. a converted authors' model or a pre-trained run)."""
    if not config.train.init_checkpoint:
        return state
    model_cfg, params = checkpointing.load_export(config.train.init_checkpoint)
    ours = config.model.to_dict()
    mismatched = [k for k in ours if k != "dtype" and k in model_cfg and
                  _as_plain(model_cfg[k]) != _as_plain(ours[k])]
    if mismatched:
        raise UserError(f"train.init_checkpoint={config.train.init_checkpoint!r}: model fields "
                        f"{mismatched} differ from config.model")
    logging.info("Initialising generators from %s", config.train.init_checkpoint)
    replicated = NamedSharding(make_mesh(), PartitionSpec())

    def placed(new_tree: Any, old_tree: Any) -> Any:
        shapes_old = jax.tree_util.tree_map(np.shape, old_tree)
        shapes_new = jax.tree_util.tree_map(np.shape, new_tree)
        if shapes_old != shapes_new:
            raise UserError(f"train.init_checkpoint={config.train.init_checkpoint!r}: parameter "
                            "tree or shapes differ from the configured model")
        return jax.device_put(jax.tree_util.tree_map(jnp.asarray, new_tree), replicated)

    return state.replace(
        objective_params=placed(params["objective"], state.objective_params),
        perceptual_params=placed(params["perceptual"], state.perceptual_params))


def _as_plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def export_generators(config: ml_collections.ConfigDict, state: Any, workdir: Path,
                      step: int) -> Path:
    """Writes generator params + model config for the evaluation programs (process 0 only)."""
    export_dir = workdir / "export"
    params = jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0)),
                                    admm.generator_params(state))
    if jax.process_index() == 0:
        checkpointing.save_export(export_dir, params, config.model.to_dict(),
                                  extra_info={"step": step,
                                              "config": json.loads(config.to_json_best_effort())},
                                  overwrite=True)
    return export_dir


# ----------------------------------------------------------------------------- the loop


def _compile_steps(networks: Any, shardings: Any, batch_sharding: NamedSharding,
                   mesh: jax.sharding.Mesh) -> dict[str, Callable]:
    replicated = NamedSharding(mesh, PartitionSpec())
    batch_shardings = {"lr": batch_sharding, "hr": batch_sharding}
    pretrain = jax.jit(
        functools.partial(admm.pretrain_step, networks=networks),
        in_shardings=(shardings, batch_shardings, replicated),
        out_shardings=(shardings, replicated), donate_argnums=0)
    admm_jit = jax.jit(
        functools.partial(admm.admm_step, networks=networks),
        in_shardings=(shardings, batch_shardings, replicated, replicated),
        out_shardings=(shardings, replicated), donate_argnums=0)
    return {"pretrain": pretrain, "admm": admm_jit}


def _run_step(steps: dict[str, Callable], phase: str, state: Any, batch: dict[str, Any],
              vgg_params: Any, rng: jax.Array) -> tuple[Any, dict[str, Any]]:
    if phase == "pretrain":
        return steps["pretrain"](state, batch, vgg_params)
    return steps["admm"](state, batch, vgg_params, rng)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> int:
    """Runs (or resumes) the configured phases; returns the process exit code."""
    validate_config(config)
    workdir_path = Path(workdir).absolute()
    _claim_workdir(workdir_path, config)
    mesh = make_mesh()
    networks = admm.make_networks(config)
    # Placed once, replicated: the jitted steps then never copy the frozen VGG19 per step.
    vgg_params = jax.device_put(load_vgg_params(config, networks),
                                NamedSharding(mesh, PartitionSpec()))

    rng = jax.random.PRNGKey(config.seed)
    init_rng, step_rng = jax.random.split(rng)
    abstract_state = jax.eval_shape(
        functools.partial(admm.init_train_state, config=config, networks=networks), init_rng)
    shardings = admm.state_shardings(abstract_state, mesh)
    batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
    checkpoints = checkpointing.TrainCheckpoints(
        workdir_path / "checkpoints", keep=config.train.keep_checkpoints,
        best_metrics=validation.best_metric_modes(config))

    restored = checkpoints.restore_latest(
        jax.tree_util.tree_map(lambda leaf, sharding: jax.ShapeDtypeStruct(
            leaf.shape, leaf.dtype, sharding=sharding), abstract_state, shardings))
    if restored is not None:
        state, record = restored
        start_step = int(record["step"])
        logging.info("Resuming from %s at step %d", checkpoints.directory, start_step)
        # Rows logged after this checkpoint by the interrupted run are logged again below.
        train_logging.truncate_metrics(workdir_path, start_step)
    else:
        # The classic threefry compiles the scanned blocks' init several times faster on CPU
        # (the initial values are still a pure function of config.seed).
        with jax.threefry_partitionable(False):
            state = jax.jit(functools.partial(admm.init_train_state, config=config,
                                              networks=networks),
                            out_shardings=shardings)(init_rng)
        state = maybe_load_init_checkpoint(config, state)
        start_step = 0
        train_logging.truncate_metrics(workdir_path, 0)  # rows of a run killed before step 1

    lengths = phase_lengths(config)
    total_steps = sum(lengths.values())
    writer = train_logging.MetricsWriter(workdir_path, config, total_steps)
    validator = validation.Validator(config, networks)
    steps = _compile_steps(networks, shardings, batch_sharding, mesh)
    stream = train_stream(config, start_step)
    stop = StopRequest()
    steps = stop.guard_compiles(steps, lambda: (checkpoints.wait_until_finished(),
                                                writer.writer.flush()))
    stop.install()
    try:
        exit_code = _loop(config, state, start_step, total_steps, lengths, stream, steps,
                          vgg_params, step_rng, batch_sharding, checkpoints, writer, validator,
                          stop, workdir_path)
    finally:
        stop.uninstall()
        checkpoints.close()
        writer.close()
    return exit_code


def _record(step: int, lengths: dict[str, int], extra: dict[str, Any] | None = None) -> dict:
    phase, _ = phase_at(step, lengths)
    record = {"step": step, "phase": phase or "done", "data_position": step}
    record.update(extra or {})
    return record


def _loop(config, state, start_step, total_steps, lengths, stream: Iterator[dict], steps,
          vgg_params, step_rng, batch_sharding, checkpoints, writer, validator, stop,
          workdir: Path) -> int:
    train_cfg = config.train
    pending: tuple[int, str, Any] | None = None  # metrics fetched one step late
    step = start_step
    last_validation: dict[str, float] = {}
    while step < total_steps:
        if stop.requested():
            writer.flush_pending(pending)
            if checkpoints.latest_step() != step:  # the periodic save may have just run
                checkpoints.save(step, state, _record(step, lengths), force=True)
            checkpoints.wait_until_finished()
            print(f"Stopped by {stop.signal_name or 'a signal'} at step {step}; checkpoint "
                  f"saved in {checkpoints.directory}. Rerun the same command to resume.",
                  flush=True)
            return 0
        phase, _ = phase_at(step, lengths)
        wait_start = time.perf_counter()
        local_batch = next(stream)
        batch = global_batch(local_batch, batch_sharding)
        writer.add_input_wait(time.perf_counter() - wait_start)
        state, metrics = _run_step(steps, phase, state, batch, vgg_params,
                                   jax.random.fold_in(step_rng, step))
        if pending is not None and not writer.write_step_metrics(*pending):
            return _stop_non_finite(pending[0], checkpoints)
        pending = (step, phase, metrics)
        step += 1
        if step % train_cfg.image_every_steps == 0:
            writer.write_samples(step, validator.sample_images(state, local_batch))
        if step % train_cfg.eval_every_steps == 0 or step == total_steps:
            last_validation = validator.validate(state, step, writer)
        if step % train_cfg.checkpoint_every_steps == 0 or step == total_steps:
            if not writer.write_step_metrics(*pending):
                return _stop_non_finite(pending[0], checkpoints)
            pending = None
            checkpoints.save(step, state, _record(step, lengths, last_validation))
            if last_validation and step % train_cfg.eval_every_steps == 0:
                checkpoints.save_best(step, state, _record(step, lengths, last_validation),
                                      last_validation)
    if pending is not None and not writer.write_step_metrics(*pending):
        return _stop_non_finite(pending[0], checkpoints)
    checkpoints.wait_until_finished()
    export_dir = export_generators(config, state, workdir, step)
    if not last_validation:
        last_validation = validator.validate(state, step, writer)
    validator.write_summary(workdir, step, last_validation, export_dir)
    return 0


def _stop_non_finite(step: int, checkpoints: checkpointing.TrainCheckpoints) -> int:
    """`step`: the 0-based index of the bad step; it is step + 1 in metrics.jsonl (the count of
    steps run), and so in this message."""
    checkpoints.wait_until_finished()
    latest = checkpoints.latest_step()
    kept = (f"The last good checkpoint (step {latest}) in {checkpoints.directory} is intact."
            if latest is not None else
            f"No checkpoint had been saved yet in {checkpoints.directory}.")
    print(f"Non-finite loss or input at step {step + 1}: the update was not applied and training "
          f"stopped. {kept}", flush=True)
    return 3
